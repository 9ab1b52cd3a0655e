"""Maildir delivery: one message file for one local recipient, written safely.

Role: ``[inbound] deliver_to = "maildir:PATH"``. ``gateway.inbound.delivery`` (the stage
runner) calls ``deliver_to_maildir`` in a thread for each recipient and turns its
outcome into a reply (``PermanentFailure`` -> 5.1.3, ``OSError`` -> deferred).

Layout: one Maildir per local part, ``PATH/<local part>/{tmp,new,cur}`` (the layout
Dovecot's ``mail_location = maildir:PATH/%n`` reads). ``PATH``, the mailbox root
``PATH/<local part>`` and its ``tmp``, ``new`` and ``cur`` are created on first use with
mode 0700, set again with ``chmod`` after ``mkdir`` so the umask changes nothing (only
missing parents of ``PATH`` get the umask's mode, as ``pathlib`` makes them). A
directory that already exists is left as it is (a site may share its Maildirs with a
group on purpose).

Invariants (the maildir spec, https://cr.yp.to/proto/maildir.html): the file is written
in ``tmp/`` (``O_EXCL``, 0600), fsynced, renamed into ``new/`` and ``new/`` is fsynced,
so a reader never sees a partial file and a returned path survives a crash; on any
error the temporary file is removed. Names are
``<seconds>.M<usec>P<pid>Q<counter>R<random>.<host>`` (unique per process by the
counter, across processes by the pid and 64 random bits), with ``/`` and ``:`` of the
host name escaped as ``\\057`` and ``\\072`` (maildir spec, Dovecot's conventions).

Security: a local part that cannot name a directory (empty, ``/`` or ``\\``, a leading
dot, NUL or another control character, longer than ``NAME_MAX`` bytes) raises
``PermanentFailure`` before anything is created, so no address can write outside
``PATH`` nor into a hidden directory.

Written by hand: stdlib ``mailbox.Maildir`` neither fsyncs the file nor the ``new/``
directory, and its names differ from the ones above.

Trust level: runs in the delivery worker (``missive worker delivery``), which holds no
private key; it writes decrypted content, the end of the gateway.
"""

from __future__ import annotations

import itertools
import os
import secrets
import socket
import time
from pathlib import Path

_counter = itertools.count(1)
PRIVATE_DIR_MODE = 0o700
NAME_MAX = 255  # bytes in one file name (Linux, and the usual file systems)


class PermanentFailure(Exception):
    """Nothing the store could do would ever accept this recipient (bad mailbox name)."""


def maildir_name(hostname: str | None = None) -> str:
    """A unique Maildir file name (module docstring)."""
    now = time.time()
    seconds, micros = int(now), int((now - int(now)) * 1_000_000)
    host = (hostname or socket.gethostname()).replace("/", "\\057").replace(":", "\\072")
    unique = f"M{micros}P{os.getpid()}Q{next(_counter)}R{secrets.token_hex(8)}"
    return f"{seconds}.{unique}.{host}"


def mailbox_of(root: Path, address: str) -> Path:
    """``root/<local part>``; ``PermanentFailure`` if the local part cannot be a name."""
    local = address.rsplit("@", 1)[0]
    bad = not local or local.startswith(".") or "/" in local or "\\" in local
    bad = bad or len(os.fsencode(local)) > NAME_MAX  # the bytes the file system gets
    if bad or any(ord(c) < 0x20 or ord(c) == 0x7F for c in local):
        raise PermanentFailure(f"local part {local!r} cannot name a Maildir")
    return root / local


def _make_private_dir(path: Path, *, parents: bool = False) -> None:
    """Create ``path`` with mode 0700 whatever the umask; an existing directory is kept
    as it is; ``FileExistsError`` if ``path`` exists and is not a directory."""
    try:
        path.mkdir(mode=PRIVATE_DIR_MODE, parents=parents)
    except FileExistsError:
        if path.is_dir():
            return
        raise
    os.chmod(path, PRIVATE_DIR_MODE)  # mkdir's mode is filtered by the umask


def deliver_to_maildir(root: Path, address: str, content: bytes) -> Path:
    """Write ``content`` into ``address``'s Maildir (tmp -> new, fsynced); the new path."""
    mailbox = mailbox_of(root, address)
    _make_private_dir(root, parents=True)
    _make_private_dir(mailbox)
    for sub in ("tmp", "new", "cur"):
        _make_private_dir(mailbox / sub)
    name = maildir_name()
    temporary = mailbox / "tmp" / name
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        final = mailbox / "new" / name
        os.rename(temporary, final)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    directory = os.open(mailbox / "new", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return final
