"""nginx: its configuration, rendered into the data home at every start, and its command."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import re
import secrets
from pathlib import Path

from yarl import URL

import bundled_nginx
from appliance import internal_locations
from appliance.config import Settings, is_host_name
from appliance.errors import MissingBinaryError
from appliance.layout import HomeLayout
from appliance.programs import find_program
from appliance.security.keys import write_private_file
from appliance.security.tls import TLSError, cert_file, certificate_info, host_names, key_file
from appliance.store.frame_files import BOUNDARY as FRAMES_BOUNDARY
from appliance.store.orthanc import orthanc_auth_header
from appliance.supervise.binaries import BROTLI_STATIC_MODULE, NGINX, find_nginx_module
from appliance.supervise.nginx_user import let_workers_reach, user_directive, worker_user
from spa_dist import spa_root

_PLACEHOLDER = re.compile(r"\{\{(\w+)\}\}")
TEMP_SUBDIRS = ("body", "proxy", "fastcgi", "uwsgi", "scgi")
APP_PROXY = """\
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto $scheme;
            proxy_set_header X-Original-URI $request_uri;
            proxy_read_timeout 300s;"""
SECURITY_HEADERS = (
    ("X-Content-Type-Options", "nosniff"),
    ("Referrer-Policy", "same-origin"),
    ("X-Frame-Options", "SAMEORIGIN"),
)
HSTS = ("Strict-Transport-Security", "max-age=31536000")
CSP = (
    "default-src 'self'; script-src 'self'{scripts}; "
    "worker-src 'self' blob:; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data: blob:; font-src 'self' data:; connect-src 'self' data: blob:; "
    "media-src 'self' blob:; object-src 'none'; base-uri 'self'; form-action 'self'; "
    "frame-ancestors 'self'"
)
# OHIF compiles its WASM decoders, and their emscripten glue builds functions from
# strings in the decode worker (createNamedFunction): the viewer alone needs both.
VIEWER_SCRIPTS = " 'wasm-unsafe-eval' 'unsafe-eval'"
# Host headers that are IP literals cannot come from DNS rebinding: always accepted.
IP_HOSTS = ("~^[0-9.]+$", "~^\\[[0-9a-fA-F:.]+\\]$")
_INLINE_SCRIPT = re.compile(r"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
UNKNOWN_HOST = "This host name is not one of the appliance names; add it to [web] server_names."


def render_template(text: str, values: dict[str, str]) -> str:
    """Replace every ``{{name}}`` in ``text``; a name without a value is an error."""

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise KeyError(f"template placeholder {{{{{name}}}}} has no value")
        return values[name]

    return _PLACEHOLDER.sub(substitute, text)


TLS_SETTINGS = """
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.2 TLSv1.3;
        ssl_prefer_server_ciphers off;
        ssl_session_cache shared:neuronova_tls:10m;
        ssl_session_timeout 1d;
"""


def _listen(settings: Settings, port: int, tls: bool = False, default: bool = False) -> str:
    # HTTP/2 on the TLS port (browsers speak it only over TLS): the viewer's frames and
    # files multiplexed on one connection instead of six HTTP/1.1 ones per host.
    suffix = (" http2 ssl" if tls else "") + (" default_server" if default else "")
    return f"        listen {settings.network.bind}:{port}{suffix};"


def server_names(settings: Settings, layout: HomeLayout) -> list[str]:
    """The Host names nginx answers to; any other name gets 421 (DNS rebinding).

    The names the self-signed certificate is made for (this machine's host names and
    ``localhost``), the DNS names of an installed certificate, the host of ``[web]
    public_url``, ``[web] server_names``, and any IP address.
    """
    names = ["localhost", *host_names(), *settings.web.server_name_list]
    if settings.web.public_url:
        names.append(URL(settings.web.public_url).host or "")
    with contextlib.suppress(TLSError):
        names += certificate_info(layout).names
    valid = [n.lower() for n in names if is_host_name(n) and not n.replace(".", "").isdigit()]
    return list(dict.fromkeys(valid)) + list(IP_HOSTS)


def security_headers(app: str | None, hsts: bool) -> str:
    """``add_header`` lines for the responses of ``app`` (``main`` or ``pacs-viewer``), or
    for data that is never a page (``None``: frames and images, no policy for scripts)."""
    headers = list(SECURITY_HEADERS)
    if app is not None:
        headers.append(("Content-Security-Policy", content_security_policy(app)))
    if hsts:
        headers.append(HSTS)
    return "\n".join(f'        add_header {name} "{value}" always;' for name, value in headers)


def content_security_policy(app: str) -> str:
    """The CSP of one app, allowing the inline scripts of its ``index.html`` by hash."""
    index = spa_root() / app / "index.html"
    text = index.read_text(encoding="utf-8") if index.exists() else ""
    scripts = VIEWER_SCRIPTS if app == "pacs-viewer" else ""
    for script in dict.fromkeys(_INLINE_SCRIPT.findall(text)):
        digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
        scripts += f" 'sha256-{digest}'"
    return CSP.format(scripts=scripts)


def _headers(hsts: bool) -> dict[str, str]:
    return {
        "security_headers": security_headers("main", hsts),
        "viewer_security_headers": security_headers("pacs-viewer", hsts),
        # The viewer's hot path: every frame would carry the apps' ~600-byte policy.
        "data_security_headers": security_headers(None, hsts),
    }


def _clinic_certificate(layout: HomeLayout) -> bool:
    """Whether nginx serves a certificate the clinic installed (then HSTS is safe)."""
    try:
        return not certificate_info(layout).generated
    except TLSError:
        return False


def nginx_logs(layout: HomeLayout, stdout_logs: bool) -> tuple[str, str]:
    """nginx's error and access log destinations: ``HOME/logs`` or stderr and stdout."""
    if stdout_logs:
        return "stderr", "/dev/stdout"
    return str(layout.log_dir / "nginx-error.log"), str(layout.log_dir / "nginx-access.log")


def real_ip_settings(settings: Settings) -> str:
    """With ``[web] cloudflare``, the realip lines trusting Cloudflare's ranges only."""
    return (
        bundled_nginx.template_text("cloudflare.conf.template") if settings.web.cloudflare else ""
    )


def brotli_static_module() -> Path | None:
    """Debian's ``ngx_http_brotli_static_module`` for the nginx that will run, if present."""
    try:
        nginx = find_program(NGINX)
    except MissingBinaryError:
        return None
    return find_nginx_module(BROTLI_STATIC_MODULE, nginx)


def precompressed(brotli: bool) -> str:
    """The directives that send the viewer's precompressed siblings (``.br`` to browsers
    that accept brotli when the module is loaded, else ``.gz``) instead of compressing
    the same files again at every cold load."""
    lines = ["brotli_static on;"] if brotli else []
    lines += ["gzip_static on;", "gzip_vary on;"]
    return "\n".join(f"            {line}" for line in lines)


def render_nginx_conf(settings: Settings, stdout_logs: bool = False) -> Path:
    """Write ``nginx.conf`` (mode 0600: it holds Orthanc's credentials) and its folders.

    ``stdout_logs`` sends nginx's logs to its stdout and stderr (in a container) instead
    of ``HOME/logs``.
    """
    layout = settings.layout
    temp_dir = layout.run_dir / "nginx" / "temp"
    for sub in TEMP_SUBDIRS:
        (temp_dir / sub).mkdir(parents=True, exist_ok=True)
    workers = worker_user(settings)
    let_workers_reach(
        workers, layout.home, [layout.frames_dir, spa_root(), layout.log_dir, temp_dir]
    )
    basic = orthanc_auth_header(settings).removeprefix("Basic ")
    brotli = brotli_static_module()
    instance_id = secrets.token_hex(8)
    layout.nginx_instance_file.write_text(instance_id)
    common = {
        "orthanc_basic_auth": basic,
        "spa_dir": str(spa_root()),
        "frames_dir": str(layout.frames_dir),
        "instance_id": instance_id,
        "frames_boundary": FRAMES_BOUNDARY,
        "app_proxy": APP_PROXY,
        "https_port": str(settings.web.https_port),
        "server_names": " ".join(server_names(settings, layout)),
        "max_upload": f"{settings.web.max_upload_mb}m",
        "viewer_precompressed": precompressed(brotli is not None),
        **internal_locations.template_values(),
    }
    app_server = bundled_nginx.template_text("server.conf.template")
    tls = TLS_SETTINGS.format(cert=cert_file(layout), key=key_file(layout))
    https = render_template(
        app_server,
        {
            **common,
            "listen": _listen(settings, settings.web.https_port, tls=True),
            "server_extra": tls,
            **_headers(hsts=_clinic_certificate(layout)),
        },
    )
    plain_template = (
        "redirect.conf.template" if settings.web.redirect_to_https else "server.conf.template"
    )
    plain = render_template(
        bundled_nginx.template_text(plain_template),
        {
            **common,
            "listen": _listen(settings, settings.web.http_port),
            "server_extra": "",
            **_headers(hsts=False),
        },
    )
    unknown = render_template(
        bundled_nginx.template_text("unknown-host.conf.template"),
        {
            "listen": _listen(settings, settings.web.http_port, default=True)
            + "\n"
            + _listen(settings, settings.web.https_port, tls=True, default=True),
            "server_extra": tls,
            "message": UNKNOWN_HOST,
        },
    )
    servers = "\n".join((unknown, plain, https))
    error_log, access_log = nginx_logs(layout, stdout_logs)
    text = render_template(
        bundled_nginx.template_text(),
        {
            "user_line": user_directive(workers),
            "load_modules": f"load_module {brotli};" if brotli else "",
            "run_dir": str(layout.nginx_conf.parent),
            "error_log": error_log,
            "access_log": access_log,
            "temp_dir": str(temp_dir),
            "mime_types": str(bundled_nginx.mime_types_path()),
            "app_host": settings.internal.app_host,
            "orthanc_host": settings.internal.orthanc_host,
            "real_ip": real_ip_settings(settings),
            "app_port": str(settings.internal.app_port),
            "gate_port": str(settings.internal.gate_port),
            "orthanc_port": str(settings.internal.orthanc_port),
            "servers": servers,
        },
    )
    write_private_file(layout.nginx_conf, text.encode())
    return layout.nginx_conf


def nginx_command(nginx: Path, settings: Settings, stdout_logs: bool = False) -> list[str]:
    """The argv that starts nginx in the foreground with every compiled-in path overridden."""
    layout = settings.layout
    error_log = nginx_logs(layout, stdout_logs)[0]
    prefix = layout.nginx_conf.parent
    return [
        str(nginx),
        "-p",
        f"{prefix}/",
        "-c",
        str(layout.nginx_conf),
        "-e",
        error_log,
    ]
