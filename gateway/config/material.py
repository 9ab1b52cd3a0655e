"""Reading the files a configuration names: PEM certificates, keys, CRLs, secrets.

Role: the I/O half of configuration checking. Each function reads one file and either
returns what it holds or raises ``Unusable`` with a one-line reason that names the file
(``gateway.config.checks`` adds the key). Nothing here logs or returns a secret:
password files are checked for mode and emptiness only.

Decisions and security notes:

- A file that holds a private key or a password must not be accessible by group or
  others (``mode & 0o077 == 0``): ``key file ... is readable by group and others (mode
  0644); chmod 600``. The reason names who has access as the mode says: ``by its
  group`` (0640), ``by others`` (0604), ``by group and others`` (0644); ``readable``
  when that class may read, ``accessible`` when it may only write or search (0620:
  ``accessible by its group``; 0642: ``readable by its group and accessible by
  others``). Ownership is not checked (check-config may run as another user).
- PEM is split with asn1crypto's ``pem.unarmor`` (any mix of blocks in one file);
  certificates, keys and CRLs are parsed with cryptography. A key protected by a
  passphrase is refused: Missive has no passphrase setting, file modes protect keys.
- A key matches a certificate when their SubjectPublicKeyInfo encodings are equal.
- A CA certificate has basicConstraints cA=TRUE (RFC 5280 §4.2.1.9); a certificate
  without basicConstraints counts as a CA only if it is self-issued (old v1 roots).
- Directories the gateway creates at start (spool, data, keys, outbox, maildir) need
  not exist; when they exist they must be directories not writable by group or
  others, and when they do not, their nearest existing ancestor must be a directory.
- Files are read whole, but never more than ``MAX_FILE`` bytes (a path mistakenly
  pointing at a device or a huge file is refused, not read).
"""

from __future__ import annotations

import stat
from pathlib import Path

from asn1crypto import pem
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

MAX_FILE = 64 * 1024 * 1024
_CERTIFICATE_BLOCKS = ("CERTIFICATE", "X509 CERTIFICATE")


class Unusable(Exception):
    """A file cannot be used as configured; ``str(error)`` says why, naming the file."""


def _stat(path: Path) -> int:
    """The mode of a regular file at ``path``, or ``Unusable``."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise Unusable(f"file {path} does not exist") from None
    except OSError as error:
        raise Unusable(f"cannot read {path}: {error.strerror}") from None
    if stat.S_ISDIR(mode):
        raise Unusable(f"{path} is a directory, not a file")
    if not stat.S_ISREG(mode):
        raise Unusable(f"{path} is not a regular file")
    return mode


def read_file(path: Path) -> bytes:
    """The bytes of a regular, readable file of at most ``MAX_FILE`` bytes."""
    _stat(path)
    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_FILE + 1)
    except OSError as error:
        raise Unusable(f"cannot read {path}: {error.strerror}") from None
    if len(data) > MAX_FILE:
        raise Unusable(f"{path} is larger than {MAX_FILE} bytes")
    return data


def check_readable(path: Path) -> None:
    """A regular file that can be opened for reading (its content is not read)."""
    _stat(path)
    try:
        with path.open("rb") as stream:
            stream.read(1)
    except OSError as error:
        raise Unusable(f"cannot read {path}: {error.strerror}") from None


def _exposure(mode: int) -> str:
    """Who besides the owner can reach a file of ``mode``, and how (see module doc)."""
    classes = (("its group", 0o070, 0o040), ("others", 0o007, 0o004))
    reached = [
        ("readable" if mode & read else "accessible", who)
        for who, bits, read in classes
        if mode & bits
    ]
    if len(reached) == 2 and reached[0][0] == reached[1][0]:
        return f"{reached[0][0]} by group and others"
    return " and ".join(f"{access} by {who}" for access, who in reached)


def _writers(mode: int) -> str:
    """Who besides the owner can write in a directory of ``mode``."""
    group, others = bool(mode & 0o020), bool(mode & 0o002)
    return "group and others" if group and others else "its group" if group else "others"


def check_private_mode(path: Path, what: str = "key file") -> None:
    """``what`` at ``path`` must be accessible by its owner only (see module doc)."""
    mode = stat.S_IMODE(_stat(path))
    if mode & 0o077:
        raise Unusable(f"{what} {path} is {_exposure(mode)} (mode {mode:04o}); chmod 600")


def check_secret_file(path: Path) -> None:
    """A password file: regular, private (0600), not empty. Its content is not kept."""
    check_private_mode(path, "secret file")
    if not read_file(path).strip():
        raise Unusable(f"secret file {path} is empty")


def _pem_blocks(data: bytes, path: Path) -> list[tuple[str, dict[str, str], bytes]]:
    if not pem.detect(data):
        raise Unusable(f"{path} is not a PEM file (no -----BEGIN line)")
    try:
        return list(pem.unarmor(data, multiple=True))
    except ValueError:
        raise Unusable(f"{path} holds malformed PEM (a BEGIN without its END?)") from None


def certificates_in(data: bytes, path: Path) -> list[x509.Certificate]:
    """Every PEM certificate of ``data``, in file order (at least one)."""
    blocks = [der for kind, _, der in _pem_blocks(data, path) if kind in _CERTIFICATE_BLOCKS]
    if not blocks:
        raise Unusable(f"no certificate in {path}")
    certificates = []
    for number, der in enumerate(blocks, start=1):
        try:
            certificates.append(x509.load_der_x509_certificate(der))
        except ValueError:
            raise Unusable(f"certificate {number} in {path} is not valid X.509") from None
    return certificates


def read_certificates(path: Path) -> list[x509.Certificate]:
    return certificates_in(read_file(path), path)


def private_key_in(data: bytes, path: Path) -> PrivateKeyTypes:
    """The one unencrypted private key of ``data`` (PKCS#8, PKCS#1 or SEC 1 PEM)."""
    blocks = [
        (kind, headers, der)
        for kind, headers, der in _pem_blocks(data, path)
        if kind.endswith("PRIVATE KEY")
    ]
    if not blocks:
        raise Unusable(f"no private key in {path}")
    if len(blocks) > 1:
        raise Unusable(f"{path} holds more than one private key")
    kind, headers, der = blocks[0]
    if kind == "ENCRYPTED PRIVATE KEY" or "ENCRYPTED" in headers.get("Proc-Type", ""):
        raise Unusable(f"the key in {path} is encrypted; Missive needs it unencrypted, mode 0600")
    try:
        return serialization.load_der_private_key(der, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise Unusable(f"the private key in {path} cannot be parsed") from None


def read_private_key(path: Path) -> PrivateKeyTypes:
    return private_key_in(read_file(path), path)


def _spki(key: PrivateKeyTypes | x509.Certificate) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(key: PrivateKeyTypes, certificate: x509.Certificate) -> bool:
    """True if ``key`` is the private half of ``certificate``'s public key."""
    return _spki(key) == _spki(certificate)


def is_ca(certificate: x509.Certificate) -> bool:
    """A CA certificate (see module doc)."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        return certificate.subject == certificate.issuer
    return constraints.value.ca


def read_anchors(path: Path) -> list[x509.Certificate]:
    """A trust-anchor file: PEM certificates, at least one of them a CA."""
    certificates = read_certificates(path)
    if not any(is_ca(certificate) for certificate in certificates):
        raise Unusable(f"{path} holds no CA certificate")
    return certificates


def read_crls(path: Path) -> list[x509.CertificateRevocationList]:
    """The CRLs of a PEM file (one or more ``X509 CRL`` blocks) or a DER file."""
    data = read_file(path)
    if not pem.detect(data):
        try:
            return [x509.load_der_x509_crl(data)]
        except ValueError:
            raise Unusable(f"{path} is neither a PEM nor a DER CRL") from None
    blocks = [der for kind, _, der in _pem_blocks(data, path) if kind == "X509 CRL"]
    if not blocks:
        raise Unusable(f"no X509 CRL block in {path}")
    crls = []
    for number, der in enumerate(blocks, start=1):
        try:
            crls.append(x509.load_der_x509_crl(der))
        except ValueError:
            raise Unusable(f"CRL {number} in {path} cannot be parsed") from None
    return crls


def check_liste_blanche(path: Path) -> None:
    """A usable MSSanté liste blanche: the ANS format, parsed safely and streamed by
    ``gateway.smtp.listeblanche`` (the loader the gateway itself uses, so check-config
    accepts exactly what serve will: including ANS's published file, whose root element
    is not closed)."""
    from gateway.smtp.listeblanche import ListeBlancheError, load_liste_blanche

    read_file(path)
    try:
        load_liste_blanche(path)
    except ListeBlancheError as error:
        raise Unusable("; ".join(error.problems)) from None


def check_directory_target(path: Path) -> None:
    """A directory the gateway owns and creates if missing (see module doc)."""
    try:
        if path.exists():
            mode = path.stat().st_mode
            if not stat.S_ISDIR(mode):
                raise Unusable(f"{path} exists and is not a directory")
            if stat.S_IMODE(mode) & 0o022:
                raise Unusable(
                    f"directory {path} is writable by {_writers(stat.S_IMODE(mode))}"
                    f" (mode {stat.S_IMODE(mode):04o}); chmod 700"
                )
            return
        _check_creatable(path)
    except OSError as error:
        raise Unusable(f"cannot inspect {path}: {error.strerror}") from None


def check_file_target(path: Path) -> None:
    """A file the gateway creates if missing (the audit database)."""
    try:
        if path.exists():
            if not path.is_file():
                raise Unusable(f"{path} exists and is not a regular file")
            return
        _check_creatable(path)
    except OSError as error:
        raise Unusable(f"cannot inspect {path}: {error.strerror}") from None


def _check_creatable(path: Path) -> None:
    for ancestor in path.parents:
        if ancestor.exists():
            if not ancestor.is_dir():
                raise Unusable(f"{path} cannot be created: {ancestor} is not a directory")
            return
