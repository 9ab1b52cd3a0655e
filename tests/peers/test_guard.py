"""The network guard and the CI strictness rule really act.

Each test that provokes a violation takes it back with ``take_violations()`` (and
checks it was recorded); otherwise the guard would, rightly, fail the test itself.
The "swallowed error" and CI cases run a small pytest session and check the outcome it
reports: the guard's in a subprocess (it patches the process, and an inner session
would uninstall the outer one's guard when it ends), the CI rule in-process (it keeps
no state and reads ``CI`` at each report).
"""

from __future__ import annotations

import asyncio
import re
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import dns.asyncresolver
import dns.resolver
import pytest

from tests.peers import netguard
from tests.peers.netguard import NameLookupGuardError, NetworkGuardError, take_violations

REPO_ROOT = Path(__file__).resolve().parents[2]
TEST_NET = "192.0.2.1"  # RFC 5737 TEST-NET-1: never routed


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """A one-shot TCP echo server on 127.0.0.1 (a real loopback listener)."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(4)

    def serve() -> None:
        for _ in range(2):
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            with connection:
                connection.sendall(connection.recv(64))

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield listener.getsockname()
    finally:
        listener.close()
        thread.join(5)


def test_guard_is_installed_for_the_session() -> None:
    assert netguard.is_installed()


def test_tcp_connect_to_test_net_fails_before_any_packet() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkGuardError, match=re.escape(TEST_NET)):
            sock.connect((TEST_NET, 25))
        # A real connect() binds an ephemeral source port before its SYN leaves;
        # an unbound socket proves the kernel was never asked to connect.
        assert sock.getsockname() == ("0.0.0.0", 0)  # noqa: S104 - compared, not bound
        with pytest.raises(NetworkGuardError):
            sock.connect_ex((TEST_NET, 25))
    assert len(take_violations()) == 2


def test_udp_datagram_to_test_net_is_not_sent() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        with pytest.raises(NetworkGuardError):
            sock.sendto(b"query", (TEST_NET, 53))
        with pytest.raises(NetworkGuardError):
            sock.sendmsg([b"query"], [], 0, (TEST_NET, 53))
        # sendto would have bound a source port
        assert sock.getsockname() == ("0.0.0.0", 0)  # noqa: S104 - compared, not bound
    assert len(take_violations()) == 2


def test_ipv6_outside_loopback_is_refused() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        with pytest.raises(NetworkGuardError):
            sock.connect(("2001:db8::1", 25))
    assert take_violations()


def test_name_that_needs_dns_is_refused_without_a_query() -> None:
    with pytest.raises(NameLookupGuardError):
        socket.create_connection(("mx.example.org", 25), timeout=1)
    with pytest.raises(NameLookupGuardError):
        socket.gethostbyname("www.example.org")
    violations = take_violations()
    assert len(violations) == 2
    assert "mx.example.org" in violations[0]


async def test_asyncio_connections_go_through_the_guard() -> None:
    with pytest.raises(NetworkGuardError):
        await asyncio.open_connection(TEST_NET, 25)
    with pytest.raises(NameLookupGuardError):
        await asyncio.open_connection("mx.example.org", 25)
    assert len(take_violations()) == 2


async def test_dnspython_to_a_real_nameserver_is_stopped_and_recorded() -> None:
    resolver = dns.asyncresolver.Resolver(configure=False)
    resolver.nameservers = ["192.0.2.53"]  # as if /etc/resolv.conf were used
    with pytest.raises(dns.resolver.NoNameservers, match="network guard"):
        await resolver.resolve("clinique-b.test", "MX")
    # dnspython wrapped the error: only the record shows it was the guard
    assert take_violations() == ["sendto to 192.0.2.53 port 53: not loopback"]


def test_loopback_by_address_and_by_name_works(echo_server: tuple[str, int]) -> None:
    _, port = echo_server
    for host in ("127.0.0.1", "localhost"):
        with socket.create_connection((host, port), timeout=5) as connection:
            connection.sendall(b"ping")
            assert connection.recv(64) == b"ping"
    assert take_violations() == []


def test_unix_sockets_are_allowed() -> None:
    left, right = socket.socketpair(socket.AF_UNIX)
    with left, right:
        left.sendall(b"local")
        assert right.recv(16) == b"local"
    assert take_violations() == []


def test_decisions_on_addresses() -> None:
    local = netguard.LocalNames(frozenset({"vm"}), frozenset({"10.0.0.5"}))
    assert local.name_is_local("localhost")
    assert local.name_is_local("anything.localhost")
    assert local.name_is_local("VM.")
    assert not local.name_is_local("mx.chu-a.test")
    assert local.address_is_local("10.0.0.5")
    assert not local.address_is_local("192.0.2.1")
    for address in ("127.0.0.1", "127.255.0.9", "::1", "::ffff:127.0.0.1"):
        parsed = netguard.parse_ip(address)
        assert parsed is not None and netguard.is_loopback_ip(parsed)
    outside = ("0.0.0.0", "10.0.0.1", "::ffff:192.0.2.1", "fe80::1%eth0")  # noqa: S104
    for address in outside:
        parsed = netguard.parse_ip(address)
        assert parsed is not None and not netguard.is_loopback_ip(parsed)


# ---------------------------------------------------------------------------------
# Outcomes of a whole pytest session (subprocess)

SWALLOWING_TESTS = f"""
import socket

def test_swallows_the_error():
    try:
        socket.create_connection(("{TEST_NET}", 25), timeout=1)
    except OSError:
        pass  # a retrying client would carry on

def test_stays_on_loopback():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
"""

SKIPPING_TESTS = """
import dns.asyncresolver
import dns.resolver
import pytest
from tests.peers.procs import require_binary

def test_skips_by_hand():
    pytest.skip("slapd not here")

def test_missing_program():
    require_binary("missive-no-such-program")

@pytest.mark.xfail(reason="known gap")
def test_expected_failure():
    assert False

def test_passes():
    pass
"""


@pytest.fixture
def inner_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """Let the inner session import ``tests.peers.*`` from this checkout."""
    monkeypatch.setenv("PYTHONPATH", str(REPO_ROOT))
    return monkeypatch


def test_a_swallowed_violation_still_fails_the_test(
    pytester: pytest.Pytester, inner_env: pytest.MonkeyPatch
) -> None:
    pytester.makepyfile(test_inner=SWALLOWING_TESTS)
    result = pytester.runpytest_subprocess(
        "-p", "tests.peers.netguard", "-p", "no:cacheprovider", "-p", "no:asyncio"
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        ["*network guard: non-loopback network use during call*", f"*{TEST_NET} port 25*"]
    )


def test_under_ci_every_skip_is_a_failure(
    pytester: pytest.Pytester, inner_env: pytest.MonkeyPatch
) -> None:
    inner_env.setenv("CI", "true")
    pytester.makepyfile(test_inner=SKIPPING_TESTS)
    result = pytester.runpytest_inprocess(
        "-p", "tests.peers.ci_strict", "-p", "no:cacheprovider", "-p", "no:asyncio"
    )
    result.assert_outcomes(passed=1, failed=2, xfailed=1)
    result.stdout.fnmatch_lines(["*skipped under CI=true*slapd not here*"])
    result.stdout.fnmatch_lines(["*PeerMissingError*missive-no-such-program*"])


def test_outside_ci_skips_stay_skips(
    pytester: pytest.Pytester, inner_env: pytest.MonkeyPatch
) -> None:
    inner_env.delenv("CI", raising=False)
    pytester.makepyfile(test_inner=SKIPPING_TESTS)
    result = pytester.runpytest_inprocess(
        "-p", "tests.peers.ci_strict", "-p", "no:cacheprovider", "-p", "no:asyncio"
    )
    result.assert_outcomes(passed=1, skipped=2, xfailed=1)
