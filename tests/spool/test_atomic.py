"""The one writer of queue files, and the layout's directories: modes, exclusivity."""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

import gateway.spool.atomic as atomic
from gateway.spool.atomic import TempFile, UnnamedTempFile
from gateway.spool.layout import STATES, Layout, check_stage_name, relay_stage

from .support import mode


@pytest.fixture
def loose_umask() -> Iterator[None]:
    previous = os.umask(0)
    try:
        yield
    finally:
        os.umask(previous)


def test_a_temp_file_is_0600_whatever_the_umask(tmp_path: Path, loose_umask: None) -> None:
    temp = TempFile.create(tmp_path, "X")
    temp.write(b"data")
    temp.finish()
    assert mode(temp.path) == 0o600
    os.umask(0o277)  # even a umask that would leave the owner without write access
    strict = TempFile.create(tmp_path, "Y")
    strict.write(b"data")
    strict.finish()
    assert mode(strict.path) == 0o600


def test_a_planted_name_or_symlink_is_never_followed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    monkeypatch.setattr(atomic, "temp_name", lambda stem, suffix=".tmp": "planted.tmp")
    (tmp_path / "planted.tmp").symlink_to(victim)
    with pytest.raises(FileExistsError):
        TempFile.create(tmp_path, "X")
    assert victim.read_bytes() == b"precious"


def test_publish_never_overwrites_an_entry(tmp_path: Path) -> None:
    target = tmp_path / "ENTRY"
    target.write_bytes(b"first")
    temp = TempFile.create(tmp_path, "ENTRY")
    temp.write(b"second")
    temp.finish()
    with pytest.raises(FileExistsError):
        temp.publish(target)
    assert target.read_bytes() == b"first"
    temp.discard()
    assert list(tmp_path.iterdir()) == [target]


def test_write_at_patches_without_moving_the_position(tmp_path: Path) -> None:
    temp = TempFile.create(tmp_path, "X")
    temp.write(b"....payload")
    temp.write_at(b"HEAD", 0)
    temp.write(b"!")
    temp.finish()
    assert temp.path.read_bytes() == b"HEADpayload!"


def test_an_unnamed_file_gets_its_only_name_at_publish(tmp_path: Path, loose_umask: None) -> None:
    tmp, incoming = tmp_path / "tmp", tmp_path / "incoming"
    tmp.mkdir()
    incoming.mkdir()
    os.umask(0o277)
    temp = UnnamedTempFile.create(tmp, "ENTRY")
    assert isinstance(temp, UnnamedTempFile)
    temp.write(b"....payload")
    temp.write_at(b"HEAD", 0)
    temp.finish()
    assert list(tmp.iterdir()) == []  # never a name in tmp/, so nothing to clean up
    taken = incoming / "TAKEN"
    taken.write_bytes(b"first")
    with pytest.raises(FileExistsError):
        temp.publish(taken)
    temp.publish(incoming / "ENTRY")
    assert (incoming / "ENTRY").read_bytes() == b"HEADpayload"
    assert mode(incoming / "ENTRY") == 0o600 and taken.read_bytes() == b"first"
    with pytest.raises(ValueError, match="closed"):
        temp.write(b"more")  # publish closed it


def test_an_unnamed_file_discarded_leaves_nothing(tmp_path: Path) -> None:
    temp = UnnamedTempFile.create(tmp_path, "X")
    temp.write(b"data")
    temp.discard()
    temp.discard()
    assert list(tmp_path.iterdir()) == []


def test_without_o_tmpfile_a_named_temp_file_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_open = os.open

    def no_tmpfile(path: object, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_TMPFILE == os.O_TMPFILE:
            raise OSError(errno.EOPNOTSUPP, "Operation not supported")
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", no_tmpfile)
    temp = UnnamedTempFile.create(tmp_path, "X")
    assert type(temp) is TempFile and temp.path.parent == tmp_path
    temp.discard()


def test_without_proc_a_named_temp_file_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``publish`` links through /proc/self/fd: without /proc (a chroot), every small
    message would fail at publish; a named temp file is used instead (review finding)."""
    monkeypatch.setattr(atomic, "_proc_fd_links", lambda: False)
    temp = UnnamedTempFile.create(tmp_path, "X")
    assert type(temp) is TempFile and temp.path.parent == tmp_path
    temp.write(b"entry")
    temp.finish()
    temp.publish(tmp_path / "ENTRY")
    assert (tmp_path / "ENTRY").read_bytes() == b"entry"


@pytest.mark.parametrize("kernel_copy", [True, False])
def test_copy_from_copies_a_range_with_or_without_copy_file_range(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kernel_copy: bool
) -> None:
    source = tmp_path / "source"
    data = os.urandom(3 * 1024 * 1024 + 17)
    source.write_bytes(data)
    if not kernel_copy:

        def unsupported(*args: object) -> int:
            raise OSError(errno.ENOSYS, "not here")

        monkeypatch.setattr(os, "copy_file_range", unsupported)
    temp = TempFile.create(tmp_path, "X")
    fd = os.open(source, os.O_RDONLY)
    try:
        temp.copy_from(fd, 5, len(data) - 10)
    finally:
        os.close(fd)
    temp.finish()
    assert temp.path.read_bytes() == data[5:-5]


def test_stage_directories_are_0700_and_loose_ones_are_tightened(
    tmp_path: Path, loose_umask: None
) -> None:
    root = tmp_path / "spool"
    stage = Layout(root).stage(relay_stage("clinique-b"))
    stage.create()
    assert mode(root) == mode(root / "relay") == mode(stage.root) == mode(stage.tmp) == 0o700
    assert all(mode(stage.state(state)) == 0o700 for state in STATES)
    os.chmod(stage.state("hold"), 0o755)  # noqa: S103 - loosened on purpose
    stage.create()
    assert mode(stage.state("hold")) == 0o700


def test_stage_names_cannot_leave_the_spool(tmp_path: Path) -> None:
    for good in ("received", "inbound", "local", "relay/clinique-b", "relay/a.b_c-1"):
        assert check_stage_name(good) == good
    for bad in ("", "relay/", "relay/..", "relay/.", "../x", "relay/a/b", "done", "/etc"):
        with pytest.raises(ValueError, match="not a spool stage"):
            check_stage_name(bad)


def test_stages_on_disk_lists_fixed_stages_then_routes(tmp_path: Path) -> None:
    layout = Layout(tmp_path / "spool")
    for name in ("local", "relay/b", "received", "relay/a"):
        layout.stage(name).create()
    (tmp_path / "spool" / "relay" / ".hidden").mkdir()
    assert layout.stages_on_disk() == ("received", "local", "relay/a", "relay/b")


def test_publish_of_an_unnamed_file_is_one_linkat_through_proc(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target directory is not opened around the link (two system calls per message
    less, issue 5): the link goes through a descriptor of /proc/self/fd kept open."""
    temp = UnnamedTempFile.create(tmp_path, "X")
    temp.write(b"entry")
    temp.finish()
    opened: list[object] = []
    real_open = os.open

    def watching_open(path: object, flags: int, *args: object, **kwargs: object) -> int:
        opened.append(path)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", watching_open)
    temp.publish(tmp_path / "ENTRY")
    assert (tmp_path / "ENTRY").read_bytes() == b"entry"
    assert tmp_path not in opened and str(tmp_path) not in opened


def test_a_forked_child_links_through_its_own_proc(tmp_path: Path) -> None:
    """After ``fork`` the child's /proc/self/fd is another directory: the descriptor
    the parent opened must not be used there (it would name the parent's files)."""
    first = UnnamedTempFile.create(tmp_path, "P")
    first.write(b"parent")
    first.finish()
    first.publish(tmp_path / "PARENT")  # the parent has opened its /proc descriptor
    pid = os.fork()
    if pid == 0:  # the child: publish one file of its own, report by exit status
        status = 1
        try:
            child = UnnamedTempFile.create(tmp_path, "C")
            child.write(b"child")
            child.finish()
            child.publish(tmp_path / "CHILD")
            status = 0 if (tmp_path / "CHILD").read_bytes() == b"child" else 1
        finally:
            os._exit(status)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert (tmp_path / "PARENT").read_bytes() == b"parent"
