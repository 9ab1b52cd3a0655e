"""Benchmark of certificate validation (gateway.smime.validate), with its baselines.

Usage: ``python bench/bench_validate.py [--smoke] [--pyhanko]``

What is measured, in one process, on one 3-level chain shaped like the dev PKI (RSA-2048
root -> intermediate -> 50 leaves; CRLs of 200 entries for the leaves' CA and for the
root, served by an in-process fetcher so the network is not measured):

- ``raw verifier``: cryptography's ``x509.verification`` client verifier, built once,
  no revocation (the baseline: the library alone);
- ``fresh results``: ``CertificateValidator.validate(leaf, at=now)`` (``at`` bypasses the
  result cache), hard-fail revocation with both CRLs already fetched and cached: the cost
  of one full validation the first time a certificate is seen;
- ``cached results``: ``validate(leaf)`` again: what repeated mail from the same
  correspondents costs;
- ``pyhanko`` (``--pyhanko``, needs pyhanko-certvalidator importable, not a project
  dependency): the alternative library, same chain and CRLs, hard-fail, with a fresh
  ValidationContext per validation (it parses the CRLs again each time) and with one
  shared context (it then caches what it learnt).

``--smoke`` runs each case for ~0.3 s (CI proves the benchmark still works; the numbers
are then noise). Prints validations/s and the ratio to the raw verifier.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from cryptography.x509.verification import Criticality, ExtensionPolicy, PolicyBuilder, Store

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gateway.smime.types import Purpose
from gateway.smime.validate import CertificateValidator

NOW = datetime.now(UTC)
LEAVES = 50
REVOKED_ENTRIES = 200
CRL_BASE = "http://crl.bench.invalid"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _certificate(
    subject: str,
    key: rsa.RSAPrivateKey,
    issuer: str,
    issuer_key: rsa.RSAPrivateKey,
    *,
    ca: bool,
    crl_of: str | None,
) -> x509.Certificate:
    usage = (
        x509.KeyUsage(False, False, False, False, False, True, True, False, False)
        if ca
        else x509.KeyUsage(True, True, False, False, False, False, False, False, False)
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()), False
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False
        ).add_extension(
            x509.SubjectAlternativeName([x509.RFC822Name(f"{subject}@bench.test")]), False
        )
    if crl_of is not None:
        point = x509.DistributionPoint(
            [x509.UniformResourceIdentifier(f"{CRL_BASE}/{crl_of}.crl")], None, None, None
        )
        builder = builder.add_extension(x509.CRLDistributionPoints([point]), False)
    return builder.sign(issuer_key, hashes.SHA256())


def _crl(issuer: str, key: rsa.RSAPrivateKey) -> bytes:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(_name(issuer))
        .last_update(NOW - timedelta(minutes=1))
        .next_update(NOW + timedelta(days=7))
        .add_extension(x509.CRLNumber(1), False)
    )
    for serial in range(1, REVOKED_ENTRIES + 1):
        entry = x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(NOW)
        builder = builder.add_revoked_certificate(entry.build())
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)


class Chain:
    """Root, intermediate, leaves and the two CRLs (built once)."""

    def __init__(self) -> None:
        root_key, inter_key = _key(), _key()
        self.root = _certificate("root", root_key, "root", root_key, ca=True, crl_of=None)
        self.inter = _certificate("inter", inter_key, "root", root_key, ca=True, crl_of="root")
        self.leaves = [
            _certificate(f"user{i}", _key(), "inter", inter_key, ca=False, crl_of="inter")
            for i in range(LEAVES)
        ]
        self.crls = {
            f"{CRL_BASE}/root.crl": _crl("root", root_key),
            f"{CRL_BASE}/inter.crl": _crl("inter", inter_key),
        }


class MemoryFetcher:
    """A ``Fetcher`` answering from a dict (the network is not what is measured)."""

    def __init__(self, bodies: dict[str, bytes]) -> None:
        self.bodies = bodies

    def get(self, url: str, *, max_bytes: int) -> bytes:
        return self.bodies[url]

    def post(self, url: str, body: bytes, *, content_type: str, max_bytes: int) -> bytes:
        raise KeyError(url)


def rate(run_once: Callable[[int], object], seconds: float) -> float:
    """Validations per second of ``run_once(i)`` over about ``seconds``."""
    count, started = 0, time.perf_counter()
    deadline = started + seconds
    while True:
        for _ in range(50):
            run_once(count)
            count += 1
        elapsed = time.perf_counter() - started
        if elapsed >= seconds or time.perf_counter() > deadline:
            return count / elapsed


def raw_verifier(chain: Chain) -> Callable[[int], object]:
    ee_policy = ExtensionPolicy.permit_all()
    ca_policy = ExtensionPolicy.permit_all().require_present(
        x509.BasicConstraints, Criticality.AGNOSTIC, None
    )
    verifier = (
        PolicyBuilder()
        .store(Store([chain.root]))
        .time(NOW)
        .extension_policies(ca_policy=ca_policy, ee_policy=ee_policy)
        .build_client_verifier()
    )
    return lambda i: verifier.verify(chain.leaves[i % LEAVES], [chain.inter])


def ours(chain: Chain, *, cached: bool) -> Callable[[int], object]:
    validator = CertificateValidator(
        [chain.root], [chain.inter], revocation="hard-fail", fetcher=MemoryFetcher(chain.crls)
    )
    for leaf in chain.leaves:  # warm the CRL cache (and the result cache)
        assert validator.validate(leaf, purpose=Purpose.SMIME_SIGN).valid
    if cached:
        return lambda i: validator.validate(chain.leaves[i % LEAVES])
    return lambda i: validator.validate(chain.leaves[i % LEAVES], at=NOW)


def pyhanko(chain: Chain, *, shared_context: bool) -> Callable[[int], object]:
    from asn1crypto import x509 as asn1_x509
    from pyhanko_certvalidator import CertificateValidator as PhValidator
    from pyhanko_certvalidator import ValidationContext

    def load(certificate: x509.Certificate) -> object:
        return asn1_x509.Certificate.load(certificate.public_bytes(serialization.Encoding.DER))

    root, inter = load(chain.root), load(chain.inter)
    leaves = [load(leaf) for leaf in chain.leaves]
    crls = list(chain.crls.values())
    loop = asyncio.new_event_loop()

    def context() -> object:
        return ValidationContext(
            trust_roots=[root],
            other_certs=[inter],
            crls=crls,
            allow_fetching=False,
            revocation_mode="hard-fail",
        )

    shared = context()

    async def once(leaf: object) -> None:
        validator = PhValidator(leaf, validation_context=shared if shared_context else context())
        await validator.async_validate_usage({"digital_signature"}, {"email_protection"})

    return lambda i: loop.run_until_complete(once(leaves[i % LEAVES]))


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="a few seconds, for CI")
    parser.add_argument("--pyhanko", action="store_true", help="also time pyhanko-certvalidator")
    args = parser.parse_args(argv)
    seconds = 0.3 if args.smoke else 3.0
    chain = Chain()
    cases: list[tuple[str, Callable[[int], object]]] = [
        ("raw verifier (cryptography, no revocation)", raw_verifier(chain)),
        ("fresh results (path + 2 cached CRLs)", ours(chain, cached=False)),
        ("cached results", ours(chain, cached=True)),
    ]
    if args.pyhanko:
        cases.append(("pyhanko, fresh context (2 CRLs)", pyhanko(chain, shared_context=False)))
        cases.append(("pyhanko, shared context (2 CRLs)", pyhanko(chain, shared_context=True)))
    rates = [(label, rate(run, seconds)) for label, run in cases]
    baseline = rates[0][1]
    print(f"bench_validate: {LEAVES} leaves, CRLs of {REVOKED_ENTRIES} entries, {seconds}s/case")
    for label, value in rates:
        print(f"  {label:<45} {value:>10,.0f}/s   x{value / baseline:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
