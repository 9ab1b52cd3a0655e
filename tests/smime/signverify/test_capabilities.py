"""smimeCapabilities: encoding ours, parsing a peer's, and the per-address store."""

from __future__ import annotations

import json
import stat
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.smime import der
from gateway.smime.capabilities import (
    AES128_CBC,
    AES256_CBC,
    AES256_GCM,
    DEFAULT_CAPABILITIES,
    MGF1,
    RSAES_OAEP,
    CapabilitiesRefused,
    CapabilitiesStore,
    SmimeCapability,
    encode_capabilities,
    parse_capabilities,
)
from gateway.smime.sign import sign
from gateway.smime.types import CertStatus, RecipientCapabilities, VerifyResult
from gateway.smime.verify import verify
from tests.smime.signverify.identities import ALICE, BOB, AcceptAll, Reject, SignPki

TEXT = b"Content-Type: text/plain\r\n\r\nhello\r\n"
SHA1_ID = der.sequence(der.oid("1.3.14.3.2.26"), der.null())


def test_default_capabilities_round_trip() -> None:
    caps = parse_capabilities(encode_capabilities(DEFAULT_CAPABILITIES))
    assert caps.aes_gcm and caps.rsa_oaep
    assert caps.ciphers[0] == AES256_GCM
    assert caps.source == "signed-message"


def test_cbc_only_peer() -> None:
    caps = parse_capabilities(
        encode_capabilities([SmimeCapability(AES256_CBC), SmimeCapability(AES128_CBC)])
    )
    assert not caps.aes_gcm and not caps.rsa_oaep
    assert caps.ciphers == (AES256_CBC, AES128_CBC)


def test_oaep_without_parameters_or_with_sha1_is_not_enough() -> None:
    for params in (
        None,
        der.sequence(der.explicit(0, SHA1_ID)),
        der.sequence(der.explicit(1, der.sequence(der.oid(MGF1), SHA1_ID))),
    ):
        caps = parse_capabilities(encode_capabilities([SmimeCapability(RSAES_OAEP, params)]))
        assert not caps.rsa_oaep


def test_malformed_capabilities() -> None:
    with pytest.raises(ValueError, match="malformed"):
        parse_capabilities(b"\x31\x00")
    with pytest.raises(ValueError, match="malformed"):
        parse_capabilities(b"\x30\x05\x30\x03\x02\x01\x01")


def _verified(pki: SignPki, address: str = ALICE, **kwargs: object) -> VerifyResult:
    person = pki[address]
    signed = sign(TEXT, person.cert, person.key, **kwargs)  # type: ignore[arg-type]
    result = verify(signed, validator=AcceptAll(), from_address=address)
    assert result.valid, result.reason
    return result


def test_store_remembers_from_a_verified_signature(sv_pki: SignPki, tmp_path: Path) -> None:
    store = CapabilitiesStore(tmp_path / "data")
    assert store.get(ALICE) is None
    stored = store.remember(ALICE, _verified(sv_pki))
    assert stored is not None and stored.aes_gcm and stored.rsa_oaep
    again = CapabilitiesStore(tmp_path / "data").get("Alice.Martin@CHU-A.test")
    assert again == stored
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    document = json.loads(store.path.read_text())
    assert document["version"] == 1 and ALICE in document["addresses"]


def test_store_refuses_unverified_results(sv_pki: SignPki, tmp_path: Path) -> None:
    store = CapabilitiesStore(tmp_path)
    alice = sv_pki[ALICE]
    signed = sign(TEXT, alice.cert, alice.key)
    rejected = verify(signed, validator=Reject(CertStatus.UNTRUSTED), from_address=ALICE)
    with pytest.raises(CapabilitiesRefused):
        store.remember(ALICE, rejected)
    with pytest.raises(CapabilitiesRefused):  # valid, but for alice, not bob
        store.remember(BOB, _verified(sv_pki))
    with pytest.raises(CapabilitiesRefused):
        store.remember(ALICE, VerifyResult(valid=False, reason="x"))
    assert store.get(ALICE) is None and store.get(BOB) is None


def test_older_signature_does_not_override(sv_pki: SignPki, tmp_path: Path) -> None:
    store = CapabilitiesStore(tmp_path)
    now = datetime.now(UTC)
    assert store.remember(ALICE, _verified(sv_pki, signing_time=now - timedelta(hours=1)))
    older_cbc_only = _verified(
        sv_pki, signing_time=now - timedelta(days=3), capabilities=[SmimeCapability(AES256_CBC)]
    )
    assert store.remember(ALICE, older_cbc_only) is None
    current = store.get(ALICE)
    assert current is not None and current.aes_gcm
    newer_cbc_only = _verified(sv_pki, signing_time=now, capabilities=[SmimeCapability(AES256_CBC)])
    assert store.remember(ALICE, newer_cbc_only) is not None
    current = store.get(ALICE)
    assert current is not None and not current.aes_gcm


def test_signature_without_capabilities_keeps_the_entry(sv_pki: SignPki, tmp_path: Path) -> None:
    store = CapabilitiesStore(tmp_path)
    store.remember(ALICE, _verified(sv_pki))
    assert store.remember(ALICE, _verified(sv_pki, capabilities=None)) is None
    assert store.get(ALICE) is not None


def test_future_signing_time_is_clamped(sv_pki: SignPki, tmp_path: Path) -> None:
    store = CapabilitiesStore(tmp_path)
    future = datetime.now(UTC) + timedelta(days=365)
    stored = store.remember(ALICE, _verified(sv_pki, signing_time=future))
    assert stored is not None and stored.learnt_at is not None
    assert stored.learnt_at <= datetime.now(UTC)


def test_damaged_file_reads_as_empty_and_is_rewritten(sv_pki: SignPki, tmp_path: Path) -> None:
    store = CapabilitiesStore(tmp_path)
    store.path.write_text("{not json")
    assert store.get(ALICE) is None
    assert store.remember(ALICE, _verified(sv_pki)) is not None
    assert CapabilitiesStore(tmp_path).get(ALICE) is not None


def test_remember_ignores_signer_capabilities_mutation(tmp_path: Path, sv_pki: SignPki) -> None:
    """The store records what the verified signer carried, nothing the caller adds."""
    result = _verified(sv_pki)
    signer = result.signers[0]
    tampered = replace(result, signers=(replace(signer, capabilities=RecipientCapabilities()),))
    stored = CapabilitiesStore(tmp_path).remember(ALICE, tampered)
    assert stored is not None and not stored.aes_gcm


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _capabilities_file(path: Path, address: str, *, gcm: bool) -> None:
    """Replace the file as another process would (new inode, hence a new stamp)."""
    entry = {"aes_gcm": gcm, "rsa_oaep": False, "ciphers": [], "learnt_at": None, "source": "x"}
    staged = path.with_suffix(".staged")
    staged.write_text(json.dumps({"version": 1, "addresses": {address: entry}}))
    staged.replace(path)


def test_get_sees_another_process_update_within_the_recheck_interval(tmp_path: Path) -> None:
    clock = FakeClock()
    store = CapabilitiesStore(tmp_path, clock=clock)
    assert store.get(ALICE) is None  # no file yet: that is remembered too
    _capabilities_file(store.path, ALICE, gcm=True)
    clock.now += CapabilitiesStore.RECHECK_SECONDS / 2
    assert store.get(ALICE) is None  # not looked at again yet
    clock.now += CapabilitiesStore.RECHECK_SECONDS / 2
    current = store.get(ALICE)
    assert current is not None and current.aes_gcm
    _capabilities_file(store.path, ALICE, gcm=False)
    clock.now -= 5  # a clock that goes back makes the store look again
    current = store.get(ALICE)
    assert current is not None and not current.aes_gcm


def test_remember_reads_the_file_afresh_and_get_sees_its_own_write(
    sv_pki: SignPki, tmp_path: Path
) -> None:
    clock = FakeClock()
    store = CapabilitiesStore(tmp_path, clock=clock)
    assert store.get(ALICE) is None and store.get(BOB) is None
    _capabilities_file(store.path, BOB, gcm=False)  # another process learnt bob's
    assert store.remember(ALICE, _verified(sv_pki)) is not None  # the clock has not moved
    current = store.get(ALICE)
    assert current is not None and current.aes_gcm  # our own write, seen at once
    assert store.get(BOB) is not None  # and the other process's entry was kept
    document = json.loads(store.path.read_text())
    assert set(document["addresses"]) == {ALICE, BOB}
