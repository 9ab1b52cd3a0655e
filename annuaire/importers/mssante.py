"""Rows of the public MSSanté extract -> annuaire entries (one mailbox per row).

The extract (``Extraction_Correspondance_MSSante_AAAAMMJJhhmm.txt``, ANS, free access,
mirrored daily on data.gouv.fr) is UTF-8 text, one header line, fields separated by
``|``, **31 columns**, one row per mailbox (about 535,000 rows, types PER and ORG):

====  ========================================  =============================================
 #    header name                               read into
====  ========================================  =============================================
 1    Type de BAL                               ``Mailbox.type`` (PER, ORG, APP, CAB)
 2    Adresse BAL                               ``Mailbox.address`` (checked, lower-cased)
 3    Type Identifiant PP                       cross-check of column 5's prefix
 4    Identifiant PP                            (not read: column 5 carries it with its type)
 5    Identification nationale PP               ``national_id`` / ``key`` of a person
 6    Type identifiant structure                (not read)
 7    Identification Structure                  ``national_id`` of a structure's box
 8    Service de rattachement                   display name of a structure's box
 9    Civilité d'exercice                       (not read)
 10   Nom d'exercice                            ``surname``
 11   Prénom d'exercice                         ``given_name``
 12   Catégorie profession                      (not read)
 13   Libellé de catégorie profession           (not read)
 14   Code Profession                           ``profession_code`` (TRE_G15, e.g. 10)
 15   Libellé Profession                        ``profession_label`` (e.g. Médecin)
 16   Code savoir-faire                         ``specialty_code`` (TRE_R38, e.g. SM54)
 17   Libellé savoir-faire                      ``specialty_label``
 18   Dématérialisation                         (not read)
 19   Raison Sociale structure BAL              ``organisation``
 20   Enseigne commerciale structure BAL        ``organisation`` when 19 is empty
 21   L2COMPLEMENTLOCALISATION structure BAL    postal line 2
 22   L3COMPLEMENTDISTRIBUTION structure BAL    postal line 3
 23   L4NUMEROVOIE structure BAL                postal line 4 (number)
 24   L4COMPLEMENTNUMEROVOIE structure BAL      postal line 4 (bis, ter...)
 25   NL4TYPEVOIE structure BAL                 postal line 4 (street type, often a code)
 26   L4LIBELLEVOIE structure BAL               postal line 4 (street name)
 27   L5LIEUDITMENTION structure BAL            postal line 5
 28   L6LIGNEACHEMINEMENT structure BAL         ``city`` (postcode removed)
 29   Code postal structure BAL                 ``postal_code``
 30   Département structure BAL                 ``department`` (else from the postcode)
 31   Pays structure BAL                        (not read)
====  ========================================  =============================================

Columns are found by name (see ``annuaire.importers.rows``); some are optional so a
slightly different extract version still imports.

Mapping decisions:
- ``key`` runs every check that makes a row bad and gives its entry key (pass 1);
  calling the parser on a row that passed ``key`` gives the ``merge.Draft`` of its entry
  without checking again (pass 2; the model's own checks run once per merged entry).
- A ``PER`` box belongs to a person: the entry's ``key`` is the national id when the
  row has one (so all boxes of one practitioner become one entry, and an RPPS import
  of the same person updates the same entry), else the box address (a PER box "not
  attached to a national id", ANS wording).
- ``ORG``, ``APP`` and ``CAB`` boxes are structure entries keyed by their address;
  ``national_id`` is the structure id (column 7: type prefix + FINESS/SIRET...). Their
  display name is "service - organisation".
- A row is bad (reported with its line, skipped) when the box type is unknown, the
  address is not a plain mailbox, the national id is malformed (RPPS with a wrong Luhn
  digit included) or its prefix contradicts column 3.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

from annuaire.importers import checks, geography
from annuaire.importers.errors import RowError
from annuaire.importers.merge import Draft
from annuaire.importers.postal import (
    address_lines,
    city_of_routing_line,
    street_line,
    text_or_none,
)
from annuaire.importers.rows import Column, locate_columns, pick
from annuaire.model import address_key

NAME: Final = "mssante"
LABEL: Final = "an MSSanté extract (Extraction_Correspondance_MSSante)"

#: The 31 header names of the extract, in order (what the synthetic generator writes).
HEADER: Final[tuple[str, ...]] = (
    "Type de BAL",
    "Adresse BAL",
    "Type Identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Type identifiant structure",
    "Identification Structure",
    "Service de rattachement",
    "Civilité d'exercice",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Catégorie profession",
    "Libellé de catégorie profession",
    "Code Profession",
    "Libellé Profession",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Dématérialisation",
    "Raison Sociale structure BAL",
    "Enseigne commerciale structure BAL",
    "L2COMPLEMENTLOCALISATION structure BAL",
    "L3COMPLEMENTDISTRIBUTION structure BAL",
    "L4NUMEROVOIE structure BAL",
    "L4COMPLEMENTNUMEROVOIE structure BAL",
    "NL4TYPEVOIE structure BAL",
    "L4LIBELLEVOIE structure BAL",
    "L5LIEUDITMENTION structure BAL",
    "L6LIGNEACHEMINEMENT structure BAL",
    "Code postal structure BAL",
    "Département structure BAL",
    "Pays structure BAL",
)

_OPTIONAL = False

#: field -> accepted header names; the order is the order ``pick`` returns values in
COLUMNS: Final[dict[str, Column]] = {
    "box_type": Column(("Type de BAL",)),
    "address": Column(("Adresse BAL",)),
    "id_type": Column(("Type Identifiant PP",), _OPTIONAL),
    "national_id": Column(("Identification nationale PP",)),
    "structure_id": Column(("Identification Structure",), _OPTIONAL),
    "service": Column(("Service de rattachement",), _OPTIONAL),
    "surname": Column(("Nom d'exercice",)),
    "given_name": Column(("Prénom d'exercice",)),
    "profession_code": Column(("Code Profession",)),
    "profession_label": Column(("Libellé Profession",)),
    "specialty_code": Column(("Code savoir-faire",)),
    "specialty_label": Column(("Libellé savoir-faire",)),
    "organisation": Column(("Raison Sociale structure BAL",)),
    "trade_name": Column(("Enseigne commerciale structure BAL",), _OPTIONAL),
    "line2": Column(("L2COMPLEMENTLOCALISATION structure BAL", "L2COMPLEMENTLOCALISATION")),
    "line3": Column(("L3COMPLEMENTDISTRIBUTION structure BAL", "L3COMPLEMENTDISTRIBUTION")),
    "number": Column(("L4NUMEROVOIE structure BAL", "L4NUMEROVOIE")),
    "number_complement": Column(
        ("L4COMPLEMENTNUMEROVOIE structure BAL", "L4COMPLEMENTNUMEROVOIE"), _OPTIONAL
    ),
    "street_type": Column(
        ("NL4TYPEVOIE structure BAL", "L4TYPEVOIE structure BAL", "NL4TYPEVOIE", "L4TYPEVOIE"),
        _OPTIONAL,
    ),
    "street": Column(("L4LIBELLEVOIE structure BAL", "L4LIBELLEVOIE")),
    "line5": Column(("L5LIEUDITMENTION structure BAL", "L5LIEUDITMENTION")),
    "routing": Column(("L6LIGNEACHEMINEMENT structure BAL", "L6LIGNEACHEMINEMENT")),
    "postal_code": Column(("Code postal structure BAL", "Code postal")),
    "department": Column(("Département structure BAL", "Département"), _OPTIONAL),
}


_KEY_FIELDS: Final = ("box_type", "address", "id_type", "national_id", "structure_id")


class MssanteRowParser:
    """Parses the data rows of one extract whose header has been located."""

    def __init__(self, header: Sequence[str]) -> None:
        located = locate_columns(header, COLUMNS, LABEL)
        self._indexes = tuple(located[field] for field in COLUMNS)
        self._key_indexes = tuple(located[field] for field in _KEY_FIELDS)
        self.width = len(header)

    def key(self, fields: Sequence[str]) -> str:
        """Every check that can reject the row (pass 1), and the entry key it files to.

        Cheaper than building the entry: the import builds it once, in pass 2.
        """
        box_type, address, id_type, national_id, structure_id = pick(fields, self._key_indexes)
        mailbox_type = checks.mailbox_type(box_type)
        address = checks.mailbox_address(address)
        if mailbox_type == "PER":
            return _person_id(national_id, id_type) or address_key(address)
        checks.structure_id(structure_id)
        return address_key(address)

    def __call__(self, fields: Sequence[str]) -> Draft:
        (
            box_type, address, _id_type, national_id, structure_id, service, surname,
            given_name, profession_code, profession_label, specialty_code, specialty_label,
            organisation, trade_name, line2, line3, number, number_complement, street_type,
            street, line5, routing, postal_code, department_field,
        ) = pick(fields, self._indexes)  # fmt: skip
        # ``key`` checked the row; the ids are not checked again here, the address is
        # normalised the same way (so the entry key is the key the row was filed under)
        mailbox_type = checks.mailbox_type(box_type)
        address = checks.mailbox_address(address)
        organisation = organisation or trade_name
        department, region = geography.locate(department_field, postal_code)
        if mailbox_type == "PER":
            national = national_id or None
            key = national or address_key(address)
            display_name = _full_name(given_name, surname)
        else:
            national = structure_id or None
            key = address_key(address)
            display_name = _structure_name(given_name, surname, service, organisation)
            given_name = surname = ""
        return Draft(
            key=key,
            kind="person" if mailbox_type == "PER" else "structure",
            national_id=national,
            display_name=display_name or address,
            given_name=text_or_none(given_name),
            surname=text_or_none(surname),
            profession_code=text_or_none(profession_code),
            profession_label=text_or_none(profession_label),
            specialty_code=text_or_none(specialty_code),
            specialty_label=text_or_none(specialty_label),
            organisation=text_or_none(organisation),
            postal_address=address_lines(
                (line2, line3, street_line(number, number_complement, street_type, street), line5),
                skip=organisation or None,
            ),
            postal_code=text_or_none(postal_code),
            city=city_of_routing_line(routing, postal_code),
            department=department,
            region=region,
            mailboxes=[(address, mailbox_type)],
        )


def _person_id(national_id: str, id_type: str) -> str | None:
    """The checked national id; its first character must agree with the type column."""
    ident = checks.optional_national_id(national_id)
    if ident is not None and id_type.isdigit() and len(id_type) == 1 and ident[0] != id_type:
        raise RowError(f"national id {ident!r} does not start with its type {id_type!r}")
    return ident


def _full_name(given_name: str, surname: str) -> str:
    return f"{given_name} {surname}".strip()


def _structure_name(given_name: str, surname: str, service: str, organisation: str) -> str:
    """A box's own name when the row gives one, else "service - organisation"."""
    own = _full_name(given_name, surname)
    if own:
        return own
    return " - ".join(part for part in (service, organisation) if part)


def bind(header: Sequence[str]) -> MssanteRowParser:
    """The row parser for an extract with this header (``ExtractFormatError`` if it
    is not an MSSanté extract)."""
    return MssanteRowParser(header)
