"""The certificate and key files: where they live, reading them as PEM, writing them safely.

Also the package's error, :class:`TLSError`, and its clock, :func:`utcnow`.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from appliance.errors import ApplianceError
from appliance.layout import HomeLayout
from appliance.security.keys import write_private_file

CERT_MODE = 0o644


class TLSError(ApplianceError):
    """A certificate or key cannot be used; the message names the file and the fix."""


# -- paths -------------------------------------------------------------------------------


def cert_file(layout: HomeLayout) -> Path:
    """The certificate chain nginx serves: ``HOME/tls/server.crt``."""
    return layout.tls_dir / "server.crt"


def key_file(layout: HomeLayout) -> Path:
    """The certificate's private key: ``HOME/tls/server.key`` (mode 0600)."""
    return layout.tls_dir / "server.key"


def _backup(path: Path) -> Path:
    return path.with_name(path.name + ".bak")


# -- reading -------------------------------------------------------------------------------


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise TLSError(f"{path}: no such file; give the path of the {what}.") from None
    except IsADirectoryError:
        raise TLSError(f"{path}: is a folder; give the path of the {what} file.") from None
    except OSError as exc:
        raise TLSError(f"{path}: cannot read it ({exc.strerror}); check its permissions.") from None


def load_chain(path: Path) -> list[x509.Certificate]:
    """The certificates of a PEM file, in the file's order.

    Raises
    ------
    TLSError
        The file is unreadable, holds a private key instead, or has no PEM certificate;
        the message says how to convert DER and .pfx/.p12 files.
    """
    data = _read(path, "certificate")
    if b"PRIVATE KEY-----" in data and b"-----BEGIN CERTIFICATE-----" not in data:
        raise TLSError(
            f"{path}: holds a private key, not a certificate; "
            "give the certificate first, then the key: `neuronova tls install CERT KEY`."
        )
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise TLSError(
            f"{path}: not a PEM certificate (no valid '-----BEGIN CERTIFICATE-----' block). "
            f"If it is binary DER, convert it: `openssl x509 -inform der -in {path} -out "
            "server.crt`; from a .pfx/.p12 file: `openssl pkcs12 -in FILE -nokeys -out "
            "server.crt`."
        )
    return chain


def load_key(path: Path) -> PrivateKeyTypes:
    """The unencrypted private key of a PEM file.

    Raises
    ------
    TLSError
        The file is unreadable, encrypted, holds a certificate instead, or has no PEM
        private key; the message says how to decrypt or convert it.
    """
    data = _read(path, "private key")
    if b"-----BEGIN ENCRYPTED PRIVATE KEY-----" in data or b"Proc-Type: 4,ENCRYPTED" in data:
        raise _encrypted(path)
    try:
        return serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise _encrypted(path) from None
    except (ValueError, UnsupportedAlgorithm):
        pass
    if b"-----BEGIN CERTIFICATE-----" in data:
        raise TLSError(
            f"{path}: holds a certificate, not a private key; "
            "give the certificate first, then the key: `neuronova tls install CERT KEY`."
        )
    raise TLSError(
        f"{path}: not a PEM private key (no valid '-----BEGIN ... PRIVATE KEY-----' block). "
        f"If it is binary DER, convert it: `openssl pkey -inform der -in {path} -out "
        "server.key`."
    )


def _encrypted(path: Path) -> TLSError:
    return TLSError(
        f"{path}: the key is encrypted; decrypt it with "
        f"`openssl pkey -in {path} -out plain.key` and install plain.key "
        "(nginx starts unattended and cannot ask for a passphrase)."
    )


# -- writing -------------------------------------------------------------------------------


def key_to_pem(key: PrivateKeyTypes) -> bytes:
    """``key`` as unencrypted PKCS#8 PEM, the form nginx reads without a passphrase."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def write_pair(layout: HomeLayout, cert_pem: bytes, key_pem: bytes) -> None:
    """Make ``cert_pem`` and ``key_pem`` the pair nginx serves, each file written atomically."""
    layout.tls_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    write_private_file(key_file(layout), key_pem)
    _write_public_file(cert_file(layout), cert_pem)


def backup_pair(layout: HomeLayout) -> None:
    """Copy the current pair, if complete, to ``server.crt.bak`` and ``server.key.bak``."""
    crt, key = cert_file(layout), key_file(layout)
    if crt.exists() and key.exists():
        _write_public_file(_backup(crt), crt.read_bytes())
        write_private_file(_backup(key), key.read_bytes())


def _write_public_file(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically with mode 0644."""
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, CERT_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(tmp, CERT_MODE)
    os.replace(tmp, path)


# -- time ------------------------------------------------------------------------------------


def utcnow() -> dt.datetime:
    """The current time, aware, in UTC.

    The package's only clock: its modules call it as ``files.utcnow()`` so that a test
    sets the time for all of them in one place.
    """
    return dt.datetime.now(dt.UTC)


def day(moment: dt.datetime) -> str:
    """``moment`` as shown in messages: ``2026-01-31 12:00 UTC``."""
    return moment.strftime("%Y-%m-%d %H:%M UTC")
