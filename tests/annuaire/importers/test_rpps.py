"""RPPS PS_LibreAcces_Personne_activite rows -> person drafts."""

from __future__ import annotations

import pytest

from annuaire.importers import rpps
from annuaire.importers.errors import ExtractFormatError, RowError
from tests.annuaire.importers.support import rpps_id, rpps_row

PARSER = rpps.bind([*rpps.HEADER, ""])
ID = rpps_id(77)


def activity(**values: str) -> str:
    defaults = {
        "id_type": "8",
        "national_id": ID,
        "surname": "GAUTHIER",
        "given_name": "MANON",
        "profession_code": "40",
        "profession_label": "Chirurgien-Dentiste",
        "specialty_code": "SCD02",
        "specialty_label": "Chirurgie orale",
        "organisation": "CABINET DENTAIRE DU PORT",
        "recipient": "CABINET DENTAIRE DU PORT",
        "number": "9",
        "street_type_code": "RTE",
        "street_type": "Route",
        "street": "DE BESANCON",
        "cedex": "25300 PONTARLIER",
        "postcode": "25300",
    }
    return rpps_row(**{**defaults, **values})


def test_header_has_52_columns_and_a_trailing_separator() -> None:
    assert len(rpps.HEADER) == 52
    assert PARSER.width == 53


def test_activity_row() -> None:
    fields = activity().split("|")
    assert PARSER.key(fields) == ID
    entry = PARSER(fields).build()
    assert entry.key == entry.national_id == ID and entry.kind == "person"
    assert entry.display_name == "MANON GAUTHIER"
    assert (entry.specialty_code, entry.specialty_label) == ("SCD02", "Chirurgie orale")
    assert entry.organisation == "CABINET DENTAIRE DU PORT"
    # the recipient complement repeats the organisation: not a second address line
    assert entry.postal_address == ("9 Route DE BESANCON",)
    assert (entry.postal_code, entry.city, entry.department, entry.region) == (
        "25300",
        "PONTARLIER",
        "25",
        "Bourgogne-Franche-Comté",
    )
    assert entry.mailboxes == ()


def test_commune_label_wins_over_the_cedex_line() -> None:
    entry = PARSER(activity(city="DOUBS-VILLE", department="25").split("|")).build()
    assert entry.city == "DOUBS-VILLE" and entry.department == "25"


def test_person_without_activity() -> None:
    line = rpps_row(
        id_type="0",
        national_id="0991234567",
        surname="KLEIN",
        given_name="MARTINE",
        profession_code="92",
        profession_label="Orthoptiste",
    )
    entry = PARSER(line.split("|")).build()
    assert entry.key == "0991234567" and entry.postal_address == () and entry.city is None


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"national_id": ""}, "empty national id"),
        ({"national_id": ID[:-1] + str((int(ID[-1]) + 1) % 10)}, "Luhn"),
        ({"national_id": "not-an-id"}, "invalid national id"),
        ({"id_type": "0"}, "does not start with its type"),
    ],
)
def test_bad_rows(values: dict[str, str], message: str) -> None:
    with pytest.raises(RowError, match=message):
        PARSER.key(activity(**values).split("|"))


def test_newer_extract_without_savoir_faire_columns() -> None:
    header = [h for h in rpps.HEADER if "savoir-faire" not in h] + ["Code fonction", ""]
    parser = rpps.bind(header)
    values = dict(zip(rpps.HEADER, activity().split("|"), strict=False))
    fields = [values.get(name, "") for name in header]
    entry = parser(fields).build()
    assert entry.specialty_code is None and entry.profession_code == "40"


def test_an_mssante_extract_is_not_an_rpps_file() -> None:
    from annuaire.importers import mssante

    with pytest.raises(ExtractFormatError, match="not an RPPS file"):
        rpps.bind(list(mssante.HEADER))
