"""Adversarial hunt of the configuration loader and ``missive check-config`` (session 5).

Each test states one promise of CONFIG-CONTRACT or of the ``gateway.config`` docstrings
(one line per problem naming the key, exit 2, never a traceback; the unsafe
combinations are errors) and attacks it with an edge case.
"""

from __future__ import annotations

import os

import pytest

from gateway.cli import main
from tests.config.support import BASE, Site, replace


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["check-config", *args])
    out, err = capsys.readouterr()
    return status, out, err


def route(name: str, domains: str, extra: str = "") -> str:
    return f'\n[[routes]]\nname = "{name}"\ndomains = [{domains}]\n{extra}'


# ---------------------------------------------------------------- TOML edge cases


@pytest.mark.parametrize("depth", [2_000, 100_000])
def test_deeply_nested_arrays_give_one_line_not_a_traceback(
    site: Site, capsys: pytest.CaptureFixture[str], depth: int
) -> None:
    site.config.write_text("x = " + "[" * depth + "]" * depth + "\n")
    status, out, err = run(capsys, str(site.config))
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("missive.toml: "), err[:300]


def test_deeply_nested_inline_tables_give_one_line(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    depth = 5_000
    site.config.write_text("x = " + "{a = " * depth + "1" + "}" * depth + "\n")
    status, out, err = run(capsys, str(site.config))
    assert (status, out) == (2, "")
    assert len(err.splitlines()) == 1 and err.startswith("missive.toml: "), err[:300]


# ---------------------------------------------------------------- listener addresses


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("127.0.0.1:2525", "localhost:2525"),
        ("[::1]:2525", "[0:0:0:0:0:0:0:1]:2525"),
    ],
)
def test_the_same_endpoint_written_twice_is_a_conflict(site: Site, first: str, second: str) -> None:
    text = replace(BASE, 'address = "127.0.0.1:2525"', f'address = "{first}"')
    text += f'\n[[listeners]]\nname = "mx2"\naddress = "{second}"\nkind = "relay"\n'
    assert site.problems(text) == [
        f"listeners[2].address: {second} is already bound by listeners[1].address ({first})"
    ]


@pytest.mark.parametrize("target", ["lmtp://localhost:2525", "smtp://[0:0::1]:2526"])
def test_deliver_to_an_own_listener_written_differently_is_a_loop(site: Site, target: str) -> None:
    text = replace(BASE, 'address = "127.0.0.1:2587"', 'address = "[::1]:2526"')
    text += f'\n[inbound]\ndeliver_to = "{target}"\n'
    lines = site.problems(text)
    assert len(lines) == 1 and lines[0].startswith("inbound.deliver_to: "), lines
    assert "mail loop" in lines[0]


# ---------------------------------------------------------------- routes


def test_fallback_chain_that_ends_weaker_after_two_hops(site: Site) -> None:
    text = BASE
    text += route("a", '"a.test"', 'fallback = "route:b"\n')
    text += route("b", '"b.test"', 'transport = "postal"\nfallback = "route:c"\n')
    text += route("c", '"c.test"', 'tls = "none"\n')
    assert site.problems(text) == [
        'routes[0].fallback: route "b" leads to route "c", which is weaker than this route:'
        ' tls "none" is weaker than "verify"'
    ]


def test_weaker_hop_in_the_middle_of_a_chain_gives_one_line(site: Site) -> None:
    text = BASE
    text += route("a", '"a.test"', 'fallback = "route:b"\n')
    text += route("b", '"b.test"', 'fallback = "route:c"\n')
    text += route("c", '"c.test"', 'tls = "none"\n')
    assert site.problems(text) == [
        'routes[1].fallback: route "c" is weaker than this route: tls "none" is weaker than'
        ' "verify"'
    ]


def test_chain_through_postal_to_an_equal_route_holds(site: Site) -> None:
    text = BASE
    text += route("a", '"a.test"', 'fallback = "route:b"\n')
    text += route("b", '"b.test"', 'transport = "postal"\nfallback = "route:c"\n')
    text += route("c", '"c.test"', 'fallback = "route:b"\n')
    assert site.problems(text) == [  # routes[0] gets no line of its own
        "routes[1].fallback: fallback loop: b -> c -> b",
        "routes[2].fallback: fallback loop: c -> b -> c",
    ]


# ---------------------------------------------------------------- huge numbers


GIANT = "9" * 5000  # more digits than int() converts (sys.get_int_max_str_digits)


@pytest.mark.parametrize(
    ("old", "new", "key"),
    [
        ('address = "127.0.0.1:2587"', f'address = "127.0.0.1:{GIANT}"', "listeners[0].address"),
        (
            'kind = "submission"',
            f'kind = "submission"\ncommand_timeout = "{GIANT}s"',
            "listeners[0].command_timeout",
        ),
        ('kind = "submission"', f'kind = "submission"\nmax_connections = {GIANT}', None),
        (
            'relay_clients = ["127.0.0.1/32"]',
            f'relay_clients = ["127.0.0.1/32"]\n[delivery]\nmax_message_size = "{GIANT}MB"',
            "delivery.max_message_size",
        ),
    ],
)
def test_a_giant_number_gives_one_line_not_a_traceback(
    site: Site, capsys: pytest.CaptureFixture[str], old: str, new: str, key: str | None
) -> None:
    status, out, err = run(capsys, str(site.write(replace(BASE, old, new))))
    assert (status, out) == (2, ""), err
    assert key is None or f"missive.toml: {key}: " in err, err


@pytest.mark.parametrize("value", ["\u0663\u0660s", "\uff13\uff10s"])
def test_a_duration_is_written_in_ascii_digits(site: Site, value: str) -> None:
    text = replace(BASE, 'kind = "submission"', f'kind = "submission"\ncommand_timeout = "{value}"')
    lines = site.problems(text)
    assert len(lines) == 1 and lines[0].startswith("listeners[0].command_timeout: "), lines


# ---------------------------------------------------------------- the file itself


@pytest.mark.timeout(10)
def test_a_fifo_as_configuration_file_is_refused_not_waited_on(
    site: Site, capsys: pytest.CaptureFixture[str]
) -> None:
    fifo = site.root / "conf" / "fifo.toml"
    os.mkfifo(fifo)
    status, out, err = run(capsys, str(fifo))
    assert (status, out) == (2, "")
    assert err.startswith("fifo.toml: "), err


# ---------------------------------------------------------------- tried and held


@pytest.mark.parametrize(
    ("new", "key"),
    [
        ('address = "127.1:2587"', "listeners[0].address"),
        ('address = "127.0.0.1:70000"', "listeners[0].address"),
        ('address = "127.0.0.1:\uff12\uff15"', "listeners[0].address"),
        ('address = "0.0.0.0:2587"\ntls = "none"', "listeners[0].tls"),
        ('address = "[::]:2587"\ntls = "none"', "listeners[0].tls"),
        ('address = "[fe80::1%lo]:2587"\ntls = "none"', "listeners[0].tls"),
        ('address = "[::ffff:127.0.0.1]:2587"\ntls = "none"', "listeners[0].tls"),
        ("address = 1979-05-27T07:32:00Z", "listeners[0].address"),
        ('address = "127.0.0.1:2587"\nmax_connections = nan', "listeners[0].max_connections"),
        ('address = "127.0.0.1:2587"\nmax_connections = inf', "listeners[0].max_connections"),
        ('address = "127.0.0.1:2587"\nmax_connections = true', "listeners[0].max_connections"),
        (
            'address = "127.0.0.1:2587"\nmax_connections = 1' + "0" * 40,
            "listeners[0].max_connections",
        ),
    ],
)
def test_held_listener_values(site: Site, new: str, key: str) -> None:
    lines = site.problems(replace(BASE, 'address = "127.0.0.1:2587"', new))
    assert lines and all(line.startswith(f"{key}: ") for line in lines), lines


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "symlink-0644"])
def test_held_unusable_key_files(site: Site, kind: str) -> None:
    key = site.path("var/pki/mx.chu-a.test.key")
    other = site.root / "other.key"
    os.replace(key, other)
    if kind == "fifo":
        os.mkfifo(key)
    elif kind == "directory":
        key.mkdir()
    elif kind == "device":
        key.symlink_to("/dev/zero")
    else:
        other.chmod(0o644)
        key.symlink_to(other)
    lines = site.problems(BASE)
    assert len(lines) == 1 and lines[0].startswith("tls.private_key: "), lines


def test_held_a_pattern_written_with_capitals_and_a_dot_is_still_shadowed(site: Site) -> None:
    text = BASE + route("a", '"*"') + route("b", '"Clinique-B.Test."')
    assert site.problems(text) == [
        'routes[1].domains[0]: "clinique-b.test" is never used: routes[0] "a" matches it first'
        " (first match wins)"
    ]
