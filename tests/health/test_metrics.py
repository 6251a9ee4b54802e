"""``/api/metrics``: counters shared by every process, read with prometheus-client's parser."""

from __future__ import annotations

import math

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from appliance import metrics
from appliance.db import open_database
from bench.synthetic import make_slices, write_series
from tests.support.clients import api_token
from tests.support.running import run_cli, storescu, wait_stored
from tests.support.waiting import wait_for

PASSWORD = "metrics test password"


def test_a_tally_adds_its_counts_and_watched_ints_to_the_table(tmp_path):
    db = open_database(tmp_path / "a.db")
    tally, served = metrics.Tally(), [0]
    tally.watch("frames_total", {"route": "gate"}, lambda: served[0])
    tally.count("requests_total", (("status", "200"),))
    served[0] = 3
    tally.flush(db)
    tally.count("requests_total", (("status", "200"),))
    served[0] = 5
    tally.flush(db)
    metrics.add(db, metrics.observation("took_seconds", 0.03, (0.01, 0.05)))
    metrics.add(db, metrics.observation("took_seconds", 9.0, (0.01, 0.05)))
    assert metrics.read(db) == {
        "frames_total": [({"route": "gate"}, 5)],
        "requests_total": [({"status": "200"}, 2)],
        "took_seconds_bucket": [({"le": "0.05"}, 1), ({"le": "inf"}, 1)],
        "took_seconds_sum": [({}, 9.03)],
    }


def test_labels_a_client_chooses_stay_bounded_whatever_it_sends(tmp_path):
    """A caller inventing a new calling AE title per C-STORE must not grow the table (or
    a scrape) without bound: past MAX_CLIENT_LABELS titles, new ones count as "other"."""
    db = open_database(tmp_path / "a.db")
    for n in range(metrics.MAX_CLIENT_LABELS + 30):
        label = metrics.client_label(db, "cstore_total", "calling_ae", f"AE{n}")
        metrics.add(db, {metrics.key("cstore_total", calling_ae=label): 1})
    counted = {labels["calling_ae"]: value for labels, value in metrics.read(db)["cstore_total"]}
    assert len(counted) == metrics.MAX_CLIENT_LABELS + 1  # and "other"
    assert counted["AE0"] == 1 and "AE50" not in counted
    assert counted[metrics.OTHER] == 30
    assert metrics.client_label(db, "cstore_total", "calling_ae", "AE3") == "AE3"  # known


# ------------------------------------------------------------------ the real appliance


def scrape(appliance, **headers: str) -> dict[tuple[str, tuple], float]:
    """Every sample of ``/api/metrics`` through nginx: (name, sorted labels) -> value."""
    resp = requests.get(f"{appliance.url}/api/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain; version=")
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(resp.text)
        for sample in family.samples
    }


def sample(samples: dict, name: str, **labels: str) -> float:
    """A sample's value; 0.0 for a labelled counter not counted yet."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def present(samples: dict, name: str, **labels: str) -> float:
    """A sample that must be exported, with a finite value (NaN: its source is down)."""
    key = (name, tuple(sorted(labels.items())))
    assert key in samples, f"{name}{labels} is not exported"
    assert math.isfinite(samples[key]), f"{name}{labels} is {samples[key]}"
    return samples[key]


def moves(appliance, name: str, before: float, by: float = 1, **labels: str) -> None:
    """Wait (past the app processes' flush interval) until the sample grew by ``by``."""
    wait_for(
        lambda: sample(scrape(appliance), name, **labels) >= before + by,
        3 * metrics.FLUSH_INTERVAL + 5,
        f"{name}{labels} to reach {before + by}",
    )


@pytest.mark.slow
def test_metrics_move_after_a_cstore_a_login_failure_and_a_frame_read(appliance, tmp_path):
    added = run_cli(appliance, "user", "add", "rad.metrics", "--role", "radiologist",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    first = scrape(appliance)  # from loopback through nginx: no token needed
    stored = ("0x0000", "METRICS_CT")
    assert math.isnan(sample(first, "neuronova_backup_age_seconds"))  # no backup yet
    assert sample(first, "neuronova_disk_free_bytes", path="images") > 0

    series = write_series(tmp_path, make_slices(2))
    sent = storescu(appliance, series.files, "METRICS_CT")
    assert sent.returncode == 0, sent.stderr
    wait_stored(appliance, series.sop_uids)
    after = scrape(appliance)
    assert sample(after, "neuronova_cstore_total", status=stored[0], calling_ae=stored[1]) == 2
    grown = sample(after, "neuronova_transcode_seconds_count") - sample(
        first, "neuronova_transcode_seconds_count"
    )
    assert grown == 2 and sample(after, "neuronova_transcode_seconds_sum") > 0
    assert sample(after, "neuronova_transcode_seconds_bucket", le="+Inf") == sample(
        after, "neuronova_transcode_seconds_count"
    )
    assert present(after, "neuronova_ingest_objects", state="received") >= 0
    assert present(after, "neuronova_queue_pending_tasks") >= 0

    failures = sample(after, "neuronova_auth_failures_total", event="login_failed",
                      reason="bad_password")  # fmt: skip
    refused = requests.post(f"{appliance.url}/api/auth/login", timeout=10,
                            json={"username": "rad.metrics", "password": "wrong"})  # fmt: skip
    assert refused.status_code == 401
    moves(appliance, "neuronova_auth_failures_total", failures, event="login_failed",
          reason="bad_password")  # fmt: skip

    frames = sample(after, "neuronova_http_requests_total", route="frame_gate", status="200")
    token = api_token(appliance, "rad.metrics", PASSWORD)
    url = (f"{appliance.url}/api/pacs/dicom-web/studies/{series.study_uid}/series/"
           f"{series.series_uid}/instances/{series.sop_uids[0]}/frames/1")  # fmt: skip
    read = requests.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=10)
    assert read.status_code == 200
    moves(appliance, "neuronova_http_requests_total", frames, route="frame_gate", status="200")
    logins = sample(after, "neuronova_http_requests_total", route="/api/auth/login", status="200")
    moves(appliance, "neuronova_http_requests_total", logins, route="/api/auth/login",
          status="200")  # fmt: skip


@pytest.mark.slow
def test_metrics_need_an_admin_token_unless_the_caller_is_on_this_machine(appliance):
    """nginx passes the browser's address in X-Forwarded-For; a remote one needs a token."""
    added = run_cli(appliance, "user", "add", "tech.metrics", "--role", "technologist",
                    "--password-stdin", stdin=PASSWORD + "\n")  # fmt: skip
    assert added.returncode == 0, added.stderr
    app = f"http://127.0.0.1:{appliance.settings.internal.app_port}/api/metrics"
    remote = {"X-Forwarded-For": "203.0.113.9"}  # as nginx sends it for a remote browser
    cases = [
        ({}, 401, "missing_token"),
        ({"Authorization": "Bearer not-a-token"}, 401, None),
        ({"Authorization": f"Bearer {api_token(appliance, 'tech.metrics', PASSWORD)}"}, 403,
         "role_denied"),
    ]  # fmt: skip
    for headers, status, error in cases:
        resp = requests.get(app, headers={**remote, **headers}, timeout=10)
        assert resp.status_code == status, resp.text
        body = resp.json()
        assert body["status"] == status and (error is None or body["error"] == error)
    admin = api_token(appliance, "admin", appliance.admin_password)
    resp = requests.get(app, headers={**remote, "Authorization": f"Bearer {admin}"}, timeout=10)
    assert resp.status_code == 200 and "neuronova_cstore_total" in resp.text
