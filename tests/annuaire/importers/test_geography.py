"""Departments and regions derived from extract columns and postcodes."""

from __future__ import annotations

import pytest

from annuaire.importers import geography


@pytest.mark.parametrize(
    ("postcode", "department"),
    [
        ("75015", "75"),
        ("01000", "01"),
        ("20000", "2A"),
        ("20167", "2A"),
        ("20200", "2B"),
        ("20600", "2B"),
        ("97400", "974"),
        ("97600", "976"),
        ("97500", None),  # Saint-Pierre-et-Miquelon: not a department
        ("98000", None),  # Monaco
        ("7501", None),
        ("GL50 2QJ", None),
        ("", None),
        (None, None),
    ],
)
def test_department_of_postcode(postcode: str | None, department: str | None) -> None:
    assert geography.department_of_postcode(postcode) == department


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("29", "29"),
        ("1", "01"),
        ("029", "29"),
        ("2a", "2A"),
        ("974", "974"),
        ("Finistère", "29"),
        ("FINISTERE", "29"),
        ("cotes d'armor", "22"),
        ("Côtes-d’Armor", "22"),  # typographic apostrophe
        ("Atlantide", None),
        ("", None),
    ],
)
def test_normalise_department(value: str, code: str | None) -> None:
    assert geography.normalise_department(value) == code


def test_locate_prefers_the_column_then_the_postcode() -> None:
    assert geography.locate("29", "75015") == ("29", "Bretagne")
    assert geography.locate("", "69003") == ("69", "Auvergne-Rhône-Alpes")
    assert geography.locate("n'importe quoi", "20090") == ("2A", "Corse")
    assert geography.locate("", "") == (None, None)


def test_every_department_has_one_of_the_eighteen_regions() -> None:
    regions = {region for _, region in geography.DEPARTMENTS.values()}
    assert len(geography.DEPARTMENTS) == 101
    assert len(regions) == 18
