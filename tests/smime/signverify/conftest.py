"""Fixtures of the sign/verify unit tests: ``sv_pki`` (RSA, with the odd identities) and
``sv_ec_pki`` (P-256), made once per session (see ``identities``)."""

from __future__ import annotations

import pytest

from tests.smime.signverify.identities import SignPki, make_ec_pki, make_rsa_pki


@pytest.fixture(scope="session")
def sv_pki(tmp_path_factory: pytest.TempPathFactory) -> SignPki:
    return make_rsa_pki(tmp_path_factory.mktemp("sv-rsa"))


@pytest.fixture(scope="session")
def sv_ec_pki(tmp_path_factory: pytest.TempPathFactory) -> SignPki:
    return make_ec_pki(tmp_path_factory.mktemp("sv-ec"))
