"""Crash safety: kill a stage at each step; after restart nothing acknowledged is lost.

Each test runs a real stage in a subprocess (``stage_worker``) that dies with
``os._exit`` at one named step, then restarts the stage (or inspects the spool as the
restarted consumer would) and checks the spool's promises:

- every message acknowledged (``ACK``, the ``250``) is in the queue, intact, and has
  its ``spool.added`` event in the (real, SQLite) audit trail;
- a crash during a hand-off leaves each message in the first stage or the second (or
  both, for a moment), never neither; finishing the work yields exactly one child per
  parent (duplicate hand-offs are impossible, the child id is keyed);
- a crash after a hand-off, with the child delivered by the next stage before the
  parent is processed again, writes no second child (the child's tombstone);
- a crash during a deferral leaves each entry exactly once in the stage, readable.

The exit status proves the crash happened at the intended step (a step that is
never reached would make the test pass for nothing).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from gateway.audit import AuditStore
from gateway.spool import RECEIVED, STATES, Spool, relay_stage
from gateway.spool.entry import EntryReader
from gateway.spool.ids import child_queue_id

from .stage_worker import CRASH_STATUS
from .support import (
    REPOSITORY,
    RecordingTrail,
    envelope,
    make_spool,
    message,
    origin,
    stage_worker_command,
)

RELAY = relay_stage("r")


def run_worker(
    scenario: str, root: Path, count: int, crash_at: str | None
) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if key != "MISSIVE_CRASH_AT"}
    if crash_at:
        env["MISSIVE_CRASH_AT"] = crash_at
    command = stage_worker_command(scenario, root / "spool", root / "audit.sqlite", count)
    # subprocess.run kills the child if it outlives the timeout (a hang, not a timing)
    return subprocess.run(
        command, cwd=REPOSITORY, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def lines(result: subprocess.CompletedProcess[str], tag: str) -> list[list[str]]:
    return [line.split()[1:] for line in result.stdout.splitlines() if line.startswith(tag + " ")]


def entries(root: Path, stage: str) -> dict[str, list[str]]:
    """Entry name -> the states it is found in (a name twice would be a duplicate)."""
    found: dict[str, list[str]] = {}
    for state in STATES:
        directory = root / "spool" / stage / state
        for name in os.listdir(directory) if directory.is_dir() else []:
            found.setdefault(name, []).append(state)
    return found


def content_of(root: Path, stage: str, state: str, name: str) -> bytes:
    with EntryReader(root / "spool" / stage / state / name) as reader:
        return b"".join(reader.chunks())


def audited(root: Path, kind: str) -> list[str]:
    with AuditStore.open_reader(root / "audit.sqlite") as store:
        return [
            record.event.queue_id or ""
            for record in store.iter_records()
            if record.event.type == kind
        ]


async def _recover(root: Path, stage: str) -> None:
    trail = RecordingTrail()
    spool = make_spool(root / "spool", trail)
    try:
        await spool.queue(stage).recover(stale_after=timedelta(0))
    finally:
        await spool.aclose()


ADD_STEPS = ["add.written", "add.synced", "add.linked", "add.published"]


@pytest.mark.parametrize("step", ADD_STEPS)
def test_a_crash_while_adding_loses_no_acknowledged_message(tmp_path: Path, step: str) -> None:
    result = run_worker("add", tmp_path, 5, f"{step}:3")
    assert result.returncode == CRASH_STATUS, result.stderr
    acked = lines(result, "ACK")
    assert [number for _, number in acked] == ["0", "1"]  # died inside the third add
    asyncio.run(_recover(tmp_path, RECEIVED))
    found = entries(tmp_path, RECEIVED)
    for queue_id, number in acked:
        assert found[queue_id] == ["incoming"]
        assert content_of(tmp_path, RECEIVED, "incoming", queue_id) == message(int(number))
    assert set(audited(tmp_path, "spool.added")) >= {queue_id for queue_id, _ in acked}
    unacknowledged = set(found) - {queue_id for queue_id, _ in acked}
    if step in ("add.linked", "add.published"):
        assert len(unacknowledged) == 1  # published, its 250 never sent: a duplicate at most
    else:
        assert not unacknowledged
    assert not os.listdir(tmp_path / "spool" / RECEIVED / "tmp")


async def _prefill(root: Path, count: int) -> list[str]:
    spool: Spool = make_spool(root / "spool", RecordingTrail())
    try:
        queue = spool.queue(RECEIVED)
        spool.queue(RELAY)
        return [await queue.add(envelope(), origin(), message(n)) for n in range(count)]
    finally:
        await spool.aclose()


HANDOFF_STEPS = [
    "claim.moved",
    "add.written",
    "add.synced",
    "add.linked",
    "add.published",
    "completed.recorded",
    "completed.removed",
]


@pytest.mark.parametrize("step", HANDOFF_STEPS)
def test_a_crash_during_a_hand_off_loses_nothing_and_duplicates_nothing(
    tmp_path: Path, step: str
) -> None:
    parents = asyncio.run(_prefill(tmp_path, 4))
    crashed = run_worker("handoff", tmp_path, 4, f"{step}:2")
    assert crashed.returncode == CRASH_STATUS, crashed.stderr
    upstream, downstream = entries(tmp_path, RECEIVED), entries(tmp_path, RELAY)
    for parent in parents:
        child = child_queue_id(parent, "route-r")  # type: ignore[arg-type]
        assert parent in upstream or child in downstream, f"{parent} lost"
    finished = run_worker("handoff", tmp_path, 4, None)
    assert finished.returncode == 0, finished.stderr
    assert entries(tmp_path, RECEIVED) == {}
    children = entries(tmp_path, RELAY)
    assert children == {child_queue_id(p, "route-r"): ["incoming"] for p in parents}  # type: ignore[arg-type]
    for number, parent in enumerate(parents):
        child = child_queue_id(parent, "route-r")  # type: ignore[arg-type]
        assert content_of(tmp_path, RELAY, "incoming", child) == b"signed:" + message(number)
    completed = audited(tmp_path, "spool.completed")
    assert all(1 <= completed.count(parent) <= 2 for parent in parents)  # traced, at most twice


@pytest.mark.parametrize("step", ["add.published", "add.linked"])
def test_a_child_delivered_before_its_parent_is_re_run_is_not_handed_off_again(
    tmp_path: Path, step: str
) -> None:
    parents = asyncio.run(_prefill(tmp_path, 3))
    crashed = run_worker("handoff", tmp_path, 3, f"{step}:2")  # the second parent's child
    assert crashed.returncode == CRASH_STATUS, crashed.stderr
    children = [child_queue_id(p, "route-r") for p in parents]  # type: ignore[arg-type]
    assert sorted(entries(tmp_path, RELAY)) == sorted(children[:2])
    delivered = run_worker("deliver", tmp_path, 2, None)
    assert delivered.returncode == 0, delivered.stderr
    assert sorted(line[0] for line in lines(delivered, "DELIVERED")) == sorted(children[:2])
    handed = tmp_path / "spool" / RELAY / "handed"
    assert os.listdir(handed) == [f"{parents[1]}.{children[1]}"]  # its parent is alive
    finished = run_worker("handoff", tmp_path, 3, None)
    assert finished.returncode == 0, finished.stderr
    assert entries(tmp_path, RECEIVED) == {}
    assert entries(tmp_path, RELAY) == {children[2]: ["incoming"]}  # no second child
    added = audited(tmp_path, "spool.added")
    assert [added.count(child) for child in children] == [1, 1, 1]
    assert os.listdir(handed) == []


DEFER_STEPS = ["claim.moved", "defer.rewritten", "defer.moved"]


@pytest.mark.parametrize("step", DEFER_STEPS)
def test_a_crash_during_a_deferral_keeps_each_entry_once(tmp_path: Path, step: str) -> None:
    parents = asyncio.run(_prefill(tmp_path, 3))
    handed = run_worker("handoff", tmp_path, 3, None)
    assert handed.returncode == 0, handed.stderr
    children = sorted(entries(tmp_path, RELAY))
    crashed = run_worker("defer", tmp_path, 3, f"{step}:2")
    assert crashed.returncode == CRASH_STATUS, crashed.stderr
    finished = run_worker("defer", tmp_path, 3, None)
    assert finished.returncode == 0, finished.stderr
    found = entries(tmp_path, RELAY)
    assert found == {child: ["deferred"] for child in children}
    for child in children:
        with EntryReader(tmp_path / "spool" / RELAY / "deferred" / child) as reader:
            # 2 when the crash came after the new version was written: deferred twice
            assert reader.record.state.revision in (1, 2)
            assert b"".join(reader.chunks()).startswith(b"signed:")
    assert len(parents) == len(children)
