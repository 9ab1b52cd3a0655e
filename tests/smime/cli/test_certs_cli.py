"""``missive certs show`` and ``missive certs check`` through ``gateway.cli.main``."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki
from tests.config.support import BASE, REPOSITORY
from tests.smime.cli.conftest import Cli, trust_args
from tests.smime.keystore.support import ALICE, write_pem

FIELDS = (
    "subject", "issuer", "serial", "validity", "key", "key usage",
    "extended key usage", "subject alt names", "for",
)  # fmt: skip


def test_show_describes_and_validates(cli: Cli, cli_pki: DevPki) -> None:
    run = cli(
        "certs",
        "show",
        cli_pki.user_cert(ALICE, "enc"),
        cli_pki.server_cert("mx.chu-a.test"),
        *trust_args(cli_pki),
        "--crl",
        cli_pki.crl("serveurs"),
    )
    assert run.status == 0, run.err
    text = run.out.decode()
    blocks = text.split(f"{cli_pki.server_cert('mx.chu-a.test')} [")
    person, server = blocks[0], "".join(blocks[1:])
    for field in FIELDS:
        assert f"\n  {field}: " in person, field
    assert "  key: RSA 2048\n" in person
    assert "  key usage: keyEncipherment\n" in person
    assert "  extended key usage: emailProtection\n" in person
    assert f"  subject alt names: email:{ALICE}\n" in person
    assert "  for: encrypt\n" in person
    assert "  validation (encrypt): valid\n" in person
    assert "    revocation: confirmed good\n" in person
    assert "    chain: CN=Alice Martin" in person and "<- CN=AC RACINE MISSIVE DEV" in person
    assert "  for: TLS server, TLS client\n" in server
    assert "subject alt names: DNS:mx.chu-a.test, IP:127.0.0.1" in server
    assert "  for: certification authority\n" in server  # the chain's CA, second in the file


def test_show_without_trust_says_so(
    cli: Cli, cli_pki: DevPki, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no conf/missive.toml here
    run = cli("certs", "show", cli_pki.user_cert(ALICE, "sign"))
    assert run.status == 0
    assert b"  validation: not validated: no --anchors and no configuration\n" in run.out
    missing = cli("certs", "show", tmp_path / "absent.crt")
    assert missing.status == 2 and len(missing.err_lines) == 1


def _site(pki: DevPki, root: Path) -> Path:
    """A configuration whose every certificate comes from ``pki``; keys.dir with Alice."""
    (root / "conf").mkdir(parents=True)
    shutil.copy(REPOSITORY / "conf" / "users.toml", root / "conf" / "users.toml")
    shutil.copytree(pki.directory, root / "var" / "pki")
    (root / "var" / "annuaire.ldif").write_text("dn: dc=annuaire,dc=test\nobjectClass: domain\n")
    config = root / "conf" / "missive.toml"
    config.write_text(
        BASE.replace('"var/pki/serveurs.crl"]', '"var/pki/serveurs.crl", "var/pki/root.crl"]')
    )
    return config


def _import(cli: Cli, config: Path, cert: Path, tmp_path: Path) -> None:
    pem = write_pem(cert, tmp_path / f"{cert.name}.pem")
    run = cli("keys", "import", ALICE, pem, "--config", config)
    assert run.status == 0, run.err


def test_check_all_good_then_expiring(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    config = _site(cli_pki, tmp_path / "site")
    for purpose in ("sign", "enc"):
        _import(cli, config, cli_pki.user_cert(ALICE, purpose), tmp_path)
    run = cli("certs", "check", "--config", config)
    lines = run.out.decode().splitlines()
    assert run.status == 0, lines
    assert all(line.startswith("ok ") for line in lines), lines
    keys = [line.split(":")[0].split(None, 1)[1] for line in lines]
    for expected in (
        "tls.certificate (TLS server)",
        "tls.certificate (TLS client)",
        f"keys.dir {ALICE}.sign.pem",
        f"keys.dir {ALICE}.enc.pem",
        "trust.anchors[0]",
        "trust.intermediates[0]",
        "trust.crls[0]",
        "trust.crls[2]",
    ):
        assert expected in keys, (expected, keys)
    soon = datetime.now(UTC) + timedelta(days=10)
    expiring = cli_pki.issue_user(
        ALICE,
        "sign",
        not_before=datetime.now(UTC) - timedelta(minutes=10),
        not_after=soon,
        path=tmp_path / "soon" / "s.crt",
    )
    _import(cli, config, expiring, tmp_path)  # now the newest signing key, expiring soon
    warned = cli("certs", "check", "--config", config)
    assert warned.status == 1, warned.out.decode()
    (line,) = [line for line in warned.out.decode().splitlines() if line.startswith("warn")]
    assert ".sign.pem: CN=Alice Martin" in line and line.endswith("(9 days)"), line
    assert (
        f"ok   keys.dir {ALICE}.sign.pem: older key, superseded by a newer one"
        in warned.out.decode()
    )


def test_check_fails_on_a_revoked_key_and_bad_config(
    cli: Cli, cli_pki: DevPki, tmp_path: Path
) -> None:
    config = _site(cli_pki, tmp_path / "site")
    cert = cli_pki.issue_user(ALICE, "enc", path=tmp_path / "rev" / "e.crt")
    _import(cli, config, cert, tmp_path)
    cli_pki.revoke(cert)
    shutil.copy(cli_pki.crl("personnes"), tmp_path / "site" / "var" / "pki" / "personnes.crl")
    run = cli("certs", "check", "--config", config)
    assert run.status == 1
    (fail,) = [line for line in run.out.decode().splitlines() if line.startswith("FAIL")]
    assert fail.startswith("FAIL keys.dir ") and ": revoked (" in fail
    broken = cli("certs", "check", "--config", tmp_path / "nope.toml")
    assert broken.status == 2 and len(broken.err_lines) == 1
