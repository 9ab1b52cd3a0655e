"""Routing of recipients: route per recipient, local implicit route, groups, To/Cc vs
Bcc, fallback chain (pure functions over a configuration loaded from TOML)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from gateway.config import Config
from gateway.pki.dev import DevPki
from gateway.relay import routing
from tests.relay.configs import write_site

HEADER = (
    b"From: Alice <alice.martin@chu-a.test>\r\n"
    b"To: Claire <claire.durand@clinique-b.test>, dan@clinique-b.test\r\n"
    b'Cc: undisclosed:;, "Eve, E." <EVE@Clinique-B.test>\r\n'
    b"Bcc: hidden@clinique-b.test\r\n"
    b"Subject: x\r\n"
)


@pytest.fixture
def config(dev_pki: DevPki, tmp_path: Path) -> Config:
    return write_site(tmp_path, dev_pki)


def test_route_per_recipient(config: Config) -> None:
    assert routing.route_of(config, "bruno.petit@CHU-A.test").name == "local"  # type: ignore[union-attr]
    assert routing.route_of(config, "claire@clinique-b.test").name == "clinique-b"  # type: ignore[union-attr]
    assert routing.route_of(config, "x@a.partner.test").name == "partner"  # type: ignore[union-attr]
    assert routing.route_of(config, "x@elsewhere.test").name == "default"  # type: ignore[union-attr]
    assert routing.route_of(config, "no-domain") is None
    assert routing.route_of(config, "x@bad..domain") is None


def test_shown_addresses_are_to_and_cc_only() -> None:
    shown = routing.shown_addresses(HEADER + b"\r\nbody mentions bcc@x.test\r\n")
    assert shown == ("claire.durand@clinique-b.test", "dan@clinique-b.test", "EVE@Clinique-B.test")


def test_groups_split_shown_and_hidden(config: Config) -> None:
    shown = routing.header_addresses(HEADER)
    plan = routing.plan_routes(
        config,
        [
            "claire.durand@clinique-b.test",
            "bruno.petit@chu-a.test",
            "hidden@clinique-b.test",
            "eve@clinique-b.test",  # domain case differs from Cc: same address (RFC 8550 §3)
            "x@mss.test",
            "nodomain",
        ],
        shown,
    )
    names = [group.route.name for group in plan.groups]
    assert names == ["clinique-b", "local", "mss"]
    clinique = plan.groups[0]
    assert clinique.shown == ("claire.durand@clinique-b.test",)
    assert clinique.hidden == ("hidden@clinique-b.test", "eve@clinique-b.test")
    assert plan.groups[1].hidden == ("bruno.petit@chu-a.test",)
    assert plan.unrouted == ("nodomain",)


def test_local_part_is_case_sensitive(config: Config) -> None:
    plan = routing.plan_routes(
        config, ["Claire.Durand@clinique-b.test"], ["claire.durand@clinique-b.test"]
    )
    assert plan.groups[0].hidden == ("Claire.Durand@clinique-b.test",)


def test_fallback_resolution(config: Config) -> None:
    clinique = config.route_named("clinique-b")
    partner = config.route_named("partner")
    direct = config.route_named("direct")
    assert clinique and partner and direct
    assert routing.resolve_fallback(config, clinique).action == "postal"
    assert routing.resolve_fallback(config, direct).action == "bounce"
    to_clinique = routing.resolve_fallback(config, partner)
    assert to_clinique.action == "route:clinique-b"
    assert to_clinique.chain == ("partner", "clinique-b")


def test_fallback_to_itself_reject_or_nowhere_bounces(config: Config) -> None:
    partner = config.route_named("partner")
    assert partner
    self_loop = dataclasses.replace(partner, fallback="route:partner")
    result = routing.resolve_fallback(config, self_loop)
    assert result.action == "bounce" and result.chain == ("partner", "partner")
    to_reject = dataclasses.replace(partner, fallback="route:default")
    assert routing.resolve_fallback(config, to_reject).kind == "bounce"
    missing = dataclasses.replace(partner, fallback="route:nowhere")
    assert routing.resolve_fallback(config, missing).kind == "bounce"
    to_postal_route = dataclasses.replace(config.routes[0], name="paper", transport="postal")
    with_paper = dataclasses.replace(config, routes=(*config.routes, to_postal_route))
    via_paper = dataclasses.replace(partner, fallback="route:paper")
    assert routing.resolve_fallback(with_paper, via_paper).action == "postal"
