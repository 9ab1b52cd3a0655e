"""The liste blanche loader, DN normalisation and ``missive listeblanche check``.

The fixture ``tests/data/listeblanche-sample.xml`` is synthetic (``*.mssante.test``)
in the ANS format: several DNs for one domain, RFC 4514 escapes, accents and ``&amp;``
in descriptions, a DN written with other spacing and case, a multi-valued RDN.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from gateway.smtp import listeblanche as lb
from gateway.smtp.dnmatch import normalise_dn, parse_dn, prepare_value, same_dn
from gateway.smtp.listeblanche import (
    ListeBlanche,
    ListeBlancheError,
    Position,
    load_liste_blanche,
    parse_liste_blanche,
)
from tests.cli_runner import Run

SAMPLE = Path(__file__).resolve().parents[1] / "data" / "listeblanche-sample.xml"
NS = "https://listeblanche.mssante.fr/schema"


def name(*rdns: list[tuple[x509.ObjectIdentifier, str]]) -> x509.Name:
    """A Name in ASN.1 order (most significant RDN first), as in a certificate."""
    return x509.Name(
        [x509.RelativeDistinguishedName([x509.NameAttribute(o, v) for o, v in r]) for r in rdns]
    )


def rdns_of(dn: x509.Name) -> list[list[tuple[x509.ObjectIdentifier, str]]]:
    return [[(a.oid, str(a.value)) for a in rdn] for rdn in dn.rdns]


OPERATOR_A = name(
    [(NameOID.COUNTRY_NAME, "FR")],
    [(NameOID.STATE_OR_PROVINCE_NAME, "Bouches-du-Rhône (13)")],
    [(NameOID.ORGANIZATION_NAME, "OPERATEUR A")],
    [(NameOID.ORGANIZATIONAL_UNIT_NAME, "312345678900011")],
    [(NameOID.COMMON_NAME, "mx.operateur-a.test")],
)
OPERATOR_B2 = name(
    [(NameOID.COUNTRY_NAME, "FR")],
    [(NameOID.STATE_OR_PROVINCE_NAME, "Paris (75)")],
    [(NameOID.ORGANIZATION_NAME, "GIP OPERATEUR B")],
    [(NameOID.ORGANIZATIONAL_UNIT_NAME, "1750000001")],
    [(NameOID.COMMON_NAME, "smtp-2.operateur-b.test")],
)


def document(domaines: str, *, root: str = f'ListeBlancheMSSante xmlns="{NS}"') -> bytes:
    tag = root.split()[0]
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{root}>\n'
        f"<DateDeGeneration>2026-11-01T08:00:00Z</DateDeGeneration>\n"
        f"<ListeDomaines>\n{domaines}</ListeDomaines>\n</{tag}>\n"
    ).encode()


def domaine(nom: str | None, dn: str | None, description: str = "x") -> str:
    parts = [f"<Nom>{nom}</Nom>" if nom is not None else ""]
    parts.append(f"<Description>{description}</Description>")
    parts.append(f"<DNCertificatOperateur>{dn}</DNCertificatOperateur>" if dn is not None else "")
    return "<Domaine>" + "".join(parts) + "</Domaine>\n"


GOOD_DN = "CN=mx.a.test,OU=1,O=A,C=FR"


@pytest.fixture(scope="module")
def sample() -> ListeBlanche:
    return load_liste_blanche(SAMPLE)


# ---------------------------------------------------------------- the sample list


def test_sample_summary(sample: ListeBlanche) -> None:
    stats = sample.stats()
    assert stats.generated == dt.datetime(2026, 11, 1, 8, 0, tzinfo=dt.UTC)
    assert (stats.entries, stats.domains, stats.dns) == (7, 5, 5)
    assert stats.several_dns == {"15-20.mssante.test": 3}
    assert [(op.organisation, op.domains, op.dns) for op in stats.operators] == [
        ("OPERATEUR A", 3, 1),  # "operateur   a" of the respaced entry is the same operator
        ("Cabinet Dupont, Martin + Associés", 1, 1),
        ("GIP OPERATEUR B", 1, 2),
        ("OPERATEUR MV", 1, 1),
    ]
    assert (stats.invalid, stats.warnings) == ((), ())


def test_several_dns_for_one_domain(sample: ListeBlanche) -> None:
    dns = sample.operator_dns("15-20.mssante.test")
    assert len(dns) == 3
    assert OPERATOR_B2 in {dn for dn in dns if same_dn(dn, OPERATOR_B2)}
    assert sample.allows("15-20.mssante.test", OPERATOR_A)
    assert sample.allows("15-20.mssante.test", OPERATOR_B2)
    assert not sample.allows("ch-evreux.mssante.test", OPERATOR_B2)


def test_text_fields_and_positions(sample: ListeBlanche) -> None:
    (entry,) = sample.entries_for("ch-evreux.mssante.test")
    assert entry.description == "Centre hospitalier d'Évreux — messagerie sécurisée"
    assert entry.updated == dt.datetime(2026, 10, 30, 10, 11, 12, tzinfo=dt.UTC)
    assert entry.position == Position(7, 9)
    assert entry.organisation == "OPERATEUR A"
    (_, second, _) = sample.entries_for("15-20.mssante.test")
    assert "GRADeS B & C" in second.description


def test_domain_is_case_insensitive_and_exact(sample: ListeBlanche) -> None:
    assert "clinique-espacee.mssante.test" in sample.domains()
    assert sample.allows("CLINIQUE-ESPACEE.mssante.test.", OPERATOR_A)
    assert not sample.allows("sub.ch-evreux.mssante.test", OPERATOR_A)
    assert not sample.allows("unlisted.mssante.test", OPERATOR_A)
    assert sample.operator_dns("unlisted.mssante.test") == frozenset()


def test_respaced_dn_matches_the_certificate(sample: ListeBlanche) -> None:
    """The entry ``cn = MX.Operateur-A.test , ... o = operateur   a , c=fr``."""
    (entry,) = sample.entries_for("clinique-espacee.mssante.test")
    assert entry.dn_text.startswith("cn = MX.Operateur-A.test , ou=")
    assert sample.allows("clinique-espacee.mssante.test", OPERATOR_A)


def test_escaped_dn_matches(sample: ListeBlanche) -> None:
    peer = name(
        [(NameOID.COUNTRY_NAME, "FR")],
        [(NameOID.LOCALITY_NAME, "Saint-Étienne")],
        [(NameOID.ORGANIZATION_NAME, "Cabinet Dupont, Martin + Associés")],
        [(NameOID.ORGANIZATIONAL_UNIT_NAME, "398765432100017")],
        [(NameOID.COMMON_NAME, "mss.cabinet-dupont.test")],
    )
    assert sample.allows("cabinet-dupont.mssante.test", peer)


def test_multi_valued_rdn_in_any_order(sample: ListeBlanche) -> None:
    rest = [[(NameOID.COUNTRY_NAME, "FR")], [(NameOID.ORGANIZATION_NAME, "OPERATEUR MV")]]
    for last in (
        [
            (NameOID.COMMON_NAME, "mx.operateur-mv.test"),
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "1130000002"),
        ],
        [
            (NameOID.ORGANIZATIONAL_UNIT_NAME, "1130000002"),
            (NameOID.COMMON_NAME, "mx.operateur-mv.test"),
        ],
    ):
        assert sample.allows("multivalue.mssante.test", name(*rest, last))
    split = name(*rest, [(NameOID.ORGANIZATIONAL_UNIT_NAME, "1130000002")],
                 [(NameOID.COMMON_NAME, "mx.operateur-mv.test")])  # fmt: skip
    assert not sample.allows("multivalue.mssante.test", split)


@pytest.mark.parametrize(
    "peer",
    [
        name([(NameOID.COMMON_NAME, "mx.operateur-a.test")]),  # the CN alone is not enough
        name(*rdns_of(OPERATOR_A), [(NameOID.EMAIL_ADDRESS, "x@operateur-a.test")]),
        name(*rdns_of(OPERATOR_A)[:-1], [(NameOID.COMMON_NAME, "mx2.operateur-a.test")]),
        name(*reversed(rdns_of(OPERATOR_A))),  # RDN order matters
        OPERATOR_B2,
    ],
    ids=["cn-only", "extra-rdn", "other-cn", "reversed", "other-operator"],
)
def test_other_dns_are_refused(sample: ListeBlanche, peer: x509.Name) -> None:
    assert not sample.allows("ch-evreux.mssante.test", peer)


def test_subject_of_a_real_certificate(sample: ListeBlanche) -> None:
    """A certificate subject with PrintableString C, as a CA writes it, matches."""
    subject = x509.Name(
        [
            x509.NameAttribute(NameOID.COUNTRY_NAME, "FR", x509.name._ASN1Type.PrintableString),
            x509.NameAttribute(NameOID.STATE_OR_PROVINCE_NAME, "Bouches-du-Rhône (13)"),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "OPERATEUR A"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "312345678900011"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mx.operateur-a.test"),
        ]
    )
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    loaded = x509.load_der_x509_certificate(certificate.public_bytes(Encoding.DER))
    assert sample.allows("ch-evreux.mssante.test", loaded.subject)
    assert sample.allows("clinique-espacee.mssante.test", loaded.subject)


# ---------------------------------------------------------------- DN normalisation


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("CN=mx.a.test,O=GIP MIPIH,C=FR", "cn=MX.A.TEST,o=gip mipih,c=fr"),
        ("CN=a,O=GIP MIPIH", "CN=a , O = GIP   MIPIH "),
        ("CN=a,O=GIP MIPIH", "CN=a,O=\\ GIP MIPIH\\ "),  # escaped outer spaces: insignificant
        ("CN=a,O=GIP MIPIH", "CN=a,O=GIP\u00a0MIPIH"),  # no-break space is a space
        ("CN=a,O=GIP MIPIH", "CN=a,O=GIP MI\u00adPIH"),  # soft hyphen maps to nothing
        ("O=Bouches-du-Rh\u00f4ne", "O=Bouches-du-Rho\u0302ne"),  # NFC vs NFD
        ("O=Bouches-du-Rhône", "O=Bouches-du-Rh\\C3\\B4ne"),  # UTF-8 hex escapes
        ("O=Straße", "O=STRASSE"),  # full case folding
        ("CN=a+OU=b,O=c", "OU=b + CN=a,O=c"),  # multi-valued RDN, any order
        ("2.5.4.3=a,2.5.4.10=b", "CN=a,O=b"),  # types by OID
        ("commonName=a,organizationName=b", "CN=a,O=b"),
        ("O=Dupont\\, Martin \\2B Cie", "O=Dupont\\2C Martin \\+ Cie"),
    ],
)
def test_equal_dns(first: str, second: str) -> None:
    assert normalise_dn(parse_dn(first)) == normalise_dn(parse_dn(second))


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("CN=a,O=b", "O=b,CN=a"),  # RDN order
        ("CN=a,O=b", "CN=a,O=b,C=FR"),  # one more RDN
        ("CN=a+OU=b,O=c", "CN=a,OU=b,O=c"),  # multi-valued vs two RDNs
        ("CN=a,O=b c", "CN=a,O=bc"),  # inner space is significant (collapsed, not removed)
        ("CN=a,O=b", "CN=a,OU=b"),  # attribute type
        ("CN=é,O=b", "CN=e,O=b"),  # accents are not folded away
    ],
)
def test_different_dns(first: str, second: str) -> None:
    assert normalise_dn(parse_dn(first)) != normalise_dn(parse_dn(second))


@pytest.mark.parametrize(
    "text",
    ["", "   ", "CN=a;O=b", 'CN="a",O=b', "CN=#0c0161", "FOO=bar", "C=FRA", "CN=a\\", "CN=a,,O=b"],
)
def test_unparsable_dns(text: str) -> None:
    with pytest.raises(ValueError):
        parse_dn(text)


def test_prepare_value() -> None:
    assert prepare_value("  GIP \t MIPIH\u200b ") == "gip mipih"
    assert prepare_value("ＧＩＰ") == "gip"  # fullwidth letters (NFKC)


# ---------------------------------------------------------------- refused files


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol9 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
]>
<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">&lol9;</ListeBlancheMSSante>
"""

EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE ListeBlancheMSSante [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">
<DateDeGeneration>2026-11-01T08:00:00Z</DateDeGeneration>
<ListeDomaines><Domaine><Nom>&xxe;</Nom></Domaine></ListeDomaines>
</ListeBlancheMSSante>
"""


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (BILLION_LAUGHS, "line 2, column 16: a DOCTYPE declaration is refused"),
        (EXTERNAL_ENTITY, "line 2, column 31: a DOCTYPE declaration is refused"),
        (
            document("", root="ListeBlancheMSSante"),
            "line 2, column 1: the root element is <ListeBlancheMSSante> in no namespace,"
            f" expected <ListeBlancheMSSante> in namespace {NS}",
        ),
        (
            document("", root='Liste xmlns="https://listeblanche.mssante.fr/schema"'),
            f"the root element is <Liste> in namespace {NS}",
        ),
        (
            document("").replace(b"2026-11-01T08:00:00Z", b"yesterday"),
            "line 3, column 1: DateDeGeneration is not an ISO 8601 date and time",
        ),
        (
            document("").replace(b"<DateDeGeneration>2026-11-01T08:00:00Z</DateDeGeneration>", b""),
            "no DateDeGeneration element under the root",
        ),
        (
            f'<ListeBlancheMSSante xmlns="{NS}"><DateDeGeneration>2026-11-01T08:00:00Z'
            "</DateDeGeneration></ListeBlancheMSSante>".encode(),
            "no ListeDomaines element under the root",
        ),
        (
            document(domaine("a.test", GOOD_DN)).partition(b"</ListeDomaines>")[0],
            "line 6, column 1: not well-formed XML (no element found)",
        ),
        (document(domaine("a.test", GOOD_DN))[:-60], "not well-formed XML (unclosed token)"),
        (b"", "not well-formed XML (no element found)"),
        (b"\x00\x01 binary", "not well-formed XML"),
    ],
    ids=[
        "billion-laughs",
        "external-entity",
        "no-namespace",
        "wrong-root",
        "bad-date",
        "no-date",
        "no-list",
        "cut-after-a-domaine",
        "cut-inside-a-tag",
        "empty",
        "binary",
    ],
)
def test_unusable_files(data: bytes, message: str) -> None:
    with pytest.raises(ListeBlancheError) as caught:
        parse_liste_blanche(data, source="lb.xml")
    (problem,) = caught.value.problems
    assert problem.startswith("lb.xml: ")
    assert message in problem


def test_mismatched_tag_position() -> None:
    data = document(domaine("a.test", GOOD_DN)).replace(b"</Domaine>", b"</Domain>")
    with pytest.raises(ListeBlancheError) as caught:
        parse_liste_blanche(data, source="lb.xml")
    assert caught.value.problems == (
        "lb.xml: line 5, column 130: not well-formed XML (mismatched tag)",
    )


def test_missing_root_end_tag_is_tolerated_with_a_warning() -> None:
    """The ANS list of 13/03/2025 ends this way (see the module doc)."""
    data = document(domaine("a.test", GOOD_DN)).removesuffix(b"</ListeBlancheMSSante>\n")
    liste = parse_liste_blanche(data)
    assert liste.domains() == {"a.test"}
    assert len(liste.warnings) == 1 and "</ListeBlancheMSSante>" in liste.warnings[0]
    with pytest.raises(ListeBlancheError, match="no element found"):
        parse_liste_blanche(data, strict=True)


def test_depth_and_count_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    deep = document("<Domaine><Nom>" + "<x>" * 8 + "</x>" * 8 + "</Nom></Domaine>")
    with pytest.raises(ListeBlancheError, match="nested deeper than 8"):
        parse_liste_blanche(deep)
    monkeypatch.setattr(lb, "MAX_DOMAINES", 2)
    with pytest.raises(ListeBlancheError, match="line 7, column 1: more than 2 Domaine"):
        parse_liste_blanche(document(domaine("a.test", GOOD_DN) * 3))


def test_file_size_is_bounded(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(lb, "MAX_FILE_BYTES", 100)
    path = tmp_path / "big.xml"
    path.write_bytes(document(domaine("a.test", GOOD_DN)))
    with pytest.raises(ListeBlancheError, match="larger than 100 bytes"):
        load_liste_blanche(path)


# ---------------------------------------------------------------- invalid entries


INVALID = document(
    domaine("ok.test", GOOD_DN)
    + domaine(None, GOOD_DN)
    + domaine("nodn.test", None)
    + domaine("baddn.test", "CN=a;O=b")
    + domaine("hôpital.test", GOOD_DN)
    + domaine("long.test", GOOD_DN, description="d" * 5000)
    + "<Domaine><Nom>two.test</Nom><Nom>deux.test</Nom>"
    f"<DNCertificatOperateur>{GOOD_DN}</DNCertificatOperateur></Domaine>\n"
    + "<Domaine><Nom>pair.test</Nom><DNCertificatOperateur>CN=x,O=A,C=FR</DNCertificatOperateur>"
    f"<DNCertificatOperateur>{GOOD_DN}</DNCertificatOperateur><Autre>ignored</Autre></Domaine>\n"
)


def test_invalid_entries_are_left_out_with_their_position() -> None:
    liste = parse_liste_blanche(INVALID)
    assert liste.domains() == {"ok.test", "pair.test"}
    assert len(liste.operator_dns("pair.test")) == 2
    assert [(i.position.line, i.domain, i.reason) for i in liste.invalid] == [
        (6, None, "Domaine without Nom"),
        (7, "nodn.test", "Domaine nodn.test without DNCertificatOperateur"),
        (8, "baddn.test", liste.invalid[2].reason),
        (9, "hôpital.test", liste.invalid[3].reason),
        (10, "long.test", "Description longer than 4096 characters"),
        (11, None, "Nom given 2 times in one Domaine"),
    ]
    assert liste.invalid[2].reason.startswith("DNCertificatOperateur 'CN=a;O=b': not an RFC 4514")
    assert "not ASCII" in liste.invalid[3].reason
    assert all(item.position.column == 1 for item in liste.invalid)


def test_strict_stops_at_the_first_invalid_entry() -> None:
    with pytest.raises(ListeBlancheError) as caught:
        parse_liste_blanche(INVALID, source="lb.xml", strict=True)
    assert caught.value.problems == ("lb.xml: line 6, column 1: Domaine without Nom",)


def test_streaming_in_tiny_chunks_gives_the_same_list(sample: ListeBlanche) -> None:
    data = SAMPLE.read_bytes()
    chunked = parse_liste_blanche(data[i : i + 7] for i in range(0, len(data), 7))
    assert chunked.entries == sample.entries


# ---------------------------------------------------------------- CLI


def test_cli_check_text(missive: Run) -> None:
    status, out, err = missive("listeblanche", "check", SAMPLE)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[1:7] == [
        "generated: 2026-11-01T08:00:00+00:00",
        "entries: 7",
        "domains: 5",
        "operator DNs: 5",
        "domains with several DNs: 1 (e.g. 15-20.mssante.test (3))",
        "operators (by O=): 4",
    ]
    assert "  GIP OPERATEUR B: 1 domain, 2 DNs" in lines
    assert lines[-1] == "invalid entries: 0"


def test_cli_check_json(missive: Run) -> None:
    status, out, _ = missive("listeblanche", "check", "--json", SAMPLE)
    summary = json.loads(out)
    assert status == 0
    assert summary["domains_with_several_dns"] == {"15-20.mssante.test": 3}
    assert summary["operators"][1]["organisation"] == "Cabinet Dupont, Martin + Associés"
    assert summary["invalid"] == []


def test_cli_invalid_entries_exit_1(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "lb.xml"
    path.write_bytes(INVALID)
    status, out, err = missive("listeblanche", "check", path)
    assert (status, err) == (1, "")
    assert "invalid entries: 6" in out
    assert "  line 6, column 1: Domaine without Nom" in out
    status, out, _ = missive("listeblanche", "check", "--json", path)
    assert status == 1
    assert json.loads(out)["invalid"][1] == {
        "line": 7,
        "column": 1,
        "domain": "nodn.test",
        "reason": "Domaine nodn.test without DNCertificatOperateur",
    }


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (BILLION_LAUGHS, "line 2, column 16: a DOCTYPE declaration is refused"),
        (EXTERNAL_ENTITY, "line 2, column 31: a DOCTYPE declaration is refused"),
        (b"<ListeBlancheMSSante>", "the root element is <ListeBlancheMSSante> in no namespace"),
        (b"not xml at all", "not well-formed XML (syntax error)"),
    ],
    ids=["billion-laughs", "external-entity", "no-namespace", "not-xml"],
)
def test_cli_unusable_file_exits_2(missive: Run, tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "lb.xml"
    path.write_bytes(data)
    status, out, err = missive("listeblanche", "check", path)
    assert (status, out) == (2, "")
    assert err.startswith(f"{path}: ") and message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_missing_file_and_directory(missive: Run, tmp_path: Path) -> None:
    assert missive("listeblanche", "check", tmp_path / "none.xml") == (
        2,
        "",
        f"{tmp_path / 'none.xml'}: no such file\n",
    )
    assert missive("listeblanche", "check", tmp_path) == (
        2,
        "",
        f"{tmp_path}: is a directory, not a file\n",
    )
