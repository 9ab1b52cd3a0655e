"""``user_errors_of``: a task group's failure shown as the user errors it holds.

A stage that runs tasks in a ``TaskGroup`` (the relay, one task per route) gets a
``MissiveError`` wrapped in an ``ExceptionGroup``; the worker command reports it as one
line per problem with its exit status, and anything else in the group keeps its
traceback (``gateway.workers.run_worker``)."""

from __future__ import annotations

from gateway.errors import ConfigError, MissiveError, UsageError
from gateway.workers import user_errors_of


class _Negative(MissiveError):
    status = 1


def test_every_user_error_of_a_nested_group_is_one_problem_line() -> None:
    group = ExceptionGroup(
        "routes",
        [
            UsageError("first problem"),
            ExceptionGroup(
                "inner", [ConfigError(["second", "third"]), UsageError("first problem")]
            ),
        ],
    )
    reported = user_errors_of(group)
    assert reported is not None
    assert reported.problems == ("first problem", "second", "third")
    assert reported.status == 2


def test_the_first_errors_status_is_kept() -> None:
    reported = user_errors_of(ExceptionGroup("g", [_Negative("no"), UsageError("bad")]))
    assert reported is not None and reported.status == 1


def test_a_group_with_any_other_exception_is_not_a_user_error() -> None:
    assert user_errors_of(ExceptionGroup("g", [UsageError("bad"), KeyError("bug")])) is None
    assert user_errors_of(ExceptionGroup("g", [RuntimeError("bug")])) is None
