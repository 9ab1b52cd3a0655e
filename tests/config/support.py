"""Helpers of the configuration tests: a site on disk, a base configuration, PEM makers."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.config import Config, load_config
from gateway.config.loader import check_config
from gateway.errors import ConfigError

REPOSITORY = Path(__file__).resolve().parents[2]
LOCAL_USER = "alice.martin@chu-a.test"

# The smallest valid file (paths relative to the site root, as in conf/missive.toml).
BASE = """\
[gateway]
home = ".."
hostname = "mx.chu-a.test"
local_domains = ["chu-a.test"]

[tls]
certificate = "var/pki/mx.chu-a.test.crt"
private_key = "var/pki/mx.chu-a.test.key"

[trust]
anchors = ["var/pki/root.crt"]
intermediates = ["var/pki/intermediates.pem"]
crls = ["var/pki/personnes.crl", "var/pki/serveurs.crl"]

[[listeners]]
name = "submission"
address = "127.0.0.1:2587"
kind = "submission"

[[listeners]]
name = "mx"
address = "127.0.0.1:2525"
kind = "relay"
client_certificate = "optional"
relay_clients = ["127.0.0.1/32"]
"""


@dataclass(frozen=True)
class Site:
    """A temporary repository layout; ``config`` is ``conf/missive.toml``."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / "conf" / "missive.toml"

    def write(self, text: str) -> Path:
        self.config.write_text(text, encoding="utf-8")
        return self.config

    def load(self, text: str = BASE) -> Config:
        return load_config(self.write(text))

    def problems(self, text: str, *, full: bool = False) -> list[str]:
        """The problem lines ``text`` gives (``check_config``); fails if there are none."""
        with pytest.raises(ConfigError) as caught:
            check_config(self.write(text))
        lines = list(caught.value.problems)
        assert all(line.startswith("missive.toml: ") for line in lines), lines
        return lines if full else [line.removeprefix("missive.toml: ") for line in lines]

    def path(self, relative: str) -> Path:
        return self.root / relative

    def write_private(self, relative: str, data: bytes, mode: int = 0o600) -> Path:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        os.chmod(path, mode)
        return path


def replace(text: str, old: str, new: str) -> str:
    """``text`` with the one line ``old`` replaced (fails loudly if absent)."""
    assert text.count(old) == 1, f"{old!r} not exactly once in the configuration"
    return text.replace(old, new)


def ec_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def self_signed(key: ec.EllipticCurvePrivateKey, common_name: str, *, ca: bool) -> x509.Certificate:
    """A self-signed certificate, a CA (``ca=True``) or a leaf with cA=FALSE."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.now(UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(hours=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )


def cert_pem(*certificates: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certificates)


def crl_of(
    key: ec.EllipticCurvePrivateKey, issuer: x509.Certificate
) -> x509.CertificateRevocationList:
    now = datetime.now(UTC)
    return (
        x509.CertificateRevocationListBuilder()
        .issuer_name(issuer.subject)
        .last_update(now)
        .next_update(now + timedelta(days=7))
        .sign(key, hashes.SHA256())
    )
