"""Benchmark of the inbound path end to end: decrypt + verify + deliver over LMTP.

Usage: ``python bench/bench_inbound.py [--smoke] [--messages N] [--size BYTES]
[--inbound-agents K] [--runs R] [--pause SECONDS]``.

Issue 7 (Speed): N messages of about ``--size`` bytes (10 KB), each signed by
claire.durand@clinique-b.test and encrypted (AES-256-GCM, RSA-2048) to
alice.martin@chu-a.test with ``gateway.smime`` as a remote gateway would send them, are
added to the spool's ``inbound/`` queue (not timed). Then, timed: K inbound agents
(``InboundStage``: decrypt with Alice's key, verify against the dev PKI with its CRLs,
mark, hand off to ``local/``; K as shipped, ``[gateway] crypto_workers = 0``: one per
core, or ``--inbound-agents``) drain it, slot 0 in this process and each other slot in
a process of its own, while local delivery (``LocalDelivery``) runs in one more
process, as ``missive worker inbound --slot K`` and ``missive worker delivery`` do,
delivering over LMTP to a real Dovecot started as ``tests/peers/dovecot.py`` does.
Durability on, as shipped: the spool fsyncs, and every worker appends to the one audit
trail of ``[audit] path`` (``AuditSink``, ``synchronous = FULL``), as in production.

Figures, all from the same run:

- **end to end msg/s**: N / (start of the inbound stage -> the N-th delivery completed);
  both stages run as their workers do: ``InboundStage`` drains with its default
  entries in flight, ``LocalDelivery`` runs the shared consumer loop
  (``consumer.consume``) with its default concurrency, poll interval and LMTP pool;
- **inbound stage msg/s**: N / (start -> the inbound stage drained ``inbound/``);
- baseline **bare LMTP msg/s**: N clear 10 KB messages delivered to the same Dovecot
  with the gateway's own LMTP client *as ``LocalDelivery`` uses it*: the same
  ``StorePool`` (connections reused, ``DEFAULT_CONNECTIONS`` of them) fed by
  ``DEFAULT_CONCURRENCY`` tasks; no spool, no audit, no crypto. Measured before *and*
  after the end-to-end run (the two show how much the machine's load moved meanwhile);
  the ratio end to end / baseline uses their mean and is the figure to read. Every
  measured run delivers into its own mailbox, empty when it starts (``MAILBOXES``);
- extra line, **bare LMTP, one connection per message**: the old baseline
  (``send_over_protocol``, one message after the other), for comparison with earlier
  runs;
- **CPU ms per message** during the end-to-end run, per process: the inbound stage
  (its K processes together), the delivery worker, and Dovecot (every process whose title carries
  the instance name, plus the children its master reaped; read from ``/proc``, so
  Linux only and approximate). Their sum against 2 cores bounds what the machine can
  do whatever the waits. Inbound agent 0's share is also printed by thread (event
  loop, decrypt + verify threads, spool I/O threads, audit writer; user+system, from
  ``/proc/self/task``; clock ticks of 10 ms, so meaningless with ``--smoke``);
- **machine during the end-to-end run**: cores busy in all (every process and kernel
  thread, from ``/proc/stat``), and the time the host stole from this VM. Busy close to
  the core count says the run was bound by CPU, so only less CPU per message helps;
  the gap to the processes' sum is the kernel's own threads (journal, loopback);
- **file creation in the spool** (``inbound/tmp/``), before and after the end-to-end
  run: CPU per new file. On the development VM's ext4 without a journal it grows with
  the inodes freed in the last minutes (from a few tens of us to several hundred), and
  every entry written and every message stored pays it: runs back to back slow each
  other down, so A/B pairs are run with a pause between runs (bench/README, "Tenth
  session").

``--runs R`` repeats the whole measurement R times (a new Dovecot and spool each time),
sleeping ``--pause`` seconds (default 75) before each run but the first, then prints the
median, lowest and highest of each figure. One run says little on this VM: the same
code relayed 255-349 msg/s in the eleventh session's thirteen runs, most of the spread
being the host's (the CPU each process spends per message moves with it); the median of
several runs, each after a pause, is the figure to quote (bench/README, "Eleventh
session").

``--smoke`` runs a few dozen messages, twice without a pause (about 20 s in all), so CI
proves the benchmark and its summary run; its numbers mean nothing. Loopback only;
Dovecot, the delivery process and the other inbound agents are stopped by their PIDs in
a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from multiprocessing.context import SpawnProcess
from multiprocessing.synchronize import Event as EventType
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # the Dovecot fixture and site of the test suite

from cryptography import x509  # noqa: E402

from gateway.audit import STAGE_GATHER_WINDOW, AuditSink  # noqa: E402
from gateway.config import Config  # noqa: E402
from gateway.inbound.delivery import (  # noqa: E402
    DEFAULT_CONCURRENCY,
    LARGE_CONCURRENCY,
    LocalDelivery,
)
from gateway.inbound.stage import InboundStage  # noqa: E402
from gateway.inbound.store_client import (  # noqa: E402
    DEFAULT_CONNECTIONS,
    StorePool,
    StoreTarget,
    send_over_protocol,
)
from gateway.pki.dev import DevPki, init_dev_pki  # noqa: E402
from gateway.pki.store import load_private_key  # noqa: E402
from gateway.relay import protect  # noqa: E402
from gateway.smime.encrypt import Recipient as CmsRecipient  # noqa: E402
from gateway.smime.encrypt import encrypt_entity  # noqa: E402
from gateway.smime.keystore import KeyStore  # noqa: E402
from gateway.smime.sign import sign  # noqa: E402
from gateway.smime.validate import CertificateValidator  # noqa: E402
from gateway.spool import (  # noqa: E402
    INBOUND,
    LOCAL,
    Claimed,
    Envelope,
    Origin,
    Recipient,
    Spool,
    consumer,
)
from gateway.spool.spooldir import consumer_slot_scope  # noqa: E402
from gateway.worker_plan import crypto_worker_count  # noqa: E402
from tests.inbound.site import ALICE, CLAIRE, HOST, POLICY, install_keys, write_config  # noqa: E402
from tests.peers.dovecot import create_dovecot, destroy_dovecot  # noqa: E402

FROM_OUTSIDE = Origin("mx", client_address="127.0.0.1")
MAX_SIZE = 1 << 20
RATIO = "end to end / baseline"
DEFAULT_PAUSE = 75.0  # seconds before a run after another: its freed inodes weigh on it
Figures = dict[str, float]
# Each measured run delivers into a mailbox of its own, empty when the run starts: with
# the fixture's maildir, Dovecot's CPU per delivery grows with the mailbox (measured:
# 2.0 ms per message into an empty INBOX, 4.1 ms once it holds 8,000 messages), so a
# shared mailbox made every later run pay for the earlier ones.
BASELINE_BEFORE = "baseline-before@chu-a.test"
BASELINE_OLD = "baseline-old@chu-a.test"
BASELINE_AFTER = "baseline-after@chu-a.test"
MAILBOXES = (ALICE, BASELINE_BEFORE, BASELINE_OLD, BASELINE_AFTER)


def letter(index: int, size: int) -> bytes:
    head = (
        f"From: Claire <{CLAIRE}>\r\nTo: Alice <{ALICE}>\r\nSubject: Compte rendu {index}\r\n"
        f"Date: Sat, 28 Nov 2026 12:00:00 +0100\r\nMessage-ID: <b{index}@clinique-b.test>\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    ).encode()
    line = b"Le patient va mieux, la suite du traitement est inchangee.\r\n"
    return head + line * max(1, (size - len(head)) // len(line))


def sealed_messages(pki: DevPki, count: int, size: int) -> list[bytes]:
    """``count`` letters, header-protected, signed by Claire, encrypted to Alice."""
    key = load_private_key(pki.user_key(CLAIRE, "sign"))
    signer = x509.load_pem_x509_certificate(pki.user_cert(CLAIRE, "sign").read_bytes())
    chain = x509.load_pem_x509_certificates(pki.intermediates.read_bytes())
    target = [
        CmsRecipient(x509.load_pem_x509_certificate(pki.user_cert(ALICE, "enc").read_bytes()))
    ]
    out = []
    for index in range(count):
        split = protect.SplitMessage.of(letter(index, size))
        payload = protect.cryptographic_payload(split, protect=True, wrap=False)
        signed = sign(payload, signer, key, chain, detached=True)
        entity = encrypt_entity(signed, target, cipher="aes-256-gcm")
        out.append(protect.outer_header(split, protect=True) + b"MIME-Version: 1.0\r\n" + entity)
    return out


def open_spool(config: Config, audit: AuditSink, actor: str) -> Spool:
    """The spool as the stage workers open it (``[gateway] spool_io_threads``)."""
    return Spool(
        config.gateway.spool_dir,
        audit=audit,
        actor=actor,
        max_message_size=MAX_SIZE,
        io_threads=config.gateway.spool_io_threads,
    )


async def fill_inbound(config: Config, messages: list[bytes]) -> None:
    audit = AuditSink(config.gateway.home / "var" / "audit-fill.db")
    audit.start()
    spool = open_spool(config, audit, "bench")
    try:
        queue = spool.queue(INBOUND)
        for message in messages:
            await queue.add(Envelope(CLAIRE, (Recipient(ALICE),)), FROM_OUTSIDE, message)
    finally:
        await spool.aclose()
        await audit.aclose()


ThreadCpu = dict[int, tuple[str, float, float]]  # native id -> name, user, system seconds


def thread_cpu() -> ThreadCpu:
    """User and system CPU seconds of each thread of this process (``/proc/self/task``),
    named by its Python thread name (digits dropped: ``spool-io_3`` -> ``spool-io``)."""
    names = {thread.native_id: thread.name for thread in threading.enumerate()}
    tick = os.sysconf("SC_CLK_TCK")
    found: ThreadCpu = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        name = names.get(int(task.name), "other").rstrip("0123456789").rstrip("_")
        found[int(task.name)] = (name, int(fields[11]) / tick, int(fields[12]) / tick)
    return found


def cpu_by_thread(before: ThreadCpu, after: ThreadCpu, count: int) -> str:
    """``name user+system`` in ms per message, per thread name, largest first."""
    totals: dict[str, list[float]] = {}
    for native_id, (name, user, system) in after.items():
        _, user_before, system_before = before.get(native_id, (name, 0.0, 0.0))
        total = totals.setdefault(name, [0.0, 0.0])
        total[0] += user - user_before
        total[1] += system - system_before
    ranked = sorted(totals.items(), key=lambda item: -sum(item[1]))
    return ", ".join(
        f"{name} {1000 * user / count:.2f}+{1000 * system / count:.2f}"
        for name, (user, system) in ranked
        if user + system > 0
    )


ValidatorFiles = tuple[list[str], list[str], list[str]]  # anchors, intermediates, CRLs
Drained = tuple[float, int, float]  # end (monotonic), entries processed, CPU seconds


def validator_files(pki: DevPki) -> ValidatorFiles:
    crls = [pki.crl("personnes"), pki.crl("serveurs")]
    return [str(pki.root_cert)], [str(pki.intermediates)], [str(c) for c in crls]


async def run_inbound(config: Config, files: ValidatorFiles, *, slot: int = 0) -> Drained:
    """Drain ``inbound/`` with one inbound agent (consumer ``slot``); when it ended, the
    entries it processed and the CPU seconds of this process meanwhile. Slot 0 (this
    process) also prints its CPU per message by thread (user+system): the event loop
    (``MainThread``, which decrypts and verifies an ordinary message itself,
    ``gateway.crypto_calls``), any ``asyncio`` or ``spool-io`` threads, the audit
    writer."""
    anchors, intermediates, crls = files
    validator = CertificateValidator.from_files(
        [Path(f) for f in anchors], [Path(f) for f in intermediates], [Path(f) for f in crls]
    )
    audit = AuditSink(config.audit.path, gather_window=STAGE_GATHER_WINDOW)  # as shipped
    audit.start()
    spool = open_spool(config, audit, f"inbound-agent-{slot}")
    try:
        stage = InboundStage(config, spool, KeyStore.load(config.keys.dir), validator, audit)
        await spool.queue(INBOUND).recover()
        before, cpu = thread_cpu(), time.process_time()
        outcomes = await stage.drain()
        ended, cpu = time.monotonic(), time.process_time() - cpu
        if slot == 0:
            print(
                "inbound agent 0, CPU ms per message by thread (user+system): "
                + cpu_by_thread(before, thread_cpu(), len(outcomes)),
                flush=True,
            )
        if any(o.disposition != "completed" for o in outcomes):
            raise RuntimeError(f"inbound stage: {[o.disposition for o in outcomes][:5]}")
        return ended, len(outcomes), cpu
    finally:
        await spool.aclose()
        await audit.aclose()


def inbound_agent_process(
    config_path: str,
    files: ValidatorFiles,
    slot: int,
    go: EventType,
    done: multiprocessing.Queue[Drained],
) -> None:
    """One more inbound agent, as ``missive worker inbound --slot K`` runs: it drains
    ``inbound/`` beside the others once ``go`` is set, then puts what it drained."""
    from gateway.config import load_config

    config = load_config(Path(config_path))
    go.wait()
    with consumer_slot_scope(slot):
        done.put(asyncio.run(run_inbound(config, files, slot=slot)))


Done = tuple[float, int, float]  # last completion (monotonic), connections, CPU seconds


def process_cpu(pid: str, *, reaped: bool = False) -> float:
    """User + system CPU seconds of ``pid`` from ``/proc`` (and of its reaped children)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0  # exited meanwhile
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    if reaped:
        ticks += int(fields[13]) + int(fields[14])  # cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> list[int]:
    """The first line of ``/proc/stat``: clock ticks of all cores in user, nice,
    system, idle, iowait, irq, softirq and steal."""
    return [int(f) for f in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]


def machine_busy(before: list[int], after: list[int], seconds: float) -> str:
    """Cores busy meanwhile (every process and kernel thread), and where."""
    tick = os.sysconf("SC_CLK_TCK")
    used = [(b - a) / tick / seconds for a, b in zip(before, after, strict=True)]
    user, nice, system, _, _, irq, softirq, steal = used
    return (
        f"{user + nice + system + irq + softirq:.2f} of {os.cpu_count()} cores busy"
        f" (user {user + nice:.2f}, system {system:.2f}, irq {irq + softirq:.2f});"
        f" stolen by the host {steal:.2f}"
    )


def file_creation_cost(directory: Path, files: int = 200) -> float:
    """Microseconds of CPU per new file (``open`` with ``O_CREAT | O_EXCL``, ``close``;
    removed at once) in ``directory``: the spool's ``tmp/``, where every hand-off
    creates its file, so in the same block group. On an ext4 file system without a
    journal (this VM) each creation scans the inodes of that group freed in the last
    minutes (the kernel's ``recently_deleted``), so the figure grows with the run's own
    churn and with the previous run's (bench/README, "Tenth session")."""
    names = [directory / f".inode-probe-{os.getpid()}-{index}" for index in range(files)]
    try:
        before = time.process_time()
        for name in names:
            os.close(os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return 1e6 * (time.process_time() - before) / files
    finally:
        for name in names:
            name.unlink(missing_ok=True)


def dovecot_cpu(instance: str) -> float:
    """CPU seconds of the Dovecot instance's processes (titles carry ``instance``)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            title = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if instance.encode() in title:
            total += process_cpu(entry.name, reaped=b"dovecot" in title.split(b"\0")[0])
    return total


def delivery_process(config_path: str, count: int, done: multiprocessing.Queue[Done]) -> None:
    """The delivery worker: deliver until ``count`` entries are completed; puts the
    monotonic time of the last completion, the LMTP connections opened and the CPU
    seconds used meanwhile."""
    asyncio.run(_deliver(Path(config_path), count, done))


async def _deliver(config_path: Path, count: int, done: multiprocessing.Queue[Done]) -> None:
    from gateway.config import load_config

    config = load_config(config_path)
    audit = AuditSink(config.audit.path, gather_window=STAGE_GATHER_WINDOW)
    audit.start()
    spool = open_spool(config, audit, "delivery")
    stop = asyncio.Event()
    delivered = 0
    failures: list[object] = []
    try:
        delivery = LocalDelivery(config, spool, audit, policy=POLICY)

        async def counted(entry: Claimed) -> None:
            nonlocal delivered
            outcome = await delivery.process_entry(entry)
            if outcome is None or outcome.disposition != "completed":
                failures.append(outcome)
                stop.set()
            delivered += 1
            if delivered >= count:
                stop.set()

        await spool.queue(LOCAL).recover()
        cpu = time.process_time()
        await consumer.consume(
            spool.queue(LOCAL),
            stop,
            counted,
            poll_interval=delivery.poll_interval,
            concurrency=delivery.concurrency,
            large_concurrency=LARGE_CONCURRENCY,
        )
        if failures:
            raise RuntimeError(f"delivery: {failures[0]}")
        assert delivery.pool is not None
        done.put((time.monotonic(), delivery.pool.opened, time.process_time() - cpu))
        await delivery.aclose()
    finally:
        await spool.aclose()
        await audit.aclose()


async def bare_lmtp_pooled(port: int, count: int, size: int, mailbox: str) -> tuple[float, int]:
    """The baseline: msg/s of clear messages straight to Dovecot through the same pool,
    connections and entries in flight as ``LocalDelivery``; and connections opened."""
    pool = StorePool(StoreTarget(True, "127.0.0.1", port, HOST), size=DEFAULT_CONNECTIONS)
    indexes = iter(range(count))

    async def sender() -> None:
        for index in indexes:  # shared: each index is taken by one sender
            [reply] = await pool.deliver(CLAIRE, [mailbox], letter(index, size))
            if not reply.delivered:
                raise RuntimeError(f"bare LMTP: {reply}")

    started = time.monotonic()
    try:
        await asyncio.gather(*(sender() for _ in range(DEFAULT_CONCURRENCY)))
        rate = count / (time.monotonic() - started)
    finally:
        await pool.aclose()
    return rate, pool.opened


async def bare_lmtp_per_message(port: int, count: int, size: int, mailbox: str) -> float:
    """The old baseline: one connection per message, one message after the other."""
    started = time.monotonic()
    for index in range(count):
        [reply] = await send_over_protocol(
            lmtp=True,
            host="127.0.0.1",
            port=port,
            helo=HOST,
            mail_from=CLAIRE,
            recipients=[mailbox],
            content=letter(index, size),
            tls_context=None,  # LMTP on loopback: no STARTTLS
        )
        if not reply.delivered:
            raise RuntimeError(f"bare LMTP: {reply}")
    return count / (time.monotonic() - started)


def measure(work: Path, count: int, size: int, agents: int | None) -> Figures:
    pki = init_dev_pki(work / "pki", users=(ALICE, CLAIRE), servers=(HOST,))
    files = validator_files(pki)
    others: list[SpawnProcess] = []
    dovecot = create_dovecot(
        pki.server_cert(HOST), pki.server_key(HOST), users=dict.fromkeys(MAILBOXES, "pw")
    )
    delivery: SpawnProcess | None = None
    try:
        site = work / "site"
        site.mkdir()
        config = write_config(
            site, pki, inbound=f'deliver_to = "lmtp://127.0.0.1:{dovecot.lmtp_port}"'
        )
        install_keys(config, pki, ALICE)
        agents = agents or crypto_worker_count(config)  # as shipped: one per core
        started = time.monotonic()
        messages = sealed_messages(pki, count, size)
        print(
            f"prepared {count} sealed messages of {len(messages[0])} bytes"
            f" in {time.monotonic() - started:.1f}s",
            flush=True,
        )
        asyncio.run(fill_inbound(config, messages))
        bare, bare_connections = asyncio.run(
            bare_lmtp_pooled(dovecot.lmtp_port, count, size, BASELINE_BEFORE)
        )
        per_message = asyncio.run(
            bare_lmtp_per_message(dovecot.lmtp_port, count, size, BASELINE_OLD)
        )

        context = multiprocessing.get_context("spawn")
        done: multiprocessing.Queue[Done] = context.Queue()
        process = context.Process(
            target=delivery_process, args=(str(site / "missive.toml"), count, done)
        )
        delivery = process
        process.start()
        go = context.Event()
        drained: multiprocessing.Queue[Drained] = context.Queue()
        for slot in range(1, agents):
            agent = context.Process(
                target=inbound_agent_process,
                args=(str(site / "missive.toml"), files, slot, go, drained),
            )
            others.append(agent)
            agent.start()
        time.sleep(1.0 + 0.5 * agents)  # the other processes import before the clock starts
        creation_before = file_creation_cost(config.gateway.spool_dir / INBOUND / "tmp")
        dovecot_before = dovecot_cpu(dovecot.instance_name)
        machine_before = machine_ticks()
        started = time.monotonic()
        go.set()
        results = [asyncio.run(run_inbound(config, files))]
        results += [drained.get(timeout=600) for _ in others]
        inbound_end = max(ended for ended, _, _ in results)
        inbound_cpu = sum(cpu for _, _, cpu in results)
        print(
            f"inbound agents: {agents}, entries drained by each: "
            + ", ".join(str(processed) for _, processed, _ in results),
            flush=True,
        )
        delivered_end, connections, delivery_cpu = done.get(timeout=600)
        machine = machine_busy(machine_before, machine_ticks(), time.monotonic() - started)
        dovecot_used = dovecot_cpu(dovecot.instance_name) - dovecot_before
        process.join(timeout=60)
        end_to_end = count / (delivered_end - started)
        bare_after, _ = asyncio.run(
            bare_lmtp_pooled(dovecot.lmtp_port, count, size, BASELINE_AFTER)
        )
        print(
            f"LMTP connections opened: {connections} by the delivery worker,"
            f" {bare_connections} by the pooled baseline",
            flush=True,
        )
        print(
            "CPU ms per message, end to end: "
            + ", ".join(
                f"{name} {1000 * seconds / count:.1f}"
                for name, seconds in (
                    ("inbound stage", inbound_cpu),
                    ("delivery worker", delivery_cpu),
                    ("Dovecot", dovecot_used),
                    ("sum", inbound_cpu + delivery_cpu + dovecot_used),
                )
            ),
            flush=True,
        )
        print(f"machine during the end-to-end run: {machine}", flush=True)
        print(
            f"file creation in the spool: {creation_before:.0f} us of CPU each before the"
            " end-to-end run,"
            f" {file_creation_cost(config.gateway.spool_dir / INBOUND / 'tmp'):.0f} after it",
            flush=True,
        )
        return {
            "end to end (decrypt + verify + LMTP)": end_to_end,
            "inbound stage alone (decrypt + verify + spool)": count / (inbound_end - started),
            "bare LMTP, pooled as LocalDelivery (baseline)": bare,
            "  the same, measured after the end-to-end run": bare_after,
            "bare LMTP, one connection per message (old)": per_message,
            RATIO: 100 * end_to_end / ((bare + bare_after) / 2),
        }
    finally:
        for process in [p for p in (delivery, *others) if p is not None]:
            if process.is_alive():
                process.kill()  # by its own handle (PID), never by name
                process.join()
        destroy_dovecot(dovecot)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few dozen messages, twice")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (kept)")
    parser.add_argument(
        "--inbound-agents",
        type=int,
        default=None,
        help="inbound agent processes (default: as shipped, [gateway] crypto_workers = 0,"
        " one per core)",
    )
    parser.add_argument("--runs", type=int, default=None, help="measurements (default 1)")
    parser.add_argument(
        "--pause", type=float, default=None, help="seconds before each run but the first"
    )
    args = parser.parse_args(argv)
    count = args.messages or (40 if args.smoke else 2000)
    runs = args.runs if args.runs is not None else (2 if args.smoke else 1)
    pause = args.pause if args.pause is not None else (0.0 if args.smoke else DEFAULT_PAUSE)
    if runs < 1 or pause < 0:
        parser.error("--runs must be 1 or more and --pause 0 or more")
    results: list[Figures] = []
    for run in range(runs):
        if run:
            print(f"pause of {pause:.0f} s before run {run + 1} of {runs}", flush=True)
            time.sleep(pause)
        work, keep = work_directory(args.dir, run, runs)
        try:
            figures = measure(work, count, args.size, args.inbound_agents)
        finally:
            if not keep:
                shutil.rmtree(work, ignore_errors=True)
        print_figures(
            f"inbound, {count} messages of {args.size} bytes (signed + AES-256-GCM)", figures
        )
        results.append(figures)
    if runs > 1:
        print_figures(
            f"inbound, {runs} runs, median (lowest-highest); a pause of {pause:.0f} s"
            " before each run but the first",
            summarise(results),
        )
    return 0


def work_directory(kept: Path | None, run: int, runs: int) -> tuple[Path, bool]:
    """Where run ``run`` works, and whether to keep it: ``--dir`` (a subdirectory per
    run when there are several) is kept, a temporary directory is not."""
    if kept is None:
        return Path(tempfile.mkdtemp(prefix="mv-bench-in-")), False
    work = kept if runs == 1 else kept / f"run-{run + 1}"
    work.mkdir(parents=True, exist_ok=True)
    return work, True


def summarise(results: list[Figures]) -> dict[str, tuple[float, float, float]]:
    """Each figure's median, lowest and highest over the runs."""
    return {
        name: (
            statistics.median(run[name] for run in results),
            min(run[name] for run in results),
            max(run[name] for run in results),
        )
        for name in results[0]
    }


def print_figures(title: str, figures: Figures | dict[str, tuple[float, float, float]]) -> None:
    print(f"{title}:", flush=True)
    for name, value in figures.items():
        unit = "%" if name == RATIO else "msg/s"
        if isinstance(value, tuple):
            median, lowest, highest = value
            shown = f"{median:8.0f} {unit} ({lowest:.0f}-{highest:.0f})"
        else:
            shown = f"{value:8.0f} {unit}"
        print(f"  {name:<48} {shown}", flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
