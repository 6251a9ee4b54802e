"""What the tests share besides fixtures: helpers imported as ``tests.support.NAME``.

- ``running``: a real ``neuronova run`` on a temporary home, its CLI, storescu and journal.
- ``clients``: HTTP requests to it (``http_get``, a login's ``api_token``).
- ``waiting``: ``wait_for`` a condition, never a fixed sleep.
- ``tools``: programs a test runs (``require_tool``, dcmtk's storescu command).
- ``ports``: ports reserved for this run; ``programs``: every program the suite needs.
- ``samples``: DICOM test data; ``paths``: where the repository's files are.
- ``netns``, ``idp``, ``signing``, ``bare_root``: network namespaces, the OpenID Connect
  provider, release signing keys, and a bare Debian root for the package's tests.

Fixtures live in the ``conftest.py`` of the folder whose tests use them.
"""
