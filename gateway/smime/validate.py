"""Certificate path validation for S/MIME and TLS peers (RFC 5280 §6, RFC 8550 §4).

Role: ``CertificateValidator`` implements ``gateway.smime.types.ChainValidator``: one
synchronous, thread-safe ``validate(certificate, untrusted, purpose, at)`` that the
verifier, the SMTP front, the relay and the annuaire call. It holds no private key.

Decision (library): path building and signature checking are delegated to
``cryptography.x509.verification`` (Rust, maintained with cryptography itself) with
custom extension policies; revocation (CRL, OCSP) is ours (``revocation``), because the
library has none. pyhanko-certvalidator was the alternative: it checks revocation
itself, but it is async-only, pulls aiohttp and oscrypto (whose libcrypto loader fails on
Debian 12's OpenSSL 3.0, per the project's library survey: explicit trust roots only)
and is much slower.
Measured on this shared 2-core machine (``bench/bench_validate.py --pyhanko``, run with
pyhanko-certvalidator 0.33.0 in a separate virtualenv; 3-level RSA-2048 chain, CRLs of
200 entries for the leaf's CA and the root, in memory): our validation with both CRLs
cached 1,900-3,900/s, i.e. 0.24-0.53 of the bare library verifier without revocation
(6,300-8,700/s in the same runs; the spread is the other jobs on the machine); a cached
result 100,000-217,000/s; pyhanko-certvalidator 61-124/s with a fresh ValidationContext
and 117-252/s with a shared one. The library's own WebPKI CA profile refuses legacy
CAs (an intermediate without keyUsage: measured), hence our CA policy below.

What is checked, and what each failure gives (``CertStatus``):
- INVALID: the certificate or one of its extensions cannot be parsed.
- EXPIRED: the leaf is outside notBefore..notAfter at ``at`` (default: now); an expired
  CA on the only path found is reported as EXPIRED too.
- WEAK: RSA below 2048 bits, DSA, an EC curve other than P-256/P-384/P-521, or a
  certificate signed with MD5 or SHA-1 (the library refuses those for every CA).
- WRONG_USAGE (RFC 5280 §4.2.1.3, §4.2.1.12; RFC 8550 §4.4): by ``Purpose``:
  SMIME_SIGN needs keyUsage digitalSignature or nonRepudiation; SMIME_ENCRYPT needs
  keyEncipherment (RSA) or keyAgreement (EC, RFC 5753); TLS_SERVER digitalSignature,
  keyEncipherment or keyAgreement; TLS_CLIENT digitalSignature (each only when keyUsage
  is present). An EKU, when present, must contain emailProtection for S/MIME, serverAuth
  or clientAuth for TLS (anyExtendedKeyUsage is not accepted: fail closed). A leaf that
  is a CA (basicConstraints cA) is refused unless it is itself a configured anchor.
- UNTRUSTED: no path to a configured anchor through configured intermediates and the
  ``untrusted`` certificates (never anchors), or a path the library refuses (bad
  signature, path length, name constraints, unknown critical extension).
- REVOKED / REVOCATION_UNKNOWN: every certificate of the path but the anchor is checked
  (``RevocationChecker``: configured CRLs, distribution points, then OCSP). REVOKED
  always wins. With ``hard-fail``, a leaf without a usable answer, or an intermediate
  that publishes revocation information (CRL DP, OCSP URL or a configured CRL of its
  issuer) without a usable answer, gives REVOCATION_UNKNOWN; an intermediate that
  publishes none has nothing to check. ``soft-fail``: valid, ``revocation_checked``
  False and the reason says why. ``off``: not checked.

CA policy: the library's WebPKI CA profile requires keyUsage on every CA (and more of
the CA/Browser Forum profile); ours requires basicConstraints cA (the library also
enforces pathLenConstraint, name constraints (rfc822Name, dNSName, iPAddress; a
directoryName constraint is refused), unknown critical extensions, RSA >= 2048 and
SHA-2/ECDSA signatures) and, when keyUsage is present, keyCertSign. Certificate policies
are not processed (no requireExplicitPolicy support). Hostname checks for TLS are the
TLS layer's job (``ssl``), not this module's.

Cache: results per (certificate, purpose) (the key compares the whole DER), only for
validations "now" (``at`` None), only VALID and REVOKED (other outcomes may change with
other ``untrusted`` certificates or when a server comes back), until the earliest of the
certificates' notAfter, the next update of the revocation data used, ``result_ttl`` (1 h) and, for a
soft-fail result without revocation data, the retry delay of the checker.

Time: ``at`` moves the certificates' validity check only; revocation data must be
current by the checker's clock (a CRL describes the present, not ``at``).
"""

from __future__ import annotations

import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.verification import (
    Criticality,
    ExtensionPolicy,
    Policy,
    PolicyBuilder,
    Store,
    VerificationError,
)

from gateway.errors import ConfigError
from gateway.log import get_logger
from gateway.smime.crl import CrlError, parse_crl
from gateway.smime.fetch import Fetcher
from gateway.smime.leafcheck import MALFORMED_ERRORS, leaf_problem
from gateway.smime.pathdiag import diagnose_path_failure
from gateway.smime.revocation import (
    Clock,
    RevocationAnswer,
    RevocationChecker,
    RevocationMode,
    RevocationSettings,
    RevocationState,
    utc_now,
)
from gateway.smime.types import CertStatus, Purpose, ValidationResult

log = get_logger("smime.validate")

DEFAULT_RESULT_TTL = timedelta(hours=1)
MAX_CACHED_RESULTS = 10_000


class CertificateValidator:
    """RFC 5280 path validation + revocation; see the module docstring for the rules."""

    def __init__(
        self,
        anchors: Sequence[x509.Certificate],
        intermediates: Sequence[x509.Certificate] = (),
        crls: Sequence[bytes | Path] = (),
        revocation: RevocationMode | str = RevocationMode.HARD_FAIL,
        cache_dir: Path | None = None,
        *,
        fetcher: Fetcher | None = None,
        clock: Clock = utc_now,
        settings: RevocationSettings | None = None,
        result_ttl: timedelta = DEFAULT_RESULT_TTL,
        checker: RevocationChecker | None = None,
    ) -> None:
        """``crls``: configured CRLs as bytes (PEM/DER) or paths (re-read on change).
        ``checker`` shares an existing revocation checker (and its caches) instead of
        building one from ``crls``/``cache_dir``/``fetcher``/``settings``."""
        if not anchors:
            raise ValueError("at least one trust anchor is needed")
        self.anchors = tuple(anchors)
        self.intermediates = tuple(intermediates)
        self.mode = RevocationMode.parse(revocation)
        self.checker = checker or RevocationChecker(
            crls, cache_dir=cache_dir, fetcher=fetcher, clock=clock, settings=settings
        )
        self._clock = clock
        self._result_ttl = result_ttl
        self._store = Store(list(self.anchors))
        self._anchor_set = frozenset(self.anchors)
        self._ca_policy = _ca_extension_policy()
        self._results = _ResultCache(MAX_CACHED_RESULTS)

    @classmethod
    def from_files(
        cls,
        anchors: Iterable[Path],
        intermediates: Iterable[Path] = (),
        crls: Iterable[Path] = (),
        revocation: RevocationMode | str = RevocationMode.HARD_FAIL,
        cache_dir: Path | None = None,
        *,
        fetcher: Fetcher | None = None,
    ) -> CertificateValidator:
        """Build from ``[trust]`` files; every problem is one line of a ``ConfigError``.
        ``fetcher``: how revocation data is fetched (default ``HttpFetcher``)."""
        problems: list[str] = []
        anchor_certs = _load_all(anchors, "trust anchor", problems)
        intermediate_certs = _load_all(intermediates, "intermediate", problems)
        crl_paths = list(crls)
        for path in crl_paths:
            _check_crl_file(path, problems)
        if not anchor_certs and not problems:
            problems.append("no trust anchor configured")
        try:
            mode = RevocationMode.parse(revocation)
        except ValueError as error:
            problems.append(f"revocation: {error}")
        if problems:
            raise ConfigError(problems)
        return cls(anchor_certs, intermediate_certs, crl_paths, mode, cache_dir, fetcher=fetcher)

    def with_extra_anchors(self, anchors: Sequence[x509.Certificate]) -> CertificateValidator:
        """A validator that also trusts ``anchors`` (a route's own), sharing revocation
        caches; its result cache is its own (trust differs)."""
        return CertificateValidator(
            (*self.anchors, *anchors),
            self.intermediates,
            revocation=self.mode,
            clock=self._clock,
            result_ttl=self._result_ttl,
            checker=self.checker,
        )

    def validate(
        self,
        certificate: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        purpose: Purpose = Purpose.SMIME_SIGN,
        at: datetime | None = None,
    ) -> ValidationResult:
        """Validate ``certificate`` for ``purpose`` at ``at`` (default now)."""
        now = self._clock()
        key = _CacheKey(certificate, purpose)
        if at is None:
            cached = self._results.get(key, now)
            if cached is not None:
                return cached
        result, expires = self._validate(certificate, untrusted, purpose, at or now, now)
        if at is None and result.status in (CertStatus.VALID, CertStatus.REVOKED):
            self._results.put(key, result, expires)
        log.debug(
            "certificate.validated",
            serial=f"{certificate.serial_number:x}",
            purpose=purpose.value,
            status=result.status.value,
        )
        return result

    # -- the steps -------------------------------------------------------------------

    def _validate(
        self,
        certificate: x509.Certificate,
        untrusted: Sequence[x509.Certificate],
        purpose: Purpose,
        when: datetime,
        now: datetime,
    ) -> tuple[ValidationResult, datetime]:
        try:
            problem = leaf_problem(certificate, purpose, when, certificate in self._anchor_set)
        except MALFORMED_ERRORS as error:
            problem = ValidationResult(CertStatus.INVALID, f"malformed certificate: {error}")
        if problem is not None:
            return problem, now
        pool = [*self.intermediates, *untrusted]
        chain_or_failure = self._build_path(certificate, pool, when)
        if isinstance(chain_or_failure, ValidationResult):
            return chain_or_failure, now
        chain = tuple(chain_or_failure)
        expires = min(
            [now + self._result_ttl, *(c.not_valid_after_utc for c in chain)],
        )
        return self._check_revocation(chain, now, expires)

    def _build_path(
        self, certificate: x509.Certificate, pool: list[x509.Certificate], when: datetime
    ) -> list[x509.Certificate] | ValidationResult:
        verifier = (
            PolicyBuilder()
            .store(self._store)
            .time(when)
            .extension_policies(ca_policy=self._ca_policy, ee_policy=ExtensionPolicy.permit_all())
            .build_client_verifier()
        )
        try:
            return verifier.verify(certificate, pool).chain
        except VerificationError as error:
            try:
                status, reason = diagnose_path_failure(
                    certificate, pool, self.anchors, when, str(error)
                )
            except MALFORMED_ERRORS:  # a malformed certificate in the pool: no finer reason
                status, reason = CertStatus.UNTRUSTED, f"certificate path refused ({error})"
            return ValidationResult(status, reason)
        except (*MALFORMED_ERRORS, TypeError) as error:
            return ValidationResult(CertStatus.INVALID, f"malformed certificate path: {error}")

    def _check_revocation(
        self, chain: tuple[x509.Certificate, ...], now: datetime, expires: datetime
    ) -> tuple[ValidationResult, datetime]:
        if self.mode is RevocationMode.OFF:
            return ValidationResult(
                CertStatus.VALID, "revocation not checked (off)", chain
            ), expires
        missing: list[str] = []
        for position, (subject, issuer) in enumerate(itertools.pairwise(chain)):
            answer = self.checker.check(subject, issuer)
            label = (
                "certificate"
                if position == 0
                else f"intermediate {subject.subject.rfc4514_string()}"
            )
            if answer.state is RevocationState.REVOKED:
                return ValidationResult(
                    CertStatus.REVOKED, f"{label} {answer.reason}", chain
                ), _until(answer, expires)
            if answer.state is RevocationState.GOOD:
                expires = _until(answer, expires)
            elif position == 0 or answer.published:
                missing.append(f"{label}: {answer.reason}")
        if not missing:
            checked = len(chain) > 1  # a leaf that is itself an anchor has nothing to check
            return ValidationResult(
                CertStatus.VALID, "", chain, revocation_checked=checked
            ), expires
        detail = "revocation status unknown: " + "; ".join(missing)
        if self.mode is RevocationMode.HARD_FAIL:
            return ValidationResult(CertStatus.REVOCATION_UNKNOWN, detail, chain), now
        retry = now + self.checker.settings.retry_after
        return ValidationResult(CertStatus.VALID, f"soft-fail, {detail}", chain), min(
            expires, retry
        )


def _until(answer: RevocationAnswer, expires: datetime) -> datetime:
    return min(expires, answer.valid_until) if answer.valid_until is not None else expires


def _ca_extension_policy() -> ExtensionPolicy:
    """basicConstraints required (cA checked by the library), keyCertSign if keyUsage."""

    def key_cert_sign(
        _policy: Policy, _cert: x509.Certificate, usage: x509.KeyUsage | None
    ) -> None:
        if usage is not None and not usage.key_cert_sign:
            raise ValueError("CA key usage lacks keyCertSign")

    return (
        ExtensionPolicy.permit_all()
        .require_present(x509.BasicConstraints, Criticality.AGNOSTIC, None)
        .may_be_present(x509.KeyUsage, Criticality.AGNOSTIC, key_cert_sign)
    )


# -- configuration files -----------------------------------------------------------


def load_certificates(path: Path) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle (or one DER certificate); ``ValueError`` if none."""
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificates(data)
    return [x509.load_der_x509_certificate(data)]


def _load_all(paths: Iterable[Path], what: str, problems: list[str]) -> list[x509.Certificate]:
    certificates: list[x509.Certificate] = []
    for path in paths:
        try:
            certificates += load_certificates(path)
        except OSError as error:
            problems.append(f"{path}: cannot read {what} file ({error.strerror or error})")
        except ValueError:
            problems.append(f"{path}: no readable certificate in {what} file")
    return certificates


def _check_crl_file(path: Path, problems: list[str]) -> None:
    try:
        parse_crl(path.read_bytes())
    except OSError as error:
        problems.append(f"{path}: cannot read CRL file ({error.strerror or error})")
    except CrlError as error:
        problems.append(f"{path}: {error}")


class _CacheKey:
    """(certificate, purpose) as a result cache key, hashed once: a Certificate hashes
    its whole DER on every call (3 us, measured), and a hit hashes its key twice (the
    lookup, then ``move_to_end``). Equal when the purposes and the whole DER are (the same
    object first: comparing two Certificates costs 4 us, measured)."""

    __slots__ = ("_hash", "certificate", "purpose")

    def __init__(self, certificate: x509.Certificate, purpose: Purpose) -> None:
        self.certificate = certificate
        self.purpose = purpose
        self._hash = hash((certificate, purpose))

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _CacheKey)
            and self.purpose is other.purpose
            and (self.certificate is other.certificate or self.certificate == other.certificate)
        )


class _ResultCache:
    """Thread-safe LRU of validation results with a per-entry expiry."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lock = threading.Lock()
        self._entries: OrderedDict[_CacheKey, tuple[ValidationResult, datetime]] = OrderedDict()

    def get(self, key: _CacheKey, now: datetime) -> ValidationResult | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            if now >= entry[1]:
                del self._entries[key]
                return None
            self._entries.move_to_end(key)
            return entry[0]

    def put(self, key: _CacheKey, result: ValidationResult, expires: datetime) -> None:
        with self._lock:
            self._entries[key] = (result, expires)
            self._entries.move_to_end(key)
            while len(self._entries) > self._capacity:
                self._entries.popitem(last=False)
