"""Authenticated encryption of a backup repository (AES-256-GCM, keys by HKDF-SHA256).

Keys. A repository has a random 32-byte master key, kept in ``DEST/repository.json``
wrapped (AES-256-GCM) by a key derived with HKDF from the home's backup key and a random
salt; without the backup key nothing in ``DEST`` can be read, and another key is refused
at once. From the master key come the data key (objects and manifests) and the name key:
an object is stored under ``HMAC-SHA256(name key, SHA-256 of its content)``, so equal
contents are kept once while the off-site copy shows no content hash.

Streams. A content is encrypted in chunks of :data:`CHUNK` bytes (memory stays bounded
for any size) under a key of its own, derived from the data key and a random salt in its
header. Each chunk's nonce holds a random prefix, the chunk's index and a flag for the
last chunk, and its associated data the header and what the stream is (an object, or the
manifest of snapshot NAME): a chunk moved, dropped, cut, added after the last one, or
taken from another stream fails its tag.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from dataclasses import dataclass
from typing import BinaryIO

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from appliance.backup.errors import BackupError

FORMAT = 2  # repository.json's format; 1 was the unencrypted repository
CHUNK = 1 << 20
TAG = 16
MAGIC = b"NNBKENC1"
SALT = 16
PREFIX = 7  # nonce = prefix (7) + chunk index (4) + last-chunk flag (1)
HEADER = len(MAGIC) + SALT + PREFIX
MAX_CHUNKS = 1 << 32
MAX_KEY_RECORD = 4096
OBJECT = b"object"
WRAP_AAD = b"neuronova backup repository key, format 2"


def manifest_domain(name: str) -> bytes:
    """What a snapshot manifest's chunks are bound to: renaming one makes it unreadable."""
    return b"manifest:" + name.encode()


def encrypted_size(size: int) -> int:
    """The bytes a content of ``size`` bytes takes once encrypted."""
    return HEADER + size + TAG * max(1, -(-size // CHUNK))


def _hkdf(key: bytes, info: bytes, salt: bytes | None = None) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=salt, info=info).derive(key)


def _nonce(prefix: bytes, index: int, last: bool) -> bytes:
    if index >= MAX_CHUNKS:
        raise BackupError("a content too large to encrypt (more than 2^32 chunks)")
    return prefix + index.to_bytes(4, "big") + (b"\1" if last else b"\0")


@dataclass(frozen=True)
class RepositoryKeys:
    """The keys of one repository, unwrapped with the backup key."""

    data: bytes
    names: bytes

    @classmethod
    def from_master(cls, master: bytes) -> RepositoryKeys:
        """The data and name keys derived from a repository's master key."""
        return cls(_hkdf(master, b"neuronova backup data"),
                   _hkdf(master, b"neuronova backup names"))  # fmt: skip

    @classmethod
    def new(cls, backup_key: bytes) -> tuple[RepositoryKeys, bytes]:
        """Fresh keys, and the ``repository.json`` record that holds them wrapped."""
        master, salt, nonce = os.urandom(32), os.urandom(SALT), os.urandom(12)
        wrapped = AESGCM(_hkdf(backup_key, b"neuronova backup key wrap", salt)).encrypt(
            nonce, master, WRAP_AAD
        )
        record = {"format": FORMAT, "cipher": "AES-256-GCM", "kdf": "HKDF-SHA256",
                  "salt": salt.hex(), "wrapped_key": (nonce + wrapped).hex()}  # fmt: skip
        return cls.from_master(master), json.dumps(record, indent=2).encode()

    @classmethod
    def unwrap(cls, record: bytes, backup_key: bytes, where: str) -> RepositoryKeys:
        """The keys ``record`` holds; :class:`BackupError` for another key or a bad record."""
        salt, wrapped = _wrapped(record, where)
        try:
            master = AESGCM(_hkdf(backup_key, b"neuronova backup key wrap", salt)).decrypt(
                wrapped[:12], wrapped[12:], WRAP_AAD
            )
        except InvalidTag:
            raise BackupError(
                f"{where} was encrypted with another backup key than the one given (or its "
                "repository.json was changed): give the backup key of the home that took it."
            ) from None
        return cls.from_master(master)

    def object_name(self, sha256: str) -> str:
        """The name an object of content ``sha256`` is stored under (64 hex digits)."""
        return hmac.new(self.names, bytes.fromhex(sha256), hashlib.sha256).hexdigest()

    def encrypt(self, src: BinaryIO, dst: BinaryIO, domain: bytes = OBJECT) -> tuple[str, int]:
        """Encrypt ``src`` into ``dst``; returns the plaintext's (SHA-256, size)."""
        salt, prefix = os.urandom(SALT), os.urandom(PREFIX)
        header = MAGIC + salt + prefix
        aead, aad = AESGCM(_hkdf(self.data, b"neuronova backup stream", salt)), header + domain
        dst.write(header)
        digest, size, index = hashlib.sha256(), 0, 0
        chunk = src.read(CHUNK)
        while True:
            following = src.read(CHUNK) if len(chunk) == CHUNK else b""
            digest.update(chunk)
            size += len(chunk)
            dst.write(aead.encrypt(_nonce(prefix, index, not following), chunk, aad))
            if not following:
                return digest.hexdigest(), size
            chunk, index = following, index + 1

    def decrypt(
        self, src: BinaryIO, dst: BinaryIO | None, where: str, domain: bytes = OBJECT
    ) -> tuple[str, int]:
        """Decrypt ``src`` (into ``dst``, if any); returns the plaintext's (SHA-256, size).

        :class:`BackupError` naming ``where`` if any chunk fails its check (changed,
        reordered, cut, extended, or from another stream or key).
        """
        header = src.read(HEADER)
        if len(header) != HEADER or not header.startswith(MAGIC):
            raise BackupError(f"{where}: not an encrypted NeuroNova backup object")
        salt, prefix = header[len(MAGIC) : len(MAGIC) + SALT], header[-PREFIX:]
        aead, aad = AESGCM(_hkdf(self.data, b"neuronova backup stream", salt)), header + domain
        digest, size, index = hashlib.sha256(), 0, 0
        chunk = src.read(CHUNK + TAG)
        while True:
            following = src.read(CHUNK + TAG) if len(chunk) == CHUNK + TAG else b""
            try:
                plain = aead.decrypt(_nonce(prefix, index, not following), chunk, aad)
            except (InvalidTag, ValueError):
                raise BackupError(f"{where}: fails its authentication (changed, cut, reordered "
                                  "or not from this repository)") from None  # fmt: skip
            digest.update(plain)
            size += len(plain)
            if dst is not None:
                dst.write(plain)
            if not following:
                return digest.hexdigest(), size
            chunk, index = following, index + 1


def _wrapped(record: bytes, where: str) -> tuple[bytes, bytes]:
    """(salt, nonce + wrapped key) from a ``repository.json``, checked as untrusted input."""
    problem = f"{where}/repository.json is not a NeuroNova repository key record"
    if len(record) > MAX_KEY_RECORD:
        raise BackupError(f"{problem} (larger than {MAX_KEY_RECORD} bytes)")
    try:
        data = json.loads(record)
        fields = (data["format"], data["cipher"], data["kdf"])
        salt, wrapped = bytes.fromhex(data["salt"]), bytes.fromhex(data["wrapped_key"])
    except (ValueError, KeyError, TypeError, RecursionError):
        raise BackupError(problem) from None
    if fields != (FORMAT, "AES-256-GCM", "HKDF-SHA256") or len(salt) != SALT:
        raise BackupError(f"{problem} of format {FORMAT}")
    if len(wrapped) != 12 + 32 + TAG:
        raise BackupError(problem)
    return salt, wrapped
