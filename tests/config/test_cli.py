"""``missive check-config``: exit codes, one line per problem on stderr, never a traceback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.cli import main
from tests.config.support import BASE, Site, replace


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    status = main(["check-config", *args])
    out, err = capsys.readouterr()
    return status, out, err


def test_ok(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(capsys, str(site.write(BASE))) == (0, "OK\n", "")


def test_default_file_is_conf_missive_toml(
    site: Site, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    site.write(BASE)
    monkeypatch.chdir(site.root)
    assert run(capsys) == (0, "OK\n", "")
    site.config.unlink()
    status, out, err = run(capsys)
    assert (status, out) == (2, "")
    assert err == f"missive.toml: cannot read {site.config}: no such file\n"


def test_five_mistakes_give_five_lines(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    text = replace(
        BASE, 'hostname = "mx.chu-a.test"', 'hostnam = "mx.chu-a.test"\nhostname = "mx.chu-a.test"'
    )
    text = replace(text, 'kind = "relay"', 'kind = "relay"\ntls = "yes"')
    text = replace(text, 'address = "127.0.0.1:2587"', 'address = "0.0.0.0:2587"\ntls = "none"')
    text += '\n[delivery]\nmax_message_size = "50 parsecs"\n'
    os.chmod(site.path("var/pki/mx.chu-a.test.key"), 0o644)
    status, out, err = run(capsys, str(site.write(text)))
    key = site.path("var/pki/mx.chu-a.test.key")
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        "missive.toml: gateway.hostnam: unknown key",
        'missive.toml: listeners[1].tls: expected one of starttls|implicit|none, got "yes"',
        'missive.toml: delivery.max_message_size: expected a size like "50MB", "512KB" or bytes,'
        ' got "50 parsecs"',
        'missive.toml: listeners[0].tls: "none" is allowed only on a loopback address, not 0.0.0.0',
        f"missive.toml: tls.private_key: key file {key} is readable by group and others"
        " (mode 0644); chmod 600",
    ]


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\x00\xff\xfe garbage",
        b"[gateway\n",
        b"gateway = 1\nlisteners = 2\nroutes = { a = 1 }\n",
        b"[[gateway]]\n",
        b'[gateway]\nhome = "\\u0000"\n',
        b"x" * 100_000,
    ],
)
def test_bad_input_never_gives_a_traceback(
    site: Site, capsys: pytest.CaptureFixture[str], content: bytes
) -> None:
    site.config.write_bytes(content)
    status, out, err = run(capsys, str(site.config))
    assert (status, out) == (2, "")
    assert err and "Traceback" not in err
    assert all(line.startswith("missive.toml: ") for line in err.splitlines())


def test_directory_as_config(site: Site, capsys: pytest.CaptureFixture[str]) -> None:
    status, out, err = run(capsys, str(site.root / "conf"))
    assert (status, out) == (2, "")
    assert err.startswith("conf: cannot read ") and err.count("\n") == 1


def test_usage_error_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as caught:
        main(["check-config", str(tmp_path / "a.toml"), "extra"])
    assert caught.value.code == 2
    assert "unrecognized arguments" in capsys.readouterr().err
