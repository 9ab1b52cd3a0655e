"""``missive serve``: start the gateway and run until SIGTERM or SIGINT.

What it does today: validates the configuration (exit 2 with one line per problem),
builds the gateway through the composition root (state directories 0700, audit
retention, audit writer), records ``gateway.start`` / ``gateway.stop`` in the audit
trail, and logs each configured listener. The SMTP front is not built yet (its own
issue), so **no listener is opened and no mail is accepted**: each listener is logged
as ``listener.not_started`` with that reason, and the ready line says so. Nothing here
pretends to accept mail.

Exit status: 0 after a clean stop on a signal, 2 on a configuration error.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from gateway import __version__
from gateway.app import build_gateway, lifecycle_event
from gateway.cli_common import SubParsers, add_config_argument, load_config_from_args
from gateway.config import Config
from gateway.log import get_logger, setup_logging

_log = get_logger("serve")

NOT_BUILT = "the SMTP front is not built yet: this listener is not opened, no mail is accepted"


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the gateway (until SIGTERM or Ctrl-C)",
        description="Run the gateway in the foreground; logs go to stdout.",
    )
    add_config_argument(parser)
    parser.set_defaults(handler=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    config = load_config_from_args(args)
    setup_logging(config.gateway.log_level)
    asyncio.run(serve(config))
    return 0


async def serve(config: Config, stop: asyncio.Event | None = None) -> None:
    """Run until ``stop`` is set (by SIGTERM/SIGINT when not given)."""
    stop = stop or _stop_on_signals()
    gateway = build_gateway(config)
    try:
        await gateway.audit.record(lifecycle_event("start", config, version=__version__))
        _log.info(
            "gateway.start",
            version=__version__,
            hostname=config.gateway.hostname,
            config=str(config.source),
        )
        for listener in config.listeners:
            _log.warning(
                "listener.not_started",
                name=listener.name,
                kind=listener.kind,
                address=str(listener.address),
                tls=listener.tls,
                reason=NOT_BUILT,
            )
        _log.info("gateway.ready", listeners_open=0, accepting_mail="no")
        await stop.wait()
        _log.info("gateway.stopping")
        await gateway.audit.record(lifecycle_event("stop", config))
    finally:
        gateway.close()
    _log.info("gateway.stopped")


def _stop_on_signals() -> asyncio.Event:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    return stop
