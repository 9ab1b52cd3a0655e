"""Rows of the RPPS ``PS_LibreAcces_Personne_activite`` file -> person entries.

The RPPS open-data extract (``PS_LibreAcces`` ZIP, ANS) holds
``PS_LibreAcces_Personne_activite_AAAAMMJJhhmm.txt``: UTF-8 text, one header line,
fields separated by ``|``, **each line ending with a ``|``** (an empty last field), one
row per *activity* of a practitioner (a person with two practices has two rows, one
without any activity has one row with empty structure columns). Its 52 columns:

====  ====================================================  ===============================
 #    header name                                           read into
====  ====================================================  ===============================
 1    Type d'identifiant PP                                 cross-check of column 3
 2    Identifiant PP                                        (not read)
 3    Identification nationale PP                           ``national_id``, ``key``
 4    Code civilité d'exercice                              (not read)
 5    Libellé civilité d'exercice                           (not read)
 6    Code civilité                                         (not read)
 7    Libellé civilité                                      (not read)
 8    Nom d'exercice                                        ``surname``
 9    Prénom d'exercice                                     ``given_name``
 10   Code profession                                       ``profession_code``
 11   Libellé profession                                    ``profession_label``
 12   Code catégorie professionnelle                        (not read)
 13   Libellé catégorie professionnelle                     (not read)
 14   Code type savoir-faire                                (not read)
 15   Libellé type savoir-faire                             (not read)
 16   Code savoir-faire                                     ``specialty_code``
 17   Libellé savoir-faire                                  ``specialty_label``
 18   Code mode exercice                                    (not read)
 19   Libellé mode exercice                                 (not read)
 20   Numéro SIRET site                                     (not read)
 21   Numéro SIREN site                                     (not read)
 22   Numéro FINESS site                                    (not read)
 23   Numéro FINESS établissement juridique                 (not read)
 24   Identifiant technique de la structure                 (not read)
 25   Raison sociale site                                   ``organisation``
 26   Enseigne commerciale site                             ``organisation`` if 25 is empty
 27   Complément destinataire (coord. structure)            postal line 2
 28   Complément point géographique (coord. structure)      postal line 3
 29   Numéro Voie (coord. structure)                        postal line 4
 30   Indice répétition voie (coord. structure)             postal line 4
 31   Code type de voie (coord. structure)                  postal line 4 if 32 is empty
 32   Libellé type de voie (coord. structure)               postal line 4
 33   Libellé Voie (coord. structure)                       postal line 4
 34   Mention distribution (coord. structure)               postal line 5
 35   Bureau cedex (coord. structure)                       ``city`` if 38 is empty
 36   Code postal (coord. structure)                        ``postal_code``
 37   Code commune (coord. structure)                       (not read)
 38   Libellé commune (coord. structure)                    ``city``
 39   Code pays (coord. structure)                          (not read)
 40   Libellé pays (coord. structure)                       (not read)
 41   Téléphone (coord. structure)                          (not read)
 42   Téléphone 2 (coord. structure)                        (not read)
 43   Télécopie (coord. structure)                          (not read)
 44   Adresse e-mail (coord. structure)                     (not read, see below)
 45   Code Département (structure)                          ``department`` (else postcode)
 46   Libellé Département (structure)                       (not read)
 47   Ancien identifiant de la structure                    (not read)
 48   Autorité d'enregistrement                             (not read)
 49   Code secteur d'activité                               (not read)
 50   Libellé secteur d'activité                            (not read)
 51   Code section tableau pharmaciens                      (not read)
 52   Libellé section tableau pharmaciens                   (not read)
====  ====================================================  ===============================

Newer extracts add columns (``Code fonction``, ``Libellé genre d'activité``...) or move
the savoir-faire to a separate file: columns are found by name and the savoir-faire
ones are optional, so both import.

Mapping decisions:
- Every row is a person keyed by its national id (required: a row without a valid one
  is bad), so several activities merge into one entry and an MSSanté import of the same
  practitioner updates the same entry.
- The RPPS file has no MSSanté mailbox: its entries carry none. The structure's
  ``Adresse e-mail`` is an ordinary contact address of the practice, not a secure box,
  and is deliberately not imported (the gateway must never route health data to it).
- This import exists for search (names, specialties, places) and the postal fallback
  (the activity's postal address).
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

NAME: Final = "rpps"
LABEL: Final = "an RPPS file (PS_LibreAcces_Personne_activite)"

#: The 52 header names, in order; each line of the file ends with a trailing ``|``.
HEADER: Final[tuple[str, ...]] = (
    "Type d'identifiant PP",
    "Identifiant PP",
    "Identification nationale PP",
    "Code civilité d'exercice",
    "Libellé civilité d'exercice",
    "Code civilité",
    "Libellé civilité",
    "Nom d'exercice",
    "Prénom d'exercice",
    "Code profession",
    "Libellé profession",
    "Code catégorie professionnelle",
    "Libellé catégorie professionnelle",
    "Code type savoir-faire",
    "Libellé type savoir-faire",
    "Code savoir-faire",
    "Libellé savoir-faire",
    "Code mode exercice",
    "Libellé mode exercice",
    "Numéro SIRET site",
    "Numéro SIREN site",
    "Numéro FINESS site",
    "Numéro FINESS établissement juridique",
    "Identifiant technique de la structure",
    "Raison sociale site",
    "Enseigne commerciale site",
    "Complément destinataire (coord. structure)",
    "Complément point géographique (coord. structure)",
    "Numéro Voie (coord. structure)",
    "Indice répétition voie (coord. structure)",
    "Code type de voie (coord. structure)",
    "Libellé type de voie (coord. structure)",
    "Libellé Voie (coord. structure)",
    "Mention distribution (coord. structure)",
    "Bureau cedex (coord. structure)",
    "Code postal (coord. structure)",
    "Code commune (coord. structure)",
    "Libellé commune (coord. structure)",
    "Code pays (coord. structure)",
    "Libellé pays (coord. structure)",
    "Téléphone (coord. structure)",
    "Téléphone 2 (coord. structure)",
    "Télécopie (coord. structure)",
    "Adresse e-mail (coord. structure)",
    "Code Département (structure)",
    "Libellé Département (structure)",
    "Ancien identifiant de la structure",
    "Autorité d'enregistrement",
    "Code secteur d'activité",
    "Libellé secteur d'activité",
    "Code section tableau pharmaciens",
    "Libellé section tableau pharmaciens",
)

_OPTIONAL = False

COLUMNS: Final[dict[str, Column]] = {
    "id_type": Column(("Type d'identifiant PP",), _OPTIONAL),
    "national_id": Column(("Identification nationale PP",)),
    "surname": Column(("Nom d'exercice",)),
    "given_name": Column(("Prénom d'exercice",)),
    "profession_code": Column(("Code profession",)),
    "profession_label": Column(("Libellé profession",)),
    "specialty_code": Column(("Code savoir-faire",), _OPTIONAL),
    "specialty_label": Column(("Libellé savoir-faire",), _OPTIONAL),
    "organisation": Column(("Raison sociale site",)),
    "trade_name": Column(("Enseigne commerciale site",), _OPTIONAL),
    "line2": Column(("Complément destinataire (coord. structure)",), _OPTIONAL),
    "line3": Column(("Complément point géographique (coord. structure)",), _OPTIONAL),
    "number": Column(("Numéro Voie (coord. structure)",)),
    "repeat": Column(("Indice répétition voie (coord. structure)",), _OPTIONAL),
    "street_type_code": Column(("Code type de voie (coord. structure)",), _OPTIONAL),
    "street_type": Column(("Libellé type de voie (coord. structure)",), _OPTIONAL),
    "street": Column(("Libellé Voie (coord. structure)",)),
    "line5": Column(("Mention distribution (coord. structure)",), _OPTIONAL),
    "cedex": Column(("Bureau cedex (coord. structure)",), _OPTIONAL),
    "postal_code": Column(("Code postal (coord. structure)",)),
    "city": Column(("Libellé commune (coord. structure)",), _OPTIONAL),
    "department": Column(
        ("Code Département (structure)", "Code département (coord. structure)"), _OPTIONAL
    ),
}


class RppsRowParser:
    """Parses the data rows of one RPPS file whose header has been located."""

    def __init__(self, header: Sequence[str]) -> None:
        located = locate_columns(header, COLUMNS, LABEL)
        self._indexes = tuple(located[field] for field in COLUMNS)
        self._id_type = located["id_type"]
        self._national_id = located["national_id"]
        self.width = len(header)

    def key(self, fields: Sequence[str]) -> str:
        """Every check that can reject the row (pass 1): its national id is the key."""
        id_type = fields[self._id_type].strip() if self._id_type >= 0 else ""
        return _checked_id(fields[self._national_id].strip(), id_type)

    def __call__(self, fields: Sequence[str]) -> Draft:
        (
            _id_type, national_id, surname, given_name, profession_code, profession_label,
            specialty_code, specialty_label, organisation, trade_name, line2, line3, number,
            repeat, street_type_code, street_type, street, line5, cedex, postal_code, city,
            department_field,
        ) = pick(fields, self._indexes)  # fmt: skip
        ident = national_id  # checked by ``key`` in pass 1
        organisation = organisation or trade_name
        department, region = geography.locate(department_field, postal_code)
        street_kind = street_type or street_type_code
        return Draft(
            key=ident,
            kind="person",
            national_id=ident,
            display_name=f"{given_name} {surname}".strip() or ident,
            given_name=text_or_none(given_name),
            surname=text_or_none(surname),
            profession_code=text_or_none(profession_code),
            profession_label=text_or_none(profession_label),
            specialty_code=text_or_none(specialty_code),
            specialty_label=text_or_none(specialty_label),
            organisation=text_or_none(organisation),
            postal_address=address_lines(
                (line2, line3, street_line(number, repeat, street_kind, street), line5),
                skip=organisation or None,
            ),
            postal_code=text_or_none(postal_code),
            city=text_or_none(city) or city_of_routing_line(cedex, postal_code),
            department=department,
            region=region,
        )


def _checked_id(national_id: str, id_type: str) -> str:
    """The checked national id of a row; its first character must agree with column 1."""
    if not national_id:
        raise RowError("empty national id")
    ident = checks.national_id(national_id)
    if id_type.isdigit() and len(id_type) == 1 and ident[0] != id_type:
        raise RowError(f"national id {ident!r} does not start with its type {id_type!r}")
    return ident


def bind(header: Sequence[str]) -> RppsRowParser:
    """The row parser for an RPPS file with this header (``ExtractFormatError`` if the
    header is not that of ``PS_LibreAcces_Personne_activite``)."""
    return RppsRowParser(header)
