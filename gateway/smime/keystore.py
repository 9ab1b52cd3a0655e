"""The local users' S/MIME key store (``[keys] dir``): every key of every address, the
choice of the key that signs, and the keys that decrypt.

Role: read-only view of the key store directory, for the secure agent (the only process
that may hold private keys, STYLE §9) and for ``missive keys|certs|smime``. Writing to
the store is ``gateway.smime.keyimport``'s job.

Layout (CONFIG-CONTRACT ``[keys]``): one PEM file per key, holding the private key
(unencrypted PKCS#8, PKCS#1 or SEC 1) and its certificate first, then optionally the
certificate's chain: ``<address>.sign.pem`` and ``<address>.enc.pem`` for the first
keys of an address; a renewed or older key as ``<address>.<tag>.<sign|enc>.pem``
(``keyimport`` writes ``<tag>`` = ``YYYYMMDD-<serial prefix>`` of the new certificate
and never renames or overwrites a file). Every file must be accessible by its owner
only (mode ``0600``; ``& 0o077 == 0``).

Decisions:
- A file name is ambiguous (``a@chu-a.test.old.enc.pem``: tag ``old`` or domain
  ``chu-a.test.old``?): the address is the longest dotted prefix of the name that is an
  address of the certificate's subjectAltName (rfc822Name, or SmtpUTF8Mailbox of RFC
  8398); a file whose name names none of them is a problem, never guessed.
- Which key is *current* is decided by the certificates, not by the file names: the
  signing key is the one with the newest valid signing certificate (notBefore, then
  notAfter; "valid" per the ``ChainValidator`` with ``Purpose.SMIME_SIGN``), and the
  encryption certificate likewise with ``Purpose.SMIME_ENCRYPT`` (RFC 8551 §2.7.1).
- Decryption uses *every* encryption key of the address, current and older (a renewed
  certificate must not make queued or stored mail unreadable, issue §6): the CMS
  RecipientIdentifier (issuerAndSerialNumber or subjectKeyIdentifier, RFC 5652 §6.2.1)
  picks among them (``decrypt`` matches them; ``keys_for_recipient`` does it here for
  callers that want the one key). Expired keys still decrypt; they never sign.
- The store is immutable once loaded, so it indexes its keys by mailbox (local part,
  domain in lower case: the RFC 8550 §3 comparison of ``addresses_match``) and builds
  each address's ``DecryptionKey`` list once (each one checks that the key matches its
  certificate, a public-key comparison the inbound agent used to repeat for every
  message). Only mailboxes that have keys are cached: the recipients of received mail
  are chosen by strangers and must not grow the cache.
- A problem with one file (bad name, group-readable, no key, key not matching its
  certificate, unreadable) is reported with the file name, one line each; ``load``
  raises ``KeyStoreError`` with every line, ``scan`` returns them next to what loaded.

Security notes: private keys are never logged nor copied out of the returned objects;
a group- or world-accessible key file is refused (the key may have leaked, and the
sysadmin must see it) rather than silently fixed.
"""

from __future__ import annotations

import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gateway.config import material
from gateway.errors import MissiveError
from gateway.smime.certnames import addresses_match, san_addresses, split_address
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.types import ChainValidator, Purpose, ValidationResult

KeyPurpose = Literal["sign", "enc"]
KEY_PURPOSES: tuple[KeyPurpose, ...] = ("sign", "enc")
VALIDATION_PURPOSE: dict[KeyPurpose, Purpose] = {
    "sign": Purpose.SMIME_SIGN,
    "enc": Purpose.SMIME_ENCRYPT,
}
StoredPrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


class KeyStoreError(MissiveError):
    """The key store (or one of its files) is unusable; one line per problem."""


class NoUsableKey(MissiveError):
    """No key of the address can do what was asked; the lines say why for each key."""


@dataclass(frozen=True)
class StoredKey:
    """One file of the key store: a private key with its certificate (and chain)."""

    address: str
    purpose: KeyPurpose
    path: Path
    tag: str  # "" for <address>.<purpose>.pem
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]
    private_key: StoredPrivateKey

    @property
    def not_before(self) -> datetime:
        return self.certificate.not_valid_before_utc

    @property
    def not_after(self) -> datetime:
        return self.certificate.not_valid_after_utc

    def in_validity(self, at: datetime) -> bool:
        return self.not_before <= at <= self.not_after

    def decryption_key(self) -> DecryptionKey:
        """The key as ``gateway.smime.decrypt`` takes it (RSA and EC keys only)."""
        key = self.private_key
        if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
            raise NoUsableKey(f"{self.path.name}: a {type(key).__name__} key cannot decrypt")
        return DecryptionKey(self.certificate, key)


def has_address(certificate: x509.Certificate, address: str) -> bool:
    """True if ``address`` is one of the certificate's SAN addresses (RFC 8550 §3)."""
    return any(addresses_match(address, candidate) for candidate in san_addresses(certificate))


def split_file_name(name: str, certificate: x509.Certificate) -> tuple[str, str, KeyPurpose]:
    """(address, tag, purpose) of a key store file name; ``ValueError`` when the name is
    not ``<address>[.<tag>].<sign|enc>.pem`` for an address of ``certificate``."""
    stem = name.removesuffix(".pem")
    base, _, purpose = stem.rpartition(".")
    if name == stem or purpose not in KEY_PURPOSES or "@" not in base:
        raise ValueError("not named <address>.sign.pem or <address>[.<tag>].enc.pem")
    labels = base.split(".")
    for cut in range(len(labels), 0, -1):  # the longest prefix that is an address wins
        address = ".".join(labels[:cut])
        if "@" in address and has_address(certificate, address):
            tag = ".".join(labels[cut:])
            return address, tag, "sign" if purpose == "sign" else "enc"
    raise ValueError("its name names no address of its certificate's subjectAltName")


def newest_first(keys: Iterable[StoredKey]) -> list[StoredKey]:
    """Newest certificate first: notBefore, then notAfter, then the file name."""
    return sorted(keys, key=lambda k: (k.not_before, k.not_after, k.path.name), reverse=True)


def _read_key_file(path: Path) -> StoredKey:
    """One key store file, or ``material.Unusable`` naming the problem."""
    material.check_private_mode(path)
    data = material.read_file(path)
    key = material.private_key_in(data, path)
    certificates = material.certificates_in(data, path)
    if not material.key_matches(key, certificates[0]):
        raise material.Unusable(f"the key in {path} does not match its (first) certificate")
    if not isinstance(key, StoredPrivateKey):
        raise material.Unusable(f"{path}: a {type(key).__name__} key is not supported")
    try:
        address, tag, purpose = split_file_name(path.name, certificates[0])
    except ValueError as error:
        raise material.Unusable(f"{path.name}: {error}") from None
    if purpose == "enc" and not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise material.Unusable(f"{path.name}: a {type(key).__name__} key cannot decrypt")
    return StoredKey(address, purpose, path, tag, certificates[0], tuple(certificates[1:]), key)


def _candidate_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        return []
    return sorted(
        path
        for path in directory.glob("*.pem")
        if not path.name.startswith(".") and not stat.S_ISDIR(path.lstat().st_mode)
    )


class KeyStore:
    """The keys of ``directory``, loaded once (build a new one to see new files)."""

    def __init__(self, directory: Path, keys: Sequence[StoredKey] = ()) -> None:
        self.directory = directory
        self.keys: tuple[StoredKey, ...] = tuple(newest_first(keys))
        self._by_mailbox: dict[tuple[str, str], list[StoredKey]] = {}
        for key in self.keys:  # newest first in each list too
            mailbox = split_address(key.address)
            if mailbox is not None:
                self._by_mailbox.setdefault(mailbox, []).append(key)
        self._decryption: dict[tuple[str, str] | None, tuple[DecryptionKey, ...]] = {}

    @classmethod
    def scan(cls, directory: Path) -> tuple[KeyStore, list[str]]:
        """Every readable key, and one line per file that could not be used."""
        keys: list[StoredKey] = []
        problems: list[str] = []
        try:
            paths = _candidate_files(directory)
        except OSError as error:
            return cls(directory), [f"cannot read {directory}: {error.strerror or error}"]
        for path in paths:
            try:
                keys.append(_read_key_file(path))
            except material.Unusable as problem:
                problems.append(str(problem))
        return cls(directory, keys), problems

    @classmethod
    def load(cls, directory: Path) -> KeyStore:
        """The store; ``KeyStoreError`` if any file is unusable (fail closed: a key
        that cannot be read may be the one a message needs)."""
        store, problems = cls.scan(directory)
        if problems:
            raise KeyStoreError(problems)
        return store

    def addresses(self) -> list[str]:
        return sorted({key.address for key in self.keys})

    def keys_of(self, address: str, purpose: KeyPurpose | None = None) -> list[StoredKey]:
        """The keys of ``address`` (RFC 8550 §3 comparison), newest first."""
        mailbox = split_address(address)
        found = self._by_mailbox.get(mailbox, []) if mailbox is not None else []
        return [key for key in found if purpose in (None, key.purpose)]

    def decryption_keys(self, address: str | None = None) -> list[DecryptionKey]:
        """Every encryption key of ``address`` (or of the whole store), current and
        older, newest first: the message's RecipientIdentifier picks the right one.
        Built once per mailbox that has keys (module docstring)."""
        mailbox = None  # None: the whole store
        if address is not None:
            mailbox = split_address(address)
            if mailbox is None:
                return []  # not an address: no key matches it (addresses_match)
        cached = self._decryption.get(mailbox)
        if cached is None:
            chosen = self.keys if mailbox is None else self._by_mailbox.get(mailbox, [])
            cached = tuple(key.decryption_key() for key in chosen if key.purpose == "enc")
            if cached:
                self._decryption[mailbox] = cached
        return list(cached)

    def keys_for_recipient(
        self,
        *,
        issuer: x509.Name | None = None,
        serial: int | None = None,
        ski: bytes | None = None,
    ) -> list[StoredKey]:
        """The encryption keys a RecipientIdentifier names: issuerAndSerialNumber
        (``issuer`` and ``serial``) or subjectKeyIdentifier (``ski``)."""
        return [
            key
            for key in self.keys
            if key.purpose == "enc" and _identifies(key.certificate, issuer, serial, ski)
        ]

    def signing_key(
        self, address: str, validator: ChainValidator, at: datetime | None = None
    ) -> StoredKey:
        """The key of the newest signing certificate of ``address`` that validates."""
        return self._newest_valid(address, "sign", validator, at)

    def encryption_key(
        self, address: str, validator: ChainValidator, at: datetime | None = None
    ) -> StoredKey:
        """The entry of the newest valid encryption certificate of a local user (what
        a sender encrypts to, and what our signatures name as encryptionKeyPreference)."""
        return self._newest_valid(address, "enc", validator, at)

    def _newest_valid(
        self, address: str, purpose: KeyPurpose, validator: ChainValidator, at: datetime | None
    ) -> StoredKey:
        reasons: list[str] = []
        for key in self.keys_of(address, purpose):
            result = validate_stored(key, validator, at)
            if result.valid:
                return key
            reasons.append(f"{key.path.name}: {result.status.value} ({result.reason})")
        what = "signing" if purpose == "sign" else "encryption"
        if not reasons:
            raise NoUsableKey(f"no {what} key for {address} in {self.directory}")
        raise NoUsableKey([f"no valid {what} key for {address}:", *reasons])


def validate_stored(
    key: StoredKey, validator: ChainValidator, at: datetime | None = None
) -> ValidationResult:
    """Validate a stored certificate for its purpose, its own chain offered."""
    return validator.validate(key.certificate, key.chain, VALIDATION_PURPOSE[key.purpose], at)


def _identifies(
    certificate: x509.Certificate, issuer: x509.Name | None, serial: int | None, ski: bytes | None
) -> bool:
    if ski is not None:
        try:
            value = certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            return False
        return value.value.digest == ski
    return (
        issuer is not None
        and serial is not None
        and certificate.issuer == issuer
        and certificate.serial_number == serial
    )


__all__ = [
    "KEY_PURPOSES",
    "KeyPurpose",
    "KeyStore",
    "KeyStoreError",
    "NoUsableKey",
    "StoredKey",
    "has_address",
    "newest_first",
    "split_file_name",
    "validate_stored",
]
