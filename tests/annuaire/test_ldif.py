"""The streaming LDIF (RFC 2849) reader and writer."""

from __future__ import annotations

import io
import random
import subprocess
from pathlib import Path

import pytest

from annuaire.errors import LdifError
from annuaire.ldif import (
    LdifWriter,
    atomic_ldif_file,
    format_line,
    format_record,
    read_ldif,
    read_ldif_file,
    read_ldif_text,
)
from tests.peers.procs import require_binary


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("plain", "cn: plain"),
        ("", "cn:"),
        (" leading space", "cn:: IGxlYWRpbmcgc3BhY2U="),
        (":colon", "cn:: OmNvbG9u"),
        ("<angle", "cn:: PGFuZ2xl"),
        ("trailing ", "cn:: dHJhaWxpbmcg"),
        ("é", "cn:: w6k="),
        ("two\nlines", "cn:: dHdvCmxpbmVz"),
        ("tab\there", "cn:: dGFiCWhlcmU="),
        (b"plain bytes", "cn:: cGxhaW4gYnl0ZXM="),
        ("a:b <c>", "cn: a:b <c>"),
    ],
)
def test_format_line_encodes_unsafe_values(value: str | bytes, expected: str) -> None:
    assert format_line("cn", value) == expected


def test_format_line_folds_at_76_columns() -> None:
    folded = format_line("description", "x" * 200)
    lines = folded.split("\n")
    assert all(len(line) <= 76 for line in lines)
    assert all(line.startswith(" ") for line in lines[1:])
    assert folded.replace("\n ", "") == "description: " + "x" * 200


@pytest.mark.parametrize("name", ["cn\ndn", "cn: x", "", "1cn", "cn;", "c n", "cné"])
def test_writer_refuses_bad_attribute_names(name: str) -> None:
    with pytest.raises(LdifError, match="attribute description"):
        format_record("dc=x", {name: ["v"]})


def test_writer_accepts_options_and_oids() -> None:
    text = format_record("dc=x", [("userCertificate;binary", b"\x00"), ("2.5.4.3", "a")])
    assert text == "dn: dc=x\nuserCertificate;binary:: AA==\n2.5.4.3: a\n\n"


def test_writer_refuses_a_single_string_as_values() -> None:
    with pytest.raises(LdifError, match="list of values"):
        format_record("dc=x", {"cn": "abc"})  # type: ignore[dict-item]


def test_writer_refuses_lone_surrogates() -> None:
    with pytest.raises(LdifError, match="Unicode"):
        format_line("cn", "caf\udce9")


def test_non_ascii_dn_is_base64() -> None:
    assert format_record("cn=Hélène,dc=x", {}) == "dn:: Y249SMOpbMOobmUsZGM9eA==\n\n"


def test_round_trip_of_random_values() -> None:
    rng = random.Random(4398)
    alphabet = "aé :<$\\\n\r\0 ωx" + "".join(chr(c) for c in range(32, 127))
    records = []
    for index in range(200):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 120)))
        blob = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 300)))
        records.append((f"uid={index},dc=x", {"cn": [text], "userCertificate;binary": [blob]}))
    stream = io.BytesIO()
    writer = LdifWriter(stream)
    for dn, attributes in records:
        writer.write(dn, attributes)
    assert writer.records_written == 200
    data = stream.getvalue()
    assert data.isascii()
    assert all(len(line) <= 76 for line in data.split(b"\n"))
    back = list(read_ldif(io.BytesIO(data)))
    assert [r.dn for r in back] == [dn for dn, _ in records]
    for record, (_, attributes) in zip(back, records, strict=True):
        assert record.values("CN") == [attributes["cn"][0].encode("utf-8")]
        assert record.values("usercertificate;binary") == attributes["userCertificate;binary"]


def test_reader_handles_comments_folding_crlf_and_changetype_add() -> None:
    text = (
        "# a comment\r\n"
        "#  folded comment\r\n"
        "  still the comment\r\n"
        "version: 1\r\n"
        "dn: uid=a,\r\n"
        " dc=x\r\n"
        "changetype: add\r\n"
        "cn:Alice\r\n"
        "description:: w6k=\r\n"
        "# comment inside a record\r\n"
        "sn:   Martin  \r\n"
        "\r\n"
        "\r\n"
        "dn: uid=b,dc=x\r\n"
        "cn: B\r\n"
    )
    first, second = read_ldif_text(text)
    assert first.dn == "uid=a,dc=x" and first.line == 5
    assert first.attributes == {
        "cn": [b"Alice"],
        "description": ["é".encode()],
        "sn": [b"Martin  "],
    }
    assert second.dn == "uid=b,dc=x" and second.line == 14


def test_reader_accepts_version_right_before_a_record() -> None:
    (record,) = read_ldif_text("version: 1\ndn: dc=x\ndc: x\n")
    assert record.attributes == {"dc": [b"x"]}


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("version: 2\n\ndn: dc=x\n", 1, "version"),
        ("dn: dc=x\ncn:< file:///etc/shadow\n", 2, "URL values"),
        ("dn: dc=x\nchangetype: modify\nreplace: cn\n", 2, "change records"),
        ("dn: dc=x\ncontrol: 1.2.3\n", 2, "control"),
        ("dn: dc=x\ncn:: not*base64\n", 2, "base64"),
        ("cn: x\n", 1, "start with 'dn:'"),
        ("dn: dc=x\nno colon here\n", 2, "attribute: value"),
        (" orphan continuation\n", 1, "continuation"),
        ("dn: dc=x\nc n: x\n", 2, "attribute description"),
        ("dn:: /w==\n", 1, "UTF-8"),
        ("dn: dc=x\n\n\ncn: y\n", 4, "start with 'dn:'"),
    ],
)
def test_reader_errors_carry_the_line(text: str, line: int, problem: str) -> None:
    with pytest.raises(LdifError, match=problem) as caught:
        read_ldif_text(text, source="t.ldif")
    assert caught.value.line == line
    assert str(caught.value).startswith(f"t.ldif:{line}: ")


def test_reader_streams(tmp_path: Path) -> None:
    """Records come one at a time: an error late in the file only shows when reached."""
    path = tmp_path / "big.ldif"
    path.write_bytes(b"dn: dc=a\ncn: a\n\ndn: dc=b\ncn: b\n\nbroken\n")
    records = read_ldif_file(path)
    assert next(records).dn == "dc=a"
    assert next(records).dn == "dc=b"
    with pytest.raises(LdifError, match=f"{path}:7"):
        next(records)


def test_atomic_file_replaces_only_on_success(tmp_path: Path) -> None:
    path = tmp_path / "out" / "a.ldif"
    with atomic_ldif_file(path) as writer:
        writer.comment("made by a test\nsecond line\x00")
        writer.write("dc=x", {"dc": ["x"]})
    assert path.read_bytes() == (b"# made by a test\n# second line?\ndn: dc=x\ndc: x\n\n")
    assert path.stat().st_mode & 0o777 == 0o644
    with pytest.raises(RuntimeError), atomic_ldif_file(path) as writer:
        writer.write("dc=y", {"dc": ["y"]})
        raise RuntimeError("import failed half-way")
    assert b"dc=y" not in path.read_bytes()
    assert sorted(p.name for p in path.parent.iterdir()) == ["a.ldif"]


def test_openldap_parses_what_the_writer_writes(tmp_path: Path) -> None:
    """``ldapadd -n`` (no server contacted) parses every record we write."""
    path = tmp_path / "out.ldif"
    with atomic_ldif_file(path) as writer:
        writer.write(
            "dc=annuaire,dc=test",
            {"objectClass": ["dcObject", "organization"], "dc": ["annuaire"], "o": ["Annuaire é"]},
        )
        writer.write(
            "cn=Hélène \\2C x,dc=annuaire,dc=test",
            {
                "objectClass": ["person"],
                "cn": ["Hélène , x"],
                "sn": [" L"],
                "description": ["x" * 300],
            },
        )
    ldapadd = require_binary("ldapadd")
    result = subprocess.run(
        [ldapadd, "-n", "-x", "-H", "ldap://127.0.0.1:9", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("adding new entry") == 2
