"""A modality sending while the appliance stops (a deploy, an upgrade) loses nothing.

On SIGTERM the receiver stops listening at once (the next association goes to the new
receiver) and lets the associations it has open finish, for at most
``DRAIN_TIMEOUT`` seconds; the supervisor of ``neuronova run`` gives it that time. The
next receiver, on the same home, takes over the spool: what was acknowledged is stored.
"""

from __future__ import annotations

import re
import signal
import socket
import threading
import time

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import CTImageStorage, Verification

from appliance.ingest.receiver import DRAIN_TIMEOUT, finish_associations
from appliance.supervise.runner import RECEIVER_STOP_TIMEOUT
from bench.synthetic import make_slices, write_series
from tests.support.running import make_appliance, wait_stored
from tests.support.waiting import wait_for

pytestmark = pytest.mark.slow
KEEPS_SENDING = 5.0  # seconds after SIGTERM the modality goes on sending (past the old 4 s)


def refuses(port: int) -> bool:
    """Whether nothing listens on 127.0.0.1:``port`` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    except OSError:  # reset: the listener closed while this connection waited in its queue
        return False
    return False


def test_the_supervisor_gives_the_receiver_its_drain_time():
    assert RECEIVER_STOP_TIMEOUT > DRAIN_TIMEOUT


def test_an_open_association_finishes_after_sigterm_and_the_next_receiver_stores_it(tmp_path):
    series = write_series(tmp_path / "series", make_slices(2))
    appliance = make_appliance(tmp_path / "appliance").start()
    port = appliance.settings.dicom.port
    ae = AE(ae_title="CT_SCANNER")
    ae.add_requested_context(CTImageStorage, "1.2.840.10008.1.2.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="NEURONOVA")
    try:
        assert assoc.is_established
        assert assoc.send_c_store(series.files[0]).Status == 0x0000
        stopped = time.monotonic()
        appliance.process.send_signal(signal.SIGTERM)
        wait_for(lambda: refuses(port), 30, "the receiver to stop listening")
        assert appliance.process.poll() is None
        # The association opened before the stop is still served, to its end, also past
        # the 4 s the supervisor used to give the receiver before killing it (timed from
        # the signal: on a loaded machine the sends alone once took the 15 s it has).
        sent = 0
        while time.monotonic() - stopped < KEEPS_SENDING:
            assert assoc.send_c_store(series.files[1]).Status == 0x0000
            sent += 1
        assoc.release()
        assert appliance.process.wait(timeout=RECEIVER_STOP_TIMEOUT + 10) == 0
    finally:
        if assoc.is_alive():
            assoc.abort()
    receiver_log = (appliance.settings.home / "logs" / "receiver.log").read_text()
    assert re.search(r"finishing \d+ open association", receiver_log)
    assert "aborted the association" not in receiver_log
    appliance.start()
    try:
        wait_stored(appliance, series.sop_uids)
    finally:
        appliance.stop()


def echo_server_with_a_client(aet: str):
    """A pynetdicom server on a free loopback port and an association open to it."""
    server_ae = AE(ae_title="NEURONOVA")
    server_ae.add_supported_context(Verification)
    server = server_ae.start_server(("127.0.0.1", 0), block=False)
    client = AE(ae_title=aet)
    client.add_requested_context(Verification)
    assoc = client.associate("127.0.0.1", server.server_address[1], ae_title="NEURONOVA")
    assert assoc.is_established
    return server, assoc


def test_an_association_still_open_at_the_bound_is_aborted(caplog):
    server, assoc = echo_server_with_a_client("HOLDS_ON")
    server.shutdown()
    started = time.monotonic()
    finish_associations(server, 1.0)
    assert time.monotonic() - started >= 1.0
    wait_for(lambda: assoc.is_aborted, 10, "the caller to see the abort")
    assert "aborted the association from HOLDS_ON: still open 1 s after the stop" in caplog.text


def test_the_drain_ends_when_the_last_association_does(caplog):
    server, assoc = echo_server_with_a_client("FINISHES")
    server.shutdown()
    releasing = threading.Timer(0.5, assoc.release)  # the modality finishes meanwhile
    releasing.start()
    started = time.monotonic()
    finish_associations(server, 60.0)
    assert time.monotonic() - started < 60.0
    releasing.join()
    assert assoc.is_released
    assert "aborted" not in caplog.text
