"""Throwaway Postfix instances on loopback: a remote MX that stores what it receives, and a
"hospital" server that relays everything to a next hop with a client certificate.

Role: write ``main.cf``/``master.cf`` into an instance dir, build the queue by hand,
run ``master`` in the foreground and stop it by PID. Two or more instances run at once
(each has its own config dir, queue, data dir, port and log).

Facts this relies on (checked with Postfix 3.7.11 on Debian 12, as root, no syslog):
- ``-c DIR`` works for root without ``alternate_config_directories``; Postfix reads
  ``/etc/postfix/postfix-files`` and ``dynamicmaps.cf`` but writes nothing under /etc.
- ``/usr/lib/postfix/sbin/master -c ETC -s`` stays in the foreground, so the Popen PID is
  the master (``postfix start-fg`` would put a postfix-script shell in between); SIGTERM
  to the master is what ``postfix stop`` does and it passes it on to its children.
- chroot is off in every master.cf line (column 5 = n); ``tlsmgr`` (else "no entropy for
  TLS key generation" and no TLS), ``proxymap`` (else smtpd stalls) and ``postlog`` (for
  ``maillog_file``) must be listed; ``pickup``/``showq`` serve ``postqueue -f``/``-p``.
- The queue layout mirrors ``postfix-files``: ``queue`` root 0755; ``active bounce
  corrupt defer deferred flush hold incoming private saved trace`` postfix 0700;
  ``maildrop`` postfix:postdrop 0730; ``public`` postfix:postdrop 0710; ``pid`` root
  0755; ``data_directory`` postfix 0700 (else "open lock file master.lock").
- A main.cf modified in the last second is "hot": Postfix re-reads it every 300 ms and
  start-up takes about 2 s instead of 0.03 s. Config files are therefore backdated.
- Fatal errors before postlogd runs go to syslog (absent here): a bad setup only shows as
  the master exiting, which the start-up wait detects with ``proc.poll()``.
- ``maillog_file`` must lie under ``maillog_file_prefixes``: both point into the instance dir.
- ``regexp:`` with ``$1`` is refused in ``virtual_mailbox_maps``; ``texthash:`` needs no
  postmap. A trailing ``/`` in a mailbox path means Maildir; mail is owned by uid 65534.
- ``smtpd_tls_req_ccert = yes`` is only enforced with ``smtpd_tls_security_level =
  encrypt``; with ``may`` it merely warns.
- Postfix sends its client certificate only when the server asks for one.
- A deferred message waits ``minimal_backoff_time`` (300 s); ``flush()`` retries now.

RFCs: the MX answers per RFC 5321 (relay refusal §3.6.2/§7.1: never an open relay, 554
for a foreign domain), STARTTLS per RFC 3207, and records TLS use in ``Received``.

Security: test-only; listeners on 127.0.0.1 only; DNS lookups of clients are off.
"""

from __future__ import annotations

import functools
import grp
import os
import pwd
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

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
DEFAULT_MX_DOMAIN = "clinique-b.test"
DEFAULT_MX_HOSTNAME = "mx.clinique-b.test"
DEFAULT_RELAY_HOSTNAME = "hospital.chu-a.test"
CATCHALL_MAILBOX = "catchall"

MASTER_CF = """\
{listen} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
tlsmgr    unix  - - n 1000? 1 tlsmgr
smtp      unix  - - n - - smtp
relay     unix  - - n - - smtp
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
showq     unix  n - n - - showq
pickup    unix  n - n 60 1 pickup
virtual   unix  - n n - - virtual
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""

QUEUE_SUBDIRS_POSTFIX_0700 = (
    "active bounce corrupt defer deferred flush hold incoming private saved trace".split()
)

Mode = Literal["mx", "relay"]


class PostfixError(RuntimeError):
    """A Postfix tool failed or an expected message did not arrive; carries the maillog."""


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for one TLS identity: certificate (leaf then chain), key, and trusted CAs."""

    cert: Path
    key: Path
    ca: Path


@dataclass
class PostfixInstance:
    """One Postfix (master + daemons) with its own config dir, queue, data dir and maillog."""

    directory: Path
    port: int
    mode: Mode
    hostname: str
    main_cf: dict[str, str]
    mailbox_map: dict[str, str] = field(default_factory=dict)
    host: str = LOOPBACK
    daemon: DaemonProcess | None = field(default=None, repr=False)

    @property
    def etc_dir(self) -> Path:
        return self.directory / "etc"

    @property
    def queue_dir(self) -> Path:
        return self.directory / "queue"

    @property
    def data_dir(self) -> Path:
        return self.directory / "data"

    @property
    def mail_dir(self) -> Path:
        """virtual_mailbox_base: one Maildir per mailbox under ``<domain>/<name>/``."""
        return self.directory / "mail"

    @property
    def maillog_path(self) -> Path:
        return self.directory / "maillog"

    @property
    def log_path(self) -> Path:
        """The master's own stdout/stderr (start-up problems)."""
        return self.directory / "master.log"

    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running()

    def maillog(self, lines: int = 60) -> str:
        """Tail of the maillog plus the master's output, for failure messages."""
        return f"{log_tail(self.maillog_path, lines)}\n-- master --\n{log_tail(self.log_path)}"

    # -- set-up --------------------------------------------------------------------------

    def write_files(self) -> None:
        """Write etc/ (backdated), build queue/ and data/, make the mail base."""
        self.etc_dir.mkdir(mode=0o755, exist_ok=True)
        listen = f"{self.host}:{self.port}"
        files = {
            "main.cf": "".join(f"{key} = {value}\n" for key, value in self.main_cf.items()),
            "master.cf": MASTER_CF.format(listen=listen),
            "vmailbox": "".join(f"{key} {value}\n" for key, value in self.mailbox_map.items()),
        }
        for name, text in files.items():
            (self.etc_dir / name).write_text(text, encoding="utf-8")
        _backdate(self.etc_dir.iterdir())
        _make_queue_dirs(self.queue_dir, self.data_dir)
        self.mail_dir.mkdir(mode=0o755, exist_ok=True)
        os.chown(self.mail_dir, MAIL_UID, MAIL_GID)

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Start the master in the foreground; ready when smtpd greets with ``220``."""
        if self.running():
            return
        argv = [str(master_binary()), "-c", str(self.etc_dir), "-s"]
        probe = greeting_probe(self.host, self.port, b"220", goodbye=b"QUIT\r\n")
        name = f"postfix {self.mode} on {self.host}:{self.port}"
        self.daemon = spawn_daemon(name, argv, self.log_path, probe)

    def stop(self) -> None:
        """SIGTERM the master, wait, SIGKILL whatever is left of its process group."""
        if self.daemon is not None:
            self.daemon.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    # -- queue and mailboxes ------------------------------------------------------------

    def postqueue(self, *args: str) -> str:
        """Run ``postqueue -c ETC ARGS`` (``-p`` lists, ``-f`` flushes, ``-j`` as JSON)."""
        argv = [require_binary("postqueue"), "-c", str(self.etc_dir), *args]
        completed = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
        if completed.returncode != 0:
            raise PostfixError(f"postqueue {' '.join(args)} failed: {completed.stderr.strip()}")
        return completed.stdout

    def flush(self) -> None:
        """Retry every deferred message now instead of after the 300 s back-off."""
        self.postqueue("-f")

    def message_paths(self, mailbox: str | None = None) -> list[Path]:
        """Delivered message files (Maildir ``new/`` and ``cur/``), oldest first.

        ``mailbox`` is an address given to ``create_postfix_mx(mailboxes=...)`` or
        ``CATCHALL_MAILBOX``; None means every mailbox.
        """
        pattern = f"*/{_mailbox_name(mailbox)}" if mailbox else "*/*"
        paths = [
            path
            for maildir in self.mail_dir.glob(pattern)
            for sub in ("new", "cur")
            for path in (maildir / sub).glob("*")
            if path.is_file()
        ]
        return sorted(paths, key=lambda path: (path.stat().st_mtime_ns, path.name))

    def messages(self, mailbox: str | None = None) -> list[bytes]:
        """Raw bytes of every delivered message, oldest first (see ``message_paths``)."""
        return [path.read_bytes() for path in self.message_paths(mailbox)]

    def wait_for_messages(
        self, count: int, timeout: float = 20.0, mailbox: str | None = None
    ) -> list[bytes]:
        """Wait until at least ``count`` messages are stored; raise with the maillog if not.

        The timeout is a deadline for a hang, not a speed check (delivery takes ~50 ms).
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(mailbox)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline or not self.running():
                raise PostfixError(
                    f"{len(found)} of {count} messages stored after {timeout:g} s "
                    f"(running: {self.running()}); maillog:\n{self.maillog()}"
                )
            time.sleep(0.02)


@functools.cache
def master_binary() -> Path:
    """Postfix's ``master``, found in the compiled-in ``daemon_directory`` (``postconf -d``)."""
    postconf = require_binary("postconf")
    completed = subprocess.run(
        [postconf, "-d", "-h", "daemon_directory"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    master = Path(completed.stdout.strip()) / "master"
    if completed.returncode != 0 or not master.is_file():
        raise PostfixError(f"Postfix master not found ({completed.stderr.strip() or master})")
    return master


def _mailbox_name(address: str | None) -> str:
    """Maildir folder name for an address (its local part), or the catch-all name."""
    if address is None or address == CATCHALL_MAILBOX:
        return CATCHALL_MAILBOX
    return address.split("@", 1)[0]


def _backdate(paths: Iterable[Path], seconds: int = 60) -> None:
    """Set mtimes in the past so Postfix does not treat the config as "hot"."""
    past = time.time() - seconds
    for path in paths:
        os.utime(path, (past, past))


def _make_queue_dirs(queue_dir: Path, data_dir: Path) -> None:
    """Create the queue tree with the owners and modes of ``postfix-files``."""
    postfix_uid = pwd.getpwnam("postfix").pw_uid
    postfix_gid = grp.getgrnam("postfix").gr_gid
    postdrop_gid = grp.getgrnam("postdrop").gr_gid
    layout: list[tuple[Path, int, int, int]] = [
        (queue_dir, 0, 0, 0o755),
        (queue_dir / "pid", 0, 0, 0o755),
        (queue_dir / "maildrop", postfix_uid, postdrop_gid, 0o730),
        (queue_dir / "public", postfix_uid, postdrop_gid, 0o710),
        (data_dir, postfix_uid, postfix_gid, 0o700),
    ]
    layout += [
        (queue_dir / name, postfix_uid, postfix_gid, 0o700) for name in QUEUE_SUBDIRS_POSTFIX_0700
    ]
    for path, uid, gid, mode in layout:
        path.mkdir(exist_ok=True)
        os.chown(path, uid, gid)
        path.chmod(mode)


def _common_main_cf(directory: Path, hostname: str) -> dict[str, str]:
    return {
        "compatibility_level": "3.6",
        "queue_directory": str(directory / "queue"),
        "data_directory": str(directory / "data"),
        "mail_owner": "postfix",
        "myhostname": hostname,
        "mydestination": "",
        "inet_interfaces": LOOPBACK,
        "inet_protocols": "ipv4",
        "maillog_file": str(directory / "maillog"),
        "maillog_file_prefixes": str(directory),
        "alias_maps": "",
        "alias_database": "",
        "biff": "no",
        "smtpd_banner": "$myhostname ESMTP",
        "smtpd_peername_lookup": "no",
        "append_dot_mydomain": "no",
        "smtp_tls_loglevel": "1",
        "smtpd_tls_loglevel": "1",
        "smtpd_tls_received_header": "yes",
    }


def _build_and_start(instance: PostfixInstance, start: bool) -> PostfixInstance:
    try:
        instance.write_files()
        if start:
            instance.start()
    except BaseException:
        destroy_postfix(instance)
        raise
    return instance


def create_postfix_mx(
    tls: TlsFiles,
    *,
    domain: str = DEFAULT_MX_DOMAIN,
    hostname: str = DEFAULT_MX_HOSTNAME,
    mailboxes: Sequence[str] = (),
    require_client_cert: bool = False,
    start: bool = True,
) -> PostfixInstance:
    """A remote MX for ``domain`` that stores every message in Maildirs.

    Each address of ``mailboxes`` gets its own Maildir; any other address of ``domain``
    goes to the catch-all one. STARTTLS is offered with ``tls`` and a client certificate
    asked for (verified against ``tls.ca``); ``require_client_cert`` makes TLS and a
    verified client certificate mandatory (level encrypt + req_ccert). Nothing is ever
    sent onwards: ``default_transport`` is ``error``, so no bounce triggers DNS.
    """
    directory = make_temp_dir("mv-pfmx-")
    port = free_port()
    main_cf = _common_main_cf(directory, hostname)
    main_cf |= {
        "mynetworks": "127.0.0.1/32",
        "smtpd_relay_restrictions": "reject_unauth_destination",
        "virtual_mailbox_domains": domain,
        "virtual_mailbox_base": str(directory / "mail"),
        "virtual_mailbox_maps": f"texthash:{directory / 'etc' / 'vmailbox'}",
        "virtual_uid_maps": f"static:{MAIL_UID}",
        "virtual_gid_maps": f"static:{MAIL_GID}",
        "default_transport": "error:this test MX delivers nothing onwards",
        "smtpd_tls_security_level": "encrypt" if require_client_cert else "may",
        "smtpd_tls_cert_file": str(tls.cert),
        "smtpd_tls_key_file": str(tls.key),
        "smtpd_tls_CAfile": str(tls.ca),
        "smtpd_tls_ask_ccert": "yes",
        "smtpd_tls_req_ccert": "yes" if require_client_cert else "no",
    }
    instance = PostfixInstance(directory, port, "mx", hostname, main_cf)
    instance.mailbox_map = {
        address: f"{domain}/{_mailbox_name(address)}/" for address in mailboxes
    } | {f"@{domain}": f"{domain}/{CATCHALL_MAILBOX}/"}
    return _build_and_start(instance, start)


def create_postfix_relay(
    next_hop: tuple[str, int],
    tls: TlsFiles,
    *,
    hostname: str = DEFAULT_RELAY_HOSTNAME,
    tls_level: Literal["encrypt", "verify"] = "encrypt",
    start: bool = True,
) -> PostfixInstance:
    """A hospital mail server that relays everything from 127.0.0.0/8 to ``next_hop``.

    Outbound: ``relayhost = [host]:port`` (brackets: no MX lookup), TLS mandatory at
    ``tls_level`` with ``tls.cert``/``tls.key`` as client certificate and ``tls.ca`` to
    check the next hop when the level is ``verify``. Inbound: its smtpd on its own port
    accepts from loopback only and also offers STARTTLS with the same certificate.
    """
    host, hop_port = next_hop
    directory = make_temp_dir("mv-pfrl-")
    port = free_port()
    main_cf = _common_main_cf(directory, hostname)
    main_cf |= {
        "mynetworks": "127.0.0.0/8",
        "smtpd_relay_restrictions": "permit_mynetworks, reject",
        "relayhost": f"[{host}]:{hop_port}",
        "smtp_tls_security_level": tls_level,
        "smtp_tls_cert_file": str(tls.cert),
        "smtp_tls_key_file": str(tls.key),
        "smtp_tls_CAfile": str(tls.ca),
        "smtpd_tls_security_level": "may",
        "smtpd_tls_cert_file": str(tls.cert),
        "smtpd_tls_key_file": str(tls.key),
    }
    instance = PostfixInstance(directory, port, "relay", hostname, main_cf)
    return _build_and_start(instance, start)


def destroy_postfix(instance: PostfixInstance) -> None:
    """Stop Postfix (if running) and remove its directory."""
    try:
        instance.stop()
    finally:
        remove_temp_dir(instance.directory)


RECIPIENT_ACCESS = "recipient_access"


def set_recipient_access(instance: PostfixInstance, replies: dict[str, str]) -> None:
    """Make smtpd answer ``RCPT TO:<address>`` with ``replies[address]`` (a full reply
    such as ``"450 4.2.1 mailbox busy"``; other addresses as before), through a
    ``check_recipient_access texthash:`` table in the instance's etc/ (texthash needs no
    postmap). Files are rewritten at once; a running instance reads them at its next
    ``restart()`` (smtpd keeps the table it opened)."""
    table = instance.etc_dir / RECIPIENT_ACCESS
    instance.main_cf["smtpd_recipient_restrictions"] = (
        f"check_recipient_access texthash:{table}, permit_mynetworks, reject_unauth_destination"
    )
    instance.write_files()
    table.write_text("".join(f"{a} {r}\n" for a, r in replies.items()), encoding="utf-8")
    _backdate([table])
