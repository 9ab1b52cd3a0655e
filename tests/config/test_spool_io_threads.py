"""``[gateway] spool_io_threads``: the stage workers' spool I/O, on their loop (0, the
default) or in a pool of threads (1..64)."""

from __future__ import annotations

import pytest

from tests.config.support import BASE, Site, replace


def with_io_threads(value: str) -> str:
    return replace(
        BASE,
        'local_domains = ["chu-a.test"]',
        f'local_domains = ["chu-a.test"]\nspool_io_threads = {value}',
    )


def test_spool_io_threads_defaults_to_the_loop(site: Site) -> None:
    assert site.load().gateway.spool_io_threads == 0


@pytest.mark.parametrize("value", [0, 1, 16, 64])
def test_valid_spool_io_threads(site: Site, value: int) -> None:
    assert site.load(with_io_threads(str(value))).gateway.spool_io_threads == value


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "expected an integer from 0 to 64, got -1"),
        ("65", "expected an integer from 0 to 64, got 65"),
        ('"4"', 'expected an integer, got "4"'),
    ],
)
def test_invalid_spool_io_threads_names_the_key(site: Site, value: str, message: str) -> None:
    assert site.problems(with_io_threads(value)) == [f"gateway.spool_io_threads: {message}"]
