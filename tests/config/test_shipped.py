"""The shipped ``conf/missive.toml``: valid once var/ exists, documented, as the brief says."""

from __future__ import annotations

import re
import shutil
import tomllib
from typing import Any

import pytest

from gateway.cli import main
from gateway.config import DeliverTo, HostPort, model, schema
from gateway.config.loader import check_config
from gateway.pki.demo import install_organisation_key
from gateway.pki.dev import DevPki
from tests.config.support import REPOSITORY, Site

SHIPPED = REPOSITORY / "conf" / "missive.toml"


@pytest.fixture
def shipped(site: Site, pki: DevPki) -> Site:
    """The site with the repository's conf/missive.toml copied in and, as
    ``certs init-dev --keys-dir`` makes it, the organisation signing key."""
    shutil.copy(SHIPPED, site.config)
    install_organisation_key(pki, site.path("var/keys"), "chu-a.test")
    return site


def test_shipped_config_validates(shipped: Site) -> None:
    config = check_config(shipped.config)
    root = shipped.root
    assert config.gateway.home == root
    assert config.gateway.hostname == "mx.chu-a.test"
    assert config.gateway.local_domains == ("chu-a.test",)
    assert [(lis.name, lis.address, lis.kind, lis.tls) for lis in config.listeners] == [
        ("submission", HostPort("127.0.0.1", 2587), "submission", "starttls"),
        ("submissions", HostPort("127.0.0.1", 2465), "submission", "implicit"),
        ("mx", HostPort("127.0.0.1", 2525), "relay", "starttls"),
    ]
    assert config.tls.certificate == root / "var/pki/mx.chu-a.test.crt"
    assert config.trust.crls == tuple(
        root / "var/pki" / name for name in ("root.crl", "personnes.crl", "serveurs.crl")
    )
    assert config.annuaire.ldif == root / "var/annuaire.ldif"
    assert config.keys.dir == root / "var/keys"
    assert config.keys.organisation_signing == root / "var/keys/organisation/sign.pem"
    assert config.gateway.spool_dir == root / "var/spool"
    assert config.audit.path == root / "var/audit.sqlite"
    assert config.inbound.deliver_to == DeliverTo("maildir", path=root / "var/mail")
    clinique = config.route_for("clinique-b.test")
    assert clinique is not None
    assert (clinique.next_hop, clinique.tls, clinique.tls_name) == (
        HostPort("127.0.0.1", 2526),
        "verify",
        "mx.clinique-b.test",
    )
    default = config.route_for("anything.test")
    assert default is not None and default.transport == "reject"


def test_shipped_config_through_the_cli(shipped: Site, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["check-config", str(shipped.config)]) == 0
    assert capsys.readouterr().out == "OK\n"


def test_shipped_config_without_var_names_the_missing_files(site: Site) -> None:
    shutil.copy(SHIPPED, site.config)
    shutil.rmtree(site.path("var"))
    lines = site.problems(site.config.read_text())
    assert any(line.startswith("tls.certificate: file ") for line in lines)
    assert any(line.startswith("annuaire.ldif: file ") for line in lines)


def _keys_in(document: dict[str, Any], cls: type[Any]) -> set[str]:
    return set(document) & set(schema.keys_of(cls))


def test_every_key_is_in_the_shipped_file() -> None:
    """conf/missive.toml shows every key (imap_fetch as a commented example)."""
    text = SHIPPED.read_text()
    document = tomllib.loads(text)
    sections = {
        name: spec.cls
        for name in schema.keys_of(model.Config)
        if isinstance(
            spec := model.Config.__dataclass_fields__[name].metadata[schema.SPEC], schema.Section
        )
    }
    for name, cls in sections.items():
        assert _keys_in(document[name], cls) | {"imap_fetch", "attributes"} >= set(
            schema.keys_of(cls)
        ), name
    for array, cls in (("listeners", model.Listener), ("routes", model.Route)):
        union = set().union(*(set(entry) for entry in document[array]))
        assert union == set(schema.keys_of(cls)), array
    for key in schema.keys_of(model.ImapFetch):
        assert re.search(rf"^# {key} = ", text, re.MULTILINE), key


def test_every_line_is_commented() -> None:
    """Each key line of the shipped file carries its own comment."""
    for number, line in enumerate(SHIPPED.read_text().splitlines(), start=1):
        if re.match(r"^[a-z_]+ = ", line):
            assert "#" in line, f"line {number} has no comment: {line}"
