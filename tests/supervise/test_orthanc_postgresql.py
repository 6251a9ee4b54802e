"""Orthanc's index in PostgreSQL (``[orthanc] index = "postgresql"``), on this host.

The appliance runs against a throwaway PostgreSQL 15 cluster (bench/pg.py) set up
as docs/install-clinic.md tells a clinic's IT person: a role with the password the
appliance generated at first start, and a database it owns. A CT series goes in through
the DICOM port (dcmtk's storescu) and comes back through the gateway: QIDO by patient
and by study, series metadata and a frame pixel-identical. The rows are in PostgreSQL and
Orthanc's SQLite index was never made. Also: a server configured as documented
(``listen_addresses = 'localhost'``) is not reachable from another machine, and a
missing server or plugin is refused with a message naming what to install.
"""

from __future__ import annotations

import json
import sys

import imagecodecs
import numpy as np
import pytest
import requests
from click.testing import CliRunner

from appliance.cli import cli as neuronova_cli
from appliance.config import load_settings
from appliance.errors import MissingBinaryError
from appliance.programs import find_orthanc_plugin
from appliance.store import orthanc_index
from appliance.store.orthanc_index import POSTGRESQL_PACKAGE, POSTGRESQL_PLUGIN
from appliance.transcode.codestream import RPCL_SYNTAX
from bench.harness import ACCEPT, split_multipart
from bench.pg import DATABASE, throwaway_pg_server
from bench.synthetic import make_slices, write_series
from tests.support.clients import api_token
from tests.support.netns import host_pair, require_netns
from tests.support.ports import reserve_port
from tests.support.running import make_appliance, run_cli, storescu, wait_stored

pytestmark = pytest.mark.slow

SLICES = 6


@pytest.fixture(scope="module")
def cluster():
    with throwaway_pg_server() as made:
        yield made


@pytest.fixture(scope="module")
def running(cluster, tmp_path_factory):
    """The appliance on the cluster, with a CT series stored: (appliance, series, slices)."""
    appliance = make_appliance(tmp_path_factory.mktemp("pg"), cluster.settings())
    password_file = appliance.settings.orthanc_db_password_path
    assert password_file.stat().st_mode & 0o777 == 0o600
    cluster.create_owner(password_file.read_text().strip())
    appliance.start()
    slices = make_slices(SLICES)
    series = write_series(tmp_path_factory.mktemp("series"), slices)
    sent = storescu(appliance, series.files)
    assert sent.returncode == 0, sent.stderr
    wait_stored(appliance, series.sop_uids)
    yield appliance, series, slices
    appliance.stop()


def _get(appliance, token: str, path: str, **headers: str) -> requests.Response:
    url = f"{appliance.url}/api/pacs/dicom-web/{path}"
    return requests.get(url, headers={"Authorization": f"Bearer {token}", **headers}, timeout=20)


def test_a_stored_series_is_searched_and_read_through_postgresql(running):
    appliance, series, slices = running
    token = api_token(appliance, "admin", appliance.admin_password)
    by_patient = _get(appliance, token, "studies?PatientID=NNBENCH0001").json()
    assert [s["0020000D"]["Value"][0] for s in by_patient] == [series.study_uid]
    found = _get(appliance, token, f"studies/{series.study_uid}/series/{series.series_uid}/"
                 "instances").json()  # fmt: skip
    assert {i["00080018"]["Value"][0] for i in found} == set(series.sop_uids)
    metadata = _get(appliance, token,
                    f"studies/{series.study_uid}/series/{series.series_uid}/metadata")  # fmt: skip
    assert metadata.status_code == 200 and len(metadata.json()) == SLICES
    frame = _get(appliance, token, f"studies/{series.study_uid}/series/{series.series_uid}/"
                 f"instances/{series.sop_uids[2]}/frames/1", Accept=ACCEPT)  # fmt: skip
    assert frame.status_code == 200, frame.text
    part_type, codestream = split_multipart(frame.headers["Content-Type"], frame.content)
    assert f"transfer-syntax={RPCL_SYNTAX}" in part_type
    assert np.array_equal(imagecodecs.htj2k_decode(codestream).astype(np.int16), slices[2])


def test_the_index_is_in_postgresql_and_not_in_sqlite(running, cluster):
    appliance, _, _ = running
    count = "SELECT count(*) FROM resources WHERE resourcetype = 3"  # 3: instance
    assert cluster.sql(count, DATABASE).strip() == str(SLICES)
    index_dir = appliance.settings.layout.orthanc_dir / "index"
    assert not list(index_dir.glob("index*")), "Orthanc also made an SQLite index"
    assert "PostgreSQL" in (appliance.settings.layout.orthanc_conf.read_text())


def test_the_doctor_says_which_index_answers(running):
    appliance, _, _ = running
    done = run_cli(appliance, "doctor", "--json")
    checks = {c["name"]: c for c in json.loads(done.stdout)["checks"]}
    assert checks["orthanc_index"]["status"] == "OK", checks["orthanc_index"]
    assert "PostgreSQL (orthanc at 127.0.0.1:" in checks["orthanc_index"]["message"]


def test_no_server_is_refused_at_start_naming_what_to_install(tmp_path):
    runner = CliRunner()
    home = tmp_path / "home"
    port = str(reserve_port())  # nothing listens there
    env = {"NEURONOVA_ORTHANC_INDEX": "postgresql", "NEURONOVA_ORTHANC_DB_PORT": port}
    assert runner.invoke(neuronova_cli, ["init", "--home", str(home)], env=env).exit_code == 0
    settings = load_settings(home, environ=env)
    assert settings.orthanc_db_password_path.stat().st_mode & 0o777 == 0o600
    with pytest.raises(orthanc_index.IndexServerError) as raised:
        orthanc_index.wait_for_server(settings, timeout=1.0)
    assert f"no PostgreSQL server answers at 127.0.0.1:{port}" in str(raised.value)
    assert "apt-get install postgresql orthanc-postgresql" in str(raised.value)


def test_a_missing_plugin_names_its_package():
    assert find_orthanc_plugin(POSTGRESQL_PLUGIN, POSTGRESQL_PACKAGE).exists()
    with pytest.raises(MissingBinaryError, match="apt-get install orthanc-postgresql"):
        find_orthanc_plugin("libNoSuchPlugin.so", POSTGRESQL_PACKAGE)


def test_postgresql_set_up_as_documented_is_not_reachable_from_another_machine():
    """listen_addresses = 'localhost' (docs/install-clinic.md): the server namespace's
    loopback reaches it (the control), a client namespace does not."""
    require_netns()
    with host_pair(subnet="198.18.79") as pair:
        prefix = tuple(pair.exec_prefix(pair.server))
        with throwaway_pg_server(prefix=prefix, listen="localhost") as server:
            probe = ("import sys; from appliance.store.orthanc_index import server_answers as a;"
                     f"print(a(sys.argv[1], {server.port}))")  # fmt: skip

            def answers(namespace: str, host: str) -> str:
                return pair.run(namespace, sys.executable, "-c", probe, host).stdout.strip()

            assert answers(pair.server, "127.0.0.1") == "True"
            assert answers(pair.server, pair.server_ip) == "False"
            assert answers(pair.client, pair.server_ip) == "False"
