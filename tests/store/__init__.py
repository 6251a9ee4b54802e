"""Orthanc storage, deletion, series metadata and retention (appliance.store)."""
