"""Where a crypto stage runs its S/MIME work: on its event loop for an ordinary message,
in a thread for a large one.

Role: the secure agent (sign + encrypt) and the inbound agent (decrypt + verify) call
``run_crypto(size, function, *args)`` for their CPU-bound ``gateway.smime`` calls.

Decision (measured, bench/README.md "Crypto on the agents' loops"): a letter of 10 KB
costs about 1.3 ms of Python and C to open or to seal, of which the RSA operation
(0.3 ms) is the only long stretch without the GIL. Handing that to a thread cost more
than it freed: the wake-ups, the GIL taken back after each C call and the future's
return through the loop's self-pipe made the inbound agent use about 10 % more CPU per
message and drain about 10 % fewer messages per second (alternated runs of
``bench_inbound``). One process cannot use a second core for it anyway, since the GIL
serialises the Python part; the stages get a second core from ``[gateway]
crypto_workers`` (one agent process per core by default).

Invariants: the result and the exceptions are those of ``function(*args)``, wherever it
runs. Above ``INLINE_LIMIT`` bytes of input the call runs in ``asyncio.to_thread``, so a
large message (base64, AES and hashing of megabytes) does not hold the loop, and the
worker's other entries in flight keep their I/O going meanwhile. Below it, the loop is
held for about a millisecond; a stage worker's loop serves only its own entries (no
client waits on it), as for the spool's I/O (``gateway.spool.runtime.InlineIo``).

Yield first (decision, session 8 review): an inline call is preceded by one
``asyncio.sleep(0)``, so the loop's other tasks run between consecutive calls. Without
it a caller that seals once per hidden recipient in one loop (``gateway.relay.agent``:
one batch per Bcc recipient) held the loop for all of them in a row, never yielding.

Never network I/O on the loop: a chain validator may fetch CRLs and OCSP answers over
HTTP on a cache miss (``gateway.smime.revocation``: blocking, and its DNS look-up is not
even bounded by the socket timeout). A validator whose revocation fetches go through
``OffLoopFetcher`` refuses to fetch on a thread that runs an event loop: it raises
``NetworkOnTheLoop`` before any byte is sent, ``run_crypto`` catches it and runs the
whole call again in a thread, where the fetch may block; the same when the call would
wait for another thread's fetch of that CRL, or read a CRL cached on disk by an earlier
run (``may_wait``: once read, it is served from memory). The inline attempt is thrown
away, so ``function`` must have no effect before it fetches (the inbound agent's
``process_inbound`` has none: it returns a verdict and changes only caches). That costs
one wasted attempt on a cache miss (CRLs are kept for ``crl_refresh``, an hour by
default), and keeps the ordinary message on the loop. ``NetworkOnTheLoop`` is a
``BaseException`` on purpose: the validator and ``process_inbound`` turn every ordinary
exception into a verdict ("invalid", "revocation unknown"), and this one is no verdict.
The secure agent needs no guard: its signer and key look-ups already run in
``asyncio.to_thread`` (``gateway.relay.agent``), and what it seals inline never
validates.

Security: none of its own; the functions keep every check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from gateway.smime.fetch import Fetcher

INLINE_LIMIT = 256 * 1024  # bytes of the message to seal or to open

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def run_crypto(
    size: int, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``function(*args, **kwargs)`` on the loop when ``size`` (bytes of the message it
    works on) is at most ``INLINE_LIMIT`` (after one yield to the loop), else in a
    worker thread. ``function`` must not do network I/O (module docstring)."""
    if size <= INLINE_LIMIT:
        await asyncio.sleep(0)  # the other tasks run between consecutive calls
        try:
            return function(*args, **kwargs)
        except NetworkOnTheLoop:
            pass  # it wanted the network: the whole call again, in a thread
    return await asyncio.to_thread(function, *args, **kwargs)


class NetworkOnTheLoop(BaseException):
    """A revocation fetch was about to block an event loop (module docstring); not an
    ``Exception``, so no verdict-making ``except`` swallows it on its way out."""


class OffLoopFetcher:
    """A ``gateway.smime.fetch.Fetcher`` that fetches through ``inner`` only on a thread
    without a running event loop, and raises ``NetworkOnTheLoop`` on one that has."""

    def __init__(self, inner: Fetcher) -> None:
        self.inner = inner

    def get(self, url: str, *, max_bytes: int) -> bytes:
        _refuse_on_a_loop()
        return self.inner.get(url, max_bytes=max_bytes)

    def post(self, url: str, body: bytes, *, content_type: str, max_bytes: int) -> bytes:
        _refuse_on_a_loop()
        return self.inner.post(url, body, content_type=content_type, max_bytes=max_bytes)

    def may_wait(self) -> None:
        """Waiting for another thread's fetch, or reading a cached CRL from disk
        (``gateway.smime.crlstore``), would hold the loop: refused there too."""
        _refuse_on_a_loop()


def _refuse_on_a_loop() -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:  # no loop on this thread: blocking is allowed here
        return
    raise NetworkOnTheLoop
