"""S/MIME capabilities (RFC 8551 §2.5.2): what we advertise in our signatures, what we
learn from our correspondents' signatures, and where we keep it.

Role:
- ``DEFAULT_CAPABILITIES`` / ``encode_capabilities``: the smimeCapabilities value put in
  every signature we make, in our order of preference: AES-256-GCM, AES-128-GCM
  (RFC 5084), AES-256-CBC, AES-128-CBC (RFC 3565), then RSAES-OAEP with SHA-256 and
  MGF1-SHA-256 (RFC 3560 §5, RFC 4055 §4.1). Cipher capabilities carry no parameters.
- ``parse_capabilities``: a peer's smimeCapabilities value into ``RecipientCapabilities``.
  ``aes_gcm`` is set when id-aes128-GCM or id-aes256-GCM is listed; ``rsa_oaep`` only when
  id-RSAES-OAEP is listed with SHA-256 (or stronger) as its hash: OAEP without parameters
  means SHA-1 (RFC 8017 A.2.1), which the encryptor does not produce, so it would not help.
- ``CapabilitiesStore``: per address, what a correspondent's client supports, learnt only
  from a *verified* signature bound to that address (RFC 8551 §2.7.1: the capabilities of
  the most recent signed message win, compared by signingTime).

Invariants (store): one JSON file ``smime-capabilities.json`` under the data directory,
mode 0600, replaced atomically (temporary file, fsync, rename, fsync of the directory);
read-modify-write under an exclusive ``flock`` so that several worker processes never
lose each other's updates. Addresses are keys in lower case (a capability cache, not an
identity check: RFC 5321 local parts are case-sensitive, but two mailboxes differing only
by case are in practice one person, and the worst outcome is a CBC message).
An unreadable or damaged file reads as empty (the safe default: AES-CBC, PKCS#1 v1.5)
and is logged; the next ``remember`` rewrites it.

Freshness: ``get`` (once per recipient per message in the secure agent) re-checks the
file's ``stat`` at most once per ``RECHECK_SECONDS`` (1 s) and re-reads it only when its
inode, mtime or size changed; ``remember`` always re-reads under the lock, so a
read-modify-write never loses another process's update, and after its own write the
next ``get`` looks again. A 1 s staleness is acceptable: it can only delay, by a second,
the use of capabilities another process has just learnt (or replaced) for a
correspondent, which changes the algorithms chosen for that recipient (GCM or CBC, OAEP
or PKCS#1 v1.5, both readable by such a client), never whether a message is encrypted,
to whom, or with which certificate; RFC 8551 §2.7.1 leaves the update timing to us.

Security note: capabilities only ever *raise* the algorithms we use above the safe
default, and only from a signature that verified and is bound to the address: a forged
or unsigned message cannot downgrade nor poison the entry of someone else.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from asn1crypto import core

from gateway.log import get_logger
from gateway.pki.files import replace_file
from gateway.smime import ber, der
from gateway.smime.types import RecipientCapabilities, SmimeError, VerifyResult

_log = get_logger("smime.capabilities")

AES128_CBC = "2.16.840.1.101.3.4.1.2"
AES192_CBC = "2.16.840.1.101.3.4.1.22"
AES256_CBC = "2.16.840.1.101.3.4.1.42"
AES128_GCM = "2.16.840.1.101.3.4.1.6"
AES192_GCM = "2.16.840.1.101.3.4.1.26"
AES256_GCM = "2.16.840.1.101.3.4.1.46"
RSAES_OAEP = "1.2.840.113549.1.1.7"
MGF1 = "1.2.840.113549.1.1.8"
SHA256 = "2.16.840.1.101.3.4.2.1"
SHA384 = "2.16.840.1.101.3.4.2.2"
SHA512 = "2.16.840.1.101.3.4.2.3"

GCM_CIPHERS = frozenset({AES128_GCM, AES192_GCM, AES256_GCM})
_OAEP_STRONG_HASHES = frozenset({SHA256, SHA384, SHA512})
_MAX_CAPABILITIES = 64  # more is not a client's list, it is hostile


@dataclass(frozen=True)
class SmimeCapability:
    """One SMIMECapability: an algorithm OID and its DER-encoded parameters, if any."""

    oid: str
    parameters: bytes | None = None


def _sha256_algorithm_identifier() -> bytes:
    # RFC 4055 §2.1 (sha256Identifier): parameters NULL.
    return der.sequence(der.oid(SHA256), der.null())


def oaep_sha256_parameters() -> bytes:
    """RSAES-OAEP-params with SHA-256 and MGF1-SHA-256, default (empty) label
    (RFC 4055 §4.1, rSAES-OAEP-SHA256-Identifier)."""
    mgf = der.sequence(der.oid(MGF1), _sha256_algorithm_identifier())
    return der.sequence(der.explicit(0, _sha256_algorithm_identifier()), der.explicit(1, mgf))


DEFAULT_CAPABILITIES: tuple[SmimeCapability, ...] = (
    SmimeCapability(AES256_GCM),
    SmimeCapability(AES128_GCM),
    SmimeCapability(AES256_CBC),
    SmimeCapability(AES128_CBC),
    SmimeCapability(RSAES_OAEP, oaep_sha256_parameters()),
)


def encode_capabilities(capabilities: Sequence[SmimeCapability]) -> bytes:
    """DER ``SMIMECapabilities ::= SEQUENCE OF SMIMECapability`` (order kept: it is the
    order of preference, RFC 8551 §2.5.2)."""
    items = []
    for capability in capabilities:
        params = () if capability.parameters is None else (capability.parameters,)
        items.append(der.sequence(der.oid(capability.oid), *params))
    return der.sequence(*items)


class _HashAlgorithm(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    _fields = [  # noqa: RUF012 - asn1crypto declares fields as class lists
        ("algorithm", core.ObjectIdentifier),
        ("parameters", core.Any, {"optional": True}),
    ]


class _OaepParams(core.Sequence):  # type: ignore[misc]
    _fields = [  # noqa: RUF012
        ("hash_algorithm", _HashAlgorithm, {"explicit": 0, "optional": True}),
        ("mask_gen_algorithm", core.Any, {"explicit": 1, "optional": True}),
        ("p_source_algorithm", core.Any, {"explicit": 2, "optional": True}),
    ]


def _oaep_hash_is_strong(parameters: bytes | None) -> bool:
    """True when OAEP capability parameters name SHA-256/384/512 (absent means SHA-1)."""
    if parameters is None:
        return False
    hash_algorithm = _OaepParams.load(parameters, strict=True)["hash_algorithm"]
    if isinstance(hash_algorithm, core.Void):
        return False
    return str(hash_algorithm["algorithm"].dotted) in _OAEP_STRONG_HASHES


@functools.lru_cache(maxsize=256)
def dotted_oid(encoded: bytes) -> str:
    """Dotted text of a DER OBJECT IDENTIFIER TLV (cached: the same few OIDs recur)."""
    return str(core.ObjectIdentifier.load(encoded, strict=True).dotted)


def _capability(view: memoryview, value: bytes, element: ber.Tlv) -> tuple[str, bytes | None]:
    """(OID, DER parameters or None) of one SMIMECapability."""
    if not element.is_(ber.UNIVERSAL, 16) or not element.constructed:
        raise ValueError("an SMIMECapability is not a SEQUENCE")
    members = ber.children(view, element)
    if not 1 <= len(members) <= 2 or not members[0].is_(ber.UNIVERSAL, 6):
        raise ValueError("an SMIMECapability is not SEQUENCE { OID, parameters }")
    dotted = dotted_oid(value[members[0].start : members[0].end])
    params = value[members[1].start : members[1].end] if len(members) == 2 else None
    return dotted, params


def parse_capabilities(
    value: bytes, learnt_at: datetime | None = None, source: str = "signed-message"
) -> RecipientCapabilities:
    """A peer's ``SMIMECapabilities`` (DER of one attribute value) into
    ``RecipientCapabilities``; raises ``ValueError`` when it is not a SEQUENCE OF
    SMIMECapability. Unknown algorithms are listed in ``ciphers`` but change nothing;
    at most 64 capabilities are read."""
    try:
        view = memoryview(value)
        top = ber.read_top(view)
        if not top.is_(ber.UNIVERSAL, 16) or not top.constructed:
            raise ValueError("not a SEQUENCE")
        elements = ber.children(view, top)
        if len(elements) > _MAX_CAPABILITIES:
            raise ValueError(f"more than {_MAX_CAPABILITIES} capabilities")
        oids: list[str] = []
        oaep = False
        for element in elements:
            dotted, params = _capability(view, value, element)
            oids.append(dotted)
            if dotted == RSAES_OAEP:
                oaep = oaep or _oaep_hash_is_strong(params)
    except (ValueError, TypeError, KeyError) as error:
        raise ValueError(f"malformed smimeCapabilities: {error}") from None
    return RecipientCapabilities(
        aes_gcm=any(oid in GCM_CIPHERS for oid in oids),
        rsa_oaep=oaep,
        ciphers=tuple(oids),
        learnt_at=learnt_at,
        source=source,
    )


# --------------------------------------------------------------------------- store


class CapabilitiesRefused(SmimeError):
    """``remember`` was given a verification that does not prove the address's client."""


def _key(address: str) -> str:
    return address.strip().lower()


def _to_json(caps: RecipientCapabilities) -> dict[str, Any]:
    return {
        "aes_gcm": caps.aes_gcm,
        "rsa_oaep": caps.rsa_oaep,
        "ciphers": list(caps.ciphers),
        "learnt_at": caps.learnt_at.isoformat() if caps.learnt_at else None,
        "source": caps.source,
    }


def _from_json(data: Any) -> RecipientCapabilities | None:
    if not isinstance(data, dict):
        return None
    try:
        learnt = data.get("learnt_at")
        ciphers = data.get("ciphers", [])
        if not isinstance(ciphers, list) or not all(isinstance(c, str) for c in ciphers):
            return None
        return RecipientCapabilities(
            aes_gcm=data.get("aes_gcm") is True,
            rsa_oaep=data.get("rsa_oaep") is True,
            ciphers=tuple(ciphers),
            learnt_at=datetime.fromisoformat(learnt) if isinstance(learnt, str) else None,
            source=str(data.get("source", "")),
        )
    except ValueError:
        return None


def _address_matches(address: str, candidates: Sequence[str]) -> bool:
    wanted = _key(address)
    return any(_key(candidate) == wanted for candidate in candidates)


class CapabilitiesStore:
    """Per-address ``RecipientCapabilities`` kept in ``data_dir/smime-capabilities.json``."""

    FILE_NAME = "smime-capabilities.json"
    LOCK_NAME = ".smime-capabilities.lock"
    RECHECK_SECONDS = 1.0

    def __init__(self, data_dir: Path, clock: Callable[[], float] = time.monotonic) -> None:
        self._dir = Path(data_dir)
        self._path = self._dir / self.FILE_NAME
        self._clock = clock
        self._checked_at: float | None = None  # clock() of the last stat, None: look again
        self._cache_stamp: tuple[int, int, int] | None = None  # None: no file
        self._cache: dict[str, Any] = {}

    @property
    def path(self) -> Path:
        return self._path

    def get(self, address: str) -> RecipientCapabilities | None:
        """What ``address``'s client is known to support, or ``None`` (assume the least)."""
        return _from_json(self._recent().get(_key(address)))

    def remember(self, address: str, result: VerifyResult) -> RecipientCapabilities | None:
        """Record the capabilities that a verified signature from ``address`` carried.

        Refused (``CapabilitiesRefused``) unless ``result`` is valid, bound to the From
        address, and one valid signer's certificate names ``address``. Returns what was
        stored, or ``None`` when the signature carried no capabilities or an entry from a
        more recent signing time is already there (RFC 8551 §2.7.1)."""
        caps = self._capabilities_to_learn(address, result)
        if caps is None:
            return None
        learnt = caps.learnt_at or datetime.now(UTC)
        caps = RecipientCapabilities(
            aes_gcm=caps.aes_gcm,
            rsa_oaep=caps.rsa_oaep,
            ciphers=caps.ciphers,
            learnt_at=min(learnt, datetime.now(UTC)),  # a future signingTime wins nothing
            source="signed-message",
        )
        with self._locked():
            entries = dict(self._load())
            previous = _from_json(entries.get(_key(address)))
            if previous and previous.learnt_at and caps.learnt_at:
                if previous.learnt_at > caps.learnt_at:
                    return None
            entries[_key(address)] = _to_json(caps)
            self._write(entries)
            self._checked_at = None
        _log.info(
            "smime.capabilities.learnt", address=_key(address), gcm=caps.aes_gcm, oaep=caps.rsa_oaep
        )
        return caps

    @staticmethod
    def _capabilities_to_learn(address: str, result: VerifyResult) -> RecipientCapabilities | None:
        if not result.valid or not result.from_address_bound:
            raise CapabilitiesRefused("capabilities are learnt only from a verified signature")
        for signer in result.signers:
            validation = signer.certificate_validation
            if not signer.signature_valid or validation is None or not validation.valid:
                continue
            if _address_matches(address, signer.email_addresses):
                return signer.capabilities
        raise CapabilitiesRefused(f"no verified signer of the message is bound to {address}")

    # ----------------------------------------------------------------- file handling

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._dir / self.LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _recent(self) -> dict[str, Any]:
        """The entries as of at most ``RECHECK_SECONDS`` ago (see the module docstring)."""
        now = self._clock()
        checked_at = self._checked_at
        if checked_at is not None and 0 <= now - checked_at < self.RECHECK_SECONDS:
            return self._cache
        entries = self._load()
        self._checked_at = now
        return entries

    def _load(self) -> dict[str, Any]:
        """The entries as the file holds them now (one ``stat``; read when it changed)."""
        try:
            info = self._path.stat()
        except FileNotFoundError:
            self._cache_stamp, self._cache = None, {}
            return self._cache
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        if stamp == self._cache_stamp:
            return self._cache
        try:
            document = json.loads(self._path.read_bytes())
            entries = document["addresses"]
            if document.get("version") != 1 or not isinstance(entries, dict):
                raise ValueError("unknown layout")
        except (OSError, ValueError, KeyError, TypeError) as error:
            _log.warning(
                "smime.capabilities.unreadable", path=str(self._path), error=type(error).__name__
            )
            entries = {}
        self._cache_stamp, self._cache = stamp, entries
        return entries

    def _write(self, entries: dict[str, Any]) -> None:
        document = {"version": 1, "addresses": dict(sorted(entries.items()))}
        data = json.dumps(document, indent=1, sort_keys=True).encode("utf-8") + b"\n"
        replace_file(self._path, data, mode=0o600)
