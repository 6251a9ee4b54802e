"""The DICOM receiver: the appliance's entry point for modalities (pynetdicom).

Handlers are thin and return DICOM status codes (PS3.7 Annex C); errors are mapped to
meaningful statuses rather than left to become pynetdicom's generic 0xC211.
"""

from __future__ import annotations

import logging
import signal
import threading

from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from appliance.config import Settings

log = logging.getLogger("neuronova.receiver")

SUCCESS = 0x0000


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: answer Success and note who asked."""
    requestor = event.assoc.requestor
    log.debug("C-ECHO from %s (%s)", requestor.ae_title, requestor.address)
    return SUCCESS


def build_ae(settings: Settings) -> AE:
    """The Application Entity with the contexts the receiver accepts."""
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification)
    ae.maximum_associations = 64
    ae.network_timeout = 60
    ae.acse_timeout = 30
    ae.dimse_timeout = 60
    return ae


def handlers() -> list[tuple]:
    """The event handlers bound when the server starts."""
    return [(evt.EVT_C_ECHO, handle_echo)]


def serve(settings: Settings) -> None:
    """Listen on ``settings.bind:dicom_port`` until SIGTERM or SIGINT."""
    ae = build_ae(settings)
    server = ae.start_server(
        (settings.bind, settings.dicom_port), block=False, evt_handlers=handlers()
    )
    log.info(
        "DICOM receiver listening on %s:%d as AE title %s",
        settings.bind,
        settings.dicom_port,
        settings.ae_title,
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    server.shutdown()
    log.info("DICOM receiver stopped")
