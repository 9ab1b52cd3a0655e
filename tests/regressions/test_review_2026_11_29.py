"""Regressions from the review of 2026-11-29's changes: each test pins one defect the
review found (a lookup bound counting duplicates, a scribe importing modules from the
working directory, a traceback when the scribe cannot start, a dead scribe logged at
info, a letter manifest naming a charset it did not use). Each failed before its fix."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509

import gateway.app
import gateway.cli
import gateway.serve
from annuaire.lookup import MAX_CANDIDATES, CertificateLookup
from annuaire.model import Entry, Mailbox
from annuaire.search import Candidates, PreparedQuery
from gateway.app import Gateway
from gateway.pki.dev import DevPki
from gateway.relay.letter_content import decode_text
from gateway.smime.types import Purpose, ValidationResult
from gateway.spool import SpoolWriteError
from gateway.spool.scribe_client import ScribeQueue
from tests.smtp.front import RELAY, write_config

# -- F1: annuaire/lookup.py: "distinct values, all sources together" counts duplicates --

ALICE = "alice.martin@chu-a.test"
DOMAIN = "chu-a.test"


class _TwoEntries:
    """A directory whose address entry and domain entry hold the same values."""

    def __init__(self, values: tuple[bytes, ...]) -> None:
        self._values = values
        self.asked: list[str] = []

    @property
    def description(self) -> str:
        return "two entries in memory"

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]:
        self.asked.append(address)
        if address == ALICE:
            return (Entry(key=ALICE, kind="person", display_name="Alice",
                          mailboxes=(Mailbox(ALICE),), certificates=self._values),)  # fmt: skip
        if address == DOMAIN:
            return (Entry(key=DOMAIN, kind="structure", display_name="CHU A",
                          certificates=self._values),)  # fmt: skip
        return ()

    async def search(self, query: PreparedQuery, limit: int) -> Candidates:
        raise AssertionError("not used by a lookup")

    async def close(self) -> None:
        return None


class _NeverCalled:
    def validate(
        self,
        certificate: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        purpose: Purpose = Purpose.SMIME_SIGN,
        at: datetime | None = None,
    ) -> ValidationResult:
        raise AssertionError("no value here is a certificate")


async def test_f1_a_value_seen_in_two_sources_counts_once_toward_the_bound() -> None:
    """annuaire/lookup.py, module docstring and docs (annuaire.md, security.md): "at most
    16 *distinct* certificate values, all sources together". ``_add`` removes duplicates
    within one source only, so an address entry and its domain entry holding the same
    9 values (9 distinct, well under 16) make the lookup "unavailable" (the message
    waits until it expires) instead of answering "no certificate"."""
    values = tuple(f"not a certificate {n}".encode() for n in range(9))
    assert len(values) < MAX_CANDIDATES < 2 * len(values)
    directory = _TwoEntries(values)
    lookup = CertificateLookup(directory, _NeverCalled())
    result = await lookup.lookup(ALICE)  # raises TooManyCertificates today
    assert directory.asked == [ALICE, DOMAIN]
    assert not result.found


# -- F2: gateway/spool/scribe_client.py: ``python -m`` puts the cwd first on sys.path ---

_PLANTED = """
import pathlib
pathlib.Path(__file__).with_name("planted-code-ran").write_text("ran")
raise ImportError("planted module")
"""


async def test_f2_the_scribe_runs_no_module_planted_in_the_working_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scribe_client.py (``ScribeQueue.__init__``, the command): ``python -m`` puts the
    working directory of ``serve`` *before* the standard library on the scribe's
    ``sys.path`` (CWE-427), so a ``sqlite3.py`` (or ``json.py``...) in the directory
    ``serve`` was started from runs inside the process that writes every message and
    the audit trail. Fix: ``python -P -m`` (Python 3.11, ``safe_path``); the same holds
    for ``gateway.workers.DEFAULT_PROGRAM`` (the key-holding secure agent)."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "sqlite3.py").write_text(_PLANTED)
    monkeypatch.chdir(cwd)
    queue = ScribeQueue(
        spool_dir=tmp_path / "spool",
        audit_path=tmp_path / "audit.sqlite",
        actor="smtp",
        max_message_size=1 << 20,
    )
    try:
        with contextlib.suppress(SpoolWriteError):
            await queue.start()
    finally:
        await queue.aclose()
    assert not (cwd / "planted-code-ran").exists()


# -- F3: gateway/serve.py ``_front``: a scribe that cannot start is a traceback ---------


def test_f3_serve_with_a_scribe_that_cannot_start_exits_without_a_traceback(
    tmp_path: Path,
    dev_pki: DevPki,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """serve.py ``_front`` (``await scribe.start()``) and scribe_client.py
    (``ScribeQueue.start``): when the scribe cannot start (interpreter not runnable,
    RLIMIT_NPROC, a module it cannot import, the audit trail it cannot open...),
    ``SpoolWriteError`` - not a ``MissiveError`` - leaves ``run_serve`` and
    ``gateway.cli.main`` prints a Python traceback instead of one clear line and exit 2
    (common rules: "never a traceback from the CLI"); the trail also gets a
    ``gateway.start`` with no ``gateway.stop``. Fix: in ``_front`` turn the start's
    ``SpoolWriteError`` into a ``ConfigError``/``UsageError``-like ``MissiveError``
    ("the spool scribe did not start: ...; see its lines on stderr above"), exit 1
    or 2, and record ``gateway.stop`` (or no ``gateway.start``) for the attempt."""
    config = write_config(tmp_path, dev_pki, RELAY)
    real_front_queue = gateway.app.front_queue

    def failing_front_queue(built: Gateway) -> ScribeQueue:
        queue = real_front_queue(built)
        queue._command = [sys.executable, "-c", "raise SystemExit(3)"]
        return queue

    monkeypatch.setattr(gateway.serve, "front_queue", failing_front_queue)
    # run_serve's setup_logging would leave the "missive" logger unpropagated for the
    # rest of the session (caplog in later tests): not what this test is about
    monkeypatch.setattr(gateway.serve, "setup_logging", lambda level: None)
    status = gateway.cli.main(["serve", "--config", str(config.source)])  # raises today
    assert status in (1, 2)
    assert "scribe" in capsys.readouterr().err


# -- F4: scribe_client.py ``_Link._end``: a dead scribe is an info line -----------------


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_f4_a_scribe_that_dies_is_logged_as_an_error_not_as_info(tmp_path: Path) -> None:
    """scribe_client.py ``_Link._end`` / ``_read_answers``: a scribe killed (OOM killer,
    a crash) fails every message in flight with 451, yet the only line is
    ``scribe.link_ended reason="end of link"`` at *info*, the same line and level as a
    normal stop at ``aclose``: an operator alerting on errors never sees it, and the
    line cannot tell a crash from a stop. Fix: when the link ends and ``close`` was not
    called, log ``scribe.died`` at error with the exit status (``process.returncode``,
    a signal name as ``gateway.worker_exits.signal_name`` gives it)."""
    handler = _Records()
    logger = logging.getLogger("missive.spool.scribe")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.DEBUG)
    queue = ScribeQueue(
        spool_dir=tmp_path / "spool",
        audit_path=tmp_path / "audit.sqlite",
        actor="smtp",
        max_message_size=1 << 20,
    )
    try:
        await queue.start()
        pid = queue.pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        for _ in range(1000):
            if queue.pid is None:
                break
            await asyncio.sleep(0.01)
        assert queue.pid is None, "the dead scribe was not noticed"
    finally:
        await queue.aclose()
        logger.removeHandler(handler)
        logger.setLevel(level)
    ended = [r for r in handler.records if r.getMessage() != "scribe.started"]
    assert ended, "nothing logged when the scribe died"
    assert any(r.levelno >= logging.ERROR for r in ended), [
        (r.levelname, r.getMessage(), r.__dict__.get("fields")) for r in ended
    ]


# -- F5: docs/operations.md: the scribe's ignored signals -----------------------------

REPOSITORY = Path(__file__).resolve().parents[2]


def test_f6_a_latin1_part_with_undefined_bytes_says_it_was_read_as_windows_1252() -> None:
    """letter_content.py ``decode_text`` (last line): a part labelled ISO-8859-1 is read
    with windows-1252 (``_READ_AS``); when one of windows-1252's five undefined bytes is
    in it, the strict decode fails and the part is read with "replace" - still
    windows-1252 - but the ``TextDecoding`` says ``read_as="iso-8859-1"``, so the
    manifest (and ``TextDecoding``'s own docstring: "the charset used") names a charset
    that was not used, and the letter calls "unreadable" a byte that ISO-8859-1 reads.
    Fix: ``TextDecoding(label, <the codec's charset name>, n)``, i.e. "windows-1252"
    here (the label itself when no substitution happened)."""
    text, decoding = decode_text(b"caf\xe9 \x81 \x80", "iso-8859-1")
    assert text == "café \ufffd €"  # windows-1252 was used: 0x80 is the euro sign
    assert decoding is not None
    assert (decoding.declared, decoding.replaced) == ("iso-8859-1", 1)
    assert decoding.read_as == "windows-1252"
