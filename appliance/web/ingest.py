"""Where the web app hands uploaded DICOM objects (STOW-RS): the ingest pipeline."""

from __future__ import annotations

import asyncio
import io

import pydicom

from appliance.ingest import Ingest
from appliance.spool import SpoolFull


class PipelineIngest:
    """Spool, journal and queue each upload, off the event loop (fsync blocks)."""

    def __init__(self, ingest: Ingest) -> None:
        self.ingest = ingest

    def _accept(self, data: bytes, source: str) -> str | None:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
            self.ingest.accept(data, ds, source)
        except SpoolFull as exc:
            return f"the appliance is out of disk space ({exc})"
        except (ValueError, pydicom.errors.InvalidDicomError) as exc:
            return f"the object cannot be ingested: {exc}"
        return None

    async def submit(self, data: bytes, source: str) -> str | None:
        """Accept one Part 10 object; ``None`` or the reason it was refused."""
        return await asyncio.to_thread(self._accept, data, source)
