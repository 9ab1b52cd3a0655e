"""Free loopback TCP ports for test servers (real peers, capture sinks, gateway listeners).

Role: hand out a port on 127.0.0.1 that nothing listens on *now* and that this test
process has not handed out before, so two fixtures started in the same session never
get the same port.

Why not ``bind(("127.0.0.1", 0))``: the kernel then picks from the ephemeral range
(``/proc/sys/net/ipv4/ip_local_port_range``, 32768-60999 here), the same range it uses
for the source port of every outgoing connection, so a port freed by the probe can be
taken by a client socket before the daemon binds it. We pick at random *below* the
ephemeral range instead (``PORT_RANGE``), which no outgoing connection uses, and check
with a real ``bind`` (without ``SO_REUSEADDR``, so a port still in TIME_WAIT is refused
too). Random picks also keep helpers running tests at the same time on the same machine
(other pytest processes) from colliding in practice; the check cannot be atomic across
processes, which is why a fixture that fails with "address in use" reports its log.

Only loopback is ever probed: tests never bind another address.
"""

from __future__ import annotations

import errno
import random
import socket
import threading

LOOPBACK = "127.0.0.1"

#: Ports below the Linux ephemeral range and above the usual well-known services.
PORT_RANGE = range(20000, 32768)

_MAX_ATTEMPTS = 200

_handed_out: set[int] = set()
_lock = threading.Lock()
_random = random.SystemRandom()


class NoFreePortError(RuntimeError):
    """No free loopback port was found after many attempts (the range is exhausted)."""


def port_is_free(port: int, host: str = LOOPBACK) -> bool:
    """True when a TCP socket can bind ``host:port`` right now (no listener, no TIME_WAIT)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as error:
            if error.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def free_port() -> int:
    """Return a loopback TCP port that is free now and was not returned before in this process."""
    with _lock:
        for _ in range(_MAX_ATTEMPTS):
            port = _random.choice(PORT_RANGE)
            if port in _handed_out or not port_is_free(port):
                continue
            _handed_out.add(port)
            return port
    raise NoFreePortError(
        f"no free port on {LOOPBACK} in {PORT_RANGE.start}-{PORT_RANGE.stop - 1} "
        f"after {_MAX_ATTEMPTS} attempts"
    )


def free_ports(count: int) -> list[int]:
    """Return ``count`` distinct free loopback ports (see ``free_port``)."""
    return [free_port() for _ in range(count)]
