"""Demo Missive sites on loopback, prepared and run one way for tests and benchmarks.

Role: the one place that turns the shipped ``conf/`` into a site in a temporary home
and runs ``missive serve`` on it, for the end-to-end tests (``tests/cli``,
``tests/relay``) and the benchmarks (``bench/bench_outbound.py``,
``bench/bench_consumers.py`` import it: run as scripts, they put the repository on
``sys.path`` first).

A *demo site* is a home directory holding:

- ``conf/``: a copy of the shipped one, its three fixed listener ports (2587, 2465,
  2525) moved to free loopback ports (``tests.peers.ports``), so that several sites and
  several test runs on one machine never collide; callers edit it further with
  :func:`edit_config`, whose every edit must match the shipped text exactly once (a
  changed ``conf/missive.toml`` fails loudly instead of silently testing something else);
- ``var/``: what ``./run`` prepares, ``missive certs init-dev var/pki --demo-annuaire
  var/annuaire.ldif --keys-dir var/keys``: the dev PKI (or, when given, a copy of the
  session's dev PKI that ``init-dev`` completes: a test then holds the very keys the
  annuaire publishes), the demo annuaire and the key store with the organisation's
  signing key.

Running it: :func:`serving` starts ``missive serve`` in its own session (its process
group is its PID; its stage workers run in sessions of their own, and stop by themselves
within about a second once serve is gone: ``worker.orphaned``) with its output in ``serve.log`` in
the home (a file, never a pipe that could fill and stall it), waits until its output
holds ``event=gateway.ready`` (and any other marker asked for), and at the end of the
block stops it by PID: SIGTERM, and it must exit with status 0 within the time given;
in every case (failure included) a SIGKILL to its process group then removes anything
left. A deadline only guards a hang: nothing here measures time.

Talking to a site: :func:`missive` runs a command in its home;
:func:`send_as_relay_client` hands a message (:func:`letter` makes a plain one) to its
``mx`` listener over verified STARTTLS, as a hospital MTA does. Reading what a site
stored: :func:`exported_audit` (the trail as the CLI exports it), :func:`enveloped_der`
(the S/MIME body of a stored message) and :func:`readable_views` (every form in which
stored mail bytes could show a secret in clear: the tests that check nothing crosses
or rests in clear search all of them).

Failures raise :class:`SiteError`, an ``AssertionError``: pytest reports it as a failed
check, with serve's output in the message; it is raised explicitly, so it holds under
``python -O`` too (the benchmarks).

Security: loopback only (every listener stays on 127.0.0.1; only the port changes);
the dev PKI is for tests only.
"""

from __future__ import annotations

import base64
import email
import email.policy
import json
import os
import shutil
import signal
import smtplib
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

from tests.peers.ports import free_ports

REPOSITORY = Path(__file__).resolve().parents[1]
MISSIVE = (sys.executable, "-m", "gateway")
CONFIG = "conf/missive.toml"  # relative to a site's home: commands run there
SHIPPED_LISTENER_PORTS = (2587, 2465, 2525)  # submission, submissions, mx
READY = "event=gateway.ready"
COMMAND_SECONDS = 60.0  # guards a hung command only
INIT_DEV_SECONDS = 120.0  # key generation on a loaded, shared machine
SERVE_SECONDS = 30.0  # to be ready, and to stop after SIGTERM: guards a hang only


class SiteError(AssertionError):
    """A demo site could not be prepared, or its ``serve`` did not start or stop well."""


# -- commands on a site -------------------------------------------------------------------


def missive(
    home: Path, *args: str, stdin: str | None = None, timeout: float = COMMAND_SECONDS
) -> subprocess.CompletedProcess[str]:
    """``missive ARGS`` run in ``home``, output captured as text, status not checked."""
    command = [*MISSIVE, *args]
    return subprocess.run(
        command, cwd=home, input=stdin, capture_output=True, text=True, timeout=timeout, check=False
    )


def exported_audit(home: Path) -> list[dict[str, object]]:
    """The site's audit trail as the CLI gives it: ``audit verify`` must pass, then
    ``audit export --format jsonl`` (one record a line)."""
    verified = missive(home, "audit", "verify", "--config", CONFIG)
    if verified.returncode != 0:
        raise SiteError("audit verify failed:\n" + verified.stdout + verified.stderr)
    exported = missive(home, "audit", "export", "--config", CONFIG, "--format", "jsonl")
    if exported.returncode != 0:
        raise SiteError("audit export failed:\n" + exported.stderr)
    return [json.loads(line) for line in exported.stdout.splitlines()]


def readable_views(data: bytes) -> list[bytes]:
    """``data`` lower-cased, then each MIME part of it decoded and each line of it read
    as base64 (where it is base64), lower-cased: where a secret in clear would show."""
    views = [data.lower()]
    for part in email.message_from_bytes(data, policy=email.policy.default).walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            views.append(payload.lower())
    for line in data.split(b"\n"):
        try:
            views.append(base64.b64decode(line.strip(), validate=True).lower())
        except ValueError:
            continue  # not a base64 line
    return views


def enveloped_der(stored: bytes) -> bytes:
    """The CMS EnvelopedData (DER) of a stored S/MIME message: it must be
    ``application/pkcs7-mime; smime-type=enveloped-data`` (RFC 8551 §3.3)."""
    parsed = email.message_from_bytes(stored, policy=email.policy.default)
    content_type = (parsed.get_content_type(), parsed.get_param("smime-type"))
    if content_type != ("application/pkcs7-mime", "enveloped-data"):
        raise SiteError(f"not S/MIME enveloped-data: {content_type!r}")
    payload = parsed.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise SiteError("the enveloped-data part has no body")
    return payload


# -- preparing a site ---------------------------------------------------------------------


def prepare_demo_site(
    home: Path, *, session_pki: Path | None = None, free_listeners: bool = True
) -> Path:
    """A demo site in ``home`` (created): the shipped ``conf/``, ``var/`` as ``certs
    init-dev`` prepares it (on a copy of ``session_pki`` when given), the listeners on
    free ports unless ``free_listeners`` is false (a template that
    :func:`copy_demo_site` copies: each copy gets its own ports). Returns ``home``."""
    shutil.copytree(REPOSITORY / "conf", home / "conf")
    if session_pki is not None:
        shutil.copytree(session_pki, home / "var" / "pki")
    if free_listeners:
        move_listeners_to_free_ports(home)
    init_dev(home)
    return home


def copy_demo_site(template: Path, home: Path) -> Path:
    """A copy of the site ``template`` in ``home`` (created), its listeners on ports of
    its own. Returns ``home``."""
    shutil.copytree(template, home)
    move_listeners_to_free_ports(home)
    return home


def init_dev(home: Path) -> None:
    """``certs init-dev`` as ``./run`` runs it: dev PKI in ``var/pki`` (completed if
    there), demo annuaire, key store with the organisation's signing key."""
    prepared = missive(
        home,
        "certs",
        "init-dev",
        "var/pki",
        "--demo-annuaire",
        "var/annuaire.ldif",
        "--keys-dir",
        "var/keys",
        timeout=INIT_DEV_SECONDS,
    )
    if prepared.returncode != 0:
        raise SiteError("certs init-dev failed:\n" + prepared.stderr)


def move_listeners_to_free_ports(home: Path) -> dict[int, int]:
    """Each shipped listener port of the site's configuration replaced by a free
    loopback port; returns ``{shipped port: new port}``."""
    moved = dict(zip(SHIPPED_LISTENER_PORTS, free_ports(len(SHIPPED_LISTENER_PORTS)), strict=True))
    edit_config(
        home,
        *(
            (f'address = "127.0.0.1:{shipped}"', f'address = "127.0.0.1:{port}"')
            for shipped, port in moved.items()
        ),
    )
    return moved


def edit_config(home: Path, *edits: tuple[str, str]) -> None:
    """Each ``(old, new)`` applied to the site's configuration; ``old`` must be there
    exactly once (else :class:`SiteError`: the shipped file changed)."""
    path = home / CONFIG
    text = path.read_text(encoding="utf-8")
    for old, new in edits:
        text = replace_once(text, old, new)
    path.write_text(text, encoding="utf-8")


def replace_once(text: str, old: str, new: str) -> str:
    """``text`` with its one occurrence of ``old`` replaced by ``new``."""
    found = text.count(old)
    if found != 1:
        raise SiteError(f"{old!r} is in the configuration {found} times, not once")
    return text.replace(old, new)


def listener_port(home: Path, name: str) -> int:
    """The loopback port of the site's listener called ``name``."""
    toml = (home / CONFIG).read_text(encoding="utf-8")
    block = toml.split(f'name = "{name}"', 1)[1]
    return int(block.split('address = "127.0.0.1:', 1)[1].split('"', 1)[0])


def letter(sender: str, recipient: str, subject: str, body: str, message_id: str) -> EmailMessage:
    """A plain text message from ``sender`` to ``recipient``, as a hospital MTA hands it."""
    message = EmailMessage()
    message["From"] = sender
    message["To"] = recipient
    message["Subject"] = subject
    message["Message-ID"] = message_id
    message.set_content(body)
    return message


def send_as_relay_client(
    home: Path, sender: str, recipients: list[str], message: EmailMessage | bytes
) -> dict[str, tuple[int, bytes]]:
    """A hospital MTA on 127.0.0.1 (a relay client, by IP) hands ``message`` to the
    site's ``mx`` listener over STARTTLS, verified against the site's dev root (the
    listener's certificate names 127.0.0.1); returns the refused recipients."""
    context = ssl.create_default_context(cafile=home / "var" / "pki" / "root.crt")
    with smtplib.SMTP("127.0.0.1", listener_port(home, "mx"), timeout=30) as client:
        client.starttls(context=context)
        if isinstance(message, EmailMessage):
            return client.send_message(message, sender, recipients)
        return client.sendmail(sender, recipients, message)


# -- running serve ------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningServe:
    """A ``missive serve`` started by :func:`serving`, and the file of its output."""

    process: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def line_with(self, marker: str) -> str:
        """The first line of serve's output that holds ``marker``."""
        for line in self.output().splitlines():
            if marker in line:
                return line
        raise SiteError(f"no {marker!r} in serve's output:\n" + self.output())


@contextmanager
def serving(
    home: Path, *, wait_for: Sequence[str] = (READY,), seconds: float = SERVE_SECONDS
) -> Iterator[RunningServe]:
    """``missive serve`` on the site in ``home`` until the block ends, once its output
    holds every marker of ``wait_for``; then SIGTERM, and it must exit 0 within
    ``seconds``. Its process group is killed in every case."""
    running = start_serve(home)
    try:
        wait_for_output(running, wait_for, time.monotonic() + seconds)
        yield running
        status = terminate(running.process, seconds)
        if status is None:
            raise SiteError(f"serve still running {seconds:g} s after SIGTERM")
        if status != 0:
            raise SiteError(f"serve exited with {status} on SIGTERM:\n" + running.output())
    finally:
        kill_process_group(running.process)


def start_serve(home: Path) -> RunningServe:
    """``missive serve`` in its own session (process group = its PID), its output in
    ``serve.log`` in ``home``. The caller must stop it (see :func:`serving`)."""
    log = home / "serve.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*MISSIVE, "serve", "--config", CONFIG],
            cwd=home,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    return RunningServe(process, log)


def wait_for_output(running: RunningServe, markers: Sequence[str], deadline: float) -> None:
    """Until serve's output holds every one of ``markers``; :class:`SiteError` if serve
    exits first or ``deadline`` (``time.monotonic()``) passes."""
    while not all(marker in running.output() for marker in markers):
        if running.process.poll() is not None:
            raise SiteError("serve exited early:\n" + running.output())
        if time.monotonic() > deadline:
            raise SiteError(f"no {list(markers)!r} in serve's output:\n" + running.output())
        time.sleep(0.05)


# -- stopping by PID ----------------------------------------------------------------------


def terminate(process: subprocess.Popen[bytes], seconds: float = SERVE_SECONDS) -> int | None:
    """SIGTERM to ``process`` (if still running) and its exit status, or None if it
    is still running after ``seconds``."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        return None


def stop(process: subprocess.Popen[bytes], seconds: float = SERVE_SECONDS) -> None:
    """SIGTERM, then SIGKILL if ``process`` has not exited after ``seconds``."""
    if terminate(process, seconds) is None:
        process.kill()
        process.wait()


def kill_process_group(process: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the process group that ``process`` leads (started with
    ``start_new_session``), if any member is left. serve's workers are not in it: they
    stop by themselves once serve is gone (``worker.orphaned``)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass  # serve and every worker already gone
    process.wait()
