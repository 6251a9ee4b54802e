"""Where the web app hands uploaded DICOM objects (STOW-RS): the ingest pipeline."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from pydicom import Dataset

from appliance.ingest.intake import Ingest
from appliance.ingest.spool import SpoolFull

log = logging.getLogger("neuronova.web")
OUT_OF_RESOURCES = 0xA700
PROCESSING_FAILURE = 0x0110
NOT_AUTHORISED = 0x0124  # Refused: Not Authorized (the overwrite policy holds the object)
Refused = tuple[int, str]  # a STOW failure reason code and the text for the uploader


class PipelineIngest:
    """Spool, journal and queue each upload, off the event loop (fsync blocks)."""

    def __init__(self, ingest: Ingest, overwrite: str) -> None:
        self.ingest = ingest
        self.overwrite = overwrite

    def _receive(self, received: Path, ds: Dataset, source: str) -> Refused | None:
        try:
            refusal = self.ingest.receive(received, ds, source, self.overwrite)
        except SpoolFull as exc:
            return OUT_OF_RESOURCES, f"the appliance is out of disk space ({exc})"
        except (OSError, ValueError) as exc:
            return PROCESSING_FAILURE, f"the object cannot be ingested: {exc}"
        except Exception as exc:  # one bad object never fails the rest of the upload
            log.exception("could not ingest an uploaded object")
            reason = f"processing failure ({type(exc).__name__}); the details are in the app log"
            return PROCESSING_FAILURE, reason
        if refusal is not None:
            log.warning("held an uploaded object from %s: %s", source, refusal.reason)
            return NOT_AUTHORISED, refusal.reason
        return None

    async def submit(self, received: Path, ds: Dataset, source: str) -> Refused | None:
        """Move a checked Part 10 file from the spool's ``incoming/`` into the pipeline.

        ``ds`` holds its header elements (:data:`appliance.ingest.header.HEADER_KEYWORDS`);
        ``source`` names the uploader (``stow:USER``). Returns ``None``, or the failure
        code and reason: the receiver's overwrite policy applies, so an upload that would
        replace another source's instance or change a study's patient is held for an
        admin (``neuronova held``).
        """
        return await asyncio.to_thread(self._receive, received, ds, source)
