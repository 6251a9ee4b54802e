"""nginx's ``internal;`` locations: reachable only through ``X-Accel-Redirect``.

The app and the frame gate answer with these paths, the doctor probes them, and
``bundled_nginx/server.conf.template`` is filled from the same constants
(:func:`template_values`), so a location is named in one place only.
"""

APP = "/internal-app"  # the original request, replayed to the full app by the frame gate
ORTHANC = "/internal-orthanc"  # Orthanc's REST API, with credentials only nginx holds
FRAMES = "/internal-frames"  # frames and rendered images prepared at ingest
METADATA = "/internal-metadata"  # series metadata prepared at ingest (gzipped)
ALL = (APP, ORTHANC, FRAMES, METADATA)


def template_values() -> dict[str, str]:
    """The ``{{internal_*}}`` placeholders of nginx's server template."""
    return {
        "internal_app": APP,
        "internal_orthanc": ORTHANC,
        "internal_frames": FRAMES,
        "internal_metadata": METADATA,
    }
