"""``missive queue``: the operator's commands, alone and while a stage works the queue."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

import gateway.cli
import gateway.spool.cli
from gateway.audit import AuditStore
from gateway.spool import RECEIVED, STATES
from gateway.spool.entry import EntryReader

from .support import QueueSite, Run, fill_received, message, start_stage_worker

SECRET_BODY = b"Secret body\r\n"


def fill(site: QueueSite, count: int) -> list[str]:
    """``count`` messages whose body ``missive queue show`` must not print by default."""
    return fill_received(site, count, SECRET_BODY)


def trail_events(site: QueueSite) -> list[tuple[str, str | None, str | None]]:
    with AuditStore.open_reader(site.trail) as store:
        return [
            (record.event.type, record.event.queue_id, record.event.actor)
            for record in store.iter_records()
        ]


def where(site: QueueSite, name: str) -> list[str]:
    return [state for state in STATES if (site.spool / RECEIVED / state / name).exists()]


def test_list_shows_one_line_per_entry(missive: Run, site: QueueSite) -> None:
    ids = fill(site, 2)
    (site.spool / RECEIVED / "incoming" / "stray\x1b[31m").write_bytes(b"junk")
    status, out, _ = missive("queue", "list", "--spool", site.spool)
    assert status == 0
    rows = out.splitlines()
    assert rows[0].split() == [
        "QUEUE",
        "ID",
        "STAGE",
        "STATE",
        "AGE",
        "SIZE",
        "SENDER",
        "RCPTS",
        "NEXT",
        "ATTEMPT",
    ]
    for queue_id in ids:
        (line,) = [row for row in rows if row.startswith(queue_id)]
        assert line.split()[1:3] == ["received", "incoming"]
        assert "<alice.martin@chu-a.test>" in line
    assert any("unreadable: " in row and "stray\\x1b[31m" in row for row in rows)
    assert "\x1b" not in out  # a file name cannot drive the terminal
    assert rows[-1] == "3 entries"


def test_show_prints_headers_only_and_is_traced(missive: Run, site: QueueSite) -> None:
    (queue_id,) = fill(site, 1)
    status, out, _ = missive("queue", "show", queue_id, *site.args)
    assert status == 0
    assert f"queue id:    {queue_id}" in out
    assert "rcpt to:     <bob@clinique-b.test> NOTIFY=FAILURE,DELAY status=pending" in out
    assert "Subject: Patient 0" in out and "Secret body" not in out
    status, out, _ = missive("queue", "show", queue_id, "--full", *site.args)
    assert status == 0 and out.endswith("Secret body\r\n")
    viewed = [event for event in trail_events(site) if event[0] == "spool.viewed"]
    assert len(viewed) == 2 and viewed[0][1] == queue_id
    assert viewed[0][2] == gateway.spool.cli.cli_actor()


def test_show_prints_nothing_when_the_view_cannot_be_traced(missive: Run, site: QueueSite) -> None:
    (queue_id,) = fill(site, 1)
    status, out, err = missive(
        "queue", "show", queue_id, "--spool", site.spool, "--audit-db", site.spool
    )
    assert status == 2 and "Patient" not in out and err


def test_hold_release_retry_delete_are_traced_moves(missive: Run, site: QueueSite) -> None:
    first, second = fill(site, 2)
    assert missive("queue", "hold", first, "--reason", "doctor asked", *site.args)[0] == 0
    assert where(site, first) == ["hold"]
    status, _, err = missive("queue", "retry", first, *site.args)
    assert status == 1 and "cannot retry" in err
    assert missive("queue", "release", first, *site.args)[0] == 0
    assert where(site, first) == ["incoming"]
    status, _, err = missive("queue", "delete", second, *site.args)
    assert status == 2 and "--yes" in err and where(site, second) == ["incoming"]
    status, out, _ = missive("queue", "delete", second, "--yes", *site.args)
    assert status == 0 and "deleted" in out and where(site, second) == []
    kinds = [event[0] for event in trail_events(site) if event[2] == gateway.spool.cli.cli_actor()]
    assert kinds == ["spool.held", "spool.released", "spool.deleted"]


@pytest.mark.parametrize("name", ["01M8H4BQW0ZZ5NEQ3BDRMA3DYM", "../../etc/passwd", ".hidden"])
def test_an_unknown_or_unsafe_id_is_a_usage_error(missive: Run, site: QueueSite, name: str) -> None:
    fill(site, 1)
    status, _, err = missive("queue", "hold", name, *site.args)
    assert status == 2 and ("no entry" in err or "not a queue id" in err)


def test_a_missing_spool_is_a_usage_error(missive: Run, tmp_path: Path) -> None:
    status, _, err = missive("queue", "list", "--spool", tmp_path / "nowhere")
    assert status == 2 and "does not exist" in err
    assert not (tmp_path / "nowhere").exists()


def test_config_gives_the_spool_and_the_trail(
    missive: Run, site: QueueSite, monkeypatch: pytest.MonkeyPatch
) -> None:
    (queue_id,) = fill(site, 1)
    asked: list[Path] = []

    def fake_load(args: object) -> SimpleNamespace:
        asked.append(args.config)  # type: ignore[attr-defined]
        return SimpleNamespace(
            gateway=SimpleNamespace(spool_dir=site.spool), audit=SimpleNamespace(path=site.trail)
        )

    monkeypatch.setattr(gateway.spool.cli, "load_config_from_args", fake_load)
    assert missive("queue", "hold", queue_id, "--config", "/etc/missive/missive.toml")[0] == 0
    assert asked == [Path("/etc/missive/missive.toml")]
    assert where(site, queue_id) == ["hold"]


def test_help_lists_the_six_actions(missive: Run, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        missive("queue", "--help")
    assert caught.value.code == 0
    out = capsys.readouterr().out
    for action in ("list", "show", "retry", "hold", "release", "delete"):
        assert action in out
    assert "--yes" in out  # the decision about delete is in the help text


# -- while a stage runs ---------------------------------------------------------------------


def test_an_entry_being_processed_is_refused_clearly(
    missive: Run, site: QueueSite, workers: list[subprocess.Popen[str]]
) -> None:
    ids = fill(site, 2)
    worker = start_stage_worker(site, workers, "hold-one", 1)
    assert worker.stdout is not None and worker.stdin is not None
    claimed = worker.stdout.readline().split()
    assert claimed[0] == "CLAIMED" and claimed[1] == ids[0]
    for action in (("hold", ids[0]), ("release", ids[0]), ("delete", ids[0], "--yes")):
        status, _, err = missive("queue", *action, *site.args)
        assert status == 1, err
        assert f"{ids[0]} is being processed (in received/active/)" in err
    assert missive("queue", "show", ids[0], *site.args)[0] == 0  # reading is allowed
    assert missive("queue", "hold", ids[1], *site.args)[0] == 0  # the others are not blocked
    worker.stdin.write("go\n")
    worker.stdin.flush()
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    assert where(site, ids[0]) == ["deferred"] and where(site, ids[1]) == ["hold"]


def test_operator_commands_racing_a_busy_stage_lose_nothing(
    missive: Run, site: QueueSite, workers: list[subprocess.Popen[str]]
) -> None:
    ids = fill(site, 4)
    worker = start_stage_worker(site, workers, "churn", 400)
    statuses: list[int] = []
    errors: list[str] = []
    for _ in range(6):
        for queue_id in ids:
            for action in ("hold", "release", "retry"):
                status, _, err = missive("queue", action, queue_id, *site.args)
                statuses.append(status)
                if status:
                    errors.append(err)
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert set(statuses) <= {0, 1}  # never a usage error, never a traceback
    assert all(
        "being processed" in error
        or "cannot" in error
        or "moved while" in error
        or "already in" in error
        for error in errors
    ), errors
    for number, queue_id in enumerate(ids):
        states = where(site, queue_id)
        assert len(states) == 1 and states != ["active"], (queue_id, states)
        path = site.spool / RECEIVED / states[0] / queue_id
        with EntryReader(path) as reader:
            assert b"".join(reader.chunks()) == message(number, SECRET_BODY)
    assert os.listdir(site.spool / RECEIVED / "tmp") == []
    assert os.listdir(site.spool / RECEIVED / "corrupt") == []


def test_filters_and_an_unreadable_entry(missive: Run, site: QueueSite) -> None:
    first, second = fill(site, 2)
    assert missive("queue", "hold", first, *site.args)[0] == 0
    (site.spool / RECEIVED / "incoming" / "junk").write_bytes(b"junk")
    status, out, _ = missive("queue", "list", "--spool", site.spool, "--state", "hold")
    assert status == 0 and first in out and second not in out
    status, out, _ = missive("queue", "list", "--spool", site.spool, "--stage", "relay/none")
    assert status == 0 and out.splitlines()[-1] == "0 entries"
    status, _, err = missive("queue", "list", "--spool", site.spool, "--stage", "../etc")
    assert status == 2 and "not a spool stage" in err
    status, out, err = missive("queue", "show", "junk", *site.args)
    assert status == 1 and "unreadable" in err and "junk" not in out
