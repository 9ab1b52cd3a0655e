"""Folding several rows of one key into one entry."""

from __future__ import annotations

import pytest

from annuaire.errors import EntryError
from annuaire.importers.merge import Draft


def draft(**values: object) -> Draft:
    base: dict[str, object] = {"key": "899900000001", "kind": "person", "display_name": "X"}
    return Draft(**{**base, **values})  # type: ignore[arg-type]


def test_mailboxes_are_united_in_first_seen_order() -> None:
    first = draft(mailboxes=[("a@x.test", "PER"), ("b@x.test", "PER")])
    first.absorb(draft(mailboxes=[("b@x.test", "PER"), ("c@y.test", "CAB")]))
    first.absorb(draft(mailboxes=[("a@x.test", "PER")]))
    assert first.build().addresses == ("a@x.test", "b@x.test", "c@y.test")
    assert first.build().mailboxes[2].type == "CAB"


def test_first_row_wins_and_later_rows_fill_gaps() -> None:
    first = draft(display_name="a@x.test", profession_code="10", profession_label="Médecin")
    first.absorb(
        draft(
            display_name="Jean DUPONT",
            given_name="Jean",
            surname="DUPONT",
            national_id="899900000001",
            profession_code="21",
            profession_label="Pharmacien",
            specialty_code="SM54",
            specialty_label="Médecine générale",
        )
    )
    entry = first.build()
    assert (entry.display_name, entry.given_name, entry.surname) == (
        "Jean DUPONT",
        "Jean",
        "DUPONT",
    )
    assert (entry.profession_code, entry.profession_label) == ("10", "Médecin")
    assert (entry.specialty_code, entry.specialty_label) == ("SM54", "Médecine générale")
    assert entry.national_id == "899900000001"


def test_place_is_taken_as_one_block() -> None:
    first = draft()
    first.absorb(draft(postal_code="29200", city="BREST", department="29", region="Bretagne"))
    first.absorb(
        draft(
            organisation="CH de Quimper",
            postal_address=("1 R DU PORT",),
            postal_code="29000",
            city="QUIMPER",
        )
    )
    entry = first.build()
    assert (entry.organisation, entry.postal_address, entry.postal_code, entry.city) == (
        None,
        (),
        "29200",
        "BREST",
    )


def test_build_runs_the_model_checks() -> None:
    with pytest.raises(EntryError):
        draft(city="BREST\nX").build()
    with pytest.raises(EntryError):
        draft(mailboxes=[("not an address", "PER")]).build()
