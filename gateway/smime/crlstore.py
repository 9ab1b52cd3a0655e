"""Where CRLs come from: configured files and distribution points (RFC 5280 §4.2.1.13).

Role: hand the revocation checker the current CRL of a source. Two kinds of source:
- ``CrlFile``: a CRL file named in ``[trust] crls`` (PEM or DER). Re-read when its size or
  modification time changes (a cron job or the sysadmin replaces it); when the new
  content cannot be read the last readable one is kept and the problem logged.
- ``CrlCache``: CRLs named by a certificate's CRL distribution points, fetched over HTTP
  (``gateway.smime.fetch``), kept in memory and on disk under ``cache_dir/crl/`` (file
  name: SHA-256 of the URL, DER content, written atomically: temp file, fsync, rename,
  fsync of the directory), so a restart does not need the network.

Refresh policy (MSSanté ECO.1.1.7: keep the last valid CRL when a download fails):
- a cached CRL is fetched again when it is older than ``refresh`` (default 1 h, so a
  revocation reaches us within the hour even when the CA's nextUpdate is days away) or
  once its nextUpdate has passed;
- the new CRL replaces the cached one only if the caller's ``accept`` check passes
  (signature by the issuer, structure) and it is not older than the cached one
  (thisUpdate and CRL number must not go back: a replayed old CRL, e.g. from before a
  revocation, is refused);
- when a fetch fails, or its result is refused, the cached CRL stays in use (the caller
  still applies the nextUpdate + grace freshness rule) and the URL is not tried again
  for ``retry_after`` (default 60 s), so a dead server costs one timeout per minute, not
  one per message.

Thread-safe: one lock per URL serialises fetches of that URL (no thundering herd); the
maps themselves are guarded by one short lock.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from gateway.log import get_logger
from gateway.smime.crl import CrlError, ParsedCrl, parse_crl
from gateway.smime.fetch import Fetcher, FetchError

log = get_logger("smime.revocation")

Accept = Callable[[ParsedCrl], "str | None"]  # problem text, or None when acceptable
Clock = Callable[[], datetime]


class CrlFile:
    """A configured CRL file, re-read when it changes on disk."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.label = f"CRL file {path}"
        self._lock = threading.Lock()
        self._signature: tuple[int, int] | None = None
        self._parsed: ParsedCrl | None = None
        self._problem = ""

    def current(self) -> tuple[ParsedCrl | None, str]:
        """The last readable content and the last reading problem ("" if none)."""
        with self._lock:
            try:
                stat = self.path.stat()
            except OSError as error:
                return self._parsed, f"{self.label}: {error.strerror or error}"
            signature = (stat.st_mtime_ns, stat.st_size)
            if signature != self._signature:
                self._signature = signature
                self._reload()
            return self._parsed, self._problem

    def _reload(self) -> None:
        try:
            self._parsed = parse_crl(self.path.read_bytes())
            self._problem = ""
        except (OSError, CrlError) as error:
            self._problem = f"{self.label}: {error}"
            log.warning("crl.file_unreadable", path=str(self.path), reason=str(error))


@dataclass(frozen=True)
class CachedCrl:
    parsed: ParsedCrl
    fetched_at: datetime
    url: str


class CrlCache:
    """Distribution-point CRLs: memory, disk, HTTP, in that order (see module docstring)."""

    def __init__(
        self,
        fetcher: Fetcher,
        cache_dir: Path | None,
        clock: Clock,
        *,
        refresh: timedelta,
        retry_after: timedelta,
        max_bytes: int,
    ) -> None:
        self._fetcher = fetcher
        self._dir = cache_dir / "crl" if cache_dir is not None else None
        self._clock = clock
        self._refresh = refresh
        self._retry_after = retry_after
        self._max_bytes = max_bytes
        self._lock = threading.Lock()
        self._url_locks: dict[str, threading.Lock] = {}
        self._entries: dict[str, CachedCrl] = {}
        self._failures: dict[str, tuple[datetime, str]] = {}

    def get(self, url: str, accept: Accept) -> tuple[CachedCrl | None, str]:
        """The CRL to use for ``url`` (maybe refreshed now) and the last problem ("").
        While another thread holds ``url``'s lock (it may be fetching), the fetcher is
        asked first whether this thread may wait (``Fetcher.may_wait``: an event loop's
        thread may not, ``gateway.crypto_calls``)."""
        lock = self._url_lock(url)
        if not lock.acquire(blocking=False):
            self._fetcher.may_wait()
            lock.acquire()
        try:
            return self._get_locked(url, accept)
        finally:
            lock.release()

    def _get_locked(self, url: str, accept: Accept) -> tuple[CachedCrl | None, str]:
        now = self._clock()
        entry = self._entries.get(url) or self._load_from_disk(url, accept)
        if entry is not None and accept(entry.parsed) is not None:
            entry = None  # cached for another issuer key (e.g. CA re-keyed): ignore
        if not self._is_due(entry, now):
            return entry, ""
        failure = self._failures.get(url)
        if failure is not None and now < failure[0] + self._retry_after:
            return entry, failure[1]  # a recent fetch failed: do not hammer the server
        return self._refresh_entry(url, entry, accept, now)

    def _url_lock(self, url: str) -> threading.Lock:
        with self._lock:
            return self._url_locks.setdefault(url, threading.Lock())

    def _is_due(self, entry: CachedCrl | None, now: datetime) -> bool:
        if entry is None or now >= entry.fetched_at + self._refresh:
            return True
        next_update = entry.parsed.next_update
        return next_update is None or now >= next_update

    def _refresh_entry(
        self, url: str, old: CachedCrl | None, accept: Accept, now: datetime
    ) -> tuple[CachedCrl | None, str]:
        try:
            data = self._fetcher.get(url, max_bytes=self._max_bytes)
            parsed = parse_crl(data)
        except (FetchError, CrlError) as error:
            return old, self._failed(url, now, f"fetch of {url} failed: {error}")
        problem = accept(parsed) or _rollback_problem(old, parsed)
        if problem:
            return old, self._failed(url, now, f"CRL from {url} refused: {problem}")
        entry = CachedCrl(parsed=parsed, fetched_at=now, url=url)
        with self._lock:
            self._entries[url] = entry
            self._failures.pop(url, None)
        self._save_to_disk(url, parsed.der)
        log.info("crl.fetched", url=url, entries=len(parsed.crl), number=parsed.number)
        return entry, ""

    def _failed(self, url: str, now: datetime, problem: str) -> str:
        with self._lock:
            self._failures[url] = (now, problem)
        log.warning("crl.fetch_failed", url=url, reason=problem)
        return problem

    def _disk_path(self, url: str) -> Path | None:
        if self._dir is None:
            return None
        return self._dir / (hashlib.sha256(url.encode()).hexdigest() + ".crl")

    def _load_from_disk(self, url: str, accept: Accept) -> CachedCrl | None:
        path = self._disk_path(url)
        if path is None or not path.exists():
            return None
        # Reading and parsing it (megabytes for a large CA) would hold an event loop as a
        # fetch would: the fetcher says whether this thread may wait (``may_wait``).
        self._fetcher.may_wait()
        try:
            with path.open("rb") as cached:  # date and bytes of the same file
                fetched_at = datetime.fromtimestamp(os.fstat(cached.fileno()).st_mtime, UTC)
                parsed = parse_crl(cached.read())
        except (OSError, CrlError) as error:
            log.warning("crl.cache_unreadable", url=url, reason=str(error))
            return None
        if accept(parsed) is not None:
            return None
        entry = CachedCrl(parsed=parsed, fetched_at=min(fetched_at, self._clock()), url=url)
        with self._lock:
            self._entries.setdefault(url, entry)
        return entry

    def _save_to_disk(self, url: str, der: bytes) -> None:
        path = self._disk_path(url)
        if path is None:
            return
        try:
            write_atomically(path, der)
        except OSError as error:  # the memory copy still serves; say why the disk did not
            log.warning("crl.cache_write_failed", url=url, reason=str(error))


def _rollback_problem(old: CachedCrl | None, new: ParsedCrl) -> str | None:
    if old is None:
        return None
    if new.this_update < old.parsed.this_update:
        return "older than the cached CRL (thisUpdate went back)"
    if new.number is not None and old.parsed.number is not None:
        if new.number < old.parsed.number:
            return "older than the cached CRL (CRL number went back)"
    return None


def write_atomically(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so a reader sees the old or the new file, never half."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=".tmp-", suffix=".part")
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
