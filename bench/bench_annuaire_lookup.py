"""Certificate lookups of the annuaire: cached, and uncached against a real slapd.

Usage: ``python bench/bench_annuaire_lookup.py [--smoke] [--users N] [--filler N]
[--seconds S] [--concurrency C] [--pool-size P]``.

What it measures (targets from the annuaire issue):
- ``cached``: ``await CertificateLookup.lookup(address)`` answered from the TTL cache,
  one task, addresses cycling over the users (target >= 50,000/s). Baseline: the same
  loop awaiting a coroutine that reads a dict (the floor of any cached lookup).
- ``uncached``: the same call with the caches off (``cache_ttl = 0``) on the LDAP backend
  against a slapd this benchmark starts itself (our schema, indexes on ``mail``), C
  concurrent tasks through a pool of P connections: ldap3 search in a worker thread,
  entry mapping, certificate parsing and validation for encryption (the validator's own
  result cache is warm: it is what the secure agent runs with), binding check
  (target >= 800/s per process). Also ``find_by_mail`` alone (no certificate work).
- baseline ``raw ldap3``: one SAFE_SYNC connection doing the search sequentially in
  one thread (what ldap3 itself can do here), asking for the same attributes (``*``) as the
  backend does.

The directory holds N users with an encryption certificate each (P-256, from a throwaway
development PKI) plus filler entries without certificates. Everything runs on loopback;
slapd is stopped by PID at the end, whatever happens. ``--smoke`` runs each case for a
fraction of a second so CI proves the benchmark still works; its numbers mean nothing.

Measured on the development VM (2 shared cores, load average 2.8 to 4.2 from other jobs;
208 users, 20,000 filler entries, 3 s per case), three runs:

    case                                   run 1     run 2     run 3 (pool 2, 8 tasks)
    cached: await dict read (baseline) 2,875,887 3,530,164 3,465,851
    cached: await lookup()               856,373 1,125,260   766,062   target >= 50,000/s
    raw ldap3 SAFE_SYNC, 1 thread          1,285       992     1,242   (baseline)
    find_by_mail, 16 tasks, pool 4         1,120       885     1,095   (8 tasks, pool 2)
    uncached lookup, 16 tasks, pool 4        909       828       865   target >= 800/s
    uncached lookup, 1 task                  753       696       710

The uncached lookup runs at 0.70-0.83 of raw ldap3 on one thread: the rest is the
thread hops (search, then validation), the mapping to an ``Entry`` and certificate
parsing; ldap3's BER decoding (pure Python, under the GIL) dominates, which is why more
pool threads do not add throughput on this machine.
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPOSITORY))  # the slapd fixture of the test suite is reused

import ldap3  # noqa: E402

from annuaire.ldap_backend import LdapDirectory  # noqa: E402
from annuaire.ldif import atomic_ldif_file  # noqa: E402
from annuaire.lookup import CertificateLookup  # noqa: E402
from annuaire.mapping import (  # noqa: E402
    DEFAULT_ATTRIBUTES,
    entry_dn,
    entry_to_attributes,
)
from annuaire.model import Entry, Mailbox  # noqa: E402
from gateway.pki.dev import init_dev_pki  # noqa: E402
from gateway.smime.validate import CertificateValidator  # noqa: E402
from tests.peers.slapd import PEOPLE_DN, SUFFIX, create_slapd, destroy_slapd  # noqa: E402

SCHEMA = REPOSITORY / "annuaire" / "schema" / "missive-sante.schema"
INDEXES = ("index mail,uid eq", "index missiveSearchKey eq,sub", "sizelimit unlimited")


def _der(path: Path) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    certificate = x509.load_pem_x509_certificates(path.read_bytes())[0]
    return certificate.public_bytes(serialization.Encoding.DER)


def build_directory(
    work: Path, users: int, filler: int
) -> tuple[Path, list[str], CertificateValidator]:
    """The LDIF of the directory, the users' addresses and a validator for them."""
    addresses = [f"user{index:05d}@chu-a.test" for index in range(users)]
    pki = init_dev_pki(work / "pki", users=addresses, servers=(), ec=True)
    validator = CertificateValidator.from_files(
        [pki.root_cert], [pki.intermediates], [pki.crl("personnes")], "hard-fail"
    )
    ldif = work / "people.ldif"
    with atomic_ldif_file(ldif) as writer:
        for index, address in enumerate(addresses):
            entry = Entry(
                key=f"8{index:011d}",
                kind="person",
                national_id=f"8{index:011d}",
                display_name=f"Utilisateur {index}",
                surname=f"Utilisateur{index}",
                mailboxes=(Mailbox(address),),
                certificates=(_der(pki.user_cert(address, "enc")),),
            )
            writer.write(entry_dn(entry, PEOPLE_DN), entry_to_attributes(entry, DEFAULT_ATTRIBUTES))
        for index in range(filler):
            entry = Entry(
                key=f"0{index:09d}",
                kind="person",
                display_name=f"Remplissage {index}",
                city="Ville-Test",
                mailboxes=(Mailbox(f"filler{index}@clinique-b.test"),),
            )
            writer.write(entry_dn(entry, PEOPLE_DN), entry_to_attributes(entry, DEFAULT_ATTRIBUTES))
    return ldif, addresses, validator


async def rate(seconds: float, tasks: int, call: Callable[[int], Awaitable[object]]) -> float:
    """Calls per second of ``call(i)`` from ``tasks`` concurrent tasks for ``seconds``."""
    deadline = time.perf_counter() + seconds
    done = 0

    async def worker(offset: int) -> None:
        nonlocal done
        index = offset
        while time.perf_counter() < deadline:
            await call(index)
            index += tasks
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(tasks)))
    return done / (time.perf_counter() - started)


def raw_ldap3_rate(url: str, addresses: list[str], seconds: float) -> float:
    """Sequential raw ldap3 searches (SAFE_SYNC, same filter and attributes)."""
    host_port = url.removeprefix("ldap://").rstrip("/")
    host, _, port = host_port.partition(":")
    server = ldap3.Server(host, port=int(port), get_info=ldap3.NONE)
    connection = ldap3.Connection(server, client_strategy=ldap3.SAFE_SYNC, auto_bind=True)
    try:
        done = 0
        started = time.perf_counter()
        deadline = started + seconds
        while time.perf_counter() < deadline:
            address = addresses[done % len(addresses)]
            connection.search(SUFFIX, f"(mail={address})", attributes=[ldap3.ALL_ATTRIBUTES])
            done += 1
        return done / (time.perf_counter() - started)
    finally:
        connection.unbind()


async def measure(
    url: str, addresses: list[str], validator: CertificateValidator, args: argparse.Namespace
) -> list[tuple[str, float, str]]:
    seconds = args.seconds
    rows: list[tuple[str, float, str]] = []
    directory = LdapDirectory([url], SUFFIX, DEFAULT_ATTRIBUTES, pool_size=args.pool_size)
    try:
        cached = CertificateLookup(directory, validator, cache_ttl=timedelta(hours=1))
        for address in addresses:  # warm: every address cached
            assert (await cached.lookup(address)).found, address
        table = {address: address for address in addresses}

        async def dict_read(index: int) -> object:
            return table[addresses[index % len(addresses)]]

        async def cached_lookup(index: int) -> object:
            return await cached.lookup(addresses[index % len(addresses)])

        rows.append(("cached: await dict read (baseline)", await rate(seconds, 1, dict_read), ""))
        rows.append(
            ("cached: await lookup()", await rate(seconds, 1, cached_lookup), ">= 50,000/s")
        )

        uncached = CertificateLookup(
            directory, validator, cache_ttl=timedelta(0), negative_cache_ttl=timedelta(0)
        )

        async def uncached_lookup(index: int) -> object:
            result = await uncached.lookup(addresses[index % len(addresses)])
            assert result.found
            return result

        async def find(index: int) -> object:
            return await directory.find_by_mail(addresses[index % len(addresses)])

        loop = asyncio.get_running_loop()
        raw_threaded = await loop.run_in_executor(None, raw_ldap3_rate, url, addresses, seconds)
        rows.append(
            ("raw ldap3 SAFE_SYNC, 1 thread (baseline)", raw_threaded, "~1,100/s measured before")
        )
        rows.append(
            (
                f"find_by_mail, {args.concurrency} tasks, pool {args.pool_size}",
                await rate(seconds, args.concurrency, find),
                "",
            )
        )
        rows.append(
            (
                f"uncached lookup, {args.concurrency} tasks, pool {args.pool_size}",
                await rate(seconds, args.concurrency, uncached_lookup),
                ">= 800/s",
            )
        )
        rows.append(("uncached lookup, 1 task", await rate(seconds, 1, uncached_lookup), ""))
    finally:
        await directory.close()
    return rows


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="run briefly (CI)")
    parser.add_argument("--users", type=int, default=None, help="users with a certificate")
    parser.add_argument("--filler", type=int, default=None, help="entries without certificate")
    parser.add_argument("--seconds", type=float, default=None, help="per case")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--pool-size", type=int, default=4)
    args = parser.parse_args(argv)
    users = args.users or (10 if args.smoke else 200)
    # a multiple of the concurrency: task t only asks addresses t, t+C, ... so two
    # concurrent lookups never share one resolution (the lookup merges those)
    args.users = -(-max(users, args.concurrency) // args.concurrency) * args.concurrency
    args.filler = args.filler if args.filler is not None else (100 if args.smoke else 20_000)
    args.seconds = args.seconds or (0.3 if args.smoke else 3.0)
    with tempfile.TemporaryDirectory(prefix="mv-bench-annuaire-") as work:
        ldif, addresses, validator = build_directory(Path(work), args.users, args.filler)
        slapd = create_slapd(extra_schemas=[SCHEMA], extra_config=INDEXES, start=False)
        try:
            # slapadd -q (no per-entry sync, checks kept): 20,000 entries in seconds
            quick_load = ["slapadd", "-q", "-f", str(slapd.conf_path), "-l", str(ldif)]
            subprocess.run(quick_load, check=True, capture_output=True, timeout=600)
            slapd.start()
            rows = asyncio.run(measure(slapd.url, addresses, validator, args))
        finally:
            destroy_slapd(slapd)
    print(
        f"{args.users} users with a certificate, {args.filler} filler entries, "
        f"{args.seconds:g} s per case{' (smoke: numbers mean nothing)' if args.smoke else ''}"
    )
    print(f"{'case':<48} {'per second':>12}  target")
    for name, value, target in rows:
        print(f"{name:<48} {value:>12,.0f}  {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
