"""The operator side of a ``Queue``: hold, release, retry an entry by id.

Role: ``OperatorSide`` moves an entry between the waiting states on request of
``missive queue hold|release|retry`` (``gateway.spool.cli``) or of a stage's policy:
``hold`` stops an entry (a consumer's claimed one, with its reason in the record, or
one in ``incoming/``/``deferred/`` by id), ``release`` sends it back from ``hold/``,
``retry`` makes a deferred one due now. It also holds the checks every action by name
shares (``_state_for_action``, ``_move_or_explain``), which ``Queue.delete``
(``gateway.spool.queue``) uses too.

Invariants:

- **Safe while running.** Operator actions are renames that happen entirely or not at
  all; an entry in ``active/`` belongs to its consumer and is refused with a clear
  ``EntryStateError``; a rename that loses a race to a claimer (``ENOENT``) is
  reported the same way, never retried blindly.
- **Audit.** An operator's move is undone (moved back) if its event cannot be recorded,
  and the audit error is raised.

Security: a name is checked (``queue_values.check_entry_name``) before any path is
built from it; errors name the stage and state, never the spool's path.

Trust level: any gateway process that owns a stage, and ``missive queue`` (the
operator, as the gateway's user).
"""

from __future__ import annotations

from pathlib import Path

from gateway.spool.atomic import move
from gateway.spool.commit import Change
from gateway.spool.errors import EntryNotFound, EntryStateError
from gateway.spool.layout import State
from gateway.spool.queue_core import QueueCore
from gateway.spool.queue_values import Claimed, check_entry_name
from gateway.spool.stagefiles import move_back, read_quietly


class OperatorSide(QueueCore):
    """Moves between ``incoming/``, ``deferred/`` and ``hold/``, by id or by owner."""

    async def hold(self, target: Claimed | str, reason: str) -> None:
        """Stop an entry until ``release``: a claimed one (its owner, with ``reason`` as the
        record's note), or one in ``incoming/`` or ``deferred/`` by id (an operator)."""
        if isinstance(target, str):
            await self._move_by_id(target, ("incoming", "deferred"), "hold", "held", reason)
            return
        runtime = self._runtime
        record = target.record.with_state(runtime.clock(), note=reason)
        await self._rewrite(target, record)
        destination = self.dirs.entry("hold", target.queue_id)
        await runtime.committer.sync(destination.parent, lambda: move(target.path, destination))
        await self._record("held", target.queue_id, record, details={"reason": reason})

    async def release(self, queue_id: str) -> None:
        """``hold/`` -> ``incoming/`` (an operator)."""
        await self._move_by_id(queue_id, ("hold",), "incoming", "released", None)

    async def retry(self, queue_id: str) -> None:
        """``deferred/`` -> ``incoming/``: try now (an operator)."""
        await self._move_by_id(queue_id, ("deferred",), "incoming", "retried", None)

    # -- the checks of an action by name -----------------------------------------------

    async def _state_for_action(
        self, name: str, action: str, allowed: tuple[State, ...], to: State | None = None
    ) -> State:
        check_entry_name(name)
        state = await self.locate(name)
        if state is None:
            raise EntryNotFound(f"no entry {name} in stage {self.name}")
        if state == "active":
            raise _busy(self.name, name)
        if state == to:
            raise EntryStateError(f"{name} is already in {self.name}/{to}/")
        if state not in allowed:
            raise EntryStateError(
                f"cannot {action} {name}: it is in {self.name}/{state}/ "
                f"(only from {', '.join(f'{s}/' for s in allowed)})"
            )
        return state

    async def _move_or_explain(self, name: str, directory: Path, change: Change) -> None:
        """Make ``change`` (a rename of ``name``) and fsync ``directory``; or explain why
        not: a claimer took the entry meanwhile (``EntryStateError``)."""
        try:
            await self._runtime.committer.sync(directory, change)
        except FileNotFoundError:
            now = await self.locate(name)
            if now == "active":
                raise _busy(self.name, name) from None
            raise EntryStateError(
                f"{name} moved while acting on it (now in {now or 'no'} state); try again"
            ) from None

    async def _move_by_id(
        self,
        name: str,
        allowed: tuple[State, ...],
        to: State,
        kind: str,
        reason: str | None,
    ) -> None:
        runtime = self._runtime
        action = {"held": "hold", "released": "release", "retried": "retry"}[kind]
        state = await self._state_for_action(name, action, allowed, to)
        source = self.dirs.entry(state, name)
        target = self.dirs.entry(to, name)
        record = await runtime.run(lambda: read_quietly(source))
        await self._move_or_explain(name, target.parent, lambda: move(source, target))
        details = {"from": state, **({"reason": reason} if reason else {})}
        try:
            await self._record(kind, name, record, details=details)
        except BaseException:
            await runtime.committer.sync(source.parent, lambda: move_back(target, source))
            raise


def _busy(stage: str, name: str) -> EntryStateError:
    return EntryStateError(
        f"{name} is being processed (in {stage}/active/); try again once it has left active/"
    )
