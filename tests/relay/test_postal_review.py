"""Review R2 (session 7) of the postal letters rendered per message (H2's batching).

What the review found and fixed: the agent stage rendered the letters of EVERY child of
a message before writing the first one, so it held all of them at once beside the keys
(each letter is about the size of the message's PDFs; 100 postal recipients of a 10 MB
message: of the order of 1 GB), where it used to hold one. Now each child's letters are written
before the next child starts (``AgentStage._post_batch``).

What held, kept as regression tests: each letter is attributed to its own recipient
when a recipient before it has no annuaire entry (the ``zip`` of found recipients and
outcomes), across children too; a child killed by its limits fails its own recipients
only, and the outbox, the audit trail and the DSNs agree (no letter for a failed
recipient, a letter for each ``relayed`` one). Children are made smaller than 16
letters by lowering ``MAX_LETTERS_PER_CHILD`` to 1 (``letters_per_child`` reads it at
each call)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from gateway.pki.dev import DevPki
from gateway.relay import agent_postal, letter_sandbox
from gateway.relay.letter_sandbox import letters_per_child
from gateway.relay.postal import letter_stem, write_to_outbox
from gateway.spool import RECEIVED
from tests.relay import configs
from tests.relay.test_agent_stage import PARTNER, PAUL, Site, dsn_by_action, envelope, make_site
from tests.relay.test_agent_stage import message as stage_message
from tests.relay.test_postal_batch import POSTAL_ROUTE

GHOST = "ghost@cab.partner.test"  # on the postal route, no annuaire entry at all


@pytest.fixture
async def postal_site(
    dev_pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Site]:
    """The agent stage's site with PARTNER's domain on a ``transport = "postal"`` route;
    PAUL reaches the post by his route's fallback; one letter per child."""
    monkeypatch.setattr(configs, "ROUTES", POSTAL_ROUTE + configs.ROUTES)
    monkeypatch.setattr(letter_sandbox, "MAX_LETTERS_PER_CHILD", 1)
    async for built in make_site(dev_pki, tmp_path):
        yield built


@pytest.fixture
def steps(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, Any]]:
    """What happens, in order: ``("child", n)`` when a child is started for n letters,
    ``("write", address)`` when a letter is written to the outbox."""
    seen: list[tuple[str, Any]] = []
    real_child = letter_sandbox._render_in_child
    real_write = write_to_outbox

    async def child(message: bytes, recipients: tuple[Any, ...], *args: Any) -> Any:
        seen.append(("child", len(recipients)))
        return await real_child(message, recipients, *args)

    def write(outbox: Path, queue_id: str, address: str, letter: Any) -> Any:
        seen.append(("write", address))
        return real_write(outbox, queue_id, address, letter)

    monkeypatch.setattr(letter_sandbox, "_render_in_child", child)
    monkeypatch.setattr(agent_postal, "write_to_outbox", write)
    return seen


def manifests(site: Site) -> dict[str, dict[str, Any]]:
    """The outbox's manifests by recipient address."""
    out: dict[str, dict[str, Any]] = {}
    for path in site.config.postal.outbox.glob("*.json"):
        document = json.loads(path.read_text())
        out[document["recipient_address"]] = document
    return out


async def test_each_childs_letters_are_written_before_the_next_child_starts(
    postal_site: Site, steps: list[tuple[str, Any]]
) -> None:
    """The finding: the agent holds one child's letters at most (module docstring)."""
    site = postal_site
    assert letters_per_child(1000) == 1
    await site.stage.received.recover()
    to = (PARTNER, PAUL)
    await site.add(envelope(*to), stage_message(*to))
    outcome = await site.stage.process_next()
    assert outcome is not None and outcome.disposition == "completed"
    # before the fix: [child, child, write, write] (every letter held, then written)
    assert steps == [("child", 1), ("write", PARTNER), ("child", 1), ("write", PAUL)]
    assert set(manifests(site)) == {PARTNER, PAUL}


async def test_each_letter_goes_to_its_own_recipient_when_a_lookup_finds_nothing(
    postal_site: Site, steps: list[tuple[str, Any]]
) -> None:
    """GHOST (first, no entry) is left out of the children: the letters that follow
    are not shifted onto the wrong address (the ``zip`` in ``_post_all``)."""
    site = postal_site
    await site.stage.received.recover()
    to = (GHOST, PARTNER, PAUL)
    await site.add(envelope(*to), stage_message(*to))
    outcome = await site.stage.process_next()
    assert outcome is not None and outcome.disposition == "completed"
    assert [step for step in steps if step[0] == "write"] == [("write", PARTNER), ("write", PAUL)]
    found = manifests(site)
    assert set(found) == {PARTNER, PAUL}
    for address, document in found.items():
        assert document["recipient"]["key"] == address  # the test annuaire's key
        assert document["address_lines"][0] == address.split("@")[0]
    actions = dsn_by_action(await site.entries(RECEIVED))
    (failed,) = actions["failed"]
    assert failed["Final-Recipient"].endswith(GHOST)
    relayed = sorted(b["Final-Recipient"].split(";")[1].strip() for b in actions["relayed"])
    assert relayed == sorted([PARTNER, PAUL])


async def test_a_child_killed_by_its_limits_fails_its_own_recipients_only(
    postal_site: Site, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The second child dies (a 1 MiB address space): PAUL fails with the limits'
    reason and has no letter; PARTNER's letter, from the first child, is written and
    ``relayed``. Outbox, audit trail and DSNs agree."""
    site = postal_site
    real_child = letter_sandbox._render_in_child
    calls: list[int] = []

    async def second_dies(message: bytes, recipients: tuple[Any, ...], *args: Any) -> Any:
        calls.append(len(recipients))
        if len(calls) == 2:
            sender, now, language, cpu_seconds, _ = args
            return await real_child(
                message, recipients, sender, now, language, cpu_seconds, 1024 * 1024
            )
        return await real_child(message, recipients, *args)

    monkeypatch.setattr(letter_sandbox, "_render_in_child", second_dies)
    await site.stage.received.recover()
    to = (PARTNER, PAUL)
    queue_id = await site.add(envelope(*to), stage_message(*to))
    outcome = await site.stage.process_next()
    assert outcome is not None and outcome.disposition == "completed"
    assert calls == [1, 1]

    outbox = site.config.postal.outbox
    assert set(manifests(site)) == {PARTNER}
    assert not list(outbox.glob(f"{letter_stem(queue_id, PAUL)}.*"))
    posted = [e.rcpt_to for e in site.trail.events if e.outcome == "posted"]
    assert posted == [(PARTNER,)]
    actions = dsn_by_action(await site.entries(RECEIVED))
    (failed,) = actions["failed"]
    assert failed["Final-Recipient"].endswith(PAUL)
    assert failed["Status"] == "5.3.0"  # STATUS_POSTAL_FAILED: permanent, no retry
    (relayed,) = actions["relayed"]
    assert relayed["Final-Recipient"].endswith(PARTNER)


@pytest.mark.parametrize(
    ("size", "letters"),
    [
        (0, 16),
        (1, 16),
        (8 * 1024 * 1024, 16),
        (8 * 1024 * 1024 + 1, 15),
        (64 * 1024 * 1024, 2),
        (128 * 1024 * 1024 - 1, 1),
        (128 * 1024 * 1024, 1),
        (1024 * 1024 * 1024, 1),
    ],
)
def test_letters_per_child_at_its_edges(size: int, letters: int) -> None:
    """16 letters, or 128 MiB of message per child, at least one (never 0: a division
    by zero for an empty message, or no child at all for a huge one)."""
    assert letters_per_child(size) == letters
