"""HTTP retrieval of revocation data: CRLs (RFC 5280 §4.2.1.13) and OCSP (RFC 6960 App. A).

Role: the only place where certificate validation touches the network. ``HttpFetcher``
does a GET (CRL) or a POST (OCSP request) with a short timeout and a size limit and
returns the body bytes, or raises ``FetchError`` with a reason that is safe to log.

Invariants and security notes:
- Only ``http://`` URLs are fetched. CRLs and OCSP responses are signed objects, so TLS
  adds nothing to their integrity and would need revocation checking of its own
  (RFC 5280 §4.2.1.13, RFC 6960 App. A.1 both use plain HTTP). ``ldap://`` and other
  schemes are refused with ``UnsupportedUrl`` (the caller records it as a reason).
- Redirects are followed only to other ``http://`` URLs, at most ``MAX_REDIRECTS`` times
  (a redirect to ``file:`` or ``ftp:`` could otherwise read local files).
- A body larger than ``max_bytes`` is an error: a hostile distribution point cannot make
  the gateway buffer an unbounded answer. The timeout bounds every socket operation and
  the whole answer must arrive within ``TOTAL_TIME_FACTOR`` timeouts.
- Proxies come from the usual ``http_proxy`` / ``no_proxy`` environment variables, as a
  hospital network usually requires (urllib's ``ProxyHandler``).
- Blocking: callers run validation in a worker thread (``ChainValidator`` is synchronous).
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.request
from http.client import HTTPMessage
from typing import IO, Protocol
from urllib.parse import urlsplit

DEFAULT_TIMEOUT = 5.0  # seconds, per socket operation
TOTAL_TIME_FACTOR = 4  # a whole answer must arrive within 4 timeouts (20 s by default)
READ_CHUNK = 256 * 1024
MAX_REDIRECTS = 3
USER_AGENT = "missive-revocation/1"


class FetchError(Exception):
    """The resource could not be retrieved; ``str()`` is safe to log (no body content)."""


class UnsupportedUrl(FetchError):
    """The URL uses a scheme this fetcher does not speak (only ``http://``)."""


class Fetcher(Protocol):
    """What the revocation checker needs from the network (tests may pass their own)."""

    def get(self, url: str, *, max_bytes: int) -> bytes: ...

    def post(self, url: str, body: bytes, *, content_type: str, max_bytes: int) -> bytes: ...

    def may_wait(self) -> None:
        """Called before this thread waits for another thread's fetch of the same
        resource, or reads a cached CRL from disk (``gateway.smime.crlstore``); a
        fetcher whose caller must not block raises instead."""


def require_http(url: str) -> None:
    """Raise ``UnsupportedUrl`` unless ``url`` is an ``http://`` URL with a host."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "http" or not parts.hostname:
        scheme = parts.scheme or "no scheme"
        raise UnsupportedUrl(f"{scheme} URL not supported (only http://)")


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to another ``http://`` URL, a bounded number of times."""

    max_redirections = MAX_REDIRECTS

    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        require_http(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class HttpFetcher:
    """``Fetcher`` over urllib: plain HTTP, short timeout, bounded body size."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._timeout = timeout
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler(), _HttpOnlyRedirects()
        )

    def get(self, url: str, *, max_bytes: int) -> bytes:
        return self._request(url, None, {}, max_bytes)

    def may_wait(self) -> None:
        """Any thread may wait for another one's fetch."""

    def post(self, url: str, body: bytes, *, content_type: str, max_bytes: int) -> bytes:
        return self._request(url, body, {"Content-Type": content_type}, max_bytes)

    def _request(
        self, url: str, body: bytes | None, headers: dict[str, str], max_bytes: int
    ) -> bytes:
        require_http(url)
        request = urllib.request.Request(  # noqa: S310 - scheme checked by require_http
            url, data=body, headers={"User-Agent": USER_AGENT, **headers}
        )
        deadline = time.monotonic() + self._timeout * TOTAL_TIME_FACTOR
        try:
            with self._opener.open(request, timeout=self._timeout) as response:
                return _read_bounded(response, max_bytes, deadline)
        except urllib.error.HTTPError as error:
            raise FetchError(f"HTTP status {error.code}") from None
        except (urllib.error.URLError, OSError, ValueError, http.client.HTTPException) as error:
            # HTTPException: a malformed answer (BadStatusLine, LineTooLong, ...) from a
            # broken or hostile CRL/OCSP server is "no answer", never a crash upstream
            raise FetchError(f"request failed: {_short_reason(error)}") from None


def _read_bounded(response: IO[bytes], max_bytes: int, deadline: float) -> bytes:
    """Read the body in chunks: at most ``max_bytes``, and not past ``deadline`` (a server
    that drips one byte per timeout period must not hold a worker thread for hours)."""
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = response.read(min(READ_CHUNK, max_bytes + 1 - size))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        size += len(chunk)
        if size > max_bytes:
            raise FetchError(f"answer larger than {max_bytes} bytes")
        if time.monotonic() > deadline:
            raise FetchError("answer too slow (total time limit)")


def _short_reason(error: BaseException) -> str:
    reason = getattr(error, "reason", None)
    return str(reason if reason is not None else error) or type(error).__name__
