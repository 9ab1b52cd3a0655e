"""A small authoritative DNS server on loopback (UDP and TCP) for MX, CERT and TLSA tests.

Role: answers the gateway's dnspython queries from a zone the test writes: A, AAAA, MX
(RFC 5321 §5.1), CERT (RFC 4398, type PKIX carrying a DER certificate, as Direct
certificate discovery publishes them), TLSA (RFC 6698/7672), TXT, or any other type
given in presentation format. It listens on 127.0.0.1 on one port for both UDP and TCP
(the kernel picks the TCP port; UDP binds the same number, retried if that is taken).

Behaviour (RFC 1035 and RFC 7766, what a resolver relies on):
- every answer has AA set; a name absent from the zone (and not an empty non-terminal
  above a name in it) is NXDOMAIN; a present name without the asked type is NOERROR with
  an empty answer (NODATA); opcodes other than QUERY get NOTIMP; an unparsable query
  gets FORMERR when its id can be read, else it is dropped;
- over UDP an answer larger than the limit is truncated and has the TC bit set, so the
  client retries over TCP (RFC 1035 §4.2.1, RFC 7766 §5). The limit is the client's
  EDNS payload (RFC 6891) capped by ``max_udp_payload``, which defaults to 512: CERT
  answers (a certificate is ~1 KB) then always take the TCP path the annuaire needs,
  whatever EDNS size the client offers;
- over TCP each message carries its two-byte length (RFC 1035 §4.2.2); several queries
  may share one connection.

Every query is logged (transport, name, type, truncated) so a test can check that the
TCP fallback really happened. dnspython builds and parses all wire data; only the
record store and the dispatch are written here (no library offers an embeddable
authoritative server). Test double only: it never recurses and serves loopback only.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import errno
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, cast

import dns.asyncresolver
import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset

from tests.peers.loop_thread import LoopThread

LOOPBACK = "127.0.0.1"
DEFAULT_TTL = 300
CLASSIC_UDP_LIMIT = 512
_BIND_ATTEMPTS = 20


@dataclass(frozen=True)
class Record:
    """One resource record in presentation format, e.g. ``Record("chu-a.test", "MX",
    "10 mx.chu-a.test.")``. Relative names in ``value`` are taken as absolute."""

    name: str
    rdtype: str
    value: str
    ttl: int = DEFAULT_TTL


@dataclass(frozen=True)
class QueryLog:
    """One query the server answered."""

    transport: str  # "udp" or "tcp"
    name: str
    rdtype: str
    rcode: str
    truncated: bool


def cert_record_value(
    der: bytes, *, cert_type: str = "PKIX", key_tag: int = 0, algorithm: int = 0
) -> str:
    """Presentation form of a CERT RR (RFC 4398 §2, §6): ``PKIX 0 0 <base64 DER>``."""
    return f"{cert_type} {key_tag} {algorithm} {base64.b64encode(der).decode('ascii')}"


def tlsa_record_value(usage: int, selector: int, matching_type: int, data: bytes) -> str:
    """Presentation form of a TLSA RR (RFC 6698 §2.2): ``3 1 1 <hex>``."""
    return f"{usage} {selector} {matching_type} {data.hex()}"


class Zone:
    """Thread-safe record store: owner name -> type -> RRset."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rrsets: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], dns.rrset.RRset] = {}

    def add(self, record: Record) -> None:
        owner = dns.name.from_text(record.name)
        rdtype = dns.rdatatype.from_text(record.rdtype)
        rdata = dns.rdata.from_text(
            dns.rdataclass.IN, rdtype, record.value, origin=dns.name.root, relativize=False
        )
        with self._lock:
            rrset = self._rrsets.get((owner, rdtype))
            if rrset is None:
                rrset = dns.rrset.RRset(owner, dns.rdataclass.IN, rdtype)
                self._rrsets[(owner, rdtype)] = rrset
            rrset.add(rdata, record.ttl)

    def remove(self, name: str, rdtype: str | None = None) -> None:
        owner = dns.name.from_text(name)
        wanted = None if rdtype is None else dns.rdatatype.from_text(rdtype)
        with self._lock:
            for key in [k for k in self._rrsets if k[0] == owner]:
                if wanted is None or key[1] == wanted:
                    del self._rrsets[key]

    def lookup(
        self, name: dns.name.Name, rdtype: dns.rdatatype.RdataType
    ) -> tuple[bool, list[dns.rrset.RRset]]:
        """(name exists, matching RRsets); ANY returns every RRset of the name."""
        with self._lock:
            exists = any(owner.is_subdomain(name) for owner, _ in self._rrsets)
            if rdtype == dns.rdatatype.ANY:
                found = [r for (owner, _), r in self._rrsets.items() if owner == name]
            else:
                found = [r for key, r in self._rrsets.items() if key == (name, rdtype)]
            return exists, [copy.copy(rrset) for rrset in found]


def _refusal(wire: bytes, rcode: dns.rcode.Rcode) -> bytes | None:
    """A bare header-only answer with ``rcode`` for a query we could not parse."""
    if len(wire) < 2:
        return None
    flags = int(dns.flags.QR) | (int(rcode) & 0xF)
    return wire[:2] + flags.to_bytes(2, "big") + bytes(8)


class DnsServer:
    """Authoritative DNS for the records it is given; ``start``/``stop`` or ``with``."""

    def __init__(
        self, records: Iterable[Record] = (), *, max_udp_payload: int = CLASSIC_UDP_LIMIT
    ) -> None:
        self.host = LOOPBACK
        self.port = 0
        self.max_udp_payload = max(CLASSIC_UDP_LIMIT, max_udp_payload)
        self.zone = Zone()
        for record in records:
            self.zone.add(record)
        self._loop_thread = LoopThread("dns-server")
        self._tcp_server: asyncio.Server | None = None
        self._udp_transport: asyncio.DatagramTransport | None = None
        self._log_lock = threading.Lock()
        self._queries: list[QueryLog] = []
        self._errors: list[str] = []

    # -- zone helpers ------------------------------------------------------------------

    def add(self, name: str, rdtype: str, value: str, ttl: int = DEFAULT_TTL) -> None:
        """Add one record given in presentation format."""
        self.zone.add(Record(name, rdtype, value, ttl))

    def add_a(self, name: str, address: str) -> None:
        self.add(name, "A", address)

    def add_aaaa(self, name: str, address: str) -> None:
        self.add(name, "AAAA", address)

    def add_mx(self, name: str, preference: int, exchange: str) -> None:
        self.add(name, "MX", f"{preference} {exchange.rstrip('.')}.")

    def add_txt(self, name: str, *strings: str) -> None:
        quoted = " ".join('"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"' for s in strings)
        self.add(name, "TXT", quoted)

    def add_cert(
        self,
        name: str,
        der: bytes,
        *,
        cert_type: str = "PKIX",
        key_tag: int = 0,
        algorithm: int = 0,
    ) -> None:
        self.add(
            name,
            "CERT",
            cert_record_value(der, cert_type=cert_type, key_tag=key_tag, algorithm=algorithm),
        )

    def add_tlsa(
        self, name: str, usage: int, selector: int, matching_type: int, data: bytes
    ) -> None:
        self.add(name, "TLSA", tlsa_record_value(usage, selector, matching_type, data))

    def remove(self, name: str, rdtype: str | None = None) -> None:
        """Remove the records of ``name`` (of one type, or all)."""
        self.zone.remove(name, rdtype)

    @property
    def queries(self) -> list[QueryLog]:
        """Every query answered so far, in order (a copy)."""
        with self._log_lock:
            return list(self._queries)

    def resolver(self) -> dns.asyncresolver.Resolver:
        """A dnspython async resolver that asks only this server (no /etc/resolv.conf)."""
        resolver = dns.asyncresolver.Resolver(configure=False)
        resolver.nameservers = [self.host]
        resolver.port = self.port
        return resolver

    # -- answering (pure apart from the log) ------------------------------------------------

    @property
    def errors(self) -> list[str]:
        """Internal errors met while answering (each answered SERVFAIL); empty normally."""
        with self._log_lock:
            return list(self._errors)

    def answer(self, wire: bytes, transport: str) -> bytes | None:
        """The response to one query in wire format, or None to drop it.

        A bug here must not look like a slow server to the client: it answers SERVFAIL
        at once and the error is kept in ``errors`` for the test to see.
        """
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            return _refusal(wire, dns.rcode.FORMERR)
        try:
            return self._respond(query, transport)
        except (dns.exception.DNSException, ValueError, TypeError) as error:
            with self._log_lock:
                self._errors.append(f"{type(error).__name__}: {error}")
            return _refusal(wire, dns.rcode.SERVFAIL)

    def _respond(self, query: dns.message.Message, transport: str) -> bytes:
        response = dns.message.make_response(query, our_payload=self.max_udp_payload)
        response.flags |= dns.flags.AA
        if query.opcode() != dns.opcode.QUERY or len(query.question) != 1:
            response.set_rcode(
                dns.rcode.NOTIMP if query.opcode() != dns.opcode.QUERY else dns.rcode.FORMERR
            )
            return response.to_wire()
        question = query.question[0]
        exists, rrsets = self.zone.lookup(question.name, question.rdtype)
        if not exists:
            response.set_rcode(dns.rcode.NXDOMAIN)
        response.answer.extend(rrsets)
        if transport == "udp":
            limit = min(max(query.payload, CLASSIC_UDP_LIMIT), self.max_udp_payload)
            reply = response.to_wire(max_size=limit, prefer_truncation=True)
        else:
            reply = response.to_wire()
        self._log(transport, question, response.rcode(), reply)
        return reply

    def _log(
        self, transport: str, question: dns.rrset.RRset, rcode: dns.rcode.Rcode, reply: bytes
    ) -> None:
        truncated = bool(int.from_bytes(reply[2:4], "big") & dns.flags.TC)
        entry = QueryLog(
            transport=transport,
            name=question.name.to_text(),
            rdtype=dns.rdatatype.to_text(question.rdtype),
            rcode=dns.rcode.to_text(rcode),
            truncated=truncated,
        )
        with self._log_lock:
            self._queries.append(entry)

    # -- transports ---------------------------------------------------------------------

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                length = int.from_bytes(await reader.readexactly(2), "big")
                reply = self.answer(await reader.readexactly(length), "tcp")
                if reply is None:
                    return
                writer.write(len(reply).to_bytes(2, "big") + reply)
                await writer.drain()
        except (asyncio.IncompleteReadError, OSError):
            return  # client closed the connection: normal end of a TCP session
        except asyncio.CancelledError:
            writer.transport.abort()  # stop(); ends normally (see SmtpSink._on_connection)
            return
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _bind(self) -> None:
        loop = asyncio.get_running_loop()
        for _ in range(_BIND_ATTEMPTS):
            server = await asyncio.start_server(self._serve_tcp, self.host, 0)
            port = int(server.sockets[0].getsockname()[1])
            try:
                transport, _ = await loop.create_datagram_endpoint(
                    lambda: _UdpProtocol(self), local_addr=(self.host, port)
                )
            except OSError as error:
                server.close()
                await server.wait_closed()
                if error.errno != errno.EADDRINUSE:
                    raise
                continue
            self._tcp_server, self._udp_transport, self.port = server, transport, port
            return
        raise OSError(errno.EADDRINUSE, "no port free for both UDP and TCP on loopback")

    async def _close(self) -> None:
        if self._udp_transport is not None:
            self._udp_transport.close()
        if self._tcp_server is not None:
            self._tcp_server.close()
            await self._tcp_server.wait_closed()

    def start(self) -> DnsServer:
        """Bind UDP and TCP on one loopback port and serve in a background thread."""
        self._loop_thread.start()
        try:
            self._loop_thread.call(self._bind())
        except BaseException:
            self._loop_thread.stop()
            raise
        return self

    def stop(self) -> None:
        """Close both sockets and every TCP session; idempotent."""
        try:
            if self._tcp_server is not None or self._udp_transport is not None:
                self._loop_thread.call(self._close())
        finally:
            self._tcp_server = self._udp_transport = None
            self._loop_thread.stop()

    def __enter__(self) -> DnsServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        reply = self.server.answer(data, "udp")
        if reply is not None and self.transport is not None:
            self.transport.sendto(reply, addr)
