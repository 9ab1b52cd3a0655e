"""One contract, two backends: the LDIF file index and a real slapd with our schema.

Each test gets a ``make(records)`` that builds a fresh directory of the parametrised
kind holding exactly ``records`` (plus the suffix and OU entries).
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from annuaire.backend import Directory
from annuaire.errors import SearchError
from annuaire.search import SearchQuery, search
from tests.annuaire.directories import RawRecord, ldap_directory, ldif_directory, raw_records
from tests.annuaire.samples import all_samples, helene, marc, structure
from tests.peers.slapd import SlapdInstance

Make = Callable[[Sequence[RawRecord]], Directory]

INJECTIONS = [
    "*",
    "*)(mail=*",
    "*)(|(mail=*",
    "helene.loeuvre@chu-a.test)(uid=*",
    "\\",
    "\\2a",
    "(",
    ")",
    "*@chu-a.test",
    "helene.loeuvre@chu-a.test\x00",
    "a\x00b@chu-a.test",
    "x" * 10240,
    "hel" * 3000 + "@chu-a.test",
    "caf\udce9@chu-a.test",
    "\udcff",
    "",
]


@pytest.fixture(params=["ldif", "ldap"])
async def make(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    slapd_factory: Callable[..., SlapdInstance],
) -> AsyncIterator[Make]:
    from tests.annuaire.conftest import INDEXES, SCHEMA_FILE

    opened: list[Directory] = []

    def build(records: Sequence[RawRecord]) -> Directory:
        path = tmp_path / f"annuaire-{len(opened)}.ldif"
        if request.param == "ldif":
            directory: Directory = ldif_directory(path, records)
        else:
            make_slapd = lambda: slapd_factory(extra_schemas=[SCHEMA_FILE], extra_config=INDEXES)  # noqa: E731
            directory, _ = ldap_directory(make_slapd, path, records, pool_size=2, timeout=5.0)
        opened.append(directory)
        return directory

    yield build
    for directory in opened:
        await directory.close()


async def test_find_by_mail(make: Make) -> None:
    directory = make(raw_records(all_samples()))
    (found,) = await directory.find_by_mail("helene.loeuvre@chu-a.test")
    assert found == helene()
    assert await directory.find_by_mail("HELENE.Loeuvre@CHU-A.TEST") == (helene(),)
    assert await directory.find_by_mail("cardio.secretariat@chu-a.test") == (helene(),)
    assert await directory.find_by_mail("accueil@clinique-b.test") == (structure(),)
    assert await directory.find_by_mail("nobody@chu-a.test") == ()
    assert await directory.find_by_mail("chu-a.test") == ()


async def test_find_by_mail_returns_certificates(
    make: Make, encryption_der: Callable[[str], bytes]
) -> None:
    der = encryption_der("alice.martin@chu-a.test")
    directory = make(raw_records([helene((der,)), marc()]))
    (found,) = await directory.find_by_mail("helene.loeuvre@chu-a.test")
    assert found.certificates == (der,)


async def test_find_by_mail_injection_finds_nothing(make: Make) -> None:
    directory = make(raw_records(all_samples()))
    for probe in INJECTIONS:
        assert await directory.find_by_mail(probe) == (), repr(probe[:40])
    assert await directory.find_by_mail("helene.loeuvre@chu-a.test") == (helene(),)


async def test_search_by_name_is_prefix_case_and_accent_insensitive(make: Make) -> None:
    directory = make(raw_records(all_samples()))
    for name in ("hel", "HÉL", "Helene", "hélène l'oeuvre", "oeuvre", "Œuv", "dupre hel"):
        page = await search(directory, SearchQuery(name=name))
        assert [e.key for e in page.entries] == ["810000000001"], name
    page = await search(directory, SearchQuery(name="mart"))
    assert [e.display_name for e in page.entries] == ["Marc Martin", "Martine Martinez"]
    page = await search(directory, SearchQuery(name="martine"))
    assert [e.display_name for e in page.entries] == ["Martine Martinez"]
    page = await search(directory, SearchQuery(name="clinique"))
    assert [e.key for e in page.entries] == ["accueil@clinique-b.test"]


@pytest.mark.parametrize(
    ("query", "keys"),
    [
        (SearchQuery(specialty="cardio"), ["810000000001"]),
        (SearchQuery(specialty="sm54"), ["0990000002"]),
        (SearchQuery(specialty="medecine gen"), ["0990000002"]),
        (SearchQuery(profession="infirm"), ["810000000003"]),
        (SearchQuery(profession="10"), ["810000000001", "0990000002"]),
        (SearchQuery(city="saint etienne"), ["810000000001", "810000000003"]),
        (SearchQuery(city="ville-b"), ["0990000002", "accueil@clinique-b.test"]),
        (SearchQuery(postcode="99001"), ["810000000001", "810000000003"]),
        (
            SearchQuery(postcode="990"),
            ["810000000001", "0990000002", "810000000003", "accueil@clinique-b.test"],
        ),
        (SearchQuery(department="98"), ["0990000002", "accueil@clinique-b.test"]),
        (SearchQuery(department="9"), []),
        (SearchQuery(region="ile"), ["810000000001", "810000000003"]),
        (SearchQuery(region="region test"), ["0990000002", "accueil@clinique-b.test"]),
        (SearchQuery(national_id="810000000003"), ["810000000003"]),
        (SearchQuery(national_id="10000000003"), ["810000000003"]),  # RPPS without the 8
        (SearchQuery(national_id="0990000002"), ["0990000002"]),
        (SearchQuery(name="mart", city="ville b"), ["0990000002"]),
        (SearchQuery(name="mart", profession="medecin", region="ile"), []),
    ],
    ids=repr,
)
async def test_search_criteria(make: Make, query: SearchQuery, keys: list[str]) -> None:
    directory = make(raw_records(all_samples()))
    page = await search(directory, query)
    assert sorted(e.key for e in page.entries) == sorted(keys)
    assert page.total == len(keys)


async def test_search_pages_and_truncation(make: Make) -> None:
    directory = make(raw_records(all_samples()))
    query = SearchQuery(postcode="99")
    first = await search(directory, query, page=1, page_size=3)
    second = await search(directory, query, page=2, page_size=3)
    assert (first.total, first.pages, len(first.entries), len(second.entries)) == (4, 2, 3, 1)
    assert not {e.key for e in first.entries} & {e.key for e in second.entries}
    assert [e.display_name for e in first.entries] == [
        "Clinique B - Accueil",  # no surname: sorted by its name
        "Hélène L'Œuvre-Dupré",
        "Marc Martin",
    ]
    assert (await search(directory, query, page=3, page_size=3)).entries == ()
    capped = await search(directory, query, max_candidates=2)
    assert capped.truncated and capped.total == 2
    with pytest.raises(SearchError):
        await search(directory, query, page=0)
    with pytest.raises(SearchError):
        await search(directory, query, page_size=101)
    with pytest.raises(SearchError):
        await search(directory, SearchQuery(name="  "))


async def test_search_injection_finds_nothing(make: Make) -> None:
    directory = make(raw_records(all_samples()))
    for probe in [*INJECTIONS[:-1], "mar\x00", "*)(cn=*", "a)(missiveSearchKey=*"]:
        for query in (
            SearchQuery(name=probe),
            SearchQuery(city=probe),
            SearchQuery(specialty=probe),
            SearchQuery(postcode=probe),
            SearchQuery(national_id=probe),
            SearchQuery(department=probe),
        ):
            page = await search(directory, query)
            assert page.entries == (), (probe[:40], query.criteria().keys())
    # a star is a word separator, not a wildcard: "hel*" is the prefix "hel", nothing more
    page = await search(directory, SearchQuery(name="hel*"))
    assert [e.key for e in page.entries] == ["810000000001"]


async def test_stock_inetorgperson_entries_work(make: Make) -> None:
    """Entries written without the health schema are still found by mail and name."""
    directory = make(raw_records([marc()], health_schema=False))
    (found,) = await directory.find_by_mail("marc.martin@clinique-b.test")
    assert (found.display_name, found.city, found.national_id) == ("Marc Martin", "Ville-B", None)
    page = await search(directory, SearchQuery(name="mar"))
    assert [e.display_name for e in page.entries] == ["Marc Martin"]
    page = await search(directory, SearchQuery(city="ville"))
    assert [e.display_name for e in page.entries] == ["Marc Martin"]


async def test_an_entry_that_breaks_the_model_is_skipped(make: Make) -> None:
    bad: RawRecord = (
        "uid=bad,ou=personnes,dc=annuaire,dc=test",
        {
            "objectClass": ["inetOrgPerson"],
            "uid": ["bad"],
            "sn": ["Bad"],
            "cn": [base64.b64decode("TWFydGluCmV2aWw=").decode()],  # "Martin\nevil"
            "mail": ["bad@chu-a.test"],
        },
    )
    directory = make([*raw_records([marc()]), bad])
    assert await directory.find_by_mail("bad@chu-a.test") == ()
    page = await search(directory, SearchQuery(name="martin"))
    assert [e.key for e in page.entries] == ["0990000002"]
