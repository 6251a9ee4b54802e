"""Installing a clinic's chain and key, once every check nginx and browsers would make passes."""

from __future__ import annotations

import itertools
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes, PublicKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID

from appliance.layout import HomeLayout
from appliance.security.tls import files
from appliance.security.tls.describe import CertificateInfo, describe, issued_by
from appliance.security.tls.files import (
    TLSError,
    backup_pair,
    day,
    key_to_pem,
    load_chain,
    load_key,
    write_pair,
)

MIN_RSA_BITS = 2048


def install_certificate(layout: HomeLayout, cert_path: Path, key_path: Path) -> CertificateInfo:
    """Check a certificate chain and its key, then make them the ones nginx serves.

    Nothing is written unless every check passes. The previous pair is kept as
    ``server.crt.bak`` and ``server.key.bak``.

    Parameters
    ----------
    layout
        The data home.
    cert_path
        PEM file: the server certificate first, then any intermediate CA certificates.
    key_path
        PEM file with the server certificate's private key, not encrypted.

    Returns
    -------
    CertificateInfo
        The installed certificate, with warnings (expiring soon, host name not listed).

    Raises
    ------
    TLSError
        A file is unreadable, not PEM, or the pair cannot be served; the message says
        which file and what to fix.
    """
    chain = load_chain(cert_path)
    key = load_key(key_path)
    _check_key_matches(chain, key, cert_path, key_path)
    _check_leaf(chain[0], cert_path)
    _check_chain_order(chain, cert_path)
    cert_pem = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain)
    backup_pair(layout)
    write_pair(layout, cert_pem, key_to_pem(key))
    return describe(chain)


def _public_der(public_key: PublicKeyTypes) -> bytes:
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def _check_key_matches(
    chain: list[x509.Certificate], key: PrivateKeyTypes, cert_path: Path, key_path: Path
) -> None:
    wanted = _public_der(key.public_key())
    if _public_der(chain[0].public_key()) == wanted:
        return
    for index, cert in enumerate(chain[1:], start=2):
        if _public_der(cert.public_key()) == wanted:
            raise TLSError(
                f"{cert_path}: the key {key_path} belongs to certificate #{index} in this "
                "file, not the first; put the server certificate first, then the "
                "intermediate CA certificates."
            )
    raise TLSError(
        f"{key_path}: this private key does not match the certificate in {cert_path}; "
        "give the key that was made together with the certificate signing request."
    )


def _check_leaf(leaf: x509.Certificate, path: Path) -> None:
    now = files.utcnow()
    if leaf.not_valid_after_utc <= now:
        raise TLSError(
            f"{path}: the certificate expired on {day(leaf.not_valid_after_utc)}; "
            "ask your certificate authority for a renewed one."
        )
    if leaf.not_valid_before_utc > now:
        raise TLSError(
            f"{path}: the certificate is not valid until {day(leaf.not_valid_before_utc)} "
            f"(this machine's clock says {day(now)}); check the clock, or install it then."
        )
    if _is_ca(leaf) and leaf.issuer == leaf.subject:
        raise TLSError(
            f"{path}: this self-signed certificate is marked as a CA (BasicConstraints "
            "CA:TRUE), as `openssl req -x509` makes it by default; remake it adding "
            "`-addext basicConstraints=critical,CA:FALSE`, or get a server certificate "
            "from your clinic's CA."
        )
    if _is_ca(leaf):
        raise TLSError(
            f"{path}: the first certificate is a CA certificate (BasicConstraints CA:TRUE); "
            "install the server certificate the CA issued, not the CA's own certificate."
        )
    _check_server_use(leaf, path)


def _check_server_use(leaf: x509.Certificate, path: Path) -> None:
    try:
        usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and ExtendedKeyUsageOID.SERVER_AUTH not in usages:
        raise TLSError(
            f"{path}: the certificate is not for TLS servers (its extended key usage lacks "
            "serverAuth); ask your CA for a TLS server certificate."
        )
    public = leaf.public_key()
    if isinstance(public, rsa.RSAPublicKey) and public.key_size < MIN_RSA_BITS:
        raise TLSError(
            f"{path}: the RSA key has only {public.key_size} bits; "
            f"browsers need at least {MIN_RSA_BITS}: request a new certificate."
        )


def _check_chain_order(chain: list[x509.Certificate], path: Path) -> None:
    for index, (cert, issuer) in enumerate(itertools.pairwise(chain), start=1):
        if not issued_by(cert, issuer):
            raise TLSError(
                f"{path}: certificate #{index + 1} did not issue certificate #{index}; "
                "order the file as: server certificate, then the CA that issued it, "
                "then that CA's issuer (the root may be left out)."
            )


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except x509.ExtensionNotFound:
        return False
