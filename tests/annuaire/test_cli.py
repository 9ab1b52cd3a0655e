"""``missive annuaire search|lookup|import`` through ``gateway.cli.main``."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

import gateway.cli
from annuaire.mapping import entry_dn, entry_to_attributes
from annuaire.model import Entry, Mailbox
from gateway.pki.demo import install_demo_keys
from gateway.pki.dev import DevPki, load_dev_pki
from tests.annuaire.conftest import der_of
from tests.annuaire.directories import write_ldif
from tests.annuaire.samples import ATTRIBUTES, helene, marc
from tests.config.support import BASE, REPOSITORY

ALICE = "alice.martin@chu-a.test"


@pytest.fixture
def site(tmp_path: Path, dev_pki: DevPki) -> Iterator[Path]:
    """conf/missive.toml (LDIF annuaire) over a copy of the session's dev PKI."""
    (tmp_path / "conf").mkdir()
    shutil.copy(REPOSITORY / "conf" / "users.toml", tmp_path / "conf" / "users.toml")
    var = tmp_path / "var"
    shutil.copytree(dev_pki.directory, var / "pki")
    pki = load_dev_pki(var / "pki")
    install_demo_keys(pki, var / "keys", [ALICE])
    expired = pki.issue_user(
        ALICE,
        "enc",
        not_before=datetime.now(UTC) - timedelta(days=90),
        not_after=datetime.now(UTC) - timedelta(days=1),
        path=tmp_path / "expired.crt",
    )
    alice = Entry(
        key="899900000001",
        kind="person",
        national_id="899900000001",
        display_name="Alice Martin",
        given_name="Alice",
        surname="Martin",
        specialty_label="Cardiologie",
        city="Ville-A",
        postal_code="99001",
        mailboxes=(Mailbox(ALICE),),
        certificates=(
            der_of(pki.user_cert(ALICE, "sign")),
            der_of(pki.user_cert(ALICE, "enc")),
            der_of(expired),
        ),
    )
    records = [
        (entry_dn(e, "ou=personnes,dc=annuaire,dc=test"), entry_to_attributes(e, ATTRIBUTES))
        for e in (alice, helene(), marc())
    ]
    write_ldif(var / "annuaire.ldif", records)
    (tmp_path / "conf" / "missive.toml").write_text(BASE, encoding="utf-8")
    yield tmp_path


def run(site: Path, *argv: str) -> int:
    return gateway.cli.main([*argv, "--config", str(site / "conf" / "missive.toml")])


def test_search_json(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(site, "annuaire", "search", "--name", "hél", "--json") == 0
    page = json.loads(capsys.readouterr().out)
    assert (page["total"], page["page"], page["pages"], page["truncated"]) == (1, 1, 1, False)
    (entry,) = page["entries"]
    assert entry["display_name"] == "Hélène L'Œuvre-Dupré"
    assert entry["mailboxes"][1] == {"address": "cardio.secretariat@chu-a.test", "type": "CAB"}
    assert entry["specialty"] == {"code": "SM04", "label": "Cardiologie et maladies vasculaires"}


def test_search_text_and_pages(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        run(site, "annuaire", "search", "--postcode", "990", "--page-size", "2", "--page", "2") == 0
    )
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "3 result(s), page 2/2"
    assert out[1].startswith("Martin, Marc — Médecin · Médecine générale — 99002 Ville-B — ")
    assert run(site, "annuaire", "search", "--specialty", "cardio", "--city", "ville a") == 0
    assert "Martin, Alice" in capsys.readouterr().out


def test_search_without_result_is_a_negative_answer(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(site, "annuaire", "search", "--name", "*)(cn=*") == 1
    assert capsys.readouterr().out.strip() == "no entry matches"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["annuaire", "search"], "give at least one criterion"),
        (["annuaire", "search", "--name", "x", "--page", "0"], "page numbers start at 1"),
        (["annuaire", "search", "--name", "x", "--page-size", "500"], "page size"),
    ],
)
def test_search_usage_errors(
    site: Path, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
) -> None:
    assert run(site, *argv) == 2
    captured = capsys.readouterr()
    assert message in captured.err and "Traceback" not in captured.err


def test_lookup_shows_each_certificate(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(site, "annuaire", "lookup", "Alice.Martin+cardio@chu-a.test") == 0
    out = capsys.readouterr().out
    assert out.startswith(
        "address: alice.martin+cardio@chu-a.test\nentry: Martin, Alice — Cardiologie"
    )
    assert "certificates: 3" in out
    lines = [line for line in out.splitlines() if line.startswith("  [")]
    assert lines[0].startswith("  [valid] encrypt serial ")
    assert sorted(line.split("]")[0] for line in lines[1:]) == ["  [expired", "  [wrong-usage"]
    assert "from annuaire:address" in lines[0] and "notAfter 20" in lines[0]
    assert "subject " in out and "result: 1 valid encryption certificate(s)" in out


def test_lookup_json(site: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(site, "annuaire", "lookup", ALICE, "--json") == 0
    result = json.loads(capsys.readouterr().out)
    assert result["found"] and result["entry"]["national_id"] == "899900000001"
    validity = {
        c["purpose"]: c["validity"] for c in result["certificates"] if c["validity"] != "expired"
    }
    assert validity == {"encrypt": "valid", "sign": "wrong-usage"}
    assert all(
        {"subject", "serial", "not_after", "source", "reason"} <= set(c)
        for c in result["certificates"]
    )


@pytest.mark.parametrize("address", ["nobody@chu-a.test", "*", "*)(mail=*", "x" * 10000])
def test_lookup_without_certificate(
    site: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    assert run(site, "annuaire", "lookup", address) == 1
    captured = capsys.readouterr()
    assert "result: no valid encryption certificate" in captured.out
    assert captured.err == ""


def test_an_unreachable_ldap_directory_is_a_clear_error(
    site: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = site / "conf" / "missive.toml"
    from tests.peers.ports import free_port

    config.write_text(
        BASE + f'\n[annuaire]\nbackend = "ldap"\nurl = ["ldap://127.0.0.1:{free_port()}"]\n'
    )
    assert run(site, "annuaire", "lookup", ALICE) == 2
    err = capsys.readouterr().err
    assert err.startswith("annuaire: no LDAP server answered\n") and "Traceback" not in err
    assert run(site, "annuaire", "search", "--name", "x") == 2


def test_import_is_registered(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as caught:
        gateway.cli.main(["annuaire", "import", "--help"])
    assert caught.value.code == 0
    assert "import" in capsys.readouterr().out


def test_import_without_the_importers_says_so(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "annuaire.importers.cli", None)
    assert gateway.cli.main(["annuaire", "import", "--format", "mssante", "x.txt"]) == 2
    assert "importers (annuaire.importers.cli) are not installed" in capsys.readouterr().err
