"""The synthetic extract generator: deterministic, streaming, synthetic, bad rows on demand."""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path

import pytest

from annuaire.importers import mssante, rpps
from annuaire.importers.checks import national_id
from annuaire.importers.rows import decode_line, split_row
from annuaire.importers.synthetic import mssante_lines, rpps_lines, write_extract
from tests.config.support import REPOSITORY

GENERATORS = {"mssante": mssante_lines, "rpps": rpps_lines}


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_same_arguments_same_bytes(name: str) -> None:
    generate = GENERATORS[name]
    first = b"".join(generate(300, seed=8, bad_rows=5))
    assert b"".join(generate(300, seed=8, bad_rows=5)) == first
    assert b"".join(generate(300, seed=9, bad_rows=5)) != first
    assert first.count(b"\n") == 301


def test_lines_are_produced_lazily() -> None:
    lines = mssante_lines(10**9, seed=1, bad_rows=3)
    head = list(itertools.islice(lines, 5))
    assert head[0].startswith(b"Type de BAL|Adresse BAL|")
    assert len(head) == 5


@pytest.mark.parametrize(("name", "width"), [("mssante", 31), ("rpps", 53)])
def test_rows_are_valid_and_obviously_synthetic(name: str, width: int) -> None:
    lines = list(GENERATORS[name](500, seed=3))
    header = lines[0].decode().rstrip("\n").split("|")
    assert len(header) == width
    parser = (mssante if name == "mssante" else rpps).bind(header)
    column = header.index("Identification nationale PP")
    addresses = 0
    for raw in lines[1:]:
        fields = split_row(decode_line(raw.rstrip(b"\n")), width)
        parser.key(fields)
        ident = fields[column]
        if ident:
            assert national_id(ident) == ident
            assert ident[1:3] == "99"  # 8+RPPS and 0+ADELI: the never-real "99" range
        if name == "mssante":
            addresses += 1
            assert fields[1].endswith(".mssante.test")
    assert name == "rpps" or addresses == 500


@pytest.mark.parametrize("name", sorted(GENERATORS))
def test_bad_rows_are_exactly_the_requested_number(name: str) -> None:
    lines = list(GENERATORS[name](400, seed=6, bad_rows=9))
    header = lines[0].decode().rstrip("\n").split("|")
    parser = (mssante if name == "mssante" else rpps).bind(header)
    reasons = []
    for raw in lines[1:]:
        try:
            parser.key(split_row(decode_line(raw.rstrip(b"\n")), len(header)))
        except ValueError as error:
            reasons.append(str(error))
    assert len(reasons) == 9
    assert any("columns, expected" in r for r in reasons)
    assert any("not valid UTF-8" in r for r in reasons)
    assert any("national id" in r for r in reasons)


def test_several_mailboxes_of_one_person_are_not_adjacent() -> None:
    lines = [line.decode() for line in mssante_lines(2000, seed=2)][1:]
    rows = [line.split("|") for line in lines]
    positions: dict[str, list[int]] = {}
    for index, fields in enumerate(rows):
        if fields[4]:
            positions.setdefault(fields[4], []).append(index)
    several = [p for p in positions.values() if len(p) > 1]
    assert len(several) > 50
    assert any(p[1] - p[0] > 10 for p in several)


def test_write_extract_and_script(tmp_path: Path) -> None:
    path = tmp_path / "rpps.txt"
    with path.open("wb") as stream:
        written = write_extract(stream, "rpps", 20, seed=1)
    assert written == path.stat().st_size
    script = REPOSITORY / "scripts" / "generate-annuaire-extracts"
    result = subprocess.run(
        [str(script), "--format", "rpps", "--rows", "20", "--seed", "1"],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert result.stdout == path.read_bytes()
    refused = subprocess.run(
        [sys.executable, "-m", "annuaire.importers.synthetic", "--format", "rpps", "--rows", "2",
         "--bad-rows", "3"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
        cwd=REPOSITORY,
    )  # fmt: skip
    assert refused.returncode == 2 and "--bad-rows cannot exceed --rows" in refused.stderr
