"""The submission listeners with Python's smtplib: STARTTLS and implicit TLS (RFC 8314),
AUTH PLAIN/LOGIN only after TLS, good and bad passwords, throttling, sender binding,
ESMTP extensions and DSN parameters kept with their case."""

from __future__ import annotations

import smtplib
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from gateway.smtp.throttle import ThrottleLimits

from .front import (
    ALICE,
    BOB,
    PASSWORD,
    REMOTE,
    SUBMISSION,
    Front,
    client_context,
    in_thread,
    message,
    running_front,
    write_config,
)


def _starttls_client(front: Front) -> smtplib.SMTP:
    client = smtplib.SMTP("127.0.0.1", front.port("submission"), timeout=30)
    client.ehlo("client.test")
    client.starttls(context=client_context(front.ca_file))
    client.ehlo("client.test")
    return client


def _implicit_client(front: Front) -> smtplib.SMTP_SSL:
    client = smtplib.SMTP_SSL(
        "127.0.0.1", front.port("submissions"), timeout=30, context=client_context(front.ca_file)
    )
    client.ehlo("client.test")
    return client


async def test_ehlo_before_and_after_starttls(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:

        def exchange() -> tuple[dict[str, str], dict[str, str], tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", front.port("submission"), timeout=30) as client:
                client.ehlo("client.test")
                before = dict(client.esmtp_features)
                refused = client.docmd("AUTH", "PLAIN AGFsaWNlAHg=")
                client.starttls(context=client_context(front.ca_file))
                client.ehlo("client.test")
                return before, dict(client.esmtp_features), refused

        before, after, refused = await in_thread(exchange)
    for extension in ("size", "pipelining", "8bitmime", "smtputf8", "enhancedstatuscodes", "dsn"):
        assert extension in before and extension in after
    assert before["size"].strip() == str(1_000_000)
    assert "starttls" in before and "auth" not in before
    assert "starttls" not in after and after["auth"].split() == ["PLAIN", "LOGIN"]
    assert refused[0] == 530  # STARTTLS first (RFC 3207 §4), AUTH never in the clear


async def test_starttls_auth_plain_and_send(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:

        def send() -> dict[str, tuple[int, bytes]]:
            with _starttls_client(front) as client:
                client.login(ALICE, PASSWORD)  # PLAIN: smtplib's first choice of those offered
                body = "Ligne 1\r\n.Ligne avec point\r\n..\r\nFin\r\n"
                return client.sendmail(ALICE, [f"x@{REMOTE}"], message(ALICE, f"x@{REMOTE}", body))

        refused = await in_thread(send)
    assert refused == {}
    [stored] = front.queue.messages
    assert stored.envelope.mail_from == ALICE
    assert stored.envelope.addresses == (f"x@{REMOTE}",)
    assert stored.origin.auth_login == ALICE
    assert stored.origin.listener == "submission"
    assert stored.origin.tls_version in ("TLSv1.2", "TLSv1.3")
    assert stored.content.endswith(b"Ligne 1\r\n.Ligne avec point\r\n..\r\nFin\r\n")
    assert b" with ESMTPSA id " in stored.content.split(b"\r\n\r\n")[0]  # RFC 3848


async def test_implicit_tls_auth_login(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:

        def send() -> tuple[int, bytes]:
            with _implicit_client(front) as client:
                assert "starttls" not in client.esmtp_features
                client.user, client.password = ALICE, PASSWORD
                code, text = client.auth("LOGIN", client.auth_login, initial_response_ok=False)
                client.sendmail(ALICE, [BOB], message(ALICE, BOB))
                return code, text

        code, _ = await in_thread(send)
    assert code == 235
    assert [m.origin.listener for m in front.queue.messages] == ["submissions"]


async def test_wrong_password_refused_and_audited(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:

        def attempt() -> tuple[int, int]:
            with _starttls_client(front) as client:
                with pytest.raises(smtplib.SMTPAuthenticationError) as caught:
                    client.login(ALICE, "wrong")
                mail = client.docmd("MAIL", f"FROM:<{ALICE}>")
                return caught.value.smtp_code, mail[0]

        auth_code, mail_code = await in_thread(attempt)
    assert auth_code == 535
    assert mail_code == 530
    failed = front.audit.of_type("smtp.auth_failed")
    assert failed and failed[0].actor == ALICE and failed[0].outcome == "refused"
    assert front.queue.messages == []


async def test_auth_failures_throttled_per_login(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    limits = ThrottleLimits(max_per_ip=100, max_per_login=2)
    async with running_front(config, dev_pki, throttle=limits) as front:

        def attempts() -> list[int]:
            codes = []
            for password in ("bad1", "bad2", PASSWORD):
                with _starttls_client(front) as client:
                    client.user, client.password = ALICE, password
                    try:
                        codes.append(client.auth("PLAIN", client.auth_plain)[0])
                    except smtplib.SMTPAuthenticationError as error:
                        codes.append(error.smtp_code)
            return codes

        codes = await in_thread(attempts)
        calls = front.authenticator.calls
    assert codes == [535, 535, 454]  # the good password is not even checked while throttled
    assert calls == 2


async def test_spoofing_a_colleague_is_refused(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:

        def spoof() -> tuple[int, int]:
            with _starttls_client(front) as client:
                client.login(ALICE, PASSWORD)
                envelope_code = client.docmd("MAIL", f"FROM:<{BOB}>")[0]
                client.rset()
                with pytest.raises(smtplib.SMTPDataError) as caught:
                    client.sendmail(ALICE, [f"x@{REMOTE}"], message(BOB, f"x@{REMOTE}"))
                return envelope_code, caught.value.smtp_code

        envelope_code, header_code = await in_thread(spoof)
    assert envelope_code == 553
    assert header_code == 550
    assert front.queue.messages == []
    assert front.queue.aborted  # the partial entry was dropped
    stages = [e.details["stage"] for e in front.audit.of_type("smtp.refused")]
    assert stages == ["mail", "data"]


async def test_dsn_parameters_kept_with_their_case(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:

        def send() -> None:
            with _starttls_client(front) as client:
                client.login(ALICE, PASSWORD)
                client.sendmail(
                    ALICE,
                    [f"Dr.X@{REMOTE}"],
                    message(ALICE, f"Dr.X@{REMOTE}"),
                    mail_options=["RET=HDRS", "ENVID=AbC+2Bd", "BODY=8BITMIME"],  # + SIZE
                    rcpt_options=["NOTIFY=success,Failure", f"ORCPT=rfc822;Dr.X+40{REMOTE}"],
                )

        await in_thread(send)
    [stored] = front.queue.messages
    params = stored.envelope.params
    assert (params.ret, params.envid, params.body) == ("HDRS", "AbC+d", "8BITMIME")
    assert params.size == len(message(ALICE, f"Dr.X@{REMOTE}"))
    [recipient] = stored.envelope.recipients
    assert recipient.address == f"Dr.X@{REMOTE}"
    assert recipient.notify == ("SUCCESS", "FAILURE")
    assert recipient.orcpt == f"rfc822;Dr.X@{REMOTE}"
