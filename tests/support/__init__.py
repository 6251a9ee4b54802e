"""What the tests share besides fixtures, imported as ``tests.support.NAME``.

- ``running``: a real ``neuronova run`` on a temporary home, its CLI, storescu, journal.
- ``clients``: HTTP to an appliance (``http_get``, ``api_token``, ``HttpsClient``, curl).
- ``auth``: signing in to the web app under aiohttp's test client; forged tokens.
- ``waiting``: ``wait_for`` a condition, never a fixed sleep.
- ``tools``: programs a test runs (``require_tool``, dcmtk's storescu command).
- ``ports``: ports reserved for this run; ``programs``: every program the suite needs.
- ``samples``: DICOM test data; ``paths``: the repository and ``test-artifacts/``.
- ``browsing``: Chromium on the appliance's pages and the viewer (playwright).
- ``certificates``, ``backups``, ``scripts``: a test PKI, backup secrets and old
  repositories, ``packaging/*.py`` loaded by path.
- ``netns``, ``idp``, ``signing``, ``bare_root``: network namespaces, the OpenID Connect
  provider, release signing keys, a bare Debian root for the package's tests.

Fixtures live in the ``conftest.py`` of the folder whose tests use them.
"""
