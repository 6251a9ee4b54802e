"""Orthanc storage, series metadata and the archive's growth (appliance.store)."""
