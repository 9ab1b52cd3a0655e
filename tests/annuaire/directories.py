"""Building both annuaire backends over the same entries, for the contract suite."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from annuaire.backend import Directory
from annuaire.ldap_backend import LdapDirectory
from annuaire.ldif import atomic_ldif_file
from annuaire.ldif_backend import LdifDirectory
from annuaire.mapping import entry_dn, entry_to_attributes
from annuaire.model import Entry
from tests.annuaire.samples import ATTRIBUTES, BASE_DN
from tests.peers.slapd import BASE_LDIF, SUFFIX, SlapdInstance

RawRecord = tuple[str, dict[str, list[str | bytes]]]


def raw_records(entries: Sequence[Entry], *, health_schema: bool = True) -> list[RawRecord]:
    return [
        (entry_dn(e, BASE_DN), entry_to_attributes(e, ATTRIBUTES, health_schema=health_schema))
        for e in entries
    ]


def write_ldif(path: Path, records: Sequence[RawRecord]) -> Path:
    """The suffix and OU entries (as the slapd fixture has them), then ``records``."""
    with atomic_ldif_file(path) as writer:
        writer.comment("annuaire of a test")
        writer.write(
            SUFFIX,
            {
                "objectClass": ["dcObject", "organization"],
                "dc": ["annuaire"],
                "o": ["Annuaire de test"],
            },
        )
        writer.write(BASE_DN, {"objectClass": ["organizationalUnit"], "ou": ["personnes"]})
        for dn, attributes in records:
            writer.write(dn, attributes)
    return path


def ldif_directory(path: Path, records: Sequence[RawRecord]) -> LdifDirectory:
    return LdifDirectory(write_ldif(path, records), ATTRIBUTES)


def ldap_directory(
    make_slapd: Callable[..., SlapdInstance],
    path: Path,
    records: Sequence[RawRecord],
    **kwargs: object,
) -> tuple[LdapDirectory, SlapdInstance]:
    slapd = make_slapd()
    slapd.load_ldif(write_ldif_records_only(path, records))
    directory = LdapDirectory([slapd.url], SUFFIX, ATTRIBUTES, **kwargs)  # type: ignore[arg-type]
    return directory, slapd


def write_ldif_records_only(path: Path, records: Sequence[RawRecord]) -> Path:
    with atomic_ldif_file(path) as writer:
        for dn, attributes in records:
            writer.write(dn, attributes)
    return path


__all__ = ["BASE_LDIF", "Directory", "ldap_directory", "ldif_directory", "raw_records"]
