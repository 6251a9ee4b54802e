"""The nginx and Orthanc programs and Orthanc's DICOMweb plugin (found as every bundled
program is: :mod:`appliance.programs`)."""

from __future__ import annotations

from pathlib import Path

from appliance.programs import Program, bundle_dir, find_orthanc_plugin

NGINX = Program("nginx", "nginx-light")
# Serves the viewer's precompressed .br files (packaging/fetch_ohif.py writes them);
# without it nginx serves their .gz siblings (gzip_static).
BROTLI_STATIC_MODULE = "ngx_http_brotli_static_module.so"
BROTLI_STATIC_PACKAGE = "libnginx-mod-http-brotli-static"
# The bundle keeps nginx's dynamic modules here (packaging/neuronova.spec).
BUNDLE_NGINX_MODULES = "nginx-modules"
ORTHANC = Program("Orthanc", "orthanc")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"


def find_dicomweb_plugin() -> Path:
    """The Orthanc DICOMweb plugin; :class:`MissingBinaryError` naming the package otherwise."""
    return find_orthanc_plugin(DICOMWEB_PLUGIN, "orthanc-dicomweb")


def find_nginx_module(name: str, nginx: Path) -> Path | None:
    """The dynamic module ``name`` built for ``nginx``, or ``None`` if it is not there.

    A module loads only into the nginx it was built for, so it is looked for beside that
    nginx: the bundle's ``nginx-modules/`` for the bundled one, and the modules folder of
    the installation otherwise (``/usr/sbin/nginx``: Debian's ``/usr/lib/nginx/modules``).
    """
    program = nginx.resolve()
    bundle = bundle_dir()
    if bundle is not None and program.is_relative_to(bundle.resolve()):
        folder = bundle / BUNDLE_NGINX_MODULES
    else:
        folder = program.parent.parent / "lib" / "nginx" / "modules"
    candidate = folder / name
    return candidate if candidate.is_file() else None
