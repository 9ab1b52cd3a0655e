"""``gateway.crypto_calls.run_crypto``: an ordinary message's S/MIME work runs on the
event loop, a large one's in a thread; results and exceptions come back the same way."""

from __future__ import annotations

import threading

import pytest

from gateway.crypto_calls import INLINE_LIMIT, run_crypto


def _thread_of(tag: str) -> tuple[str, int]:
    return tag, threading.get_ident()


def _refuse(reason: str) -> None:
    raise ValueError(reason)


async def test_an_ordinary_message_runs_on_the_loop_thread() -> None:
    assert await run_crypto(INLINE_LIMIT, _thread_of, "small") == ("small", threading.get_ident())


async def test_a_large_message_runs_in_another_thread() -> None:
    tag, ident = await run_crypto(INLINE_LIMIT + 1, _thread_of, "large")
    assert tag == "large" and ident != threading.get_ident()


@pytest.mark.parametrize("size", [0, INLINE_LIMIT + 1])
async def test_the_function_s_exception_reaches_the_caller(size: int) -> None:
    with pytest.raises(ValueError, match="bad CMS"):
        await run_crypto(size, _refuse, "bad CMS")
