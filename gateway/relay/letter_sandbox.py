"""Postal letters rendered in a child process: hostile PDFs parsed away from the keys.

Role: ``render_letters_isolated`` runs ``gateway.relay.letter.render_letters`` (the
letters of one message, one per postal recipient) in a fresh interpreter (``spawn``,
never ``fork``: a forked child would hold a copy of the secure agent's memory, private
keys included) limited in CPU time and address space (``RLIMIT_CPU``, ``RLIMIT_AS``),
and returns each recipient's outcome. The secure agent calls it for the postal fallback.

Why: a letter appends the message's PDF attachments, so it parses PDFs a stranger
wrote. pypdf bounds each stream (75 MB once inflated) but not their sum, and some
structures cost it CPU out of all proportion to their size (a helper's review measured
5.6 s and 146 MB for one 68 KB attachment of an object stream full of spaces; a 50 MB
message holds hundreds). In the key-holding process that is a denial of service and a
large copy of hostile data beside the keys; in the child it is bounded, and what
exceeds the bounds ends as a permanent ``PostalError``: the sender gets the failure
DSN, the queue goes on.

One child per message, not per recipient (decision of session 7, H2): a spawned
interpreter costs about 0.5 s of CPU and the message's PDFs were parsed again for each
recipient; now one child reads the message once and draws every letter
(``render_letters``). Each recipient keeps its own outcome: a recipient without a
postal address, or whose letter cannot be made, gets its ``PostalError`` while the
others get their letters. A child killed by its CPU limit (``SIGXCPU``) or out of
memory is a ``PostalError("... could not be rendered within its limits")`` for EVERY
recipient it was rendering (the cost is the message's, which is the same for all).

Limits (same decision): they stay per child and ``CPU_SECONDS`` does not scale with the
number of letters. What a stranger controls (the PDFs) is parsed once per child
whatever the number of recipients; a letter then costs 0.1 to 0.25 s of CPU (measured
in process: 0.15 s for a plain one, 0.23 s with 200 appended pages), far below 120 s.
Three letters of a message with a 3-page PDF took 2.1-2.45 s of CPU in three children
and 0.91-1.05 s in one. Memory does grow per letter: the child holds every letter it
drew (each about the size of the appended PDFs) and pickles them back, and the agent
receives them together. So one child renders at most
``letters_per_child(len(message))`` recipients (16, or fewer when the message is large:
``LETTER_BYTES_PER_CHILD / len(message)``, at least one; a 50 MB message: 2); more
recipients than that are rendered by further children, one after the other (the
message is then parsed once per child, never once per recipient). A call returns the
letters of all its children together, so the secure agent calls it for one child's
recipients at a time and writes those letters before the next call (session 7 review,
R2: ``gateway.relay.agent_stage``); it never holds more than one child's letters.

Invariants: the child receives the clear message, the recipients' annuaire entries
and the sender (picklable values) and sends back one ``Letter`` or ``PostalError`` per
recipient, in order; a killed child is never a crash of the agent, and every child is
gone (joined) before ``render_letters_isolated`` returns.

Trust level: the child sees the clear message (as the agent does) and no key.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import resource
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from datetime import datetime
from typing import Final

from annuaire.model import Entry
from gateway.relay.letter import Language, Letter, render_letters
from gateway.relay.postal_errors import PostalError

CPU_SECONDS: Final = 120
MEMORY_BYTES: Final = 1024 * 1024 * 1024
MAX_LETTERS_PER_CHILD: Final = 16
LETTER_BYTES_PER_CHILD: Final = 128 * 1024 * 1024  # about the letters one child holds
_SPAWN = multiprocessing.get_context("spawn")  # never fork: see the module docstring


def letters_per_child(message_size: int) -> int:
    """How many recipients one child renders (module docstring, "Limits")."""
    return max(1, min(MAX_LETTERS_PER_CHILD, LETTER_BYTES_PER_CHILD // max(1, message_size)))


def _limit_child(cpu_seconds: int, memory_bytes: int) -> None:
    """In the child, before any work: its CPU time and address space bounds."""
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds))
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))


async def render_letters_isolated(
    message: bytes,
    recipients: Sequence[Entry],
    sender: str,
    *,
    now: datetime,
    language: Language = "fr",
    cpu_seconds: int = CPU_SECONDS,
    memory_bytes: int = MEMORY_BYTES,
) -> list[Letter | PostalError]:
    """``render_letters`` in limited child processes (module docstring): one outcome
    per recipient, in order; one child per ``letters_per_child`` recipients."""
    batch = letters_per_child(len(message))
    outcomes: list[Letter | PostalError] = []
    for start in range(0, len(recipients), batch):
        outcomes += await _render_in_child(
            message,
            tuple(recipients[start : start + batch]),
            sender,
            now,
            language,
            cpu_seconds,
            memory_bytes,
        )
    return outcomes


async def _render_in_child(
    message: bytes,
    recipients: tuple[Entry, ...],
    sender: str,
    now: datetime,
    language: Language,
    cpu_seconds: int,
    memory_bytes: int,
) -> list[Letter | PostalError]:
    """One child for ``recipients``; its death by a limit fails every one of them."""
    pool = ProcessPoolExecutor(
        max_workers=1,
        mp_context=_SPAWN,
        initializer=_limit_child,
        initargs=(cpu_seconds, memory_bytes),
    )
    try:
        job = asyncio.get_running_loop().run_in_executor(
            pool, _render, message, recipients, sender, now, language
        )
        return await job
    except (BrokenProcessPool, MemoryError):
        beyond = PostalError(
            "the message could not be rendered within its limits "
            f"({cpu_seconds} s of CPU, {memory_bytes // (1024 * 1024)} MiB)"
        )
        return [beyond] * len(recipients)
    finally:  # the child is gone before this returns (never left behind)
        await asyncio.to_thread(pool.shutdown, True, cancel_futures=True)


def _render(
    message: bytes,
    recipients: tuple[Entry, ...],
    sender: str,
    now: datetime,
    language: Language,
) -> list[Letter | PostalError]:
    """In the child: the letters (a module-level function, so that it can be pickled)."""
    return render_letters(message, recipients, sender, now=now, language=language)
