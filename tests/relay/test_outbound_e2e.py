"""Outbound end to end (issue 6 item 7): a hospital MTA hands a message to ``missive
serve`` over the relay listener; the secure agent signs it with the organisation key
(``keys.organisation_signing``, made by ``certs init-dev --keys-dir``) and encrypts it
to Claire; the relay stage delivers it over verified TLS, with our client certificate,
to a real Postfix MX for clinique-b.test, which stores it in a Maildir.

What is checked on what Postfix stored: application/pkcs7-mime; ``openssl cms -decrypt``
with Claire's encryption key opens it, and so do NSS ``cmsutil -D`` and ``gpgsm
--decrypt`` (both hold Claire's key: the site's PKI is a copy of the session ``dev_pki``,
so the ``gpgsm`` fixture's user and an NSS database built here have the very keys the
annuaire publishes); the inner part is signed and ``openssl cms -verify -purpose
smimesign`` accepts it; the real Subject and body are inside only (no trace of them in
the stored bytes, base64-decoded parts included); the Received header shows TLS. Then
the queue is empty, ``audit verify`` passes and the trail holds ``agent.smime`` and
``relay.attempt`` with certificate serials.

Loopback only; ``serve`` runs in a subprocess and is stopped by SIGTERM (killed if it
does not stop) in a ``finally``.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import selectors
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki.dev import DevPki, load_dev_pki
from tests.peers.cms_tools import Gpgsm, NssCmsutil, OpenSSLCms
from tests.peers.fixtures import tls_files
from tests.peers.ports import free_ports
from tests.peers.postfix import PostfixInstance

REPOSITORY = Path(__file__).resolve().parents[2]
MISSIVE = [sys.executable, "-m", "gateway"]
FIXED_PORTS = (2587, 2465, 2525)  # the shipped listeners, moved to free ports in the copy
SHIPPED_NEXT_HOP = 'next_hop = "127.0.0.1:2526"'
SENDER = "alice.martin@chu-a.test"
RECIPIENT = "claire.durand@clinique-b.test"
SUBJECT = "Compte rendu Zephyrin-7Q4 confidentiel"
BODY = "Resultats du patient Oxalys-93K: troponine elevee, rappeler le service."
SECRETS = (b"Zephyrin-7Q4", b"Oxalys-93K", b"troponine")


def missive(site: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*MISSIVE, *args], cwd=site, capture_output=True, text=True, timeout=60, check=False
    )


def _listener_port(toml: str, name: str) -> int:
    block = toml.split(f'name = "{name}"', 1)[1]
    return int(block.split('address = "127.0.0.1:', 1)[1].split('"', 1)[0])


@pytest.fixture
def site(tmp_path: Path, dev_pki: DevPki) -> Path:
    """conf/ copied with free ports, var/pki a copy of the session PKI completed by
    ``certs init-dev`` (demo annuaire, key store, organisation signing key)."""
    shutil.copytree(REPOSITORY / "conf", tmp_path / "conf")
    shutil.copytree(dev_pki.directory, tmp_path / "var" / "pki")
    toml = tmp_path / "conf" / "missive.toml"
    text = toml.read_text()
    for fixed, port in zip(FIXED_PORTS, free_ports(len(FIXED_PORTS)), strict=True):
        text = text.replace(f'address = "127.0.0.1:{fixed}"', f'address = "127.0.0.1:{port}"')
    toml.write_text(text)
    prepared = missive(
        tmp_path,
        "certs",
        "init-dev",
        "var/pki",
        "--demo-annuaire",
        "var/annuaire.ldif",
        "--keys-dir",
        "var/keys",
    )
    assert prepared.returncode == 0, prepared.stderr
    return tmp_path


@pytest.fixture
def mx(site: Path, postfix_mx_factory: Callable[..., PostfixInstance]) -> PostfixInstance:
    """The Postfix MX of clinique-b.test, and the site's route pointed at it."""
    instance = postfix_mx_factory(
        tls_files(load_dev_pki(site / "var" / "pki"), "mx.clinique-b.test")
    )
    toml = site / "conf" / "missive.toml"
    text = toml.read_text()
    assert text.count(SHIPPED_NEXT_HOP) == 1
    toml.write_text(text.replace(SHIPPED_NEXT_HOP, f'next_hop = "127.0.0.1:{instance.port}"'))
    return instance


@pytest.fixture
def serve(site: Path, mx: PostfixInstance) -> Iterator[subprocess.Popen[str]]:
    """``missive serve`` running on the site until the test ends (SIGTERM, then kill)."""
    proc = subprocess.Popen(
        [*MISSIVE, "serve", "--config", "conf/missive.toml"],
        cwd=site,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        _read_until(proc, "event=gateway.ready", time.monotonic() + 30)
        yield proc
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def _read_until(proc: subprocess.Popen[str], marker: str, deadline: float) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    selector = selectors.DefaultSelector()
    selector.register(proc.stdout, selectors.EVENT_READ)
    while time.monotonic() < deadline:
        if not selector.select(timeout=0.2):
            assert proc.poll() is None, "serve exited early:\n" + "".join(lines)
            continue
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in serve's output:\n" + "".join(lines))


def _submit(site: Path) -> None:
    """A hospital MTA on 127.0.0.1 (a relay client) hands the message over STARTTLS."""
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = RECIPIENT
    message["Subject"] = SUBJECT
    message["Message-ID"] = "<e2e-outbound@chu-a.test>"
    message.set_content(BODY)
    context = ssl.create_default_context(cafile=site / "var" / "pki" / "root.crt")
    port = _listener_port((site / "conf" / "missive.toml").read_text(), "mx")
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=context)
        assert client.send_message(message, SENDER, [RECIPIENT]) == {}


def _enveloped_der(stored: bytes) -> bytes:
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    assert parsed.get_content_type() == "application/pkcs7-mime"
    assert parsed.get_param("smime-type") == "enveloped-data"
    payload = parsed.get_payload(decode=True)
    assert isinstance(payload, bytes)
    return payload


def _assert_no_secret_in(stored: bytes) -> None:
    """Neither the Subject nor the body, as bytes or inside any base64 part."""
    views = [stored.lower()]
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    for part in parsed.walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            views.append(payload.lower())
    for line in stored.split(b"\n"):
        try:
            views.append(base64.b64decode(line.strip(), validate=True).lower())
        except ValueError:
            continue
    for secret in SECRETS:
        assert all(secret.lower() not in view for view in views), secret


def _received_with_tls(stored: bytes) -> str:
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    received = [str(value) for value in parsed.get_all("Received", [])]
    assert received, "no Received header"
    return " ".join(received[0].split())


def _wait_for_empty_queue(site: Path, deadline: float) -> str:
    """Poll ``queue list`` until it shows no entry (the deadline guards a hang only)."""
    while True:
        listed = missive(site, "queue", "list", "--config", "conf/missive.toml")
        assert listed.returncode == 0, listed.stderr
        if listed.stdout.strip().endswith("0 entries"):
            return listed.stdout
        if time.monotonic() > deadline:
            raise AssertionError(f"queue not empty:\n{listed.stdout}")
        time.sleep(0.1)


def _audit_records(site: Path) -> list[dict[str, object]]:
    verified = missive(site, "audit", "verify", "--config", "conf/missive.toml")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    exported = missive(
        site, "audit", "export", "--config", "conf/missive.toml", "--format", "jsonl"
    )
    assert exported.returncode == 0, exported.stderr
    return [json.loads(line) for line in exported.stdout.splitlines()]


def _serial(path: Path) -> str:
    """``<issuer CN>:<serial in hex>``, as audit events name a certificate."""
    certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
    issuer = certificate.issuer.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
    return f"{issuer!s}:{certificate.serial_number:x}"


def test_relayed_mail_reaches_postfix_signed_and_encrypted(
    site: Path,
    mx: PostfixInstance,
    serve: subprocess.Popen[str],
    openssl_cms: OpenSSLCms,
    gpgsm: Gpgsm,
) -> None:
    pki = load_dev_pki(site / "var" / "pki")
    _submit(site)
    stored = mx.wait_for_messages(1)
    assert len(stored) == 1
    message = stored[0]

    _assert_no_secret_in(message)
    assert "using TLSv1." in _received_with_tls(message)

    enveloped = _enveloped_der(message)
    claire_cert, claire_key = pki.user_cert(RECIPIENT, "enc"), pki.user_key(RECIPIENT, "enc")
    inner = openssl_cms.decrypt(enveloped, claire_cert, claire_key)
    inner_message = email.message_from_bytes(inner, policy=email.policy.default)
    assert inner_message.get_content_type() == "multipart/signed"  # RFC 8551 §3.5.3
    parts = inner_message.get_payload()
    assert isinstance(parts, list) and len(parts) == 2
    signature_part = parts[1]
    assert isinstance(signature_part, email.message.Message)
    signature = signature_part.get_payload(decode=True)
    assert isinstance(signature, bytes)
    signed_content = openssl_cms.verify(
        signature, pki.root_cert, content=_first_part(inner), untrusted=pki.intermediates
    )
    assert b"Zephyrin-7Q4" in signed_content and b"Oxalys-93K" in signed_content
    with pytest.raises(AssertionError):
        _assert_no_secret_in(inner)  # the check above does see the secrets when present

    # The other CMS implementations open it too, with Claire's key.
    assert gpgsm.decrypt(enveloped) == inner
    with NssCmsutil() as nss:
        nss.trust_root(pki.root_cert)
        nss.import_identity(claire_cert, claire_key, nickname=RECIPIENT, chain=pki.intermediates)
        assert nss.decrypt(enveloped) == inner

    _wait_for_empty_queue(site, time.monotonic() + 30)
    records = _audit_records(site)
    smime = [r for r in records if r["type"] == "agent.smime"]
    assert len(smime) == 1
    # Claire's and Alice's (the sent copy) encryption certificates, and the signer's: the
    # organisation's, since a relay client has no personal key to sign with.
    assert set(smime[0]["cert_serials"]) == {  # type: ignore[call-overload]
        _serial(claire_cert),
        _serial(pki.user_cert(SENDER, "enc")),
        _serial(site / "var" / "keys" / "organisation" / "sign.pem"),
    }
    attempts = [r for r in records if r["type"] == "relay.attempt"]
    assert [a["outcome"] for a in attempts] == ["delivered"]
    # the MX's certificate (relay.attempt gives the bare serial, agent.smime issuer:serial)
    mx_serial = _serial(pki.server_cert("mx.clinique-b.test")).rpartition(":")[2]
    assert attempts[0]["cert_serials"] == [mx_serial]
    assert attempts[0]["details"]["peer_verified"] == "yes"  # type: ignore[index]


def _first_part(inner: bytes) -> bytes:
    """The signed bytes of a multipart/signed: the first body part exactly as sent
    (RFC 8551 §3.5.3: between the first boundary's CRLF and the CRLF of the next)."""
    parsed = email.message_from_bytes(inner, policy=email.policy.default)
    boundary = parsed.get_boundary()
    assert boundary is not None
    delimiter = b"--" + boundary.encode("ascii")
    first = inner.split(delimiter)[1]
    return first.removeprefix(b"\r\n").removeprefix(b"\n").removesuffix(b"\r\n")
