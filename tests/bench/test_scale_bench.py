"""bench/scale.py end to end at a tiny size: it fills through the real appliance, grows a
larger home from the smaller one, reuses the cache, and its figures are sane; with
``--index postgresql`` it fills and measures a home whose Orthanc index is in a
PostgreSQL server of its own, and the results compare both indexes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench import reindex, scale

pytestmark = pytest.mark.slow

SIZES = (150, 400)


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("scale")


@pytest.fixture(scope="module")
def run(root: Path) -> tuple[Path, dict]:
    """One bench run at two tiny sizes: (its cache, its results)."""
    out, cache = root / "scale.json", root / "cache"
    argv = ["--sizes", ",".join(map(str, SIZES)), "--cache", str(cache), "--probe-slices", "12",
            "--new-instances", "30", "--requests", "4", "--out", str(out)]  # fmt: skip
    assert scale.main(argv) == 0
    return cache, json.loads(out.read_text())["indexes"]["sqlite"]


def test_each_size_is_filled_and_the_larger_grew_from_the_smaller(run: tuple[Path, dict]) -> None:
    _, results = run
    small, large = results["sizes"]
    assert SIZES[0] <= small["instances"] < SIZES[1] <= large["instances"]
    assert large["fill"][0] == small["fill"][0]  # the first fill step is the smaller home's
    assert large["fill"][-1]["from"] == small["instances"]
    assert small["backup"]["at_fill"]["grown_from"] == 0
    assert large["backup"]["at_fill"]["grown_from"] == small["instances"]
    expected = sum(scale.study_size(i) for i in range(large["studies"]))
    assert large["instances"] == expected


def test_a_cached_size_is_reused(run: tuple[Path, dict]) -> None:
    cache, results = run
    assert (scale.entry_path(cache, SIZES[1]) / "backup").is_dir()
    meta = json.loads((scale.entry_path(cache, SIZES[1]) / "scale.json").read_text())
    assert scale.filled(cache, SIZES[1], 2).path == scale.entry_path(cache, SIZES[1])
    assert json.loads((scale.entry_path(cache, SIZES[1]) / "scale.json").read_text()) == meta
    assert meta["instances"] == results["sizes"][1]["instances"]


def test_the_figures_are_sane(run: tuple[Path, dict]) -> None:
    _, results = run
    for size in results["sizes"]:
        for name, figure in size["searches"].items():
            assert 0 < figure["p50_ms"] <= figure["p95_ms"] <= figure["max_ms"], name
            assert figure["matches"] >= 1, name
        assert size["searches"]["series_metadata"]["matches"] == 12
        assert size["probe"]["instances"] == 12 and size["probe"]["cstore_instances_per_s"] > 0
        runs = size["probe"]["runs"]  # three probes, each a new series
        assert len(runs) == 3 and all(r["first_to_viewable_s"] >= r["cstore_seconds"] for r in runs)
        backup = size["backup"]
        assert backup["incremental"]["new_instances"] == 30
        assert backup["at_fill"]["bytes_copied"] > 0
        unchanged = backup["unchanged_via_proxy"]["bytes_copied"]
        assert 0 <= unchanged < backup["incremental"]["bytes_copied"]
        assert backup["unchanged_via_proxy"]["orthanc_rest_calls"]["total"] > 0
        disk = size["disk"]["bytes_per_instance"]
        assert disk["orthanc_storage"] > 0 and disk["frames"] > 0 and disk["orthanc_index"] > 0
        assert size["startup_to_healthy_s"] > 0 and size["doctor"]["checks"]
    assert set(results["growth"][0]["per_10x"]) >= {"qido_patient_id_p95_ms", "doctor_s"}


def test_postgresql_as_orthancs_index_is_measured_beside_sqlite(root: Path, run) -> None:
    """A run with ``--index postgresql`` keeps the SQLite run's section and compares."""
    argv = ["--index", "postgresql", "--sizes", str(SIZES[0]), "--no-backups", "--cache",
            str(root / "cache"), "--probe-slices", "12", "--requests", "4",
            "--out", str(root / "scale.json")]  # fmt: skip
    assert scale.main(argv) == 0
    results = json.loads((root / "scale.json").read_text())["indexes"]
    assert results["sqlite"] == run[1]
    (size,) = results["postgresql"]["sizes"]
    assert size["index"] == "postgresql" and "backup" not in size
    assert size["instances"] == results["sqlite"]["sizes"][0]["instances"]  # the same recipe
    assert size["doctor"]["checks"]["orthanc_index"] == "OK"
    assert size["disk"]["bytes_per_instance"]["orthanc_index"] > 0  # the server's files
    assert not list(
        (scale.entry_path(root / "cache", SIZES[0], "postgresql") / "home").rglob("index")
    )  # Orthanc's SQLite index was never made
    markdown = (root / "scale.md").read_text()
    assert "## PostgreSQL over SQLite" in markdown and "qido_patient_id_p95_ms" in markdown


def test_results_of_an_older_run_beside_a_newer_one_still_render(root: Path, run) -> None:
    """A section measured before ``--probes`` (one probe, no per-probe runs) beside one
    after: the markdown compares the figures both have."""
    results = json.loads((root / "scale.json").read_text())
    for size in results["indexes"]["postgresql"]["sizes"]:
        size["probe"] = {k: size["probe"][k] for k in ("instances", "cstore_instances_per_s",
                                                       "success_to_viewable_s")}  # fmt: skip
    markdown = scale.render_markdown(results)
    assert "## PostgreSQL over SQLite" in markdown and "first_cstore_to_viewable_s" in markdown


def test_a_postgresql_home_is_made_from_the_sqlite_home_of_its_size(root: Path, run) -> None:
    """bench/reindex.py: an early pass posts every stored file, a later one posts nothing
    more and finishes the home; measuring it finds the same instances as SQLite's."""
    cache, sqlite_run = root / "cache", run[1]
    target = scale.entry_path(cache, SIZES[1], "postgresql")
    assert reindex.main(["--size", str(SIZES[1]), "--cache", str(cache), "--early"]) == 0
    posted = (target.with_name(target.name + ".partial") / reindex.POSTED).read_text().split()
    assert len(posted) == len(set(posted)) == sqlite_run["sizes"][1]["instances"]
    assert reindex.main(["--size", str(SIZES[1]), "--cache", str(cache)]) == 0
    meta = json.loads((target / "scale.json").read_text())
    assert meta["index"] == "postgresql" and meta["fill"][-1]["path"] == "reindexed"
    assert 'index = "postgresql"' in (target / "home" / "neuronova.toml").read_text()
    assert not list((target / "home").rglob("index"))  # no SQLite index of Orthanc's
    argv = ["--index", "postgresql", "--sizes", str(SIZES[1]), "--no-backups", "--cache",
            str(cache), "--probe-slices", "12", "--requests", "4",
            "--out", str(root / "scale.json")]  # fmt: skip
    assert scale.main(argv) == 0
    (size,) = json.loads((root / "scale.json").read_text())["indexes"]["postgresql"]["sizes"]
    assert size["instances"] == sqlite_run["sizes"][1]["instances"]
    assert size["doctor"]["checks"]["orthanc_index"] == "OK"
    assert size["searches"]["qido_patient_id_orthanc"]["matches"] >= 1  # Orthanc's own index
    assert size["probe"]["instances"] == 12
