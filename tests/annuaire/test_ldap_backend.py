"""The LDAP backend against real slapd instances: restart, fail-over, fail-back,
timeouts, bind, ldaps, the bounded pool, and never blocking the event loop."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from annuaire.errors import DirectoryUnavailable
from annuaire.ldap_backend import LdapDirectory, read_password
from gateway.pki.dev import DevPki
from tests.annuaire.conftest import INDEXES, SCHEMA_FILE
from tests.annuaire.directories import raw_records, write_ldif_records_only
from tests.annuaire.ldaps import LdapsSlapd, create_ldaps_slapd
from tests.annuaire.samples import ATTRIBUTES, helene, marc
from tests.peers.fixtures import ca_bundle
from tests.peers.ports import LOOPBACK, free_port
from tests.peers.slapd import ROOT_DN, ROOT_PASSWORD, SUFFIX, SlapdInstance, destroy_slapd

pytestmark = pytest.mark.peer

HELENE = "helene.loeuvre@chu-a.test"
MARC = "marc.martin@clinique-b.test"


@pytest.fixture
def make_slapd(
    slapd_factory: Callable[..., SlapdInstance], tmp_path: Path
) -> Callable[..., SlapdInstance]:
    """A started slapd with the schema holding Hélène, or only Marc (``marc_only``)."""

    def make(*, marc_only: bool = False) -> SlapdInstance:
        records = raw_records([marc()] if marc_only else [helene(), marc()])
        path = write_ldif_records_only(tmp_path / f"{free_port()}.ldif", records)
        return slapd_factory(extra_schemas=[SCHEMA_FILE], extra_config=INDEXES, ldif=[path])

    return make


def directory(urls: list[str], **kwargs: object) -> LdapDirectory:
    options: dict[str, object] = {"pool_size": 2, "timeout": 2.0}
    options.update(kwargs)
    return LdapDirectory(urls, SUFFIX, ATTRIBUTES, **options)  # type: ignore[arg-type]


@pytest.fixture
def black_hole() -> Iterator[str]:
    """An ldap:// URL whose server accepts TCP connections and never answers."""
    listener = socket.socket()
    listener.bind((LOOPBACK, 0))
    listener.listen(16)
    try:
        yield f"ldap://{LOOPBACK}:{listener.getsockname()[1]}/"
    finally:
        listener.close()


def dead_url() -> str:
    return f"ldap://{LOOPBACK}:{free_port()}/"


async def test_survives_a_slapd_restart(make_slapd: Callable[..., SlapdInstance]) -> None:
    slapd = make_slapd()
    ldap = directory([slapd.url], pool_size=1)
    try:
        assert len(await ldap.find_by_mail(HELENE)) == 1
        slapd.restart()
        assert len(await ldap.find_by_mail(HELENE)) == 1  # same pooled connection, restarted
    finally:
        await ldap.close()


async def test_fails_over_along_the_url_list(make_slapd: Callable[..., SlapdInstance]) -> None:
    first, second = make_slapd(), make_slapd(marc_only=True)
    ldap = directory([dead_url(), first.url, second.url], pool_size=1, failback_after=3600)
    try:
        assert len(await ldap.find_by_mail(HELENE)) == 1  # the dead URL is skipped
        first.stop()
        assert await ldap.find_by_mail(HELENE) == ()  # answered by the second server
        assert len(await ldap.find_by_mail(MARC)) == 1
        second.stop()
        with pytest.raises(DirectoryUnavailable) as caught:
            await ldap.find_by_mail(MARC)
        problems = caught.value.problems
        assert problems[0] == "annuaire: no LDAP server answered"
        assert all(url in " ".join(problems) for url in ldap.urls)
        assert "Connection refused" in " ".join(problems)
        first.start()
        assert len(await ldap.find_by_mail(HELENE)) == 1  # back on the first server
    finally:
        await ldap.close()


async def test_fails_back_to_the_first_url(make_slapd: Callable[..., SlapdInstance]) -> None:
    first, second = make_slapd(), make_slapd(marc_only=True)
    ldap = directory([first.url, second.url], pool_size=1, failback_after=0)
    try:
        first.stop()
        assert await ldap.find_by_mail(HELENE) == ()  # the second server answers
        first.start()
        assert len(await ldap.find_by_mail(HELENE)) == 1  # failback_after elapsed: first again
    finally:
        await ldap.close()


async def test_a_silent_server_times_out_without_blocking_the_loop(black_hole: str) -> None:
    ldap = directory([black_hole], pool_size=1, timeout=1.0)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    running = asyncio.create_task(ticker())
    try:
        with pytest.raises(DirectoryUnavailable, match=black_hole):
            await ldap.find_by_mail(HELENE)
        assert ticks > 5  # the loop kept running while the thread waited for the server
    finally:
        running.cancel()
        await ldap.close()


async def test_a_cancelled_call_gives_its_slot_back(
    black_hole: str, make_slapd: Callable[..., SlapdInstance]
) -> None:
    ldap = directory([black_hole], pool_size=1, timeout=1.0)
    try:
        call = asyncio.create_task(ldap.find_by_mail(HELENE))
        await asyncio.sleep(0.05)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        with pytest.raises(DirectoryUnavailable):  # waits for the slot, then times out itself
            await ldap.find_by_mail(HELENE)
    finally:
        await ldap.close()


async def test_the_pool_bounds_concurrency(make_slapd: Callable[..., SlapdInstance]) -> None:
    slapd = make_slapd()
    ldap = directory([slapd.url], pool_size=3)
    try:
        results = await asyncio.gather(*(ldap.find_by_mail(HELENE) for _ in range(40)))
        assert all(len(found) == 1 for found in results)
        threads = {t for t in ldap._executor._threads}
        assert len(threads) <= 3
        connections = [s.connection for s in ldap._all_slots if s.connection is not None]
        assert 1 <= len(connections) <= 3
    finally:
        await ldap.close()
    assert all(s.connection is None for s in ldap._all_slots)
    with pytest.raises(DirectoryUnavailable, match="closed"):
        await ldap.find_by_mail(HELENE)
    await ldap.close()  # twice is harmless


async def test_bind_with_a_password_file(
    make_slapd: Callable[..., SlapdInstance], tmp_path: Path
) -> None:
    slapd = make_slapd()
    secret = tmp_path / "bind.secret"
    secret.write_text(ROOT_PASSWORD + "\n")
    ldap = directory([slapd.url], bind_dn=ROOT_DN, password=read_password(secret))
    try:
        assert len(await ldap.find_by_mail(HELENE)) == 1
    finally:
        await ldap.close()
    wrong = directory([slapd.url], bind_dn=ROOT_DN, password="not-the-password")
    try:
        with pytest.raises(DirectoryUnavailable) as caught:
            await wrong.find_by_mail(HELENE)
        text = str(caught.value)
        assert "bind refused: invalidCredentials" in text and "not-the-password" not in text
    finally:
        await wrong.close()


def test_password_file_problems(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.write_text("")
    with pytest.raises(DirectoryUnavailable, match="empty"):
        read_password(empty)
    with pytest.raises(DirectoryUnavailable, match="bind_password_file"):
        read_password(tmp_path / "missing")


@pytest.fixture
def ldaps_slapd(dev_pki: DevPki, tmp_path: Path) -> Iterator[LdapsSlapd]:
    people = write_ldif_records_only(tmp_path / "people.ldif", raw_records([helene()]))
    instance = create_ldaps_slapd(
        dev_pki.server_cert("mx.chu-a.test"),
        dev_pki.server_key("mx.chu-a.test"),
        ca_bundle(dev_pki),
        extra_schemas=(SCHEMA_FILE,),
        ldif=(people,),
    )
    try:
        yield instance
    finally:
        destroy_slapd(instance)


async def test_ldaps_verifies_the_server(
    ldaps_slapd: LdapsSlapd, dev_pki: DevPki, tmp_path: Path
) -> None:
    ldap = directory([ldaps_slapd.url], ca_files=[dev_pki.root_cert])
    try:
        assert len(await ldap.find_by_mail(HELENE)) == 1
    finally:
        await ldap.close()
    other_root = tmp_path / "other-root.pem"
    from gateway.pki.dev import init_dev_pki

    other = init_dev_pki(tmp_path / "other", users=(), servers=(), ec=True)
    other_root.write_bytes(other.root_cert.read_bytes())
    untrusted = directory([ldaps_slapd.url], ca_files=[other_root])
    try:
        with pytest.raises(DirectoryUnavailable, match="CERTIFICATE_VERIFY_FAILED"):
            await untrusted.find_by_mail(HELENE)
    finally:
        await untrusted.close()


async def test_ldaps_checks_the_host_name(ldaps_slapd: LdapsSlapd, dev_pki: DevPki) -> None:
    """The certificate names mx.chu-a.test and 127.0.0.1: 'localhost' does not match."""
    url = ldaps_slapd.url.replace(LOOPBACK, "localhost")
    ldap = directory([url], ca_files=[dev_pki.root_cert])
    try:
        with pytest.raises(DirectoryUnavailable, match="Hostname mismatch"):
            await ldap.find_by_mail(HELENE)
    finally:
        await ldap.close()


def test_ldaps_without_any_ca_is_refused() -> None:
    with pytest.raises(DirectoryUnavailable, match="ca_file"):
        LdapDirectory(["ldaps://127.0.0.1:1/"], SUFFIX, ATTRIBUTES)
