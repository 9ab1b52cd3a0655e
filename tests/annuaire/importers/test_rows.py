"""Line reading: numbering, decoding, splitting, header columns."""

from __future__ import annotations

import io

import pytest

from annuaire.importers.errors import ExtractFormatError, RowError
from annuaire.importers.rows import (
    Column,
    decode_line,
    fold_name,
    locate_columns,
    physical_lines,
    pick,
    read_header,
    split_row,
)


def test_physical_lines_numbers_and_line_ends() -> None:
    stream = io.BytesIO(b"a|b\r\nc|d\n\ne|f")
    assert list(physical_lines(stream, start=2)) == [
        (2, b"a|b"),
        (3, b"c|d"),
        (4, b""),
        (5, b"e|f"),
    ]


def test_decode_line_names_the_bad_byte() -> None:
    assert decode_line("é|x".encode()) == "é|x"
    with pytest.raises(RowError, match=r"not valid UTF-8 \(byte 0xff at offset 2\)"):
        decode_line(b"ab\xff|c")
    with pytest.raises(RowError, match="not valid UTF-8"):
        decode_line("é".encode("latin-1"))


def test_split_row_checks_count_controls_and_length() -> None:
    assert split_row("a|b|c", 3) == ["a", "b", "c"]
    assert split_row("a|\tb|c", 3) == ["a", "\tb", "c"]  # TAB is data
    assert split_row("a| |é", 3) == ["a", " ", "é"]
    with pytest.raises(RowError, match="2 columns, expected 3"):
        split_row("a|b", 3)
    with pytest.raises(RowError, match="4 columns, expected 3"):
        split_row("a|b|c|d", 3)
    for control in ("\x00", "\x1b", "\r", "\x7f"):
        with pytest.raises(RowError, match="control character"):
            split_row(f"a|b{control}|c", 3)
    with pytest.raises(RowError, match="column 2 longer than 1024"):
        split_row("a|" + "x" * 1025 + "|c", 3)
    assert split_row("a|" + "x" * 1024 + "|c", 3)[1] == "x" * 1024


def test_read_header_strips_a_byte_order_mark() -> None:
    assert read_header(io.BytesIO("\ufeffA|B\r\nx|y\n".encode()), "x") == ["A", "B"]
    with pytest.raises(ExtractFormatError, match="empty file"):
        read_header(io.BytesIO(b""), "an MSSanté extract")
    with pytest.raises(ExtractFormatError, match="not UTF-8"):
        read_header(io.BytesIO(b"\xff\xfe|x\n"), "an MSSanté extract")


def test_fold_name_ignores_case_accents_spaces_and_apostrophe_style() -> None:
    assert fold_name("  Prénom  d’exercice ") == fold_name("PRENOM D'EXERCICE")


def test_locate_columns_by_name_in_any_order() -> None:
    columns = {
        "a": Column(("Adresse BAL",)),
        "b": Column(("Code postal structure BAL", "Code postal")),
        "c": Column(("Pays",), required=False),
    }
    found = locate_columns(["x", "code postal", "ADRESSE  bal"], columns, "test")
    assert found == {"a": 2, "b": 1, "c": -1}
    assert pick([" v0 ", " v1 ", " v2 "], (2, 1, -1)) == ["v2", "v1", ""]


def test_locate_columns_lists_what_is_missing() -> None:
    columns = {"a": Column(("Adresse BAL",)), "b": Column(("Type de BAL",))}
    with pytest.raises(ExtractFormatError) as caught:
        locate_columns(["Nom", "Prénom"], columns, "an MSSanté extract")
    message = str(caught.value)
    assert "not an MSSanté extract" in message
    assert "'Adresse BAL', 'Type de BAL'" in message and "found 2 columns" in message
