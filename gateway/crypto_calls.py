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

Security: none of its own; the functions keep every check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import ParamSpec, TypeVar

INLINE_LIMIT = 256 * 1024  # bytes of the message to seal or to open

_P = ParamSpec("_P")
_T = TypeVar("_T")


async def run_crypto(
    size: int, function: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs
) -> _T:
    """``function(*args, **kwargs)`` on the loop when ``size`` (bytes of the message it
    works on) is at most ``INLINE_LIMIT``, else in a worker thread."""
    if size <= INLINE_LIMIT:
        return function(*args, **kwargs)
    return await asyncio.to_thread(function, *args, **kwargs)
