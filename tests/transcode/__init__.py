"""HTJ2K transcoding, frame files and the ingest pipeline (appliance.transcode)."""
