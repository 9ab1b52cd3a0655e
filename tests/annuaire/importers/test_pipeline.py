"""The import pipeline into LDIF: merging, bad rows, idempotence, atomicity, parallelism."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import pytest

from annuaire.importers import mssante
from annuaire.importers.errors import EntryRejected, ExtractFormatError, RowError, TargetError
from annuaire.importers.formats import FORMATS
from annuaire.importers.ldif_target import LdifRecipe
from annuaire.importers.pipeline import import_extract
from annuaire.importers.rows import decode_line, split_row
from annuaire.importers.sinks import Outcome
from annuaire.importers.synthetic import write_extract
from annuaire.model import Entry
from tests.annuaire.importers.support import (
    Collected,
    import_to_ldif,
    mssante_row,
    read_entries,
    rpps_id,
    write_mssante,
)


def synthetic(path: Path, format_name: str, rows: int, *, seed: int = 5, bad_rows: int = 0) -> Path:
    with path.open("wb") as stream:
        write_extract(stream, format_name, rows, seed=seed, bad_rows=bad_rows)
    return path


def expected_keys(path: Path, format_name: str) -> tuple[dict[str, set[str]], list[int]]:
    """Independently of the pipeline: key -> mailbox addresses of the good rows, and
    the line numbers of the bad rows."""
    lines = path.read_bytes().split(b"\n")
    parser = FORMATS[format_name].bind(lines[0].decode().split("|"))
    boxes: dict[str, set[str]] = defaultdict(set)
    bad: list[int] = []
    for number, raw in enumerate(lines[1:], start=2):
        if not raw:
            continue
        try:
            fields = split_row(decode_line(raw), parser.width)
            key = parser.key(fields)
        except (RowError, ValueError):
            bad.append(number)
            continue
        boxes[key].update(address for address, _ in parser(fields).mailboxes)
    return boxes, bad


def test_synthetic_extract_round_trips_through_ldif(tmp_path: Path) -> None:
    source = synthetic(tmp_path / "extract.txt", "mssante", 1500, bad_rows=12)
    summary, seen = import_to_ldif(source, "mssante", tmp_path / "out.ldif")
    boxes, bad = expected_keys(source, "mssante")
    assert (summary.rows, summary.skipped, summary.failed) == (1500, 12, 0)
    assert seen.bad_lines == bad and len(bad) == 12
    entries = read_entries(tmp_path / "out.ldif")
    assert summary.entries == summary.outcomes["written"] == len(entries) == len(boxes)
    by_key = {entry.key: entry for entry in entries.values()}
    assert {key: set(entry.addresses) for key, entry in by_key.items()} == boxes
    assert any(len(entry.mailboxes) > 1 for entry in by_key.values())
    assert {entry.kind for entry in by_key.values()} == {"person", "structure"}


def test_bad_rows_are_reported_with_their_line_and_reason(tmp_path: Path) -> None:
    good = mssante_row(type="PER", address="a.b@medecin.mssante.test", national_id=rpps_id(1))
    source = tmp_path / "extract.txt"
    lines = [
        good,
        "PER|too|few|columns",
        mssante_row(type="PER", address="no-at-sign", national_id=rpps_id(2)),
        mssante_row(type="PER", address="c.d@medecin.mssante.test", national_id="812345678901"),
        "",
        mssante_row(type="XXX", address="e.f@medecin.mssante.test"),
    ]
    write_mssante(source, lines)
    with source.open("ab") as stream:  # line 8: not UTF-8
        stream.write(good.replace("a.b@", "\xe9.b@").encode("latin-1") + b"\n")
    summary, seen = import_to_ldif(source, "mssante", tmp_path / "out.ldif")
    assert summary.rows == 6 and summary.skipped == 5 and summary.entries == 1
    reasons = {row.line: row.reason for row in seen.bad_rows}
    assert sorted(reasons) == [3, 4, 5, 7, 8]
    assert reasons[3] == "4 columns, expected 31"
    assert "invalid address" in reasons[4]
    assert "Luhn" in reasons[5]
    assert "unknown mailbox type" in reasons[7]
    assert reasons[8].startswith("not valid UTF-8 (byte 0xe9")


def test_rows_of_one_person_far_apart_become_one_entry(tmp_path: Path) -> None:
    ident = rpps_id(9)
    lines = [mssante_row(type="PER", address="x.y@medecin.mssante.test", national_id=ident)]
    lines += [
        mssante_row(type="PER", address=f"p{n}@medecin.mssante.test", national_id=rpps_id(100 + n))
        for n in range(3000)
    ]
    lines.append(mssante_row(type="PER", address="x.y@chu-brest.mssante.test", national_id=ident))
    source = write_mssante(tmp_path / "extract.txt", lines)
    summary, _ = import_to_ldif(source, "mssante", tmp_path / "out.ldif", bucket_bytes=4096)
    assert summary.entries == 3001
    entries = {entry.key: entry for entry in read_entries(tmp_path / "out.ldif").values()}
    assert entries[ident].addresses == ("x.y@medecin.mssante.test", "x.y@chu-brest.mssante.test")


def test_bucket_size_changes_the_order_not_the_entries(tmp_path: Path) -> None:
    source = synthetic(tmp_path / "extract.txt", "mssante", 1200, seed=11)
    import_to_ldif(source, "mssante", tmp_path / "one.ldif")
    # 600 bytes per bucket: the 256-bucket cap is hit and buckets are split again
    import_to_ldif(source, "mssante", tmp_path / "many.ldif", bucket_bytes=600)
    one, many = read_entries(tmp_path / "one.ldif"), read_entries(tmp_path / "many.ldif")
    assert one == many
    assert list(one) != list(many)


def test_reimport_writes_the_same_bytes(tmp_path: Path) -> None:
    source = synthetic(tmp_path / "extract.txt", "mssante", 800, bad_rows=3)
    output = tmp_path / "out.ldif"
    import_to_ldif(source, "mssante", output)
    first = output.read_bytes()
    import_to_ldif(source, "mssante", output)
    assert output.read_bytes() == first
    assert first.startswith(b"dn: uid=")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extract.txt", "out.ldif"]


def test_worker_processes_write_the_same_bytes(tmp_path: Path) -> None:
    source = synthetic(tmp_path / "extract.txt", "mssante", 3000, bad_rows=7)
    one, seen_one = import_to_ldif(source, "mssante", tmp_path / "one.ldif", bucket_bytes=64_000)
    two, seen_two = import_to_ldif(
        source, "mssante", tmp_path / "two.ldif", bucket_bytes=64_000, jobs=2
    )
    assert (tmp_path / "one.ldif").read_bytes() == (tmp_path / "two.ldif").read_bytes()
    assert (one.rows, one.skipped, one.entries) == (two.rows, two.skipped, two.entries)
    assert seen_one.bad_rows == seen_two.bad_rows
    assert two.outcomes["written"] == two.entries


def test_a_failed_import_keeps_the_previous_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = synthetic(tmp_path / "extract.txt", "mssante", 300)
    output = tmp_path / "out.ldif"
    output.write_text("previous content\n", encoding="utf-8")
    calls = []

    def failing(self: LdifRecipe, entry: Entry) -> bytes:
        calls.append(entry.key)
        if len(calls) == 50:
            raise TargetError("disk on fire")
        return b""

    monkeypatch.setattr(LdifRecipe, "render", failing)
    with pytest.raises(TargetError, match="disk on fire"):
        import_to_ldif(source, "mssante", output)
    assert output.read_text(encoding="utf-8") == "previous content\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["extract.txt", "out.ldif"]


def test_a_file_of_another_format_writes_nothing(tmp_path: Path) -> None:
    source = synthetic(tmp_path / "extract.txt", "rpps", 10)
    output = tmp_path / "out.ldif"
    output.write_text("previous content\n", encoding="utf-8")
    with pytest.raises(ExtractFormatError, match="not an MSSanté extract"):
        import_to_ldif(source, "mssante", output)
    assert output.read_text(encoding="utf-8") == "previous content\n"


class RefusingSink:
    """A sink that refuses one key (what an LDAP constraint violation looks like)."""

    def __init__(self, refused: str) -> None:
        self.refused = refused
        self.entries: list[Entry] = []

    def put(self, entry: Entry) -> Outcome:
        if entry.key == self.refused:
            raise EntryRejected("constraintViolation (19)")
        self.entries.append(entry)
        return "added"


def test_refused_entries_are_counted_and_reported_with_their_first_line(tmp_path: Path) -> None:
    ident = rpps_id(3)
    lines = [
        mssante_row(type="PER", address="a@medecin.mssante.test", national_id=rpps_id(1)),
        mssante_row(type="PER", address="b@medecin.mssante.test", national_id=ident),
        mssante_row(type="PER", address="c@chu.mssante.test", national_id=ident),
    ]
    source = write_mssante(tmp_path / "extract.txt", lines)
    sink = RefusingSink(ident)
    seen = Collected()
    summary = import_extract(source, FORMATS["mssante"], sink, observer=seen)
    assert (summary.entries, summary.imported, summary.failed) == (2, 1, 1)
    assert summary.outcomes["added"] == 1
    assert [(f.key, f.line, f.reason) for f in seen.failures] == [
        (ident, 3, "constraintViolation (19)")
    ]


def test_rpps_activities_merge_into_one_person_without_mailbox(tmp_path: Path) -> None:
    source = synthetic(tmp_path / "rpps.txt", "rpps", 900, bad_rows=4)
    summary, seen = import_to_ldif(source, "rpps", tmp_path / "out.ldif")
    keys, bad = expected_keys(source, "rpps")
    assert seen.bad_lines == bad and summary.skipped == 4
    entries = read_entries(tmp_path / "out.ldif")
    assert summary.entries == len(entries) == len(keys) < summary.rows - summary.skipped
    assert all(entry.mailboxes == () and entry.national_id for entry in entries.values())


def test_both_formats_of_one_seed_describe_the_same_people(tmp_path: Path) -> None:
    ms = synthetic(tmp_path / "ms.txt", "mssante", 600, seed=21)
    rp = synthetic(tmp_path / "rp.txt", "rpps", 600, seed=21)
    import_to_ldif(ms, "mssante", tmp_path / "ms.ldif")
    import_to_ldif(rp, "rpps", tmp_path / "rp.ldif")
    people = {e.key: e for e in read_entries(tmp_path / "rp.ldif").values()}
    common = [e for e in read_entries(tmp_path / "ms.ldif").values() if e.key in people]
    assert len(common) > 100
    for entry in common:
        other = people[entry.key]
        assert (entry.surname, entry.profession_code) == (other.surname, other.profession_code)


def test_line_ends_bom_and_blank_lines(tmp_path: Path) -> None:
    rows = [
        mssante_row(type="PER", address="a@medecin.mssante.test", national_id=rpps_id(1)),
        "",
        mssante_row(type="ORG", address="accueil@ch.mssante.test"),
    ]
    text = "\ufeff" + "|".join(mssante.HEADER) + "\r\n" + "\r\n".join(rows) + "\r\n\r\n"
    source = tmp_path / "extract.txt"
    source.write_bytes(text.encode("utf-8"))
    summary, seen = import_to_ldif(source, "mssante", tmp_path / "out.ldif")
    assert (summary.rows, summary.skipped, summary.entries) == (2, 0, 2) and not seen.bad_rows


def test_header_only_extract_gives_an_empty_ldif(tmp_path: Path) -> None:
    source = write_mssante(tmp_path / "extract.txt", [])
    summary, _ = import_to_ldif(source, "mssante", tmp_path / "out.ldif")
    assert summary.entries == 0
    assert (tmp_path / "out.ldif").read_bytes() == b""
