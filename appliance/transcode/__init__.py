"""Transcoding: each received object decoded, HTJ2K-encoded, verified, stored in Orthanc
and prepared as frame files (``pipeline``, ``codec``, ``frames``), and its tasks
(``tasks``: ingest, previews)."""
