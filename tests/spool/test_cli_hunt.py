"""Adversarial hunt on ``missive queue`` and the records it reads (session 5, H18).

Each test states an attack on a promise of ``gateway.spool.cli``, ``display``,
``entry`` or ``record`` (module docstrings, docs/spool.md): a peer's header that tries
to drive the operator's terminal, a file planted or copied into the spool, a bad ID
on the command line, a directory that is not a spool.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import stat
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import gateway.cli
from gateway.audit import AuditSink, AuditStore
from gateway.spool import RECEIVED, STATES, Spool
from gateway.spool.entry import EntryReader
from gateway.spool.errors import CorruptEntry
from gateway.spool.model import RecordError
from gateway.spool.record import PREAMBLE_SIZE, decode_record, encode_record

from .support import (
    MB,
    REPOSITORY,
    QueueSite,
    Run,
    envelope,
    fill_received,
    origin,
    start_stage_worker,
)
from .test_record import file_bytes, make_record

# a peer's Subject: an OSC title change + BEL, a screen clear, a C1 CSI (U+009B) and
# a right-to-left override (U+202E), then a bare CR that would let the rest of the
# line overwrite what came before it
HOSTILE_SUBJECT = (
    b"Subject: \x1b]0;owned\x07\x1b[2J \xc2\x9b31m \xe2\x80\xae fdp.exe\rX-Forged: yes\r\n"
)
TERMINAL_CONTROLS = ("\x1b", "\x07", "\x9b", "\u202e")


def add(site: QueueSite, content: bytes) -> str:
    """One entry in ``received/incoming/`` with ``content``, added as the SMTP front
    adds it; its queue id."""

    async def add_one() -> str:
        async with AuditSink(site.trail) as sink:
            async with Spool(
                site.spool, audit=sink, actor="smtp", max_message_size=10 * MB
            ) as spool:
                return await spool.queue(RECEIVED).add(envelope(), origin(), content)

    return asyncio.run(add_one())


def hostile_message(body: bytes = b"Bonjour\r\n") -> bytes:
    return b"From: mallory@evil.test\r\n" + HOSTILE_SUBJECT + b"\r\n" + body


class Terminal(io.TextIOWrapper):
    """A standard output that says it is a terminal (``isatty``), bytes kept."""

    def __init__(self) -> None:
        super().__init__(io.BytesIO(), encoding="utf-8", errors="strict")

    def isatty(self) -> bool:
        return True

    def shown(self) -> bytes:
        self.flush()
        raw = self.buffer
        assert isinstance(raw, io.BytesIO)
        return raw.getvalue()


def run_on_terminal(monkeypatch: pytest.MonkeyPatch, *argv: str | Path) -> tuple[int, bytes]:
    """``missive ARGS...`` with a terminal as standard output: (status, bytes shown)."""
    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    status = gateway.cli.main([str(arg) for arg in argv])
    return status, terminal.shown()


# -- what a peer wrote reaches the operator's terminal -----------------------------------


def test_show_headers_cannot_drive_the_terminal(missive: Run, site: QueueSite) -> None:
    queue_id = add(site, hostile_message())
    status, out, _ = missive("queue", "show", queue_id, *site.args)
    assert status == 0
    shown = [control for control in TERMINAL_CONTROLS if control in out]
    assert shown == [], f"raw terminal controls from a peer's header: {shown!r}"
    assert "\rX-Forged" not in out  # a bare CR cannot overwrite the shown line
    assert "owned" in out and "fdp.exe" in out  # escaped, still readable


def test_show_full_on_a_terminal_cannot_drive_it(
    missive: Run, site: QueueSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = b"\x00\x01binary\x1b[5m\xff\xfe\x9b\r\n" * 3
    queue_id = add(site, hostile_message(body))
    status, out = run_on_terminal(monkeypatch, "queue", "show", queue_id, "--full", *site.args)
    assert status == 0
    shown = [c for c in (b"\x1b", b"\x07", b"\x00", b"\xc2\x9b", b"\xe2\x80\xae") if c in out]
    assert shown == [], f"raw terminal controls from a peer's message: {shown!r}"
    assert b"binary" in out and b"fdp.exe" in out


def test_show_full_into_a_file_is_the_message_as_stored(
    missive: Run, site: QueueSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = b"\x00\x01binary\x1b[5m\xff\xfe\r\n" * 3
    content = hostile_message(body)
    queue_id = add(site, content)
    redirected = io.TextIOWrapper(io.BytesIO(), encoding="utf-8")  # not a terminal
    monkeypatch.setattr(sys, "stdout", redirected)
    assert gateway.cli.main(["queue", "show", queue_id, "--full", *map(str, site.args)]) == 0
    redirected.flush()
    raw = redirected.buffer
    assert isinstance(raw, io.BytesIO)
    assert raw.getvalue().endswith(b"\n--- message ---\n" + content)


def test_terminal_text_treats_a_split_crlf_or_utf8_sequence_as_whole() -> None:
    from gateway.spool.display import TerminalText  # the fix of the test above

    text = TerminalText()
    parts = [text.feed(b"a\r"), text.feed(b"\nb\xc3"), text.feed(b"\xa9\r\x1b\xff", final=True)]
    assert "".join(parts) == "a\nb\u00e9\\u000d\\u001b\\xff"


def test_a_header_section_of_megabytes_is_shown_bounded(missive: Run, site: QueueSite) -> None:
    folded = b"X-Long: " + b"a" * 70 + b"\r\n"
    queue_id = add(site, b"Subject: big\r\n" + folded * (3 * MB // len(folded)) + b"\r\nbody\r\n")
    status, out, _ = missive("queue", "show", queue_id, *site.args)
    assert status == 0
    assert "[header section longer than shown]" in out
    assert len(out) < 1 * MB + 64 * 1024  # HEADER_LIMIT, not the whole 3 MB section


# -- files planted or copied into the spool -----------------------------------------------


def test_show_of_a_file_named_as_another_id_says_so(missive: Run, site: QueueSite) -> None:
    first, second = fill_received(site, 2)
    incoming = site.spool / RECEIVED / "incoming"
    shutil.copyfile(incoming / first, incoming / second)  # second now holds first's record
    status, out, err = missive("queue", "show", second, *site.args)
    assert f"queue id:    {first}" not in out, "shown under another id's name"
    assert status == 1 and "differs from the queue id" in err
    status, out, _ = missive("queue", "list", "--spool", site.spool)
    assert "differs from the queue id" in out  # what list already says of it


@pytest.mark.parametrize("state", ["hold", "incoming"])
def test_a_symlink_planted_as_an_entry_is_never_followed(
    missive: Run, site: QueueSite, tmp_path: Path, state: str
) -> None:
    (genuine,) = fill_received(site, 1)
    outside = tmp_path / "outside.txt"
    outside.write_bytes(b"precious")
    stage = site.spool / RECEIVED
    # the planted link bears a real entry's id (moved away) and points outside
    os.rename(stage / "incoming" / genuine, tmp_path / "genuine.entry")
    (stage / state / genuine).symlink_to(outside)
    status, out, err = missive("queue", "show", genuine, *site.args)
    assert status == 1 and "unreadable" in err and "precious" not in out
    if state == "hold":
        assert missive("queue", "release", genuine, *site.args)[0] == 0
        assert (stage / "incoming" / genuine).is_symlink()
    status, _, _ = missive("queue", "delete", genuine, "--yes", *site.args)
    assert status == 0
    assert not os.path.lexists(stage / "incoming" / genuine)
    assert outside.read_bytes() == b"precious"  # the link went, never its target


@pytest.mark.parametrize("kind", ["fifo", "directory"])
def test_a_fifo_or_a_directory_planted_as_an_entry_hangs_nothing(
    missive: Run, site: QueueSite, kind: str
) -> None:
    (genuine,) = fill_received(site, 1)
    incoming = site.spool / RECEIVED / "incoming"
    os.unlink(incoming / genuine)
    if kind == "fifo":
        os.mkfifo(incoming / genuine)
    else:
        (incoming / genuine).mkdir()
    status, out, err = missive("queue", "show", genuine, *site.args)
    assert status == 1 and "unreadable" in err and out == ""
    status, out, _ = missive("queue", "list", "--spool", site.spool)
    assert status == 0 and "unreadable: not a regular file" in out


# -- records edited by hand (re-signed: the digest is a checksum, not a signature) ----------


def _edited(change: Callable[[dict[str, Any]], None]) -> bytes:
    data = json.loads(encode_record(make_record()))
    change(data)
    return json.dumps(data).encode("ascii")


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    """Set ``value`` at a dotted ``path`` (a number picks a list item)."""

    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for key in parents:
            node = node[int(key)] if key.isdigit() else node[key]
        node[last] = value

    return change


@pytest.mark.parametrize(
    "payload",
    [
        _edited(_set("recipients.0.attempts", True)),  # a bool is an int to Python
        _edited(_set("state.revision", -1)),
        _edited(_set("content.length", 1 << 70)),
        _edited(_set("state.note", "a" * 5000)),
        _edited(_set("recipients.0.status", "delivered\u202e")),
        b'{"queue_id":' + b"9" * 5000 + b"}",  # more digits than int() converts
        b'{"queue_id":1e999}',
        b"[" * 100_000 + b"]" * 100_000,  # nesting deeper than any record
    ],
)
def test_an_edited_record_is_refused_cleanly(payload: bytes) -> None:
    with pytest.raises(RecordError):
        decode_record(payload)


def test_a_preamble_announcing_a_huge_record_reads_nothing_more(tmp_path: Path) -> None:
    """Lengths that lie: refused from the preamble and the file size, before any read
    of the announced record (no 16 MiB allocation for a 200-byte file)."""
    data = bytearray(file_bytes(make_record(length=10), b"0123456789"))
    head = struct.pack(">8sHHIQI", b"MISSIVEQ", 1, 0, 16 * MB, 10, 0)
    data[:PREAMBLE_SIZE] = head + struct.pack(">I", zlib.crc32(head))
    planted = tmp_path / "entry"
    planted.write_bytes(bytes(data))
    with pytest.raises(CorruptEntry, match="its preamble says"):
        EntryReader(planted)


# -- racing the gateway ----------------------------------------------------------------------


def test_delete_racing_a_consumer_that_claims_the_entry(
    missive: Run, site: QueueSite, workers: list[subprocess.Popen[str]]
) -> None:
    """``churn`` claims and defers entries while ``delete`` runs against each: a delete
    either removes an entry not being processed (exit 0, traced) or refuses (exit 1);
    nothing is lost half-way, nothing is left in tmp/ or corrupt/."""
    ids = fill_received(site, 5)
    worker = start_stage_worker(site, workers, "churn", 300)
    deleted: set[str] = set()
    statuses: list[int] = []
    errors: list[str] = []
    for queue_id in ids:
        for _ in range(20):
            status, _, err = missive("queue", "delete", queue_id, "--yes", *site.args)
            statuses.append(status)
            if status == 0:
                deleted.add(queue_id)
                break
            errors.append(err)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert set(statuses) <= {0, 1}, errors
    assert all("being processed" in e or "moved while" in e for e in errors), errors
    for queue_id in ids:
        states = [state for state in STATES if (site.spool / RECEIVED / state / queue_id).exists()]
        expected = 0 if queue_id in deleted else 1  # gone, or in exactly one state
        assert len(states) == expected and "active" not in states, (queue_id, states)
    assert os.listdir(site.spool / RECEIVED / "tmp") == []
    assert os.listdir(site.spool / RECEIVED / "corrupt") == []
    with AuditStore.open_reader(site.trail) as store:
        traced = {r.event.queue_id for r in store.iter_records() if r.event.type == "spool.deleted"}
    assert traced == deleted


# -- bad input on the command line ----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "..",
        "../received/incoming",
        "a" * 300,
        "\u00e9" * 200,  # 200 characters, 400 bytes: longer than NAME_MAX
        "nul\x00inside",
        "\x1b]0;owned\x07\x1b[31m",  # echoed back in the error: escaped
        "1",  # the name of a consumer slot's directory
    ],
)
@pytest.mark.parametrize("action", ["show", "hold", "release", "retry", "delete"])
def test_a_bad_id_is_a_clear_error(missive: Run, site: QueueSite, name: str, action: str) -> None:
    fill_received(site, 1)
    (site.spool / RECEIVED / "active" / "1").mkdir()
    extra = ("--yes",) if action == "delete" else ()
    status, out, err = missive("queue", action, name, *extra, *site.args)
    assert status in (1, 2) and err.strip(), (status, err)
    assert "Traceback" not in err and out == ""
    assert "\x1b" not in err and "\x07" not in err


def test_an_id_that_is_not_utf8_gets_a_clear_error(site: QueueSite) -> None:
    """In a real process (standard error as Python sets it up, not as pytest captures
    it): an ID of bytes that are not UTF-8 is refused with exit 2, no traceback."""
    fill_received(site, 1)
    done = subprocess.run(
        [sys.executable, "-m", "gateway.cli", "queue", "show", b"\xff\xfe", *map(str, site.args)],
        cwd=REPOSITORY,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and b"no entry" in done.stderr, done.stderr
    assert b"Traceback" not in done.stderr


def test_show_with_a_mistyped_audit_db_prints_nothing_and_creates_nothing(
    missive: Run, site: QueueSite, tmp_path: Path
) -> None:
    """A view recorded in a new, empty database nobody reads is not traced; and a
    database the CLI creates (as root) is one the gateway's user cannot open."""
    (queue_id,) = fill_received(site, 1)
    typo = tmp_path / "audti.sqlite"
    status, out, err = missive("queue", "show", queue_id, "--spool", site.spool, "--audit-db", typo)
    assert "Patient" not in out, "patient data shown, its view traced nowhere anyone reads"
    assert status == 2 and "audit" in err
    assert not typo.exists()
    status, _, err = missive("queue", "hold", queue_id, "--spool", site.spool, "--audit-db", typo)
    assert status == 2 and not typo.exists()
    assert (site.spool / RECEIVED / "incoming" / queue_id).exists()


@pytest.mark.parametrize("action", [("hold",), ("delete", "--yes")])
def test_a_reason_too_long_for_the_trail_is_a_clear_error(
    missive: Run, site: QueueSite, action: tuple[str, ...]
) -> None:
    """A shell passes up to 128 KiB in one argument; the trail keeps 4 KiB per text."""
    (queue_id,) = fill_received(site, 1)
    status, _, err = missive("queue", *action, queue_id, "--reason", "x" * 5000, *site.args)
    assert status == 2 and "--reason" in err
    assert (site.spool / RECEIVED / "incoming" / queue_id).exists()


# -- reading changes nothing ------------------------------------------------------------------


def test_list_of_a_directory_that_is_no_spool_leaves_it_alone(missive: Run, tmp_path: Path) -> None:
    foreign = tmp_path / "home"
    foreign.mkdir()
    foreign.chmod(0o755)
    status, _, _ = missive("queue", "list", "--spool", foreign)
    assert status in (0, 2)
    mode = stat.S_IMODE(foreign.stat().st_mode)
    assert mode == 0o755, f"`queue list` changed the mode of {foreign} to {mode:o}"
    assert os.listdir(foreign) == []


def test_list_creates_nothing_in_the_spool(missive: Run, site: QueueSite) -> None:
    """A stage without ``handed/`` (a spool of a version before tombstones): ``list``,
    run as root while the gateway's user owns the spool, must not add a root-owned
    directory the gateway then cannot write."""
    fill_received(site, 1)
    handed = site.spool / RECEIVED / "handed"
    handed.rmdir()
    assert missive("queue", "list", "--spool", site.spool)[0] == 0
    assert not handed.exists(), "`queue list` created received/handed/"
