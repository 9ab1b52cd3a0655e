"""``gateway.spool.stage_lookup``: finding an entry in ``active/`` skips listing the
directory when its link count proves it has no slot's directory (2 on ext4, XFS,
tmpfs), and lists it whenever the count proves nothing (btrfs reports 1)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.spool.layout import STATES, StageDirs
from gateway.spool.stage_lookup import find_entry

NAME = "20261129T050000-0001"


def stage(tmp_path: Path) -> StageDirs:
    dirs = StageDirs("relay", tmp_path / "relay")
    for state in STATES:
        dirs.state(state).mkdir(parents=True)
    return dirs


def test_without_a_slot_directory_active_is_not_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dirs = stage(tmp_path)
    (dirs.state("active") / NAME).write_bytes(b"")
    assert os.lstat(dirs.state("active")).st_nlink == 2  # the test's own premise

    def no_listing(path: str) -> list[str]:
        raise AssertionError(f"listed {path}")

    monkeypatch.setattr(os, "listdir", no_listing)
    assert find_entry(dirs, NAME) == ("active", dirs.state("active") / NAME)
    assert find_entry(dirs, "20261129T050000-0002") is None


def test_an_entry_in_a_slot_directory_is_found(tmp_path: Path) -> None:
    dirs = stage(tmp_path)
    (dirs.state("active") / "1").mkdir()
    (dirs.state("active") / "1" / NAME).write_bytes(b"")
    assert find_entry(dirs, NAME) == ("active", dirs.state("active") / "1" / NAME)


def test_a_file_system_that_reports_one_link_still_gets_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """btrfs reports 1 link for every directory: the count proves nothing there."""
    dirs = stage(tmp_path)
    (dirs.state("active") / "2").mkdir()
    (dirs.state("active") / "2" / NAME).write_bytes(b"")
    real_lstat = os.lstat

    def one_link(path: str) -> os.stat_result:
        status = real_lstat(path)
        fields = list(status)
        fields[3] = 1  # st_nlink
        return os.stat_result(fields)

    monkeypatch.setattr(os, "lstat", one_link)
    assert find_entry(dirs, NAME) == ("active", dirs.state("active") / "2" / NAME)
