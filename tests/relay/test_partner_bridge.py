"""Partner-network bridge (issue 6 item 4), end to end against a second Missive instance.

The hospital gateway (chu-a.test) routes ``*.apicrypt.test`` to a separate Missive acting
as an Apicrypt-like network (``tests/relay/partner_site.py`` sets both up): STARTTLS
verified under the route's own ``anchors`` (the partner has another root) with the
route's ``tls_name``, then SMTP AUTH PLAIN as ``passerelle`` with the password of
``auth_password_file``. A hospital MTA hands Alice's letter to the hospital's relay
listener; the secure agent signs it and encrypts it to the recipient's certificate (issued
by the partner's PKI, found in the hospital's annuaire); the partner's submission listener
takes it and its inbound stage delivers it, still encrypted (it does not hold the
recipient's key), to the recipient's Maildir.

Checked:
- delivered: the Maildir file is application/pkcs7-mime; ``openssl cms -decrypt`` with
  the recipient's key opens it; the signature verifies (``openssl cms -verify`` to the
  hospital's root); the real Subject and the body are inside only. The file is the
  message as it crossed the wire (the enveloped body untouched; the partner adds its
  trace and marking headers), and no file of the partner's site (spool, audit trail,
  log, Maildir) has the Subject or body in clear;
- the hospital's trail: ``relay.attempt`` delivered with the TLS version, the partner's
  DN and certificate serial, ``peer_verified``; AUTH: the partner's trail records the
  message as received from login ``passerelle`` over TLS, the hospital's log names the
  login and so does the ``relay.attempt`` event (``auth``); the password is in no log,
  trail or spool file of either site;
- a wrong password: the partner answers 535 (RFC 4954 §6) and records
  ``smtp.auth_failed``; the relay client ends the session and the message is *deferred*
  (not bounced: the credentials are the gateway's configuration, not a fault of the
  message; Postfix's ``smtp_sasl_auth_soft_bounce = yes`` does the same), so no DSN yet
  (it comes at ``delivery.delay_warning``, then ``max_lifetime``); nothing reached the
  partner's Maildir;
- the route without ``anchors``: the handshake fails verification, the attempt is
  deferred with 4.7.5 and the reason recorded; the session never left STARTTLS (the
  partner received no MAIL), nothing is in clear anywhere on the partner's site;
  (that test makes the recipient's certificate valid through the partner's *person* CA
  in ``trust.anchors``, which cannot vouch for the partner's server certificate);
- the route's ``anchors`` also make the partner's recipient certificates valid
  (``gateway.relay.route_trust``): without them, and without the person CA, the
  recipient has no valid certificate and goes to the route's fallback (a postal
  letter), never in clear, and nothing is relayed.

Loopback only; each ``serve`` is stopped by PID (SIGTERM, then SIGKILL of its process
group) even when a test fails.
"""

from __future__ import annotations

import email
import email.policy
import secrets
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from email.message import Message
from pathlib import Path

import pytest

from gateway.audit.export import record_document
from gateway.audit.store import AuditStore
from gateway.pki.dev import DevPki
from gateway.pki.store import load_first_certificate
from tests.peers.cms_tools import OpenSSLCms
from tests.relay.partner_site import (
    PARTNER_MX,
    RECIPIENT,
    SENDER,
    HospitalSite,
    PartnerSite,
    SmimeTrust,
    make_hospital,
    make_hospital_template,
    make_partner,
)
from tests.sites import (
    CONFIG,
    enveloped_der,
    exported_audit,
    letter,
    missive,
    readable_views,
    send_as_relay_client,
    serving,
)

SUBJECT = "Lettre de liaison Quirelle-58X confidentielle"
BODY = "Patient Vandrosse-41B: sortie J3, INR a controler lundi."
SECRETS = (b"Quirelle-58X", b"Vandrosse-41B", b"INR a controler")
WAIT = 30.0  # seconds: guards a hang only, never a speed assertion


@pytest.fixture(scope="module")
def password() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class RunningPartner:
    """The partner network, serving for the whole module (tests look at what changed)."""

    site: PartnerSite
    log: Path


@pytest.fixture(scope="module")
def partner(tmp_path_factory: pytest.TempPathFactory, password: str) -> Iterator[RunningPartner]:
    site = make_partner(tmp_path_factory.mktemp("partner") / "home", password)
    with serving(site.home) as served:
        yield RunningPartner(site, served.log)


@pytest.fixture(scope="module")
def hospital_template(
    tmp_path_factory: pytest.TempPathFactory, dev_pki: DevPki, partner: RunningPartner
) -> Path:
    return make_hospital_template(
        tmp_path_factory.mktemp("hospital") / "home", dev_pki, partner.site
    )


@dataclass(frozen=True)
class Mark:
    """Where the partner's trail, log and Maildir stood when a test began."""

    seq: int
    log_offset: int
    mail: frozenset[Path]

    @classmethod
    def of(cls, partner: RunningPartner) -> Mark:
        records = _trail(partner.site.home)
        return cls(
            int(str(records[-1]["seq"])) if records else 0,
            partner.log.stat().st_size,
            frozenset(_maildir_files(partner.site)),
        )

    def mail_events(self, partner: RunningPartner) -> list[dict[str, object]]:
        """The partner's ``smtp.*`` and ``spool.*`` events since the mark."""
        return [
            r
            for r in _trail(partner.site.home)
            if int(str(r["seq"])) > self.seq and str(r["type"]).startswith(("smtp.", "spool."))
        ]

    def log(self, partner: RunningPartner) -> str:
        return partner.log.read_bytes()[self.log_offset :].decode("utf-8", "replace")

    def new_mail(self, partner: RunningPartner) -> list[Path]:
        return sorted(set(_maildir_files(partner.site)) - self.mail)


def _hospital(
    tmp_path: Path,
    template: Path,
    partner: RunningPartner,
    password: str,
    *,
    route_anchors: bool = True,
    smime_trust: SmimeTrust = "route",
) -> HospitalSite:
    return make_hospital(
        tmp_path / "hospital",
        template,
        partner.site,
        password,
        route_anchors=route_anchors,
        smime_trust=smime_trust,
    )


# -- helpers ---------------------------------------------------------------------------------


def _submit(hospital: HospitalSite) -> None:
    """The hospital's MTA (127.0.0.1, a relay client) hands Alice's letter over STARTTLS."""
    message = letter(SENDER, RECIPIENT, SUBJECT, BODY, "<bridge-1@chu-a.test>")
    assert send_as_relay_client(hospital.home, SENDER, [RECIPIENT], message) == {}


def _trail(home: Path) -> list[dict[str, object]]:
    """The trail read in this process (a CLI run costs a second: kept for one test)."""
    path = home / "var" / "audit.sqlite"
    if not path.exists():
        return []
    with AuditStore.open_reader(path) as store:
        assert store.verify().ok
        return [dict(record_document(record)) for record in store.iter_records()]


def _wait_for_event(home: Path, kind: str) -> None:
    """Until the trail holds an event of ``kind``."""
    deadline = time.monotonic() + WAIT
    while not any(r["type"] == kind for r in _trail(home)):
        assert time.monotonic() < deadline, f"no {kind} in the trail: {_trail(home)}"
        time.sleep(0.1)


def _maildir_files(partner: PartnerSite) -> list[Path]:
    new = partner.maildir / "new"
    return list(new.iterdir()) if new.is_dir() else []


def _wait_for_new_mail(partner: RunningPartner, mark: Mark) -> bytes:
    deadline = time.monotonic() + WAIT
    while not (arrived := mark.new_mail(partner)):
        assert time.monotonic() < deadline, "nothing new in the partner's Maildir"
        time.sleep(0.1)
    [stored] = arrived
    return stored.read_bytes()


def _holds_secret(data: bytes) -> bool:
    return any(secret.lower() in view for view in readable_views(data) for secret in SECRETS)


def _files(root: Path, *, skip: Iterable[Path] = ()) -> list[Path]:
    skipped = set(skip)
    return [p for p in root.rglob("*") if p.is_file() and p not in skipped]


def _assert_nothing_in_clear(partner: RunningPartner) -> None:
    """No file of the partner's site (spool, audit, log, Maildir) has Subject or body."""
    home = partner.site.home
    leaking = [p for p in _files(home / "var") if _holds_secret(p.read_bytes())]
    leaking += [p for p in home.glob("*.log") if _holds_secret(p.read_bytes())]
    assert leaking == []


def _assert_password_nowhere(hospital: HospitalSite, partner: RunningPartner, *words: str) -> None:
    """No file of either site (logs, audit databases, spool, mail) holds a password, but
    the hospital's secret file (the partner's users file keeps a hash)."""
    secret_file = hospital.home / "conf" / "apicrypt.secret"
    files = _files(hospital.home, skip=[secret_file]) + _files(partner.site.home)
    for word in words:
        needle = word.encode()
        assert [p for p in files if needle in p.read_bytes()] == []


def _relay_attempts(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in records if r["type"] == "relay.attempt"]


def _details(record: dict[str, object]) -> dict[str, str]:
    details = record["details"]
    assert isinstance(details, dict)
    return details


def _signed_parts(inner: bytes) -> tuple[bytes, bytes]:
    """The signed bytes (the first part exactly as sent, RFC 8551 §3.5.3) and the
    detached signature of a multipart/signed."""
    parsed = email.message_from_bytes(inner, policy=email.policy.default)
    assert parsed.get_content_type() == "multipart/signed"
    parts = parsed.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    signature_part = parts[1]
    assert isinstance(signature_part, Message)
    signature = signature_part.get_payload(decode=True)
    assert isinstance(signature, bytes)
    boundary = parsed.get_boundary()
    assert boundary is not None
    first = inner.split(b"--" + boundary.encode("ascii"))[1]
    content = first.removeprefix(b"\r\n").removeprefix(b"\n").removesuffix(b"\r\n")
    return content, signature


def _partner_leaf_serial(partner: RunningPartner) -> str:
    leaf = load_first_certificate(partner.site.pki.server_cert(PARTNER_MX))
    return format(leaf.serial_number, "x")


# -- the tests -------------------------------------------------------------------------------


@pytest.mark.peer  # openssl cms opens and verifies what the partner stored
def test_letter_crosses_the_bridge_signed_encrypted_over_verified_tls_with_auth(
    tmp_path: Path,
    hospital_template: Path,
    partner: RunningPartner,
    password: str,
    openssl_cms: OpenSSLCms,
) -> None:
    hospital = _hospital(tmp_path, hospital_template, partner, password)
    mark = Mark.of(partner)
    with serving(hospital.home) as hospital_serve:
        _submit(hospital)
        stored = _wait_for_new_mail(partner, mark)
        _wait_for_event(hospital.home, "relay.attempt")
    hospital_records = exported_audit(hospital.home)  # audit verify passes, then export
    partner_records = [r for r in _trail(partner.site.home) if int(str(r["seq"])) > mark.seq]

    # What crossed the wire: encrypted, nothing of the letter in clear on the partner.
    assert not _holds_secret(stored)
    _assert_nothing_in_clear(partner)
    [processed] = [r for r in partner_records if r["type"] == "inbound.processed"]
    assert processed["outcome"] == "pass-marked"  # the partner holds no key of Jean's
    # Opened with the recipient's key (issued by the partner's PKI): the doctor's letter.
    inner = openssl_cms.decrypt(
        enveloped_der(stored),
        partner.site.pki.user_cert(RECIPIENT, "enc"),
        partner.site.pki.user_key(RECIPIENT, "enc"),
    )
    content, signature = _signed_parts(inner)
    verified = openssl_cms.verify(
        signature, hospital.pki.root_cert, content=content, untrusted=hospital.pki.intermediates
    )
    letter = email.message_from_bytes(verified, policy=email.policy.default)
    assert letter["Subject"] == SUBJECT  # RFC 9788: the real Subject travels inside
    assert BODY.encode() in verified
    assert _holds_secret(inner)  # the check used above does see the secrets in clear

    # The hospital's trail: the relay over verified TLS to the partner's certificate.
    [attempt] = _relay_attempts(hospital_records)
    details = _details(attempt)
    assert attempt["outcome"] == "delivered"
    assert details["route"] == "apicrypt"
    assert details["tls_version"].startswith("TLSv1.")
    assert details["peer_verified"] == "yes"
    assert details["auth"] == "passerelle"
    assert attempt["peer"] == f"CN={PARTNER_MX},O=MISSIVE DEV (TEST ONLY),C=FR"
    assert attempt["cert_serials"] == [_partner_leaf_serial(partner)]
    # AUTH: the partner took it from the login over TLS; the hospital logged the login.
    [added] = [
        r
        for r in partner_records
        if r["type"] == "spool.added" and _details(r)["stage"] == "received"
    ]
    assert _details(added)["auth_login"] == "passerelle"
    assert _details(added)["tls"].startswith("TLSv1.")
    transactions = [
        line for line in hospital_serve.output().splitlines() if "event=relay.transaction" in line
    ]
    assert len(transactions) == 1 and "auth=passerelle" in transactions[0], transactions
    _assert_password_nowhere(hospital, partner, password)


def test_wrong_password_defers_the_message_and_sends_nothing(
    tmp_path: Path, hospital_template: Path, partner: RunningPartner, password: str
) -> None:
    wrong = "not-" + secrets.token_urlsafe(12)
    hospital = _hospital(tmp_path, hospital_template, partner, wrong)
    mark = Mark.of(partner)
    with serving(hospital.home):
        _submit(hospital)
        _wait_for_event(hospital.home, "relay.attempt")
        queue = missive(hospital.home, "queue", "list", "--config", CONFIG)
    hospital_records, partner_records = _trail(hospital.home), mark.mail_events(partner)

    [attempt] = _relay_attempts(hospital_records)
    assert attempt["outcome"] == "deferred"  # 535 (RFC 4954 §6) soft-bounced: docstring
    details = _details(attempt)
    assert "authentication failed: 535" in details["hosts_failed"], details
    assert details["rcpt.0"].startswith(f"{RECIPIENT} 451 "), details
    assert [r["type"] for r in partner_records] == ["smtp.auth_failed"]
    assert partner_records[0]["actor"] == "passerelle"
    # Still queued for its next try; no DSN yet (delivery.delay_warning is hours away).
    assert queue.returncode == 0 and queue.stdout.strip().endswith("1 entry"), queue.stdout
    assert "relay/apicrypt  deferred" in queue.stdout, queue.stdout
    dsns = [r for r in hospital_records if r["type"] == "spool.added" and not r["mail_from"]]
    assert dsns == []  # a DSN would be a message of the gateway's own, MAIL FROM:<>
    assert mark.new_mail(partner) == []
    _assert_nothing_in_clear(partner)
    _assert_password_nowhere(hospital, partner, password, wrong)


def test_partner_certificate_outside_the_route_anchors_is_refused(
    tmp_path: Path, hospital_template: Path, partner: RunningPartner, password: str
) -> None:
    """The recipient's certificate is made valid another way (the partner's person CA
    in ``trust.anchors``) so that the TLS check is what refuses the partner."""
    hospital = _hospital(
        tmp_path,
        hospital_template,
        partner,
        password,
        route_anchors=False,
        smime_trust="person-ca",
    )
    mark = Mark.of(partner)
    with serving(hospital.home):
        _submit(hospital)
        _wait_for_event(hospital.home, "relay.attempt")
    hospital_records = _trail(hospital.home)

    [attempt] = _relay_attempts(hospital_records)
    details = _details(attempt)
    assert attempt["outcome"] == "deferred"
    assert "TLS peer refused: unable to get local issuer certificate" in details["hosts_failed"]
    assert " 4.7.5 " in details["rcpt.0"], details
    assert details["peer_verified"] == "no"
    # Nothing crossed: no AUTH, no MAIL at the partner, nothing in clear anywhere there.
    assert mark.mail_events(partner) == []
    assert "smtp.auth" not in mark.log(partner)
    assert mark.new_mail(partner) == []
    _assert_nothing_in_clear(partner)
    _assert_password_nowhere(hospital, partner, password)


def test_without_route_anchors_the_recipient_certificate_is_untrusted_and_goes_by_post(
    tmp_path: Path, hospital_template: Path, partner: RunningPartner, password: str
) -> None:
    """The route's ``anchors`` are what make the partner's recipient certificates valid:
    without them the recipient has no valid certificate and gets the postal fallback,
    nothing is relayed (never in clear)."""
    hospital = _hospital(tmp_path, hospital_template, partner, password, route_anchors=False)
    mark = Mark.of(partner)
    with serving(hospital.home):
        _submit(hospital)
        _wait_for_event(hospital.home, "agent.postal")
    hospital_records = _trail(hospital.home)

    [fallback] = [r for r in hospital_records if r["type"] == "agent.fallback"]
    assert fallback["rcpt_to"] == [RECIPIENT]
    assert _details(fallback)["action"] == "postal", fallback
    assert _details(fallback)["reason"].startswith("certificate untrusted"), fallback
    assert len(list((hospital.home / "var" / "postal").rglob("*.pdf"))) == 1  # the letter
    assert _relay_attempts(hospital_records) == []
    assert mark.mail_events(partner) == []
    assert mark.new_mail(partner) == []
