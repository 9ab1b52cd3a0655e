"""Routing of an outbound message's recipients (sans-IO): which route, which group.

Role: the secure agent's first step. For each RCPT TO it picks a route: a domain of
``gateway.local_domains`` takes the implicit local route (``LOCAL_ROUTE``, delivered
locally, never rejected: CONFIG-CONTRACT ``local_domains``), any other domain the first
``[[routes]]`` whose ``domains`` match (``Config.route_for``, first match wins). The
recipients are grouped per route, in RCPT order, and each group is split into the
recipients the message *shows* (in To or Cc) and the hidden ones (a RCPT in neither To
nor Cc is a Bcc, RFC 5322 §3.6.3): a hidden recipient gets a message of its own so that
no recipient learns of another it was not shown. The fallback of a route is resolved
here too (``resolve_fallback``), following ``route:<name>`` links.

Invariants: pure functions of the configuration and the header block; no I/O; a
recipient whose domain matches no route (or is not a valid domain) is reported with
``route`` ``None`` (the caller refuses it: fail closed, never a guess). Address
comparison follows RFC 8550 §3 (local part exact, domain case-insensitive).

Fallback: ``bounce`` and ``postal`` are final; ``route:<name>`` names another route
(the configuration checks it exists and is not weaker). A target whose transport is
``reject`` ends as ``bounce``, ``postal`` as ``postal``; a route naming itself or a
missing name ends as ``bounce`` (fail closed). Any other target is returned as it is:
the recipient is then processed under that route's rules (its own certificate search
and, if that fails too, its own fallback) by the caller, so a loop between routes is
broken by the caller's record of the routes already tried (``chain``).

Trust level: pure data; runs in the secure agent.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from gateway.config import Config
from gateway.config.model import Route
from gateway.smime import mime
from gateway.smime.certnames import addresses_match

LOCAL_ROUTE_NAME = "local"
SHOWN_FIELDS = ("to", "cc")  # RFC 5322 §3.6.3: the destination fields a recipient sees

FallbackKind = Literal["bounce", "postal", "route"]


def local_route(config: Config) -> Route:
    """The implicit route of ``gateway.local_domains`` (local delivery, no relay)."""
    return Route(
        name=LOCAL_ROUTE_NAME,
        domains=config.gateway.local_domains,
        transport="local",
        next_hop=None,
        tls="none",
        tls_name=None,
        security="tls-only",
        wrap=False,
        fallback="bounce",
        anchors=(),
        auth_user=None,
        auth_password_file=None,
    )


def domain_of(address: str) -> str:
    """The domain of ``address`` (after the last ``@``), lower-case; ``""`` if none."""
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def is_local(config: Config, address: str) -> bool:
    domain = domain_of(address)
    return any(domain == local.lower() for local in config.gateway.local_domains)


def route_of(config: Config, address: str) -> Route | None:
    """The route of one recipient: implicit local route, else the first match, else None."""
    if is_local(config, address):
        return local_route(config)
    domain = domain_of(address)
    return config.route_for(domain) if domain else None


def header_addresses(header_block: bytes, names: Iterable[str] = SHOWN_FIELDS) -> tuple[str, ...]:
    """The addresses of the given fields (every occurrence, groups flattened)."""
    entity = mime.parse_entity(mime.canonicalize_crlf(header_block) + b"\r\n")
    values: list[str] = []
    for name in names:
        values.extend(entity.header_values(name))
    return tuple(address for _, address in email.utils.getaddresses(values) if "@" in address)


def shown_addresses(message: bytes) -> tuple[str, ...]:
    """The To and Cc addresses of a message (its header block only is read)."""
    header, _ = mime.split_header_body(mime.canonicalize_crlf(message))
    return header_addresses(header)


def contains_address(addresses: Sequence[str], address: str) -> bool:
    return any(addresses_match(candidate, address) for candidate in addresses)


@dataclass(frozen=True)
class RouteGroup:
    """The recipients of one route: ``shown`` (in To/Cc) and ``hidden`` (Bcc), RCPT order."""

    route: Route
    shown: tuple[str, ...]
    hidden: tuple[str, ...]

    @property
    def recipients(self) -> tuple[str, ...]:
        return (*self.shown, *self.hidden)


@dataclass(frozen=True)
class RoutingPlan:
    """Every recipient placed: groups in order of first appearance, and the unroutable."""

    groups: tuple[RouteGroup, ...]
    unrouted: tuple[str, ...]


def plan_routes(config: Config, recipients: Sequence[str], shown: Sequence[str]) -> RoutingPlan:
    """Group ``recipients`` per route; ``shown`` are the To/Cc addresses of the message."""
    order: list[str] = []
    routes: dict[str, Route] = {}
    members: dict[str, tuple[list[str], list[str]]] = {}
    unrouted: list[str] = []
    for address in recipients:
        route = route_of(config, address)
        if route is None:
            unrouted.append(address)
            continue
        if route.name not in routes:
            order.append(route.name)
            routes[route.name] = route
            members[route.name] = ([], [])
        visible, hidden = members[route.name]
        (visible if contains_address(shown, address) else hidden).append(address)
    groups = tuple(
        RouteGroup(routes[name], tuple(members[name][0]), tuple(members[name][1])) for name in order
    )
    return RoutingPlan(groups, tuple(unrouted))


@dataclass(frozen=True)
class FallbackTarget:
    """Where a recipient goes when its route cannot carry it securely."""

    kind: FallbackKind
    route: Route | None  # the target route when ``kind == "route"``
    chain: tuple[str, ...]  # route names walked, first the failing route

    @property
    def action(self) -> str:
        """``bounce``, ``postal`` or ``route:<name>`` (as the configuration writes it)."""
        return f"route:{self.route.name}" if self.route is not None else self.kind


def resolve_fallback(config: Config, route: Route) -> FallbackTarget:
    """Follow ``route``'s ``fallback`` (see the module docstring for the rules)."""
    target_name = route.fallback_route
    if target_name is None:
        kind: FallbackKind = "postal" if route.fallback == "postal" else "bounce"
        return FallbackTarget(kind, None, (route.name,))
    chain = (route.name, target_name)
    target = config.route_named(target_name)
    if target is None or target.name == route.name or target.transport == "reject":
        return FallbackTarget("bounce", None, chain)
    if target.transport == "postal":
        return FallbackTarget("postal", None, chain)
    return FallbackTarget("route", target, chain)
