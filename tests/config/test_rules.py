"""Rules across keys: every unsafe combination of the contract and the module's own."""

from __future__ import annotations

import pytest

from tests.config.support import BASE, Site, replace

ANY_IPV4 = "0.0.0.0"  # noqa: S104 - a value to check, never bound


def route(**keys: str) -> str:
    """A ``[[routes]]`` table; values are TOML literals."""
    return "\n[[routes]]\n" + "".join(f"{key} = {value}\n" for key, value in keys.items())


def assert_line(lines: list[str], expected: str) -> None:
    assert any(line.startswith(expected) for line in lines), lines


# ---------------------------------------------------------------- contract rules


@pytest.mark.parametrize("tls", ["none", "opportunistic"])
def test_tls_only_route_requires_verify(site: Site, tls: str) -> None:
    text = BASE + route(name='"mss"', domains='["mss.test"]', security='"tls-only"', tls=f'"{tls}"')
    assert f'routes[0].tls: a tls-only route requires tls = "verify", got "{tls}"' in site.problems(
        text
    )
    site.load(BASE + route(name='"mss"', domains='["mss.test"]', security='"tls-only"'))


def test_fallback_to_weaker_security_is_refused(site: Site) -> None:
    text = (
        BASE
        + route(name='"b"', domains='["b.test"]', fallback='"route:trust"')
        + route(name='"trust"', domains='["t.test"]', security='"tls-only"')
    )
    assert_line(
        site.problems(text),
        'routes[0].fallback: route "trust" is weaker than this route: security "tls-only"',
    )


def test_fallback_to_weaker_tls_is_refused(site: Site) -> None:
    text = (
        BASE
        + route(name='"b"', domains='["b.test"]', fallback='"route:plain"')
        + route(name='"plain"', domains='["p.test"]', tls='"opportunistic"')
    )
    assert_line(
        site.problems(text), 'routes[0].fallback: route "plain" is weaker than this route: tls'
    )


def test_allowed_fallbacks(site: Site) -> None:
    text = (
        BASE
        + route(name='"b"', domains='["b.test"]', fallback='"route:partner"')
        + route(name='"partner"', domains='["*.partner.test"]', fallback='"postal"')
        + route(name='"mss"', domains='["mss.test"]', security='"tls-only"', fallback='"route:b"')
        + route(name='"post"', domains='["post.test"]', transport='"postal"')
        + route(name='"c"', domains='["c.test"]', fallback='"route:post"')
    )
    config = site.load(text)
    assert config.routes[0].fallback_route == "partner"
    assert config.routes[1].fallback == "postal"


def test_fallback_target_must_exist_and_not_loop(site: Site) -> None:
    missing = BASE + route(name='"b"', domains='["b.test"]', fallback='"route:nope"')
    assert 'routes[0].fallback: no route is named "nope"' in site.problems(missing)
    itself = BASE + route(name='"b"', domains='["b.test"]', fallback='"route:b"')
    assert "routes[0].fallback: a route cannot fall back to itself" in site.problems(itself)
    loop = (
        BASE
        + route(name='"a"', domains='["a.test"]', fallback='"route:b"')
        + route(name='"b"', domains='["b.test"]', fallback='"route:a"')
    )
    lines = site.problems(loop)
    assert "routes[0].fallback: fallback loop: a -> b -> a" in lines
    assert "routes[1].fallback: fallback loop: b -> a -> b" in lines


@pytest.mark.parametrize(
    "address", [f"{ANY_IPV4}:2587", "192.0.2.1:2587", "[::]:2587", "mx.chu-a.test:2587"]
)
def test_tls_none_only_on_loopback(site: Site, address: str) -> None:
    text = replace(BASE, 'address = "127.0.0.1:2587"', f'address = "{address}"\ntls = "none"')
    host = address.rpartition(":")[0].strip("[]")
    assert f'listeners[0].tls: "none" is allowed only on a loopback address, not {host}' in (
        site.problems(text)
    )


@pytest.mark.parametrize(
    "address", ["127.0.0.1:2587", "[::1]:2587", "localhost:2587", "127.0.0.9:2587"]
)
def test_tls_none_on_loopback_is_fine(site: Site, address: str) -> None:
    text = replace(BASE, 'address = "127.0.0.1:2587"', f'address = "{address}"\ntls = "none"')
    assert site.load(text).listeners[0].tls == "none"


def test_ip_next_hop_with_verify_needs_tls_name(site: Site) -> None:
    text = BASE + route(name='"b"', domains='["b.test"]', next_hop='"127.0.0.1:2526"')
    assert_line(
        site.problems(text),
        'routes[0].tls_name: required: next_hop 127.0.0.1:2526 is an IP address and tls = "verify"',
    )
    # a host name is its own TLS name; an IP without verify needs none
    site.load(BASE + route(name='"b"', domains='["b.test"]', next_hop='"mx.b.test"'))
    site.load(
        BASE + route(name='"b"', domains='["b.test"]', next_hop='"[::1]:26"', tls='"opportunistic"')
    )


# ---------------------------------------------------------------- listeners


def test_listener_names_and_addresses_unique(site: Site) -> None:
    text = replace(BASE, 'name = "mx"', 'name = "submission"')
    text = replace(text, 'address = "127.0.0.1:2525"', 'address = "127.0.0.1:2587"')
    lines = site.problems(text)
    assert 'listeners[1].name: "submission" is already the name of listeners[0]' in lines
    assert_line(
        lines, "listeners[1].address: 127.0.0.1:2587 is already bound by listeners[0].address"
    )


@pytest.mark.parametrize(
    ("first", "second", "clash"),
    [
        (f"{ANY_IPV4}:25", "127.0.0.1:25", True),
        ("[::]:25", "127.0.0.1:25", True),
        ("[::1]:25", "127.0.0.1:25", False),
        ("127.0.0.1:25", "127.0.0.2:25", False),
        ("127.0.0.1:0", "127.0.0.1:0", False),
    ],
)
def test_wildcard_addresses_overlap(site: Site, first: str, second: str, clash: bool) -> None:
    text = replace(BASE, 'address = "127.0.0.1:2587"', f'address = "{first}"')
    text = replace(text, 'address = "127.0.0.1:2525"', f'address = "{second}"')
    if clash:
        assert_line(site.problems(text), "listeners[1].address: ")
    else:
        site.load(text)


def test_metrics_cannot_take_a_listener_port(site: Site) -> None:
    text = BASE + '\n[metrics]\naddress = "127.0.0.1:2525"\n'
    assert_line(
        site.problems(text), "metrics.address: 127.0.0.1:2525 is already bound by listeners[1]"
    )


def test_submission_listener_restrictions(site: Site) -> None:
    text = replace(
        BASE,
        'kind = "submission"',
        'kind = "submission"\nclient_certificate = "required"\nrelay_clients = ["10.0.0.0/8"]',
    )
    lines = site.problems(text)
    assert_line(
        lines, "listeners[0].client_certificate: only relay listeners check client certificates"
    )
    assert_line(lines, "listeners[0].relay_clients: only relay listeners have relay clients")


def test_relay_listener_rules(site: Site) -> None:
    text = replace(BASE, 'client_certificate = "optional"', 'client_certificate = "none"')
    text = replace(
        text,
        'relay_clients = ["127.0.0.1/32"]',
        'relay_clients = ["dn:CN=smtp.chu-a.test"]\nmax_recipients = 50',
    )
    lines = site.problems(text)
    assert_line(lines, 'listeners[1].relay_clients: a "dn:" entry needs client_certificate')
    assert_line(lines, "listeners[1].max_recipients: a relay listener must accept at least 100")
    text = replace(BASE, 'kind = "relay"', 'kind = "relay"\ntls = "none"')
    assert 'listeners[1].client_certificate: needs TLS (tls is "none")' in site.problems(text)
    text = replace(
        BASE, 'kind = "relay"', 'kind = "relay"\nmax_connections = 5\nmax_connections_per_ip = 6'
    )
    assert "listeners[1].max_connections_per_ip: is larger than max_connections" in site.problems(
        text
    )


# ---------------------------------------------------------------- TLS material


def test_default_certificate_required_when_used(site: Site) -> None:
    without = BASE.replace('certificate = "var/pki/mx.chu-a.test.crt"\n', "").replace(
        'private_key = "var/pki/mx.chu-a.test.key"\n', ""
    )
    assert_line(
        site.problems(without),
        'tls.certificate: required: listener "submission" uses TLS without a certificate',
    )
    loopback_plain = replace(without, 'kind = "submission"', 'kind = "submission"\ntls = "none"')
    loopback_plain = replace(loopback_plain, 'kind = "relay"', 'kind = "relay"\ntls = "none"')
    loopback_plain = replace(loopback_plain, 'client_certificate = "optional"', "")
    site.load(loopback_plain)  # nothing uses TLS: no certificate needed
    routed = loopback_plain + route(name='"b"', domains='["b.test"]', next_hop='"mx.b.test"')
    assert_line(site.problems(routed), 'tls.certificate: required: route "b" uses TLS')


def test_certificate_and_key_go_together(site: Site) -> None:
    text = replace(BASE, 'private_key = "var/pki/mx.chu-a.test.key"\n', "")
    assert "tls.private_key: required when tls.certificate is set" in site.problems(text)
    text = replace(
        BASE,
        'kind = "submission"',
        'kind = "submission"\nprivate_key = "var/pki/mx.chu-a.test.key"',
    )
    assert "listeners[0].certificate: required when listeners[0].private_key is set" in (
        site.problems(text)
    )


# ---------------------------------------------------------------- routes


def test_route_names_unique_and_shadowing(site: Site) -> None:
    text = (
        BASE
        + route(name='"a"', domains='["*.x.test", "b.test"]', transport='"reject"')
        + route(name='"a"', domains='["y.x.test", "x.test"]', transport='"reject"')
        + route(name='"all"', domains='["*"]', transport='"reject"')
        + route(name='"late"', domains='["z.test"]', transport='"reject"')
    )
    lines = site.problems(text)
    assert 'routes[1].name: "a" is already the name of routes[0]' in lines
    assert_line(
        lines, 'routes[1].domains[0]: "y.x.test" is never used: routes[0] "a" matches it first'
    )
    assert not any(
        line.startswith("routes[1].domains[1]") for line in lines
    )  # x.test is not *.x.test
    assert_line(lines, 'routes[3].domains[0]: "z.test" is never used: routes[2] "all"')


def test_route_transport_rules(site: Site) -> None:
    text = (
        BASE
        + route(name='"a"', domains='["a.test"]', transport='"postal"', next_hop='"mx.a.test"')
        + route(name='"b"', domains='["b.test"]', tls_name='"mx.b.test"')
        + route(name='"c"', domains='["c.test"]', transport='"reject"', security='"tls-only"')
    )
    lines = site.problems(text)
    assert 'routes[0].next_hop: only used with transport = "smtp"' in lines
    assert "routes[1].tls_name: only used with a static next_hop" in lines
    assert 'routes[2].security: tls-only needs transport = "smtp"' in lines


def test_route_auth_rules(site: Site) -> None:
    site.write_private("conf/relay.secret", b"s3cret\n")
    good = route(
        name='"a"', domains='["a.test"]', next_hop='"mx.a.test"', auth_user='"passerelle"',
        auth_password_file='"conf/relay.secret"',
    )  # fmt: skip
    assert site.load(BASE + good).routes[0].auth_user == "passerelle"
    lines = site.problems(BASE + good.replace('next_hop = "mx.a.test"', 'tls = "opportunistic"'))
    assert_line(lines, 'routes[0].auth_user: SMTP AUTH needs tls = "verify" (got "opportunistic")')
    lines = site.problems(BASE + good.replace('auth_password_file = "conf/relay.secret"\n', ""))
    assert "routes[0].auth_password_file: required when routes[0].auth_user is set" in lines
    lines = site.problems(BASE + good.replace('auth_user = "passerelle"\n', ""))
    assert "routes[0].auth_user: required when routes[0].auth_password_file is set" in lines


# ---------------------------------------------------------------- other sections


def test_annuaire_rules(site: Site) -> None:
    site.write_private("conf/ldap.secret", b"pw\n")
    text = BASE + '\n[annuaire]\nbackend = "ldap"\nurl = []\n'
    assert 'annuaire.url: at least one URL is required for backend = "ldap"' in site.problems(text)
    text = BASE + '\n[annuaire]\nbind_dn = "cn=gw,dc=annuaire,dc=test"\n'
    assert "annuaire.bind_password_file: required when annuaire.bind_dn is set" in site.problems(
        text
    )
    text = BASE + '\n[annuaire]\nbind_password_file = "conf/ldap.secret"\n'
    assert "annuaire.bind_dn: required when annuaire.bind_password_file is set" in site.problems(
        text
    )
    remote = (
        BASE
        + '\n[annuaire]\nbackend = "ldap"\nurl = ["ldap://127.0.0.1:3389", "ldap://ldap.x.test"]\n'
        + 'bind_dn = "cn=gw,dc=annuaire,dc=test"\nbind_password_file = "conf/ldap.secret"\n'
    )
    lines = site.problems(remote)
    assert_line(lines, "annuaire.url[1]: binding with a password over ldap:// to a remote host")
    assert not any(line.startswith("annuaire.url[0]") for line in lines)
    config = site.load(remote.replace("ldap://ldap.x.test", "ldaps://ldap.x.test"))
    assert config.annuaire.bind_dn == "cn=gw,dc=annuaire,dc=test"


def test_delivery_rules(site: Site) -> None:
    text = BASE + '\n[delivery]\nmax_lifetime = "4h"\ndelay_warning = "4h"\n'
    assert "delivery.delay_warning: must be shorter than delivery.max_lifetime" in site.problems(
        text
    )
    text = BASE + "\n[delivery]\nretry_schedule = []\nmax_message_size = 0\n"
    lines = site.problems(text)
    assert "delivery.retry_schedule: must not be empty" in lines
    assert "delivery.max_message_size: must be larger than 0 bytes" in lines


def test_inbound_rules(site: Site) -> None:
    text = BASE + '\n[inbound]\ndeliver_to = "smtp://127.0.0.1:2525"\n'
    assert_line(
        site.problems(text), "inbound.deliver_to: smtp://127.0.0.1:2525 is the gateway's own"
    )
    site.write_private("conf/imap.secret", b"pw\n")
    fetch = (
        '\n[[inbound.imap_fetch]]\nurl = "imaps://imap.partner.test/INBOX"\nuser = "alice"\n'
        'password_file = "conf/imap.secret"\ndeliver_to_address = "alice@partner.test"\n'
    )
    assert (
        'inbound.imap_fetch[0].deliver_to_address: "partner.test" is not one of'
        in (site.problems(BASE + fetch)[0])
    )
    config = site.load(BASE + fetch.replace("alice@partner.test", "alice@chu-a.test"))
    assert config.inbound.imap_fetch[0].password_file == site.path("conf/imap.secret")
