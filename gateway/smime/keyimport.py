"""Import of a user's key and certificate into the key store (``missive keys import``).

Role: read a PKCS#12 file (``cryptography``'s ``pkcs12`` loader) or a PEM file (a
private key, possibly encrypted, and certificates in any order), check that what it
holds may serve the address, and write it into ``[keys] dir`` in the store's layout
(``gateway.smime.keystore``): unencrypted PKCS#8 key, then the certificate, then its
chain, mode 0600 from the first byte, in a 0700 directory.

Checks (each failure is a ``UsageError``: one line, exit status 2, nothing written):
- the key matches the certificate (SubjectPublicKeyInfo equality; with several
  certificates in the file the one matching the key is the leaf, the others its chain);
- the address is one of the certificate's subjectAltName addresses (RFC 8550 §3);
- the certificate may serve the purpose (``leafcheck.usage_problem``: keyUsage, EKU
  emailProtection, key type) and is not weak (RSA < 2048, SHA-1 signature...);
- the certificate is within its validity period. Decision: an expired (or not yet
  valid) certificate is refused unless ``allow_expired``, and even then only for the
  ``enc`` purpose: an old encryption key still decrypts archived or queued mail (key
  rollover), while an expired signing key is of no use at all.

Purposes: ``auto`` imports the certificate for every purpose its key usage allows (a
dual-use certificate, as commercial CAs issue, becomes both ``sign`` and ``enc``); an
explicit ``sign``/``enc`` must be allowed by the certificate.

Never overwriting (issue §6): the first key of a purpose goes to
``<address>.<purpose>.pem``; when that file exists (renewal) the new one goes to
``<address>.<YYYYMMDD>-<serial prefix>.<purpose>.pem`` (notBefore, first 8 hex digits
of the serial) and the old one is kept for decryption; which one is current is decided
by the certificates (``KeyStore``). Importing a certificate the store already holds
for that purpose changes nothing (``kept``).

Passwords: never on the command line (it would be visible in ``ps`` and the shell
history): read from a file, else asked on the terminal, else read as the first line
of standard input; a PKCS#12 without password (``openssl pkcs12 -passout pass:``) needs
none. Wrong password and damaged file are told apart (the PFX structure is parsed with
asn1crypto first). The password is never logged nor kept.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from asn1crypto import pem
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.config import material
from gateway.errors import UsageError
from gateway.log import get_logger
from gateway.pki.files import create_private_file, ensure_private_dir
from gateway.pki.store import DevPkiError, normalise_address
from gateway.smime.certnames import san_addresses
from gateway.smime.keystore import (
    KEY_PURPOSES,
    VALIDATION_PURPOSE,
    KeyPurpose,
    KeyStore,
    StoredPrivateKey,
    has_address,
)
from gateway.smime.leafcheck import key_weakness, signature_weakness, usage_problem

_log = get_logger("smime.keys")

PasswordSource = Callable[[], bytes]
MAX_IMPORT_FILE = 1024 * 1024  # a key and a few certificates; more is not an identity


@dataclass(frozen=True)
class Identity:
    """A private key with its certificate and the chain that came with it."""

    private_key: StoredPrivateKey
    certificate: x509.Certificate
    chain: tuple[x509.Certificate, ...]


@dataclass(frozen=True)
class Imported:
    """What the import did for one purpose: ``created`` or ``kept`` that file."""

    action: str
    purpose: KeyPurpose
    path: Path


# --------------------------------------------------------------------------- passwords


def password_from_file(path: Path) -> PasswordSource:
    """The first line of ``path`` (without its line ending), read when needed."""

    def read() -> bytes:
        try:
            data = material.read_file(path)
        except material.Unusable as error:
            raise UsageError(f"--password-file: {error}") from None
        return data.splitlines()[0] if data.strip(b"\r\n") else b""

    return read


def password_from_terminal_or_stdin(prompt: str) -> PasswordSource:
    """Ask on the terminal; without one, the first line of standard input."""

    def read() -> bytes:
        if sys.stdin.isatty():
            return getpass.getpass(prompt).encode("utf-8")
        line = sys.stdin.buffer.readline()
        return line.rstrip(b"\r\n")

    return read


# --------------------------------------------------------------------------- reading


def read_identity(path: Path, password: PasswordSource) -> Identity:
    """The identity in a PKCS#12 or PEM file; ``UsageError`` with one clear line."""
    try:
        data = material.read_file(path)
    except material.Unusable as error:
        raise UsageError(str(error)) from None
    if len(data) > MAX_IMPORT_FILE:
        raise UsageError(f"{path} is too large for a key and its certificates")
    if pem.detect(data):
        return _identity_from_pem(data, path, password)
    return _identity_from_pkcs12(data, path, password)


def _is_pfx(data: bytes) -> bool:
    try:
        pfx = asn1_pkcs12.Pfx.load(data)
        pfx["auth_safe"]["content_type"].native  # noqa: B018 - forces the parse
    except (ValueError, TypeError, KeyError):
        return False
    return True


def _identity_from_pkcs12(data: bytes, path: Path, password: PasswordSource) -> Identity:
    if not _is_pfx(data):
        raise UsageError(f"{path} is neither a PEM nor a PKCS#12 (.p12/.pfx) file")
    loaded = None
    for attempt in (None, b""):  # an unprotected PKCS#12 first: no password asked
        try:
            loaded = pkcs12.load_pkcs12(data, attempt)
            break
        except (ValueError, TypeError):
            continue
    if loaded is None:
        try:
            loaded = pkcs12.load_pkcs12(data, password())
        except (ValueError, TypeError):
            raise UsageError(f"{path}: wrong password for this PKCS#12 file") from None
        except UnsupportedAlgorithm as error:
            raise UsageError(f"{path}: PKCS#12 protection not supported ({error})") from None
    if loaded.key is None or loaded.cert is None:
        raise UsageError(f"{path}: the PKCS#12 file must hold a private key and its certificate")
    others = [bag.certificate for bag in loaded.additional_certs]
    return _assemble(loaded.key, [loaded.cert.certificate, *others], path)


def _identity_from_pem(data: bytes, path: Path, password: PasswordSource) -> Identity:
    try:
        blocks = list(pem.unarmor(data, multiple=True))
    except ValueError:
        raise UsageError(f"{path} holds malformed PEM (a BEGIN without its END?)") from None
    keys = [der for kind, _, der in blocks if kind.endswith("PRIVATE KEY")]
    if len(keys) != 1:
        raise UsageError(f"{path} must hold exactly one private key (found {len(keys)})")
    try:
        certificates = material.certificates_in(data, path)
    except material.Unusable as error:
        raise UsageError(str(error)) from None
    encrypted = any(kind == "ENCRYPTED PRIVATE KEY" for kind, _, _ in blocks) or any(
        "ENCRYPTED" in headers.get("Proc-Type", "") for _, headers, _ in blocks
    )
    key_pem = next(
        pem.armor(kind, der, headers)
        for kind, headers, der in blocks
        if kind.endswith("PRIVATE KEY")
    )
    try:
        key = serialization.load_pem_private_key(key_pem, password() if encrypted else None)
    except (ValueError, TypeError):
        problem = "wrong password for its private key" if encrypted else "unreadable private key"
        raise UsageError(f"{path}: {problem}") from None
    except UnsupportedAlgorithm as error:
        raise UsageError(f"{path}: private key not supported ({error})") from None
    return _assemble(key, certificates, path)


def _assemble(key: PrivateKeyTypes, certificates: list[x509.Certificate], path: Path) -> Identity:
    if not isinstance(key, StoredPrivateKey):
        raise UsageError(f"{path}: a {type(key).__name__} key cannot be used for S/MIME")
    leaf = next((c for c in certificates if material.key_matches(key, c)), None)
    if leaf is None:
        raise UsageError(f"{path}: the private key does not match any certificate in the file")
    chain = tuple(c for c in certificates if c is not leaf)
    return Identity(key, leaf, chain)


# --------------------------------------------------------------------------- checks


def _subject(certificate: x509.Certificate) -> str:
    return certificate.subject.rfc4514_string() or "(empty subject)"


def allowed_purposes(certificate: x509.Certificate) -> dict[KeyPurpose, str | None]:
    """For each purpose, None if the certificate may serve it, else why not."""
    extensions = certificate.extensions
    return {
        purpose: usage_problem(certificate, extensions, VALIDATION_PURPOSE[purpose], False)
        for purpose in KEY_PURPOSES
    }


def _purposes(certificate: x509.Certificate, wanted: str) -> list[KeyPurpose]:
    try:
        allowed = allowed_purposes(certificate)
    except material.Unusable as error:  # pragma: no cover - certificate parsed before
        raise UsageError(str(error)) from None
    except ValueError as error:
        raise UsageError(f"the certificate has a malformed extension ({error})") from None
    if wanted == "auto":
        usable = [purpose for purpose, problem in allowed.items() if problem is None]
        if not usable:
            reasons = "; ".join(f"{p}: {why}" for p, why in allowed.items())
            raise UsageError(f"{_subject(certificate)} can neither sign nor encrypt ({reasons})")
        return usable
    purpose: KeyPurpose = "sign" if wanted == "sign" else "enc"
    problem = allowed[purpose]
    if problem is not None:
        raise UsageError(f"{_subject(certificate)} cannot be used for {wanted}: {problem}")
    return [purpose]


def check_identity(
    identity: Identity,
    address: str,
    purposes: list[KeyPurpose],
    *,
    allow_expired: bool,
    now: datetime,
) -> None:
    """Refuse (``UsageError``) what the module docstring lists."""
    certificate = identity.certificate
    if not has_address(certificate, address):
        present = ", ".join(san_addresses(certificate)) or "none"
        raise UsageError(
            f"{address} is not in the certificate's subjectAltName (addresses: {present})"
        )
    weakness = key_weakness(certificate) or signature_weakness(certificate)
    if weakness:
        raise UsageError(f"{_subject(certificate)}: {weakness}")
    if certificate.not_valid_before_utc <= now <= certificate.not_valid_after_utc:
        return
    when = (
        f"{certificate.not_valid_before_utc:%Y-%m-%d}..{certificate.not_valid_after_utc:%Y-%m-%d}"
    )
    if not allow_expired:
        raise UsageError(
            f"{_subject(certificate)} is not valid now ({when});"
            " --allow-expired imports an old encryption key for decryption only"
        )
    if "sign" in purposes:
        raise UsageError(f"{_subject(certificate)} is not valid now ({when}): it cannot sign")


# --------------------------------------------------------------------------- writing


def store_pem(identity: Identity) -> bytes:
    """Key (unencrypted PKCS#8 PEM), certificate, chain: the key store file content."""
    key = identity.private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    certificates = (identity.certificate, *identity.chain)
    return key + b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def renewal_tag(certificate: x509.Certificate) -> str:
    """``YYYYMMDD-<first 8 hex digits of the serial>`` of a renewed certificate."""
    return f"{certificate.not_valid_before_utc:%Y%m%d}-{certificate.serial_number:x}"[:17]


def _write(directory: Path, address: str, purpose: KeyPurpose, identity: Identity) -> Imported:
    store, _ = KeyStore.scan(directory)
    for existing in store.keys_of(address, purpose):
        if existing.certificate == identity.certificate:
            return Imported("kept", purpose, existing.path)
    data = store_pem(identity)
    base = f"{address}.{renewal_tag(identity.certificate)}"
    names = [f"{address}.{purpose}.pem", f"{base}.{purpose}.pem"]
    names += [f"{base}-{n}.{purpose}.pem" for n in range(2, 10)]
    for name in names:
        if create_private_file(directory / name, data):
            return Imported("created", purpose, directory / name)
    raise UsageError(f"{directory}: no free file name for {address} ({purpose})")


def import_identity(
    directory: Path,
    address: str,
    identity: Identity,
    purpose: str = "auto",
    *,
    allow_expired: bool = False,
    now: datetime | None = None,
) -> list[Imported]:
    """Check ``identity`` for ``address`` and write it for each purpose (see module doc)."""
    try:
        address = normalise_address(address)
    except DevPkiError:
        raise UsageError(f"not a usable mail address: {address!r}") from None
    purposes = _purposes(identity.certificate, purpose)
    check_identity(identity, address, purposes, allow_expired=allow_expired, now=now or _now())
    try:
        ensure_private_dir(directory)
        done = [_write(directory, address, chosen, identity) for chosen in purposes]
    except OSError as error:
        raise UsageError(f"cannot write {error.filename or directory}: {error.strerror}") from None
    for outcome in done:
        _log.info(
            "keys.imported",
            address=address,
            purpose=outcome.purpose,
            serial=f"{identity.certificate.serial_number:x}",
            file=outcome.path.name,
            action=outcome.action,
        )
    return done


def _now() -> datetime:
    return datetime.now(UTC)
