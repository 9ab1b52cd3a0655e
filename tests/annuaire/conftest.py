"""Fixtures of the annuaire tests: the health schema, a slapd that loads it, test
certificates from the session's development PKI.

Every slapd comes from the shared ``slapd_factory`` (``tests.peers.fixtures``), so it is
stopped by PID and its directory removed even when a test fails.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from annuaire.ldif import atomic_ldif_file
from annuaire.mapping import entry_dn, entry_to_attributes
from annuaire.model import Entry
from gateway.pki.dev import DevPki
from tests.annuaire.samples import ATTRIBUTES, BASE_DN
from tests.peers.slapd import SlapdInstance

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "annuaire" / "schema"
SCHEMA_FILE = SCHEMA_DIR / "missive-sante.schema"
SCHEMA_LDIF = SCHEMA_DIR / "missive-sante.ldif"
INDEXES = (
    "index mail,uid,missiveNationalId eq",
    "index missiveSearchKey,postalCode eq,sub",
)


def der_of(path: Path) -> bytes:
    """DER of the first certificate of a PEM file."""
    certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return certificate.public_bytes(serialization.Encoding.DER)


def write_entries_ldif(path: Path, entries: list[Entry], base_dn: str = BASE_DN) -> Path:
    """An LDIF file of ``entries`` under ``base_dn`` (no parent entries)."""
    with atomic_ldif_file(path) as writer:
        for entry in entries:
            writer.write(entry_dn(entry, base_dn), entry_to_attributes(entry, ATTRIBUTES))
    return path


@pytest.fixture
def annuaire_slapd_factory(
    slapd_factory: Callable[..., SlapdInstance], tmp_path: Path
) -> Callable[..., SlapdInstance]:
    """``make(entries=[...], **kwargs)`` -> a started slapd with the health schema, its
    indexes and ``entries`` loaded under ``ou=personnes,dc=annuaire,dc=test``."""

    def make(entries: list[Entry] | None = None, **kwargs: object) -> SlapdInstance:
        ldif = (
            [write_entries_ldif(tmp_path / f"load-{id(entries)}.ldif", entries)] if entries else []
        )
        return slapd_factory(extra_schemas=[SCHEMA_FILE], extra_config=INDEXES, ldif=ldif, **kwargs)

    return make


@pytest.fixture
def encryption_der(dev_pki: DevPki) -> Callable[[str], bytes]:
    """``der(address)`` -> DER of the dev PKI's encryption certificate of ``address``."""
    return lambda address: der_of(dev_pki.user_cert(address, "enc"))
