"""The DICOM receiver, the journal and ingest end to end (appliance.ingest)."""
