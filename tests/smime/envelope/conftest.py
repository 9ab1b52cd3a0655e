"""Fixtures of the envelope tests (identities: ``tests.smime.envelope.identities``)."""

from __future__ import annotations

import pytest

from tests.smime.envelope.identities import EnvelopePki, shared_envelope_pki


@pytest.fixture(scope="session")
def envelope_pki(tmp_path_factory: pytest.TempPathFactory) -> EnvelopePki:
    return shared_envelope_pki(tmp_path_factory)
