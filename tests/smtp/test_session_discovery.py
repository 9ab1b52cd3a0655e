"""``MissiveSMTP`` gives aiosmtpd's method discovery a short ``dir`` while its constructor
runs: aiosmtpd must still find exactly the commands and AUTH mechanisms a full ``dir``
finds, and ``dir`` must be complete afterwards."""

from __future__ import annotations

import asyncio
import inspect
from pathlib import Path

from gateway.pki.dev import DevPki
from gateway.smtp.session import MissiveSMTP

from .front import SUBMISSION, running_front, write_config


def full_discovery(session: MissiveSMTP) -> tuple[set[str], set[str]]:
    """What aiosmtpd 1.4.6 finds with a full ``dir``: command names, AUTH mechanisms."""
    commands = {name[len("smtp_") :] for name in dir(session) if name.startswith("smtp_")}
    mechanisms = {
        getattr(method, "__auth_mechanism_name__", name[len("auth_") :].replace("__", "-"))
        for name, method in inspect.getmembers(session)
        if name.startswith("auth_")
    }
    return commands, mechanisms


async def test_aiosmtpd_finds_the_same_methods(tmp_path: Path, dev_pki: DevPki) -> None:
    config = write_config(tmp_path, dev_pki, SUBMISSION)
    async with running_front(config, dev_pki) as front:
        _, writer = await asyncio.open_connection("127.0.0.1", front.port("submission"))
        try:
            while not front.group.listeners[0].sessions:
                await asyncio.sleep(0.01)
            session = next(iter(front.group.listeners[0].sessions))
            commands, mechanisms = full_discovery(session)
            assert "push" in dir(session) and "settings" in dir(session)  # complete again
            assert {"EHLO", "MAIL", "RCPT", "DATA", "STARTTLS", "AUTH"} <= commands
            assert {"PLAIN", "LOGIN"} <= mechanisms
            assert set(session._smtp_methods) == commands
            assert set(session._auth_methods) == mechanisms
            for name, method in session._smtp_methods.items():
                assert method == getattr(session, "smtp_" + name)
        finally:
            writer.close()
            await writer.wait_closed()
