"""Shared fixtures of the PKI tests: one RSA PKI per session (RSA keygen is the slow part),
plus an OpenSSL runner. Tests that mutate a PKI (revoke) only add their own certificates,
so they never change what other tests look at."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.pki.dev import DevPki, init_dev_pki
from tests.peers.procs import require_binary

SERVERS = ("mx.chu-a.test", "mx.clinique-b.test")
CRL_BASE_URL = "http://127.0.0.1:8080/pki"
OCSP_URL = "http://127.0.0.1:8081/ocsp"


@pytest.fixture(scope="session")
def rsa_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """The default PKI (demo users, two servers) with CRL and OCSP pointers."""
    return init_dev_pki(
        tmp_path_factory.mktemp("rsa") / "pki",
        servers=SERVERS,
        crl_base_url=CRL_BASE_URL,
        ocsp_url=OCSP_URL,
    )


@pytest.fixture(scope="session")
def ec_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    """A P-256 PKI without revocation pointers."""
    return init_dev_pki(tmp_path_factory.mktemp("ec") / "pki", ec=True)


def openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``openssl`` with ``args``; output captured as text."""
    binary = require_binary("openssl")
    command: Sequence[str] = [binary, *(str(a) for a in args)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command)} failed: {result.stdout}{result.stderr}")
    return result


def openssl_verify(
    pki: DevPki, *certs: Path, crl_check: bool = False
) -> subprocess.CompletedProcess[str]:
    """``openssl verify`` against the PKI's root and intermediates (and CRLs if asked)."""
    args: list[str | Path] = ["verify", "-CAfile", pki.root_cert, "-untrusted", pki.intermediates]
    if crl_check:
        args += ["-crl_check_all"]
        for name in ("root", "personnes", "serveurs"):
            args += ["-CRLfile", pki.crl(name)]
    return openssl(*args, *certs, check=False)


def purposes(cert: Path) -> dict[str, bool]:
    """``openssl x509 -purpose`` as a dict: ``{"S/MIME signing": True, ...}``."""
    output = openssl("x509", "-in", cert, "-noout", "-purpose").stdout
    table: dict[str, bool] = {}
    for line in output.splitlines():
        name, sep, answer = line.rpartition(" : ")
        if sep:
            table[name.strip()] = answer.strip() == "Yes"
    return table
