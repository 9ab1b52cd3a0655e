"""The secure agent end to end with real crypto: dev PKI certificates in a real LDIF
annuaire, the real validator (CRLs, hard-fail), the real key store; every outgoing
message is opened with ``openssl cms`` by each intended recipient's key and its
signature verified with ``openssl cms -verify``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import cms
from cryptography import x509

from annuaire.backend import Directory
from annuaire.errors import DirectoryUnavailable
from annuaire.ldif_backend import LdifDirectory
from annuaire.lookup import CertificateLookup
from annuaire.model import Entry, Mailbox
from annuaire.search import Candidates, PreparedQuery
from gateway.config import Config
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.relay.agent import AgentResult, OrganisationSigner, OutgoingMessage, SecureAgent
from gateway.smime import header_protection, mime, smime_parts, transfer
from gateway.smime.capabilities import CapabilitiesStore
from gateway.smime.keystore import KeyStore
from gateway.smime.validate import CertificateValidator
from gateway.spool.model import Envelope, Origin, Recipient
from tests.annuaire.conftest import der_of
from tests.annuaire.directories import raw_records, write_ldif
from tests.annuaire.samples import ATTRIBUTES
from tests.peers.cms_tools import OpenSSLCms, PeerToolError
from tests.relay.configs import write_site

ALICE = "alice.martin@chu-a.test"
CLAIRE = "claire.durand@clinique-b.test"
DAN = "dan@clinique-b.test"
EVE = "eve@clinique-b.test"
HIDDEN = "hidden@clinique-b.test"
DOC = "doc@direct.test"
SECRETARIAT = "secretariat@chu-a.test"
GOOD = (CLAIRE, DAN, EVE, HIDDEN, DOC)
BAD = ("expired", "revoked", "wrongusage", "untrusted", "weak")

SUBJECT = "Compte rendu M. Dupont Jean"
BODY = "Le patient Dupont Jean, ne le 1er mars, va mieux."


def message(to: Sequence[str], cc: Sequence[str] = (), bcc: Sequence[str] = ()) -> bytes:
    lines = [f"From: Alice Martin <{ALICE}>", f"To: {', '.join(to)}"]
    if cc:
        lines.append(f"Cc: {', '.join(cc)}")
    if bcc:
        lines.append(f"Bcc: {', '.join(bcc)}")
    lines += [
        f"Subject: {SUBJECT}",
        "Date: Sat, 28 Nov 2026 12:00:00 +0100",
        "Message-ID: <agent-test@chu-a.test>",
        "MIME-Version: 1.0",
        "Content-Type: text/plain; charset=us-ascii",
        "",
        BODY,
        "",
    ]
    return "\r\n".join(lines).encode("ascii")


def envelope(*recipients: str, mail_from: str = ALICE) -> Envelope:
    return Envelope(mail_from, tuple(Recipient(address) for address in recipients))


SUBMISSION = Origin("submission", client_address="127.0.0.1", auth_login=ALICE)
RELAY = Origin("mx", client_address="127.0.0.1")


@dataclass(frozen=True)
class Site:
    pki: DevPki
    root: Path
    ca_bundle: Path
    keys_dir: Path
    organisation: Path
    entries: tuple[Entry, ...]
    bad: dict[str, str]  # local part -> address


def person(address: str, *ders: bytes) -> Entry:
    return Entry(
        key=address,
        kind="person",
        display_name=address.split("@")[0],
        mailboxes=(Mailbox(address),),
        certificates=ders,
    )


def key_file(path: Path, key: Path, *certificates: Path) -> None:
    path.write_bytes(key.read_bytes() + b"".join(c.read_bytes() for c in certificates))
    path.chmod(0o600)


def site_with_users(root: Path, users: Sequence[str]) -> Site:
    """A dev PKI with ``ALICE`` and ``users``, Alice's key files, the organisation key,
    and an annuaire entry with the encryption certificate of each of them."""
    pki = init_dev_pki(root / "pki", users=(ALICE, *users), servers=("mx.chu-a.test",))
    bundle = root / "ca-bundle.pem"
    bundle.write_bytes(pki.root_cert.read_bytes() + pki.intermediates.read_bytes())
    keys = root / "keys"
    keys.mkdir(mode=0o700)
    for purpose in ("sign", "enc"):
        key_file(
            keys / f"{ALICE}.{purpose}.pem",
            pki.user_key(ALICE, purpose),
            pki.user_cert(ALICE, purpose),
            pki.intermediates,
        )
    org_cert = pki.issue_user(SECRETARIAT, "sign", path=root / "org.crt")
    organisation = root / "organisation.pem"
    key_file(organisation, org_cert.with_suffix(".key"), org_cert, pki.intermediates)
    entries = tuple(person(a, der_of(pki.user_cert(a, "enc"))) for a in (ALICE, *users))
    return Site(pki, root, bundle, keys, organisation, entries, {})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    root = tmp_path_factory.mktemp("agent")
    base = site_with_users(root, GOOD)
    pki = base.pki
    bad = {name: f"{name}@clinique-b.test" for name in BAD}
    expired = pki.issue_user(
        bad["expired"],
        "enc",
        not_before=pki_now(-30),
        not_after=pki_now(-1),
        path=root / "expired.crt",
    )
    revoked = pki.issue_user(bad["revoked"], "enc", path=root / "revoked.crt")
    pki.revoke(revoked)
    wrong = pki.issue_user(
        bad["wrongusage"], "enc", key_usage=["digitalSignature"], path=root / "wrong.crt"
    )
    other = init_dev_pki(root / "other", users=(bad["untrusted"],), servers=())
    weak = pki.issue_user(bad["weak"], "enc", rsa_bits=1024, path=root / "weak.crt")
    entries = list(base.entries)
    entries += [
        person(bad["expired"], der_of(expired)),
        person(bad["revoked"], der_of(revoked)),
        person(bad["wrongusage"], der_of(wrong)),
        person(bad["untrusted"], der_of(other.user_cert(bad["untrusted"], "enc"))),
        person(bad["weak"], der_of(weak)),
    ]
    return replace(base, entries=tuple(entries), bad=bad)


def pki_now(days: int) -> datetime:
    return datetime.now(UTC) + timedelta(days=days)


class Unavailable:
    """A directory that is down."""

    description = "down"

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]:
        raise DirectoryUnavailable("annuaire: down for the test")

    async def search(self, query: PreparedQuery, limit: int) -> Candidates:
        raise DirectoryUnavailable("annuaire: down for the test")

    async def close(self) -> None:
        return None


def make_agent(
    site: Site,
    tmp_path: Path,
    *,
    organisation: bool = True,
    directory: Directory | None = None,
    smime: str = "",
) -> tuple[SecureAgent, Config]:
    config = write_site(
        tmp_path,
        site.pki,
        organisation_signing=site.organisation if organisation else None,
        smime=smime,
    )
    validator = CertificateValidator.from_files(
        [site.pki.root_cert],
        [site.pki.intermediates],
        [site.pki.crl("personnes"), site.pki.crl("serveurs")],
        "hard-fail",
    )
    if directory is None:
        ldif = write_ldif(tmp_path / "annuaire.ldif", raw_records(site.entries))
        directory = LdifDirectory(ldif, ATTRIBUTES)
    lookup = CertificateLookup(directory, validator)
    signer = OrganisationSigner.load(site.organisation) if organisation else None
    agent = SecureAgent(
        config,
        lookup,
        KeyStore.load(site.keys_dir),
        validator,
        CapabilitiesStore(tmp_path / "caps"),
        signer,
    )
    return agent, config


# -- helpers over outgoing messages ---------------------------------------------------


def cms_der(outgoing: OutgoingMessage) -> bytes:
    entity = mime.parse_entity(outgoing.content)
    assert entity.content_type == "application/pkcs7-mime"
    return transfer.base64_decode(entity.body_view)


def recipient_serials(der: bytes) -> set[int]:
    info = cms.ContentInfo.load(der)
    serials = set()
    for recipient in info["content"]["recipient_infos"]:
        rid = recipient.chosen["rid"].chosen
        serials.add(rid["serial_number"].native)
    return serials


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def signer_serials(signed: bytes) -> list[int]:
    """The serial numbers named by the SignerInfos of a multipart/signed entity."""
    parts = smime_parts.parse_multipart_signed(mime.parse_entity(signed))
    signed_data = cms.ContentInfo.load(parts.signature)["content"]
    return [info["sid"].chosen["serial_number"].native for info in signed_data["signer_infos"]]


def assert_no_clear_text(result: AgentResult) -> None:
    """Every byte of every protected message, base64 decoded too, is free of the
    clear Subject and body."""
    for outgoing in result.messages:
        if outgoing.protection != "smime":
            continue
        decoded = cms_der(outgoing)
        for data in (outgoing.content, decoded):
            for secret in (SUBJECT, BODY, "Dupont"):
                assert secret.encode() not in data


def open_as(openssl: OpenSSLCms, site: Site, outgoing: OutgoingMessage, address: str) -> bytes:
    return openssl.decrypt(
        cms_der(outgoing), site.pki.user_cert(address, "enc"), site.pki.user_key(address, "enc")
    )


# -- the tests --------------------------------------------------------------------------


async def test_to_cc_and_bcc_get_separate_messages(
    site: Site, tmp_path: Path, openssl_cms: OpenSSLCms
) -> None:
    agent, _ = make_agent(site, tmp_path)
    raw = message([CLAIRE, DAN], cc=[EVE], bcc=[HIDDEN])
    result = await agent.process(envelope(CLAIRE, DAN, EVE, HIDDEN), raw, SUBMISSION)
    assert not result.fallback and not result.failed and not result.deferred
    assert [m.route for m in result.messages] == ["clinique-b", "clinique-b"]
    shown, hidden = result.messages
    assert [r.address for r in shown.recipients] == [CLAIRE, DAN, EVE]
    assert [r.address for r in hidden.recipients] == [HIDDEN]
    assert_no_clear_text(result)
    assert HIDDEN.encode() not in shown.content
    serials = {a: serial_of(site.pki.user_cert(a, "enc")) for a in (ALICE, *GOOD)}
    assert recipient_serials(cms_der(shown)) == {serials[a] for a in (CLAIRE, DAN, EVE, ALICE)}
    assert recipient_serials(cms_der(hidden)) == {serials[HIDDEN], serials[ALICE]}
    head = mime.parse_entity(shown.content)
    assert head.header_values("Subject") == ["[...]"]
    assert head.header_values("Message-ID") == ["<agent-test@chu-a.test>"]
    for outgoing, readers in ((shown, (CLAIRE, DAN, EVE, ALICE)), (hidden, (HIDDEN, ALICE))):
        for reader in readers:
            signed = open_as(openssl_cms, site, outgoing, reader)
            content = openssl_cms.verify(signed, site.ca_bundle, inform="SMIME", binary=False)
            assert signer_serials(signed) == [serial_of(site.pki.user_cert(ALICE, "sign"))]
            inner = mime.parse_entity(content)
            assert inner.header_values("Subject") == [SUBJECT]
            assert header_protection.header_protection_mode(inner) == "cipher"
            assert BODY.encode() in content
            assert HIDDEN.encode() not in content
    with pytest.raises(PeerToolError):
        open_as(openssl_cms, site, shown, HIDDEN)
    assert "sign:personal" in shown.algorithms
    assert {e.type for e in result.audit} == {"agent.smime"}
    assert all(e.sha256 and e.cert_serials for e in result.audit)


@pytest.mark.parametrize("name", BAD)
async def test_bad_certificate_goes_to_fallback_never_in_clear(
    site: Site, tmp_path: Path, name: str
) -> None:
    agent, _ = make_agent(site, tmp_path)
    bad = site.bad[name]
    raw = message([CLAIRE, bad])
    result = await agent.process(envelope(CLAIRE, bad), raw, SUBMISSION)
    assert [(f.address, f.action) for f in result.fallback] == [(bad, "postal")]
    expected = {
        "expired": "expired",
        "revoked": "revoked",
        "wrongusage": "wrong-usage",
        "untrusted": "untrusted",
        "weak": "weak",
    }[name]
    assert result.fallback[0].reason.startswith(f"certificate {expected}")
    assert [[r.address for r in m.recipients] for m in result.messages] == [[CLAIRE]]
    assert_no_clear_text(result)
    assert recipient_serials(cms_der(result.messages[0])) == {
        serial_of(site.pki.user_cert(a, "enc")) for a in (CLAIRE, ALICE)
    }
    assert any(e.type == "agent.fallback" and e.rcpt_to == (bad,) for e in result.audit)


async def test_unknown_recipient_goes_to_fallback(site: Site, tmp_path: Path) -> None:
    agent, _ = make_agent(site, tmp_path)
    nobody = "nobody@clinique-b.test"
    result = await agent.process(envelope(nobody), message([nobody]), SUBMISSION)
    assert not result.messages
    assert result.fallback[0].reason == "no encryption certificate in the annuaire"


async def test_wrap_and_tamper_rule(site: Site, tmp_path: Path, openssl_cms: OpenSSLCms) -> None:
    agent, _ = make_agent(site, tmp_path)
    sneaky = "sneaky@direct.test"
    result = await agent.process(envelope(DOC, sneaky), message([DOC]), SUBMISSION)
    assert [(f.address, f.route) for f in result.failed] == [(sneaky, "direct")]
    assert "neither To nor Cc" in result.failed[0].reason
    (outgoing,) = result.messages
    assert outgoing.route == "direct"
    assert_no_clear_text(result)
    signed = open_as(openssl_cms, site, outgoing, DOC)
    content = openssl_cms.verify(signed, site.ca_bundle, inform="SMIME", binary=False)
    wrapper = mime.parse_entity(content)
    assert wrapper.content_type == "message/rfc822"
    inner = mime.parse_entity(content, wrapper.body_start)
    assert inner.header_values("Subject") == [SUBJECT]


async def test_wrap_refuses_a_mail_from_that_is_not_the_author(site: Site, tmp_path: Path) -> None:
    agent, _ = make_agent(site, tmp_path)
    forged = envelope(DOC, mail_from="other@chu-a.test")
    result = await agent.process(forged, message([DOC]), RELAY)
    assert not result.messages
    assert "MAIL FROM" in result.failed[0].reason


async def test_tls_only_and_local_routes_pass_unchanged(site: Site, tmp_path: Path) -> None:
    agent, _ = make_agent(site, tmp_path)
    raw = message(["x@mss.test", "bruno.petit@chu-a.test"])
    result = await agent.process(envelope("x@mss.test", "bruno.petit@chu-a.test"), raw, SUBMISSION)
    assert [(m.route, m.protection, m.content) for m in result.messages] == [
        ("mss", "tls-only", raw),
        ("local", "local", raw),
    ]
    assert [e.type for e in result.audit] == ["agent.tls-only", "agent.local"]


async def test_reject_route_and_unroutable_fail(site: Site, tmp_path: Path) -> None:
    agent, _ = make_agent(site, tmp_path)
    result = await agent.process(
        envelope("x@elsewhere.test"), message(["x@elsewhere.test"]), SUBMISSION
    )
    assert [(f.address, f.reason) for f in result.failed] == [
        ("x@elsewhere.test", "refused by route")
    ]
    assert not result.messages


async def test_directory_down_defers_never_falls_back(site: Site, tmp_path: Path) -> None:
    agent, _ = make_agent(site, tmp_path, directory=Unavailable())
    result = await agent.process(envelope(CLAIRE), message([CLAIRE]), SUBMISSION)
    assert result.temporary_failure
    assert not result.fallback and not result.messages
    assert [d.address for d in result.deferred] == [CLAIRE]


async def test_organisation_key_signs_for_relay_clients(
    site: Site, tmp_path: Path, openssl_cms: OpenSSLCms
) -> None:
    agent, _ = make_agent(site, tmp_path, smime="copy_to_sender = false")
    result = await agent.process(envelope(CLAIRE), message([CLAIRE]), RELAY)
    (outgoing,) = result.messages
    assert "sign:organisation" in outgoing.algorithms
    assert recipient_serials(cms_der(outgoing)) == {serial_of(site.pki.user_cert(CLAIRE, "enc"))}
    signed = open_as(openssl_cms, site, outgoing, CLAIRE)
    openssl_cms.verify(signed, site.ca_bundle, inform="SMIME", binary=False)
    assert signer_serials(signed) == [serial_of(site.root / "org.crt")]


async def test_no_signing_key_fails_closed(site: Site, tmp_path: Path) -> None:
    agent, _ = make_agent(site, tmp_path, organisation=False)
    result = await agent.process(envelope(CLAIRE), message([CLAIRE]), RELAY)
    assert not result.messages and not result.fallback
    assert [(d.address, d.reason) for d in result.deferred] == [(CLAIRE, "no signing key")]
