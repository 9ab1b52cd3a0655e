"""A chain validation that needs the network never fetches on an event loop
(``gateway.crypto_calls``: ``OffLoopFetcher``, ``NetworkOnTheLoop``, ``run_crypto``).

Against the loopback revocation server of this directory's fixtures: the first
validation of a certificate must fetch its CRLs. Run through ``run_crypto`` with a
validator whose fetcher is an ``OffLoopFetcher``, it starts on the loop, is stopped
before any request leaves, and runs again in a thread, where the fetch happens; the
verdict is the one a plain validator gives. Once the CRLs are cached, a validation runs
on the loop alone. A fetch attempted on a loop outside ``run_crypto`` raises
``NetworkOnTheLoop`` and sends nothing. A CRL cached on disk by an earlier process is
read in a thread too (it can weigh megabytes), then served from memory on the loop.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest
from cryptography import x509

from gateway.crypto_calls import NetworkOnTheLoop, OffLoopFetcher, run_crypto
from gateway.pki.dev import DevPki
from gateway.smime.fetch import HttpFetcher
from gateway.smime.types import CertStatus, ValidationResult
from gateway.smime.validate import CertificateValidator
from tests.smime.validate.support import (
    USERS,
    Site,
    anchors_of,
    intermediates_of,
    load_cert,
)

ALICE, CLAIRE = USERS
PERSONNES_CRL = "/crl/personnes.crl"


class RecordingFetcher(HttpFetcher):
    """``HttpFetcher`` noting, for each request, whether its thread runs a loop."""

    def __init__(self) -> None:
        super().__init__()
        self.on_a_loop: list[bool] = []

    def get(self, url: str, *, max_bytes: int) -> bytes:
        self.on_a_loop.append(_loop_running())
        return super().get(url, max_bytes=max_bytes)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def validator_with(fetcher: OffLoopFetcher, cache_dir: Path, pki: DevPki) -> CertificateValidator:
    return CertificateValidator(
        anchors_of(pki), intermediates_of(pki), (), "hard-fail", cache_dir, fetcher=fetcher
    )


async def test_a_validation_needing_a_crl_runs_again_in_a_thread(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    recorder = RecordingFetcher()
    validator = validator_with(OffLoopFetcher(recorder), tmp_path, pki)
    threads: list[int] = []

    def validate(certificate: x509.Certificate) -> ValidationResult:
        threads.append(threading.get_ident())
        return validator.validate(certificate)

    before = site.hits(PERSONNES_CRL)
    first = await run_crypto(10, validate, load_cert(pki.user_cert(ALICE, "sign")))
    assert first.status is CertStatus.VALID, first.reason
    assert first.revocation_checked
    loop_thread = threading.get_ident()
    assert threads[0] == loop_thread and threads[1:] and loop_thread not in threads[1:]
    assert recorder.on_a_loop and not any(recorder.on_a_loop)  # every fetch off the loop
    assert site.hits(PERSONNES_CRL) == before + 1  # the aborted attempt sent nothing

    threads.clear()
    second = await run_crypto(10, validate, load_cert(pki.user_cert(CLAIRE, "sign")))
    assert second.status is CertStatus.VALID, second.reason
    assert threads == [loop_thread]  # CRLs cached: on the loop, no thread
    assert site.hits(PERSONNES_CRL) == before + 1


async def test_a_fetch_on_a_loop_outside_run_crypto_is_refused_before_sending(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    recorder = RecordingFetcher()
    validator = validator_with(OffLoopFetcher(recorder), tmp_path, pki)
    before = site.hits(PERSONNES_CRL)
    with pytest.raises(NetworkOnTheLoop):
        validator.validate(load_cert(pki.user_cert(ALICE, "sign")))
    assert recorder.on_a_loop == [] and site.hits(PERSONNES_CRL) == before


async def test_a_crl_cached_on_disk_is_read_in_a_thread_then_kept_in_memory(
    site: Site, pki: DevPki, tmp_path: Path
) -> None:
    earlier = validator_with(OffLoopFetcher(RecordingFetcher()), tmp_path, pki)
    alice = load_cert(pki.user_cert(ALICE, "sign"))
    assert (await run_crypto(10, earlier.validate, alice)).status is CertStatus.VALID
    before = site.hits(PERSONNES_CRL)

    recorder = RecordingFetcher()  # a restart: same cache directory, empty memory
    validator = validator_with(OffLoopFetcher(recorder), tmp_path, pki)
    threads: list[int] = []

    def validate(certificate: x509.Certificate) -> ValidationResult:
        threads.append(threading.get_ident())
        return validator.validate(certificate)

    first = await run_crypto(10, validate, alice)
    assert first.status is CertStatus.VALID and first.revocation_checked, first.reason
    loop_thread = threading.get_ident()
    assert threads[0] == loop_thread and threads[1:] and loop_thread not in threads[1:]
    assert recorder.on_a_loop == [] and site.hits(PERSONNES_CRL) == before  # from disk

    threads.clear()
    second = await run_crypto(10, validate, load_cert(pki.user_cert(CLAIRE, "sign")))
    assert second.status is CertStatus.VALID, second.reason
    assert threads == [loop_thread]  # in memory now: on the loop, no thread
