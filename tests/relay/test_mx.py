"""MX resolution against the loopback DNS server: preference order, equal-preference
shuffle, implicit MX, null MX (RFC 7505), NXDOMAIN, static next hops."""

from __future__ import annotations

import random

import pytest

from gateway.config.hosts import HostPort
from gateway.relay.mx import MailHost, MxResolver, RoutingError, make_resolver, order_mx
from tests.peers.dns_server import DnsServer
from tests.relay.client_helpers import make_route


def _resolver(dns_server: DnsServer, rng: random.Random | None = None) -> MxResolver:
    nameservers = [HostPort(dns_server.host, dns_server.port)]
    return MxResolver(make_resolver(nameservers), mx_port=2525, rng=rng)


async def test_mx_hosts_in_preference_order(dns_server: DnsServer) -> None:
    dns_server.add_mx("clinique-b.test", 20, "backup.clinique-b.test")
    dns_server.add_mx("clinique-b.test", 10, "mx.clinique-b.test")
    dns_server.add_a("mx.clinique-b.test", "127.0.0.1")
    dns_server.add_a("backup.clinique-b.test", "127.0.0.2")
    hosts = await _resolver(dns_server).mx_hosts("clinique-b.test")
    assert hosts == [
        MailHost("mx.clinique-b.test", 2525, ("127.0.0.1",), 10),
        MailHost("backup.clinique-b.test", 2525, ("127.0.0.2",), 20),
    ]


async def test_mx_host_without_address_is_skipped(dns_server: DnsServer) -> None:
    dns_server.add_mx("clinique-b.test", 10, "gone.clinique-b.test")
    dns_server.add_mx("clinique-b.test", 20, "mx.clinique-b.test")
    dns_server.add_a("mx.clinique-b.test", "127.0.0.1")
    hosts = await _resolver(dns_server).mx_hosts("clinique-b.test")
    assert [host.name for host in hosts] == ["mx.clinique-b.test"]


def test_equal_preferences_are_shuffled_but_groups_keep_order() -> None:
    records = [(10, "a"), (10, "b"), (10, "c"), (5, "first"), (20, "last")]
    seen = set()
    for seed in range(30):
        ordered = order_mx(records, random.Random(seed))
        assert ordered[0] == (5, "first") and ordered[-1] == (20, "last")
        seen.add(tuple(name for _, name in ordered[1:4]))
    assert len(seen) > 1  # the middle group really is shuffled


async def test_implicit_mx_when_domain_has_no_mx(dns_server: DnsServer) -> None:
    dns_server.add_a("clinique-b.test", "127.0.0.1")
    hosts = await _resolver(dns_server).mx_hosts("clinique-b.test")
    assert hosts == [MailHost("clinique-b.test", 2525, ("127.0.0.1",))]


async def test_null_mx_is_permanent(dns_server: DnsServer) -> None:
    dns_server.add_mx("nomail.test", 0, ".")
    with pytest.raises(RoutingError) as caught:
        await _resolver(dns_server).mx_hosts("nomail.test")
    assert caught.value.permanent and caught.value.enhanced == "5.1.10"


async def test_nxdomain_is_permanent(dns_server: DnsServer) -> None:
    with pytest.raises(RoutingError) as caught:
        await _resolver(dns_server).mx_hosts("absent.test")
    assert caught.value.permanent and caught.value.enhanced == "5.1.2"


async def test_existing_domain_without_any_address_is_permanent(dns_server: DnsServer) -> None:
    dns_server.add_txt("noaddr.test", "v=spf1 -all")
    with pytest.raises(RoutingError) as caught:
        await _resolver(dns_server).mx_hosts("noaddr.test")
    assert caught.value.permanent


async def test_unreachable_nameserver_is_temporary() -> None:
    resolver = make_resolver([HostPort("127.0.0.1", 9)])  # discard port: nothing answers
    resolver.lifetime = 0.5
    with pytest.raises(RoutingError) as caught:
        await MxResolver(resolver).mx_hosts("clinique-b.test")
    assert not caught.value.permanent and caught.value.enhanced.startswith("4.")


async def test_static_next_hop_skips_mx(dns_server: DnsServer) -> None:
    dns_server.add_mx("clinique-b.test", 10, "mx.clinique-b.test")
    resolver = _resolver(dns_server)
    by_ip = make_route(next_hop=HostPort("127.0.0.1", 2600))
    assert await resolver.hosts_for(by_ip, "clinique-b.test") == [
        MailHost("127.0.0.1", 2600, ("127.0.0.1",))
    ]
    dns_server.add_a("relay.partner.test", "127.0.0.3")
    by_name = make_route(next_hop=HostPort("relay.partner.test", 2601))
    assert await resolver.hosts_for(by_name, "clinique-b.test") == [
        MailHost("relay.partner.test", 2601, ("127.0.0.3",))
    ]
    assert all(query.name != "clinique-b.test." for query in dns_server.queries)
