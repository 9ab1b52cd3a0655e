"""``missive certs init-dev``: output, idempotence, exit codes, no tracebacks."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from gateway import cli
from gateway.pki.dev import load_dev_pki
from tests.pki.conftest import openssl_verify


def run(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def test_defaults_then_rerun_keeps_everything(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pki_dir, ldif, keys = tmp_path / "pki", tmp_path / "annuaire.ldif", tmp_path / "keys"
    options = ("--demo-annuaire", ldif, "--keys-dir", keys)
    status, out, err = run(capsys, "certs", "init-dev", pki_dir, *options)
    assert (status, err) == (0, "")
    assert f"created    {pki_dir / 'users' / 'claire.durand@clinique-b.test.enc.key'}" in out
    assert f"created    {pki_dir / 'mx.clinique-b.test.crt'}" in out
    assert f"created    {ldif}" in out
    assert sorted(p.name for p in keys.iterdir()) == [
        "alice.martin@chu-a.test.enc.pem",
        "alice.martin@chu-a.test.sign.pem",
        "bruno.petit@chu-a.test.enc.pem",
        "bruno.petit@chu-a.test.sign.pem",
        "organisation",
    ]
    assert [p.name for p in (keys / "organisation").iterdir()] == ["sign.pem"]
    pki = load_dev_pki(pki_dir)
    assert not pki.ec
    result = openssl_verify(pki, pki.server_cert("mx.chu-a.test"), crl_check=True)
    assert result.returncode == 0, result.stdout + result.stderr

    status, out, err = run(capsys, "certs", "init-dev", pki_dir, *options)
    assert (status, err) == (0, "")
    assert {line.split()[0] for line in out.splitlines()} == {"kept"}


def test_chosen_users_servers_ec_and_urls(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pki_dir, keys = tmp_path / "pki", tmp_path / "keys"
    status, _, err = run(
        capsys, "certs", "init-dev", pki_dir, "--ec",
        "--user", "zoe.blanc@hopital-c.test", "--user", "yann.noir@ailleurs.test",
        "--server", "mx.hopital-c.test", "--crl-base-url", "http://127.0.0.1:8080/pki/",
        "--ocsp-url", "http://127.0.0.1:8081", "--keys-dir", keys,
        "--local-domain", "hopital-c.test",
    )  # fmt: skip
    assert (status, err) == (0, "")
    pki = load_dev_pki(pki_dir)
    assert pki.ec
    assert pki.settings.crl_base_url == "http://127.0.0.1:8080/pki"
    assert pki.users() == ["yann.noir@ailleurs.test", "zoe.blanc@hopital-c.test"]
    assert pki.server_cert("mx.hopital-c.test").exists()
    assert not (pki_dir / "mx.chu-a.test.crt").exists()
    assert sorted(p.name for p in keys.iterdir()) == [
        "organisation",
        "zoe.blanc@hopital-c.test.enc.pem",
        "zoe.blanc@hopital-c.test.sign.pem",
    ]
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--user", "not an address"), "not a usable mail address"),
        (("--server", "mx"), "not a usable host name"),
        (("--crl-base-url", "ftp://x.test/crl"), "--crl-base-url: need an http"),
        (("--ocsp-url", "nonsense"), "--ocsp-url: need an http"),
    ],
)
def test_bad_arguments_exit_2_with_one_clear_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, extra: tuple[str, ...], message: str
) -> None:
    status, out, err = run(capsys, "certs", "init-dev", tmp_path / "pki", "--ec", *extra)
    assert status == 2
    assert message in err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "pki").exists()  # checked before anything is written


def test_settings_mismatch_exits_2(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pki_dir = tmp_path / "pki"
    assert run(capsys, "certs", "init-dev", pki_dir, "--ec", "--user", "a.b@chu-a.test",
               "--server", "mx.chu-a.test")[0] == 0  # fmt: skip
    status, _, err = run(capsys, "certs", "init-dev", pki_dir, "--ocsp-url", "http://o.test")
    assert status == 2
    assert "was created with OCSP URL None" in err


def test_directory_that_is_a_file_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    status, _, err = run(capsys, "certs", "init-dev", not_a_dir, "--ec")
    assert status == 2
    assert str(not_a_dir) in err and "Traceback" not in err


def test_unwritable_annuaire_path_exits_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("x")
    status, _, err = run(
        capsys, "certs", "init-dev", tmp_path / "pki", "--ec", "--user", "a.b@chu-a.test",
        "--server", "mx.chu-a.test", "--demo-annuaire", blocker / "annuaire.ldif",
    )  # fmt: skip
    assert status == 2
    assert "blocker" in err and "Traceback" not in err


def test_missing_directory_argument_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["certs", "init-dev"])
    assert exit_info.value.code == 2
    assert "DIR" in capsys.readouterr().err
