"""Backups, restore and the daily schedule (appliance.backup)."""
