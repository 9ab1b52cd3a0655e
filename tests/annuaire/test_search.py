"""Pure parts of the search: folding, query preparation, matching, ranking, LDAP filters."""

from __future__ import annotations

import pytest

from annuaire.errors import SearchError
from annuaire.mapping import DEFAULT_ATTRIBUTES
from annuaire.model import Entry, Mailbox
from annuaire.search import PreparedQuery, SearchQuery, ldap_filter, matches, prepare, rank
from annuaire.searchkeys import fold, search_keys, tokens
from tests.annuaire.samples import all_samples, helene, marc


@pytest.mark.parametrize(
    ("text", "folded"),
    [
        ("Hélène  LŒUVRE", "helene loeuvre"),
        ("ÆSIR Øre Łódź", "aesir ore lodz"),
        ("Straße", "strasse"),
        ("  Île-de-France ", "ile-de-france"),
        ("ＡＢＣ", "abc"),  # fullwidth (NFKD)
        ("L’Œuvre", "l'oeuvre"),
    ],
)
def test_fold(text: str, folded: str) -> None:
    assert fold(text) == folded


def test_tokens_split_on_punctuation() -> None:
    assert tokens("Saint-Étienne (Loire) L'Œuvre_x") == [
        "saint",
        "etienne",
        "loire",
        "l",
        "oeuvre",
        "x",
    ]


def test_search_keys_of_an_entry() -> None:
    keys = search_keys(marc())
    assert keys[:3] == ["n:marc", "n:martin", "p:medecin"]
    assert "s:generale" in keys and "c:ville" in keys and "c:b" in keys and "d:98" in keys


def prepared(**criteria: str) -> PreparedQuery:
    query = prepare(SearchQuery(**criteria))
    assert query is not None
    return query


def test_prepare_refuses_an_empty_query() -> None:
    with pytest.raises(SearchError):
        prepare(SearchQuery())
    with pytest.raises(SearchError):
        prepare(SearchQuery(name="   ", city=""))


@pytest.mark.parametrize(
    "term", ["x" * 129, "mar\x00tin", "a\nb", "caf\udce9", "*", "()", "\\", "-'"]
)
def test_unusable_terms_match_nothing(term: str) -> None:
    assert prepare(SearchQuery(name=term)) is None


def test_rpps_without_prefix() -> None:
    assert prepared(national_id="10000000001").national_ids == ("10000000001", "810000000001")
    assert prepared(national_id="0990000002").national_ids == ("0990000002",)


def test_matching_rules() -> None:
    h = helene()
    assert matches(h, prepared(name="L'OEUVRE hel"))
    assert not matches(h, prepared(name="helene martin"))
    assert matches(h, prepared(specialty="SM04"))
    assert matches(h, prepared(specialty="vasc card"))
    assert not matches(h, prepared(specialty="sm0"))  # a code is never a prefix
    assert matches(h, prepared(department="99"))
    assert not matches(h, prepared(department="9"))
    assert matches(h, prepared(postcode="99 0"))
    assert not matches(h, prepared(postcode="98"))
    assert matches(h, prepared(region="île de"))
    assert not matches(h, prepared(city="etienne-x"))


def test_ranking_prefers_exact_names() -> None:
    people = [
        Entry(
            key=str(i),
            kind="person",
            display_name=f"{g} {s}",
            given_name=g,
            surname=s,
            mailboxes=(Mailbox(f"p{i}@chu-a.test"),),
        )
        for i, (g, s) in enumerate(
            [("Martin", "Dupont"), ("Anne", "Martinez"), ("Marc", "Martin"), ("Zoé", "Martin")]
        )
    ]
    ranked = rank(people, prepared(name="martin"))
    assert [e.display_name for e in ranked] == [
        "Marc Martin",  # surname equal, then alphabetical by given name
        "Zoé Martin",
        "Martin Dupont",  # the word equals a given name
        "Anne Martinez",  # only a prefix
    ]
    assert rank(people, prepared(name="zoe martin"))[0].display_name == "Zoé Martin"


def test_ldap_filter_escapes_every_value() -> None:
    text = ldap_filter(
        prepared(name="a*b", city="x)(y", postcode="1*", national_id="\\", specialty="s(p"),
        DEFAULT_ATTRIBUTES,
    )
    assert "a*b" not in text and "x)(y" not in text
    assert "(postalCode=1\\2a*)" in text
    assert "(missiveNationalId=\\5c)" in text
    assert "(missiveSpecialtyCode=s\\28p)" in text
    assert text.count("(") == text.count(")")
    assert text.startswith("(&(|(objectClass=inetOrgPerson)(mail=*))")


def test_every_sample_matches_its_own_values() -> None:
    for entry in all_samples():
        assert matches(entry, prepared(name=entry.display_name, postcode=entry.postal_code or ""))
