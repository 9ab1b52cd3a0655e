"""Revocation status of one certificate: CRLs first, then OCSP (RFC 5280 §6.3, RFC 6960).

Role: ``RevocationChecker.check(certificate, issuer)`` answers GOOD, REVOKED or UNKNOWN
with its source, its reason and how long the answer may be reused. What to do with
UNKNOWN (``RevocationMode``: hard-fail, soft-fail, off) is decided by the validator.
The checks on the data itself are in ``crl`` and ``ocsp`` (pure); the CRL sources and
their caches are in ``crlstore``; HTTP is in ``fetch``.

Order (decision): 1. the CRL files configured in ``[trust] crls``; 2. the CRLs of the
certificate's distribution points (cached, see ``crlstore``); 3. OCSP at the AIA URLs,
only when no CRL gave a usable answer. Why CRL first, although OCSP is fresher:
- privacy: an OCSP query tells the CA which correspondent we are writing to or reading
  from, each time; for health mail that is itself sensitive metadata. A CRL download
  reveals nothing about whom we talk to;
- cost and resilience: one CRL serves every certificate of a CA (the gateway validates
  many certificates of few CAs) and its last valid copy keeps working when the CA's
  server is down (MSSanté ECO.1.1.7); OCSP is one round trip per certificate;
- freshness is bounded anyway: cached CRLs are re-fetched after ``crl_refresh`` (1 h).
OCSP therefore covers certificates without distribution points, CRLs that cannot be
had, and CRLs that do not cover the certificate.

A CRL that is authentic (signature, scope) but past its nextUpdate cannot prove a
certificate good, but still proves it revoked (revocation is final; ``certificateHold``
excepted). Only ``http://`` distribution points and responders are used (``fetch``);
``ldap://`` ones are skipped with a reason. OCSP requests carry a random 16-byte nonce.
Answers are cached: CRLs per ``crlstore``; OCSP answers until the earliest of their
nextUpdate and ``ocsp_cache_max`` after they were received.

Thread-safe (locks around every shared map); blocking (network): call it from a thread.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import AuthorityInformationAccessOID

from gateway.log import get_logger
from gateway.smime import crl as crl_rules
from gateway.smime import ocsp as ocsp_rules
from gateway.smime.crlstore import CrlCache, CrlFile
from gateway.smime.fetch import Fetcher, FetchError, HttpFetcher, UnsupportedUrl, require_http

log = get_logger("smime.revocation")

Clock = Callable[[], datetime]
OCSP_REQUEST_TYPE = "application/ocsp-request"
MAX_OCSP_ANSWERS = 10_000  # cached answers; the map is emptied when it grows past this
MAX_VERIFIED_CRLS = 1024  # memo of (CRL, issuer) signature checks, emptied likewise


def utc_now() -> datetime:
    return datetime.now(UTC)


class RevocationMode(enum.Enum):
    """``[trust] revocation``: what an unanswered revocation question means."""

    HARD_FAIL = "hard-fail"  # no usable answer: the certificate is not valid
    SOFT_FAIL = "soft-fail"  # no usable answer: valid; a "revoked" answer still wins
    OFF = "off"  # revocation is not checked at all

    @classmethod
    def parse(cls, value: str | RevocationMode) -> RevocationMode:
        """The mode named ``value``; ``ValueError`` names the accepted values."""
        if isinstance(value, RevocationMode):
            return value
        for mode in cls:
            if mode.value == value:
                return mode
        choices = "|".join(mode.value for mode in cls)
        raise ValueError(f"expected one of {choices}, got {value!r}")


class RevocationState(enum.Enum):
    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"  # no usable CRL or OCSP answer


@dataclass(frozen=True)
class RevocationAnswer:
    """What is known about one certificate's revocation, and for how long."""

    state: RevocationState
    source: str = ""  # "CRL file …", "CRL http://…", "OCSP http://…"
    reason: str = ""  # why revoked / why unknown; safe to log
    valid_until: datetime | None = None  # reuse the answer until then
    published: bool = True  # False: no CRL DP, no OCSP URL and no configured CRL for it


@dataclass(frozen=True)
class RevocationSettings:
    """Tunables; the defaults are what the gateway runs with (see module docstrings)."""

    crl_refresh: timedelta = timedelta(hours=1)
    crl_grace: timedelta = timedelta(0)  # use of a CRL past its nextUpdate: none
    retry_after: timedelta = timedelta(seconds=60)  # after a failed fetch of a URL
    clock_skew: timedelta = timedelta(minutes=5)
    ocsp_max_age: timedelta = timedelta(days=1)  # responses without nextUpdate
    ocsp_cache_max: timedelta = timedelta(hours=1)
    max_crl_bytes: int = 64 * 1024 * 1024
    max_ocsp_bytes: int = 1024 * 1024
    use_ocsp: bool = True
    ocsp_nonce: bool = True


class RevocationChecker:
    """CRL-then-OCSP revocation answers with caching (see module docstring)."""

    def __init__(
        self,
        crls: Sequence[bytes | Path] = (),
        *,
        cache_dir: Path | None = None,
        fetcher: Fetcher | None = None,
        clock: Clock = utc_now,
        settings: RevocationSettings | None = None,
    ) -> None:
        """``crls``: configured CRLs, as bytes (PEM/DER, parsed now: ``CrlError`` when
        unreadable) or paths (re-read when the file changes)."""
        self.settings = settings or RevocationSettings()
        self._clock = clock
        self.fetcher = fetcher or HttpFetcher()  # read-only: how revocation data is fetched
        self._static = [crl_rules.parse_crl(c) for c in crls if isinstance(c, bytes)]
        self._files = [CrlFile(c) for c in crls if isinstance(c, Path)]
        self._cache = CrlCache(
            self.fetcher,
            cache_dir,
            clock,
            refresh=self.settings.crl_refresh,
            retry_after=self.settings.retry_after,
            max_bytes=self.settings.max_crl_bytes,
        )
        self._lock = threading.Lock()
        self._verified: dict[tuple[bytes, x509.Certificate], str | None] = {}
        self._ocsp_answers: dict[tuple[x509.Certificate, int], RevocationAnswer] = {}
        self._ocsp_failures: dict[str, tuple[datetime, str]] = {}

    def now(self) -> datetime:
        return self._clock()

    def check(self, certificate: x509.Certificate, issuer: x509.Certificate) -> RevocationAnswer:
        """GOOD or REVOKED from the first usable source, else UNKNOWN with the reasons."""
        problems: list[str] = []
        answer = (
            self._from_configured_crls(certificate, issuer, problems)
            or self._from_distribution_points(certificate, issuer, problems)
            or self._from_ocsp(certificate, issuer, problems)
        )
        if answer is not None:
            return answer
        published = bool(
            _distribution_urls(certificate)
            or _ocsp_urls(certificate)
            or any(p.crl.issuer == certificate.issuer for p in self._configured())
        )
        if not published:
            problems.append("no CRL distribution point, OCSP responder or configured CRL")
        return RevocationAnswer(
            RevocationState.UNKNOWN, reason="; ".join(problems), published=published
        )

    # -- CRLs ------------------------------------------------------------------------

    def _configured(self, problems: list[str] | None = None) -> list[crl_rules.ParsedCrl]:
        """Configured CRLs as they are now; file reading problems go to ``problems``."""
        current = list(self._static)
        for source in self._files:
            parsed, problem = source.current()
            if parsed is not None:
                current.append(parsed)
            if problem and problems is not None:
                problems.append(problem)
        return current

    def _from_configured_crls(
        self, certificate: x509.Certificate, issuer: x509.Certificate, problems: list[str]
    ) -> RevocationAnswer | None:
        for parsed in self._configured(problems):
            if parsed.crl.issuer != certificate.issuer:
                continue
            answer = self._answer_from_crl(parsed, certificate, issuer, "configured CRL", None)
            if isinstance(answer, str):
                problems.append(answer)
            else:
                return answer
        return None

    def _from_distribution_points(
        self, certificate: x509.Certificate, issuer: x509.Certificate, problems: list[str]
    ) -> RevocationAnswer | None:
        for url in _distribution_urls(certificate):
            try:
                require_http(url)
            except UnsupportedUrl as error:
                problems.append(f"CRL {url}: {error}")
                continue
            entry, problem = self._cache.get(url, lambda p: self._signature_problem(p, issuer))
            if problem:
                problems.append(problem)
            if entry is None:
                continue
            refresh_at = entry.fetched_at + self.settings.crl_refresh
            answer = self._answer_from_crl(
                entry.parsed, certificate, issuer, f"CRL {url}", refresh_at
            )
            if isinstance(answer, str):
                problems.append(answer)
            else:
                return answer
        return None

    def _signature_problem(
        self, parsed: crl_rules.ParsedCrl, issuer: x509.Certificate
    ) -> str | None:
        key = (parsed.fingerprint, issuer)  # Certificate: hash and == over its DER
        with self._lock:
            if key in self._verified:
                return self._verified[key]
        problem = crl_rules.signature_problem(parsed, issuer)
        with self._lock:
            if len(self._verified) > MAX_VERIFIED_CRLS:
                self._verified.clear()
            self._verified[key] = problem
        return problem

    def _answer_from_crl(
        self,
        parsed: crl_rules.ParsedCrl,
        certificate: x509.Certificate,
        issuer: x509.Certificate,
        source: str,
        refresh_at: datetime | None,
    ) -> RevocationAnswer | str:
        """An answer, or the reason (a str) why this CRL gives none."""
        problem = self._signature_problem(parsed, issuer) or crl_rules.scope_problem(
            parsed, certificate
        )
        if problem:
            return f"{source}: {problem}"
        entry = crl_rules.lookup(parsed, certificate.serial_number)
        stale = crl_rules.freshness_problem(
            parsed,
            self.now(),
            grace=self.settings.crl_grace,
            skew=self.settings.clock_skew,
        )
        if entry is not None and (stale is None or entry.reason != "certificateHold"):
            return RevocationAnswer(
                RevocationState.REVOKED,
                source=source,
                reason=f"revoked on {entry.revoked_at:%Y-%m-%d} ({entry.reason}), per {source}",
                valid_until=_earliest(parsed.next_update, refresh_at),
            )
        if stale:
            return f"{source}: {stale}"
        return RevocationAnswer(
            RevocationState.GOOD,
            source=source,
            valid_until=_earliest(parsed.next_update, refresh_at),
        )

    # -- OCSP ------------------------------------------------------------------------

    def _from_ocsp(
        self, certificate: x509.Certificate, issuer: x509.Certificate, problems: list[str]
    ) -> RevocationAnswer | None:
        if not self.settings.use_ocsp:
            return None
        key = (issuer, certificate.serial_number)
        now = self.now()
        with self._lock:
            cached = self._ocsp_answers.get(key)
        if cached is not None and cached.valid_until is not None and now < cached.valid_until:
            return cached
        for url in _ocsp_urls(certificate):
            answer = self._ask_responder(url, certificate, issuer, now, problems)
            if answer is not None:
                with self._lock:
                    if len(self._ocsp_answers) > MAX_OCSP_ANSWERS:
                        self._ocsp_answers.clear()
                    self._ocsp_answers[key] = answer
                return answer
        return None

    def _ask_responder(
        self,
        url: str,
        certificate: x509.Certificate,
        issuer: x509.Certificate,
        now: datetime,
        problems: list[str],
    ) -> RevocationAnswer | None:
        with self._lock:
            failure = self._ocsp_failures.get(url)
        if failure is not None and now < failure[0] + self.settings.retry_after:
            problems.append(failure[1])
            return None
        nonce = os.urandom(16) if self.settings.ocsp_nonce else None
        try:
            request = ocsp_rules.build_request(certificate, issuer, nonce)
            data = self.fetcher.post(
                url,
                request,
                content_type=OCSP_REQUEST_TYPE,
                max_bytes=self.settings.max_ocsp_bytes,
            )
            verdict = ocsp_rules.evaluate_response(
                data,
                certificate,
                issuer,
                nonce=nonce,
                now=now,
                skew=self.settings.clock_skew,
                max_age=self.settings.ocsp_max_age,
            )
        except FetchError as error:
            problem = f"OCSP {url}: {error}"
            with self._lock:
                self._ocsp_failures[url] = (now, problem)
            log.warning("ocsp.fetch_failed", url=url, reason=str(error))
            problems.append(problem)
            return None
        except ocsp_rules.OcspError as error:
            log.warning(
                "ocsp.rejected", url=url, serial=f"{certificate.serial_number:x}", reason=str(error)
            )
            problems.append(f"OCSP {url}: {error}")
            return None
        return self._answer_from_verdict(verdict, url, now, problems)

    def _answer_from_verdict(
        self, verdict: ocsp_rules.OcspVerdict, url: str, now: datetime, problems: list[str]
    ) -> RevocationAnswer | None:
        source = f"OCSP {url}"
        valid_until = _earliest(verdict.next_update, now + self.settings.ocsp_cache_max)
        if verdict.state is ocsp_rules.OcspState.GOOD:
            return RevocationAnswer(RevocationState.GOOD, source=source, valid_until=valid_until)
        if verdict.state is ocsp_rules.OcspState.REVOKED:
            revoked_on = f"{verdict.revoked_at:%Y-%m-%d}" if verdict.revoked_at else "?"
            return RevocationAnswer(
                RevocationState.REVOKED,
                source=source,
                reason=f"revoked on {revoked_on} ({verdict.reason}), per {source}",
                valid_until=valid_until,
            )
        problems.append(f"{source}: the responder does not know this certificate")
        return None


def _earliest(*moments: datetime | None) -> datetime | None:
    known = [m for m in moments if m is not None]
    return min(known) if known else None


def _extension(certificate: x509.Certificate, kind: type[x509.ExtensionType]) -> object | None:
    try:
        return certificate.extensions.get_extension_for_class(kind).value
    except (x509.ExtensionNotFound, ValueError):
        return None


def _distribution_urls(certificate: x509.Certificate) -> list[str]:
    """URIs of the full-CRL distribution points (RFC 5280 §4.2.1.13); points that are
    partial (reasons) or indirect (cRLIssuer) are left out: not supported."""
    points = _extension(certificate, x509.CRLDistributionPoints)
    if not isinstance(points, x509.CRLDistributionPoints):
        return []
    return [
        name.value
        for point in points
        if point.reasons is None and point.crl_issuer is None
        for name in (point.full_name or ())
        if isinstance(name, x509.UniformResourceIdentifier)
    ]


def _ocsp_urls(certificate: x509.Certificate) -> list[str]:
    access = _extension(certificate, x509.AuthorityInformationAccess)
    if not isinstance(access, x509.AuthorityInformationAccess):
        return []
    return [
        description.access_location.value
        for description in access
        if description.access_method == AuthorityInformationAccessOID.OCSP
        and isinstance(description.access_location, x509.UniformResourceIdentifier)
    ]
