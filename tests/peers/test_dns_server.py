"""The loopback DNS server, queried with dnspython's async resolver (what the gateway uses)."""

from __future__ import annotations

import hashlib
import socket

import dns.flags
import dns.message
import dns.rcode
import dns.resolver
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gateway.pki.dev import DevPki
from tests.peers.dns_server import DnsServer, Record, cert_record_value

# RFC 4398 §3 / Direct: the mailbox's local part becomes one label (its dot escaped).
ALICE_CERT_NAME = "alice\\.martin.chu-a.test"


def enc_certificate(pki: DevPki, address: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pki.user_cert(address, "enc").read_bytes())


async def test_mx_in_preference_order(dns_server: DnsServer) -> None:
    dns_server.add_mx("clinique-b.test", 20, "mx2.clinique-b.test")
    dns_server.add_mx("clinique-b.test", 10, "mx1.clinique-b.test")
    dns_server.add_mx("clinique-b.test", 30, "backup.example.test")

    answer = await dns_server.resolver().resolve("clinique-b.test", "MX")

    by_preference = sorted(answer, key=lambda rr: rr.preference)
    assert [(rr.preference, rr.exchange.to_text()) for rr in by_preference] == [
        (10, "mx1.clinique-b.test."),
        (20, "mx2.clinique-b.test."),
        (30, "backup.example.test."),
    ]
    assert answer.response.flags & dns.flags.AA


async def test_large_cert_answer_is_truncated_then_fetched_over_tcp(
    dns_server: DnsServer, dev_pki: DevPki
) -> None:
    certificate = enc_certificate(dev_pki, "alice.martin@chu-a.test")
    der = certificate.public_bytes(Encoding.DER)
    dns_server.add_cert(ALICE_CERT_NAME, der)

    answer = await dns_server.resolver().resolve(ALICE_CERT_NAME, "CERT")

    (record,) = list(answer)
    assert record.certificate_type == 1  # PKIX (RFC 4398 §2.1)
    assert record.certificate == der
    assert x509.load_der_x509_certificate(record.certificate) == certificate
    transports = [(q.transport, q.truncated) for q in dns_server.queries]
    assert transports == [("udp", True), ("tcp", False)]


async def test_edns_clients_get_the_configured_udp_limit(dev_pki: DevPki) -> None:
    der = enc_certificate(dev_pki, "claire.durand@clinique-b.test").public_bytes(Encoding.DER)
    records = [Record("claire\\.durand.clinique-b.test", "CERT", cert_record_value(der))]
    with DnsServer(records, max_udp_payload=4096) as server:
        resolver = server.resolver()
        resolver.use_edns(0, 0, 4096)
        answer = await resolver.resolve("claire\\.durand.clinique-b.test", "CERT")
        assert next(iter(answer)).certificate == der
        assert [q.transport for q in server.queries] == ["udp"]


async def test_nxdomain_and_nodata(dns_server: DnsServer) -> None:
    dns_server.add_a("mx.chu-a.test", "127.0.0.1")
    resolver = dns_server.resolver()
    with pytest.raises(dns.resolver.NXDOMAIN):
        await resolver.resolve("nobody.chu-a.test", "MX")
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("mx.chu-a.test", "MX")
    # an empty non-terminal above a name in the zone exists (NODATA, not NXDOMAIN)
    dns_server.add_tlsa("_25._tcp.mx.chu-a.test", 3, 1, 1, bytes(32))
    with pytest.raises(dns.resolver.NoAnswer):
        await resolver.resolve("_tcp.mx.chu-a.test", "A")
    assert [q.rcode for q in dns_server.queries] == ["NXDOMAIN", "NOERROR", "NOERROR"]


async def test_a_aaaa_txt_tlsa_round_trip(dns_server: DnsServer, dev_pki: DevPki) -> None:
    server_cert = x509.load_pem_x509_certificates(
        dev_pki.server_cert("mx.clinique-b.test").read_bytes()
    )[0]
    spki = server_cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(spki).digest()
    dns_server.add_a("mx.clinique-b.test", "127.0.0.1")
    dns_server.add_aaaa("mx.clinique-b.test", "::1")
    dns_server.add_txt("_mta-sts.clinique-b.test", "v=STSv1; id=20261128;")
    dns_server.add_tlsa("_25._tcp.mx.clinique-b.test", 3, 1, 1, digest)
    resolver = dns_server.resolver()

    a = await resolver.resolve("mx.clinique-b.test", "A")
    aaaa = await resolver.resolve("mx.clinique-b.test", "AAAA")
    txt = await resolver.resolve("_mta-sts.clinique-b.test", "TXT")
    tlsa = await resolver.resolve("_25._tcp.mx.clinique-b.test", "TLSA")

    assert [r.address for r in a] == ["127.0.0.1"]
    assert [r.address for r in aaaa] == ["::1"]
    assert [b"".join(r.strings) for r in txt] == [b"v=STSv1; id=20261128;"]
    (record,) = list(tlsa)
    assert (record.usage, record.selector, record.mtype, record.cert) == (3, 1, 1, digest)
    assert dns_server.errors == []


def test_garbage_gets_formerr_and_removed_records_are_gone(dns_server: DnsServer) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(b"\x12\x34garbage", (dns_server.host, dns_server.port))
        reply = sock.recv(512)
    assert reply[:2] == b"\x12\x34"
    assert reply[3] & 0x0F == dns.rcode.FORMERR

    dns_server.add_a("gone.chu-a.test", "127.0.0.1")
    dns_server.remove("gone.chu-a.test")
    query = dns.message.make_query("gone.chu-a.test", "A")
    answer = dns.message.from_wire(dns_server.answer(query.to_wire(), "udp") or b"")
    assert answer.rcode() == dns.rcode.NXDOMAIN
