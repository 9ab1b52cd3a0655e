"""Benchmark of the inbound path end to end: decrypt + verify + deliver over LMTP.

Usage: ``python bench/bench_inbound.py [--smoke] [--messages N] [--size BYTES]``.

Issue 7 (Speed): N messages of about ``--size`` bytes (10 KB), each signed by
claire.durand@clinique-b.test and encrypted (AES-256-GCM, RSA-2048) to
alice.martin@chu-a.test with ``gateway.smime`` as a remote gateway would send them, are
added to the spool's ``inbound/`` queue (not timed). Then, timed: the inbound agent
(``InboundStage``: decrypt with Alice's key, verify against the dev PKI with its CRLs,
mark, hand off to ``local/``) runs in this process while local delivery
(``LocalDelivery``) runs in a second process, as ``missive worker inbound`` and
``missive worker delivery`` do, delivering over LMTP to a real Dovecot started as
``tests/peers/dovecot.py`` does. Durability on, as shipped: the spool fsyncs, each
worker's audit trail (``AuditSink``) runs ``synchronous = FULL``.

Figures, all from the same run:

- **end to end msg/s**: N / (start of the inbound stage -> the N-th delivery completed);
- **inbound stage msg/s**: N / (start -> the inbound stage drained ``inbound/``);
- baseline **bare LMTP msg/s**: N clear 10 KB messages delivered to the same Dovecot with
  the gateway's own LMTP client (``send_over_protocol``: one connection per message, as
  ``LocalDelivery`` does), one after the other, no spool, no crypto.

``--smoke`` runs a few dozen messages (about 10 s in all) so CI proves the benchmark
runs; its numbers mean nothing. Loopback only; Dovecot and the delivery process are
stopped by their PIDs in a ``finally``.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import shutil
import sys
import tempfile
import time
from multiprocessing.context import SpawnProcess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # the Dovecot fixture and site of the test suite

from cryptography import x509  # noqa: E402

from gateway.audit import AuditSink  # noqa: E402
from gateway.config import Config  # noqa: E402
from gateway.inbound.delivery import LocalDelivery, send_over_protocol  # noqa: E402
from gateway.inbound.stage import InboundStage  # noqa: E402
from gateway.pki.dev import DevPki, init_dev_pki  # noqa: E402
from gateway.pki.store import load_private_key  # noqa: E402
from gateway.relay import protect  # noqa: E402
from gateway.smime.encrypt import Recipient as CmsRecipient  # noqa: E402
from gateway.smime.encrypt import encrypt_entity  # noqa: E402
from gateway.smime.keystore import KeyStore  # noqa: E402
from gateway.smime.sign import sign  # noqa: E402
from gateway.smime.validate import CertificateValidator  # noqa: E402
from gateway.spool import INBOUND, LOCAL, Envelope, Origin, Recipient, Spool  # noqa: E402
from tests.inbound.site import ALICE, CLAIRE, HOST, POLICY, install_keys, write_config  # noqa: E402
from tests.peers.dovecot import create_dovecot, destroy_dovecot  # noqa: E402

FROM_OUTSIDE = Origin("mx", client_address="127.0.0.1")
MAX_SIZE = 1 << 20


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
    return Spool(config.gateway.spool_dir, audit=audit, actor=actor, max_message_size=MAX_SIZE)


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


async def run_inbound(config: Config, pki: DevPki) -> float:
    """Drain ``inbound/`` with the inbound stage; the monotonic time it ended."""
    validator = CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes"), pki.crl("serveurs")]
    )
    audit = AuditSink(config.gateway.home / "var" / "audit-inbound.db")
    audit.start()
    spool = open_spool(config, audit, "inbound-agent")
    try:
        stage = InboundStage(config, spool, KeyStore.load(config.keys.dir), validator, audit)
        await spool.queue(INBOUND).recover()
        outcomes = await stage.drain()
        if any(o.disposition != "completed" for o in outcomes):
            raise RuntimeError(f"inbound stage: {[o.disposition for o in outcomes][:5]}")
        return time.monotonic()
    finally:
        await spool.aclose()
        await audit.aclose()


def delivery_process(config_path: str, count: int, done: multiprocessing.Queue[float]) -> None:
    """The delivery worker: deliver until ``count`` entries are completed."""
    asyncio.run(_deliver(Path(config_path), count, done))


async def _deliver(config_path: Path, count: int, done: multiprocessing.Queue[float]) -> None:
    from gateway.config import load_config

    config = load_config(config_path)
    audit = AuditSink(config.gateway.home / "var" / "audit-delivery.db")
    audit.start()
    spool = open_spool(config, audit, "delivery")
    delivered = 0
    try:
        delivery = LocalDelivery(config, spool, audit, policy=POLICY)
        await spool.queue(LOCAL).recover()
        while delivered < count:
            outcomes = await delivery.drain()
            bad = [o for o in outcomes if o.disposition != "completed"]
            if bad:
                raise RuntimeError(f"delivery: {bad[0]}")
            delivered += len(outcomes)
            if not outcomes:
                await asyncio.sleep(0.005)
        done.put(time.monotonic())
    finally:
        await spool.aclose()
        await audit.aclose()


async def bare_lmtp(port: int, count: int, size: int) -> float:
    """The baseline: msg/s of clear messages straight to Dovecot over LMTP."""
    started = time.monotonic()
    for index in range(count):
        [reply] = await send_over_protocol(
            lmtp=True,
            host="127.0.0.1",
            port=port,
            helo=HOST,
            mail_from=CLAIRE,
            recipients=[ALICE],
            content=letter(index, size),
            tls_context=None,  # LMTP on loopback: no STARTTLS
        )
        if not reply.delivered:
            raise RuntimeError(f"bare LMTP: {reply}")
    return count / (time.monotonic() - started)


def measure(work: Path, count: int, size: int) -> dict[str, float]:
    pki = init_dev_pki(work / "pki", users=(ALICE, CLAIRE), servers=(HOST,))
    dovecot = create_dovecot(pki.server_cert(HOST), pki.server_key(HOST), users={ALICE: "pw"})
    delivery: SpawnProcess | None = None
    try:
        site = work / "site"
        site.mkdir()
        config = write_config(
            site, pki, inbound=f'deliver_to = "lmtp://127.0.0.1:{dovecot.lmtp_port}"'
        )
        install_keys(config, pki, ALICE)
        started = time.monotonic()
        messages = sealed_messages(pki, count, size)
        print(
            f"prepared {count} sealed messages of {len(messages[0])} bytes"
            f" in {time.monotonic() - started:.1f}s",
            flush=True,
        )
        asyncio.run(fill_inbound(config, messages))
        bare = asyncio.run(bare_lmtp(dovecot.lmtp_port, count, size))

        context = multiprocessing.get_context("spawn")
        done: multiprocessing.Queue[float] = context.Queue()
        process = context.Process(
            target=delivery_process, args=(str(site / "missive.toml"), count, done)
        )
        delivery = process
        process.start()
        time.sleep(1.0)  # the delivery process imports and recovers before the clock starts
        started = time.monotonic()
        inbound_end = asyncio.run(run_inbound(config, pki))
        delivered_end = done.get(timeout=600)
        process.join(timeout=60)
        return {
            "end to end (decrypt + verify + LMTP)": count / (delivered_end - started),
            "inbound stage alone (decrypt + verify + spool)": count / (inbound_end - started),
            "bare LMTP delivery (baseline)": bare,
        }
    finally:
        if delivery is not None and delivery.is_alive():
            delivery.kill()  # by its own handle (PID), never by name
            delivery.join()
        destroy_dovecot(dovecot)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few dozen messages")
    parser.add_argument("--messages", type=int, default=None)
    parser.add_argument("--size", type=int, default=10 * 1024)
    parser.add_argument("--dir", type=Path, default=None, help="work directory (kept)")
    args = parser.parse_args(argv)
    count = args.messages or (40 if args.smoke else 2000)
    work = args.dir or Path(tempfile.mkdtemp(prefix="mv-bench-in-"))
    try:
        figures = measure(work, count, args.size)
    finally:
        if args.dir is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"inbound, {count} messages of {args.size} bytes (signed + AES-256-GCM):")
    for name, value in figures.items():
        print(f"  {name:<48} {value:8.0f} msg/s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
