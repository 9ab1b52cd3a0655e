"""On-disk records of the development PKI: settings, CA indexes, PEM files, names.

Role: the small, IO-light pieces ``gateway.pki.dev`` builds on: validation of the
addresses and host names that become file names (no path traversal: plain ASCII
``local@domain.tld`` and LDH host names only), the ``pki.json`` settings, the per-CA
``<ca>.index.json`` (CRL number, issued and revoked serials, so a CRL can always be
regenerated), and PEM encoding/decoding of keys and certificates. Errors are
``DevPkiError`` (a ``MissiveError``: the CLI prints it and exits 2).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from gateway.errors import MissiveError
from gateway.pki.builders import PrivateKey, Revocation

_ADDRESS = re.compile(
    r"^[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+=?^_`{|}~-]+)*"
    r"@(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+"
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$"
)
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?\.)+[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$"
)


class DevPkiError(MissiveError):
    """The development PKI cannot do what was asked (bad address, settings mismatch...)."""


def normalise_address(address: str) -> str:
    """The address with its domain lower-cased; ``DevPkiError`` if it is not a plain
    ASCII ``local@domain.tld`` (it becomes a file name and an rfc822Name)."""
    if len(address) > 254 or not _ADDRESS.match(address):
        raise DevPkiError(f"not a usable mail address for the dev PKI: {address!r}")
    local, _, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}"


def normalise_hostname(hostname: str) -> str:
    """A lower-cased DNS name with at least two labels, else ``DevPkiError``."""
    lowered = hostname.lower().rstrip(".")
    if not _HOSTNAME.match(lowered):
        raise DevPkiError(f"not a usable host name (need e.g. mx.example.test): {hostname!r}")
    return lowered


def describe_os_error(error: OSError, default_path: Path) -> str:
    """``<path>: <reason>`` for a failed file operation (no traceback for the user)."""
    return f"{error.filename or default_path}: {error.strerror or error}"


@dataclass(frozen=True)
class Change:
    """One thing ``init``/``issue`` did to a file: created, kept, reissued, refreshed,
    tightened (mode fixed)."""

    action: str
    path: Path


@dataclass(frozen=True)
class Settings:
    """What is fixed per PKI directory (``pki.json``)."""

    ec: bool = False
    crl_base_url: str | None = None
    ocsp_url: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "key_type": "ec" if self.ec else "rsa",
            "crl_base_url": self.crl_base_url,
            "ocsp_url": self.ocsp_url,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Settings:
        return cls(
            ec=data.get("key_type") == "ec",
            crl_base_url=data.get("crl_base_url"),
            ocsp_url=data.get("ocsp_url"),
        )


@dataclass
class CaIndex:
    """Per-CA record: the last CRL number, issued certificates and revocations."""

    crl_number: int = 0
    issued: list[dict[str, str]] = field(default_factory=list)
    revoked: list[Revocation] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "crl_number": self.crl_number,
            "issued": self.issued,
            "revoked": [
                {
                    "serial": format(r.serial, "x"),
                    "revoked_at": r.revoked_at.isoformat(),
                    "reason": r.reason.value if r.reason else None,
                }
                for r in self.revoked
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaIndex:
        revoked = [
            Revocation(
                serial=int(r["serial"], 16),
                revoked_at=datetime.fromisoformat(r["revoked_at"]),
                reason=x509.ReasonFlags(r["reason"]) if r.get("reason") else None,
            )
            for r in data.get("revoked", [])
        ]
        return cls(int(data.get("crl_number", 0)), list(data.get("issued", [])), revoked)


def pem_key(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def pem_certs(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def load_private_key(path: Path) -> PrivateKey:
    """An unencrypted PEM RSA or EC private key; ``DevPkiError`` otherwise.

    The RSA consistency check (about 45 ms per key) is skipped: these keys are written by
    this tool, and every key is compared with its certificate's public key before use.
    """
    try:
        key = serialization.load_pem_private_key(
            path.read_bytes(), password=None, unsafe_skip_rsa_key_validation=True
        )
    except (ValueError, TypeError) as error:
        raise DevPkiError(f"{path}: not an unencrypted PEM private key ({error})") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise DevPkiError(f"{path}: only RSA and EC keys are supported")
    return key


def load_first_certificate(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file (the leaf of a chain file)."""
    try:
        certificates = x509.load_pem_x509_certificates(path.read_bytes())
    except ValueError as error:
        raise DevPkiError(f"{path}: not a PEM certificate ({error})") from None
    return certificates[0]
