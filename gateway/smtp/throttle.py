"""Throttling of failed AUTH attempts, per client IP and per login (sans-IO).

Role: password guessing is slowed down by refusing further attempts (454 4.7.0, RFC 4954
§6) from an IP address or for a login that failed too often within a window, before the
password is even checked (so a throttled guess costs no scrypt/argon2 work either).

Invariants: memory is bounded (``max_keys`` keys, the oldest forgotten first); the clock is
passed in (monotonic seconds), so tests need no sleeping; a success does not erase the
IP's failures (one valid account must not launder guesses on others) but clears the
login's.

Several front processes (``[gateway] front_workers`` = N, ``gateway.smtp.listener``):
the kernel spreads a client's connections over the N processes, and one process cannot
see the failures counted by another. ``share_of`` splits a limit so that the N shares
add up to the limit exactly (slot K gets ``limit // N``, plus one for the first
``limit % N`` slots): 10 failures per IP over 2 processes are 5 + 5, 5 per login are
3 + 2, so a guesser spread over every process still gets at most the configured number
of tries per window. A share is never below 1 (a process that refused every AUTH would
lock every user out), so with N larger than a limit (more than 5 processes for the
per-login limit of 5) the bound becomes N tries per window: the only case where the
total exceeds the configured limit, and the reason operators should keep N small
(``docs/operations.md``). ``max_keys`` bounds memory and is per process, not shared.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass

DEFAULT_WINDOW = 300.0
DEFAULT_MAX_PER_IP = 10
DEFAULT_MAX_PER_LOGIN = 5
DEFAULT_MAX_KEYS = 10_000


@dataclass(frozen=True)
class ThrottleLimits:
    window: float = DEFAULT_WINDOW
    max_per_ip: int = DEFAULT_MAX_PER_IP
    max_per_login: int = DEFAULT_MAX_PER_LOGIN
    max_keys: int = DEFAULT_MAX_KEYS


def share_of(limit: int, processes: int, slot: int) -> int:
    """Process ``slot``'s share (0..``processes``-1) of a ``limit`` shared by ``processes``
    processes: the shares add up to ``limit``, and none is below 1 (module docstring)."""
    if processes < 1 or not 0 <= slot < processes:
        raise ValueError(f"slot {slot} of {processes} processes")
    base, extra = divmod(limit, processes)
    return max(1, base + (1 if slot < extra else 0))


def shared_limits(limits: ThrottleLimits, processes: int, slot: int) -> ThrottleLimits:
    """``limits`` as process ``slot`` of ``processes`` enforces them: the per-IP and
    per-login counts shared (``share_of``), the window and the memory bound unchanged."""
    return ThrottleLimits(
        window=limits.window,
        max_per_ip=share_of(limits.max_per_ip, processes, slot),
        max_per_login=share_of(limits.max_per_login, processes, slot),
        max_keys=limits.max_keys,
    )


class AuthThrottle:
    """Counts failures in a sliding window; ``blocked`` says whether to refuse."""

    def __init__(self, limits: ThrottleLimits | None = None) -> None:
        self.limits = limits or ThrottleLimits()
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def blocked(self, ip: str, login: str | None, now: float) -> str | None:
        """``"ip"`` or ``"login"`` when that key is over its limit, else None."""
        if self._count(f"ip:{ip}", now) >= self.limits.max_per_ip:
            return "ip"
        if login is not None and self._count(f"login:{login}", now) >= self.limits.max_per_login:
            return "login"
        return None

    def failed(self, ip: str, login: str | None, now: float) -> None:
        self._add(f"ip:{ip}", now)
        if login is not None:
            self._add(f"login:{login}", now)

    def succeeded(self, login: str) -> None:
        self._failures.pop(f"login:{login}", None)

    def _count(self, key: str, now: float) -> int:
        times = self._failures.get(key)
        if times is None:
            return 0
        while times and times[0] <= now - self.limits.window:
            times.popleft()
        return len(times)

    def _add(self, key: str, now: float) -> None:
        times = self._failures.pop(key, None) or deque()
        times.append(now)
        self._failures[key] = times
        while len(self._failures) > self.limits.max_keys:
            self._failures.popitem(last=False)
