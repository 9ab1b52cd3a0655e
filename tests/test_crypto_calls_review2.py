"""Second review of "never a revocation fetch on the event loop" (session 8, R2).

``OffLoopFetcher`` stops a CRL or OCSP fetch on a loop thread and ``run_crypto`` runs
the call again in a thread. But a CRL fetch happens while ``CrlCache.get`` holds that
URL's ``threading.Lock`` (one fetch per URL). While a thread fetches a CRL, a second
verification of the same CA started on the loop (another entry in flight: the inbound
agent runs 16 at once) waits for that lock *on the loop thread*, before any fetcher is
called: the loop is held for the whole fetch (up to 20 s, and the DNS look-up is not
even bounded), the very thing the change meant to prevent.

The scenario, without a timed assertion: the fetch of the leaves' CRL, in a thread,
waits until a task of the loop releases it. A loop that is not held releases it at
once; a held one cannot, and the fetch gives up waiting after ``DEADLOCK_BREAKER``
seconds (only so that the test ends), which the test reports as the defect.

Fixed in ``gateway/smime/crlstore.py``: ``CrlCache.get`` takes the URL lock without
blocking first; when it is busy, it asks the fetcher whether it may wait
(``Fetcher.may_wait``: an ``OffLoopFetcher`` raises ``NetworkOnTheLoop`` on a loop
thread, ``HttpFetcher`` always may), then waits.
"""

from __future__ import annotations

import asyncio
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from gateway.crypto_calls import OffLoopFetcher, run_crypto
from gateway.pki.dev import DevPki, init_dev_pki
from gateway.smime.types import CertStatus
from gateway.smime.validate import CertificateValidator
from tests.peers.procs import make_temp_dir

USERS = ("alice.martin@chu-a.test", "claire.durand@clinique-b.test")
CRL_BASE = "http://crl.invalid/crl"  # never resolved: the fetcher below serves the files
LEAVES_CRL = "personnes.crl"
DEADLOCK_BREAKER = 3.0  # seconds; only reached when the loop is held (the defect)


@pytest.fixture(scope="module")
def pki() -> Iterator[DevPki]:
    directory = make_temp_dir("mv-review2-")
    try:
        yield init_dev_pki(directory / "pki", users=USERS, ec=True, crl_base_url=CRL_BASE)
    finally:
        shutil.rmtree(directory)


class GatedFetcher:
    """Serves the PKI's CRLs; the leaves' CRL only once ``release`` is set (by a task
    of the loop), noting whether that happened before ``DEADLOCK_BREAKER``."""

    def __init__(self, pki: DevPki) -> None:
        self.pki = pki
        self.fetching = threading.Event()
        self.release = threading.Event()
        self.released_by_the_loop: list[bool] = []

    def get(self, url: str, *, max_bytes: int) -> bytes:
        name = Path(urlsplit(url).path).name
        if name == LEAVES_CRL:
            self.fetching.set()
            self.released_by_the_loop.append(self.release.wait(DEADLOCK_BREAKER))
        crl = x509.load_pem_x509_crl(self.pki.crl(name.removesuffix(".crl")).read_bytes())
        return crl.public_bytes(serialization.Encoding.DER)

    def post(self, url: str, body: bytes, *, content_type: str, max_bytes: int) -> bytes:
        raise AssertionError("no OCSP expected: the CRLs answer")

    def may_wait(self) -> None:
        """Threads of this test may wait (``OffLoopFetcher`` decides for the loop)."""


def _certificate(pki: DevPki, address: str) -> x509.Certificate:
    return x509.load_pem_x509_certificates(pki.user_cert(address, "sign").read_bytes())[0]


async def test_a_verification_waiting_for_a_crl_fetch_does_not_hold_the_loop(
    pki: DevPki, tmp_path: Path
) -> None:
    fetcher = GatedFetcher(pki)
    anchors = [x509.load_pem_x509_certificate(pki.root_cert.read_bytes())]
    intermediates = x509.load_pem_x509_certificates(pki.intermediates.read_bytes())
    validator = CertificateValidator(
        anchors, intermediates, (), "hard-fail", tmp_path, fetcher=OffLoopFetcher(fetcher)
    )
    alice, claire = (_certificate(pki, address) for address in USERS)

    first = asyncio.ensure_future(run_crypto(10, validator.validate, alice))
    assert await asyncio.to_thread(fetcher.fetching.wait, 30)  # a thread holds the lock

    async def another_task_of_the_loop() -> None:
        await asyncio.sleep(0)  # after the second validation has started on the loop
        await asyncio.sleep(0)
        fetcher.release.set()

    second = asyncio.ensure_future(run_crypto(10, validator.validate, claire))
    releaser = asyncio.ensure_future(another_task_of_the_loop())
    results = await asyncio.gather(first, second, releaser)

    assert [r.status for r in results[:2]] == [CertStatus.VALID, CertStatus.VALID]
    assert fetcher.released_by_the_loop == [True]  # False: the loop was held meanwhile
