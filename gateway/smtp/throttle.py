"""Throttling of failed AUTH attempts, per client IP and per login (sans-IO).

Role: password guessing is slowed down by refusing further attempts (454 4.7.0, RFC 4954
§6) from an IP address or for a login that failed too often within a window, before the
password is even checked (so a throttled guess costs no scrypt/argon2 work either).

Invariants: memory is bounded (``max_keys`` keys, the oldest forgotten first); the clock is
passed in (monotonic seconds), so tests need no sleeping; a success does not erase the
IP's failures (one valid account must not launder guesses on others) but clears the
login's.
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
