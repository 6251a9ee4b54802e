"""Deleting a study and the retention rule (appliance.lifecycle)."""
