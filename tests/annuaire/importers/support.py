"""Helpers of the importer tests: hand-made extract rows, a collecting observer, runs.

Rows are built from the formats' own header lists, so a test names the columns it
cares about and the others stay empty. Every national id here is synthetic (RPPS
numbers start with 99 and carry a valid Luhn digit).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from annuaire.importers import mssante, rpps
from annuaire.importers.formats import FORMATS
from annuaire.importers.ldif_target import ldif_sink
from annuaire.importers.partition import DEFAULT_BUCKET_BYTES
from annuaire.importers.pipeline import ImportSummary, import_extract
from annuaire.importers.rows import BadRow
from annuaire.importers.sinks import EntryFailure
from annuaire.importers.synthetic import luhn_digit
from annuaire.ldif import read_ldif_file
from annuaire.mapping import DEFAULT_ATTRIBUTES, attributes_to_entry
from annuaire.model import Entry

BASE_DN = "ou=personnes,dc=annuaire,dc=test"


def rpps_id(serial: int) -> str:
    """A synthetic national id ``8`` + RPPS (``99`` + 8 digits + Luhn digit)."""
    body = f"99{serial:08d}"
    return "8" + body + luhn_digit(body)


def row(header: tuple[str, ...], values: Mapping[str, str], *, trailing: bool = False) -> str:
    """One data line: ``values`` by header name, every other column empty."""
    unknown = set(values) - set(header)
    assert not unknown, f"not columns of this format: {unknown}"
    fields = [values.get(name, "") for name in header]
    return "|".join([*fields, ""] if trailing else fields)


def mssante_row(**values: str) -> str:
    """An MSSanté row; keyword names are short aliases (see ``MSSANTE_ALIASES``)."""
    return row(mssante.HEADER, {MSSANTE_ALIASES.get(k, k): v for k, v in values.items()})


def rpps_row(**values: str) -> str:
    """An RPPS row (with its trailing ``|``); keyword names from ``RPPS_ALIASES``."""
    return row(rpps.HEADER, {RPPS_ALIASES.get(k, k): v for k, v in values.items()}, trailing=True)


MSSANTE_ALIASES = {
    "type": "Type de BAL",
    "address": "Adresse BAL",
    "id_type": "Type Identifiant PP",
    "national_id": "Identification nationale PP",
    "structure_id": "Identification Structure",
    "service": "Service de rattachement",
    "surname": "Nom d'exercice",
    "given_name": "Prénom d'exercice",
    "profession_code": "Code Profession",
    "profession_label": "Libellé Profession",
    "specialty_code": "Code savoir-faire",
    "specialty_label": "Libellé savoir-faire",
    "organisation": "Raison Sociale structure BAL",
    "line2": "L2COMPLEMENTLOCALISATION structure BAL",
    "number": "L4NUMEROVOIE structure BAL",
    "number_complement": "L4COMPLEMENTNUMEROVOIE structure BAL",
    "street_type": "NL4TYPEVOIE structure BAL",
    "street": "L4LIBELLEVOIE structure BAL",
    "line5": "L5LIEUDITMENTION structure BAL",
    "routing": "L6LIGNEACHEMINEMENT structure BAL",
    "postcode": "Code postal structure BAL",
    "department": "Département structure BAL",
}

RPPS_ALIASES = {
    "id_type": "Type d'identifiant PP",
    "national_id": "Identification nationale PP",
    "surname": "Nom d'exercice",
    "given_name": "Prénom d'exercice",
    "profession_code": "Code profession",
    "profession_label": "Libellé profession",
    "specialty_code": "Code savoir-faire",
    "specialty_label": "Libellé savoir-faire",
    "organisation": "Raison sociale site",
    "recipient": "Complément destinataire (coord. structure)",
    "number": "Numéro Voie (coord. structure)",
    "street_type_code": "Code type de voie (coord. structure)",
    "street_type": "Libellé type de voie (coord. structure)",
    "street": "Libellé Voie (coord. structure)",
    "cedex": "Bureau cedex (coord. structure)",
    "postcode": "Code postal (coord. structure)",
    "city": "Libellé commune (coord. structure)",
    "department": "Code Département (structure)",
}


def write_lines(
    path: Path, header: Iterable[str], lines: Iterable[str], *, trailing: bool = False
) -> Path:
    """An extract file: the header then ``lines`` (UTF-8, ``\\n`` line ends)."""
    head = "|".join([*header, ""] if trailing else header)
    path.write_text("\n".join([head, *lines]) + "\n", encoding="utf-8")
    return path


def write_mssante(path: Path, lines: Iterable[str]) -> Path:
    return write_lines(path, mssante.HEADER, lines)


def write_rpps(path: Path, lines: Iterable[str]) -> Path:
    return write_lines(path, rpps.HEADER, lines, trailing=True)


@dataclass
class Collected:
    """An ``ImportObserver`` that keeps everything it is told."""

    bad_rows: list[BadRow] = field(default_factory=list)
    failures: list[EntryFailure] = field(default_factory=list)
    progress: list[tuple[str, int]] = field(default_factory=list)

    def bad_row(self, row: BadRow) -> None:
        self.bad_rows.append(row)

    def entry_failed(self, failure: EntryFailure) -> None:
        self.failures.append(failure)

    def reading(self, bytes_read: int, rows: int) -> None:
        self.progress.append(("reading", rows))

    def writing(self, entries: int) -> None:
        self.progress.append(("writing", entries))

    @property
    def bad_lines(self) -> list[int]:
        return [row.line for row in self.bad_rows]


def import_to_ldif(
    source: Path,
    format_name: str,
    output: Path,
    *,
    jobs: int = 1,
    bucket_bytes: int = DEFAULT_BUCKET_BYTES,
) -> tuple[ImportSummary, Collected]:
    """Run the pipeline into an LDIF file under ``BASE_DN``."""
    observer = Collected()
    with ldif_sink(output, BASE_DN, DEFAULT_ATTRIBUTES) as sink:
        summary = import_extract(
            source,
            FORMATS[format_name],
            sink,
            observer=observer,
            jobs=jobs,
            bucket_bytes=bucket_bytes,
        )
    return summary, observer


def read_entries(path: Path) -> dict[str, Entry]:
    """The entries of an LDIF file by DN, rebuilt with the annuaire's own mapping."""
    entries: dict[str, Entry] = {}
    for record in read_ldif_file(path):
        assert record.dn not in entries, f"duplicate DN {record.dn}"
        entries[record.dn] = attributes_to_entry(record.dn, record.attributes, DEFAULT_ATTRIBUTES)
    return entries
