"""Reference (d) of ``bench/ingest.py``: a bare pynetdicom storage SCP that writes each
received object to a Part 10 file and fsyncs it before answering Success.

It is the least a durable DICOM receiver written with pynetdicom can do: no check that
the object is whole, no journal, no queue, data sets received in memory (pynetdicom's
default). The appliance's C-STORE phase is compared with it in the same run.

Usage: ``python -m bench.bare_scp --port PORT --ae-title AE --out DIR``; it prints
``listening`` once it accepts associations and stops on SIGTERM or SIGINT.
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from pathlib import Path

from pynetdicom import AE, StoragePresentationContexts, evt

LOOPBACK = "127.0.0.1"
SUCCESS = 0x0000


def handle_store(event: evt.Event, out: Path) -> int:
    """Write the object as a Part 10 file (preamble, file meta, data set), fsync, Success."""
    path = out / f"{event.request.AffectedSOPInstanceUID}.dcm"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(event.encoded_dataset())
        file.flush()
        os.fsync(file.fileno())
    return SUCCESS


def serve(port: int, ae_title: str, out: Path) -> None:
    """Accept the storage SOP classes (uncompressed) on loopback until SIGTERM or SIGINT."""
    out.mkdir(parents=True, exist_ok=True)
    ae = AE(ae_title=ae_title)
    ae.supported_contexts = StoragePresentationContexts  # as the appliance's receiver
    ae.maximum_pdu_size = 0
    handlers = [(evt.EVT_C_STORE, handle_store, [out])]
    server = ae.start_server((LOOPBACK, port), block=False, evt_handlers=handlers)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    print("listening", flush=True)
    stop.wait()
    server.shutdown()


def main(argv: list[str] | None = None) -> None:
    """Parse the arguments and serve."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ae-title", default="BARESCP")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    serve(args.port, args.ae_title, args.out)


if __name__ == "__main__":
    main()
