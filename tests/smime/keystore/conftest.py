"""Fixtures of the key store tests: one RSA development PKI for the module's tests
(they issue odd certificates into it) and a validator that trusts it."""

from __future__ import annotations

import pytest

from gateway.pki.dev import DevPki
from gateway.smime.validate import CertificateValidator
from tests.smime.keystore.support import make_pki


@pytest.fixture(scope="session")
def ks_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_pki(tmp_path_factory.mktemp("keystore-pki"))


@pytest.fixture
def validator(ks_pki: DevPki) -> CertificateValidator:
    """Trusts the PKI's root; CRL files (re-read when they change), hard-fail."""
    return CertificateValidator.from_files(
        [ks_pki.root_cert],
        [ks_pki.intermediates],
        [ks_pki.crl("personnes"), ks_pki.crl("root")],
        "hard-fail",
    )
