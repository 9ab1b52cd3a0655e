"""An asyncio event loop running in its own thread, for in-process test servers.

Role: the capture SMTP sink and the DNS server are asyncio servers; running them on a
loop in a background thread lets both synchronous tests (smtplib, urllib) and
asynchronous tests (whose own loop must not be blocked) talk to them.

Invariants:
- ``start`` returns once the loop runs; ``call`` runs a coroutine on it and returns its
  result (or raises its exception) in the calling thread;
- ``stop`` cancels every task still running on the loop (connection handlers), waits for
  them to finish their ``finally`` blocks (which close their transports, so no
  ``ResourceWarning`` escapes under ``filterwarnings=error``), stops the loop, joins the
  thread and closes the loop. It is idempotent.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: Bound on how long a call into the loop may take (a hung server fails, never hangs).
CALL_TIMEOUT = 30.0


class LoopThread:
    """Owns one event loop and the daemon thread that runs it."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()
        self._stopped = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop (use only from coroutines running on it, or via ``call``)."""
        if self._loop is None:
            raise RuntimeError(f"{self._name}: not started")
        return self._loop

    def start(self) -> None:
        """Create the loop, start the thread and wait until the loop is running."""
        self._loop = asyncio.new_event_loop()
        self._thread.start()
        if not self._started.wait(CALL_TIMEOUT):
            raise RuntimeError(f"{self._name}: event loop thread did not start")

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        loop.call_soon(self._started.set)
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def is_alive(self) -> bool:
        """True while the loop's thread runs."""
        return self._thread.is_alive()

    def call(self, coroutine: Coroutine[Any, Any, T], timeout: float = CALL_TIMEOUT) -> T:
        """Run ``coroutine`` on the loop and return its result in this thread."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result(timeout)

    async def _cancel_tasks(self) -> None:
        current = asyncio.current_task()
        tasks = [task for task in asyncio.all_tasks() if task is not current]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def stop(self) -> None:
        """Cancel the remaining tasks, stop the loop and join the thread (idempotent)."""
        if self._stopped or self._loop is None:
            return
        self._stopped = True
        loop = self._loop
        if not self._thread.is_alive():
            loop.close()
            return
        try:
            self.call(self._cancel_tasks())
        finally:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(CALL_TIMEOUT)
