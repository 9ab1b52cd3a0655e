"""The written retry schedule: when to try a deferred recipient again, when to give up.

``[delivery] retry_schedule`` lists the delays after the 1st, 2nd, ... failed attempt;
after the list runs out its last value repeats. ``max_lifetime`` counts from the time
the message was first accepted (``QueueRecord.received``, kept across hand-offs, except
that a DSN or MDN is a new message, received when written: ``hand_off(new_message=True)``);
once it is over the stage gives up (failure DSN). The last retry is moved up to the end of
the lifetime so that a message is always tried once more at the deadline rather than
bounced with time left (RFC 5321 §4.5.4.1: "the give-up time generally needs to be at
least 4-5 days"; the default ``5d`` does that, and its retry interval advice of at
least 30 minutes is met by the default schedule from the fourth retry on).

Jitter spreads retries of many messages to one destination (a hospital MX back after a
failure) so they do not all arrive in the same second: each delay is multiplied by a
factor drawn uniformly in ``[1 - jitter, 1 + jitter]``.

Trust level: pure function of its inputs (the random source is a parameter).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.config.model import DeliverySection

DEFAULT_JITTER = 0.1
_RANDOM = random.Random()  # noqa: S311 - spreading retries, not a secret


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """``retry_schedule`` and ``max_lifetime`` of ``[delivery]``, plus jitter."""

    schedule: tuple[timedelta, ...]
    max_lifetime: timedelta
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        if not self.schedule or any(delay <= timedelta(0) for delay in self.schedule):
            raise ValueError("retry schedule: at least one positive delay")
        if self.max_lifetime <= timedelta(0):
            raise ValueError("max_lifetime must be positive")
        if not 0 <= self.jitter < 1:
            raise ValueError("jitter must be in [0, 1)")

    @classmethod
    def from_config(cls, delivery: DeliverySection, jitter: float = DEFAULT_JITTER) -> RetryPolicy:
        return cls(delivery.retry_schedule, delivery.max_lifetime, jitter)

    def delay(self, failed_attempts: int) -> timedelta:
        """The nominal delay after ``failed_attempts`` (>= 1) failures."""
        if failed_attempts < 1:
            raise ValueError("failed_attempts starts at 1")
        return self.schedule[min(failed_attempts, len(self.schedule)) - 1]

    def expires(self, received: datetime) -> datetime:
        return received + self.max_lifetime

    def next_attempt(
        self,
        failed_attempts: int,
        received: datetime,
        now: datetime,
        rng: random.Random | None = None,
    ) -> datetime | None:
        """When to try again after ``failed_attempts`` failures; None: give up now."""
        deadline = self.expires(received)
        if now >= deadline:
            return None
        factor = 1.0
        if self.jitter:
            factor = (rng or _RANDOM).uniform(1 - self.jitter, 1 + self.jitter)
        return min(now + self.delay(failed_attempts) * factor, deadline)
