"""Running init again never overwrites a key, keeps sound certificates, completes the rest."""

from __future__ import annotations

import multiprocessing.synchronize
import os
import shutil
import stat
from pathlib import Path

import pytest
from cryptography import x509

from gateway.pki.dev import DevPki, init_dev_pki, load_dev_pki
from gateway.pki.files import create_private_file, ensure_private_dir, replace_file
from tests.pki.conftest import openssl_verify
from tests.together import FORK, exit_codes

ONE_USER = ("alice.martin@chu-a.test",)
NEW_USER = "bruno.petit@chu-a.test"
SERVER = ("mx.chu-a.test",)


def snapshot(directory: Path) -> dict[Path, tuple[bytes, int]]:
    """Bytes and mtime (ns) of every file under ``directory``."""
    return {
        p: (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module", params=[False, True], ids=["rsa", "ec"])
def pristine_pki(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Made once per key type (RSA keygen is slow); tests work on copies."""
    directory = tmp_path_factory.mktemp("pristine") / "pki"
    init_dev_pki(directory, ONE_USER, SERVER, ec=request.param)
    return directory


@pytest.fixture
def small_pki(pristine_pki: Path, tmp_path: Path) -> DevPki:
    copy = tmp_path / "pki"
    shutil.copytree(pristine_pki, copy)  # copy2: modes and mtimes preserved
    return load_dev_pki(copy)


def test_second_run_changes_nothing(small_pki: DevPki) -> None:
    before = snapshot(small_pki.directory)
    again = init_dev_pki(small_pki.directory, ONE_USER, SERVER)
    assert snapshot(small_pki.directory) == before
    assert {c.action for c in again.changes} == {"kept"}
    kept = {c.path for c in again.changes}
    assert {p for p in before if p.suffix in (".key", ".crt", ".crl")} <= kept


def test_a_user_added_later_gets_only_their_certificates(small_pki: DevPki) -> None:
    before = snapshot(small_pki.directory)
    grown = init_dev_pki(small_pki.directory, (*ONE_USER, NEW_USER), SERVER)
    after = snapshot(small_pki.directory)
    created = {c.path for c in grown.changes if c.action == "created"}
    users = small_pki.directory / "users"
    assert created == {
        users / f"{NEW_USER}.{p}.{s}" for p in ("sign", "enc") for s in ("crt", "key")
    }
    changed = {p for p in before if after[p] != before[p]}
    # only the CA index records the new issuance; keys, certificates and CRLs are untouched
    assert changed == {small_pki.directory / "personnes.index.json"}
    result = openssl_verify(grown, grown.user_cert(NEW_USER, "enc"), crl_check=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_missing_certificate_is_reissued_for_the_existing_key(small_pki: DevPki) -> None:
    cert_path = small_pki.user_cert(ONE_USER[0], "enc")
    key_path = small_pki.user_key(ONE_USER[0], "enc")
    old = x509.load_pem_x509_certificate(cert_path.read_bytes())
    key_before = (key_path.read_bytes(), key_path.stat().st_mtime_ns)
    cert_path.unlink()

    again = init_dev_pki(small_pki.directory, ONE_USER, SERVER)

    new = x509.load_pem_x509_certificate(cert_path.read_bytes())
    assert (key_path.read_bytes(), key_path.stat().st_mtime_ns) == key_before
    assert new.public_key() == old.public_key()
    assert new.serial_number != old.serial_number
    assert ("created", cert_path) in {(c.action, c.path) for c in again.changes}


def test_lost_intermediate_certificate_is_reissued_and_old_leaves_still_verify(
    small_pki: DevPki,
) -> None:
    (small_pki.directory / "personnes.crt").unlink()
    again = init_dev_pki(small_pki.directory, ONE_USER, SERVER)
    # same key and name: certificates issued before still chain to the new CA certificate
    result = openssl_verify(again, again.user_cert(ONE_USER[0], "sign"), crl_check=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_loose_key_mode_is_tightened_without_touching_its_bytes(small_pki: DevPki) -> None:
    key_path = small_pki.server_key(SERVER[0])
    os.chmod(key_path, 0o644)
    before = (key_path.read_bytes(), key_path.stat().st_mtime_ns)
    again = init_dev_pki(small_pki.directory, ONE_USER, SERVER)
    assert stat.S_IMODE(key_path.stat().st_mode) == 0o600
    assert (key_path.read_bytes(), key_path.stat().st_mtime_ns) == before
    assert ("tightened", key_path) in {(c.action, c.path) for c in again.changes}


def test_a_missing_crl_is_rewritten_with_a_higher_number(small_pki: DevPki) -> None:
    crl_path = small_pki.crl("serveurs")
    old = x509.load_pem_x509_crl(crl_path.read_bytes())
    crl_path.unlink()
    init_dev_pki(small_pki.directory, ONE_USER, SERVER)
    new = x509.load_pem_x509_crl(crl_path.read_bytes())
    numbers = [c.extensions.get_extension_for_class(x509.CRLNumber).value for c in (old, new)]
    assert all(isinstance(n, x509.CRLNumber) for n in numbers)
    assert [n.crl_number for n in numbers if isinstance(n, x509.CRLNumber)] == [1, 2]


def test_loose_directory_is_tightened(tmp_path: Path) -> None:
    directory = tmp_path / "pki"
    directory.mkdir(mode=0o755)
    os.chmod(directory, 0o755)  # noqa: S103 (the loose mode under test)
    init_dev_pki(directory, (), (), ec=True)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700


# ------------------------------------------------------------- files.py
def _make_private_dir(path: str, start: multiprocessing.synchronize.Barrier) -> None:
    start.wait()
    ensure_private_dir(Path(path))


def test_processes_creating_one_private_dir_at_once_all_succeed(tmp_path: Path) -> None:
    """Workers starting together create the same spool directories; the loser of the
    ``mkdir`` race used to raise ``FileExistsError`` and exit."""
    for attempt in range(10):
        target = tmp_path / str(attempt) / "stage" / "tmp"
        start = FORK.Barrier(4)
        makers = [
            FORK.Process(target=_make_private_dir, args=(str(target), start)) for _ in range(4)
        ]
        assert exit_codes(makers) == [0, 0, 0, 0]
        assert stat.S_IMODE(target.stat().st_mode) == 0o700


def test_create_private_file_never_overwrites_nor_follows_symlinks(tmp_path: Path) -> None:
    target = tmp_path / "k.key"
    assert create_private_file(target, b"first")
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert not create_private_file(target, b"second")
    assert target.read_bytes() == b"first"
    planted = tmp_path / "planted.key"
    elsewhere = tmp_path / "elsewhere"
    planted.symlink_to(elsewhere)
    assert not create_private_file(planted, b"secret")
    assert not elsewhere.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_replace_file_is_atomic_and_sets_the_mode(tmp_path: Path) -> None:
    target = tmp_path / "c.crt"
    replace_file(target, b"one")
    replace_file(target, b"two")
    assert target.read_bytes() == b"two"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["c.crt"]
