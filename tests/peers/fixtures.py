"""pytest fixtures for the real peers: ``dev_pki``, ``slapd``, ``postfix_mx``, ``postfix_relay``,
``dovecot`` and their ``*_factory`` forms.

Registered by the root ``tests/conftest.py`` with ``pytest_plugins = ["tests.peers.fixtures"]``.

Invariants:
- Every instance a fixture starts is stopped by PID and its temp dir removed at teardown,
  also when the test failed; teardown of all instances runs even if one of them fails.
- When a test using peers fails, the tail of each peer's log is added to the failure
  report as a section ("peer log: ..."), so a failure explains itself.
- The peers use the session-wide development PKI (``gateway.pki.dev``): server
  certificates for ``mx.clinique-b.test`` (the remote MX), ``hospital.chu-a.test`` (the
  hospital relay), ``mx.chu-a.test`` (our gateway) and ``imap.chu-a.test`` (Dovecot); each
  names IP:127.0.0.1 too and carries serverAuth + clientAuth. The PKI dir is 0700 and
  that is fine: Postfix and Dovecot read certificates and keys as root before they drop
  privileges (checked: smtpd, the smtp client and Dovecot's config process).
- Peers are function-scoped: each test gets fresh, empty instances (start-up is tens of
  ms; stopping Dovecot takes about 1.1 s, its master's own shutdown).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from gateway.pki.dev import DevPki, init_dev_pki
from tests.peers.dovecot import DovecotInstance, create_dovecot, destroy_dovecot
from tests.peers.postfix import (
    PostfixInstance,
    TlsFiles,
    create_postfix_mx,
    create_postfix_relay,
    destroy_postfix,
)
from tests.peers.procs import make_temp_dir
from tests.peers.slapd import SlapdInstance, create_slapd, destroy_slapd

PEER_SERVERS = ("mx.clinique-b.test", "hospital.chu-a.test", "mx.chu-a.test", "imap.chu-a.test")
CA_BUNDLE_NAME = "ca-bundle.pem"

_PEER_LOGS = pytest.StashKey[list[Callable[[], tuple[str, str]]]]()


# -- TLS material ----------------------------------------------------------------------------


def ca_bundle(pki: DevPki) -> Path:
    """Root plus both intermediate CA certificates in one PEM file (written once, next to
    the PKI): the trust file peers use to verify each other."""
    bundle = pki.directory.parent / CA_BUNDLE_NAME
    if not bundle.exists():
        bundle.write_bytes(pki.root_cert.read_bytes() + pki.intermediates.read_bytes())
    return bundle


def tls_files(pki: DevPki, hostname: str) -> TlsFiles:
    """Certificate (leaf + chain), key and CA bundle for one of the dev PKI's servers."""
    return TlsFiles(pki.server_cert(hostname), pki.server_key(hostname), ca_bundle(pki))


@pytest.fixture(scope="session")
def dev_pki() -> Iterator[DevPki]:
    """A development PKI for the whole session (demo users and ``PEER_SERVERS``)."""
    directory = make_temp_dir("mv-pki-")
    try:
        yield init_dev_pki(directory / "pki", servers=PEER_SERVERS)
    finally:
        shutil.rmtree(directory)


# -- failure reports -------------------------------------------------------------------------


def _remember_log(request: pytest.FixtureRequest, title: str, read: Callable[[], str]) -> None:
    """Have ``read()`` quoted in the report if the test fails."""
    request.node.stash.setdefault(_PEER_LOGS, []).append(lambda: (title, read()))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.failed and call.when == "call":
        for describe in item.stash.get(_PEER_LOGS, []):
            title, text = describe()
            report.sections.append((f"peer log: {title}", text))
    return report


# -- slapd -----------------------------------------------------------------------------------


@pytest.fixture
def slapd_factory(request: pytest.FixtureRequest) -> Iterator[Callable[..., SlapdInstance]]:
    """``make(**kwargs)`` -> a started slapd (see ``create_slapd`` for the keywords:
    ``extra_schemas``, ``extra_config``, ``ldif``, ``base_entries``, ``start``)."""
    with ExitStack() as cleanup:

        def make(**kwargs: Any) -> SlapdInstance:
            instance = create_slapd(**kwargs)
            cleanup.callback(destroy_slapd, instance)
            _remember_log(request, f"slapd {instance.url}", instance.log)
            return instance

        yield make


@pytest.fixture
def slapd(slapd_factory: Callable[..., SlapdInstance]) -> SlapdInstance:
    """A running slapd for ``dc=annuaire,dc=test`` holding the suffix and ``ou=personnes``."""
    return slapd_factory()


# -- Postfix ---------------------------------------------------------------------------------


@pytest.fixture
def postfix_mx_factory(
    request: pytest.FixtureRequest, dev_pki: DevPki
) -> Iterator[Callable[..., PostfixInstance]]:
    """``make(tls=None, **kwargs)`` -> a started MX (see ``create_postfix_mx``); ``tls``
    defaults to the dev PKI's ``mx.clinique-b.test`` identity."""
    with ExitStack() as cleanup:

        def make(tls: TlsFiles | None = None, **kwargs: Any) -> PostfixInstance:
            identity = tls or tls_files(dev_pki, "mx.clinique-b.test")
            instance = create_postfix_mx(identity, **kwargs)
            cleanup.callback(destroy_postfix, instance)
            _remember_log(request, f"postfix MX :{instance.port}", instance.maillog)
            return instance

        yield make


@pytest.fixture
def postfix_mx(postfix_mx_factory: Callable[..., PostfixInstance]) -> PostfixInstance:
    """A running MX for clinique-b.test (catch-all Maildir), STARTTLS offered, client
    certificate asked for but not required."""
    return postfix_mx_factory()


@pytest.fixture
def postfix_relay(
    request: pytest.FixtureRequest, dev_pki: DevPki
) -> Iterator[Callable[..., PostfixInstance]]:
    """``make(next_hop, cert=None, key=None, ca=None, **kwargs)`` -> a started hospital
    relay sending everything to ``next_hop`` (``(host, port)``) over mandatory TLS with a
    client certificate; cert/key/ca default to the dev PKI's ``hospital.chu-a.test``
    identity and CA bundle (see ``create_postfix_relay`` for the keywords)."""
    with ExitStack() as cleanup:

        def make(
            next_hop: tuple[str, int],
            cert: Path | None = None,
            key: Path | None = None,
            ca: Path | None = None,
            **kwargs: Any,
        ) -> PostfixInstance:
            default = tls_files(dev_pki, "hospital.chu-a.test")
            identity = TlsFiles(cert or default.cert, key or default.key, ca or default.ca)
            instance = create_postfix_relay(next_hop, identity, **kwargs)
            cleanup.callback(destroy_postfix, instance)
            _remember_log(request, f"postfix relay :{instance.port}", instance.maillog)
            return instance

        yield make


# -- Dovecot ---------------------------------------------------------------------------------


@pytest.fixture
def dovecot_factory(
    request: pytest.FixtureRequest, dev_pki: DevPki
) -> Iterator[Callable[..., DovecotInstance]]:
    """``make(users=..., cert=None, key=None, start=True)`` -> a started Dovecot; the
    certificate defaults to the dev PKI's ``imap.chu-a.test``."""
    with ExitStack() as cleanup:

        def make(
            cert: Path | None = None, key: Path | None = None, **kwargs: Any
        ) -> DovecotInstance:
            instance = create_dovecot(
                cert or dev_pki.server_cert("imap.chu-a.test"),
                key or dev_pki.server_key("imap.chu-a.test"),
                **kwargs,
            )
            cleanup.callback(destroy_dovecot, instance)
            _remember_log(request, f"dovecot :{instance.imap_port}", instance.log)
            return instance

        yield make


@pytest.fixture
def dovecot(dovecot_factory: Callable[..., DovecotInstance]) -> DovecotInstance:
    """A running Dovecot with one user, alice@chu-a.test (password in ``.users``)."""
    return dovecot_factory()
