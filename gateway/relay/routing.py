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

Addresses of a header field (``addresses_in``): ``email.utils.getaddresses`` is the
reference. It and the header parse before it cost about 20 us per message (measured,
once per message on the agent's event loop), so the plain forms that make up
nearly every To/Cc a mail client writes (RFC 5322 §3.4: ``local@domain``,
``<local@domain>``, ``Display Name <local@domain>``, ``"Quoted, Name" <local@domain>``,
ASCII dot-atoms, comma-separated, folding white space between them) are read by one
regular expression (``plain_addresses``), which gives exactly the addresses
``getaddresses`` gives (``tests/relay/test_one_pass.py`` compares the two on generated
and hostile values) in time linear in the value (no nested ambiguity for the regex
engine to backtrack through; long hostile values are in that test); any other value
(groups, comments, route addresses, quoted local parts, domain literals, empty list
items, non-ASCII) goes to ``getaddresses``. The SMTP
front's ``From:`` fast path (``gateway.smtp.policy``) does not fit here: it reads one
whole ``From:`` field as bytes, one mailbox, against ``email.headerregistry``, and
lower-cases the domain.

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
import re
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


_FWS = r"(?:[ \t]|\r\n[ \t])"  # RFC 5322 §3.2.2 folding white space, as compat32 keeps it
_ADDR_SPEC = r"[A-Za-z0-9_+-]+(?:\.[A-Za-z0-9_+-]+)*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_WORD = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+"  # atext and "." (obs-phrase)
_DISPLAY_NAME = rf'(?:"[\t !#-\[\]-~]*"|{_WORD}(?:{_FWS}+{_WORD})*)'
_PLAIN_MAILBOX = re.compile(
    rf"{_FWS}*(?:(?P<bare>{_ADDR_SPEC})|(?:{_DISPLAY_NAME}{_FWS}*)?<(?P<angle>{_ADDR_SPEC})>)"
    rf"{_FWS}*(?P<comma>,)?"
)


def plain_addresses(values: Iterable[str]) -> tuple[str, ...] | None:
    """The addresses of header values made only of plain mailboxes (see the module
    docstring), as ``email.utils.getaddresses`` gives them; None for any other value.
    An all-blank value holds no address."""
    found: list[str] = []
    for value in values:
        position, end = 0, len(value)
        if not value.strip(" \t\r\n"):
            if "\r" in value or "\n" in value:
                return None  # a bare CR or LF, or a folded blank: let the reference judge
            continue
        while position < end:
            match = _PLAIN_MAILBOX.match(value, position)
            if match is None:
                return None
            found.append(match.group("bare") or match.group("angle"))
            position = match.end()
            if match.group("comma") is None:
                if position != end:
                    return None
            elif position == end:
                return None  # a trailing comma: an empty item
    return tuple(found)


def addresses_in(values: Sequence[str]) -> tuple[str, ...]:
    """The addresses (with an ``@``) of header field values: ``plain_addresses``, else
    ``email.utils.getaddresses`` (groups flattened)."""
    plain = plain_addresses(values)
    if plain is not None:
        return plain
    return tuple(address for _, address in email.utils.getaddresses(values) if "@" in address)


def header_addresses(header_block: bytes, names: Iterable[str] = SHOWN_FIELDS) -> tuple[str, ...]:
    """The addresses of the given fields (every occurrence, groups flattened)."""
    entity = mime.parse_entity(mime.canonicalize_crlf(header_block) + b"\r\n")
    values: list[str] = []
    for name in names:
        values.extend(entity.header_values(name))
    return addresses_in(values)


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
