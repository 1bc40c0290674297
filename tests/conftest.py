"""Shared fixtures. Factories live in tests/factories.py."""
