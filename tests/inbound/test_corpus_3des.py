"""Issue 7 corpus, 3DES: messages another S/MIME client encrypts with des-ede3-cbc, run
through the inbound agent (``InboundStage``) with the real configuration key
``[smime] accept_3des``.

The corpus (made once per module, with the session's development PKI): Claire
(clinique-b.test, outside) writes to Alice (chu-a.test, local), enveloped only and
signed then enveloped (opaque ``signed-data`` inside), by

- OpenSSL ``cms -encrypt -des3`` (signature: ``cms -sign -nodetach``);
- GnuPG ``gpgsm --encrypt --cipher-algo 1.2.840.113549.3.7`` (signature: ``gpgsm
  --sign``); the tools' output is checked to really be des-ede3-cbc.

With ``accept_3des = true`` the message is decrypted, handed to ``local/`` and marked
``weak=yes`` in ``Missive-Security`` (and in the ``inbound.processed`` audit event);
a signed one is ``signature=valid``, an unsigned one ``signature=none`` with the
``[NON VÉRIFIÉ]`` Subject tag (``unsigned_cbc = "mark"``, the default). With
``accept_3des = false`` (``gateway.inbound.process``: "any other decryption failure ...
3DES when accept_3des is off") it is held in quarantine as received, with a 5.7.5
failure DSN to the sender and no plaintext anywhere on disk.

NSS ``cmsutil`` is not in this corpus: it cannot be made to emit 3DES. Checked on
Debian 12, NSS 3.87.1 (libnss3 2:3.87.1-1+deb12u4): ``cmsutil -E -d sql:DB -r
alice.martin@chu-a.test -i IN -o OUT`` has no option to choose the content cipher (its
usage lists none; ``-e`` only reuses the bulk key of another message for ``-C``) and
always wrote aes-128-cbc (``openssl cms -cmsout -print``). It picks the cipher with
``NSS_SMIMEUtil_FindBulkAlgForRecipients`` from the recipient's stored S/MIME profile,
but ``cmsutil`` never stores one: decoding a message signed by Alice whose
SMIMECapabilities list only des-ede3-cbc (``cmsutil -D -k -h 1``) left the choice at
aes-128-cbc (``cmsutil`` imports no ``NSS_SMIMESignerInfo_SaveSMIMEProfile``, ``nm
-D``), and a policy module in the database's ``pkcs11.txt`` (``config="disallow=
aes128-cbc:aes192-cbc:aes256-cbc ... allow=des-ede3-cbc"``) did not change it either.
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from asn1crypto import cms

from gateway.inbound.headers import NOT_VERIFIED_TAG
from gateway.inbound.stage import InboundOutcome
from gateway.pki.dev import DevPki
from gateway.smime import smime_parts
from gateway.spool import INBOUND, LOCAL, RECEIVED
from tests.inbound.site import (
    ALICE,
    CLAIRE,
    FROM_OUTSIDE,
    MAILDIR,
    SECRET,
    SUBJECT,
    Trail,
    entries,
    envelope,
    files_containing,
    opened_site,
)
from tests.peers.cms_tools import GPGSM_3DES_OID, Gpgsm, OpenSSLCms

pytestmark = pytest.mark.peer

PRODUCERS = ("openssl", "gpgsm")
HEADER = (
    b"From: Claire <claire.durand@clinique-b.test>\r\n"
    b"To: Alice <alice.martin@chu-a.test>\r\n"
    b"Subject: " + SUBJECT.encode() + b"\r\n"
    b"Date: Sat, 28 Nov 2026 12:00:00 +0100\r\n"
    b"Message-ID: <3des@clinique-b.test>\r\n"
    b"MIME-Version: 1.0\r\n"
)
TEXT_ENTITY = b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + SECRET + b"\r\n"


@dataclass(frozen=True)
class Sample:
    producer: str
    signed: bool
    message: bytes


def content_cipher(der: bytes) -> str:
    """The content-encryption algorithm of an EnvelopedData, as asn1crypto names it."""
    info = cms.ContentInfo.load(der)
    assert info["content_type"].native == "enveloped_data"
    encrypted = info["content"]["encrypted_content_info"]
    return str(encrypted["content_encryption_algorithm"]["algorithm"].native)


def _openssl_samples(pki: DevPki) -> Iterator[Sample]:
    with OpenSSLCms() as tool:
        signed = tool.sign(
            TEXT_ENTITY,
            pki.user_cert(CLAIRE, "sign"),
            pki.user_key(CLAIRE, "sign"),
            chain=pki.intermediates,
            detached=False,
        )
        for is_signed, inner in ((False, TEXT_ENTITY), (True, _signed_entity(signed))):
            der = tool.encrypt(inner, [pki.user_cert(ALICE, "enc")], cipher="des3")
            yield _sample("openssl", is_signed, der)


def _gpgsm_samples(pki: DevPki) -> Iterator[Sample]:
    with Gpgsm() as tool:
        tool.trust_root(pki.root_cert)
        tool.import_certificate(pki.intermediates)
        tool.import_identity(
            pki.user_cert(CLAIRE, "sign"), pki.user_key(CLAIRE, "sign"), chain=pki.intermediates
        )
        tool.import_certificate(pki.user_cert(ALICE, "enc"))
        signed = tool.sign(TEXT_ENTITY, CLAIRE)
        for is_signed, inner in ((False, TEXT_ENTITY), (True, _signed_entity(signed))):
            der = tool.encrypt_with_cipher(inner, [ALICE], GPGSM_3DES_OID)
            yield _sample("gpgsm", is_signed, der)


def _signed_entity(der: bytes) -> bytes:
    return smime_parts.pkcs7_mime_entity(der, "signed-data")


def _sample(producer: str, signed: bool, der: bytes) -> Sample:
    assert content_cipher(der) == "tripledes_3key", producer  # really 3DES
    return Sample(producer, signed, HEADER + smime_parts.pkcs7_mime_entity(der, "enveloped-data"))


@pytest.fixture(scope="module")
def corpus(dev_pki: DevPki) -> dict[tuple[str, bool], Sample]:
    samples = [*_openssl_samples(dev_pki), *_gpgsm_samples(dev_pki)]
    return {(sample.producer, sample.signed): sample for sample in samples}


@pytest.fixture(
    params=[(producer, signed) for producer in PRODUCERS for signed in (False, True)],
    ids=lambda kind: f"{kind[0]}-{'signed-enveloped' if kind[1] else 'enveloped'}",
)
def sample(corpus: dict[tuple[str, bool], Sample], request: pytest.FixtureRequest) -> Sample:
    """Each message of the corpus in turn: every producer, enveloped and signed-enveloped."""
    producer, signed = request.param
    return corpus[producer, signed]


@dataclass
class Result:
    outcome: InboundOutcome
    trail: Trail
    held: list[bytes]
    local: list[bytes]
    dsns: list[bytes]


async def run_inbound(dev_pki: DevPki, root: Path, message: bytes, accept_3des: bool) -> Result:
    """``message`` through the inbound agent configured with ``accept_3des``."""
    setting = "true" if accept_3des else "false"
    inbound = f"{MAILDIR}\n\n[smime]\naccept_3des = {setting}"
    async with opened_site(
        root, dev_pki, inbound=inbound, actor="inbound-agent", keys_of=(ALICE,)
    ) as site:
        assert site.config.smime.accept_3des is accept_3des
        await site.inbound.add(envelope(ALICE), FROM_OUTSIDE, message)
        stage = await site.inbound_agent()
        [outcome] = await stage.drain()
        return Result(
            outcome,
            site.trail,
            [content for _, content in await entries(site.spool, INBOUND, "hold")],
            [content for _, content in await entries(site.spool, LOCAL, "incoming")],
            [content for _, content in await entries(site.spool, RECEIVED, "incoming")],
        )


def security_field(delivered: bytes) -> str:
    shown = email.message_from_bytes(delivered, policy=email.policy.default)
    return " ".join(str(shown["Missive-Security"]).split())


def subject_of(delivered: bytes) -> str:
    return str(email.message_from_bytes(delivered, policy=email.policy.default)["Subject"])


async def test_3des_accepted_is_decrypted_and_marked_weak(
    sample: Sample, dev_pki: DevPki, tmp_path: Path
) -> None:
    result = await run_inbound(dev_pki, tmp_path, sample.message, True)
    assert result.outcome.disposition == "completed" and result.dsns == []
    [delivered] = result.local
    assert SECRET in delivered and b"application/pkcs7-mime" not in delivered
    security = security_field(delivered)
    assert security.startswith("encrypted=des-ede3-cbc;") and security.endswith("weak=yes")
    [event] = result.trail.of_type("inbound.processed")
    assert event.details["weak"] == "yes" and event.details["cipher"] == "des-ede3-cbc"
    if sample.signed:
        assert "signature=valid" in security and f'signer="{CLAIRE}"' in security
        assert subject_of(delivered) == SUBJECT
    else:
        assert "signature=none" in security
        assert subject_of(delivered).startswith(NOT_VERIFIED_TAG)


async def test_3des_refused_is_held_as_received_with_a_dsn(
    sample: Sample, dev_pki: DevPki, tmp_path: Path
) -> None:
    result = await run_inbound(dev_pki, tmp_path, sample.message, False)
    assert result.outcome.disposition == "held" and result.local == []
    assert result.held == [sample.message]  # as received: still encrypted
    [dsn] = result.dsns
    assert b"Action: failed" in dsn and b"Status: 5.7.5" in dsn
    [event] = result.trail.of_type("inbound.processed")
    assert event.outcome == "hold" and event.details["decrypted"] == "no"
    assert files_containing(tmp_path, SECRET) == []
