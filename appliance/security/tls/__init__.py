"""The HTTPS certificate nginx serves: a generated self-signed one, or one the clinic installs.

Both live in ``HOME/tls/``: ``server.crt`` (PEM, the server certificate first, then any
intermediate CA certificates; mode 0644) and ``server.key`` (PEM, unencrypted; mode 0600).
A certificate NeuroNova generates carries :data:`GENERATED_MARK` as its organization, so
``neuronova tls show`` can tell it apart from one the clinic installed.

Nothing here sends a packet: the machine's addresses are read from ``/proc``.

Modules, each importing only those above it:

- :mod:`~appliance.security.tls.files`: where the pair lives, reading it as PEM, writing it
  atomically, backups; :class:`TLSError` and the package's clock.
- :mod:`~appliance.security.tls.machine`: this machine's host names and interface addresses.
- :mod:`~appliance.security.tls.self_signed`: generating the self-signed certificate.
- :mod:`~appliance.security.tls.describe`: what a certificate says, and its warnings.
- :mod:`~appliance.security.tls.install`: checking and installing a clinic's chain and key.
"""

from appliance.security.tls.describe import EXPIRY_WARNING_DAYS, CertificateInfo, certificate_info
from appliance.security.tls.files import CERT_MODE, TLSError, cert_file, key_file
from appliance.security.tls.install import MIN_RSA_BITS, install_certificate
from appliance.security.tls.machine import IPAddress, host_names, interface_addresses
from appliance.security.tls.self_signed import (
    GENERATED_MARK,
    VALIDITY_DAYS,
    ensure_certificate,
    generate_self_signed,
)

__all__ = [
    "CERT_MODE",
    "EXPIRY_WARNING_DAYS",
    "GENERATED_MARK",
    "MIN_RSA_BITS",
    "VALIDITY_DAYS",
    "CertificateInfo",
    "IPAddress",
    "TLSError",
    "cert_file",
    "certificate_info",
    "ensure_certificate",
    "generate_self_signed",
    "host_names",
    "install_certificate",
    "interface_addresses",
    "key_file",
]
