"""``missive keys import|list`` through ``gateway.cli.main``: round trip, bad inputs
(each one clear line on stderr, exit 2), never a password on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from gateway.pki.dev import DevPki
from tests.smime.cli.conftest import Cli
from tests.smime.keystore.support import ALICE, BRUNO, PASSWORD, write_p12, write_pem


def _secret(tmp_path: Path, value: bytes = PASSWORD) -> Path:
    path = tmp_path / "p12.secret"
    path.write_bytes(value + b"\n")
    path.chmod(0o600)
    return path


def test_import_then_list(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    p12 = write_p12(cli_pki, cli_pki.user_cert(ALICE, "enc"), tmp_path / "alice.p12")
    run = cli(
        "keys", "import", ALICE, p12, "--password-file", _secret(tmp_path), "--keys-dir", keys
    )
    assert (run.status, run.err) == (0, "")
    assert run.out.decode().split() == ["created", "enc", str(keys / f"{ALICE}.enc.pem")]
    pem = write_pem(cli_pki.user_cert(ALICE, "sign"), tmp_path / "alice-sign.pem")
    assert cli("keys", "import", ALICE, pem, "--keys-dir", keys).status == 0
    listing = cli("keys", "list", "--keys-dir", keys, "--json")
    assert listing.status == 0
    document = json.loads(listing.out)
    assert [(k["address"], k["purpose"], k["status"]) for k in document["keys"]] == [
        (ALICE, "enc", "current"),
        (ALICE, "sign", "current"),
    ]
    assert document["problems"] == []
    text = cli("keys", "list", "--keys-dir", keys)
    assert text.status == 0 and text.out.count(b"current") == 2


def test_password_from_stdin(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    p12 = write_p12(cli_pki, cli_pki.user_cert(BRUNO, "enc"), tmp_path / "bruno.p12")
    run = cli("keys", "import", BRUNO, p12, "--keys-dir", tmp_path / "keys", stdin=PASSWORD + b"\n")
    assert run.status == 0, run.err


def test_bad_inputs_exit_2_with_one_line(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    p12 = write_p12(cli_pki, cli_pki.user_cert(ALICE, "enc"), tmp_path / "alice.p12")
    wrong = cli(
        "keys",
        "import",
        ALICE,
        p12,
        "--password-file",
        _secret(tmp_path, b"nope"),
        "--keys-dir",
        keys,
    )
    assert (wrong.status, wrong.err_lines) == (2, [f"{p12}: wrong password for this PKCS#12 file"])
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x00\x01 not a key file")
    bad = cli("keys", "import", ALICE, junk, "--keys-dir", keys)
    assert (bad.status, bad.err_lines) == (
        2,
        [f"{junk} is neither a PEM nor a PKCS#12 (.p12/.pfx) file"],
    )
    missing = cli("keys", "import", ALICE, tmp_path / "absent.p12", "--keys-dir", keys)
    assert missing.status == 2 and len(missing.err_lines) == 1
    assert "does not exist" in missing.err
    other = cli(
        "keys", "import", BRUNO, p12, "--password-file", _secret(tmp_path), "--keys-dir", keys
    )
    assert other.status == 2 and other.err_lines == [
        f"{BRUNO} is not in the certificate's subjectAltName (addresses: {ALICE})"
    ]
    assert not keys.exists()  # nothing was written by any of them


def test_group_readable_key_in_store_is_reported(cli: Cli, cli_pki: DevPki, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    pem = write_pem(cli_pki.user_cert(ALICE, "sign"), tmp_path / "alice.pem")
    assert cli("keys", "import", ALICE, pem, "--keys-dir", keys).status == 0
    (keys / f"{ALICE}.sign.pem").chmod(0o640)
    run = cli("keys", "list", "--keys-dir", keys)
    assert run.status == 2
    assert run.err_lines == [
        f"key file {keys / f'{ALICE}.sign.pem'} is readable by its group (mode 0640); chmod 600"
    ]


def test_keys_dir_from_the_configuration_when_not_given(cli: Cli, tmp_path: Path) -> None:
    run = cli("keys", "list", "--config", tmp_path / "missing.toml")
    assert run.status == 2
    assert run.err_lines == [f"missing.toml: cannot read {tmp_path / 'missing.toml'}: no such file"]
