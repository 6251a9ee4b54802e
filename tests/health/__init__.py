"""Health, doctor, metrics and disk-pressure warnings (appliance.health, appliance.metrics)."""
