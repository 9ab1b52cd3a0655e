"""MSSanté extract rows -> checked keys and entry drafts."""

from __future__ import annotations

import pytest

from annuaire.errors import EntryError
from annuaire.importers import mssante
from annuaire.importers.errors import ExtractFormatError, RowError
from annuaire.importers.merge import Draft
from tests.annuaire.importers.support import mssante_row, rpps_id

PARSER = mssante.bind(list(mssante.HEADER))
ID = rpps_id(42)


def parse(line: str) -> tuple[str, Draft]:
    fields = line.split("|")
    return PARSER.key(fields), PARSER(fields)


def person(**values: str) -> str:
    defaults = {
        "type": "PER",
        "address": "Camille.Lefebvre@Medecin.MSSante.test",
        "id_type": "8",
        "national_id": ID,
        "surname": "LEFEBVRE",
        "given_name": "Camille",
        "profession_code": "10",
        "profession_label": "Médecin",
        "specialty_code": "SM04",
        "specialty_label": "Cardiologie et Maladies vasculaires",
        "organisation": "Cabinet médical de la Gare",
        "line2": "Bâtiment B",
        "number": "12",
        "number_complement": "BIS",
        "street_type": "R",
        "street": "DE LA GARE",
        "routing": "29200 BREST",
        "postcode": "29200",
        "department": "29",
    }
    return mssante_row(**{**defaults, **values})


def test_header_has_31_columns() -> None:
    assert len(mssante.HEADER) == 31
    assert PARSER.width == 31


def test_person_row() -> None:
    key, draft = parse(person())
    assert key == ID
    entry = draft.build()
    assert entry.key == ID and entry.kind == "person" and entry.national_id == ID
    assert (entry.given_name, entry.surname, entry.display_name) == (
        "Camille",
        "LEFEBVRE",
        "Camille LEFEBVRE",
    )
    assert (entry.profession_code, entry.specialty_code) == ("10", "SM04")
    assert entry.organisation == "Cabinet médical de la Gare"
    assert entry.postal_address == ("Bâtiment B", "12 BIS R DE LA GARE")
    assert (entry.postal_code, entry.city, entry.department, entry.region) == (
        "29200",
        "BREST",
        "29",
        "Bretagne",
    )
    assert [(m.address, m.type) for m in entry.mailboxes] == [
        ("camille.lefebvre@medecin.mssante.test", "PER")
    ]


def test_key_and_entry_agree_on_the_normalised_address() -> None:
    key, draft = parse(person(id_type="", national_id="", address="X.Y@Medecin.MSSante.TEST."))
    entry = draft.build()
    assert key == entry.key == entry.mailboxes[0].address == "x.y@medecin.mssante.test"


def test_person_box_without_national_id_is_keyed_by_address() -> None:
    key, draft = parse(person(id_type="", national_id=""))
    assert key == "camille.lefebvre@medecin.mssante.test"
    entry = draft.build()
    assert entry.key == key and entry.national_id is None and entry.kind == "person"


def test_organisational_box_is_a_structure() -> None:
    line = mssante_row(
        type="ORG",
        address="secretariat.cardiologie@ch-brest.mssante.test",
        structure_id="1299900001",
        service="Secrétariat de cardiologie",
        organisation="Centre hospitalier de Brest",
        routing="29200 BREST",
        postcode="29200",
    )
    key, draft = parse(line)
    entry = draft.build()
    assert key == entry.key == "secretariat.cardiologie@ch-brest.mssante.test"
    assert entry.kind == "structure" and entry.national_id == "1299900001"
    assert entry.display_name == "Secrétariat de cardiologie - Centre hospitalier de Brest"
    assert entry.mailboxes[0].type == "ORG" and entry.given_name is None


def test_department_falls_back_on_the_postcode_and_city_on_the_routing_line() -> None:
    _, draft = parse(person(department="", routing="PARIS CEDEX 15", postcode="75015"))
    entry = draft.build()
    assert (entry.department, entry.region, entry.city) == ("75", "Île-de-France", "PARIS CEDEX 15")


def test_national_id_of_an_org_box_is_not_required() -> None:
    key, _ = parse(person(type="ORG", national_id="garbage"))
    assert key == "camille.lefebvre@medecin.mssante.test"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"type": "BAL"}, "unknown mailbox type"),
        ({"address": "camille.lefebvre"}, "invalid address"),
        ({"address": "*)(mail=*"}, "invalid address"),
        ({"address": ""}, "empty mailbox address"),
        ({"national_id": ID[:-1] + str((int(ID[-1]) + 1) % 10)}, "Luhn"),
        ({"national_id": "81234"}, "invalid national id"),
        ({"id_type": "0"}, "does not start with its type"),
        ({"type": "ORG", "structure_id": "1 2 3"}, "invalid structure id"),
    ],
)
def test_bad_rows(values: dict[str, str], message: str) -> None:
    with pytest.raises((RowError, EntryError), match=message):
        PARSER.key(person(**values).split("|"))


def test_header_variants() -> None:
    reordered = list(reversed(mssante.HEADER))
    parser = mssante.bind([name.upper() for name in reordered])
    fields = list(reversed(person().split("|")))
    assert parser.key(fields) == ID
    assert parser(fields).build().city == "BREST"
    without_optional = [h for h in mssante.HEADER if h != "Département structure BAL"]
    assert mssante.bind(without_optional).width == 30


def test_other_files_are_refused_by_their_header() -> None:
    with pytest.raises(ExtractFormatError, match="not an MSSanté extract"):
        mssante.bind(["Type d'identifiant PP", "Identifiant PP", "Nom d'exercice"])
