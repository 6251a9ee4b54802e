"""The test suite; folders mirror ``appliance/`` (see tests/conftest.py and tests/support)."""
