"""The end of a study's life here: an admin's deletion (``deletion``: Orthanc's copy, the
journal's rows, the frame files, the FHIR push record) and the retention rule that deletes
old studies (``retention``, run hourly by its task in ``tasks``)."""
