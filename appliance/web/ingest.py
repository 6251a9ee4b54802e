"""Where the web app hands uploaded DICOM objects (STOW-RS): the ingest pipeline."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pydicom import Dataset

from appliance.ingest.intake import Ingest
from appliance.ingest.journal import ALWAYS
from appliance.ingest.spool import SpoolFull

log = logging.getLogger("neuronova.web")


class PipelineIngest:
    """Spool, journal and queue each upload, off the event loop (fsync blocks)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def _receive(self, received: Path, ds: Dataset, source: str) -> str | None:
        try:
            self.ingest.receive(received, ds, source, ALWAYS)
        except SpoolFull as exc:
            return f"the appliance is out of disk space ({exc})"
        except (OSError, ValueError) as exc:
            return f"the object cannot be ingested: {exc}"
        except Exception as exc:  # one bad object never fails the rest of the upload
            log.exception("could not ingest an uploaded object")
            return f"processing failure ({exc.__class__.__name__}); the details are in the app log"
        return None

    async def submit(self, received: Path, ds: Dataset, source: str) -> str | None:
        """Move a checked Part 10 file from the spool's ``incoming/`` into the pipeline.

        ``ds`` holds its header elements (:data:`appliance.ingest.journal.HEADER_KEYWORDS`).
        Returns ``None``, or the reason it was refused. An upload replaces an archived
        copy of the same instance, as it always has (the overwrite policy is the
        receiver's).
        """
        return await asyncio.to_thread(self._receive, received, ds, source)
