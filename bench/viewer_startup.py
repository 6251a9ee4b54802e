"""Benchmark OHIF's own start-up: the viewer as the appliance ships it vs the stock OHIF.

Usage: ``python bench/viewer_startup.py [--runs 5] [--slices 40]
[--out bench/results/viewer_startup.json]``

Goal (issue 16, item 7): "OHIF start-up (scriptToView, loopback) at most 0.8x the stock
configuration's".

The two viewers, served by the same appliance (real nginx, app, Orthanc) in one run:

- ``ours``: ``spa_dist/pacs-viewer`` as ``packaging/fetch_ohif.py`` installs it: only the
  longitudinal viewer mode and the two extensions it needs registered at start-up, and
  every chunk the viewer route needs preloaded from index.html.
- ``stock``: the same pinned OHIF 3.13.2 dist with OHIF's own registrations (seven modes,
  three extensions), patched only as much as serving it here needs
  (``patch_tree(trim=False)``: the public path, and the main bundle and codec preloads
  that were there before this work). Built from the cached tarball once per version
  (kept beside it, ``~/.cache/neuronova/ohif-stock-*``). Both use the same
  ``app-config.js``.

The files that differ (index.html, and the main bundle, which has another content hash
in ours) sit side by side; nginx serves a copy of ``spa_dist`` made of symbolic links
(its ``spa_dist`` package comes first on the appliance's ``PYTHONPATH``), and the bench
points ``index.html`` (and its .br/.gz) at one viewer or the other before each run.

Each run: a fresh browser context (cold cache), logged in, then
``/pacs-viewer/viewer?StudyInstanceUIDs=...`` of a synthetic CT pushed through the
pipeline, with bench/viewer_load.py's page probes. Measured: OHIF's ``scriptToView`` (its
console timer, from the first inline script of index.html to the first image); the first
image on the canvas (when Cornerstone's canvas first shows lit pixels, on the page's
clock: 0 = navigation start); the requests and bytes before that moment. Runs alternate
between the two viewers (the first of each round alternates too); medians are reported.
Each run's screenshot must show the phantom.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.browser import (
    CHROMIUM,
    CHROMIUM_ARGS,
    MIN_CORRELATION,
    best_match,
    canvas_picture,
    windowed_views,
)
from bench.harness import (
    BENCH_USER,
    REPO,
    Appliance,
    OthersMeter,
    QuietGate,
    machine,
    markdown_table,
    run_in_workdir,
    running,
    verdict,
)
from bench.synthetic import make_slices, write_series
from bench.viewer import browser_processes
from bench.viewer_load import FIRST_IMAGE_TIMEOUT, NetworkLog, PageLoad, ohif_timings, poll

GOAL_RATIO = 0.8
VIEWPORT = {"width": 1280, "height": 800}
VIEWERS = ("stock", "ours")
# The files that make one viewer or the other; everything else is shared.
VARIANT_FILES = ("index.html", "index.html.br", "index.html.gz")
FETCH_OHIF = REPO / "packaging" / "fetch_ohif.py"


def load_fetch_ohif() -> ModuleType:
    """Import ``packaging/fetch_ohif.py`` by path (``packaging/`` is not a package)."""
    spec = importlib.util.spec_from_file_location("fetch_ohif", FETCH_OHIF)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look the module up by name
    spec.loader.exec_module(module)
    return module


# --------------------------------------------------------------------------- the viewers


def installed_viewer(fetch_ohif: ModuleType) -> Path:
    """``spa_dist/pacs-viewer`` if ``fetch_ohif.py`` installed it as it is now."""
    viewer = REPO / "spa_dist" / "pacs-viewer"
    marker = fetch_ohif.expected_marker(fetch_ohif.render_app_config())
    if not fetch_ohif.is_installed(viewer, marker):
        raise SystemExit(f"{viewer} is missing or out of date: run "
                         "`python packaging/fetch_ohif.py` first")  # fmt: skip
    return viewer


def build_stock(fetch_ohif: ModuleType, target: Path) -> Path:
    """The stock viewer's own files in ``target``: the dist with OHIF's registrations,
    its index.html and main bundle precompressed as the installed ones are."""
    tarball = fetch_ohif.fetch_tarball(fetch_ohif.default_cache_dir())
    fetch_ohif.extract_dist(tarball, target)
    fetch_ohif.patch_tree(target, trim=False)
    for name in ("index.html", fetch_ohif.main_bundle_name(target)):
        fetch_ohif.compress_file(target / name)
    fetch_ohif.make_world_readable(target)
    return target


def stock_viewer(fetch_ohif: ModuleType) -> Path:
    """The stock viewer, built once per OHIF version and install format in the cache
    (brotli's best on the 17 MB bundle takes minutes on 2 cores)."""
    cache = fetch_ohif.default_cache_dir()
    stock = cache / f"ohif-stock-{fetch_ohif.OHIF_VERSION}-{fetch_ohif.INSTALL_FORMAT}"
    if (stock / "index.html.br").is_file():
        return stock
    print(f"building the stock viewer into {stock} ...", flush=True)
    staged = cache / f".{stock.name}.partial"
    shutil.rmtree(staged, ignore_errors=True)
    os.replace(build_stock(fetch_ohif, staged), stock)
    return stock


def own_copy(stock: Path, bundle: str, target: Path) -> Path:
    """The stock viewer's index.html and main bundle (and siblings) copied to ``target``,
    where nginx's workers can read them (the cache is under a home they may not enter)."""
    target.mkdir(parents=True)
    for path in [*stock.glob("index.html*"), *stock.glob(bundle + "*")]:
        shutil.copy(path, target / path.name)
    for path in [target, *target.iterdir()]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return target


def link(target: Path, path: Path) -> None:
    """Make ``path`` a symbolic link to ``target``, replacing what was there at once."""
    temporary = path.with_name(f".{path.name}.new")
    temporary.unlink(missing_ok=True)
    temporary.symlink_to(target)
    os.replace(temporary, path)


def make_overlay(root: Path, ours: Path, stock: Path, stock_bundle: str) -> Path:
    """A ``spa_dist`` package of links: ``main``, and a ``pacs-viewer`` holding our files
    and the stock main bundle (and its siblings); returns the ``pacs-viewer`` folder."""
    package = root / "spa_dist"
    viewer = package / "pacs-viewer"
    viewer.mkdir(parents=True)
    shutil.copy(REPO / "spa_dist" / "__init__.py", package / "__init__.py")
    (package / "main").symlink_to(REPO / "spa_dist" / "main")
    for entry in ours.iterdir():
        if entry.name not in VARIANT_FILES:
            (viewer / entry.name).symlink_to(entry)
    for sibling in stock.glob(stock_bundle + "*"):
        (viewer / sibling.name).symlink_to(sibling)
    for folder in (root, package, viewer):
        folder.chmod(0o755)
    return viewer


def show(viewer: Path, source: Path) -> None:
    """Point the overlay's index.html (and its siblings) at ``source``'s."""
    for name in VARIANT_FILES:
        if (source / name).is_file():
            link(source / name, viewer / name)
        else:
            (viewer / name).unlink(missing_ok=True)


class OverlayAppliance(Appliance):
    """The bench appliance, whose nginx serves the overlay's ``spa_dist``."""

    overlay: Path | None = None

    @property
    def env(self) -> dict[str, str]:
        env = super().env
        if self.overlay is not None:
            env["PYTHONPATH"] = os.pathsep.join([str(self.overlay), env["PYTHONPATH"]])
        return env


# --------------------------------------------------------------------------- one run


def requests_before(network: NetworkLog, moment: float) -> dict[str, int]:
    """Requests sent before ``moment`` (seconds from the document request) and the
    encoded bytes of those that finished."""
    origin = network.document_sent or 0.0
    sent = [r for r in network.requests.values() if r.sent - origin <= moment]
    viewer = [r for r in sent if r.kind == "viewer_app"]
    return {
        "requests": len(sent),
        "bytes": sum(r.encoded_bytes for r in sent),
        "viewer_files": len(viewer),
        "viewer_bytes": sum(r.encoded_bytes for r in viewer),
    }


def open_viewer(
    browser, appliance: Appliance, study_uid: str, views: list, gate: QuietGate
) -> dict[str, Any]:
    """One cold load of the viewer; the measured facts."""
    quiet = gate.wait()
    others = OthersMeter([appliance.process.pid, *browser_processes()]).start()
    context = browser.new_context(viewport=VIEWPORT, device_scale_factor=1)
    try:
        login = context.request.post(
            f"{appliance.url}/api/auth/login",
            data={"username": BENCH_USER, "password": appliance.password},
        )
        if login.status != 200:
            raise RuntimeError(f"login failed: HTTP {login.status}")
        load = PageLoad.open(
            context, f"{appliance.url}/pacs-viewer/viewer?StudyInstanceUIDs={study_uid}"
        )
        poll(load.page, lambda: "scriptToView" in ohif_timings(load.console)
             and "canvas" in load.marks(), FIRST_IMAGE_TIMEOUT, "the first image")  # fmt: skip
        marks = load.marks()
        others_percent = others.percent()
        png = load.page.locator("canvas.cornerstone-canvas").first.screenshot()
        index, score = best_match(canvas_picture(png), views)
        return {
            "ohif_timings_ms": ohif_timings(load.console),
            "marks_s": marks,
            "scriptToView_ms": ohif_timings(load.console)["scriptToView"],
            "first_image_on_canvas_ms": marks["canvas"] * 1e3,
            "before_first_image": requests_before(load.network, marks["canvas"]),
            "errors": load.network.errors()[:10],
            "shown_slice": index,
            "shown_correlation": round(score, 4),
            "before_run": quiet,
            "others_cpu_percent_during_run": others_percent,
        }
    finally:
        context.close()


# --------------------------------------------------------------------------- the bench

METRICS = ("scriptToView_ms", "first_image_on_canvas_ms")


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Medians per viewer and the ratios ours / stock."""
    summary: dict[str, Any] = {}
    for viewer in VIEWERS:
        mine = [run for run in runs if run["viewer"] == viewer]
        row = {key: statistics.median(run[key] for run in mine) for key in METRICS}
        for key in ("requests", "viewer_files", "viewer_bytes"):
            row[f"{key}_before_first_image"] = statistics.median(
                run["before_first_image"][key] for run in mine
            )
        summary[viewer] = row
    summary["ratio_ours_to_stock"] = {
        key: summary["ours"][key] / summary["stock"][key] for key in summary["ours"]
    }
    summary["goal_met"] = summary["ratio_ours_to_stock"]["scriptToView_ms"] <= GOAL_RATIO
    return summary


def render_markdown(results: dict[str, Any]) -> str:
    """The results as markdown: the summary table, then every run."""
    s, m, setup = results["summary"], results["machine"], results["setup"]
    stock, ours, ratio = s["stock"], s["ours"], s["ratio_ours_to_stock"]

    def row(name: str, key: str, unit: str, scale: float = 1.0) -> list[str]:
        return [name, f"{stock[key] * scale:.0f} {unit}", f"{ours[key] * scale:.0f} {unit}",
                f"{ratio[key]:.2f}"]  # fmt: skip

    table = markdown_table(
        ["median of runs", "stock OHIF 3.13.2", "NeuroNova's", "ours / stock"],
        [
            row("OHIF `scriptToView`", "scriptToView_ms", "ms"),
            row("navigation -> first image on the canvas", "first_image_on_canvas_ms", "ms"),
            row("requests before the first image", "requests_before_first_image", ""),
            row("viewer files fetched before it", "viewer_files_before_first_image", ""),
            row("their bytes (on the wire)", "viewer_bytes_before_first_image", "kB", 1e-3),
        ],
    )
    per_run = markdown_table(
        ["round", "viewer", "scriptToView", "first image on canvas", "requests (viewer files)",
         "shown slice (corr)", "others' CPU %"],
        [
            [run["round"], run["viewer"], f"{run['scriptToView_ms']:.0f} ms",
             f"{run['first_image_on_canvas_ms']:.0f} ms",
             f"{run['before_first_image']['requests']} "
             f"({run['before_first_image']['viewer_files']})",
             f"{run['shown_slice'] + 1} ({run['shown_correlation']:.3f})",
             f"{run['others_cpu_percent_during_run']:.0f}"]
            for run in results["runs"]
        ],
    )  # fmt: skip
    busy = [run["others_cpu_percent_during_run"] for run in results["runs"]]
    return "\n".join(
        [
            f"# Viewer start-up benchmark (OHIF {setup['ohif']}, {setup['slices']}-slice CT, "
            "loopback, cold cache)",
            "",
            f"Goal: OHIF start-up (`scriptToView`, loopback) at most {GOAL_RATIO}x the stock "
            f"configuration's: **{ratio['scriptToView_ms']:.2f}x**, "
            f"{verdict(s['goal_met'])}.",
            "",
            f"Machine: {m['nproc']} CPUs, {m['cpu_model']}; {setup['chromium']} (headless, "
            f"software WebGL); {m['nginx']}. {setup['runs']} runs per viewer, alternating; "
            f"other processes used {min(busy):.0f}-{max(busy):.0f}% of one core during the "
            "runs (median "
            f"{statistics.median(busy):.0f}%).",
            "",
            table,
            "",
            "- stock: OHIF's own registrations (modes longitudinal, basic, segmentation, tmtv, "
            "microscopy, preclinical-4d, ultrasound-pleura-bline; extensions default, "
            "cornerstone, ultrasound-pleura-bline), served as before this work (main bundle "
            f"and codec preloaded: {setup['stock_preloads']} preloads with OHIF's own).",
            f"- ours: {', '.join(setup['kept_plugins'])} registered; {setup['preloads']} "
            "preloads (the main bundle, the codec, the chunks of the viewer mode and of the "
            "extensions it loads). Both with the same app-config.js (the same data source, "
            "no investigational-use dialog, no tour, no study list).",
            "- `scriptToView` is OHIF's console timer from the inline script at the top of "
            "index.html to the first image; the first image on the canvas is when "
            "Cornerstone's canvas first shows lit pixels (page clock, 0 = navigation start). "
            "Requests and bytes are those sent before that moment (encoded, headers "
            "included).",
            "",
            *([f"Note: {setup['note']}", ""] if setup.get("note") else []),
            "Per run:",
            "",
            per_run,
        ]
    )


def bench(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Build the stock viewer, serve both, time them alternately."""
    from playwright.sync_api import sync_playwright

    fetch_ohif = load_fetch_ohif()
    ours = installed_viewer(fetch_ohif)
    cached = stock_viewer(fetch_ohif)
    bundle = fetch_ohif.main_bundle_name(cached)
    stock = own_copy(cached, bundle, workdir / "stock")
    overlay = workdir / "overlay"
    viewer = make_overlay(overlay, ours, stock, bundle)
    show(viewer, ours)
    # `python -m` puts the working folder first on sys.path: not the repository, whose
    # spa_dist would hide the overlay's.
    os.chdir(workdir)
    slices = make_slices(args.slices)
    views = windowed_views(slices)
    appliance = OverlayAppliance.create(workdir / "home")
    appliance.overlay = overlay
    runs: list[dict[str, Any]] = []
    gate = QuietGate(args.quiet_budget)
    with running(appliance):
        series = write_series(workdir / "series", slices)
        appliance.push(series.files)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
            chromium = f"Chromium {browser.version}"
            for source in (stock, ours):  # untimed: warms nginx, Orthanc, the page cache
                show(viewer, source)
                open_viewer(browser, appliance, series.study_uid, views, gate)
            for number in range(args.runs):
                order = VIEWERS if number % 2 == 0 else VIEWERS[::-1]
                for name in order:
                    show(viewer, stock if name == "stock" else ours)
                    run = open_viewer(browser, appliance, series.study_uid, views, gate)
                    run.update(viewer=name, round=number + 1)
                    print(f"round {number + 1} {name}: scriptToView {run['scriptToView_ms']:.0f}"
                          f" ms, first image on canvas {run['first_image_on_canvas_ms']:.0f} ms",
                          flush=True)  # fmt: skip
                    if run["shown_correlation"] < MIN_CORRELATION:
                        raise RuntimeError(f"{name}: the viewer did not show the phantom: {run}")
                    runs.append(run)
            browser.close()
    os.chdir(REPO)
    return {
        "benchmark": "viewer_startup",
        "goal": "OHIF start-up (scriptToView, loopback) at most 0.8x the stock configuration's",
        "machine": machine(),
        "setup": {
            "slices": args.slices,
            "runs": args.runs,
            "note": args.note,
            "ohif": fetch_ohif.OHIF_VERSION,
            "chromium": chromium,
            "viewport": VIEWPORT,
            "kept_plugins": list(fetch_ohif.KEPT_PLUGINS),
            "preloads": index_preloads(ours / "index.html"),
            "stock_preloads": index_preloads(stock / "index.html"),
        },
        "runs": runs,
        "summary": summarize(runs),
    }


def index_preloads(index: Path) -> int:
    """How many ``<link rel="preload">`` an index.html has (OHIF's own one included)."""
    return index.read_text(encoding="utf-8").count('rel="preload"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs per viewer")
    parser.add_argument("--slices", type=int, default=40, help="slices of the CT shown")
    parser.add_argument("--out", type=Path,
                        default=REPO / "bench" / "results" / "viewer_startup.json")  # fmt: skip
    parser.add_argument("--quiet-budget", type=float, default=600.0,
                        help="seconds the whole run may wait for a quieter machine")  # fmt: skip
    parser.add_argument("--note", default="", help="a remark printed with the results")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = parser.parse_args(argv)
    args.out = args.out.resolve()
    started = time.monotonic()
    status = run_in_workdir("viewer-startup", args, bench, render_markdown)
    print(f"done in {time.monotonic() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
