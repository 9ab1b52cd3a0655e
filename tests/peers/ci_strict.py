"""CI strictness: under ``CI=true`` no test may be skipped; a skip is reported as a failure.

Role: a pytest plugin (listed in ``tests/conftest.py``) that makes "a missing peer fails
the run, it is never skipped silently" hold for every way a test can be skipped, not
only for the ones that go through our helpers.

The one rule: **under ``CI=true`` a skip is a failure.** Locally (``CI`` unset or any
other value) skips stay skips, so a developer without, say, Dovecot can still run the
rest. Two pieces enforce that one rule and agree with each other:

- ``tests.peers.procs.require_binary`` (the helper every peer fixture calls) raises
  ``PeerMissingError`` under ``CI=true`` instead of skipping, so the failure names the
  missing program at the point where it is needed;
- this plugin turns any *other* skip into a failure under ``CI=true``: ``pytest.skip``
  called by hand, ``pytest.importorskip``, ``skip``/``skipif`` marks, and a module
  skipped at collection. The failure text keeps the skip reason.

``xfail`` is not a skip (it is an expected failure with its own reason) and is left
alone. ``running_under_ci`` is the single definition of "under CI", shared with
``require_binary``.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.peers.procs import running_under_ci


def _skip_reason(longrepr: Any) -> str:
    """The reason pytest stores for a skip: a (path, lineno, reason) tuple or text."""
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        path, lineno, reason = longrepr
        return f"{reason} ({path}:{lineno})"
    return str(longrepr)


def _as_ci_failure(report: pytest.TestReport | pytest.CollectReport) -> None:
    reason = _skip_reason(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"skipped under CI=true, which is a failure here: {reason}"


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report: pytest.TestReport = yield
    if running_under_ci() and report.skipped and not hasattr(report, "wasxfail"):
        _as_ci_failure(report)
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> Any:
    report: pytest.CollectReport = yield
    if running_under_ci() and report.skipped:
        _as_ci_failure(report)
    return report
