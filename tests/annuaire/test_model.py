"""The annuaire model: invariants of Entry and Mailbox, address helpers."""

from __future__ import annotations

import pytest

from annuaire.errors import EntryError
from annuaire.model import (
    Entry,
    Mailbox,
    address_domain,
    entry_key,
    is_valid_address,
    normalise_address,
    strip_tag,
)


def person(**overrides: object) -> Entry:
    fields: dict[str, object] = {
        "key": "810000000001",
        "kind": "person",
        "display_name": "Alice Martin",
        "national_id": "810000000001",
        "mailboxes": (Mailbox("alice.martin@CHU-A.test"),),
    }
    fields.update(overrides)
    return Entry(**fields)  # type: ignore[arg-type]


def test_mailbox_lowercases_the_domain_only() -> None:
    mailbox = Mailbox("Alice.Martin@CHU-A.Test", "PER")
    assert mailbox.address == "Alice.Martin@chu-a.test"


@pytest.mark.parametrize(
    "address",
    [
        "",
        "alice",
        "@chu-a.test",
        "alice@",
        "alice@localhost",
        "al ice@chu-a.test",
        "alice@chu_a.test",
        "alice@-chu.test",
        "alice..martin@chu-a.test",
        ".alice@chu-a.test",
        "alice@chu-a.test\n",
        "a\0b@chu-a.test",
        "x" * 65 + "@chu-a.test",
        "a@" + "b" * 250 + ".test",
        "caf\udce9@chu-a.test",  # non-UTF-8 byte through surrogateescape
        "*)(mail=*@chu-a.test",
    ],
)
def test_invalid_addresses_are_refused(address: str) -> None:
    assert not is_valid_address(address)
    with pytest.raises(EntryError):
        Mailbox(address)


def test_utf8_local_part_is_accepted() -> None:
    assert normalise_address("hélène@chu-a.test") == "hélène@chu-a.test"


def test_mailbox_type_is_checked() -> None:
    with pytest.raises(EntryError, match="mailbox type"):
        Mailbox("a@chu-a.test", "XYZ")  # type: ignore[arg-type]


def test_strip_tag_and_domain() -> None:
    assert strip_tag("alice+cardio@chu-a.test") == "alice@chu-a.test"
    assert strip_tag("alice+a+b@chu-a.test") == "alice@chu-a.test"
    assert strip_tag("+only@chu-a.test") == "+only@chu-a.test"
    assert strip_tag("plain@chu-a.test") == "plain@chu-a.test"
    assert address_domain("a@CHU-A.test") == "chu-a.test"


def test_entry_holds_its_fields() -> None:
    entry = person(postal_address=("1 rue de l'Exemple",), city="Ville-A")
    assert entry.addresses == ("alice.martin@chu-a.test",)
    assert entry.mailbox("ALICE.MARTIN@chu-a.test") == entry.mailboxes[0]
    assert entry.mailbox("bob@chu-a.test") is None
    assert hash(entry) == hash(person(postal_address=("1 rue de l'Exemple",), city="Ville-A"))


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"key": ""}, "key"),
        ({"key": "  "}, "key"),
        ({"kind": "robot"}, "kind"),
        ({"display_name": ""}, "display_name"),
        ({"surname": "Martin\nmail: x"}, "surname"),
        ({"city": "Paris\0"}, "city"),
        ({"region": "x" * 2000}, "region"),
        ({"given_name": "caf\udce9"}, "given_name"),
        ({"postal_address": ["1 rue"]}, "postal_address"),
        ({"postal_address": ("1 rue\r\n2 rue",)}, "postal_address"),
        ({"mailboxes": ("a@chu-a.test",)}, "mailboxes"),
        ({"certificates": ("not bytes",)}, "certificates"),
    ],
)
def test_entry_invariants(overrides: dict[str, object], message: str) -> None:
    with pytest.raises(EntryError, match=message):
        person(**overrides)


def test_entry_key_rule() -> None:
    box = (Mailbox("Secretariat@chu-a.test", "ORG"),)
    assert entry_key("person", "810000000001", box) == "810000000001"
    assert entry_key("structure", "1990000001", box) == "secretariat@chu-a.test"
    assert entry_key("person", None, box) == "secretariat@chu-a.test"
    with pytest.raises(EntryError):
        entry_key("person", None, ())
