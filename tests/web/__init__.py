"""The aiohttp app and the nginx gateway (appliance.web)."""
