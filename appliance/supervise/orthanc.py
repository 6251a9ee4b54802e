"""Orthanc as a supervised service: its generated configuration and its command.

Debian's Orthanc 1.10.1 cannot choose its listening address (design.md fact 10), so it is
closed by configuration: remote access refused, HTTP authentication on with credentials
only the appliance knows, its own DICOM server off (the appliance's receiver is the DICOM
entry point).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from appliance.config import Settings
from appliance.programs import bundle_dir, find_program
from appliance.security.keys import read_secret, write_private_file
from appliance.store.orthanc import DICOMWEB_ROOT, ORTHANC_USER
from appliance.store.orthanc_index import index_config, index_plugins, refresh_statistics
from appliance.supervise.binaries import ORTHANC, find_dicomweb_plugin


def orthanc_config(settings: Settings, password: str, plugins: list[Path]) -> dict[str, Any]:
    """Orthanc's JSON configuration for this data home (its index: :mod:`orthanc_index`)."""
    layout = settings.layout
    return {
        "Name": "NeuroNova",
        "StorageDirectory": str(layout.orthanc_dir / "storage"),
        "IndexDirectory": str(layout.orthanc_dir / "index"),
        "StorageCompression": False,
        "HttpServerEnabled": True,
        "HttpPort": settings.internal.orthanc_port,
        # Only when Orthanc runs in its own container (cloud profile), reached over the
        # profile's internal network; credentials stay on and no port of it is published.
        "RemoteAccessAllowed": settings.internal.orthanc_remote,
        "AuthenticationEnabled": True,
        "RegisteredUsers": {ORTHANC_USER: password},
        "SslEnabled": False,
        "HttpCompressionEnabled": False,
        "KeepAlive": True,
        "HttpThreadsCount": 50,
        "DicomServerEnabled": False,
        "DicomModalities": {},
        "OrthancPeers": {},
        "Plugins": [str(plugin) for plugin in plugins],
        "DicomWeb": {
            "Enable": True,
            "Root": DICOMWEB_ROOT + "/",
            "EnableWado": False,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        },
        # The receiver's overwrite policy decides what may replace an instance before it
        # answers the modality (appliance.ingest.journal); what reaches Orthanc was allowed.
        "OverwriteInstances": True,
        "SaveJobs": False,
        "StableAge": 30,
        "ConcurrentJobs": 2,
        "LimitFindResults": 0,
        "LimitFindInstances": 0,
        "Locale": "C.UTF-8",
        "ExecuteLuaEnabled": False,
        "RestApiWriteToFileSystemEnabled": False,
        **index_config(settings),
    }


def prepare_orthanc(settings: Settings) -> Path:
    """What a stopped Orthanc needs before it starts: its SQLite index's statistics
    refreshed (:func:`~appliance.store.orthanc_index.refresh_statistics`) and its
    configuration written (:func:`render_orthanc_conf`); the configuration's path."""
    refresh_statistics(settings)
    return render_orthanc_conf(settings)


def render_orthanc_conf(settings: Settings) -> Path:
    """Write Orthanc's configuration (mode 0600: it holds the credentials)."""
    layout = settings.layout
    password = read_secret(layout.orthanc_password_file)
    plugins = [find_dicomweb_plugin(), *index_plugins(settings)]
    config = orthanc_config(settings, password, plugins)
    write_private_file(layout.orthanc_conf, json.dumps(config, indent=2).encode())
    return layout.orthanc_conf


def orthanc_command(settings: Settings) -> list[str]:
    """The argv that starts Orthanc with the generated configuration."""
    return [str(find_program(ORTHANC)), str(settings.layout.orthanc_conf)]


def orthanc_environment() -> dict[str, str]:
    """Environment additions Orthanc needs inside the bundle (its DICOM dictionaries)."""
    env: dict[str, str] = {}
    if (bundle := bundle_dir()) is not None:
        dicts = bundle / "dcmtk"
        env["DCMDICTPATH"] = os.pathsep.join(str(dicts / n) for n in ("dicom.dic", "private.dic"))
    return env
