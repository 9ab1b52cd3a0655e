"""``missive audit verify|export|prune`` through ``gateway.cli.main``: output and exit status."""

from __future__ import annotations

import argparse
import csv
import json
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest

import gateway.audit.cli
import gateway.cli
from gateway.audit import AuditStore
from gateway.audit.event import utc_now
from tests.cli_runner import Run

from .events import make_event


def test_verify_ok_prints_the_head(missive: Run, db_path: Path, store: AuditStore) -> None:
    head = store.head()
    assert head is not None
    status, out, err = missive("audit", "verify", "--db", db_path)
    assert (status, err) == (0, "")
    assert out == f"OK: 10 records, head seq=10 hash={head.hash}\n"


def test_verify_broken_names_the_record_and_exits_1(
    missive: Run, db_path: Path, raw: sqlite3.Connection
) -> None:
    raw.execute("UPDATE audit_log SET rcpt_to = '[\"x@evil.test\"]' WHERE seq = 4")
    status, out, _ = missive("audit", "verify", "--db", db_path)
    assert status == 1
    assert out.splitlines()[0] == "BROKEN at seq 4: hash mismatch (record edited)"


def test_verify_accepts_its_own_head_line_as_anchor(
    missive: Run, db_path: Path, raw: sqlite3.Connection
) -> None:
    _, out, _ = missive("audit", "verify", "--db", db_path)
    noted = out.split(", head ", 1)[1].strip()  # "seq=10 hash=..."
    status, out, _ = missive("audit", "verify", "--db", db_path, "--anchor", noted)
    assert status == 0 and out.splitlines()[1] == "anchor matches"
    raw.execute("DELETE FROM audit_log WHERE seq = 10")
    status, out, _ = missive("audit", "verify", "--db", db_path, "--anchor", noted)
    assert status == 1 and out.startswith("BROKEN at seq 10:") and "truncated" in out


def test_verify_rejects_a_malformed_anchor(missive: Run, db_path: Path, store: AuditStore) -> None:
    status, out, err = missive("audit", "verify", "--db", db_path, "--anchor", "10:abc")
    assert (status, out) == (2, "")
    assert err.startswith("--anchor: expected SEQ:HASH")


@pytest.mark.parametrize("action", ["verify", "export", "prune"])
def test_a_missing_database_is_exit_2_and_never_created(
    missive: Run, tmp_path: Path, action: str
) -> None:
    missing = tmp_path / "var" / "audit.sqlite"
    extra = {"export": ["--format", "jsonl"], "prune": ["--before", "2026-01-01"]}.get(action, [])
    status, out, err = missive("audit", action, "--db", missing, *extra)
    assert (status, out) == (2, "")
    assert err == (
        f"audit database {missing} does not exist (the gateway creates it when it starts; "
        "check [audit] path)\n"
    )
    assert not missing.parent.exists()


def test_a_file_that_is_not_a_trail_is_exit_2(missive: Run, tmp_path: Path) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello\n" * 200)
    status, _, err = missive("audit", "verify", "--db", junk)
    assert status == 2 and "not a database" in err


def test_export_jsonl_with_date_bounds(missive: Run, db_path: Path, store: AuditStore) -> None:
    store.append([make_event(30), make_event(60)])  # 2026-01-02T14:00, 2026-01-03T20:00
    status, out, _ = missive(
        "audit", "export", "--db", db_path, "--format", "jsonl",
        "--since", "2026-01-01T10:00:00+01:00", "--until", "2026-01-02",
    )  # fmt: skip
    assert status == 0
    seqs = [json.loads(line)["seq"] for line in out.splitlines()]
    assert seqs == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11]  # 09:00Z onwards, the whole 2nd included


def test_export_csv_to_a_new_private_file(
    missive: Run, db_path: Path, store: AuditStore, tmp_path: Path
) -> None:
    target = tmp_path / "export.csv"
    status, out, _ = missive(
        "audit", "export", "--db", db_path, "--format", "csv", "--output", target,
        "--since", "2026-01-01T12:00",
    )  # fmt: skip
    assert (status, out) == (0, "")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    with target.open(newline="", encoding="utf-8") as stream:
        rows = list(csv.DictReader(stream))
    assert [row["seq"] for row in rows] == ["5", "6", "7", "8", "9", "10"]
    status, _, err = missive(
        "audit", "export", "--db", db_path, "--format", "csv", "--output", target
    )
    assert status == 2 and "already exists" in err


@pytest.mark.parametrize(
    ("bounds", "message"),
    [
        (["--since", "last tuesday"], "--since: expected an ISO 8601 date"),
        (["--until", "2026-13-01"], "--until: expected an ISO 8601 date"),
        (["--until", "9999-12-31"], "--until: expected an ISO 8601 date"),
        (["--since", "0001-01-01T00:00+01:00"], "--since: expected an ISO 8601 date"),
        (["--since", "2026-02-01", "--until", "2026-01-01"], "--since must be earlier"),
    ],
)
def test_export_rejects_bad_bounds(
    missive: Run, db_path: Path, store: AuditStore, bounds: list[str], message: str
) -> None:
    status, out, err = missive("audit", "export", "--db", db_path, "--format", "csv", *bounds)
    assert (status, out) == (2, "")
    assert err.startswith(message)


def test_export_of_an_unreadable_record_is_exit_1(
    missive: Run, db_path: Path, raw: sqlite3.Connection
) -> None:
    raw.execute("UPDATE audit_log SET details = 'oops' WHERE seq = 3")
    status, _, err = missive("audit", "export", "--db", db_path, "--format", "jsonl")
    assert status == 1
    assert err.startswith("record seq 3 is unreadable")


def test_export_needs_a_known_format(missive: Run, db_path: Path, store: AuditStore) -> None:
    with pytest.raises(SystemExit) as leaving:
        missive("audit", "export", "--db", db_path, "--format", "xml")
    assert leaving.value.code == 2


def test_prune_before_then_verify(missive: Run, db_path: Path, store: AuditStore) -> None:
    status, out, _ = missive("audit", "prune", "--db", db_path, "--before", "2026-01-01T11:00")
    assert status == 0
    assert out.startswith(
        "pruned 3 records older than 2026-01-01T11:00:00.000000Z (seq 1..3); checkpoint seq=11"
    )
    status, out, _ = missive("audit", "verify", "--db", db_path)
    assert status == 0
    assert out.startswith("OK: 8 records, head seq=11 ")
    assert "(records before seq 4 pruned; last cutoff 2026-01-01T11:00:00.000000Z)" in out
    status, out, _ = missive("audit", "prune", "--db", db_path, "--before", "2026-01-01")
    assert (status, out) == (
        0,
        "nothing to prune: no record older than 2026-01-01T00:00:00.000000Z\n",
    )


def test_prune_uses_the_configured_retention(
    missive: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "audit.sqlite"
    now = utc_now()
    with AuditStore.open_writer(path) as trail:
        trail.append([make_event(0, time=now - timedelta(days=184)), make_event(1, time=now)])
    audit = SimpleNamespace(path=path, retention=timedelta(days=183))
    loaded: list[Path] = []

    def fake_load(args: argparse.Namespace) -> SimpleNamespace:
        loaded.append(args.config)
        return SimpleNamespace(audit=audit)

    monkeypatch.setattr(gateway.audit.cli, "load_config_from_args", fake_load)
    status, out, _ = missive("audit", "prune", "--config", "/etc/missive/missive.toml")
    assert status == 0 and loaded == [Path("/etc/missive/missive.toml")]
    assert out.startswith("pruned 1 records older than ")
    with AuditStore.open_reader(path) as reader:
        report = reader.verify()
    assert report.ok and report.records == 2  # today's record and the checkpoint


def test_prune_refuses_a_broken_trail(missive: Run, db_path: Path, raw: sqlite3.Connection) -> None:
    raw.execute("DELETE FROM audit_log WHERE seq = 2")
    status, out, err = missive("audit", "prune", "--db", db_path, "--before", "2026-02-01")
    assert (status, out) == (1, "")
    assert err.startswith("refusing to prune a broken audit trail: BROKEN at seq 2")


def test_prune_with_db_needs_before(missive: Run, db_path: Path, store: AuditStore) -> None:
    status, _, err = missive("audit", "prune", "--db", db_path)
    assert status == 2 and err.startswith("--db needs --before")


def test_help_lists_the_three_actions(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as leaving:
        gateway.cli.main(["audit", "--help"])
    assert leaving.value.code == 0
    out = capsys.readouterr().out
    assert all(action in out for action in ("verify", "export", "prune"))
