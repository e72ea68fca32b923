"""What admins meet: the admin site and its dashboard and plots, the admin pages (start a
round, train, export, import) and the admin API."""
