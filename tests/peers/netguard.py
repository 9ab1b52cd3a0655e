"""Network guard: a test that reaches past loopback fails, and no packet leaves the machine.

Role: a pytest plugin (listed in ``tests/conftest.py``) that patches the socket layer of
the test process for the whole session, so the suite can never talk to the Internet by
accident (a real MX found through the system resolver, a CRL distribution point, an
OCSP responder named in a certificate).

What is checked, before the system call is made:
- ``socket.socket.connect`` / ``connect_ex`` / ``sendto`` / ``sendmsg`` on ``AF_INET`` and
  ``AF_INET6`` sockets: the destination must be loopback, i.e. IPv4 in 127.0.0.0/8, IPv6
  ``::1`` or an IPv4-mapped loopback address. A host *name* is allowed only when it is a
  local name (below) and every address it resolves to is loopback. ``AF_UNIX`` and the
  other families pass untouched. asyncio, smtplib, urllib, ``ssl`` and dnspython all go
  through these methods (``SSLSocket`` and the asyncio selector loop call the inherited
  ``connect``/``sendto``), so one patch covers sync and async code.
- name lookups (``socket.getaddrinfo`` -- which asyncio's ``loop.getaddrinfo`` and
  ``socket.create_connection`` call -- ``gethostbyname``, ``gethostbyname_ex``,
  ``gethostbyaddr``, ``getnameinfo``): a lookup is allowed only when libc answers it from
  ``/etc/hosts`` (``hosts: files dns`` in nsswitch.conf), so it cannot become a DNS query:
  IP literals, ``localhost``, names ending in ``.localhost`` (RFC 6761 §6.3), and the
  names and addresses listed in ``/etc/hosts`` when the guard is installed. Anything else
  would be sent to the system resolver, whose address is not loopback here.

How a violation fails the test: the guard raises ``NetworkGuardError`` (a
``PermissionError``, errno EPERM, which is what ``connect`` returns when a firewall
drops the packet) or ``NameLookupGuardError`` (a ``socket.gaierror``, EAI_NONAME), so the
code under test takes its ordinary error path, *and* records the violation. After each
test phase (setup, call, teardown) the recorded violations fail that phase, even when
the code under test caught the error and carried on (a retrying relay would). A test
that provokes a violation on purpose takes it back with ``take_violations()``.

Limits (by design): only the pytest process is guarded. Programs that tests start
(slapd, Postfix, openssl, gpgsm, a ``missive serve`` subprocess) are configured by their
fixtures to use loopback only; their traffic is not seen here. ``bind`` is not checked:
binding is not a connection, and the fixtures bind 127.0.0.1 only.
"""

from __future__ import annotations

import errno
import ipaddress
import socket
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

HOSTS_FILE = Path("/etc/hosts")

#: Names libc resolves from /etc/hosts or by RFC 6761 rule, never through DNS.
ALWAYS_LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain"})

_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6)


class NetworkGuardError(PermissionError):
    """A test tried to connect or send to a non-loopback destination (nothing was sent)."""

    def __init__(self, violation: str) -> None:
        super().__init__(errno.EPERM, f"network guard: {violation}")
        self.violation = violation


class NameLookupGuardError(socket.gaierror):
    """A test tried a name lookup that would leave the machine (no query was sent)."""

    def __init__(self, violation: str) -> None:
        super().__init__(socket.EAI_NONAME, f"network guard: {violation}")
        self.violation = violation


# ----------------------------------------------------------------------------------
# Recording


_violations: list[str] = []
_violations_lock = threading.Lock()


def _record(violation: str) -> None:
    with _violations_lock:
        _violations.append(violation)


def take_violations() -> list[str]:
    """Return and forget the violations recorded so far (for tests that provoke one)."""
    with _violations_lock:
        taken = list(_violations)
        _violations.clear()
    return taken


def _refuse_connection(violation: str) -> NetworkGuardError:
    _record(violation)
    return NetworkGuardError(violation)


def _refuse_lookup(violation: str) -> NameLookupGuardError:
    _record(violation)
    return NameLookupGuardError(violation)


# ----------------------------------------------------------------------------------
# Pure decisions


def parse_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address for an IP literal (an IPv6 ``%scope`` suffix is ignored), else None."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def is_loopback_ip(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (``::ffff:127.0.0.1``)."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def read_hosts_file(path: Path = HOSTS_FILE) -> tuple[frozenset[str], frozenset[str]]:
    """(names, addresses) listed in a hosts(5) file; empty sets if it cannot be read."""
    names: set[str] = set()
    addresses: set[str] = set()
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset(), frozenset()
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) >= 2 and parse_ip(fields[0]) is not None:
            addresses.add(str(parse_ip(fields[0])))
            names.update(name.lower().rstrip(".") for name in fields[1:])
    return frozenset(names), frozenset(addresses)


class LocalNames:
    """Which names and addresses resolve without a DNS query (fixed at install time)."""

    def __init__(self, hosts_names: frozenset[str], hosts_addresses: frozenset[str]) -> None:
        self._names = hosts_names | ALWAYS_LOCAL_NAMES
        self._addresses = hosts_addresses

    def name_is_local(self, host: str) -> bool:
        """True for IP literals, localhost names and names listed in /etc/hosts."""
        if parse_ip(host) is not None:
            return True
        name = host.lower().rstrip(".")
        return name in self._names or name.endswith(".localhost")

    def address_is_local(self, host: str) -> bool:
        """True when a reverse lookup of ``host`` is answered locally."""
        address = parse_ip(host)
        if address is None:
            return self.name_is_local(host)
        return is_loopback_ip(address) or str(address) in self._addresses


def _host_text(host: Any) -> str:
    if isinstance(host, bytes | bytearray):
        return bytes(host).decode("idna")
    return str(host)


# ----------------------------------------------------------------------------------
# The patches


class _Guard:
    """Holds the original functions; ``install``/``uninstall`` swap them in and out."""

    def __init__(self) -> None:
        self.installed = False
        self.local = LocalNames(frozenset(), frozenset())
        self.originals: dict[tuple[object, str], Any] = {}

    # -- lookups -----------------------------------------------------------------

    def check_lookup(self, host: Any, what: str) -> None:
        if host is None:
            return
        text = _host_text(host)
        if text and not self.local.name_is_local(text):
            raise _refuse_lookup(f"{what}({text!r}) would query DNS, which is not loopback")

    def resolve_local(self, host: str, port: int) -> list[str]:
        """Addresses of an already-vetted local name, with the unpatched getaddrinfo."""
        original = self.originals[(socket, "getaddrinfo")]
        infos = original(host, port, 0, socket.SOCK_STREAM)
        return [str(info[4][0]) for info in infos]

    # -- destinations --------------------------------------------------------------

    def check_destination(self, sock: socket.socket, address: Any, what: str) -> None:
        if sock.family not in _INET_FAMILIES or address is None:
            return
        if not isinstance(address, tuple) or not address:
            return  # malformed: let the real call raise its own TypeError
        host = _host_text(address[0])
        port = address[1] if len(address) > 1 else 0
        ip = parse_ip(host)
        if ip is not None:
            if not is_loopback_ip(ip):
                raise _refuse_connection(f"{what} to {host} port {port}: not loopback")
            return
        if not self.local.name_is_local(host):
            raise _refuse_connection(f"{what} to {host!r} port {port}: name is not local")
        resolved = self.resolve_local(host, int(port))
        if not resolved or not all(
            is_loopback_ip(ipaddress.ip_address(a.split("%")[0])) for a in resolved
        ):
            raise _refuse_connection(
                f"{what} to {host!r} port {port}: resolves to {resolved}, not only loopback"
            )

    # -- installation --------------------------------------------------------------

    def _swap(self, owner: object, name: str, factory: Callable[[Any], Any]) -> None:
        original = getattr(owner, name)
        self.originals[(owner, name)] = original
        setattr(owner, name, factory(original))

    def install(self) -> None:
        if self.installed:
            return
        self.local = LocalNames(*read_hosts_file())
        for name, factory in _SOCKET_METHOD_PATCHES.items():
            self._swap(socket.socket, name, factory)
        for name, factory in _LOOKUP_PATCHES.items():
            self._swap(socket, name, factory)
        self.installed = True

    def uninstall(self) -> None:
        if not self.installed:
            return
        for (owner, name), original in self.originals.items():
            setattr(owner, name, original)
        self.originals.clear()
        self.installed = False


_guard = _Guard()


def _patched_connect(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(self: socket.socket, address: Any) -> Any:
        _guard.check_destination(self, address, "connect")
        return original(self, address)

    return connect


def _patched_connect_ex(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect_ex(self: socket.socket, address: Any) -> Any:
        _guard.check_destination(self, address, "connect_ex")
        return original(self, address)

    return connect_ex


def _patched_sendto(original: Callable[..., Any]) -> Callable[..., Any]:
    def sendto(self: socket.socket, data: Any, *args: Any) -> Any:
        # sendto(data, address) or sendto(data, flags, address)
        _guard.check_destination(self, args[-1] if args else None, "sendto")
        return original(self, data, *args)

    return sendto


def _patched_sendmsg(original: Callable[..., Any]) -> Callable[..., Any]:
    def sendmsg(self: socket.socket, buffers: Any, *args: Any) -> Any:
        # sendmsg(buffers, ancdata=(), flags=0, address=None)
        _guard.check_destination(self, args[2] if len(args) > 2 else None, "sendmsg")
        return original(self, buffers, *args)

    return sendmsg


def _patched_getaddrinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        _guard.check_lookup(host, "getaddrinfo")
        return original(host, *args, **kwargs)

    return getaddrinfo


def _patched_by_name(what: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def factory(original: Callable[..., Any]) -> Callable[..., Any]:
        def lookup(host: Any) -> Any:
            _guard.check_lookup(host, what)
            return original(host)

        return lookup

    return factory


def _patched_gethostbyaddr(original: Callable[..., Any]) -> Callable[..., Any]:
    def gethostbyaddr(host: Any) -> Any:
        text = _host_text(host)
        if not _guard.local.address_is_local(text):
            raise _refuse_lookup(f"gethostbyaddr({text!r}) would query DNS")
        return original(host)

    return gethostbyaddr


def _patched_getnameinfo(original: Callable[..., Any]) -> Callable[..., Any]:
    def getnameinfo(sockaddr: Any, flags: int) -> Any:
        host = _host_text(sockaddr[0]) if isinstance(sockaddr, tuple) and sockaddr else ""
        numeric = flags & socket.NI_NUMERICHOST
        if host and not numeric and not _guard.local.address_is_local(host):
            raise _refuse_lookup(f"getnameinfo({host!r}) would query DNS")
        return original(sockaddr, flags)

    return getnameinfo


_SOCKET_METHOD_PATCHES: dict[str, Callable[[Any], Any]] = {
    "connect": _patched_connect,
    "connect_ex": _patched_connect_ex,
    "sendto": _patched_sendto,
    "sendmsg": _patched_sendmsg,
}

_LOOKUP_PATCHES: dict[str, Callable[[Any], Any]] = {
    "getaddrinfo": _patched_getaddrinfo,
    "gethostbyname": _patched_by_name("gethostbyname"),
    "gethostbyname_ex": _patched_by_name("gethostbyname_ex"),
    "gethostbyaddr": _patched_gethostbyaddr,
    "getnameinfo": _patched_getnameinfo,
}


def install() -> None:
    """Patch the socket layer (idempotent)."""
    _guard.install()


def uninstall() -> None:
    """Restore the original socket functions (idempotent)."""
    _guard.uninstall()


def is_installed() -> bool:
    """True while the guard is active."""
    return _guard.installed


# ----------------------------------------------------------------------------------
# pytest hooks


def pytest_configure(config: pytest.Config) -> None:
    install()


def pytest_unconfigure(config: pytest.Config) -> None:
    uninstall()


def _fail_on_violations(phase: str) -> None:
    violations = take_violations()
    if violations:
        listed = "\n".join(f"  - {v}" for v in violations)
        pytest.fail(
            f"network guard: non-loopback network use during {phase}:\n{listed}",
            pytrace=False,
        )


@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Any:
    try:
        return (yield)
    finally:
        _fail_on_violations("setup")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Any:
    try:
        return (yield)
    finally:
        _fail_on_violations("call")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    try:
        return (yield)
    finally:
        _fail_on_violations("teardown")
