"""``missive annuaire import`` through ``gateway.cli.main``: output, exit status, errors."""

from __future__ import annotations

import io
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

import gateway.cli
from annuaire.importers.progress import TerminalProgress
from annuaire.importers.synthetic import write_extract
from gateway.pki.dev import DevPki
from tests.annuaire.conftest import INDEXES, SCHEMA_FILE
from tests.annuaire.importers.support import (
    BASE_DN,
    mssante_row,
    read_entries,
    rpps_id,
    write_mssante,
)
from tests.config.support import BASE, REPOSITORY
from tests.peers.slapd import ROOT_DN, ROOT_PASSWORD, SlapdInstance


@pytest.fixture(autouse=True)
def annuaire_command(monkeypatch: pytest.MonkeyPatch) -> None:
    """Register ``annuaire`` even before gateway/cli.py lists it in COMMANDS."""
    if "annuaire.cli" not in gateway.cli.COMMANDS:
        monkeypatch.setattr(gateway.cli, "COMMANDS", (*gateway.cli.COMMANDS, "annuaire.cli"))


@pytest.fixture
def extract(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A 400-row synthetic MSSanté extract with 3 bad rows; cwd is an empty directory."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    path = work / "extract.txt"
    with path.open("wb") as stream:
        write_extract(stream, "mssante", 400, seed=4, bad_rows=3)
    return path


def site(root: Path, dev_pki: DevPki, annuaire: str) -> Path:
    """conf/missive.toml: the base test configuration plus an ``[annuaire]`` section."""
    (root / "conf").mkdir(parents=True)
    shutil.copy(REPOSITORY / "conf" / "users.toml", root / "conf" / "users.toml")
    shutil.copytree(dev_pki.directory, root / "var" / "pki")
    config = root / "conf" / "missive.toml"
    config.write_text(BASE + "\n[annuaire]\n" + annuaire, encoding="utf-8")
    return config


def test_import_to_ldif(extract: Path, capsys: pytest.CaptureFixture[str]) -> None:
    output = extract.parent / "annuaire.ldif"
    argv = ["annuaire", "import", "--format", "mssante", str(extract), "--to", f"ldif:{output}"]
    assert gateway.cli.main([*argv, "--jobs", "1"]) == 0
    captured = capsys.readouterr()
    summary = captured.out.strip()
    entries = read_entries(output)
    assert summary == (
        f"mssante {extract} -> ldif:{output}: 400 rows, 3 skipped; "
        f"{len(entries)} imported, 0 failed"
    )
    problems = captured.err.splitlines()
    assert len(problems) == 3 and all(p.startswith(f"{extract}:") for p in problems)
    assert all(": skipped: " in p for p in problems)
    assert "\r" not in captured.err  # no progress line when stderr is not a terminal
    assert all(dn.endswith(",ou=people,dc=annuaire,dc=test") for dn in entries)
    first = output.read_bytes()
    assert (
        gateway.cli.main([*argv, "--jobs", "2", "--base-dn", "ou=people,dc=annuaire,dc=test"]) == 0
    )
    assert output.read_bytes() == first


def test_base_dn_and_attributes_come_from_the_configuration(
    extract: Path, tmp_path: Path, dev_pki: DevPki, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site(tmp_path / "site", dev_pki, 'base_dn = "ou=pros,dc=sante,dc=test"\n')
    output = extract.parent / "out.ldif"
    argv = ["annuaire", "import", "--format", "mssante", str(extract), "--to", f"ldif:{output}"]
    assert gateway.cli.main([*argv, "--config", str(config)]) == 0
    assert all(dn.endswith(",ou=pros,dc=sante,dc=test") for dn in read_entries(output))
    assert gateway.cli.main([*argv, "--config", str(config), "--base-dn", BASE_DN]) == 0
    assert all(dn.endswith(f",{BASE_DN}") for dn in read_entries(output))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (
            ["--format", "mssante", "missing.txt", "--to", "ldif:x.ldif"],
            "missing.txt: no such file",
        ),
        (["--format", "mssante", "extract.txt", "--to", "csv:x"], "expected ldif:OUT or ldap"),
        (["--format", "mssante", "extract.txt", "--to", "ldif:"], "expected ldif:OUT or ldap"),
        (["--format", "rpps", "extract.txt", "--to", "ldif:x.ldif"], "not an RPPS file"),
        (
            ["--format", "mssante", "extract.txt", "--to", "ldif:x.ldif", "--base-dn", "pas un DN"],
            "not a valid DN",
        ),
        (
            ["--format", "mssante", "extract.txt", "--to", "ldif:no/such/dir/x.ldif"],
            "does not exist",
        ),
        (
            ["--format", "mssante", "extract.txt", "--to", "ldif:x.ldif", "--work-dir", "nowhere"],
            "is not a directory",
        ),
        (["--format", "mssante", "extract.txt", "--to", "ldap"], "conf/missive.toml"),
        (
            ["--format", "mssante", "extract.txt", "--to", "ldif:x.ldif", "--config", "nope.toml"],
            "nope.toml",
        ),
    ],
)
def test_usage_errors(
    extract: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], message: str
) -> None:
    assert gateway.cli.main(["annuaire", "import", *arguments]) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err
    assert not (extract.parent / "x.ldif").exists()


def test_a_bad_annuaire_section_is_a_configuration_error(
    extract: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = extract.parent / "bad.toml"
    config.write_text('[annuaire]\nbase_dn = "pas un DN"\nbogus = 1\n', encoding="utf-8")
    argv = ["annuaire", "import", "--format", "mssante", str(extract), "--to", "ldif:x.ldif"]
    assert gateway.cli.main([*argv, "--config", str(config)]) == 2
    err = capsys.readouterr().err.splitlines()
    assert any(line.startswith("bad.toml: annuaire.base_dn: ") for line in err)
    assert "bad.toml: annuaire.bogus: unknown key" in err


def test_bad_jobs_value_is_a_usage_error(extract: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [
        "annuaire",
        "import",
        "--format",
        "mssante",
        str(extract),
        "--to",
        "ldif:x",
        "--jobs",
        "0",
    ]
    with pytest.raises(SystemExit) as exited:
        gateway.cli.main(argv)
    assert exited.value.code == 2
    assert "--jobs" in capsys.readouterr().err


def test_ldap_target_needs_a_bind_dn(
    extract: Path, tmp_path: Path, dev_pki: DevPki, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site(tmp_path / "site", dev_pki, 'backend = "ldap"\nurl = ["ldap://127.0.0.1:1/"]\n')
    argv = ["annuaire", "import", "--format", "mssante", str(extract), "--to", "ldap"]
    assert gateway.cli.main([*argv, "--config", str(config)]) == 2
    assert "writing needs a bind DN with write rights" in capsys.readouterr().err


def ldap_site(root: Path, dev_pki: DevPki, slapd: SlapdInstance) -> Path:
    secret = root / "bind.secret"
    root.mkdir()
    secret.write_text(ROOT_PASSWORD + "\n", encoding="utf-8")
    secret.chmod(0o600)
    return site(
        root / "site",
        dev_pki,
        f'backend = "ldap"\nurl = ["{slapd.url}"]\nbase_dn = "{BASE_DN}"\n'
        f'bind_dn = "{ROOT_DN}"\nbind_password_file = "{secret}"\n',
    )


@pytest.mark.peer
def test_import_into_ldap_then_rerun(
    extract: Path,
    tmp_path: Path,
    dev_pki: DevPki,
    annuaire_slapd_factory: Callable[..., SlapdInstance],
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = ldap_site(tmp_path / "ldap", dev_pki, annuaire_slapd_factory())
    argv = ["annuaire", "import", "--format", "mssante", str(extract), "--to", "ldap"]
    assert gateway.cli.main([*argv, "--config", str(config)]) == 0
    first = capsys.readouterr().out
    assert " imported (" in first and " added), 0 failed" in first and "unchanged" not in first
    assert gateway.cli.main([*argv, "--config", str(config)]) == 0
    second = capsys.readouterr().out
    assert " unchanged), 0 failed" in second and "added" not in second


@pytest.mark.peer
def test_refused_entries_make_the_exit_status_1(
    tmp_path: Path,
    dev_pki: DevPki,
    slapd_factory: Callable[..., SlapdInstance],
    capsys: pytest.CaptureFixture[str],
) -> None:
    slapd = slapd_factory(
        extra_schemas=[SCHEMA_FILE],
        extra_config=(
            *INDEXES,
            "moduleload constraint",
            "overlay constraint",
            'constraint_attribute postalCode regex "^[0-9]{5}$"',
        ),
    )
    config = ldap_site(tmp_path / "ldap", dev_pki, slapd)
    rows = [
        mssante_row(
            type="PER", address="a@medecin.mssante.test", national_id=rpps_id(1), postcode="29200"
        ),
        mssante_row(
            type="PER", address="b@medecin.mssante.test", national_id=rpps_id(2), postcode="GL50"
        ),
    ]
    source = write_mssante(tmp_path / "extract.txt", rows)
    argv = ["annuaire", "import", "--format", "mssante", str(source), "--to", "ldap"]
    assert gateway.cli.main([*argv, "--config", str(config)]) == 1
    captured = capsys.readouterr()
    assert captured.out.strip().endswith("1 imported (1 added), 1 failed")
    assert f"{source}:3: entry '{rpps_id(2)}' not written: add refused: constraintViolation" in (
        captured.err
    )


def test_progress_line_is_redrawn_and_erased() -> None:
    stream = io.StringIO()
    progress = TerminalProgress(stream, total_bytes=1000, interval=0)
    progress.reading(500, 1200)
    progress.writing(42)
    progress.clear()
    text = stream.getvalue()
    assert "\rreading  50%  1,200 rows" in text
    assert "\rwriting 42 entries" in text
    assert text.endswith("\r" + " " * len("reading  50%  1,200 rows") + "\r")
