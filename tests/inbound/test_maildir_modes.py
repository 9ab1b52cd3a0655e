"""Maildir directory modes: the Maildir root of a user and its ``cur``/``new``/``tmp``
are 0700 after a delivery whatever the umask, and an existing directory keeps its mode."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.inbound.maildir import deliver_to_maildir

ADDRESS = "alice.martin@chu-a.test"


@pytest.fixture
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    """Set the process umask to the test's parameter; the old one restored after."""
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("umask", [0o022, 0o000, 0o277], indirect=True)
def test_a_new_maildir_is_0700_from_its_root_down(tmp_path: Path, umask: int) -> None:
    root = tmp_path / "var" / "mail"
    delivered = deliver_to_maildir(root, ADDRESS, b"Subject: x\r\n\r\nbody\r\n")
    mailbox = root / "alice.martin"
    assert delivered.parent == mailbox / "new"
    modes = {
        str(path.relative_to(tmp_path)): _mode(path)
        for path in (root, mailbox, mailbox / "cur", mailbox / "new", mailbox / "tmp")
    }
    assert modes == dict.fromkeys(modes, 0o700)
    assert len(modes) == 5


@pytest.mark.parametrize("umask", [0o022], indirect=True)
def test_an_existing_mailbox_root_keeps_its_mode(tmp_path: Path, umask: int) -> None:
    mailbox = tmp_path / "alice.martin"
    mailbox.mkdir(mode=0o750)
    deliver_to_maildir(tmp_path, ADDRESS, b"\r\n")
    assert _mode(mailbox) == 0o750
    assert _mode(mailbox / "new") == 0o700


def test_a_file_where_the_mailbox_root_should_be_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "alice.martin").write_bytes(b"")
    with pytest.raises(FileExistsError):
        deliver_to_maildir(tmp_path, ADDRESS, b"\r\n")
