"""Row value checks: mailbox addresses, national ids, mailbox types, Luhn."""

from __future__ import annotations

import pytest

from annuaire.importers import checks
from annuaire.importers.errors import RowError
from tests.annuaire.importers.support import rpps_id


def test_luhn_reference_number() -> None:
    # the usual worked example of ISO/IEC 7812-1
    assert checks.luhn_valid("79927398713")
    assert not checks.luhn_valid("79927398710")


def test_national_id_shapes() -> None:
    good = rpps_id(1234)
    assert checks.national_id(f"  {good} ") == good
    assert checks.national_id("0991234567") == "0991234567"  # ADELI
    assert checks.national_id("02A1234567") == "02A1234567"  # ADELI, Corsica
    assert checks.national_id("3199912345/ABC-12") == "3199912345/ABC-12"  # structure staff


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (rpps_id(1234)[:-1] + str((int(rpps_id(1234)[-1]) + 1) % 10), "Luhn"),
        ("81234", "expected 8+RPPS"),
        ("0ABCDEFGHI", "expected 8+RPPS"),
        ("3199912345", "expected 8+RPPS"),  # type 3 needs the "/" and the local id
        ("9" * 12, "expected 8+RPPS"),
        ("*)(uid=*", "expected 8+RPPS"),
        ("8\x0099", "expected 8+RPPS"),
        ("", "expected 8+RPPS"),
    ],
)
def test_national_id_refused(value: str, reason: str) -> None:
    with pytest.raises(RowError, match=reason.replace("+", r"\+")):
        checks.national_id(value)


def test_optional_national_id() -> None:
    assert checks.optional_national_id("  ") is None
    assert checks.optional_national_id(rpps_id(7)) == rpps_id(7)


def test_mailbox_address_is_lower_cased_whole() -> None:
    assert checks.mailbox_address(" Jean.DUPONT@Medecin.MSSante.test ") == (
        "jean.dupont@medecin.mssante.test"
    )


@pytest.mark.parametrize(
    "value",
    [
        "",
        "jean.dupont",
        "jean dupont@medecin.mssante.test",
        "jean..dupont@medecin.mssante.test",
        "jean@localhost",
        "jean@-bad-.test",
        "*)(mail=*",
        "jean\\dupont@x.test",
        "jean\x00@x.test",
        "rené@medecin.mssante.test",  # UTF-8 addresses are reported, not imported
        "a" * 65 + "@x.test",
        "jean@" + "a" * 250 + ".test",
        "x" * 10_000,
    ],
)
def test_mailbox_address_refused(value: str) -> None:
    with pytest.raises(RowError):
        checks.mailbox_address(value)


def test_mailbox_types() -> None:
    assert [checks.mailbox_type(t) for t in ("PER", "org", " App ", "CAB")] == [
        "PER",
        "ORG",
        "APP",
        "CAB",
    ]
    with pytest.raises(RowError, match="unknown mailbox type"):
        checks.mailbox_type("BAL")


def test_structure_id() -> None:
    assert checks.structure_id(" 1999900001 ") == "1999900001"
    assert checks.structure_id("") is None
    with pytest.raises(RowError, match="invalid structure id"):
        checks.structure_id("1 99 99")
