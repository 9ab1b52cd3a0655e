"""Certificate lookup for the secure agent: who can this message be encrypted to?

Role: ``CertificateLookup.lookup(address)`` finds the encryption certificates of a
recipient, each checked by the S/MIME engine's validator for ``Purpose.SMIME_ENCRYPT``
(path to the trust anchors, validity, key usage keyEncipherment/keyAgreement, EKU
emailProtection, revocation, key strength). It runs in the secure agent, which holds no
listening socket; it reads only public data.

Order of the sources (the first that yields a valid certificate wins; ARCHITECTURE and
the Direct Project's practice: address-bound before organisation-bound):
1. the annuaire entry whose mailbox is the address, its certificates taken from the
   configured attributes; for ``local+tag@domain``, that address's own entry when the
   directory has one (then it is another mailbox, with its own certificate), else the
   entry of ``local@domain`` (sub-address, RFC 5233);
2. the domain / organisation entry: the entry whose mail is the bare domain;
3. with ``dns_cert``: DNS CERT records at the address-bound names, then at the domain
   (``annuaire.dnscert``, RFC 4398).

Each certificate must also be *bound* to what it was found for (RFC 8550 §3, RFC 5280
§4.2.1.6): an address-level certificate carries the address as an rfc822Name (or, with
no rfc822Name in the SAN, as emailAddress in the subject); a domain-level one carries the
domain as a dNSName or an rfc822Name. A valid certificate that is not bound is reported
as WRONG_USAGE ("not bound to ..."). The names are read by
``gateway.smime.certnames`` (the verifier and the key store read them the same way).
Addresses compare with their ASCII letters case-folded and nothing else (``mailbox_key``),
as LDAP's caseIgnoreIA5Match on ``mail`` does: Unicode case folding would make distinct
RFC 6531 mailboxes one (``straße`` and ``strasse``, the Kelvin sign and ``k``, the
``ﬁ`` ligature and ``fi``), and give one person's certificate to another. A value that
is not a DER certificate is skipped with a warning (never fatal for the lookup).

Bounds (the secure agent holds the private keys: one hostile or broken entry must not
cost it seconds of CPU and many CRL/OCSP fetches). Checked in one place, ``_add``,
which every source (address entry, domain entry, DNS CERT) goes through:
- ``MAX_CANDIDATES`` (16): the distinct certificate values one lookup examines, all
  sources together, counted *before* any is parsed (a malformed or oversized value
  counts too, so the skipped reasons and warnings are bounded as well). An IGC-Santé
  entry holds 1 to 4 (signature and encryption, the renewed pair while both are
  valid); 16 is four such sets (the address entry, the domain entry and two DNS
  answers each holding a full set of unusable ones before a usable one is met), and
  bounds one lookup to 16 path validations. A small fixed limit in Postfix's manner
  (``smtp_mx_address_limit``), but unlike Postfix the extra values are not ignored:
  the newest, or the only, valid certificate may be among them, and a lookup that
  examined part of the answer cannot say "no certificate", which sends the message
  to the route's fallback (a postal letter, a partner network, a bounce). Decision
  (fail closed, as ``ldap_backend`` treats a server-side size limit): beyond the
  limit the lookup raises ``TooManyCertificates``, a ``DirectoryUnavailable``; nothing
  of that source is parsed or validated, nothing is cached, the message waits and is
  retried (each retry costs one directory read, no validation) until an operator
  fixes the entry or the message expires with a DSN saying why. The warning
  ``annuaire.lookup.too_many_certificates`` and the error text (which the agent
  audits as the deferral's reason) carry the counts and the limit, never a
  certificate.
- ``MAX_CERTIFICATE_BYTES`` (32 KiB): a longer value is not parsed; it is skipped like
  a malformed one (``skipped``, warning ``annuaire.certificate.oversized`` with its
  size). A real IGC-Santé certificate is 1.5-2 KiB (RSA 2048); 32 KiB leaves room for
  RSA 4096, long policy and distribution point lists, even a small embedded logotype
  (RFC 3709); it is half of what one DNS CERT record can carry (RDLENGTH, 16 bits).
  Such a value is a bad value of the entry, not a certificate the lookup failed to
  see, hence "skipped", not "unavailable".

Result: every candidate with its validation; ``certificates`` are the valid ones,
newest first (latest notBefore, then latest notAfter). No valid certificate is a
negative answer (``found`` False): the caller applies the route's fallback.

Failures: ``DirectoryUnavailable`` (directory or DNS down, or ``TooManyCertificates``)
passes through and is never cached, never turned into "no certificate" (the message
waits and retries).

Cache: results per address (``mailbox_key``, tag kept) for ``cache_ttl`` when a valid
certificate was found (capped by the earliest notAfter among them) and for
``negative_cache_ttl`` otherwise; at most ``max_entries`` addresses (oldest dropped).
Concurrent lookups of one address share one resolution. A TTL of 0 disables that side.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from cryptography import x509

from annuaire.backend import Directory
from annuaire.dnscert import DnsCertFinder, address_names, domain_name
from annuaire.errors import DirectoryUnavailable, EntryError
from annuaire.model import Entry, address_domain, address_key, normalise_address, strip_tag
from gateway.log import get_logger
from gateway.smime.certnames import certificate_addresses, certificate_dns_names
from gateway.smime.types import CertStatus, ChainValidator, Purpose, ValidationResult

if TYPE_CHECKING:
    from gateway.config import Config

log = get_logger("annuaire")

DEFAULT_MAX_ENTRIES = 100_000
MAX_CANDIDATES = 16  # distinct certificate values examined by one lookup (docstring)
MAX_CERTIFICATE_BYTES = 32 * 1024  # one value longer than this is not parsed (docstring)


class TooManyCertificates(DirectoryUnavailable):
    """One lookup met more certificate values than it may examine: the answer was not
    examined in full, so it is neither a certificate nor "no certificate" (module
    docstring, Bounds). The text carries counts only."""

    def __init__(self, address: str, source: str, count: int, limit: int) -> None:
        self.address = address
        self.source = source
        self.count = count
        self.limit = limit
        super().__init__(
            f"annuaire: {count} certificate values for {address} (at {source}) exceed "
            f"the limit of {limit} per lookup; the lookup stopped, no certificate used"
        )


@dataclass(frozen=True)
class Candidate:
    """One certificate found for a recipient, where it came from, and its validation."""

    certificate: x509.Certificate
    source: str  # "annuaire:address", "annuaire:domain", "dns:<owner name>"
    bound_to: str  # the address or domain it was looked up for
    validation: ValidationResult

    @property
    def valid(self) -> bool:
        return self.validation.valid


@dataclass(frozen=True)
class LookupResult:
    """What the lookup found for one address (see the module docstring)."""

    address: str  # as looked up: tag stripped
    entry: Entry | None  # the address entry, else the domain entry, else None
    candidates: tuple[Candidate, ...]  # valid ones first, newest first; then the others
    skipped: tuple[str, ...] = ()  # why some values were not certificates

    @property
    def certificates(self) -> tuple[x509.Certificate, ...]:
        """The valid encryption certificates, newest first."""
        return tuple(c.certificate for c in self.candidates if c.valid)

    @property
    def found(self) -> bool:
        return any(c.valid for c in self.candidates)


def certificate_purpose(certificate: x509.Certificate) -> str:
    """``sign``, ``encrypt``, ``sign+encrypt`` from keyUsage (``any`` without it)."""
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return "any"
    except ValueError:
        return "unknown"
    sign = usage.digital_signature or usage.content_commitment
    encrypt = usage.key_encipherment or usage.key_agreement
    return {(True, True): "sign+encrypt", (True, False): "sign", (False, True): "encrypt"}.get(
        (sign, encrypt), "other"
    )


def mailbox_key(address: str) -> str:
    """The form addresses compare in: ``annuaire.model.address_key`` (ASCII letters
    lower-cased, every other character kept; the module docstring says why)."""
    return address_key(address)


def is_bound(certificate: x509.Certificate, name: str) -> bool:
    """True when ``certificate`` names ``name`` (an address, or a domain)."""
    emails = {mailbox_key(address) for address in certificate_addresses(certificate)}
    if "@" in name:
        return mailbox_key(name) in emails
    return name.lower().rstrip(".") in certificate_dns_names(certificate) or (
        mailbox_key(name) in emails
    )


def _newest_first(candidate: Candidate) -> tuple[bool, float, float]:
    certificate = candidate.certificate
    return (
        not candidate.valid,
        -certificate.not_valid_before_utc.timestamp(),
        -certificate.not_valid_after_utc.timestamp(),
    )


class CertificateLookup:
    """Cached certificate discovery (see the module docstring)."""

    def __init__(
        self,
        directory: Directory,
        validator: ChainValidator,
        *,
        cache_ttl: timedelta = timedelta(minutes=5),
        negative_cache_ttl: timedelta = timedelta(minutes=1),
        dns: DnsCertFinder | None = None,
        max_entries: int = DEFAULT_MAX_ENTRIES,
        max_candidates: int = MAX_CANDIDATES,
        max_certificate_bytes: int = MAX_CERTIFICATE_BYTES,
        clock: Callable[[], float] = time.monotonic,
        utc_now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if max_candidates < 1 or max_certificate_bytes < 1:
            raise ValueError("max_candidates and max_certificate_bytes must be at least 1")
        self.directory = directory
        self.validator = validator
        self.dns = dns
        self._positive_ttl = cache_ttl.total_seconds()
        self._negative_ttl = negative_cache_ttl.total_seconds()
        self._max_entries = max_entries
        self._max_candidates = max_candidates
        self._max_certificate_bytes = max_certificate_bytes
        self._clock = clock
        self._utc_now = utc_now
        self._cache: dict[str, tuple[float, LookupResult]] = {}
        self._inflight: dict[str, asyncio.Future[LookupResult]] = {}

    def with_validator(self, validator: ChainValidator) -> CertificateLookup:
        """The same sources and cache settings, another validator (a route's own trust,
        ``gateway.relay.route_trust``), and a cache of its own: validity differs."""
        return CertificateLookup(
            self.directory,
            validator,
            cache_ttl=timedelta(seconds=self._positive_ttl),
            negative_cache_ttl=timedelta(seconds=self._negative_ttl),
            dns=self.dns,
            max_entries=self._max_entries,
            max_candidates=self._max_candidates,
            max_certificate_bytes=self._max_certificate_bytes,
            clock=self._clock,
            utc_now=self._utc_now,
        )

    @classmethod
    def from_config(
        cls, config: Config, directory: Directory, validator: ChainValidator
    ) -> CertificateLookup:
        section = config.annuaire
        dns = None
        if section.dns_cert:
            dns = DnsCertFinder(config.gateway.nameservers, timeout=section.timeout.total_seconds())
        return cls(
            directory,
            validator,
            cache_ttl=section.cache_ttl,
            negative_cache_ttl=section.negative_cache_ttl,
            dns=dns,
        )

    # -- public --------------------------------------------------------------------------

    async def lookup(self, address: str) -> LookupResult:
        """The certificates of ``address`` (cached); ``DirectoryUnavailable`` when the
        directory or DNS cannot answer."""
        key = mailbox_key(address)
        cached = self._cache.get(key)
        if cached is not None and cached[0] > self._clock():
            return cached[1]
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._resolve(key))
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._finished(key, done))
        return await asyncio.shield(future)

    async def certificates(self, address: str) -> tuple[x509.Certificate, ...]:
        """The valid encryption certificates of ``address``, newest first."""
        return (await self.lookup(address)).certificates

    def invalidate(self, address: str | None = None) -> None:
        """Forget one address (or everything)."""
        if address is None:
            self._cache.clear()
        else:
            self._cache.pop(mailbox_key(address), None)

    # -- resolution ----------------------------------------------------------------------

    def _finished(self, key: str, future: asyncio.Future[LookupResult]) -> None:
        self._inflight.pop(key, None)
        if future.cancelled():
            return
        if future.exception() is None:  # also marks an exception as retrieved
            self._remember(key, future.result())

    def _remember(self, key: str, result: LookupResult) -> None:
        ttl = self._positive_ttl if result.found else self._negative_ttl
        if result.found:
            earliest = min(c.not_valid_after_utc for c in result.certificates)
            ttl = min(ttl, (earliest - self._utc_now()).total_seconds())
        if ttl <= 0:
            return
        if len(self._cache) >= self._max_entries:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = (self._clock() + ttl, result)

    async def _resolve(self, address: str) -> LookupResult:
        try:
            address = normalise_address(address)
        except EntryError as error:
            return LookupResult(address, None, (), (str(error),))
        collected = _Collected(address)
        entry = await self._from_mailbox(address, collected)
        if not collected.found:
            domain = address_domain(address)
            domain_entry = await self._from_directory(domain, "annuaire:domain", collected)
            entry = entry or domain_entry
        if not collected.found and self.dns is not None:
            await self._from_dns(strip_tag(address), collected)
        log.debug(
            "annuaire.lookup",
            address=address,
            found=collected.found,
            candidates=len(collected.candidates),
        )
        return LookupResult(
            address,
            entry,
            tuple(sorted(collected.candidates, key=_newest_first)),
            tuple(collected.skipped),
        )

    async def _from_mailbox(self, address: str, collected: _Collected) -> Entry | None:
        """The entry of ``address`` itself; for ``local+tag@domain`` with no entry of its
        own, the entry of ``local@domain`` (RFC 5233): a directory that lists the tagged
        address has a mailbox of that name, whose certificate is not the base one's."""
        base = strip_tag(address)
        if base != address:
            entry = await self._from_directory(address, "annuaire:address", collected)
            if entry is not None:
                return entry
        return await self._from_directory(base, "annuaire:address", collected)

    async def _from_directory(self, name: str, source: str, collected: _Collected) -> Entry | None:
        entries = await self.directory.find_by_mail(name)
        ders = [der for entry in entries for der in entry.certificates]
        await self._add(ders, source, name, collected, entries[0].key if entries else name)
        return entries[0] if entries else None

    async def _from_dns(self, address: str, collected: _Collected) -> None:
        assert self.dns is not None
        for owner in address_names(address):
            ders = await self.dns.certificates(owner)
            await self._add(ders, f"dns:{owner.to_text()}", address, collected, owner.to_text())
            if collected.found:
                return
        domain = address_domain(address)
        owner_name = domain_name(domain)
        if owner_name is not None:
            ders = await self.dns.certificates(owner_name)
            await self._add(ders, f"dns:{owner_name.to_text()}", domain, collected, domain)

    async def _add(
        self, ders: Sequence[bytes], source: str, bound_to: str, collected: _Collected, where: str
    ) -> None:
        """Parse and validate the values of one source: the one place every source
        goes through, so the bounds of the module docstring are checked here."""
        values = list(dict.fromkeys(ders))  # without duplicates, in order
        new = [der for der in values if der not in collected.seen]
        self._check_count(len(new), source, where, collected)
        collected.examined += len(new)
        collected.seen.update(new)
        certificates: list[x509.Certificate] = []
        for der in values:
            certificate = self._parse(der, source, where, collected)
            if certificate is not None:
                certificates.append(certificate)
        if certificates:
            results = await asyncio.to_thread(self._validate_all, certificates, bound_to)
            collected.candidates.extend(
                Candidate(certificate, source, bound_to, result)
                for certificate, result in zip(certificates, results, strict=True)
            )

    def _check_count(self, count: int, source: str, where: str, collected: _Collected) -> None:
        """``TooManyCertificates`` when ``count`` more values would take the lookup
        beyond ``max_candidates``; logged with the counts (never a value)."""
        total = collected.examined + count
        if total <= self._max_candidates:
            return
        log.warning(
            "annuaire.lookup.too_many_certificates",
            address=collected.address,
            source=source,
            entry=where,
            values=count,
            total=total,
            limit=self._max_candidates,
        )
        raise TooManyCertificates(collected.address, source, total, self._max_candidates)

    def _parse(
        self, der: bytes, source: str, where: str, collected: _Collected
    ) -> x509.Certificate | None:
        """The certificate in ``der``, or None with the reason in ``collected.skipped``
        (too long to be parsed, or not DER)."""
        if len(der) > self._max_certificate_bytes:
            limit = self._max_certificate_bytes
            collected.skipped.append(
                f"{source} {where}: {len(der)} bytes, longer than the {limit} a certificate"
                " may have (not parsed)"
            )
            log.warning(
                "annuaire.certificate.oversized",
                source=source,
                entry=where,
                size=len(der),
                limit=limit,
            )
            return None
        try:
            return x509.load_der_x509_certificate(der)
        except ValueError as error:
            collected.skipped.append(f"{source} {where}: not a certificate ({error})")
            log.warning("annuaire.certificate.malformed", source=source, entry=where)
            return None

    def _validate_all(
        self, certificates: Sequence[x509.Certificate], bound_to: str
    ) -> list[ValidationResult]:
        """In a worker thread: validate for encryption, then check the binding."""
        results: list[ValidationResult] = []
        for certificate in certificates:
            result = self.validator.validate(certificate, purpose=Purpose.SMIME_ENCRYPT)
            if result.valid and not is_bound(certificate, bound_to):
                result = ValidationResult(
                    CertStatus.WRONG_USAGE, f"not bound to {bound_to}", result.chain
                )
            results.append(result)
        return results


class _Collected:
    """Candidates and skipped values gathered during one resolution of ``address``;
    ``examined`` counts the distinct values taken so far, for ``max_candidates``."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.candidates: list[Candidate] = []
        self.skipped: list[str] = []
        self.examined = 0
        self.seen: set[bytes] = set()

    @property
    def found(self) -> bool:
        return any(candidate.valid for candidate in self.candidates)
