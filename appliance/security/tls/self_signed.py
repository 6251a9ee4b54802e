"""The self-signed certificate NeuroNova generates until the clinic installs its own.

It carries :data:`GENERATED_MARK` as its organization, so it can be told apart from an
installed one, and is replaced when it expires.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterable
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from appliance.layout import HomeLayout
from appliance.security.tls import files
from appliance.security.tls.files import TLSError, cert_file, key_file, key_to_pem, write_pair
from appliance.security.tls.machine import IPAddress, host_names, interface_addresses, unique

GENERATED_MARK = "NeuroNova self-signed"
VALIDITY_DAYS = 825
_CN_MAX = 64


def ensure_certificate(layout: HomeLayout) -> bool:
    """Generate a self-signed certificate for nginx unless one is installed.

    The certificate has an ECDSA P-256 key, is signed with SHA-256, valid for
    :data:`VALIDITY_DAYS` days, and names this host, ``localhost``, 127.0.0.1, ::1 and the
    machine's interface addresses. A generated certificate that has expired is replaced;
    an installed one is never touched.

    Parameters
    ----------
    layout
        The data home.

    Returns
    -------
    bool
        True if a certificate was generated.

    Raises
    ------
    TLSError
        Only one of ``server.crt`` and ``server.key`` exists.
    """
    crt, key = cert_file(layout), key_file(layout)
    if crt.exists() != key.exists():
        present, missing = (crt, key) if crt.exists() else (key, crt)
        raise TLSError(
            f"{present} exists but {missing} is missing; install a matching pair with "
            f"`neuronova tls install CERT KEY`, or delete {present} to let NeuroNova "
            "generate a self-signed certificate."
        )
    if crt.exists() and not _generated_and_expired(crt):
        return False
    cert_pem, key_pem = generate_self_signed(host_names(), interface_addresses())
    write_pair(layout, cert_pem, key_pem)
    return True


def generate_self_signed(names: list[str], addresses: Iterable[IPAddress]) -> tuple[bytes, bytes]:
    """A self-signed server certificate and its key, both PEM.

    Parameters
    ----------
    names
        DNS names; the first one is also the common name. ``localhost`` is added.
    addresses
        IP addresses; 127.0.0.1 and ::1 are added.

    Returns
    -------
    tuple[bytes, bytes]
        The certificate and the unencrypted PKCS#8 private key.
    """
    key = ec.generate_private_key(ec.SECP256R1())
    dns = unique([*names, "localhost"])
    ips = unique([ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1"), *addresses])
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, dns[0][:_CN_MAX]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, GENERATED_MARK),
        ]
    )
    now = files.utcnow()
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALIDITY_DAYS))
    )
    cert = _add_server_extensions(builder, key, dns, ips).sign(key, hashes.SHA256())
    return cert.public_bytes(serialization.Encoding.PEM), key_to_pem(key)


def is_generated(cert: x509.Certificate) -> bool:
    """Whether NeuroNova generated ``cert``: its organization is :data:`GENERATED_MARK`."""
    orgs = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    return any(attr.value == GENERATED_MARK for attr in orgs)


def _add_server_extensions(
    builder: x509.CertificateBuilder,
    key: ec.EllipticCurvePrivateKey,
    dns: list[str],
    ips: list[IPAddress],
) -> x509.CertificateBuilder:
    sans = [x509.DNSName(n) for n in dns] + [x509.IPAddress(ip) for ip in ips]
    usage = x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=False,
        crl_sign=False,
        encipher_only=False,
        decipher_only=False,
    )
    return (
        builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )


def _generated_and_expired(path: Path) -> bool:
    try:
        leaf = x509.load_pem_x509_certificates(path.read_bytes())[0]
    except (OSError, ValueError):
        return False
    return is_generated(leaf) and leaf.not_valid_after_utc <= files.utcnow()
