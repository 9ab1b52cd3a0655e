"""The letters of one message in one sandboxed child (session 7, H2).

``gateway.relay.letter.render_letters`` reads a message once for all its postal
recipients, ``gateway.relay.letter_sandbox.render_letters_isolated`` runs it in one
spawned child per message (per ``letters_per_child`` recipients), and the secure agent
stage sends every postal recipient of a pass (a ``transport = "postal"`` route and a
``postal`` fallback alike) to that one call. Children are counted where they are made:
the spawn context's ``Process`` is replaced by a factory of ``SpawnProcess`` that
records each one it makes (so they are spawned, and each has ended on return)."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator, Callable
from multiprocessing.context import SpawnContext, SpawnProcess
from pathlib import Path
from typing import Any

import pytest
from pypdf import PdfReader

from annuaire.model import Entry
from gateway.pki.dev import DevPki
from gateway.relay import letter as letter_module
from gateway.relay import letter_sandbox
from gateway.relay.letter import Letter, render_letter, render_letters
from gateway.relay.letter_sandbox import (
    LETTER_BYTES_PER_CHILD,
    MAX_LETTERS_PER_CHILD,
    letters_per_child,
    render_letters_isolated,
)
from gateway.relay.postal import NoPostalAddress, PostalError, UnreadableMessage
from gateway.relay.postal_address import format_postal_address
from gateway.spool import RECEIVED
from tests.relay import configs
from tests.relay.test_agent_stage import (
    CLAIRE,
    NOPOST,
    PARTNER,
    PAUL,
    Site,
    dsn_by_action,
    envelope,
    make_site,
)
from tests.relay.test_agent_stage import message as stage_message
from tests.relay.test_postal import NOW, entry, message, small_pdf

SENDER = "alice.martin@chu-a.test"


def recipients() -> list[Entry]:
    """Three postal recipients whose address blocks differ in every line."""
    return [
        entry(key="810000000001"),
        entry(
            key="810000000002",
            display_name="Dr Marc Petit",
            organisation="Cabinet des Tilleuls",
            postal_address=("3 place du Marché",),
            postal_code="69002",
            city="Lyon",
        ),
        entry(
            key="810000000003",
            display_name="Dr Léa Bernard",
            organisation="",
            postal_address=("Bâtiment C", "8 avenue Foch"),
            postal_code="13008",
            city="Marseille",
        ),
    ]


def with_attachment() -> bytes:
    return message(attachments=[("compte-rendu.pdf", "application", "pdf", small_pdf(2))])


class CountedSpawn(SpawnContext):
    """The spawn context, with each process it makes recorded (module docstring). The
    processes are plain ``SpawnProcess`` objects: spawn pickles them for the child."""

    def __init__(self) -> None:
        super().__init__()
        self.made: list[SpawnProcess] = []

        def made(*args: Any, **kwargs: Any) -> SpawnProcess:
            process = SpawnProcess(*args, **kwargs)
            self.made.append(process)
            return process

        self.Process = made  # type: ignore[assignment,misc]


@pytest.fixture
def children(monkeypatch: pytest.MonkeyPatch) -> list[SpawnProcess]:
    """The children ``letter_sandbox`` starts during the test, in order."""
    context = CountedSpawn()
    monkeypatch.setattr(letter_sandbox, "_SPAWN", context)
    return context.made


def assert_letter_for(outcome: Letter | PostalError, recipient: Entry) -> Letter:
    """``outcome`` is the letter of ``recipient``: its manifest and its printed page."""
    assert isinstance(outcome, Letter), outcome
    lines = list(format_postal_address(recipient).lines)
    assert outcome.manifest["address_lines"] == lines
    assert outcome.manifest["recipient"]["key"] == recipient.key
    first_page = PdfReader(io.BytesIO(outcome.pdf)).pages[0].extract_text()
    for line in lines:
        assert line in first_page
    return outcome


def assert_all_joined(made: list[SpawnProcess]) -> None:
    """Each child was started (it has a pid: not this process) and has ended."""
    for child in made:
        assert child.pid is not None and child.exitcode is not None, "a child left running"


# --- the sandbox: one child per message -------------------------------------------------


def test_three_postal_recipients_make_one_child_and_three_letters(
    children: list[SpawnProcess],
) -> None:
    raw = with_attachment()
    people = recipients()
    outcomes = asyncio.run(render_letters_isolated(raw, people, SENDER, now=NOW))
    assert len(children) == 1
    assert_all_joined(children)
    assert len(outcomes) == 3
    for outcome, person in zip(outcomes, people, strict=True):
        letter = assert_letter_for(outcome, person)
        assert letter.manifest["pages"] == {"letter": 1, "appended": 2, "total": 3}
        assert letter == render_letter(raw, person, SENDER, now=NOW)  # byte for byte


def test_a_recipient_without_postal_address_fails_alone(children: list[SpawnProcess]) -> None:
    people = recipients()
    people[1] = entry(key="810000000009", postal_address=())
    outcomes = asyncio.run(render_letters_isolated(with_attachment(), people, SENDER, now=NOW))
    assert len(children) == 1
    first, missing, last = outcomes
    assert_letter_for(first, people[0])
    assert isinstance(missing, NoPostalAddress) and missing.permanent
    assert_letter_for(last, people[2])


def test_more_recipients_than_one_child_renders_take_further_children(
    children: list[SpawnProcess], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(letter_sandbox, "MAX_LETTERS_PER_CHILD", 2)
    people = recipients()
    outcomes = asyncio.run(render_letters_isolated(message(), people, SENDER, now=NOW))
    assert len(children) == 2  # two letters, then one
    assert_all_joined(children)
    for outcome, person in zip(outcomes, people, strict=True):  # in order across children
        assert_letter_for(outcome, person)


def test_letters_per_child_bounds_the_letters_a_child_holds() -> None:
    assert letters_per_child(0) == MAX_LETTERS_PER_CHILD
    assert letters_per_child(100_000) == MAX_LETTERS_PER_CHILD
    assert letters_per_child(50_000_000) == LETTER_BYTES_PER_CHILD // 50_000_000 == 2
    assert letters_per_child(LETTER_BYTES_PER_CHILD + 1) == 1


# --- render_letters: the message read once, an outcome per recipient --------------------


def counting(monkeypatch: pytest.MonkeyPatch, name: str) -> list[object]:
    """Calls to ``letter_module.<name>`` recorded (the function still runs)."""
    calls: list[object] = []
    original: Callable[..., Any] = getattr(letter_module, name)

    def counted(*args: Any) -> Any:
        calls.append(args)
        return original(*args)

    monkeypatch.setattr(letter_module, name, counted)
    return calls


def test_the_message_and_its_pdfs_are_read_once_for_every_letter(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    raw = with_attachment()
    people = recipients()
    one_by_one = [render_letter(raw, person, SENDER, now=NOW) for person in people]
    reads = counting(monkeypatch, "read_message")
    plans = counting(monkeypatch, "plan_enclosures")
    together = render_letters(raw, people, SENDER, now=NOW)
    assert (len(reads), len(plans)) == (1, 1)
    assert together == one_by_one  # the shared PDF readers change no letter


def test_a_message_that_cannot_be_read_is_each_addressable_recipients_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reads = counting(monkeypatch, "read_message")
    unreadable, missing = render_letters(
        b"   \r\n", [entry(), entry(city="")], SENDER, now=NOW, language="en"
    )
    assert isinstance(unreadable, UnreadableMessage) and unreadable.permanent
    assert isinstance(missing, NoPostalAddress)  # its own address decides first
    assert len(reads) == 1
    (alone,) = render_letters(b"", [entry(city="")], SENDER, now=NOW)
    assert isinstance(alone, NoPostalAddress)
    assert len(reads) == 1  # nobody to write to: the message is not even read
    assert render_letters(message(), [], SENDER, now=NOW) == []


# --- the agent stage: every postal recipient of a pass in one call ----------------------

POSTAL_ROUTE = """
[[routes]]
name = "courrier"
domains = ["cab.partner.test"]
transport = "postal"
"""


@pytest.fixture
async def postal_site(
    dev_pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Site]:
    """The agent stage's site with PARTNER's domain on a ``transport = "postal"`` route
    (first match wins): PAUL and NOPOST reach the post by their route's fallback."""
    monkeypatch.setattr(configs, "ROUTES", POSTAL_ROUTE + configs.ROUTES)
    async for built in make_site(dev_pki, tmp_path):
        yield built


async def test_the_postal_recipients_of_a_message_share_one_child(
    postal_site: Site, children: list[SpawnProcess]
) -> None:
    site = postal_site
    await site.stage.received.recover()
    to = (CLAIRE, PAUL, NOPOST, PARTNER)
    await site.add(envelope(*to), stage_message(*to))
    outcome = await site.stage.process_next()
    assert outcome is not None and outcome.disposition == "completed"
    routed = {(e.type, e.rcpt_to) for e in site.trail.events if e.type.startswith("agent.")}
    assert {("agent.postal", (PARTNER,)), ("agent.fallback", (PAUL,))} <= routed
    assert ("agent.fallback", (NOPOST,)) in routed  # both ways to the post, in one pass
    assert len(children) == 1  # PAUL, NOPOST (fallback) and PARTNER (route): one child
    assert_all_joined(children)

    manifests = {
        json.loads(path.read_text())["recipient"]["key"]: json.loads(path.read_text())
        for path in site.config.postal.outbox.glob("*.json")
    }
    assert set(manifests) == {PAUL, PARTNER}
    for address in (PAUL, PARTNER):
        lines = manifests[address]["address_lines"]
        assert lines[0] == address.split("@")[0] and lines[-1] == "42000 SAINT ETIENNE"
    assert len(list(site.config.postal.outbox.glob("*.pdf"))) == 2

    actions = dsn_by_action(await site.entries(RECEIVED))
    (failed,) = actions["failed"]
    assert failed["Final-Recipient"].endswith(NOPOST) and failed["Status"] == "5.3.0"
    relayed = sorted(b["Final-Recipient"].split(";")[1].strip() for b in actions["relayed"])
    assert relayed == sorted([PAUL, PARTNER])
    posted = [e.rcpt_to for e in site.trail.events if e.outcome == "posted"]
    assert sorted(posted) == sorted([(PAUL,), (PARTNER,)])  # agent.postal, one per letter
