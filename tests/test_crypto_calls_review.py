"""Review of ``gateway.crypto_calls.run_crypto`` and its callers (session 8, R1).

1. Consecutive inline calls (the secure agent seals once per hidden recipient, in one
   loop without another ``await``) must let the loop's other tasks run between them.
2. The inbound agent's ``_open_for`` verifies signatures with the chain validator,
   whose revocation checks fetch CRLs and OCSP answers over HTTP on a cache miss
   (``gateway.smime.revocation``: "blocking (network): call it from a thread"); inline,
   that fetch held the loop. Fixed: the worker's validator fetches through
   ``OffLoopFetcher`` and ``run_crypto`` runs such a call again in a thread.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from gateway.crypto_calls import OffLoopFetcher, run_crypto
from gateway.inbound.stage import inbound_validator
from gateway.pki.dev import DevPki
from tests.inbound.site import ALICE, MAILDIR, opened_site


async def test_consecutive_inline_calls_let_the_other_tasks_run() -> None:
    order: list[str] = []

    async def other_entry() -> None:
        order.append("other entry")

    waiting = asyncio.ensure_future(other_entry())  # ready to run at the next yield
    for _ in range(3):  # three hidden recipients, three seals in one loop
        await run_crypto(10, order.append, "seal")
    await waiting
    assert order.count("seal") == 3
    assert order.index("other entry") < 2  # it ran before the seals were all done


async def test_the_inbound_agent_s_validator_never_fetches_on_its_loop(
    dev_pki: DevPki, tmp_path: Path
) -> None:
    """The worker's validator refuses revocation fetches on a loop, so ``run_crypto``
    moves a verification that needs the network to a thread (the mechanism itself:
    ``tests/smime/validate/test_off_loop_fetch.py``)."""
    async with opened_site(
        tmp_path, dev_pki, inbound=MAILDIR, actor="inbound-agent", keys_of=(ALICE,)
    ) as site:
        validator = inbound_validator(site.config)
    assert isinstance(validator.checker.fetcher, OffLoopFetcher)
