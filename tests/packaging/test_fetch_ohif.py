"""Offline tests for ``packaging/fetch_ohif.py`` (patches, integrity, app-config, install).

The real download is exercised by running the set-up script; nothing here uses the network.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.scripts import packaging_script
from tests.support.tools import require_tool

fetch_ohif = packaging_script("fetch_ohif")

INDEX_HTML = (
    '<!doctype html><html><head><meta name="msapplication-TileImage" '
    'content="/assets/mstile-144x144.png">'
    '<script>console.time("scriptToView"),window.PUBLIC_URL="/"</script>'
    '<link rel="manifest" href="/manifest.json">'
    '<link rel="icon" href="//cdn.example/x.ico">'
    '<script src="https://example.org/a.js"></script>'
    '<script rel="preload" as="script" src="/app-config.js"></script>'
    '<script>function browserImportFunction(n){return import(n)}window.PUBLIC_URL="/"</script>'
    '<script defer src="/app.bundle.0f6159c501addfe9.js"></script>'
    '<link href="/app.bundle.css" rel="stylesheet"></head><body></body></html>'
)

# The generated pluginImports.js of the bundle: the registrations, then the loaders.
REMOVED_PLUGINS = ["@ohif/extension-ultrasound-pleura-bline", "@ohif/mode-tmtv"]
# Chunk ids each module's loader fetches: 7 is shared, 8 has a stylesheet only, 99 belongs
# to a mode that is not kept.
LOADER_CHUNKS = {
    "@ohif/extension-default": ["7", "8"],
    "@ohif/extension-cornerstone": ["7", "9"],
    "@ohif/mode-longitudinal": ["10"],
    **{name: ["7", str(20 + i)] for i, name in enumerate(fetch_ohif.VIEWER_MODE_EXTENSIONS)},
    "@ohif/mode-tmtv": ["99"],
}
CHUNK_SCRIPTS = ["7", "9", "10", "99", *(str(20 + i) for i in range(7))]
CHUNK_STYLES = ["8", "9"]


def plugin_imports() -> str:
    """A stand-in for the generated pluginImports.js (OHIF 3.13.2's shape)."""
    pushes = [
        f'pluginImports_{"modes" if "/mode-" in name else "extensions"}.push("{name}");'
        for name in [*fetch_ohif.KEPT_PLUGINS, *REMOVED_PLUGINS]
    ]
    loaders = [
        f'  if (module === "{name}") {{\n    const imported = await Promise.all(/* import() */ '
        f"[{', '.join(f'__webpack_require__.e({c})' for c in chunks)}])"
        ".then(__webpack_require__.bind(__webpack_require__, 1));\n"
        "    return imported.default;\n  }"
        for name, chunks in LOADER_CHUNKS.items()
    ]
    return "\n".join([*pushes, "async function loadModule(module) {", *loaders, "}", ""])


JS_BUNDLE = """\
/******/ 	/* webpack/runtime/publicPath */
/******/ 	(() => {
/******/ 		__webpack_require__.p = "/";
/******/ 	})();
const CT_AAA = (__webpack_require__.p + "assets/images/CT-AAA.png");
""" + plugin_imports()

CSS = (
    "@font-face{src:url(/a34f9d1faa5f3315.woff2) format('woff2')}"
    '.a{background:url("/assets/x.png")}'
    ".b{background:url(data:image/png;base64,AAAA)}"
    ".c{background:url(//cdn.example/y.png)}"
    ".d{background:url(images/z.png)}"
)


def integrity_of(data: bytes) -> str:
    """npm-style sha512 integrity of ``data``."""
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode("ascii")


# --------------------------------------------------------------------------- patches


def test_index_html_is_rebased() -> None:
    text, public_urls, attrs = fetch_ohif.patch_index_html(INDEX_HTML)
    assert public_urls == 2
    assert text.count('window.PUBLIC_URL="/pacs-viewer/"') == 2
    assert attrs == 5  # content, href manifest, src config, src bundle, href css
    assert 'content="/pacs-viewer/assets/mstile-144x144.png"' in text
    assert 'src="/pacs-viewer/app-config.js"' in text
    assert 'src="/pacs-viewer/app.bundle.0f6159c501addfe9.js"' in text
    assert 'href="/pacs-viewer/app.bundle.css"' in text
    assert 'href="//cdn.example/x.ico"' in text
    assert 'src="https://example.org/a.js"' in text
    assert not re.search(r'(src|href|content)="/(?!/|pacs-viewer/)', text)


def test_webpack_public_path_is_rebased() -> None:
    text, count = fetch_ohif.patch_webpack_public_path(JS_BUNDLE)
    assert count == 1
    assert '__webpack_require__.p = "/pacs-viewer/";' in text
    assert '__webpack_require__.p = "/";' not in text
    assert '(__webpack_require__.p + "assets/images/CT-AAA.png")' in text


def test_webpack_public_path_leaves_other_assignments() -> None:
    source = "__webpack_require__.p = scriptUrl;"
    assert fetch_ohif.patch_webpack_public_path(source) == (source, 0)


def test_browser_import_is_rebased() -> None:
    source = "await window.browserImportFunction('/dicom-microscopy-viewer/x.min.js');"
    text, count = fetch_ohif.patch_browser_imports(source)
    assert count == 1
    assert "browserImportFunction('/pacs-viewer/dicom-microscopy-viewer/x.min.js')" in text
    assert fetch_ohif.patch_browser_imports("browserImportFunction(module)")[1] == 0


def test_css_urls_are_rebased() -> None:
    text, count = fetch_ohif.patch_css(CSS)
    assert count == 2
    assert "url(/pacs-viewer/a34f9d1faa5f3315.woff2)" in text
    assert 'url("/pacs-viewer/assets/x.png")' in text
    assert "url(data:image/png;base64,AAAA)" in text
    assert "url(//cdn.example/y.png)" in text
    assert "url(images/z.png)" in text


def test_manifest_icons_are_rebased() -> None:
    source = json.dumps({"icons": [{"src": "/assets/a.png"}], "start_url": "./index.html"})
    text, count = fetch_ohif.patch_manifest(source)
    manifest = json.loads(text)
    assert count == 1
    assert manifest["icons"][0]["src"] == "/pacs-viewer/assets/a.png"
    assert manifest["start_url"] == "./index.html"


CODEC = "37fa160cc3a47cfd.wasm"


def make_dist(root: Path, bundle: str = JS_BUNDLE) -> None:
    """Write a tiny stand-in for the OHIF ``dist/`` folder."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "index.html").write_text(INDEX_HTML)
    (root / "app.bundle.0f6159c501addfe9.js").write_text(bundle)
    (root / "compute.bundle.1.js").write_text(bundle)
    (root / "other.js").write_text("console.log(1);")
    (root / "app.bundle.css").write_text(CSS)
    (root / "manifest.json").write_text(json.dumps({"icons": [{"src": "/assets/a.png"}]}))
    (root / CODEC).write_text("\0asm ... HTJ2KDecoder ...")
    (root / "0ddf166f7a343eda.wasm").write_text("\0asm ... J2KDecoder ...")
    (root / "sw.js").write_text('precache(["/app.bundle.0f6159c501addfe9.js"]);')
    for chunk in CHUNK_SCRIPTS:
        (root / chunk_script(chunk)).write_text(f"chunk({chunk});")
    # Lazy imports: 9 (kept) loads 55, which loads 56; 99 (not kept) loads 66.
    for chunk, imported in (("9", "55"), ("55", "56"), ("99", "66")):
        (root / chunk_script(chunk)).write_text(
            f"__webpack_require__.e(/* import() */ {imported}).then(x);"
        )
    for chunk in ("56", "66"):
        (root / chunk_script(chunk)).write_text(f"chunk({chunk});")
    for chunk in CHUNK_STYLES:
        (root / f"{chunk}.css").write_text(".x{}")


def chunk_script(chunk: str) -> str:
    """The file name of a chunk's script in :func:`make_dist`."""
    return f"{chunk}.bundle.{int(chunk):016x}.js"


def test_patch_tree_reports_every_patch(tmp_path: Path) -> None:
    make_dist(tmp_path)
    report = fetch_ohif.patch_tree(tmp_path, trim=False)
    assert report.js_files == ["app.bundle.0f6159c501addfe9.js", "compute.bundle.1.js"]
    assert (report.index_public_url, report.index_root_attrs) == (2, 5)
    assert (report.css_urls, report.manifest_icons) == (2, 1)
    assert report.preloads == ["app.bundle.0f6159c501addfe9.js", CODEC]
    assert report.removed_plugins == []
    assert '"/pacs-viewer/"' in (tmp_path / "compute.bundle.1.js").read_text()
    assert (tmp_path / "other.js").read_text() == "console.log(1);"


def test_patch_tree_fails_loudly_without_webpack_public_path(tmp_path: Path) -> None:
    make_dist(tmp_path, bundle="console.log('no runtime here');")
    with pytest.raises(fetch_ohif.FetchError, match=r"no JS bundle sets .*__webpack_require__"):
        fetch_ohif.patch_tree(tmp_path)


def test_patch_tree_fails_when_index_has_no_public_url(tmp_path: Path) -> None:
    make_dist(tmp_path)
    (tmp_path / "index.html").write_text('<script src="/app.bundle.x.js"></script>')
    with pytest.raises(fetch_ohif.FetchError, match=r"index\.html patch did not apply"):
        fetch_ohif.patch_tree(tmp_path)


def test_index_html_preloads_the_main_bundle_and_the_htj2k_codec(tmp_path: Path) -> None:
    make_dist(tmp_path)
    fetch_ohif.patch_tree(tmp_path, trim=False)
    text = (tmp_path / "index.html").read_text()
    head = text.index("<head>") + len("<head>")
    assert text[head:].startswith(
        '<link rel="preload" href="/pacs-viewer/app.bundle.0f6159c501addfe9.js" as="script">'
        f'<link rel="preload" href="/pacs-viewer/{CODEC}" as="fetch" type="application/wasm" '
        "crossorigin>"
    )
    assert text.count('rel="preload"') == 3  # and OHIF's own for app-config.js


# --------------------------------------------------------------------------- trim


def test_only_the_viewer_mode_and_its_extensions_are_registered() -> None:
    text, removed = fetch_ohif.trim_plugins(JS_BUNDLE)
    assert removed == REMOVED_PLUGINS
    for name in fetch_ohif.KEPT_PLUGINS:
        assert text.count(f'.push("{name}");') == 1
    for name in REMOVED_PLUGINS:
        assert f'.push("{name}");' not in text
    assert 'if (module === "@ohif/mode-tmtv")' in text  # the loaders stay


def test_trim_fails_loudly_when_a_kept_plugin_is_not_registered() -> None:
    source = JS_BUNDLE.replace('pluginImports_modes.push("@ohif/mode-longitudinal");', "")
    with pytest.raises(fetch_ohif.FetchError, match=r"does not register .*mode-longitudinal"):
        fetch_ohif.trim_plugins(source)


def test_trimmed_bundle_takes_the_hash_of_its_new_content(tmp_path: Path) -> None:
    make_dist(tmp_path)
    report = fetch_ohif.patch_tree(tmp_path)
    [bundle] = [p for p in tmp_path.glob("app.bundle.*.js")]
    assert report.main_bundle == bundle.name != "app.bundle.0f6159c501addfe9.js"
    assert bundle.name == f"app.bundle.{hashlib.sha256(bundle.read_bytes()).hexdigest()[:16]}.js"
    assert report.removed_plugins == REMOVED_PLUGINS
    assert '.push("@ohif/mode-tmtv")' not in bundle.read_text()
    for referrer in ("index.html", "sw.js"):
        text = (tmp_path / referrer).read_text()
        assert f"/{bundle.name}" in text and "0f6159c501addfe9" not in text


def test_the_viewer_routes_chunks_are_preloaded_once_each(tmp_path: Path) -> None:
    make_dist(tmp_path)
    report = fetch_ohif.patch_tree(tmp_path)
    scripts = ["7", "9", "10", *(str(20 + i) for i in range(7))]
    chunks = [chunk_script(c) for c in scripts]
    chunks[1:1] = ["8.css"]
    chunks.insert(chunks.index(chunk_script("9")) + 1, "9.css")
    chunks += [chunk_script("55"), chunk_script("56")]  # what the chunks load lazily
    assert report.preloads == [report.main_bundle, CODEC, *chunks]
    text = (tmp_path / "index.html").read_text()
    assert f'<link rel="preload" href="/pacs-viewer/{chunk_script("7")}" as="script">' in text
    assert '<link rel="preload" href="/pacs-viewer/8.css" as="style">' in text
    assert chunk_script("99") not in text  # the chunk of a mode that is not kept
    assert chunk_script("66") not in text


def test_a_chunk_without_files_fails_loudly(tmp_path: Path) -> None:
    make_dist(tmp_path)
    (tmp_path / chunk_script("10")).unlink()
    with pytest.raises(fetch_ohif.FetchError, match=r"webpack chunk 10"):
        fetch_ohif.patch_tree(tmp_path)


def test_preloads_fail_loudly_without_the_codec(tmp_path: Path) -> None:
    make_dist(tmp_path)
    (tmp_path / CODEC).unlink()
    with pytest.raises(fetch_ohif.FetchError, match=r"expected one OpenJPH \.wasm"):
        fetch_ohif.patch_tree(tmp_path)


# --------------------------------------------------------------------------- precompress


def test_precompress_writes_br_and_gz_siblings_that_decode_to_the_file(tmp_path: Path) -> None:
    brotli = pytest.importorskip("brotli")
    text = ("function f(x) { return x * 2; }\n" * 400).encode()
    (tmp_path / "app.bundle.0f6159c501addfe9.js").write_bytes(text)
    (tmp_path / "app.bundle.css").write_bytes(b".a{color:red}\n" * 200)
    (tmp_path / "codec.wasm").write_bytes(b"\0asm" + bytes(4000))
    (tmp_path / "small.js").write_bytes(b"x" * 100)  # under gzip_min_length: left alone
    (tmp_path / "logo.png").write_bytes(b"\x89PNG" + bytes(4000))  # images are compressed
    (tmp_path / "x.js.map").write_bytes(b"{}" * 2000)  # not shipped
    (tmp_path / "ort").mkdir()
    (tmp_path / "ort" / "ort.min.js").write_bytes(text)  # not shipped
    (tmp_path / "random.js").write_bytes(os.urandom(4096))  # would not shrink: no siblings

    count, raw, br, gz = fetch_ohif.precompress_tree(tmp_path)

    names = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.*[rz]"))
    assert names == [
        "app.bundle.0f6159c501addfe9.js.br",
        "app.bundle.0f6159c501addfe9.js.gz",
        "app.bundle.css.br",
        "app.bundle.css.gz",
        "codec.wasm.br",
        "codec.wasm.gz",
    ]
    assert count == 4 and br < gz < raw
    for name in ("app.bundle.0f6159c501addfe9.js", "app.bundle.css", "codec.wasm"):
        original = (tmp_path / name).read_bytes()
        assert brotli.decompress((tmp_path / f"{name}.br").read_bytes()) == original
        assert gzip.decompress((tmp_path / f"{name}.gz").read_bytes()) == original
    # gzip -9 without a name or a time: the same bytes at every build.
    packed = (tmp_path / "app.bundle.css.gz").read_bytes()
    assert packed[3] == 0 and packed[4:8] == bytes(4) and packed[8] == 2


# --------------------------------------------------------------------------- integrity


def test_integrity_accepts_matching_hash(tmp_path: Path) -> None:
    path = tmp_path / "a.tgz"
    path.write_bytes(b"tarball bytes")
    fetch_ohif.verify_integrity(path, integrity_of(b"tarball bytes"))


def test_integrity_refuses_wrong_hash_naming_both(tmp_path: Path) -> None:
    path = tmp_path / "a.tgz"
    path.write_bytes(b"tampered bytes")
    expected = integrity_of(b"tarball bytes")
    with pytest.raises(fetch_ohif.FetchError) as caught:
        fetch_ohif.verify_integrity(path, expected)
    message = str(caught.value)
    assert "integrity mismatch for a.tgz" in message
    assert f"expected {expected}" in message
    assert f"got {integrity_of(b'tampered bytes')}" in message


def test_pinned_integrity_is_sha512() -> None:
    assert fetch_ohif.OHIF_INTEGRITY.startswith("sha512-")
    assert len(base64.b64decode(fetch_ohif.OHIF_INTEGRITY[7:])) == 64


# --------------------------------------------------------------------------- app-config

CREDENTIAL_KEY = re.compile(
    r"\b(auth|authorization|token|access_token|bearer|password|headers|requestOptions|oidc)"
    r"\s*:",
    re.IGNORECASE,
)


def test_app_config_has_no_credentials_or_accept_override() -> None:
    text = fetch_ohif.render_app_config()
    assert not CREDENTIAL_KEY.search(text)
    assert not re.search(r"\b(acceptHeader|requestTransferSyntaxUID)\s*:", text)


def test_app_config_sets_roots_and_basename() -> None:
    text = fetch_ohif.render_app_config()
    assert 'routerBasename: "/pacs-viewer"' in text
    for key in ("qidoRoot", "wadoRoot", "wadoUriRoot"):
        assert f'{key}: "/api/pacs/dicom-web"' in text
    assert "'@ohif/extension-default.dataSourcesModule.dicomweb'" in text


def run_in_node(script: str) -> dict:
    """What ``script`` (app-config.js and a probe) writes as JSON, run by Node without a
    page (``window`` an empty object)."""
    result = subprocess.run(
        [require_tool("node", "nodejs"), "-e", "const window = {};\n" + script],
        capture_output=True, text=True, check=True, timeout=30,
    )  # fmt: skip
    return json.loads(result.stdout)


def test_app_config_evaluates_in_javascript() -> None:
    script = fetch_ohif.render_app_config() + (
        "\nconst c = window.config;"
        "\nconst out = {...c, httpErrorHandler: typeof c.httpErrorHandler};"
        "\nprocess.stdout.write(JSON.stringify(out));"
    )
    config = run_in_node(script)
    assert config["routerBasename"] == "/pacs-viewer"
    assert config["showStudyList"] is False
    assert config["investigationalUseDialog"] == {"option": "never"}
    assert config["customizationService"] == {"ohif.tours": {"$set": []}}
    assert config["httpErrorHandler"] == "function"
    [source] = config["dataSources"]
    assert config["defaultDataSourceName"] == source["sourceName"] == "neuronova"
    assert source["namespace"] == "@ohif/extension-default.dataSourcesModule.dicomweb"
    ds = source["configuration"]
    assert ds["qidoRoot"] == ds["wadoRoot"] == ds["wadoUriRoot"] == "/api/pacs/dicom-web"
    assert ds["imageRendering"] == ds["thumbnailRendering"] == "wadors"
    assert ds["staticWado"] is False
    assert ds["omitQuotationForMultipartRequest"] is True
    assert ds["bulkDataURI"] == {"enabled": True}
    assert "acceptHeader" not in ds and "requestTransferSyntaxUID" not in ds
    # HTTP/2: more requests in flight than HTTP/1.1's six connections would allow.
    assert config["maxNumRequests"] == {"interaction": 100, "thumbnail": 25, "prefetch": 100}
    # Progressive HTJ2K: each frame of a stack in two byte ranges, the first decoded alone.
    progressive = ds["stackRetrieveOptions"]
    stages = [progressive["retrieveOptions"][s["retrieveType"]] for s in progressive["stages"]]
    assert stages == [
        {"rangeIndex": 0, "chunkSize": fetch_ohif.FIRST_RANGE_BYTES},
        {"rangeIndex": -1},
    ]
    assert progressive["retrieveOptions"]["default"] == {}  # the prefetch: whole frames


def test_app_config_brands_the_viewer_and_runs_without_a_page() -> None:
    """NeuroNova's part (packaging/ohif_neuronova.js) is appended after window.config and
    gives OHIF its logo component; without a DOM (here, Node) it does nothing else."""
    text = fetch_ohif.render_app_config()
    assert text.index("window.config = {") < text.index("createLogoComponentFn")
    assert text.endswith(fetch_ohif.VIEWER_SCRIPT.read_text(encoding="utf-8"))
    script = text + (
        "\nconst made = [];"
        "\nconst React = {createElement: (type, props) => (made.push(type), {type, props})};"
        "\nconst logo = window.config.whiteLabeling.createLogoComponentFn(React, {});"
        "\nconst again = window.config.whiteLabeling.createLogoComponentFn(React, {});"
        "\nprocess.stdout.write(JSON.stringify({"
        "\n  name: logo.type.name, same: logo.type === again.type,"
        "\n  fetchWrapped: typeof window.fetch}));"
    )
    found = run_in_node(script)
    # One component type for every render of OHIF's header (React keeps its state).
    assert found == {"name": "NeuroNovaBrand", "same": True, "fetchWrapped": "undefined"}


# --------------------------------------------------------------------------- extract, install


def make_tarball(path: Path, files: dict[str, str]) -> bytes:
    """Write a gzipped npm-like tarball holding ``files`` and return its bytes."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def test_extract_takes_only_dist(tmp_path: Path) -> None:
    tarball = tmp_path / "p.tgz"
    make_tarball(
        tarball,
        {"package/package.json": "{}", "package/dist/index.html": "x", "package/dist/a/b.js": "y"},
    )
    target = tmp_path / "out"
    target.mkdir()
    assert fetch_ohif.extract_dist(tarball, target) == 2
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*.*")) == [
        "a/b.js",
        "index.html",
    ]


def test_extract_refuses_path_traversal(tmp_path: Path) -> None:
    tarball = tmp_path / "p.tgz"
    make_tarball(tarball, {"package/dist/../../evil.js": "x"})
    with pytest.raises(fetch_ohif.FetchError, match="unsafe path"):
        fetch_ohif.extract_dist(tarball, tmp_path / "out")


def test_install_from_cache_then_noop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    files = {f"package/dist/{p.name}": p.read_text() for p in _dist_files(tmp_path / "src")}
    data = make_tarball(cache / fetch_ohif.TARBALL_NAME, files)
    monkeypatch.setattr(fetch_ohif, "OHIF_INTEGRITY", integrity_of(data))

    def no_network(*_args: object) -> Path:
        raise AssertionError("npm must not run when a verified tarball is cached")

    monkeypatch.setattr(fetch_ohif, "npm_pack", no_network)
    dest = tmp_path / "spa_dist" / "pacs-viewer"
    argv = ["--dest", str(dest), "--cache", str(cache)]

    assert fetch_ohif.main(argv) == 0
    assert "app-config.js" in {p.name for p in dest.iterdir()}
    assert (dest / "app-config.js.br").is_file() and (dest / "app-config.js.gz").is_file()
    assert "/api/pacs/dicom-web" in (dest / "app-config.js").read_text()
    assert (dest / fetch_ohif.MARKER_NAME).is_file()
    assert dest.stat().st_mode & 0o777 == 0o755
    assert list(dest.parent.glob(".pacs-viewer.*")) == []

    capsys.readouterr()
    assert fetch_ohif.main(argv) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_install_refuses_tampered_download(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def fake_npm_pack(_spec: str, destination: Path) -> Path:
        tarball = destination / fetch_ohif.TARBALL_NAME
        tarball.write_bytes(b"not the pinned tarball")
        return tarball

    monkeypatch.setattr(fetch_ohif, "npm_pack", fake_npm_pack)
    dest = tmp_path / "pacs-viewer"
    assert fetch_ohif.main(["--dest", str(dest), "--cache", str(tmp_path / "cache")]) == 1
    err = capsys.readouterr().err
    assert "integrity mismatch" in err
    assert f"expected {fetch_ohif.OHIF_INTEGRITY}" in err
    assert not dest.exists()
    assert not (tmp_path / "cache" / fetch_ohif.TARBALL_NAME).exists()


def _dist_files(root: Path) -> list[Path]:
    """Create a synthetic dist under ``root`` and list its files."""
    make_dist(root)
    return sorted(root.iterdir())


def test_npm_error_summary_prefers_npm_json() -> None:
    stdout = json.dumps({"error": {"code": "E404", "summary": "Not Found - GET x"}})
    assert fetch_ohif.npm_error_summary(stdout, "npm error ...") == "E404: Not Found - GET x"
    assert fetch_ohif.npm_error_summary("", "npm error code E1\nnpm error x\n") == (
        "npm error code E1 / npm error x"
    )
