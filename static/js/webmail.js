// Webmail behaviour: keyboard shortcuts, live updates, title count (see templates/webmail/base.html).
