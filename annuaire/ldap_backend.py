"""The LDAP backend of the annuaire: ldap3 connections used from worker threads.

Role: ``annuaire.backend.Directory`` over one or more LDAP servers (``[annuaire] url``,
tried in order), e.g. OpenLDAP replicas of the national annuaire (ARCHITECTURE: each
node reads its nearest replica and fails over along its URL list).

Decisions:
- ldap3 (pure Python, LGPL) with the ``SAFE_RESTARTABLE`` strategy: measured on this
  machine, a ``SAFE_RESTARTABLE`` connection survives a slapd restart (it reopens,
  rebinds and resends once), a ``SAFE_SYNC`` one does not. ldap3 is synchronous (its
  ASYNC strategy is not asyncio), so every call runs in a dedicated thread pool.
  bonsai (native asyncio, faster) was the alternative; it needs a C build against
  libldap and hangs on two concurrent searches on one connection (upstream #102).
- Bounded pool: ``pool_size`` slots, each with at most one connection used by one
  thread at a time (an ``asyncio.Queue`` of slots hands them out, so at most
  ``pool_size`` LDAP operations are in flight and callers beyond wait their turn).
  A slot whose task is cancelled goes back to the queue only when its thread is done.
- Fail-over: a slot connects to the first URL that accepts a connection and a bind. When
  an operation fails (connection lost and the one transparent restart failed, or a
  server-side refusal such as ``busy``/``unavailable``), the connection is dropped and
  the operation is retried on the URLs in order; when every URL failed,
  ``DirectoryUnavailable`` lists each URL with its reason. A slot connected to a later
  URL goes back to the first one after ``failback_after`` seconds.
- Searches ask for ``*`` (every user attribute) rather than the list the mapping reads:
  measured with ldap3 2.9.1 against slapd here, naming 14 attributes made each search
  about 30 % slower (ldap3 copies and encodes each name) than ``*``, whose extra values
  (search keys) cost less to decode.
- Timeouts: ``timeout`` bounds the TCP connect (``connect_timeout``), every socket read
  (``receive_timeout``, whole seconds, at least 1) and the server's own search time
  (``time_limit``).
- ldap3's restart loop would, by default, sleep 2 s between 30 tries (a minute of
  blocking): each connection gets one immediate try instead, and none while the pool
  itself opens a connection (so a refused connection is reported at once and its
  socket is closed: ldap3 2.9.1 leaves it open, which surfaces as a ResourceWarning).
- ldaps: TLS verified against ``ca_file`` (default: the ``[trust] anchors``), host name
  checked against the URL's host, TLS 1.2 minimum (Python's default context).

Security: every filter value is escaped (RFC 4515, in ``annuaire.search``); the
password is read once from ``bind_password_file`` and never logged or put in an error;
errors name URLs and LDAP result descriptions only.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import math
import re
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import ldap3
from ldap3.core.exceptions import LDAPException, LDAPMaximumRetriesError
from ldap3.strategy.sync import SyncStrategy
from ldap3.utils.conv import escape_filter_chars

from annuaire.errors import DirectoryUnavailable, EntryError
from annuaire.mapping import entry_and_mail_values
from annuaire.model import MAX_ADDRESS_LENGTH, Entry, address_key
from annuaire.search import Candidates, PreparedQuery, entries_filter, ldap_filter, matches
from gateway.config import AnnuaireAttributes, AnnuaireSection
from gateway.log import get_logger

log = get_logger("annuaire")

T = TypeVar("T")
DEFAULT_FAILBACK_AFTER = 60.0
RESULT_SUCCESS = 0
RESULT_SIZE_LIMIT_EXCEEDED = 4
RESTART_TRIES = 1  # one immediate reopen + rebind + resend after a lost connection
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class _Refused(Exception):
    """An LDAP result that means "ask another server" (busy, unavailable, ...)."""


@dataclass
class _Slot:
    """One pooled connection (or none yet) and where it is connected."""

    connection: Any = None  # ldap3.Connection
    url_index: int = -1
    opened_at: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)


def read_password(path: Path) -> str:
    """The bind password: the file's first line, without its line ending."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DirectoryUnavailable(f"annuaire.bind_password_file {path}: {error}") from None
    password = text.splitlines()[0] if text else ""
    if not password:
        raise DirectoryUnavailable(f"annuaire.bind_password_file {path}: empty")
    return password


class _VerifiedTls(ldap3.Tls):  # type: ignore[misc]  # ldap3 has no type hints
    """TLS for ``ldaps://`` done by Python's ``ssl`` alone: a default client context
    (certificate required, TLS 1.2 minimum) trusting only ``cadata``, and the host name
    (or IP address) checked during the handshake. ldap3's own wrapping checks the name
    after the handshake and, when that check fails, drops the TLS socket unclosed."""

    def __init__(self, host: str, cadata: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED, ca_certs_data=cadata)
        self._context = ssl.create_default_context(cadata=cadata)
        self._context.minimum_version = ssl.TLSVersion.TLSv1_2
        self._host = host

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        # on a failed handshake CPython closes the new TLS socket itself
        connection.socket = self._context.wrap_socket(
            connection.socket, server_hostname=self._host, do_handshake_on_connect=do_handshake
        )


def _tls_for(host: str, ca_files: Sequence[Path]) -> Any:
    pem = "".join(path.read_text(encoding="ascii") for path in ca_files)
    if not pem:
        raise DirectoryUnavailable("annuaire: ldaps:// needs annuaire.ca_file or trust.anchors")
    return _VerifiedTls(host, pem)


def make_server(url: str, *, timeout: float, ca_files: Sequence[Path]) -> Any:
    """An ``ldap3.Server`` for an ``ldap://`` or ``ldaps://`` URL (RFC 4516 host:port)."""
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "ldaps"
    host = parts.hostname or "localhost"
    port = parts.port or (636 if secure else 389)
    try:
        tls = _tls_for(host, ca_files) if secure else None
    except (OSError, UnicodeDecodeError) as error:
        raise DirectoryUnavailable(f"annuaire: cannot read the CA file: {error}") from None
    return ldap3.Server(
        host,
        port=port,
        use_ssl=secure,
        tls=tls,
        get_info=ldap3.NONE,
        connect_timeout=timeout,
    )


class LdapDirectory:
    """``annuaire.backend.Directory`` over LDAP (see the module docstring)."""

    def __init__(
        self,
        urls: Sequence[str],
        base_dn: str,
        attributes: AnnuaireAttributes,
        *,
        bind_dn: str | None = None,
        password: str | None = None,
        ca_files: Sequence[Path] = (),
        timeout: float = 5.0,
        pool_size: int = 4,
        failback_after: float = DEFAULT_FAILBACK_AFTER,
    ) -> None:
        if not urls:
            raise DirectoryUnavailable("annuaire: no LDAP URL configured")
        if pool_size < 1:
            raise ValueError("pool_size must be at least 1")
        self.urls = tuple(urls)
        self.base_dn = base_dn
        self.attributes = attributes
        self._bind_dn = bind_dn
        self._password = password
        self._timeout = timeout
        self._receive_timeout = max(1, math.ceil(timeout))
        self._failback_after = failback_after
        self._ca_files = tuple(ca_files)
        for url in self.urls:  # fail now on an unreadable CA file, not at the first query
            make_server(url, timeout=timeout, ca_files=self._ca_files)
        self._pool_size = pool_size
        self._slots: asyncio.Queue[_Slot] | None = None
        self._all_slots = [_Slot() for _ in range(pool_size)]
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=pool_size, thread_name_prefix="annuaire-ldap"
        )
        self._closed = False

    @classmethod
    def from_config(
        cls, section: AnnuaireSection, *, anchors: Sequence[Path] = ()
    ) -> LdapDirectory:
        """Build from ``[annuaire]`` (password read now from ``bind_password_file``)."""
        password = None
        if section.bind_dn is not None and section.bind_password_file is not None:
            password = read_password(section.bind_password_file)
        ca_files = (section.ca_file,) if section.ca_file is not None else tuple(anchors)
        return cls(
            section.url,
            section.base_dn,
            section.attributes,
            bind_dn=section.bind_dn,
            password=password,
            ca_files=ca_files,
            timeout=section.timeout.total_seconds(),
            pool_size=section.pool_size,
        )

    @property
    def description(self) -> str:
        return " ".join(self.urls)

    # -- the Directory interface ---------------------------------------------------------

    async def find_by_mail(self, address: str) -> tuple[Entry, ...]:
        """Asked with the escaped address; the answer is confirmed here, because the
        server's matching normalises more than we compare (measured with slapd: an
        escaped trailing NUL or extra spaces still match)."""
        if (
            not _sendable(address)
            or len(address.encode("utf-8")) > MAX_ADDRESS_LENGTH
            or _CONTROL.search(address)
        ):
            return ()
        search_filter = (
            f"(&{entries_filter(self.attributes)}"
            f"({self.attributes.mail}={escape_filter_chars(address)}))"
        )
        wanted = address_key(address)
        entries, truncated = await self._run(lambda c: self._search(c, search_filter, 0, wanted))
        if truncated:  # a server-side size limit: the entry holding the certificate may
            # be among those left out, and "no certificate" would send the message to the
            # route's fallback; the message waits instead (never cached)
            raise DirectoryUnavailable(
                f"annuaire: the directory cut its answer for {address} short (size limit)"
            )
        return tuple(entries)

    async def search(self, query: PreparedQuery, limit: int) -> Candidates:
        search_filter = ldap_filter(query, self.attributes)
        entries, truncated = await self._run(lambda c: self._search(c, search_filter, limit))
        confirmed = tuple(entry for entry in entries if matches(entry, query))
        return Candidates(confirmed, truncated)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await asyncio.get_running_loop().run_in_executor(self._executor, self._close_all)
        self._executor.shutdown(wait=True)

    # -- pool ----------------------------------------------------------------------------

    def _queue(self) -> asyncio.Queue[_Slot]:
        if self._slots is None:
            self._slots = asyncio.Queue()
            for slot in self._all_slots:
                self._slots.put_nowait(slot)
        return self._slots

    async def _run(self, operation: Callable[[Any], T]) -> T:
        """Run ``operation(connection)`` on a pooled connection in a worker thread."""
        if self._closed:
            raise DirectoryUnavailable("annuaire: the LDAP directory was closed")
        queue = self._queue()
        slot = await queue.get()
        loop = asyncio.get_running_loop()
        try:
            future = self._executor.submit(self._with_failover, slot, operation)
        except RuntimeError:  # executor shut down meanwhile
            queue.put_nowait(slot)
            raise DirectoryUnavailable("annuaire: the LDAP directory was closed") from None
        try:
            return await asyncio.wrap_future(future)
        finally:
            if future.done():
                queue.put_nowait(slot)
            else:  # cancelled while the thread still uses the slot
                future.add_done_callback(
                    lambda _: loop.call_soon_threadsafe(queue.put_nowait, slot)
                )

    def _with_failover(self, slot: _Slot, operation: Callable[[Any], T]) -> T:
        """In a worker thread: the operation on the slot's connection, else on each URL
        in order; ``DirectoryUnavailable`` when none answers."""
        with slot.lock:
            problems: list[str] = []
            if slot.connection is not None and not self._should_fail_back(slot):
                try:
                    return operation(slot.connection)
                except (LDAPException, OSError, _Refused) as error:
                    problems.append(f"{self.urls[slot.url_index]}: {_reason(error)}")
                    self._drop(slot)
            elif slot.connection is not None:
                self._drop(slot)
            for index, url in enumerate(self.urls):
                try:
                    slot.connection = self._open(url)
                    slot.url_index, slot.opened_at = index, time.monotonic()
                    result = operation(slot.connection)
                except (LDAPException, OSError, _Refused) as error:
                    problems.append(f"{self.urls[index]}: {_reason(error)}")
                    self._drop(slot)
                    continue
                if problems:
                    log.warning(
                        "annuaire.ldap.failover", url=self.urls[index], problems=len(problems)
                    )
                return result
            log.error("annuaire.ldap.unavailable", problems="; ".join(problems))
            raise DirectoryUnavailable(["annuaire: no LDAP server answered", *problems])

    def _should_fail_back(self, slot: _Slot) -> bool:
        return slot.url_index > 0 and time.monotonic() - slot.opened_at >= self._failback_after

    def _open(self, url: str) -> Any:
        """A bound connection; no internal retries while opening (see the docstring).

        A fresh ``ldap3.Server`` each time: a Server remembers a refused address as
        unavailable for a while, which would defeat our own fail-over and fail-back."""
        connection = ldap3.Connection(
            make_server(url, timeout=self._timeout, ca_files=self._ca_files),
            user=self._bind_dn,
            password=self._password,
            client_strategy=ldap3.SAFE_RESTARTABLE,
            receive_timeout=self._receive_timeout,
            raise_exceptions=False,
            auto_bind=ldap3.AUTO_BIND_NONE,
        )
        strategy = connection.strategy
        open_errors: list[str] = []
        _guard_socket_opening(connection, open_errors)
        strategy.restartable_tries = 0
        strategy.restartable_sleep_time = 0
        try:
            connection.open(read_server_info=False)
            ok, result, _, _ = connection.bind(read_server_info=False)
        except (LDAPException, OSError) as error:
            reason = open_errors[-1] if open_errors else _reason(error)
            _close_quietly(connection)
            raise _Refused(f"cannot connect: {reason}") from None
        except BaseException:
            _close_quietly(connection)
            raise
        if not ok:
            _close_quietly(connection)
            raise _Refused(f"bind refused: {_describe(result)}")
        strategy.restartable_tries = RESTART_TRIES
        return connection

    def _drop(self, slot: _Slot) -> None:
        if slot.connection is not None:
            _close_quietly(slot.connection)
        slot.connection, slot.url_index = None, -1

    def _close_all(self) -> None:
        for slot in self._all_slots:
            with slot.lock:
                self._drop(slot)

    # -- the one LDAP operation --------------------------------------------------------

    def _search(
        self, connection: Any, search_filter: str, limit: int, mail: str | None = None
    ) -> tuple[list[Entry], bool]:
        """Subtree search under the base DN; entries rebuilt through the mapping (only
        those holding ``mail``, case-folded, among their mail values when it is given)."""
        _, result, response, _ = connection.search(
            self.base_dn,
            search_filter,
            search_scope=ldap3.SUBTREE,
            attributes=[ldap3.ALL_ATTRIBUTES],
            size_limit=limit,
            time_limit=self._receive_timeout,
        )
        # ``ok`` is False for a search that found nothing: only the result code counts
        code = result.get("result") if isinstance(result, dict) else None
        truncated = code == RESULT_SIZE_LIMIT_EXCEEDED
        if code != RESULT_SUCCESS and not truncated:
            raise _Refused(f"search failed: {_describe(result)}")
        return self._entries(response or [], mail), truncated

    def _entries(self, response: list[dict[str, Any]], mail: str | None) -> list[Entry]:
        entries: list[Entry] = []
        for item in response:
            if item.get("type") != "searchResEntry":
                continue
            try:
                entry, mails = entry_and_mail_values(
                    item["dn"], item["raw_attributes"], self.attributes
                )
            except EntryError as error:
                log.warning("annuaire.ldap.entry_skipped", dn=item.get("dn"), reason=str(error))
                continue
            if mail is None or mail in {address_key(value) for value in mails}:
                entries.append(entry)
        return entries


def _sendable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _describe(result: Any) -> str:
    if isinstance(result, dict):
        description = result.get("description") or "error"
        message = result.get("message") or ""
        return f"{description} {message}".strip()
    return "no answer"


def _reason(error: BaseException) -> str:
    """One short line: for ldap3's "maximum retries" wrapper, the last real cause."""
    if isinstance(error, LDAPMaximumRetriesError) and len(error.args) > 1 and error.args[1]:
        error = error.args[1][-1]
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0][:200]


def _guard_socket_opening(connection: Any, errors: list[str]) -> None:
    """Work around two ldap3 2.9.1 habits on this one connection's ``_open_socket``:

    - when a restart (or a refused connect) reopens a connection, ldap3 assigns a new
      socket over the old one without closing it (measured after a slapd restart: the
      old, server-closed socket is dropped unclosed, a ResourceWarning); the previous
      socket is now closed first;
    - the restartable strategy swallows the cause of a failed connect (it keeps it only
      when its own debug logging is on); the cause is now appended to ``errors``.

    The socket itself is opened by the plain synchronous strategy, as the restartable
    one does; its retry loop is not needed (our tries are 0 while opening, and a failure
    inside a restart ends that restart either way)."""
    strategy = connection.strategy

    def open_socket(address: Any, use_ssl: bool = False, unix_socket: bool = False) -> None:
        previous = getattr(connection, "socket", None)
        if previous is not None:
            try:
                previous.close()
            except OSError:
                pass
        try:
            SyncStrategy._open_socket(strategy, address, use_ssl, unix_socket)
        except Exception as error:
            errors.append(_reason(error))
            raise

    strategy._open_socket = open_socket


def _close_quietly(connection: Any) -> None:
    """Unbind, and close the socket ldap3 may have left open after a failed connect."""
    try:
        connection.strategy.restartable_tries = 0
        connection.unbind()
    except (LDAPException, OSError):
        pass
    sock = getattr(connection, "socket", None)
    if sock is not None:
        try:
            sock.close()
        except OSError:
            pass
        connection.socket = None
