"""Backups of the store (``chatd backup``) and restores that keep every number a promise (``chatd restore``)."""
