"""``[gateway] front_workers``: SMTP front processes sharing the listeners (1..64, default
1), and the rules it brings (fixed ports, listener limits at least one per process)."""

from __future__ import annotations

import pytest

from tests.config.support import BASE, Site, replace


def with_front_workers(value: str, text: str = BASE) -> str:
    return replace(
        text,
        'local_domains = ["chu-a.test"]',
        f'local_domains = ["chu-a.test"]\nfront_workers = {value}',
    )


def test_front_workers_defaults_to_one(site: Site) -> None:
    assert site.load().gateway.front_workers == 1


@pytest.mark.parametrize("value", [1, 2, 20])
def test_valid_front_workers(site: Site, value: int) -> None:
    assert site.load(with_front_workers(str(value))).gateway.front_workers == value


def test_sixty_four_front_workers_with_limits_to_share(site: Site) -> None:
    text = with_front_workers("64").replace('kind = "', 'max_connections_per_ip = 64\nkind = "')
    assert site.load(text).gateway.front_workers == 64


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("0", "expected an integer from 1 to 64, got 0"),
        ("65", "expected an integer from 1 to 64, got 65"),
        ('"2"', 'expected an integer, got "2"'),
        ("2.0", "expected an integer, got 2.0"),
        ("true", "expected an integer, got true"),
    ],
)
def test_bad_front_workers_names_the_key(site: Site, value: str, message: str) -> None:
    assert site.problems(with_front_workers(value)) == [f"gateway.front_workers: {message}"]


def test_several_front_processes_cannot_share_port_zero(site: Site) -> None:
    text = replace(with_front_workers("2"), '"127.0.0.1:2525"', '"127.0.0.1:0"')
    assert site.problems(text) == [
        "listeners[1].address: port 0 (any free port) cannot be shared by "
        "gateway.front_workers = 2 processes; give a port"
    ]
    site.load(replace(BASE, '"127.0.0.1:2525"', '"127.0.0.1:0"'))  # one process: fine


def test_each_front_process_needs_one_connection_of_each_limit(site: Site) -> None:
    limits = 'kind = "relay"\nmax_connections = 3\nmax_connections_per_ip = 2'
    text = replace(with_front_workers("3"), 'kind = "relay"', limits)
    assert site.problems(text) == [
        "listeners[1].max_connections_per_ip: 2 cannot be shared by "
        "gateway.front_workers = 3 processes (each enforces its share, at least 1)"
    ]
    site.load(replace(with_front_workers("2"), 'kind = "relay"', limits))
