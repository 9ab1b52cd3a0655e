"""Cross-key rules and unsafe combinations of the configuration (pure, no I/O).

Role: after every key was read on its own (``schema.build``), these rules look at keys
together. Each rule reports on the key a sysadmin has to change, and skips keys that
already had a problem (``Problems.is_bad``) so one mistake gives one line.

Unsafe combinations that are errors (contract, then this module's additions):

- a ``tls-only`` route with ``tls`` other than ``verify`` (its peer is trusted for
  its TLS identity alone, so that identity must be verified);
- a ``fallback`` to a route of weaker security: ``route:X`` must exist, must not be
  the route itself or lead back to it, and X must not have a weaker ``security``
  (``smime`` > ``tls-only``) nor, both being SMTP routes, a weaker ``tls``
  (``verify`` > ``opportunistic`` > ``none``); ``postal`` and ``bounce`` are always
  allowed (postal is the documented fallback of S/MIME routes); the same holds along
  the whole chain: a route further on must not be weaker than the first one either
  (``verify`` -> a ``postal`` transport -> ``tls = "none"`` ends weaker);
- ``tls = "none"`` on a listener that is not on loopback (127.0.0.0/8, ::1, localhost);
- a static ``next_hop`` given as an IP with ``tls = "verify"`` and no ``tls_name``
  (an IP address says nothing about which certificate to expect);
- added: SMTP AUTH toward a smarthost (``auth_user``) without ``tls = "verify"``
  (a password must not be exposed to a STARTTLS downgrade); an LDAP bind with a
  password over ``ldap://`` to a host that is not loopback; ``inbound.deliver_to``
  pointing at one of the gateway's own listeners (a mail loop); client certificates
  or relay clients on a ``submission`` listener (AUTH decides there); a ``dn:`` relay
  client on a listener that asks no client certificate (it could never match).

Other rules: names of listeners and routes are unique; two listeners (or the metrics
endpoint) cannot bind the same address and port (an address is compared as an
address, so ``::1`` = ``0:0::1``; ``localhost`` is 127.0.0.1 and ::1; ``0.0.0.0``/``::``
overlap every address of their family; port 0, "any free port", never conflicts); a certificate
goes with its key; ``tls.certificate`` is required when a listener uses TLS without
its own certificate or an SMTP route uses TLS (the relay's client certificate); a
relay listener accepts at least 100 recipients (RFC 5321 §4.5.3.1.8); a route pattern
that an earlier route already matches is dead ("first match wins") and is an error;
with ``gateway.front_workers`` N > 1 (processes sharing each listener's socket with
``SO_REUSEPORT``, ``gateway.smtp.listener``) no listener may use port 0 (each process
would get a port of its own) and each listener's ``max_connections`` and
``max_connections_per_ip`` are at least N (each process enforces its share of them and
needs at least one);
``delivery.delay_warning`` is shorter than ``max_lifetime``; an IMAP fetch delivers to
a local address.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from itertools import combinations
from pathlib import Path
from urllib.parse import urlsplit

from cryptography import x509

from gateway.config.domains import pattern_covers
from gateway.config.hosts import HostPort, is_loopback_host
from gateway.config.model import Config, Listener, Route
from gateway.config.problems import Problems

_TLS_RANK = {"none": 0, "opportunistic": 1, "verify": 2}
_SECURITY_RANK = {"tls-only": 0, "smime": 1}


def check_rules(config: Config, problems: Problems) -> None:
    """Report every cross-key rule that ``config`` breaks."""
    _check_certificate_pairs(config, problems)
    _check_default_certificate(config, problems)
    _check_listeners(config, problems)
    _check_front_workers(config, problems)
    _check_endpoints(config, problems)
    _check_routes(config, problems)
    _check_annuaire(config, problems)
    _check_delivery(config, problems)
    _check_inbound(config, problems)


# ---------------------------------------------------------------- TLS material


def _pairs(config: Config) -> Iterator[tuple[str, Path | None, Path | None]]:
    yield "tls", config.tls.certificate, config.tls.private_key
    for index, listener in enumerate(config.listeners):
        yield f"listeners[{index}]", listener.certificate, listener.private_key


def _check_certificate_pairs(config: Config, problems: Problems) -> None:
    for prefix, certificate, key in _pairs(config):
        cert_key, key_key = f"{prefix}.certificate", f"{prefix}.private_key"
        if problems.is_bad(cert_key, key_key):
            continue
        if certificate is not None and key is None:
            problems.add(key_key, f"required when {cert_key} is set")
        elif key is not None and certificate is None:
            problems.add(cert_key, f"required when {key_key} is set")


def _default_certificate_users(config: Config) -> Iterator[str]:
    for listener in config.listeners:
        if listener.tls != "none" and listener.certificate is None:
            yield f'listener "{listener.name}" uses TLS without a certificate of its own'
    for route in config.routes:
        if route.transport == "smtp" and route.tls != "none":
            yield f'route "{route.name}" uses TLS (the relay presents this certificate)'


def _check_default_certificate(config: Config, problems: Problems) -> None:
    if config.tls.certificate is not None or problems.is_bad("tls", "listeners", "routes"):
        return
    reason = next(_default_certificate_users(config), None)
    if reason is not None:
        problems.add("tls.certificate", f"required: {reason}")
        problems.mark_bad("tls.private_key")


# ---------------------------------------------------------------- listeners


def _check_listeners(config: Config, problems: Problems) -> None:
    seen: dict[str, int] = {}
    for index, listener in enumerate(config.listeners):
        prefix = f"listeners[{index}]"
        if not problems.is_bad(f"{prefix}.name"):
            if listener.name in seen:
                problems.add(
                    f"{prefix}.name",
                    f'"{listener.name}" is already the name of listeners[{seen[listener.name]}]',
                )
            seen.setdefault(listener.name, index)
        if not problems.is_bad(f"{prefix}.kind", f"{prefix}.tls", f"{prefix}.address"):
            _check_listener(listener, prefix, problems)


def _check_listener(listener: Listener, prefix: str, problems: Problems) -> None:
    if listener.tls == "none" and not listener.address.is_loopback:
        problems.add(
            f"{prefix}.tls",
            f'"none" is allowed only on a loopback address, not {listener.address.host}',
        )
    if listener.kind == "submission":
        if listener.client_certificate != "none":
            problems.add(
                f"{prefix}.client_certificate",
                'only relay listeners check client certificates (this one is kind = "submission")',
            )
        if listener.relay_clients:
            problems.add(
                f"{prefix}.relay_clients",
                "only relay listeners have relay clients (submission uses AUTH)",
            )
    elif listener.max_recipients < 100:
        problems.add(
            f"{prefix}.max_recipients",
            "a relay listener must accept at least 100 recipients (RFC 5321 §4.5.3.1.8)",
        )
    if listener.tls == "none" and listener.client_certificate != "none":
        problems.add(f"{prefix}.client_certificate", 'needs TLS (tls is "none")')
    has_dn = any(isinstance(client, x509.Name) for client in listener.relay_clients)
    if has_dn and listener.client_certificate == "none" and listener.kind == "relay":
        problems.add(
            f"{prefix}.relay_clients",
            'a "dn:" entry needs client_certificate = "optional" or "required"',
        )
    if listener.max_connections_per_ip > listener.max_connections:
        problems.add(f"{prefix}.max_connections_per_ip", "is larger than max_connections")


def _check_front_workers(config: Config, problems: Problems) -> None:
    processes = config.gateway.front_workers
    if processes == 1 or problems.is_bad("gateway.front_workers"):
        return
    shared_by = f"gateway.front_workers = {processes} processes"
    for index, listener in enumerate(config.listeners):
        prefix = f"listeners[{index}]"
        if listener.address.port == 0 and not problems.is_bad(f"{prefix}.address"):
            problems.add(
                f"{prefix}.address",
                f"port 0 (any free port) cannot be shared by {shared_by}; give a port",
            )
        for key in ("max_connections", "max_connections_per_ip"):
            limit: int = getattr(listener, key)
            if limit < processes and not problems.is_bad(f"{prefix}.{key}"):
                problems.add(
                    f"{prefix}.{key}",
                    f"{limit} cannot be shared by {shared_by} (each enforces its share, "
                    "at least 1)",
                )


def _overlap(first: HostPort, second: HostPort) -> bool:
    if first.port != second.port or first.port == 0:
        return False
    if _same_host(first.host, second.host):
        return True
    return _is_wildcard_for(first.host, second.host) or _is_wildcard_for(second.host, first.host)


_LOCALHOST = frozenset({ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")})


def _addresses(host: str) -> frozenset[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    """The addresses ``host`` stands for: itself, ``localhost`` -> 127.0.0.1 and ::1."""
    if host.lower() == "localhost":
        return _LOCALHOST
    try:
        return frozenset({ipaddress.ip_address(host)})
    except ValueError:
        return frozenset()


def _same_host(first: str, second: str) -> bool:
    """Equal names, or the same address however written (``::1`` = ``0:0::1``)."""
    return first.lower() == second.lower() or bool(_addresses(first) & _addresses(second))


def _is_wildcard_for(wildcard: str, host: str) -> bool:
    try:
        address = ipaddress.ip_address(wildcard)
    except ValueError:
        return False
    if not address.is_unspecified:
        return False
    if address.version == 6:  # a dual-stack [::] socket also takes IPv4
        return True
    try:
        return ipaddress.ip_address(host).version == 4
    except ValueError:
        return True  # a name may resolve to an IPv4 address


def _check_endpoints(config: Config, problems: Problems) -> None:
    endpoints = [
        (f"listeners[{index}].address", listener.address)
        for index, listener in enumerate(config.listeners)
    ]
    if config.metrics.address is not None:
        endpoints.append(("metrics.address", config.metrics.address))
    endpoints = [(key, address) for key, address in endpoints if not problems.is_bad(key)]
    for (first_key, first), (second_key, second) in combinations(endpoints, 2):
        if _overlap(first, second) and not problems.is_bad(second_key):
            problems.add(second_key, f"{second} is already bound by {first_key} ({first})")


# ---------------------------------------------------------------- routes


def _check_routes(config: Config, problems: Problems) -> None:
    names: dict[str, int] = {}
    for index, route in enumerate(config.routes):
        prefix = f"routes[{index}]"
        if not problems.is_bad(f"{prefix}.name"):
            if route.name in names:
                problems.add(
                    f"{prefix}.name",
                    f'"{route.name}" is already the name of routes[{names[route.name]}]',
                )
            names.setdefault(route.name, index)
        _check_route_transport(route, prefix, problems)
        _check_route_auth(route, prefix, problems)
    _check_fallbacks(config, problems)
    _check_shadowed_patterns(config, problems)


def _check_route_transport(route: Route, prefix: str, problems: Problems) -> None:
    if problems.is_bad(f"{prefix}.transport", f"{prefix}.tls", f"{prefix}.security"):
        return
    if route.security == "tls-only":
        if route.tls != "verify":
            problems.add(
                f"{prefix}.tls", f'a tls-only route requires tls = "verify", got "{route.tls}"'
            )
        if route.transport != "smtp":
            problems.add(f"{prefix}.security", 'tls-only needs transport = "smtp"')
    if problems.is_bad(f"{prefix}.next_hop", f"{prefix}.tls_name"):
        return
    if route.transport != "smtp":
        if route.next_hop is not None:
            problems.add(f"{prefix}.next_hop", 'only used with transport = "smtp"')
        return
    if route.tls_name is not None and route.next_hop is None:
        problems.add(f"{prefix}.tls_name", "only used with a static next_hop")
    hop = route.next_hop
    if hop is not None and hop.is_ip and route.tls == "verify" and route.tls_name is None:
        problems.add(
            f"{prefix}.tls_name",
            f'required: next_hop {hop} is an IP address and tls = "verify"'
            " (the peer's certificate is checked against this name)",
        )


def _check_route_auth(route: Route, prefix: str, problems: Problems) -> None:
    user_key, file_key = f"{prefix}.auth_user", f"{prefix}.auth_password_file"
    if problems.is_bad(user_key, file_key, f"{prefix}.tls", f"{prefix}.transport"):
        return
    if route.auth_user is not None and route.auth_password_file is None:
        problems.add(file_key, f"required when {user_key} is set")
    elif route.auth_password_file is not None and route.auth_user is None:
        problems.add(user_key, f"required when {file_key} is set")
    elif route.auth_user is not None:
        if route.transport != "smtp":
            problems.add(user_key, 'only used with transport = "smtp"')
        elif route.tls != "verify":
            problems.add(
                user_key,
                f'SMTP AUTH needs tls = "verify" (got "{route.tls}"): the password must not'
                " be exposed to a TLS downgrade",
            )


def _weaker(target: Route, source: Route) -> str | None:
    """Why ``target`` is weaker than ``source`` as its fallback, or None."""
    if _SECURITY_RANK[target.security] < _SECURITY_RANK[source.security]:
        return f'security "{target.security}" is weaker than "{source.security}"'
    both_smtp = target.transport == source.transport == "smtp"
    if both_smtp and _TLS_RANK[target.tls] < _TLS_RANK[source.tls]:
        return f'tls "{target.tls}" is weaker than "{source.tls}"'
    return None


def _check_fallbacks(config: Config, problems: Problems) -> None:
    if problems.is_bad("routes"):
        return
    routes = {route.name: route for route in reversed(config.routes)}  # first one wins
    for index, route in enumerate(config.routes):
        key = f"routes[{index}].fallback"
        target_name = route.fallback_route
        if target_name is None or problems.is_bad(key):
            continue
        target = routes.get(target_name)
        if target is None:
            problems.add(key, f'no route is named "{target_name}"')
        elif target is route:
            problems.add(key, "a route cannot fall back to itself")
        elif (reason := _weaker(target, route)) is not None:
            problems.add(key, f'route "{target_name}" is weaker than this route: {reason}')
        elif (loop := _fallback_loop(route, routes)) is not None:
            problems.add(key, f"fallback loop: {' -> '.join(loop)}")
        elif (weaker := _weaker_further_on(route, target, routes)) is not None:
            problems.add(key, f'route "{target_name}" leads to {weaker}')


def _weaker_further_on(source: Route, target: Route, routes: dict[str, Route]) -> str | None:
    """The first route past ``target`` on the fallback chain that is weaker than
    ``source`` where no hop on the way is weaker than the one before it (that hop gets
    its own line), e.g. smtp/verify -> postal -> smtp/none; else None."""
    previous, seen = target, {source.name, target.name}
    while (name := previous.fallback_route) is not None and name not in seen:
        current = routes.get(name)
        if current is None or _weaker(current, previous) is not None:
            return None
        if (reason := _weaker(current, source)) is not None:
            return f'route "{name}", which is weaker than this route: {reason}'
        previous = current
        seen.add(name)
    return None


def _fallback_loop(start: Route, routes: dict[str, Route]) -> list[str] | None:
    chain = [start.name]
    current: Route | None = start
    while current is not None and current.fallback_route is not None:
        name = current.fallback_route
        if name in chain:
            return [*chain, name] if name == start.name else None
        chain.append(name)
        current = routes.get(name)
    return None


def _check_shadowed_patterns(config: Config, problems: Problems) -> None:
    earlier: list[tuple[str, str]] = []  # (pattern, "routes[i] "name"")
    for index, route in enumerate(config.routes):
        prefix = f"routes[{index}]"
        if problems.is_bad(f"{prefix}.domains"):
            continue
        for position, pattern in enumerate(route.domains):
            cover = next((who for seen, who in earlier if pattern_covers(seen, pattern)), None)
            if cover is not None:
                problems.add(
                    f"{prefix}.domains[{position}]",
                    f'"{pattern}" is never used: {cover} matches it first (first match wins)',
                )
        earlier.extend((pattern, f'{prefix} "{route.name}"') for pattern in route.domains)


# ---------------------------------------------------------------- other sections


def _check_annuaire(config: Config, problems: Problems) -> None:
    annuaire = config.annuaire
    if problems.is_bad("annuaire.backend", "annuaire.url", "annuaire.bind_dn"):
        return
    if annuaire.backend == "ldap" and not annuaire.url:
        problems.add("annuaire.url", 'at least one URL is required for backend = "ldap"')
    if problems.is_bad("annuaire.bind_password_file"):
        return
    if annuaire.bind_dn is not None and annuaire.bind_password_file is None:
        problems.add("annuaire.bind_password_file", "required when annuaire.bind_dn is set")
    if annuaire.bind_dn is None and annuaire.bind_password_file is not None:
        problems.add("annuaire.bind_dn", "required when annuaire.bind_password_file is set")
    if annuaire.backend == "ldap" and annuaire.bind_dn is not None:
        for index, url in enumerate(annuaire.url):
            parts = urlsplit(url)
            if parts.scheme.lower() == "ldap" and not is_loopback_host(parts.hostname or ""):
                problems.add(
                    f"annuaire.url[{index}]",
                    "binding with a password over ldap:// to a remote host sends it in clear;"
                    " use ldaps://",
                )


def _check_delivery(config: Config, problems: Problems) -> None:
    delivery = config.delivery
    if problems.is_bad("delivery.delay_warning", "delivery.max_lifetime"):
        return
    if delivery.delay_warning >= delivery.max_lifetime:
        problems.add("delivery.delay_warning", "must be shorter than delivery.max_lifetime")


def _check_inbound(config: Config, problems: Problems) -> None:
    target = config.inbound.deliver_to
    if target.address is not None and not problems.is_bad("inbound.deliver_to", "listeners"):
        for index, listener in enumerate(config.listeners):
            if _overlap(listener.address, target.address):
                problems.add(
                    "inbound.deliver_to",
                    f"{target} is the gateway's own listeners[{index}] (a mail loop)",
                )
    if problems.is_bad("gateway.local_domains"):
        return
    local = set(config.gateway.local_domains)
    for index, fetch in enumerate(config.inbound.imap_fetch):
        key = f"inbound.imap_fetch[{index}].deliver_to_address"
        domain = fetch.deliver_to_address.rpartition("@")[2]
        if not problems.is_bad(key) and domain not in local:
            problems.add(key, f'"{domain}" is not one of gateway.local_domains')
