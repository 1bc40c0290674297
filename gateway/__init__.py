"""Ordinary email in and out: the SMTP gateway. The only app that knows the SMTP wire."""
