"""Fixtures of the configuration tests: a development PKI and a site directory.

A *site* is a temporary copy of the repository layout the embedded default expects
(``conf/`` and ``var/``): ``var/pki`` holds a P-256 development PKI (fast to make,
``gateway.pki.dev``), ``var/annuaire.ldif`` a stub LDIF and ``conf/users.toml`` the
shipped sample. Each test writes its own ``conf/missive.toml``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from gateway.pki.demo import install_demo_keys
from gateway.pki.dev import DevPki, init_dev_pki
from tests.config.support import LOCAL_USER, REPOSITORY, Site


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """One P-256 dev PKI for the session (read-only for tests: they copy it)."""
    directory = tmp_path_factory.mktemp("config-pki") / "pki"
    return init_dev_pki(directory, users=(LOCAL_USER,), servers=("mx.chu-a.test",), ec=True)


@pytest.fixture
def site(tmp_path: Path, pki: DevPki) -> Site:
    """A fresh site: ``conf/users.toml``, ``var/pki``, ``var/annuaire.ldif``, ``var/keys``."""
    (tmp_path / "conf").mkdir()
    shutil.copy(REPOSITORY / "conf" / "users.toml", tmp_path / "conf" / "users.toml")
    var = tmp_path / "var"
    shutil.copytree(pki.directory, var / "pki")
    (var / "annuaire.ldif").write_text("dn: dc=annuaire,dc=test\nobjectClass: domain\n")
    install_demo_keys(pki, var / "keys", [LOCAL_USER])
    return Site(tmp_path)
