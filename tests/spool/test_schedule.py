"""The retry schedule: delays per attempt, last value repeated, lifetime, jitter."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest

from gateway.spool import RetryPolicy

T0 = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
M = timedelta(minutes=1)


def policy(jitter: float = 0.0) -> RetryPolicy:
    return RetryPolicy((1 * M, 5 * M, 60 * M), timedelta(days=1), jitter)


def test_each_failure_takes_the_next_delay_then_the_last_repeats() -> None:
    retry = policy()
    assert [retry.delay(n) for n in (1, 2, 3, 4, 10)] == [M, 5 * M, 60 * M, 60 * M, 60 * M]
    assert retry.next_attempt(2, T0, T0 + 10 * M) == T0 + 15 * M


def test_the_last_try_is_at_the_deadline_then_it_gives_up() -> None:
    retry = policy()
    deadline = T0 + timedelta(days=1)
    assert retry.next_attempt(9, T0, deadline - 10 * M) == deadline
    assert retry.next_attempt(9, T0, deadline) is None


def test_jitter_stays_within_its_bounds() -> None:
    retry = policy(jitter=0.1)
    rng = random.Random(5)
    delays = {retry.next_attempt(3, T0, T0, rng) - T0 for _ in range(200)}  # type: ignore[operator]
    assert len(delays) > 100
    assert all(54 * M <= delay <= 66 * M for delay in delays)


@pytest.mark.parametrize(
    "make",
    [
        lambda: RetryPolicy((), timedelta(days=1)),
        lambda: RetryPolicy((timedelta(0),), timedelta(days=1)),
        lambda: RetryPolicy((M,), timedelta(0)),
        lambda: RetryPolicy((M,), timedelta(days=1), jitter=1.0),
    ],
)
def test_bad_policies_are_refused(make: object) -> None:
    with pytest.raises(ValueError):
        make()  # type: ignore[operator]


def test_zero_failures_has_no_delay() -> None:
    with pytest.raises(ValueError):
        policy().delay(0)
