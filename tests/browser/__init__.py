"""Headless Chromium against the real appliance: the main app and the viewer."""
