"""Benchmark of the outbound path end to end: 250 -> signed and encrypted -> relayed.

Usage: ``python bench/bench_outbound.py [--smoke] [--messages N] [--sessions S]
[--size BYTES] [--rate R] [--crypto-seconds S] [--dir DIR] [--crypto-workers K]``.

Issue 6 (Speed): Postfix ``smtp-source`` (``-s 20 -l 10240``, a new connection per
message) hands N messages from a local address to a clinique-b.test recipient to the
relay listener of a real ``missive serve`` (as a relay client, by IP); the secure agent
signs (organisation key) and encrypts (one recipient: ``copy_to_sender = false``) each
one; the relay stage delivers it to Postfix ``smtp-sink``. Durability is on, as
shipped: the spool fsyncs every entry and the audit trail runs ``synchronous = FULL``.

Figures, all from the same run on the same machine (it is shared and noisy: compare
the ratios to the baselines more than the absolute numbers):

- **accepted msg/s**: N / wall time of ``smtp-source`` (each ``250`` means on disk);
- **relayed msg/s**: N / (last ``relay.attempt`` delivered - first ``spool.added``), from
  the audit trail's timestamps;
- **latency p50/p99**: per message, from the ``spool.added`` of its ``received/`` entry
  (recorded just before the ``250``) to the ``relay.attempt`` ``delivered`` of its relay
  entry (linked through the relay entry's ``parent``, which is logged with ``spool.added``);
- **CPU ms/msg**: per process (``serve``, each worker by kind), the user + system CPU
  time it used during the run (``/proc/<pid>/stat``) divided by the messages of that
  run: what each stage costs per message, the figure a shared, loaded machine disturbs
  least (its wall rates halve at load average 10, its CPU times barely move);
- **RSS**: the peak resident size (``VmHWM`` of ``/proc/<pid>/status``) of ``serve`` and
  of each worker process (the agent and the relay), read just before the stop;
- baselines: ``smtp-sink``'s raw rate (the same ``smtp-source`` straight to the sink),
  and the per-core sign + encrypt rate (``gateway.smime`` ``sign`` then ``encrypt_entity``
  of a 10 KB entity, one RSA-2048 recipient, in a loop in this process).

- the peer a sysadmin would otherwise deploy (unless ``--no-postfix``): a throwaway
  Postfix (``tests/peers/postfix.py``) whose smtpd has ``content_filter`` = a ``pipe``
  service (10 processes, user nobody) running a bash script: ``openssl cms -sign``
  (organisation key) ``| openssl cms -encrypt -aes256`` (the recipient's certificate),
  reinjected over SMTP to a second, unfiltered smtpd that relays to the same sink; the
  same ``smtp-source`` burst; "relayed" is N / (start -> the N-th ``status=sent`` to the
  sink in its maillog). Missive's relayed rate divided by this one is the issue's ratio.

``--rate R`` adds a paced run: an asyncio client opens a new connection for message i
at ``t0 + i / R`` (``smtp-source`` cannot pace), and the latencies are those of that run
(the issue's target: p99 < 500 ms at 100 msg/s). A message the gateway refuses with a
4xx (``451 4.3.2``: the front sheds load on a loaded machine) is counted and reported,
not retried; the figures of the paced run are over the accepted ones.

Choices, and why: the route to the sink uses ``tls = "none"`` (the configuration allows
it; ``smtp-sink`` has no STARTTLS) and the relay listener ``tls = "none"`` (loopback
only, allowed; ``smtp-source`` has no STARTTLS either), so TLS handshakes are not in
these figures (``bench_smtp.py`` measures what STARTTLS costs the front). The secure
agents are as many processes as ``serve`` starts by default (``[gateway] crypto_workers
= 0``: one per core, ``--crypto-workers 0``); ``--crypto-workers K`` sets K.

The site is a demo site of the test suite (``tests/sites.py``: the shipped ``conf/``
on free loopback ports, ``var/`` by ``certs init-dev``), and ``serve`` runs as the
tests run it (its own session, output in ``serve.log``, stopped by PID: SIGTERM, then
SIGKILL of its process group).

``--smoke`` runs a few dozen messages (about 10 s in all) so CI proves the
benchmark runs; its numbers mean nothing. Loopback only; every process started here is
stopped by its PID in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # the demo site and the Postfix fixture of the tests

from bench_smime_signverify import identities, rate  # noqa: E402
from bench_smime_signverify import message as entity  # noqa: E402

from gateway.smime.encrypt import Recipient, encrypt_entity  # noqa: E402
from gateway.smime.sign import sign  # noqa: E402
from tests.peers.ports import free_port  # noqa: E402
from tests.sites import (  # noqa: E402
    READY,
    RunningServe,
    edit_config,
    listener_port,
    prepare_demo_site,
    serving,
)

SENDER = "alice.martin@chu-a.test"
RECIPIENT = "claire.durand@clinique-b.test"
SHIPPED_ROUTE = 'next_hop = "127.0.0.1:2526"'
SBIN = "/usr/sbin:/usr/bin"
WORKERS_STARTED = (READY, "event=agent.started", "event=relay.serving")
SERVE_SECONDS = 60.0  # to start (all of WORKERS_STARTED) and to stop: guards a hang only


# -- the site -------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    home: Path
    mx_port: int

    @property
    def audit(self) -> Path:
        return self.home / "var" / "audit.sqlite"


def prepare_site(home: Path, sink_port: int) -> Site:
    """A demo site (``tests/sites.py``: PKI, demo annuaire, keys, the organisation's
    too) with a plain relay listener and a plain route to the sink."""
    prepare_demo_site(home)
    edit_config(
        home,
        (
            'tls = "starttls"                      # RFC 3207',
            'tls = "none"\nmax_connections = 1000\nmax_connections_per_ip = 1000',
        ),
        ('client_certificate = "optional"', 'client_certificate = "none"'),
        (SHIPPED_ROUTE, f'next_hop = "127.0.0.1:{sink_port}"'),
        ('tls = "verify"                        # none', 'tls = "none" # none'),
        ("copy_to_sender = true", "copy_to_sender = false"),
    )
    return Site(home, listener_port(home, "mx"))


# -- processes ------------------------------------------------------------------------


def _wait_listening(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


@contextmanager
def smtp_sink(port: int) -> Iterator[None]:
    """Postfix's accept-and-discard sink (256 backlog), stopped by PID."""
    sink = shutil.which("smtp-sink", path=SBIN) or "smtp-sink"
    process = subprocess.Popen(
        [sink, "-u", "nobody", f"127.0.0.1:{port}", "256"], stdout=subprocess.DEVNULL
    )
    try:
        _wait_listening(port, time.monotonic() + 10)
        yield
    finally:
        process.kill()
        process.wait()


@contextmanager
def serve(site: Site) -> Iterator[RunningServe]:
    """``missive serve`` once its workers have started too, so that no start-up CPU is
    counted in the runs (``tests.sites.serving``: output in a file, so a full pipe
    never stalls it; stopped by PID, and it must exit 0 on SIGTERM)."""
    with serving(site.home, wait_for=WORKERS_STARTED, seconds=SERVE_SECONDS) as running:
        yield running


def _family(pid: int) -> Iterator[tuple[str, Path, dict[str, str]]]:
    """``pid`` and its children: a name by command line (``serve``, ``worker agent``,
    ``spool scribe``), the ``/proc`` entry and the fields of its ``status``."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if int(entry.name) != pid and int(fields["PPid"]) != pid:
            continue
        words = [word.decode(errors="replace") for word in command if word]
        name = "serve" if int(entry.name) == pid else _worker_name(words) or entry.name
        if "gateway.spool.scribe" in words:
            name = "spool scribe (serve's)"
        yield name, entry, fields


def _worker_name(words: list[str]) -> str:
    """``worker agent`` for ``python -P -m gateway worker agent --slot 0 ...`` (the
    words after ``worker``, not fixed positions: ``-P`` shifted them in the sixth
    session, and every worker then got one name, the last one read winning)."""
    if "worker" not in words:
        return ""
    at = words.index("worker")
    name = " ".join(words[at : at + 2])
    if "--slot" in words[at:-1]:  # several agents (--crypto-workers): one line each
        name += f" {words[words.index('--slot', at) + 1]}"
    return name


def peak_rss_kib(pid: int) -> dict[str, int]:
    """``VmHWM`` (kB) of ``pid`` and of its children, by command line."""
    return {name: int(fields.get("VmHWM", "0 kB").split()[0]) for name, _, fields in _family(pid)}


def cpu_seconds(pid: int) -> dict[str, tuple[float, float]]:
    """User and system CPU seconds used so far by ``pid`` and by its children, summed by
    command line (``/proc/<pid>/stat`` utime, stime). CPU time per message is the figure
    that a loaded, shared machine disturbs least (wall rates halve at load 10); the
    system part is mostly the file system (fsync, rename, unlink) and sockets."""
    tick = os.sysconf("SC_CLK_TCK")
    found: dict[str, tuple[float, float]] = {}
    for name, entry, _ in _family(pid):
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        after_name = stat.rsplit(")", 1)[1].split()
        user, system = found.get(name, (0.0, 0.0))
        found[name] = (user + int(after_name[11]) / tick, system + int(after_name[12]) / tick)
    return found


def report_cpu(
    name: str,
    messages: int,
    before: dict[str, tuple[float, float]],
    after: dict[str, tuple[float, float]],
) -> None:
    for process in sorted(after):
        user, system = after[process]
        user_before, system_before = before.get(process, (0.0, 0.0))
        user_ms = (user - user_before) * 1000 / messages
        system_ms = (system - system_before) * 1000 / messages
        _line(
            f"{name}: CPU {process}",
            f"{user_ms + system_ms:,.2f} ms/msg",
            f"user {user_ms:,.2f} + system {system_ms:,.2f}",
        )


# -- clients --------------------------------------------------------------------------


def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    """Wall seconds of ``smtp-source`` sending ``messages`` (new connection each)."""
    source = shutil.which("smtp-source", path=SBIN) or "smtp-source"
    started = time.perf_counter()
    subprocess.run(
        [source, "-s", str(sessions), "-m", str(messages), "-l", str(size),
         "-f", SENDER, "-t", RECIPIENT, "-M", "client.chu-a.test", f"127.0.0.1:{port}"],
        check=True, timeout=3600,
    )  # fmt: skip
    return time.perf_counter() - started


def _content(size: int, number: int) -> bytes:
    head = (
        f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench {number}\r\n"
        f"Message-ID: <bench-{number}@chu-a.test>\r\n\r\n"
    ).encode()
    line = b"x" * 78 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _reply(reader: asyncio.StreamReader) -> None:
    while True:
        line = await reader.readline()
        if len(line) < 4 or line[3:4] != b"-":
            if line.startswith(b"4"):
                raise Refused(f"refused: {line!r}")
            if not line.startswith((b"2", b"3")):
                raise RuntimeError(f"unexpected reply {line!r}")
            return


async def _send_one(port: int, content: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(reader)
        for command in (b"EHLO client.chu-a.test", f"MAIL FROM:<{SENDER}>".encode()):
            writer.write(command + b"\r\n")
            await _reply(reader)
        writer.write(f"RCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
        await _reply(reader)
        await _reply(reader)
        writer.write(content + b".\r\nQUIT\r\n")
        await _reply(reader)
        await _reply(reader)
    finally:
        writer.close()
        await writer.wait_closed()


class Refused(RuntimeError):
    """The gateway answered a 4xx (it sheds load: ``451 4.3.2`` past its limits)."""


async def paced_client(port: int, messages: int, per_second: float, size: int) -> tuple[float, int]:
    """Start message i at ``t0 + i / per_second`` whatever the earlier ones are doing;
    returns the wall seconds until the last answer and how many were refused with a
    4xx (counted, not retried: on a loaded machine the front sheds load)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    tasks = []
    for number in range(messages):
        await asyncio.sleep(max(0.0, started + number / per_second - loop.time()))
        tasks.append(asyncio.create_task(_send_one(port, _content(size, number))))
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException) and not isinstance(outcome, Refused):
            raise outcome
    return loop.time() - started, sum(isinstance(o, Refused) for o in outcomes)


# -- the audit trail ------------------------------------------------------------------


def _query(audit: Path, sql: str, *params: int) -> list[tuple[str, ...]]:
    connection = sqlite3.connect(f"file:{audit}?mode=ro", uri=True, timeout=30)
    try:
        return connection.execute(sql, params).fetchall()
    finally:
        connection.close()


def delivered_count(audit: Path) -> int:
    if not audit.exists():
        return 0
    rows = _query(
        audit, "SELECT count(*) FROM audit_log WHERE type = 'relay.attempt' "
        "AND outcome = 'delivered'",
    )  # fmt: skip
    return int(rows[0][0])


def wait_relayed(site: Site, expected: int, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (done := delivered_count(site.audit)) < expected:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {done} of {expected} messages relayed in {seconds:.0f}s")
        time.sleep(0.2)


@dataclass(frozen=True)
class Timeline:
    latencies: list[float]  # seconds, spool.added (received/) -> relay.attempt delivered
    span: float  # first spool.added -> last delivered
    handed: list[float]  # seconds, spool.added (received/) -> spool.added (relay entry)
    agent_span: float  # first spool.added -> last relay entry added (the agent's pace)


def timeline(audit: Path, since_seq: int) -> Timeline:
    """Link each delivered relay entry to its ``received/`` entry via ``parent``."""
    rows = _query(
        audit,
        "SELECT type, time, queue_id, json_extract(details, '$.parent'), outcome "
        "FROM audit_log WHERE seq > ? AND type IN ('spool.added', 'relay.attempt') "
        "ORDER BY seq",
        since_seq,
    )
    added: dict[str, datetime] = {}
    parent_of: dict[str, str] = {}
    delivered: dict[str, datetime] = {}
    for kind, moment, queue_id, parent, outcome in rows:
        at = datetime.fromisoformat(moment)
        if kind == "spool.added":
            added[queue_id] = at
            if parent:
                parent_of[queue_id] = parent
        elif outcome == "delivered":
            delivered[queue_id] = at
    latencies, handed = [], []
    for queue_id, at in delivered.items():
        origin = parent_of.get(queue_id)
        while origin in parent_of:  # the oldest ancestor: the received/ entry
            origin = parent_of[origin]
        if origin is None or origin not in added:
            raise RuntimeError(f"relay entry {queue_id} has no received/ ancestor")
        latencies.append((at - added[origin]).total_seconds())
        handed.append((added[queue_id] - added[origin]).total_seconds())
    first = min(added.values())
    last_handed = max(added[queue_id] for queue_id in delivered)
    return Timeline(
        sorted(latencies),
        (max(delivered.values()) - first).total_seconds(),
        sorted(handed),
        (last_handed - first).total_seconds(),
    )


def last_seq(audit: Path) -> int:
    return int(_query(audit, "SELECT coalesce(max(seq), 0) FROM audit_log")[0][0])


def percentile(values: list[float], fraction: float) -> float:
    return values[min(len(values) - 1, round(fraction * (len(values) - 1)))]


# -- the peer a sysadmin would deploy: Postfix + a pipe content filter --------------------

FILTER_SCRIPT = """\
#!/bin/bash
# Postfix pipe content filter (FILTER_README "simple" style): sign with the
# organisation key, encrypt to the recipient, reinject over SMTP to the unfiltered
# smtpd. Exit 75 (EX_TEMPFAIL) on any failure: Postfix keeps the message.
set -o pipefail
sender=$1; shift
dir={directory}
signed=$(openssl cms -sign -signer "$dir/org.crt" -inkey "$dir/org.key" \\
    -certfile "$dir/chain.pem" | openssl cms -encrypt -aes256 -from "$sender" \\
    -to "$*" -subject "[...]" "$dir/rcpt.crt" | sed 's/^\\./../') || exit 75
exec 3<>/dev/tcp/127.0.0.1/{port} || exit 75
expect() {{ while read -r line <&3; do
    case $line in $1\\ *) return 0;; $1-*) ;; *) exit 75;; esac; done; exit 75; }}
expect 220
printf 'EHLO filter.chu-a.test\\r\\n' >&3; expect 250
printf 'MAIL FROM:<%s>\\r\\n' "$sender" >&3; expect 250
for rcpt in "$@"; do printf 'RCPT TO:<%s>\\r\\n' "$rcpt" >&3; expect 250; done
printf 'DATA\\r\\n' >&3; expect 354
printf '%s\\r\\n.\\r\\n' "$signed" >&3; expect 250
printf 'QUIT\\r\\n' >&3
exit 0
"""


@contextmanager
def postfix_with_pipe_filter(site: Site, sink_port: int) -> Iterator[tuple[int, Path]]:
    """A hospital Postfix relaying to the sink through ``openssl cms`` in a pipe filter;
    yields its smtpd port and its maillog (``status=sent`` lines count deliveries)."""
    from tests.peers.postfix import TlsFiles, create_postfix_relay, destroy_postfix

    pki = site.home / "var" / "pki"
    tls = TlsFiles(pki / "mx.chu-a.test.crt", pki / "mx.chu-a.test.key", pki / "root.crt")
    instance = create_postfix_relay(("127.0.0.1", sink_port), tls, start=False)
    try:
        reinject = free_port()
        instance.main_cf |= {"smtp_tls_security_level": "none", "smtpd_tls_security_level": "none"}
        instance.write_files()
        filter_dir = instance.directory / "filter"
        filter_dir.mkdir(mode=0o700)
        shutil.copy(pki / "organisations" / "chu-a.test.sign.crt", filter_dir / "org.crt")
        shutil.copy(pki / "organisations" / "chu-a.test.sign.key", filter_dir / "org.key")
        shutil.copy(pki / "intermediates.pem", filter_dir / "chain.pem")
        shutil.copy(pki / "users" / f"{RECIPIENT}.enc.crt", filter_dir / "rcpt.crt")
        script = filter_dir / "filter.sh"
        script.write_text(FILTER_SCRIPT.format(directory=filter_dir, port=reinject))
        script.chmod(0o700)
        for path in [filter_dir, *filter_dir.iterdir()]:
            os.chown(path, 65534, 65534)
        master = instance.etc_dir / "master.cf"
        lines = master.read_text().splitlines(keepends=True)
        lines[0] = lines[0].rstrip("\n") + "\n  -o content_filter=cmsfilter:dummy\n"
        lines.append(f"127.0.0.1:{reinject} inet n - n - - smtpd\n  -o content_filter=\n")
        lines.append(
            "cmsfilter unix - n n - 10 pipe\n"
            f"  user=nobody argv={script} ${{sender}} ${{recipient}}\n"
        )
        master.write_text("".join(lines))
        old = time.time() - 60
        for path in instance.etc_dir.iterdir():
            os.utime(path, (old, old))
        instance.start()
        yield instance.port, instance.maillog_path
    finally:
        destroy_postfix(instance)


def wait_sent(maillog: Path, port: int, expected: int, seconds: float) -> None:
    marker = f":{port}, ".encode()
    deadline = time.monotonic() + seconds
    while True:
        text = maillog.read_bytes() if maillog.exists() else b""
        sent = sum(1 for line in text.splitlines() if marker in line and b"status=sent" in line)
        if sent >= expected:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"Postfix relayed {sent} of {expected} in {seconds:.0f}s")
        time.sleep(0.2)


# -- the run --------------------------------------------------------------------------


def crypto_rate(seconds: float, size: int) -> float:
    """Sign + encrypt per second on one core (the agent's work for one message)."""
    ids = identities()
    data = entity(size)
    recipients = [Recipient(ids.recipient, key_transport="rsa-oaep")]

    def sign_encrypt() -> bytes:
        return encrypt_entity(sign(data, ids.signer, ids.signer_key, [ids.ca]), recipients)

    return rate(sign_encrypt, seconds)


def _line(label: str, value: str, note: str = "") -> None:
    print(f"{label:<48}{value:>14}  {note}", flush=True)


def report_run(name: str, messages: int, seconds: float, line: Timeline) -> None:
    count = len(line.latencies)
    _line(f"{name}: accepted", f"{messages / seconds:,.0f} msg/s", f"{messages} messages")
    _line(f"{name}: relayed", f"{count / line.span:,.0f} msg/s", "first 250 -> last relayed")
    p50, p99 = percentile(line.latencies, 0.5), percentile(line.latencies, 0.99)
    _line(f"{name}: latency 250 -> relayed", f"{p50 * 1000:,.0f} ms", "p50")
    _line(f"{name}: latency 250 -> relayed", f"{p99 * 1000:,.0f} ms", "p99")
    _line(f"{name}: latency 250 -> relayed", f"{line.latencies[-1] * 1000:,.0f} ms", "max")
    _line(f"{name}: agent done", f"{count / line.agent_span:,.0f} msg/s", "first 250 -> last")
    for label, fraction in (("p50", 0.5), ("p99", 0.99)):
        value = percentile(line.handed, fraction) * 1000
        _line(f"{name}: latency 250 -> agent done", f"{value:,.0f} ms", label)


def postfix_baseline(site: Site, sink_port: int, args: argparse.Namespace) -> None:
    """The same burst through Postfix + the ``openssl cms`` pipe filter."""
    with postfix_with_pipe_filter(site, sink_port) as (port, maillog):
        started = time.perf_counter()
        seconds = smtp_source(port, args.messages, args.sessions, args.size)
        wait_sent(maillog, sink_port, args.messages, args.wait)
        relayed = time.perf_counter() - started
    _line("Postfix + openssl pipe: accepted", f"{args.messages / seconds:,.0f} msg/s")
    _line(
        "Postfix + openssl pipe: relayed",
        f"{args.messages / relayed:,.0f} msg/s",
        "start -> last sent",
    )


def run(args: argparse.Namespace, work: Path) -> None:
    sink_port = free_port()
    site = prepare_site(work / "site", sink_port)
    workers = f"crypto_workers = {args.crypto_workers} "  # agent processes
    edit_config(site.home, ("crypto_workers = 0 ", workers))
    print(f"load average before: {os.getloadavg()[0]:.1f}; {os.cpu_count()} cores", flush=True)
    crypto = crypto_rate(args.crypto_seconds, args.size)
    _line("per-core sign + encrypt (baseline)", f"{crypto:,.0f} msg/s", "10 KB, RSA-2048")
    with smtp_sink(sink_port):
        sink_seconds = smtp_source(sink_port, args.messages, args.sessions, args.size)
        _line("smtp-source -> smtp-sink (baseline)", f"{args.messages / sink_seconds:,.0f} msg/s")
        with serve(site) as running:
            process = running.process
            seq = last_seq(site.audit)
            cpu = cpu_seconds(process.pid)
            seconds = smtp_source(site.mx_port, args.messages, args.sessions, args.size)
            wait_relayed(site, args.messages, args.wait)
            burst = f"burst -s {args.sessions}"
            report_run(burst, args.messages, seconds, timeline(site.audit, seq))
            report_cpu(burst, args.messages, cpu, cpu_seconds(process.pid))
            if args.rate:
                seq = last_seq(site.audit)
                cpu = cpu_seconds(process.pid)
                paced_seconds, refused = asyncio.run(
                    paced_client(site.mx_port, args.paced_messages, args.rate, args.size)
                )
                accepted = args.paced_messages - refused
                wait_relayed(site, args.messages + accepted, args.wait)
                paced = timeline(site.audit, seq)
                name = f"paced {args.rate:g}/s"
                report_run(name, accepted, paced_seconds, paced)
                _line(f"{name}: refused (4xx, not retried)", f"{refused}")
                report_cpu(name, accepted, cpu, cpu_seconds(process.pid))
            rss = peak_rss_kib(process.pid)
        if args.postfix:
            postfix_baseline(site, sink_port, args)
    for name, kib in sorted(rss.items()):
        _line(f"peak RSS (VmHWM) {name}", f"{kib / 1024:,.1f} MiB")
    _line("peak RSS total", f"{sum(rss.values()) / 1024:,.1f} MiB")
    print(f"load average after: {os.getloadavg()[0]:.1f}", flush=True)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few dozen messages")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument("--rate", type=float, default=0.0, help="add a paced run at R msg/s")
    parser.add_argument("--paced-messages", type=int, default=1000)
    parser.add_argument("--crypto-seconds", type=float, default=2.0)
    parser.add_argument("--wait", type=float, default=600.0, help="max seconds to relay all")
    parser.add_argument(
        "--no-postfix",
        dest="postfix",
        action="store_false",
        help="skip the Postfix + openssl cms pipe filter baseline",
    )
    parser.add_argument("--dir", type=Path, default=None, help="the site goes here")
    parser.add_argument(
        "--crypto-workers",
        type=int,
        default=0,
        help="[gateway] crypto_workers (default 0, as shipped: one agent per core)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.messages, args.paced_messages, args.crypto_seconds = 30, 20, 0.5
        args.rate = args.rate or 20.0
    work = Path(tempfile.mkdtemp(prefix="mv-bench-outbound-", dir=args.dir))
    try:
        run(args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
