"""The DICOM receiver: the appliance's entry point for modalities (pynetdicom).

Handlers are thin and return DICOM status codes (PS3.7 Annex C; PS3.4 Table B.2-1):
C-STORE answers Success only after the data set was checked to be whole, fsynced into the
spool and journaled. Data sets are received to disk (never whole in memory) and bounded
in size, also once inflated; the overwrite policy holds back objects that would replace
another source's instance or change a study's patient. Errors map to meaningful statuses
(with an ErrorComment saying why) rather than pynetdicom's generic 0xC211.
"""

from __future__ import annotations

import logging
import signal
import tempfile
import time
import weakref
from dataclasses import dataclass
from typing import Any

import sqlite_utils
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts, _config, evt
from pynetdicom.association import Association
from pynetdicom.pdu import A_ABORT_RQ, P_DATA_TF
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from appliance import metrics
from appliance.config import Settings
from appliance.ingest.header import HEADER_KEYWORDS
from appliance.ingest.intake import Ingest, IngestQueue
from appliance.ingest.journal import Refusal
from appliance.ingest.modalities import caller_allowed, list_modalities
from appliance.ingest.part10 import scan_file
from appliance.ingest.requestor import HEALTH_AE_TITLE, Requestor, Requestors
from appliance.ingest.spool import Spool, SpoolFull
from appliance.security import audit

log = logging.getLogger("neuronova.receiver")

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110
NOT_AUTHORISED = 0x0124  # Refused: Not Authorized (PS3.7 C.5)
MAX_ASSOCIATIONS = 64
MAX_PER_ADDRESS = 32  # one caller (address) may hold at most half the slots
ARTIM_TIMEOUT = 10  # seconds from connecting to the association request (PS3.8 9.1.5)
IDLE_TIMEOUT = 30  # seconds without a PDU before an association is aborted (< STALE_PARTIAL)
DRAIN_TIMEOUT = 15  # seconds open associations get to finish after SIGTERM

# Transfer syntaxes accepted for storage (PS3.5 Annex A): uncompressed, deflated,
# JPEG, JPEG-LS, JPEG 2000, HTJ2K and RLE.
TRANSFER_SYNTAXES = [
    "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",  # Explicit VR Little Endian
    "1.2.840.10008.1.2.2",  # Explicit VR Big Endian (retired, still sent)
    "1.2.840.10008.1.2.1.99",  # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.4.50",  # JPEG Baseline
    "1.2.840.10008.1.2.4.51",  # JPEG Extended
    "1.2.840.10008.1.2.4.57",  # JPEG Lossless
    "1.2.840.10008.1.2.4.70",  # JPEG Lossless SV1
    "1.2.840.10008.1.2.4.80",  # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",  # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",  # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",  # JPEG 2000
    "1.2.840.10008.1.2.4.201",  # HTJ2K Lossless
    "1.2.840.10008.1.2.4.202",  # HTJ2K Lossless RPCL
    "1.2.840.10008.1.2.4.203",  # HTJ2K
    "1.2.840.10008.1.2.5",  # RLE Lossless
]


class AllowList:
    """The modality allow-list, re-read whenever the database changed.

    ``PRAGMA data_version`` changes when another connection (the CLI, the web app, the
    worker) commits, so an admin's change applies to the next association at once; while
    nothing changed, each association costs one pragma instead of a query.
    """

    def __init__(self, ingest: Ingest) -> None:
        self._ingest = ingest
        self._rows: list[dict[str, Any]] = []
        self._version: int | None = None

    def rows(self) -> list[dict[str, Any]]:
        """The registered modalities as the database holds them now."""
        return self._ingest.journal.read(self._read)

    def _read(self, db: sqlite_utils.Database) -> list[dict[str, Any]]:
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._rows, self._version = list_modalities(db), version
        return self._rows


def handle_requested(event: evt.Event, allow: AllowList, requestors: Requestors) -> None:
    """A-ASSOCIATE-RQ: reject callers that are not on the allow-list (PS3.8 7.1.1.9), and
    a caller's association beyond :data:`MAX_PER_ADDRESS` (rejected-transient)."""
    caller = requestors.of(event.assoc)
    if _is_health_probe(caller):
        return
    reason = caller_allowed(allow.rows(), caller.ae_title, caller.address)
    # rejected-permanent, service-user, calling AE title not recognized
    rejection = (0x01, 0x01, 0x03)
    if reason is None and _associations_from(event.assoc, caller.address) > MAX_PER_ADDRESS:
        reason = f"more than {MAX_PER_ADDRESS} associations from {caller.address} at once"
        rejection = (0x02, 0x03, 0x02)  # rejected-transient, local limit exceeded
    if reason is not None:
        log.warning(
            "rejected association from %s at %s: %s", caller.ae_title, caller.address, reason
        )
        event.assoc.acse.send_reject(*rejection)
        event.assoc.kill()  # as pynetdicom does for its own rejections: flush, then close


def _is_health_probe(caller: Requestor) -> bool:
    """The local health check: let in whatever the allow-list says, for C-ECHO only."""
    return caller.ae_title == HEALTH_AE_TITLE and caller.address in ("127.0.0.1", "::1")


def _associations_from(assoc: Association, address: str) -> int:
    """Associations (this one included) accepted from ``address`` that are still open."""
    return sum(
        1 for a in assoc.ae.active_associations if a.is_acceptor and a.requestor.address == address
    )


def handle_echo(event: evt.Event) -> int:
    """C-ECHO: answer Success."""
    return SUCCESS


@dataclass(frozen=True)
class StorePolicy:
    """What the C-STORE handler enforces: the most a Deflated data set may inflate to,
    and the overwrite policy (:data:`appliance.ingest.journal.OVERWRITE_POLICIES`)."""

    max_inflated: int
    overwrite: str


def handle_store(
    event: evt.Event, ingest: Ingest, policy: StorePolicy, requestors: Requestors
) -> int | Dataset:
    """C-STORE: check the data set is whole, spool it durably, journal, queue; then (and
    only then) Success. Held and refused objects get a failure status with the reason.

    Every answer is counted by status and calling AE title (``/api/metrics``)."""
    caller = requestors.of(event.assoc)
    status = _store(event, ingest, policy, caller)
    code = status if isinstance(status, int) else int(status.Status)
    try:
        with ingest.journal.transaction() as db:
            _count_store(db, f"0x{code:04X}", caller.ae_title)
    except Exception:  # a count must never change the answer
        log.exception("could not count a C-STORE")
    return status


def _count_store(db: sqlite_utils.Database, status: str, ae_title: str) -> None:
    calling_ae = metrics.client_label(db, "cstore_total", "calling_ae", ae_title)
    metrics.add(db, {metrics.key("cstore_total", status=status, calling_ae=calling_ae): 1})


def _store(
    event: evt.Event, ingest: Ingest, policy: StorePolicy, caller: Requestor
) -> int | Dataset:
    if _is_health_probe(caller):
        return _status(NOT_AUTHORISED, f"Refused: {HEALTH_AE_TITLE} may only C-ECHO")
    try:
        path = event.dataset_path
        synced = ingest.spool.sync_soon(path)  # the disk works while the object is checked
        ds = scan_file(path, event.context.transfer_syntax, HEADER_KEYWORDS, policy.max_inflated)
        refusal = ingest.receive(path, ds, caller.source, policy.overwrite, synced)
    except SpoolFull as exc:
        log.error("refused an object from %s: %s", caller.ae_title, exc)
        return _status(OUT_OF_RESOURCES, f"Out of resources: {exc}")
    except ValueError as exc:
        log.warning("refused an object from %s: %s", caller.ae_title, exc)
        return _status(CANNOT_UNDERSTAND, f"Cannot understand: {exc}")
    except Exception as exc:  # never let one object take the association down
        log.exception("could not store an object from %s", caller.ae_title)
        return _status(PROCESSING_FAILURE, f"Processing failure: {exc.__class__.__name__}")
    if refusal is not None:
        _report_held(ingest, ds, caller, refusal)
        return _status(NOT_AUTHORISED, refusal.comment)
    return SUCCESS


def _report_held(ingest: Ingest, ds: Dataset, caller: Requestor, refusal: Refusal) -> None:
    log.warning("held an object from %s: %s", caller.source, refusal.reason)
    with ingest.journal.transaction() as db:
        audit.record(
            db,
            audit.OBJECT_HELD,
            username=caller.source,
            client=caller.address,
            study_uid=str(ds.get("StudyInstanceUID", "")),
            patient_id=str(ds.get("PatientID", "")),
            reason=refusal.reason,
        )


class ObjectSizeCap:
    """Aborts an association whose data set grows beyond ``max_bytes`` while it arrives.

    Bound to ``EVT_PDU_RECV`` (the association's reader thread): it counts the data set
    fragments of each message (PS3.8 E.2: a command fragment starts a new message), so
    no object larger than the limit reaches the disk, however it is sent.
    """

    def __init__(self, max_bytes: int, requestors: Requestors) -> None:
        self.max_bytes = max_bytes
        self._requestors = requestors
        self._sizes: weakref.WeakKeyDictionary[Association, int] = weakref.WeakKeyDictionary()

    def on_pdu(self, event: evt.Event) -> None:
        """Count one received PDU; abort the association past the limit."""
        if not isinstance(event.pdu, P_DATA_TF):
            return
        size = self._sizes.get(event.assoc, 0)
        for item in event.pdu.presentation_data_value_items:
            value = item.presentation_data_value or b"\x00"
            size = 0 if value[0] & 1 else size + len(value) - 1
        self._sizes[event.assoc] = size
        if size > self.max_bytes:
            self._abort(event.assoc)

    def _abort(self, assoc: Association) -> None:
        caller = self._requestors.of(assoc)
        log.warning(
            "aborted the association from %s at %s: an object exceeds %d MB",
            caller.ae_title, caller.address, self.max_bytes // 1024**2,
        )  # fmt: skip
        abort = A_ABORT_RQ()
        abort.source, abort.reason_diagnostic = 0x02, 0x00  # service-provider
        socket = assoc.dul.socket
        if socket is not None:
            socket.send(abort.encode())
            socket.close()  # the reader sees the transport close and ends the association


def handle_connection(event: evt.Event, spool: Spool) -> None:
    """A new connection: remove the partial files of associations that ended mid-object
    (aborted, timed out), which nothing writes to any more."""
    spool.discard_partial()


def _status(code: int, comment: str) -> Dataset:
    status = Dataset()
    status.Status = code
    status.ErrorComment = comment[:64]
    return status


def build_ae(settings: Settings) -> AE:
    """The Application Entity with the contexts the receiver accepts.

    Slow callers are bounded: ARTIM (:data:`ARTIM_TIMEOUT`) for the association request
    after connecting, :data:`IDLE_TIMEOUT` without a PDU in an association.
    """
    ae = AE(ae_title=settings.dicom.ae_title)
    ae.add_supported_context(Verification)
    for context in StoragePresentationContexts:
        ae.add_supported_context(context.abstract_syntax, TRANSFER_SYNTAXES)
    ae.require_called_aet = True
    ae.maximum_associations = MAX_ASSOCIATIONS
    ae.maximum_pdu_size = 0
    ae.network_timeout = IDLE_TIMEOUT
    ae.acse_timeout = ARTIM_TIMEOUT
    ae.dimse_timeout = 120
    return ae


def handlers(ingest: Ingest, settings: Settings) -> list[tuple]:
    """The event handlers bound when the server starts."""
    allow = AllowList(ingest)
    policy = StorePolicy(settings.dicom.max_inflated_mb * 1024**2, settings.dicom.overwrite)
    requestors = Requestors()
    cap = ObjectSizeCap(settings.dicom.max_object_mb * 1024**2, requestors)
    return [
        (evt.EVT_REQUESTED, handle_requested, [allow, requestors]),
        (evt.EVT_C_ECHO, handle_echo),
        (evt.EVT_C_STORE, handle_store, [ingest, policy, requestors]),
        (evt.EVT_PDU_RECV, cap.on_pdu),
        (evt.EVT_CONN_OPEN, handle_connection, [ingest.spool]),
    ]


def receive_to_disk(spool: Spool) -> None:
    """Have pynetdicom write each C-STORE data set to a file in the spool's ``incoming/``
    folder as it arrives (a Part 10 file, with pynetdicom's file meta), not to memory.

    Both are process-wide settings: the receiver runs in a process of its own.
    """
    _config.STORE_RECV_CHUNKED_DATASET = True
    tempfile.tempdir = str(spool.incoming)


def serve(settings: Settings, queue: IngestQueue) -> None:
    """Listen on ``settings.network.bind:dicom_port`` until SIGTERM or SIGINT; what is received
    goes on to ``queue``."""
    ingest = Ingest(settings, queue)
    receive_to_disk(ingest.spool)
    ae = build_ae(settings)
    server = ae.start_server(
        (settings.network.bind, settings.dicom.port),
        block=False,
        evt_handlers=handlers(ingest, settings),
    )
    log.info(
        "DICOM receiver listening on %s:%d as AE title %s (overwrite policy %s)",
        settings.network.bind,
        settings.dicom.port,
        settings.dicom.ae_title,
        settings.dicom.overwrite,
    )
    wait_for_stop_signal()
    server.shutdown()
    finish_associations(server, DRAIN_TIMEOUT)
    log.info("DICOM receiver stopped")


def wait_for_stop_signal() -> None:
    """Return once SIGTERM or SIGINT came.

    Once, under heavy load, a receiver blocked in ``threading.Event().wait()`` never
    reacted to SIGTERM and was killed 17 s later. Two ways that can happen: Python runs
    signal handlers only in the main thread, and a signal the kernel hands to another
    thread does not wake a main thread blocked on a lock; and a handler that sets an
    Event can deadlock on the lock the interrupted wait holds. So the main thread wakes
    every half second, and the handler only appends to a list.
    """
    received: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: received.append(signum))
    while not received:
        time.sleep(0.5)


def finish_associations(server: ThreadedAssociationServer, timeout: float) -> None:
    """Let the associations open when the server stopped listening end by themselves
    within ``timeout`` seconds, then abort the rest.

    A modality sending during a restart (a deploy, an upgrade) finishes its association:
    every object it sends gets its answer, and the next association goes to the new
    receiver, which takes over the same spool. Without this the process exited at once
    and its (daemon) association threads died mid-object.
    """
    open_now = server.active_associations
    if open_now:
        log.info("finishing %d open association(s) (at most %d s)", len(open_now), timeout)
    deadline = time.monotonic() + timeout
    for assoc in open_now:
        assoc.join(max(0.0, deadline - time.monotonic()))
    left = [assoc for assoc in open_now if assoc.is_alive()]
    for assoc in left:
        log.warning("aborted the association from %s: still open %d s after the stop",
                    Requestor.of(assoc).ae_title, timeout)  # fmt: skip
        assoc.abort()
