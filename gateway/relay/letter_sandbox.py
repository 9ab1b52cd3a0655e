"""A postal letter rendered in a child process: hostile PDFs parsed away from the keys.

Role: ``render_letter_isolated`` runs ``gateway.relay.letter.render_letter`` in a fresh
interpreter (``spawn``, never ``fork``: a forked child would hold a copy of the secure
agent's memory, private keys included) limited in CPU time and address space
(``RLIMIT_CPU``, ``RLIMIT_AS``), and returns its ``Letter``. The secure agent calls it
for the postal fallback.

Why: a letter appends the message's PDF attachments, so it parses PDFs a stranger
wrote. pypdf bounds each stream (75 MB once inflated) but not their sum, and some
structures cost it CPU out of all proportion to their size (a helper's review measured
5.6 s and 146 MB for one 68 KB attachment of an object stream full of spaces; a 50 MB
message holds hundreds). In the key-holding process that is a denial of service and a
large copy of hostile data beside the keys; in the child it is bounded, and what
exceeds the bounds ends as a permanent ``PostalError``: the sender gets the failure
DSN, the queue goes on.

Invariants: the child receives the clear message, the recipient's annuaire entry and
the sender (picklable values) and sends back the ``Letter`` or the ``PostalError`` it
raised; a child killed by its CPU limit (``SIGXCPU``) or out of memory is a
``PostalError("... could not be rendered within its limits")``, never a crash of the
agent. A spawned interpreter costs about half a second: the postal fallback is rare.

Trust level: the child sees the clear message (as the agent does) and no key.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime

from annuaire.model import Entry
from gateway.relay.letter import Language, Letter, render_letter
from gateway.relay.postal_errors import PostalError

CPU_SECONDS = 120
MEMORY_BYTES = 1024 * 1024 * 1024
_SPAWN = multiprocessing.get_context("spawn")  # never fork: see the module docstring


def _limit_child(cpu_seconds: int, memory_bytes: int) -> None:
    """In the child, before any work: its CPU time and address space bounds."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


async def render_letter_isolated(
    message: bytes,
    recipient: Entry,
    sender: str,
    *,
    now: datetime,
    language: Language = "fr",
    cpu_seconds: int = CPU_SECONDS,
    memory_bytes: int = MEMORY_BYTES,
) -> Letter:
    """``render_letter`` in a limited child process (module docstring)."""
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=_SPAWN,
        initializer=_limit_child,
        initargs=(cpu_seconds, memory_bytes),
    )
    try:
        job = asyncio.get_running_loop().run_in_executor(
            pool, _render, message, recipient, sender, now, language
        )
        return await job
    except (BrokenProcessPool, MemoryError):
        raise PostalError(
            "the message could not be rendered within its limits "
            f"({cpu_seconds} s of CPU, {memory_bytes // (1024 * 1024)} MiB)"
        ) from None
    finally:  # the child is gone before this returns (never left behind)
        await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


def _render(
    message: bytes, recipient: Entry, sender: str, now: datetime, language: Language
) -> Letter:
    """In the child: the letter (a module-level function, so that it can be pickled)."""
    return render_letter(message, recipient, sender, now=now, language=language)
