"""Review of ``gateway.spool.stage_lookup._existing_path``'s link-count shortcut
(session 8, R1): ``active/`` is not listed when ``st_nlink == 2``.

- A slot directory created (and an entry moved into it) between two passes of
  ``find_entry`` is found: ``LOCATE_PASSES`` covers it (found nothing).
- A slot "directory" that is a symbolic link was accepted by ``StageDirs.create_active``
  (``ensure_private_dir`` follows links) and the consumer claimed through it, but a link
  adds no link count to ``active/``: the shortcut then missed its entries. Fixed in
  ``gateway/spool/layout.py``: a link in a slot's place is refused.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from gateway.spool.layout import UnsafeSlotDirectory
from gateway.spool.stage_lookup import find_entry
from tests.spool.test_stage_lookup_links import NAME, stage


def test_a_slot_directory_made_during_a_lookup_is_seen_by_the_next_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another process makes ``active/1/`` and moves the entry there from ``deferred/``
    right after this lookup read ``active/``'s link count (2), before it looks at
    ``deferred/``: the first pass misses the entry everywhere, the second finds it."""
    dirs = stage(tmp_path)
    (dirs.state("deferred") / NAME).write_bytes(b"")
    active = os.fspath(dirs.state("active"))
    real_lstat = os.lstat
    counts: list[int] = []

    def lstat_then_move(path: str) -> os.stat_result:
        status = real_lstat(path)
        if os.fspath(path) == active:
            counts.append(status.st_nlink)
            if len(counts) == 1:
                dirs.active(1).mkdir()
                os.rename(dirs.state("deferred") / NAME, dirs.active(1) / NAME)
        return status

    monkeypatch.setattr(os, "lstat", lstat_then_move)
    assert find_entry(dirs, NAME) == ("active", dirs.active(1) / NAME)
    assert counts == [2, 3]  # skipped once (nothing there yet), then listed


def test_a_symbolic_link_in_a_slot_s_place_is_refused_not_followed(tmp_path: Path) -> None:
    """A link at ``active/1`` would add no link to ``active/`` (the lookup would then
    skip it) and the chmod to 0700 would change its target: the slot refuses it."""
    dirs = stage(tmp_path)
    elsewhere = tmp_path / "slot-1"
    elsewhere.mkdir(mode=0o755)
    (dirs.state("active") / "1").symlink_to(elsewhere)
    with pytest.raises(UnsafeSlotDirectory, match="symbolic link"):
        dirs.create_active(1)
    assert stat.S_IMODE(os.lstat(elsewhere).st_mode) == 0o755  # the target untouched
