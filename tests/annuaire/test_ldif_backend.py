"""The LDIF backend: reload on change, failures, big files off the event loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from annuaire.errors import DirectoryUnavailable
from annuaire.ldif import format_record
from annuaire.ldif_backend import LdifDirectory, file_signature
from annuaire.model import Entry, Mailbox
from annuaire.search import SearchQuery, search
from tests.annuaire.directories import raw_records, write_ldif
from tests.annuaire.samples import ATTRIBUTES, helene, marc

HELENE = "helene.loeuvre@chu-a.test"
MARC = "marc.martin@clinique-b.test"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_reloads_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = write_ldif(tmp_path / "a.ldif", raw_records([helene()]))
    clock = Clock()
    directory = LdifDirectory(path, ATTRIBUTES, check_interval=5.0, clock=clock)
    assert len(await directory.find_by_mail(HELENE)) == 1
    assert directory.entry_count == 1
    write_ldif(path, raw_records([helene(), marc()]))  # atomic rename: new inode
    assert await directory.find_by_mail(MARC) == ()  # not checked again yet
    clock.now += 5.0
    assert len(await directory.find_by_mail(MARC)) == 1
    assert directory.entry_count == 2


async def test_an_edit_in_place_is_seen_too(tmp_path: Path) -> None:
    path = write_ldif(tmp_path / "a.ldif", raw_records([helene()]))
    directory = LdifDirectory(path, ATTRIBUTES, check_interval=0.0)
    assert await directory.find_by_mail(MARC) == ()
    before = file_signature(path)
    ((dn, attributes),) = raw_records([marc()])
    with path.open("ab") as stream:  # same inode, new size and mtime
        stream.write(format_record(dn, attributes).encode("ascii"))
    assert file_signature(path)[0] == before[0]
    await directory.reload()
    assert len(await directory.find_by_mail(MARC)) == 1


async def test_a_broken_reload_keeps_the_last_good_index(tmp_path: Path) -> None:
    path = write_ldif(tmp_path / "a.ldif", raw_records([helene()]))
    directory = LdifDirectory(path, ATTRIBUTES, check_interval=0.0)
    assert len(await directory.find_by_mail(HELENE)) == 1
    path.write_bytes(b"dn: uid=x,dc=x\ncn:< file:///etc/passwd\n")
    assert len(await directory.find_by_mail(HELENE)) == 1  # still served, error logged
    path.unlink()
    assert len(await directory.find_by_mail(HELENE)) == 1


async def test_first_load_failures_are_directory_unavailable(tmp_path: Path) -> None:
    missing = LdifDirectory(tmp_path / "missing.ldif", ATTRIBUTES)
    with pytest.raises(DirectoryUnavailable, match=r"missing\.ldif"):
        await missing.find_by_mail(HELENE)
    broken = tmp_path / "broken.ldif"
    broken.write_bytes(b"dn: dc=x\n\nnot ldif at all\n")
    with pytest.raises(DirectoryUnavailable, match=r"broken\.ldif:3"):
        await LdifDirectory(broken, ATTRIBUTES).find_by_mail(HELENE)


def _many(count: int) -> list[Entry]:
    return [
        Entry(
            key=f"8{index:011d}",
            kind="person",
            national_id=f"8{index:011d}",
            display_name=f"Prénom{index} Nom{index % 97}",
            given_name=f"Prénom{index}",
            surname=f"Nom{index % 97}",
            profession_label="Médecin",
            specialty_label="Médecine générale",
            city=f"Ville{index % 50}",
            postal_code=f"99{index % 1000:03d}",
            mailboxes=(Mailbox(f"p{index}@chu-a.test"),),
        )
        for index in range(count)
    ]


async def test_a_big_file_loads_off_the_event_loop(tmp_path: Path) -> None:
    path = write_ldif(tmp_path / "big.ldif", raw_records(_many(8000)))
    directory = LdifDirectory(path, ATTRIBUTES)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0)

    running = asyncio.create_task(ticker())
    try:
        assert len(await directory.find_by_mail("p7999@chu-a.test")) == 1
    finally:
        running.cancel()
    assert ticks > 10  # the loop kept turning while the file was parsed in a thread
    page = await search(directory, SearchQuery(name="nom42", city="ville17"), page_size=100)
    expected = {i for i in range(8000) if i % 97 == 42 and i % 50 == 17}
    assert {int(e.key) for e in page.entries} == {int(f"8{i:011d}") for i in expected}
    assert (await search(directory, SearchQuery(postcode="99123"))).total == 8


async def test_records_that_are_not_entries_are_ignored(tmp_path: Path) -> None:
    path = write_ldif(tmp_path / "a.ldif", raw_records([helene()]))
    directory = LdifDirectory(path, ATTRIBUTES)
    page = await search(directory, SearchQuery(name="annuaire"))
    assert page.total == 0
    assert directory.entry_count == 1  # the suffix and the OU are not entries
    assert os.path.basename(directory.description) == "a.ldif"
