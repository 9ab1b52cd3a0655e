"""``gateway.relay.agent_stage`` split by concern: every public name it defined before
stays importable from it (the same object as in its new module, ``agent_pass`` or
``agent_build``), and the new modules stand below the stage: importing either of them
alone does not import ``agent_stage`` (no import cycle)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import gateway.relay.agent_stage as agent_stage
from gateway.relay import agent_build, agent_pass

REPO = Path(__file__).resolve().parents[2]

PASS_NAMES = (
    "STATUS_EXPIRED",
    "STATUS_NO_CERTIFICATE",
    "STATUS_NO_ROUTE",
    "STATUS_POSTAL_FAILED",
    "STATUS_POSTED",
    "STATUS_REFUSED",
    "EntryOutcome",
    "handoff_key",
)
STAGE_NAMES = ("DEFAULT_CONCURRENCY", "DEFAULT_POLL_INTERVAL", "AgentStage", "run_agent_worker")

LAYERING_CHECK = """
import sys
import gateway.relay.agent_pass
import gateway.relay.agent_build
assert "gateway.relay.agent_stage" not in sys.modules, "a new module imports the stage"
"""


def test_moved_names_are_re_exported_by_the_stage_module() -> None:
    for name in PASS_NAMES:
        assert getattr(agent_stage, name) is getattr(agent_pass, name), name
        assert name in agent_stage.__all__, name
    assert agent_stage.build_secure_agent is agent_build.build_secure_agent
    assert "build_secure_agent" in agent_stage.__all__


def test_the_stage_exports_exactly_its_public_names_of_before() -> None:
    before = {*PASS_NAMES, *STAGE_NAMES, "build_secure_agent"}
    assert set(agent_stage.__all__) == before
    assert agent_stage.DEFAULT_CONCURRENCY == 16
    assert agent_stage.DEFAULT_POLL_INTERVAL == 0.05
    assert agent_stage.AgentStage.__module__ == "gateway.relay.agent_stage"
    assert agent_stage.run_agent_worker.__module__ == "gateway.relay.agent_stage"


def test_the_stage_uses_the_moved_pass_bookkeeping() -> None:
    # the names that became public when they moved (they were _Pass, _failure_code,
    # _postal_event) are the ones the stage calls
    assert agent_stage.Pass is agent_pass.Pass
    assert agent_stage.failure_code is agent_pass.failure_code
    assert agent_stage.postal_event is agent_pass.postal_event


def test_the_new_modules_import_without_the_stage() -> None:
    done = subprocess.run(
        [sys.executable, "-c", LAYERING_CHECK],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
