"""Entry <-> LDAP attributes: round trips, configured names, lenient reading."""

from __future__ import annotations

import pytest

from annuaire.errors import EntryError
from annuaire.mapping import (
    attributes_to_entry,
    decode_postal_address,
    encode_postal_address,
    entry_dn,
    entry_to_attributes,
    managed_attributes,
    rdn_value,
    requested_attributes,
)
from annuaire.model import Entry, Mailbox
from gateway.config import AnnuaireAttributes
from tests.annuaire.samples import ATTRIBUTES, BASE_DN, all_samples, helene, structure

CERT_A = b"\x30\x82\x01\x00" + b"a" * 10
CERT_B = b"\x30\x82\x01\x00" + b"b" * 10


@pytest.mark.parametrize("entry", all_samples(), ids=lambda e: e.key)
def test_round_trip(entry: Entry) -> None:
    attributes = entry_to_attributes(entry, ATTRIBUTES)
    assert attributes_to_entry(entry_dn(entry, BASE_DN), attributes, ATTRIBUTES) == entry


def test_round_trip_with_bytes_values_as_ldap_returns_them() -> None:
    entry = helene((CERT_A, CERT_B))
    raw = {
        name: [v if isinstance(v, bytes) else v.encode("utf-8") for v in values]
        for name, values in entry_to_attributes(entry, ATTRIBUTES).items()
    }
    assert attributes_to_entry(entry_dn(entry, BASE_DN), raw, ATTRIBUTES) == entry


def test_written_attributes() -> None:
    attributes = entry_to_attributes(helene((CERT_A,)), ATTRIBUTES)
    assert attributes["objectClass"][-2:] == ["inetOrgPerson", "missiveHealthEntry"]
    assert attributes["uid"] == ["810000000001"]
    assert attributes["cn"] == attributes["displayName"] == ["Hélène L'Œuvre-Dupré"]
    assert attributes["mail"] == ["helene.loeuvre@chu-a.test", "cardio.secretariat@chu-a.test"]
    assert attributes["missiveMailbox"] == [
        "PER:helene.loeuvre@chu-a.test",
        "CAB:cardio.secretariat@chu-a.test",
    ]
    assert attributes["userCertificate;binary"] == [CERT_A]
    assert attributes["postalAddress"] == [
        "Service de cardiologie$1 rue de l'Exemple \\24 bis \\5C 2"
    ]
    assert attributes["st"] == ["Île-de-Test"]
    keys = attributes["missiveSearchKey"]
    assert {"n:helene", "n:l", "n:oeuvre", "n:dupre", "s:cardiologie", "c:etienne"} <= set(keys)
    assert "p:medecin" in keys and "r:ile" in keys and "d:99" in keys
    assert "givenName" in attributes and "userSMIMECertificate" not in attributes


def test_structure_sn_defaults_to_display_name() -> None:
    attributes = entry_to_attributes(structure(), ATTRIBUTES)
    assert attributes["sn"] == ["Clinique B - Accueil"]
    assert "givenName" not in attributes
    assert attributes["missiveEntryKind"] == ["structure"]


def test_stock_directory_mode_has_no_health_attributes() -> None:
    attributes = entry_to_attributes(helene(), ATTRIBUTES, health_schema=False)
    assert "missiveHealthEntry" not in attributes["objectClass"]
    assert not any(name.startswith("missive") for name in attributes)
    back = attributes_to_entry("uid=810000000001," + BASE_DN, attributes, ATTRIBUTES)
    assert back.national_id is None and back.specialty_label is None
    assert back.mailboxes == (
        Mailbox("helene.loeuvre@chu-a.test", "PER"),
        Mailbox("cardio.secretariat@chu-a.test", "PER"),
    )


def test_configured_attribute_names() -> None:
    config = AnnuaireAttributes(mail="rfc822Mailbox", certificate=("userSMIMECertificate",))
    attributes = entry_to_attributes(helene((CERT_A,)), config)
    assert "mail" not in attributes and attributes["rfc822Mailbox"]
    assert attributes["userSMIMECertificate"] == [CERT_A]
    assert "rfc822Mailbox" in managed_attributes(config)
    assert "userSMIMECertificate" in requested_attributes(config)
    assert "missiveSearchKey" not in requested_attributes(config)


def test_reading_is_case_insensitive_and_merges_certificate_attributes() -> None:
    attributes = {
        "OBJECTCLASS": [b"inetOrgPerson"],
        "CN": [b"Jean Roux"],
        "SN": [b"Roux"],
        "Mail": [b"jean.roux@chu-a.test", b"not an address", b"JEAN.ROUX@chu-a.test"],
        "userCertificate": [CERT_A],  # the server dropped the ;binary option
        "usersmimecertificate": [CERT_B, CERT_A],
    }
    entry = attributes_to_entry("uid=jean,ou=p,dc=x", attributes, ATTRIBUTES)
    assert entry.key == "jean" and entry.display_name == "Jean Roux" and entry.kind == "person"
    assert entry.addresses == ("jean.roux@chu-a.test",)
    assert entry.certificates == (CERT_A, CERT_B)


def test_key_falls_back_to_the_rdn_then_the_mail() -> None:
    attributes = {"cn": ["X"], "mail": ["x@chu-a.test"]}
    assert attributes_to_entry("cn=A\\2C B\\+C,dc=x", attributes, ATTRIBUTES).key == "A, B+C"
    assert attributes_to_entry("", attributes, ATTRIBUTES).key == "x@chu-a.test"
    with pytest.raises(EntryError):
        attributes_to_entry("", {"cn": ["X"]}, ATTRIBUTES)


def test_bad_mailbox_values_are_skipped() -> None:
    attributes = {
        "uid": ["k"],
        "cn": ["K"],
        "missiveMailbox": ["XYZ:a@chu-a.test", "PER:not-an-address", "APP:app@chu-a.test"],
        "missiveEntryKind": ["Structure"],
        "mail": ["other@chu-a.test"],
    }
    entry = attributes_to_entry("uid=k,dc=x", attributes, ATTRIBUTES)
    assert entry.kind == "structure"
    assert entry.mailboxes == (Mailbox("app@chu-a.test", "APP"), Mailbox("other@chu-a.test", "ORG"))


def test_control_characters_from_a_directory_are_an_entry_error() -> None:
    with pytest.raises(EntryError):
        attributes_to_entry("uid=k,dc=x", {"uid": ["k"], "cn": ["A\nB"]}, ATTRIBUTES)


def test_dn_escaping() -> None:
    entry = Entry(key="a,b+c@x.test", kind="structure", display_name="X")
    assert entry_dn(entry, "dc=x") == "uid=a\\,b\\+c@x.test,dc=x"
    assert rdn_value(entry_dn(entry, "dc=x")) == "a,b+c@x.test"
    assert rdn_value("not a dn") is None


@pytest.mark.parametrize(
    "lines",
    [("a",), ("a", "b"), ("$", "\\"), ("x \\24 y",), ("\\5C",)],
)
def test_postal_address_round_trip(lines: tuple[str, ...]) -> None:
    assert decode_postal_address(encode_postal_address(lines)) == lines


def test_postal_address_drops_empty_lines() -> None:
    assert encode_postal_address(("", "a", "  ")) == "a"
    assert decode_postal_address("") == ()
