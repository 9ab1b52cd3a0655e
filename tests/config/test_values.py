"""Every value parser of the configuration (gateway.config.values, quantities, domains,
hosts, names, value_errors), with good and bad input (pure, no files)."""

from __future__ import annotations

import ipaddress
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.config import domains, hosts, names, quantities, value_errors, values
from gateway.config.hosts import HostPort
from gateway.config.value_errors import BadValue
from gateway.config.values import DeliverTo

ANY_IPV4 = "0.0.0.0"  # noqa: S104 - a value to parse, never bound


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("5m", timedelta(minutes=5)),
        ("4h", timedelta(hours=4)),
        ("5d", timedelta(days=5)),
        ("1w", timedelta(days=7)),
        ("183d", timedelta(days=183)),
        ("1h30m", timedelta(minutes=90)),
        ("0s", timedelta(0)),
    ],
)
def test_duration_good(text: str, expected: timedelta) -> None:
    assert quantities.parse_duration(text) == expected


@pytest.mark.parametrize(
    "text", ["", "30", "5 m", "5M", "1y", "1mo", "-5m", "m", "5m ", "1.5h", "99999999999999w"]
)
def test_duration_bad(text: str) -> None:
    with pytest.raises(BadValue, match="duration"):
        quantities.parse_duration(text)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("50MB", 50_000_000),
        ("512KB", 512_000),
        ("1GB", 1_000_000_000),
        ("64MiB", 64 * 1024 * 1024),
        ("1kib", 1024),
        ("10 MB", 10_000_000),
        ("100B", 100),
        ("2048", 2048),
        (4096, 4096),
        (0, 0),
    ],
)
def test_size_good(value: str | int, expected: int) -> None:
    assert quantities.parse_size(value) == expected


@pytest.mark.parametrize("value", ["", "MB", "50 parsecs", "1.5MB", "-1MB", "50MBB", -1])
def test_size_bad(value: str | int) -> None:
    with pytest.raises(BadValue):
        quantities.parse_size(value)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:2525", HostPort("127.0.0.1", 2525)),
        ("[::1]:25", HostPort("::1", 25)),
        ("[2001:DB8::1]:465", HostPort("2001:db8::1", 465)),
        ("MX.Example.test:25", HostPort("mx.example.test", 25)),
        ("localhost:1", HostPort("localhost", 1)),
        (f"{ANY_IPV4}:65535", HostPort(ANY_IPV4, 65535)),
    ],
)
def test_host_port_good(text: str, expected: HostPort) -> None:
    assert hosts.parse_host_port(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "127.0.0.1",  # no port, no default
        "127.0.0.1:",
        "127.0.0.1:0",
        "127.0.0.1:65536",
        "127.0.0.1:25x",
        "::1:25",  # IPv6 without brackets
        "[::1]25",
        "[nope]:25",
        "[::1",
        "bad_host:25",
        ":25",
        "-x.test:25",
    ],
)
def test_host_port_bad(text: str) -> None:
    with pytest.raises(BadValue):
        hosts.parse_host_port(text)


def test_host_port_options() -> None:
    assert hosts.parse_host_port("mx.x.test", default_port=25) == HostPort("mx.x.test", 25)
    assert hosts.parse_host_port("127.0.0.1:0", allow_port_zero=True).port == 0
    assert hosts.parse_host_port("10.0.0.1", default_port=53, ip_only=True).port == 53
    with pytest.raises(BadValue, match="IP address"):
        hosts.parse_host_port("ns.x.test:53", ip_only=True)


def test_host_port_text_and_loopback() -> None:
    assert str(HostPort("::1", 25)) == "[::1]:25"
    assert str(HostPort("127.0.0.1", 25)) == "127.0.0.1:25"
    assert HostPort("127.0.0.2", 25).is_loopback
    assert HostPort("::1", 25).is_loopback
    assert HostPort("localhost", 25).is_loopback
    assert not HostPort(ANY_IPV4, 25).is_loopback
    assert not HostPort("mx.x.test", 25).is_loopback
    assert HostPort("192.0.2.1", 25).is_ip and not HostPort("mx.x.test", 25).is_ip


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Chu-A.TEST", "chu-a.test"),
        ("chu-a.test.", "chu-a.test"),
        ("xn--bcher-kva.test", "xn--bcher-kva.test"),
    ],
)
def test_domain_good(text: str, expected: str) -> None:
    assert domains.parse_domain(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "bücher.test",
        "a..b",
        "-a.test",
        "a-.test",
        "a_b.test",
        "1.2.3.4",
        "a" * 64 + ".test",
        ("a" * 60 + ".") * 5 + "test",
        "a test",
    ],
)
def test_domain_bad(text: str) -> None:
    with pytest.raises(BadValue):
        domains.parse_domain(text)


def test_hostname_fully_qualified() -> None:
    assert domains.parse_hostname("localhost") == "localhost"
    with pytest.raises(BadValue, match="fully qualified"):
        domains.parse_hostname("localhost", fully_qualified=True)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("*", "*"), ("*.X.test", "*.x.test"), ("Clinique-B.test", "clinique-b.test")],
)
def test_domain_pattern_good(text: str, expected: str) -> None:
    assert domains.parse_domain_pattern(text) == expected


@pytest.mark.parametrize("text", ["", "**", "a.*.test", "*x.test", "*.", "x*.test"])
def test_domain_pattern_bad(text: str) -> None:
    with pytest.raises(BadValue):
        domains.parse_domain_pattern(text)


@pytest.mark.parametrize(
    ("pattern", "domain", "expected"),
    [
        ("*", "anything.test", True),
        ("*.apicrypt.test", "medical.apicrypt.test", True),
        ("*.apicrypt.test", "a.b.apicrypt.test", True),
        ("*.apicrypt.test", "apicrypt.test", False),
        ("*.apicrypt.test", "evilapicrypt.test", False),
        ("x.test", "x.test", True),
        ("x.test", "a.x.test", False),
    ],
)
def test_domain_matches(pattern: str, domain: str, expected: bool) -> None:
    assert domains.domain_matches(pattern, domain) is expected


@pytest.mark.parametrize(
    ("earlier", "later", "expected"),
    [
        ("*", "x.test", True),
        ("*.x.test", "a.x.test", True),
        ("*.x.test", "*.a.x.test", True),
        ("*.x.test", "x.test", False),
        ("x.test", "x.test", True),
        ("x.test", "*.x.test", False),
    ],
)
def test_pattern_covers(earlier: str, later: str, expected: bool) -> None:
    assert domains.pattern_covers(earlier, later) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("alice.martin@CHU-A.test", "alice.martin@chu-a.test"),
        ("Alice@chu-a.test", "Alice@chu-a.test"),  # local part kept (RFC 5321 §2.4)
        ("o'brien+tag@x.test", "o'brien+tag@x.test"),
        ("élise@x.test", "élise@x.test"),  # RFC 6531
    ],
)
def test_email_good(text: str, expected: str) -> None:
    assert domains.parse_email(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "alice",
        "@x.test",
        "alice@",
        ".a@x.test",
        "a..b@x.test",
        '"a b"@x.test',
        "a b@x.test",
        "a@b@x.test",
        "a@bad_domain",
        "a" * 65 + "@x.test",
    ],
)
def test_email_bad(text: str) -> None:
    with pytest.raises(BadValue):
        domains.parse_email(text)


def test_network() -> None:
    assert hosts.parse_network("192.0.2.0/24") == ipaddress.ip_network("192.0.2.0/24")
    assert hosts.parse_network("127.0.0.1") == ipaddress.ip_network("127.0.0.1/32")
    assert hosts.parse_network("2001:db8::/32").version == 6
    for bad in ["192.0.2.1/24", "300.0.0.0/8", "x", "", "10.0.0.0/33"]:
        with pytest.raises(BadValue, match="network"):
            hosts.parse_network(bad)


def test_subject_dn() -> None:
    name = names.parse_subject_dn("CN=smtp.chu-a.test,O=CHU A,C=FR")
    assert name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "smtp.chu-a.test"
    # attribute types are case-insensitive (RFC 4512 §2.5); extra names and OIDs work
    assert names.parse_subject_dn("cn=smtp.chu-a.test,o=CHU A,c=FR") == name
    other = names.parse_subject_dn("serialNumber=123,2.5.4.97=NTRFR-1,emailAddress=a@x.test")
    assert other.get_attributes_for_oid(NameOID.SERIAL_NUMBER)[0].value == "123"
    assert (
        names.parse_subject_dn(r"CN=a\,b,O=x").get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        == "a,b"
    )
    for bad in ["", "CN", "CN=a,,O=b", "FOO=bar", "CN=a,O"]:
        with pytest.raises(BadValue):
            names.parse_subject_dn(bad)


def test_relay_client() -> None:
    assert names.parse_relay_client("10.0.0.0/8") == ipaddress.ip_network("10.0.0.0/8")
    assert isinstance(names.parse_relay_client("dn:CN=smtp.chu-a.test,O=CHU A"), x509.Name)
    assert isinstance(names.parse_relay_client("DN:CN=x"), x509.Name)
    for bad in ["dn:", "dn:nonsense", "example.test", "10.0.0.1/8"]:
        with pytest.raises(BadValue):
            names.parse_relay_client(bad)


def test_ldap_dn() -> None:
    assert names.parse_ldap_dn("ou=people,dc=annuaire,dc=test") == "ou=people,dc=annuaire,dc=test"
    for bad in ["", "ou=people,,dc=x", "people", "=x"]:
        with pytest.raises(BadValue):
            names.parse_ldap_dn(bad)


def test_ldap_attribute() -> None:
    for good in ["mail", "userCertificate;binary", "userSMIMECertificate", "2.5.4.36"]:
        assert names.parse_ldap_attribute(good) == good
    for bad in ["", "user certificate", ";binary", "mail;", "1abc"]:
        with pytest.raises(BadValue):
            names.parse_ldap_attribute(bad)


def test_ldap_url() -> None:
    for good in ["ldap://127.0.0.1:3389", "ldaps://ldap.x.test", "ldap://[::1]:389/"]:
        assert values.parse_ldap_url(good) == good
    cases = {
        "http://x.test": "ldap://",
        "ldap://": "no host",
        "ldap://u:p@x.test": "credentials",
        "ldap://x.test/dc=x": "base_dn",
        "ldap://x.test:99999": "port",
        "ldap://x.test?cn": "query",
    }
    for bad, reason in cases.items():
        with pytest.raises(BadValue, match=reason):
            values.parse_ldap_url(bad)


def test_imap_url() -> None:
    assert values.parse_imap_url("imaps://imap.partner.test:993/INBOX")
    assert values.parse_imap_url("imap://127.0.0.1:1143/INBOX")  # loopback: allowed
    with pytest.raises(BadValue, match="in clear"):
        values.parse_imap_url("imap://imap.partner.test/INBOX")
    with pytest.raises(BadValue, match="credentials"):
        values.parse_imap_url("imaps://alice:secret@imap.partner.test/INBOX")
    with pytest.raises(BadValue):
        values.parse_imap_url("pop3://x.test")


def test_deliver_to() -> None:
    home = Path("/srv/missive")
    assert values.parse_deliver_to("maildir:var/mail", home) == DeliverTo(
        "maildir", path=Path("/srv/missive/var/mail")
    )
    assert values.parse_deliver_to("maildir:/abs/mail", home).path == Path("/abs/mail")
    assert values.parse_deliver_to("lmtp://127.0.0.1:24", home) == DeliverTo(
        "lmtp", address=HostPort("127.0.0.1", 24)
    )
    assert values.parse_deliver_to("lmtp://mail.x.test", home).address == HostPort(
        "mail.x.test", 24
    )
    assert values.parse_deliver_to("smtp://[::1]", home).address == HostPort("::1", 25)
    assert str(values.parse_deliver_to("smtp://127.0.0.1:2526", home)) == "smtp://127.0.0.1:2526"
    for bad in ["maildir:", "imap://x.test", "lmtp:/x", "var/mail", "smtp://", "lmtp://x:0"]:
        with pytest.raises(BadValue):
            values.parse_deliver_to(bad, home)


def test_fallback() -> None:
    assert values.parse_fallback("bounce") == "bounce"
    assert values.parse_fallback("postal") == "postal"
    assert values.parse_fallback("route:apicrypt") == "route:apicrypt"
    for bad in ["", "route:", "route:a b", "Bounce", "drop"]:
        with pytest.raises(BadValue):
            values.parse_fallback(bad)


def test_names_and_logins() -> None:
    assert names.parse_name("mx-2.a_b") == "mx-2.a_b"
    for bad in ["", "-x", "a b", "é", "x" * 65]:
        with pytest.raises(BadValue):
            names.parse_name(bad)
    assert names.parse_login("alice.martin") == "alice.martin"
    for bad in ["", "a b", "a\nb"]:
        with pytest.raises(BadValue):
            names.parse_login(bad)


def test_cipher_list() -> None:
    assert values.parse_cipher_list("") == ""
    assert values.parse_cipher_list("ECDHE-RSA-AES256-GCM-SHA384") == "ECDHE-RSA-AES256-GCM-SHA384"
    with pytest.raises(BadValue, match="no cipher"):
        values.parse_cipher_list("NOT-A-CIPHER")


def test_resolve_path() -> None:
    home = Path("/srv/missive")
    assert values.resolve_path("var/spool", home) == Path("/srv/missive/var/spool")
    assert values.resolve_path("../etc/x", home) == Path("/srv/etc/x")
    assert values.resolve_path("/abs/x", home) == Path("/abs/x")
    with pytest.raises(BadValue):
        values.resolve_path("a\x00b", home)


def test_show_is_one_short_line() -> None:
    assert value_errors.show("yes") == '"yes"'
    assert value_errors.show(True) == "true"
    assert value_errors.show(5) == "5"
    assert value_errors.show([1]) == "an array"
    assert value_errors.show({"a": 1}) == "a table"
    shown = value_errors.show("x" * 500 + "\n")
    assert len(shown) < 70 and "\n" not in shown
    assert "\\u000a" in value_errors.show("a\nb")
