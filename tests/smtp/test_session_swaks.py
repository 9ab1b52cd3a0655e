"""The submission listeners with swaks (a real, independent SMTP client): STARTTLS and
implicit TLS (``--tls-on-connect``), AUTH PLAIN and LOGIN, good and bad passwords."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from tests.peers.procs import require_binary

from .front import ALICE, PASSWORD, REMOTE, SUBMISSION, running_front, write_config

pytestmark = pytest.mark.peer


async def swaks(*args: str) -> tuple[int, str]:
    """Run swaks to completion (killed by PID if the test is torn down first)."""
    process = await asyncio.create_subprocess_exec(
        require_binary("swaks"),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return process.returncode, output.decode(errors="replace")


def common(port: int, mechanism: str, password: str) -> list[str]:
    return [
        "--server", "127.0.0.1", "--port", str(port),
        "--from", ALICE, "--to", f"x@{REMOTE}",
        "--header", f"From: <{ALICE}>",
        "--auth", mechanism, "--auth-user", ALICE, "--auth-password", password,
        "--helo", "swaks.test", "--timeout", "30",
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("listener", "tls_flag", "mechanism"),
    [("submission", "--tls", "PLAIN"), ("submissions", "--tls-on-connect", "LOGIN")],
)
async def test_swaks_good_password(
    tmp_path: Path, dev_pki: DevPki, listener: str, tls_flag: str, mechanism: str
) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:
        status, output = await swaks(tls_flag, *common(front.port(listener), mechanism, PASSWORD))
    assert status == 0, output
    assert "235 2.7.0" in output and "250 2.0.0 OK queued as" in output
    [stored] = front.queue.messages
    assert stored.origin.listener == listener and stored.origin.auth_login == ALICE


@pytest.mark.parametrize(
    ("listener", "tls_flag"), [("submission", "--tls"), ("submissions", "--tls-on-connect")]
)
async def test_swaks_bad_password(
    tmp_path: Path, dev_pki: DevPki, listener: str, tls_flag: str
) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:
        status, output = await swaks(tls_flag, *common(front.port(listener), "PLAIN", "nope"))
    assert status != 0
    assert "535 5.7.8" in output
    assert front.queue.messages == []


async def test_swaks_no_auth_without_tls(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:
        status, output = await swaks(*common(front.port("submission"), "PLAIN", PASSWORD))
    assert status != 0
    assert "235 " not in output
    assert front.queue.messages == []
