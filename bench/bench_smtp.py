"""Benchmark of the SMTP front: accepted messages per second, spooled durably before 250.

Usage: ``python bench/bench_smtp.py [--smoke] [--messages N] [--sessions S] [--size BYTES]
[--rounds R] [--dir DIR] [--audit-sync FULL|NORMAL]``.

Every figure comes with baselines measured in the same run, on the same machine, with the
same client (the machine is shared and noisy: compare ratios, not absolute numbers):

TLS off, client Postfix ``smtp-source -s 20 -l 10240`` (a new connection per message):

1. ``smtp-sink`` (Postfix's accept-and-discard sink): the ceiling of the client;
2. **bare aiosmtpd** (baseline): aiosmtpd 1.4.6 with a ``handle_DATA`` that discards;
3. **Missive front only**: the relay listener with a queue that discards at commit (no
   disk, no audit): what the front itself costs, for attribution;
4. **Missive relay listener**: the whole front (ESMTP parsing, relay policy, DATA
   streaming, bare CR/LF checks) with the real durable spool (fsync of the file,
   group-committed fsync of ``incoming/``) and the real audit trail (SQLite,
   ``synchronous = FULL``): "250 means on disk". As ``missive serve`` runs it: the
   spool is written by the front's spool scribe, a child process
   (``gateway.spool.scribe``);
5. **Missive relay listener, spool written in process**: the same with the spool
   written by the front's own I/O threads (what ``serve`` did before the scribe), for
   comparison.

TLS on: ``smtp-source`` has no STARTTLS, so one Python asyncio client (S sessions, a new
connection and a STARTTLS handshake per message) drives bare aiosmtpd with STARTTLS and
the Missive relay listener with STARTTLS; the client's own CPU is in both figures.

``--rounds R`` runs the whole sequence R times and reports, per case, the median rate
and the median (and range) of the ratios, each against the baseline of its own round:
on a shared machine one slow baseline can move a single ratio by 20 points or more.

Each case also reports the CPU time of this process (user + system, ``getrusage``) per
message, the figure a loaded machine disturbs least: the servers run in this process,
so it is what the server costs per message (with TLS on, the Python client's CPU is in
it too; ``smtp-source`` and ``smtp-sink`` are other processes, not counted), plus the
scribe's (from ``/proc/PID/stat``) where there is one.

Target (issue 5): Missive >= 70 % of bare aiosmtpd. ``--smoke`` runs each case with a
few messages so CI proves the benchmark runs; its numbers mean nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import shutil
import ssl
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiosmtpd.smtp import SMTP

from gateway.audit import AuditSink
from gateway.config import Config, load_config
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.smime.validate import CertificateValidator
from gateway.smtp.listener import start_listeners
from gateway.spool import RECEIVED, Spool
from gateway.spool.scribe_client import ScribeQueue

SENDER = "someone@clinique-b.test"
RECIPIENT = "alice.martin@chu-a.test"


@dataclass(frozen=True)
class Result:
    case: str
    messages: int
    seconds: float
    baseline: str | None = None
    cpu_seconds: float = 0.0  # user + system of this process during the case

    @property
    def per_second(self) -> float:
        return self.messages / self.seconds

    @property
    def cpu_ms_per_message(self) -> float:
        return 1000 * self.cpu_seconds / self.messages


# -- servers --------------------------------------------------------------------------


class _Discard:
    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        return "250 OK"


@asynccontextmanager
async def bare_aiosmtpd(context: ssl.SSLContext | None, port: int = 0) -> AsyncIterator[int]:
    """A bare aiosmtpd that accepts and discards, on ``port`` (0: any); yields the port."""
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(_Discard(), hostname="bare.test", tls_context=context), "127.0.0.1", port
    )
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
        await server.wait_closed()


class Server:
    """A running case: its port, and the CPU seconds of its other process (the scribe)."""

    def __init__(self, port: int, scribe: ScribeQueue | None = None) -> None:
        self.port = port
        self._scribe_pid = None if scribe is None else scribe.pid

    def other_cpu(self) -> float:
        if self._scribe_pid is None:
            return 0.0
        fields = Path(f"/proc/{self._scribe_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@asynccontextmanager
async def missive(
    config: Config,
    pki: DevPki,
    work: Path,
    expected: int,
    audit_sync: str = "FULL",
    *,
    scribe: bool = True,
) -> AsyncIterator[Server]:
    """The relay listener on a real spool and audit trail, written by a spool scribe
    (``scribe``, as ``serve`` does) or in this process; checks at the end that exactly
    ``expected`` messages were spooled (a refusal would inflate the rate)."""
    audit = AuditSink(work / "audit.sqlite", synchronous=audit_sync)  # type: ignore[arg-type]
    audit.start()
    spool = Spool(work / "spool", audit=audit, actor="smtp", max_message_size=1 << 24)
    queue: Any = spool.queue(RECEIVED)
    if scribe:
        queue = ScribeQueue(
            spool_dir=work / "spool",
            audit_path=work / "audit.sqlite",
            actor="smtp",
            max_message_size=1 << 24,
            log_level="warning",
        )
        await queue.start()
    validator = CertificateValidator.from_files([pki.root_cert], [pki.intermediates])
    group = await start_listeners(
        config,
        queue=queue,
        audit=audit,
        validator=validator,
        authenticator=None,
        liste_blanche=None,
    )
    try:
        try:
            yield Server(group.address("mx")[1], queue if scribe else None)
        finally:
            await group.aclose()
            if scribe:
                await queue.aclose()
        spooled = len(await spool.queue(RECEIVED).scan("incoming"))
        if spooled != expected:
            raise RuntimeError(f"{spooled} messages spooled, {expected} sent")
    finally:
        await spool.aclose()
        await audit.aclose()


class _DiscardWriter:
    async def write(self, chunk: bytes) -> None:
        return None

    async def commit(self) -> str:
        return "discarded"

    async def abort(self, reason: str) -> None:
        return None


class _DiscardQueue:
    """The front alone: every message is discarded at commit (no disk, no audit)."""

    async def open_writer(self, envelope: object, origin: object) -> _DiscardWriter:
        return _DiscardWriter()


class _NoAudit:
    async def record(self, event: object) -> None:
        return None


@asynccontextmanager
async def missive_front_only(config: Config) -> AsyncIterator[int]:
    group = await start_listeners(
        config,
        queue=_DiscardQueue(),
        audit=_NoAudit(),
        validator=None,
        authenticator=None,
        liste_blanche=None,
    )
    try:
        yield group.address("mx")[1]
    finally:
        await group.aclose()


@asynccontextmanager
async def smtp_sink() -> AsyncIterator[int]:
    port = _free_port()
    process = await asyncio.create_subprocess_exec(
        shutil.which("smtp-sink", path="/usr/sbin:/usr/bin") or "smtp-sink",
        "-u", "nobody", "127.0.0.1:" + str(port), "256",
        stdout=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        await _wait_listening(port)
        yield port
    finally:
        process.kill()
        await process.wait()


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _wait_listening(port: int) -> None:
    for _ in range(200):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            await asyncio.sleep(0.02)
            continue
        writer.close()
        await writer.wait_closed()
        return
    raise RuntimeError(f"nothing listens on port {port}")


# -- clients --------------------------------------------------------------------------


async def smtp_source(port: int, messages: int, sessions: int, size: int) -> float:
    started = time.perf_counter()
    process = await asyncio.create_subprocess_exec(
        shutil.which("smtp-source", path="/usr/sbin:/usr/bin") or "smtp-source",
        "-s", str(sessions), "-m", str(messages), "-l", str(size),
        "-f", SENDER, "-t", RECIPIENT, "-M", "client.test", f"127.0.0.1:{port}",
    )  # fmt: skip
    if await process.wait() != 0:
        raise RuntimeError(f"smtp-source exited with {process.returncode}")
    return time.perf_counter() - started


def _content(size: int) -> bytes:
    head = f"From: <{SENDER}>\r\nTo: <{RECIPIENT}>\r\nSubject: bench\r\n\r\n".encode()
    line = b"x" * 78 + b"\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


async def _reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = (await reader.readline()).decode()
        if len(line) < 4 or line[3] != "-":
            if not line.startswith(("2", "3")):
                raise RuntimeError(f"unexpected reply {line!r}")
            return line


async def _one_tls_message(port: int, context: ssl.SSLContext, content: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await _reply(reader)
    writer.write(b"EHLO client.test\r\n")
    await _reply(reader)
    writer.write(b"STARTTLS\r\n")
    await _reply(reader)
    await writer.start_tls(context, server_hostname="mx.chu-a.test")
    for command in (b"EHLO client.test", f"MAIL FROM:<{SENDER}>".encode()):
        writer.write(command + b"\r\n")
        await _reply(reader)
    writer.write(f"RCPT TO:<{RECIPIENT}>\r\nDATA\r\n".encode())
    await _reply(reader)
    await _reply(reader)
    writer.write(content + b".\r\nQUIT\r\n")
    await _reply(reader)
    await _reply(reader)
    writer.close()
    await writer.wait_closed()


async def tls_client(port: int, messages: int, sessions: int, size: int, ca: Path) -> float:
    context = ssl.create_default_context(cafile=str(ca))
    content = _content(size)
    remaining = iter(range(messages))

    async def session() -> None:
        for _ in remaining:
            await _one_tls_message(port, context, content)

    started = time.perf_counter()
    await asyncio.gather(*(session() for _ in range(sessions)))
    return time.perf_counter() - started


# -- configuration --------------------------------------------------------------------


def write_config(work: Path, pki: DevPki, tls: str) -> Config:
    (work / "var").mkdir(exist_ok=True)
    (work / "var" / "annuaire.ldif").write_text("")
    (work / "conf").mkdir(exist_ok=True)
    (work / "conf" / "users.toml").write_text("")
    path = work / f"missive-{tls}.toml"
    path.write_text(
        f"""\
[gateway]
home = "{work}"
hostname = "mx.chu-a.test"
local_domains = ["chu-a.test"]
[tls]
certificate = "{pki.server_cert("mx.chu-a.test")}"
private_key = "{pki.server_key("mx.chu-a.test")}"
[trust]
anchors = ["{pki.root_cert}"]
intermediates = ["{pki.intermediates}"]
[inbound]
accept = "any"
[[listeners]]
name = "mx"
address = "127.0.0.1:0"
kind = "relay"
tls = "{tls}"
max_connections_per_ip = 1000
max_connections = 1000
""",
        encoding="utf-8",
    )
    return load_config(path)


# -- the run --------------------------------------------------------------------------


async def measure(
    case: str,
    messages: int,
    run: Callable[[], Awaitable[float]],
    baseline: str | None = None,
    other_cpu: Callable[[], float] = lambda: 0.0,
) -> Result:
    before = _process_cpu() + other_cpu()
    seconds = await run()
    return Result(case, messages, seconds, baseline, _process_cpu() + other_cpu() - before)


def _process_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_all(args: argparse.Namespace, work: Path) -> list[list[Result]]:
    """``args.rounds`` rounds of every case, each round in a directory of its own."""
    pki = init_dev_pki(work / "pki", servers=("mx.chu-a.test",))
    ca = work / "ca.pem"
    ca.write_bytes(pki.root_cert.read_bytes() + pki.intermediates.read_bytes())
    server_tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_tls.load_cert_chain(pki.server_cert("mx.chu-a.test"), pki.server_key("mx.chu-a.test"))
    rounds = []
    for number in range(args.rounds):
        directory = work / f"round{number}"
        directory.mkdir()
        rounds.append(await run_round(args, directory, pki, ca, server_tls))
    return rounds


async def run_round(
    args: argparse.Namespace, work: Path, pki: DevPki, ca: Path, server_tls: ssl.SSLContext
) -> list[Result]:
    n, s, size = args.messages, args.sessions, args.size
    results = []
    async with smtp_sink() as port:
        results.append(
            await measure("TLS off: smtp-sink", n, lambda: smtp_source(port, n, s, size))
        )
    async with bare_aiosmtpd(None) as port:
        results.append(
            await measure(
                "TLS off: bare aiosmtpd (baseline)", n, lambda: smtp_source(port, n, s, size)
            )
        )
    plain = write_config(work, pki, "none")
    async with missive_front_only(plain) as port:
        results.append(
            await measure(
                "TLS off: Missive front only, no spool",
                n,
                lambda: smtp_source(port, n, s, size),
                "TLS off: bare aiosmtpd (baseline)",
            )
        )
    results += await spool_cases(
        "TLS off", plain, pki, work / "plain", args, lambda port: smtp_source(port, n, s, size)
    )
    async with bare_aiosmtpd(server_tls) as port:
        results.append(
            await measure(
                "TLS on: bare aiosmtpd (baseline)", n, lambda: tls_client(port, n, s, size, ca)
            )
        )
    starttls = write_config(work, pki, "starttls")
    results += await spool_cases(
        "TLS on", starttls, pki, work / "tls", args, lambda port: tls_client(port, n, s, size, ca)
    )
    return results


async def spool_cases(
    tls: str,
    config: Config,
    pki: DevPki,
    work: Path,
    args: argparse.Namespace,
    client: Callable[[int], Awaitable[float]],
) -> list[Result]:
    """The front with its spool scribe (as ``serve`` runs it), then with the spool
    written in this process; each against bare aiosmtpd with the same TLS setting."""
    results = []
    for scribe, case in (
        (True, "Missive, spool + audit, fsync"),
        (False, "same, spool written in process"),
    ):
        directory = work / ("scribe" if scribe else "in-process")
        async with missive(
            config, pki, directory, args.messages, args.audit_sync, scribe=scribe
        ) as server:
            results.append(
                await measure(
                    f"{tls}: {case}",
                    args.messages,
                    lambda: client(server.port),
                    f"{tls}: bare aiosmtpd (baseline)",
                    server.other_cpu,
                )
            )
    return results


def report(rounds: list[list[Result]]) -> None:
    """Per case: the median rate over the rounds and the median of the per-round ratios
    (each against the baseline of its own round), with their range when rounds > 1, and
    the median CPU time of this process per message."""
    print(f"{'case':<44}{'msg/s':>10}{'vs baseline':>13}{'ratio range':>16}{'CPU ms/msg':>12}")
    for index, first in enumerate(rounds[0]):
        per_round = [results[index] for results in rounds]
        rate = statistics.median(result.per_second for result in per_round)
        cpu = statistics.median(result.cpu_ms_per_message for result in per_round)
        ratio = spread = ""
        if first.baseline is not None:
            ratios = [_ratio(results, results[index]) for results in rounds]
            ratio = f"{statistics.median(ratios):.0%}"
            if len(ratios) > 1:
                spread = f"{min(ratios):.0%}-{max(ratios):.0%}"
        print(f"{first.case:<44}{rate:>10,.0f}{ratio:>13}{spread:>16}{cpu:>12.2f}")


def _ratio(results: list[Result], result: Result) -> float:
    baseline = next(other for other in results if other.case == result.baseline)
    return result.per_second / baseline.per_second


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a few messages per case")
    parser.add_argument("--messages", type=int, default=2000)
    parser.add_argument("--sessions", type=int, default=20)
    parser.add_argument("--size", type=int, default=10240)
    parser.add_argument(
        "--rounds", type=int, default=1, help="repeat every case; report medians (noisy machine)"
    )
    parser.add_argument("--dir", type=Path, default=None, help="spool and audit go here")
    parser.add_argument(
        "--audit-sync",
        choices=("FULL", "NORMAL"),
        default="FULL",
        help="SQLite synchronous mode of the audit trail (the gateway runs FULL)",
    )
    args = parser.parse_args(argv)
    if args.smoke:
        args.messages = 40
    work = Path(tempfile.mkdtemp(prefix="mv-bench-smtp-", dir=args.dir))
    try:
        rounds = asyncio.run(run_all(args, work))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
