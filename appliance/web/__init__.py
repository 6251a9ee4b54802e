"""The aiohttp web application behind nginx."""
