"""A throwaway Dovecot on loopback: LMTP in, IMAP and IMAPS out, passwd-file users.

Role: the hospital's mail store in tests. The gateway delivers inbound mail to it over
LMTP (RFC 2033); tests read it back over IMAP (RFC 9051) with ``imaplib``.

Facts this relies on (checked with Dovecot 2.3.19.1 on Debian 12, as root, no syslog):
- The config is self-contained (no ``!include`` of /etc/dovecot); ``base_dir`` and
  ``instance_name`` are per instance, so two instances run at once. ``instance_name`` is
  the temp dir name, which Dovecot puts in every process title: ``pgrep -f`` on the dir
  name finds all of an instance's processes.
- ``log_path`` defaults to syslog, lost without /dev/log: logs go to stderr, i.e. the log
  file of the master. ``auth_failure_delay = 0`` (default 2 s per failed login).
- ``default_internal_user``/``default_login_user = nobody`` and ``default_internal_group
  = nogroup`` avoid needing the package's dovecot/dovenull users. Mail is stored as uid
  65534 (``first_valid_uid`` is 500 by default: 65534 passes, 100 would not), and the
  mail dir must be owned by it (else LMTP answers 451 after an mkdir EACCES).
- The instance dir must be 0755: the auth process runs as another uid ("missing +x
  perm", LMTP 451, IMAP "Temporary authentication failure" otherwise). Unix sockets live
  under ``base_dir`` and must fit in 108 bytes, hence a short /tmp path.
- ``ssl`` must be set explicitly: left out, Dovecot starts, advertises STARTTLS and then
  fails every handshake ("SSL context initialization failed").
- Ready = the IMAP ``* OK`` greeting and the LMTP ``220`` greeting: imap-login accepts
  TCP before auth is up and holds the greeting back until then.
- Stop: SIGTERM to the master, which exits after about 1.1 s; an open client connection
  keeps imap-login/auth/log alive for about 30 s more, so clients opened through this
  module are logged out first and the process group is SIGKILLed after the master exits.
- ``smtplib.LMTP.sendmail()`` is wrong with several recipients: after DATA, LMTP sends one
  reply per accepted recipient (RFC 2033 §4.2) and smtplib reads only the first, so the
  leftovers surface as answers to later commands. ``lmtp_send`` reads them all.

Security: test-only; plaintext passwords in a passwd-file inside the temp dir; plaintext
login is allowed on the loopback IMAP port (IMAPS is there for TLS tests).
"""

from __future__ import annotations

import imaplib
import os
import smtplib
import ssl
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from tests.peers.ports import LOOPBACK, free_port
from tests.peers.procs import (
    DaemonProcess,
    greeting_probe,
    log_tail,
    make_temp_dir,
    remove_temp_dir,
    require_binary,
    spawn_daemon,
)

MAIL_UID = 65534
MAIL_GID = 65534
DEFAULT_USERS: Mapping[str, str] = {"alice@chu-a.test": "alice-imap-pw"}

CONFIG_TEMPLATE = """\
protocols = imap lmtp
listen = {host}
base_dir = {d}/run
state_dir = {d}/state
instance_name = {instance}
log_path = /dev/stderr
info_log_path = /dev/stderr
default_internal_user = nobody
default_login_user = nobody
default_internal_group = nogroup
ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_failure_delay = 0
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {d}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {d}/users
  default_fields = uid={uid} gid={gid} home={d}/mail/%d/%n
}}
mail_location = maildir:~/Maildir
service imap-login {{
  inet_listener imap {{
    address = {host}
    port = {imap_port}
  }}
  inet_listener imaps {{
    address = {host}
    port = {imaps_port}
    ssl = yes
  }}
}}
service lmtp {{
  inet_listener lmtp {{
    address = {host}
    port = {lmtp_port}
  }}
}}
"""


class LmtpError(RuntimeError):
    """The LMTP server refused the envelope as a whole (MAIL FROM or every recipient)."""


@dataclass(frozen=True)
class LmtpResult:
    """Per-recipient outcome of one LMTP transaction (RCPT reply, or the DATA reply)."""

    replies: dict[str, tuple[int, bytes]]

    def accepted(self) -> list[str]:
        return [rcpt for rcpt, (code, _) in self.replies.items() if 200 <= code < 300]


def lmtp_send(
    host: str, port: int, sender: str, recipients: Sequence[str], message: bytes
) -> LmtpResult:
    """Deliver ``message`` over LMTP and return one reply per recipient (RFC 2033 §4.2).

    A recipient refused at RCPT keeps that reply; each accepted one gets its own reply
    after DATA, in RCPT order. ``message`` is sent with CRLF line ends (bare LF converted).
    """
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    replies: dict[str, tuple[int, bytes]] = {}
    with smtplib.LMTP(host, port, timeout=30) as client:
        client.ehlo_or_helo_if_needed()
        code, text = client.mail(sender)
        if code != 250:
            raise LmtpError(f"MAIL FROM refused: {code} {text!r}")
        accepted = []
        for rcpt in recipients:
            replies[rcpt] = client.rcpt(rcpt)
            if replies[rcpt][0] in (250, 251):
                accepted.append(rcpt)
        if not accepted:
            client.rset()
            return LmtpResult(replies)
        replies[accepted[0]] = client.data(data)
        for rcpt in accepted[1:]:
            replies[rcpt] = client.getreply()
    return LmtpResult(replies)


@dataclass
class DovecotInstance:
    """One Dovecot (master + login, auth, lmtp, imap processes) with its own dir and ports."""

    directory: Path
    imap_port: int
    imaps_port: int
    lmtp_port: int
    cert: Path
    key: Path
    users: dict[str, str]
    host: str = LOOPBACK
    daemon: DaemonProcess | None = field(default=None, repr=False)
    _clients: list[imaplib.IMAP4] = field(default_factory=list, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.directory / "dovecot.conf"

    @property
    def log_path(self) -> Path:
        return self.directory / "dovecot.log"

    @property
    def mail_dir(self) -> Path:
        return self.directory / "mail"

    @property
    def instance_name(self) -> str:
        return self.directory.name

    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running()

    def log(self, lines: int = 40) -> str:
        return log_tail(self.log_path, lines)

    # -- set-up --------------------------------------------------------------------------

    def write_files(self) -> None:
        """Write dovecot.conf and the passwd-file; make the mail dir owned by uid 65534."""
        self.conf_path.write_text(
            CONFIG_TEMPLATE.format(
                d=self.directory,
                host=self.host,
                instance=self.instance_name,
                cert=self.cert,
                key=self.key,
                uid=MAIL_UID,
                gid=MAIL_GID,
                imap_port=self.imap_port,
                imaps_port=self.imaps_port,
                lmtp_port=self.lmtp_port,
            ),
            encoding="utf-8",
        )
        self.write_users()
        self.mail_dir.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.mail_dir, MAIL_UID, MAIL_GID)

    def write_users(self) -> None:
        """(Re)write the passwd-file; Dovecot re-reads it when it changes."""
        lines = [
            f"{address}:{{PLAIN}}{password}::::::\n" for address, password in self.users.items()
        ]
        users_path = self.directory / "users"
        users_path.write_text("".join(lines), encoding="utf-8")
        users_path.chmod(0o644)

    def add_user(self, address: str, password: str) -> None:
        self.users[address] = password
        self.write_users()

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start ``dovecot -F``; ready when IMAP says ``* OK`` and LMTP says ``220``."""
        if self.running():
            return
        argv = [require_binary("dovecot"), "-F", "-c", str(self.conf_path)]
        imap_ready = greeting_probe(self.host, self.imap_port, b"* OK", goodbye=b"a LOGOUT\r\n")
        lmtp_ready = greeting_probe(self.host, self.lmtp_port, b"220", goodbye=b"QUIT\r\n")

        def both_ready() -> bool:
            return imap_ready() and lmtp_ready()

        name = f"dovecot on {self.host}:{self.imap_port}"
        self.daemon = spawn_daemon(name, argv, self.log_path, both_ready)

    def stop(self) -> None:
        """Log out our clients, SIGTERM the master, then SIGKILL what is left of the group."""
        for client in self._clients:
            _close_quietly(client)
        self._clients.clear()
        if self.daemon is not None:
            self.daemon.stop()

    # -- clients -------------------------------------------------------------------------

    def lmtp_send(self, sender: str, recipients: Sequence[str], message: bytes) -> LmtpResult:
        """``lmtp_send`` to this instance's LMTP listener."""
        return lmtp_send(self.host, self.lmtp_port, sender, recipients, message)

    def imap(self) -> imaplib.IMAP4:
        """A plain IMAP connection (not logged in); closed at ``stop()`` if still open."""
        client = imaplib.IMAP4(self.host, self.imap_port, timeout=30)
        self._clients.append(client)
        return client

    def imaps(self, cafile: Path) -> imaplib.IMAP4_SSL:
        """An IMAPS connection verifying the server against ``cafile`` (hostname not checked:
        tests connect to 127.0.0.1, which the server certificate also names as an IP SAN)."""
        context = ssl.create_default_context(cafile=str(cafile))
        client = imaplib.IMAP4_SSL(self.host, self.imaps_port, ssl_context=context, timeout=30)
        self._clients.append(client)
        return client

    def fetch_all(self, address: str, *, cafile: Path | None = None) -> list[bytes]:
        """Every message in ``address``'s INBOX (over IMAPS if ``cafile`` else IMAP)."""
        client = self.imaps(cafile) if cafile is not None else self.imap()
        try:
            client.login(address, self.users[address])
            client.select("INBOX", readonly=True)
            _, data = client.search(None, "ALL")
            messages = []
            for number in data[0].split():
                _, parts = client.fetch(number, "(BODY.PEEK[])")
                messages.append(_fetched_body(parts))
            client.logout()
        finally:
            _close_quietly(client)
        return messages


def _fetched_body(parts: Sequence[object]) -> bytes:
    """The literal of a FETCH BODY[] answer.

    imaplib returns ``[(b'1 (BODY[] {n}', literal), b')']``.
    """
    for part in parts:
        if isinstance(part, tuple) and len(part) == 2 and isinstance(part[1], bytes):
            return part[1]
    raise ValueError(f"no message literal in FETCH answer {parts!r}")


def _close_quietly(client: imaplib.IMAP4) -> None:
    """Close a client's socket whatever state it is in (already logged out is fine)."""
    try:
        client.shutdown()
    except OSError:
        pass


def create_dovecot(
    tls_cert: Path,
    tls_key: Path,
    *,
    users: Mapping[str, str] = DEFAULT_USERS,
    start: bool = True,
) -> DovecotInstance:
    """Make a dir, write the config and users, start Dovecot. ``destroy_dovecot`` it after."""
    directory = make_temp_dir("mv-dc-")
    imap_port, imaps_port, lmtp_port = free_port(), free_port(), free_port()
    instance = DovecotInstance(
        directory, imap_port, imaps_port, lmtp_port, tls_cert, tls_key, dict(users)
    )
    try:
        instance.write_files()
        if start:
            instance.start()
    except BaseException:
        destroy_dovecot(instance)
        raise
    return instance


def destroy_dovecot(instance: DovecotInstance) -> None:
    """Stop Dovecot (if running) and remove its directory."""
    try:
        instance.stop()
    finally:
        remove_temp_dir(instance.directory)
