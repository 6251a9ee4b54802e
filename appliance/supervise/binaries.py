"""The nginx and Orthanc programs and Orthanc's DICOMweb plugin (found as every bundled
program is: :mod:`appliance.programs`)."""

from __future__ import annotations

from pathlib import Path

from appliance.errors import MissingBinaryError
from appliance.programs import Program, bundle_dir

NGINX = Program("nginx", "nginx-light")
ORTHANC = Program("Orthanc", "orthanc")
DICOMWEB_PLUGIN = "libOrthancDicomWeb.so"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc/plugins")


def find_dicomweb_plugin() -> Path:
    """The Orthanc DICOMweb plugin; :class:`MissingBinaryError` naming the package otherwise."""
    dirs = [str(bundle / "orthanc-plugins") for bundle in filter(None, [bundle_dir()])]
    for folder in [*dirs, *PLUGIN_DIRS]:
        candidate = Path(folder) / DICOMWEB_PLUGIN
        if candidate.exists():
            return candidate
    raise MissingBinaryError(
        f"Orthanc's DICOMweb plugin ({DICOMWEB_PLUGIN}) was not found in {', '.join(PLUGIN_DIRS)}. "
        "Install it with `sudo apt-get install orthanc-dicomweb`."
    )
