"""Import into a real slapd: idempotent upserts, what updates touch, refusals, errors."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import ldap3
import pytest

from annuaire.importers.errors import TargetError
from annuaire.importers.formats import FORMATS
from annuaire.importers.ldap_target import ldap_sink
from annuaire.importers.pipeline import ImportSummary, import_extract
from annuaire.importers.synthetic import write_extract
from annuaire.mapping import DEFAULT_ATTRIBUTES
from gateway.config import AnnuaireSection
from tests.annuaire.conftest import INDEXES, SCHEMA_FILE
from tests.annuaire.importers.support import (
    BASE_DN,
    Collected,
    mssante_row,
    rpps_id,
    rpps_row,
    write_mssante,
    write_rpps,
)
from tests.peers.ports import free_port
from tests.peers.slapd import ROOT_DN, ROOT_PASSWORD, SlapdInstance

pytestmark = pytest.mark.peer


def section(tmp_path: Path, urls: list[str], **overrides: Any) -> AnnuaireSection:
    password = tmp_path / "bind.secret"
    password.write_text(ROOT_PASSWORD + "\n", encoding="utf-8")
    password.chmod(0o600)
    values: dict[str, Any] = {
        "backend": "ldap",
        "ldif": tmp_path / "unused.ldif",
        "url": tuple(urls),
        "base_dn": BASE_DN,
        "bind_dn": ROOT_DN,
        "bind_password_file": password,
        "ca_file": None,
        "timeout": timedelta(seconds=5),
        "pool_size": 1,
        "cache_ttl": timedelta(minutes=5),
        "negative_cache_ttl": timedelta(minutes=1),
        "dns_cert": False,
        "attributes": DEFAULT_ATTRIBUTES,
    }
    return AnnuaireSection(**{**values, **overrides})


def run(
    source: Path,
    format_name: str,
    config: AnnuaireSection,
    *,
    health_schema: bool = True,
) -> tuple[ImportSummary, Collected]:
    extract_format = FORMATS[format_name]
    seen = Collected()
    with ldap_sink(
        config, (), carries_mailboxes=extract_format.carries_mailboxes, health_schema=health_schema
    ) as sink:
        summary = import_extract(source, extract_format, sink, observer=seen)
    return summary, seen


def entries(slapd: SlapdInstance) -> dict[str, dict[str, list[bytes]]]:
    """Every entry under BASE_DN: lower-cased DN -> raw attributes (lower-cased names)."""
    connection = slapd.connect()
    try:
        ok, _, response, _ = connection.search(
            BASE_DN, "(uid=*)", search_scope=ldap3.LEVEL, attributes=["*"]
        )
        assert ok or not response
        return {
            item["dn"].lower(): {k.lower(): v for k, v in item["raw_attributes"].items()}
            for item in response
            if item["type"] == "searchResEntry"
        }
    finally:
        connection.unbind()


def modify(slapd: SlapdInstance, dn: str, changes: dict[str, Any]) -> None:
    connection = slapd.connect()
    try:
        ok, result, _, _ = connection.modify(dn, changes)
        assert ok, result
    finally:
        connection.unbind()


@pytest.fixture
def directory(annuaire_slapd_factory: Callable[..., SlapdInstance]) -> SlapdInstance:
    return annuaire_slapd_factory()


def test_import_adds_then_a_rerun_changes_nothing(tmp_path: Path, directory: SlapdInstance) -> None:
    source = tmp_path / "extract.txt"
    with source.open("wb") as stream:
        write_extract(stream, "mssante", 300, seed=2, bad_rows=3)
    config = section(tmp_path, [directory.url])
    first, seen = run(source, "mssante", config)
    assert first.skipped == 3 and len(seen.bad_rows) == 3
    assert first.outcomes["added"] == first.entries > 200 and first.failed == 0
    stored = entries(directory)
    assert len(stored) == first.entries
    second, _ = run(source, "mssante", config)
    assert second.outcomes["unchanged"] == second.entries == first.entries
    assert entries(directory) == stored


def person_rows(ident: str, *, surname: str, boxes: list[str], specialty: bool) -> list[str]:
    return [
        mssante_row(
            type="PER",
            address=box,
            national_id=ident,
            surname=surname,
            given_name="Élodie",
            profession_code="10",
            profession_label="Médecin",
            specialty_code="SM40" if specialty else "",
            specialty_label="Pédiatrie" if specialty else "",
            postcode="29200",
            routing="29200 BREST",
        )
        for box in boxes
    ]


def test_a_changed_extract_updates_and_removes_values(
    tmp_path: Path, directory: SlapdInstance
) -> None:
    ident = rpps_id(5)
    dn = f"uid={ident},{BASE_DN}".lower()
    boxes = ["elodie.morel@medecin.mssante.test", "e.morel+pedia=1@chu-brest.mssante.test"]
    config = section(tmp_path, [directory.url])
    source = write_mssante(
        tmp_path / "v1.txt", person_rows(ident, surname="MOREL", boxes=boxes, specialty=True)
    )
    assert run(source, "mssante", config)[0].outcomes["added"] == 1
    before = entries(directory)[dn]
    assert sorted(before["mail"]) == sorted(box.encode() for box in boxes)
    assert before["missivespecialtycode"] == [b"SM40"]
    source = write_mssante(
        tmp_path / "v2.txt",
        person_rows(ident, surname="MOREL-LE GALL", boxes=boxes[:1], specialty=False),
    )
    assert run(source, "mssante", config)[0].outcomes["updated"] == 1
    after = entries(directory)[dn]
    assert after["mail"] == [boxes[0].encode()]
    assert after["sn"] == [b"MOREL-LE GALL"]
    assert "missivespecialtycode" not in after and "missivespecialtylabel" not in after


def test_rpps_update_keeps_mailboxes_certificates_and_foreign_attributes(
    tmp_path: Path, directory: SlapdInstance, encryption_der: Callable[[str], bytes]
) -> None:
    ident = rpps_id(6)
    dn = f"uid={ident},{BASE_DN}"
    config = section(tmp_path, [directory.url])
    box = "alice.martin@chu-a.test"
    source = write_mssante(
        tmp_path / "ms.txt", person_rows(ident, surname="MARTIN", boxes=[box], specialty=True)
    )
    run(source, "mssante", config)
    certificate = encryption_der(box)
    modify(
        directory,
        dn,
        {
            "userCertificate;binary": [(ldap3.MODIFY_ADD, [certificate])],
            "description": [(ldap3.MODIFY_ADD, ["ajouté par l'administrateur"])],
        },
    )
    rpps = write_rpps(
        tmp_path / "rpps.txt",
        [
            rpps_row(
                id_type="8",
                national_id=ident,
                surname="MARTIN",
                given_name="ALICE",
                profession_code="10",
                profession_label="Médecin",
                organisation="CABINET DU PORT",
                number="3",
                street_type="Quai",
                street="DU PORT",
                postcode="56100",
                city="LORIENT",
            )
        ],
    )
    summary, _ = run(rpps, "rpps", config)
    assert summary.outcomes["updated"] == 1
    stored = entries(directory)[dn.lower()]
    assert stored["mail"] == [box.encode()]
    assert stored["missivemailbox"] == [f"PER:{box}".encode()]
    assert stored["usercertificate;binary"] == [certificate]
    assert stored["description"] == ["ajouté par l'administrateur".encode()]
    assert (stored["l"], stored["postalcode"], stored["o"]) == (
        [b"LORIENT"],
        [b"56100"],
        [b"CABINET DU PORT"],
    )
    assert stored["missivedepartment"] == [b"56"]


def test_an_entry_without_the_health_class_gets_it(
    tmp_path: Path, directory: SlapdInstance
) -> None:
    ident = rpps_id(8)
    connection = directory.connect()
    try:
        ok, result, _, _ = connection.add(
            f"uid={ident},{BASE_DN}",
            attributes={"objectClass": ["inetOrgPerson"], "uid": ident, "cn": "X", "sn": "X"},
        )
        assert ok, result
    finally:
        connection.unbind()
    source = write_mssante(
        tmp_path / "ms.txt",
        person_rows(ident, surname="X", boxes=["x@medecin.mssante.test"], specialty=False),
    )
    assert run(source, "mssante", section(tmp_path, [directory.url]))[0].outcomes["updated"] == 1
    classes = entries(directory)[f"uid={ident},{BASE_DN}".lower()]["objectclass"]
    assert b"missiveHealthEntry" in classes and b"inetOrgPerson" in classes


def test_a_refused_entry_is_reported_and_the_others_imported(
    tmp_path: Path, slapd_factory: Callable[..., SlapdInstance]
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
    rows = [
        mssante_row(
            type="PER",
            address=f"p{n}@medecin.mssante.test",
            national_id=rpps_id(n),
            postcode="29200",
        )
        for n in range(1, 4)
    ]
    rows.insert(
        1, mssante_row(type="ORG", address="accueil@clinic.mssante.test", postcode="GL50 2QJ")
    )
    summary, seen = run(
        write_mssante(tmp_path / "ms.txt", rows), "mssante", section(tmp_path, [slapd.url])
    )
    assert (summary.entries, summary.outcomes["added"], summary.failed) == (4, 3, 1)
    (failure,) = seen.failures
    assert (failure.key, failure.line) == ("accueil@clinic.mssante.test", 3)
    assert "constraintViolation (19)" in failure.reason
    assert len(entries(slapd)) == 3


def test_fail_over_to_the_next_url(tmp_path: Path, directory: SlapdInstance) -> None:
    dead = f"ldap://127.0.0.1:{free_port()}/"
    source = write_mssante(
        tmp_path / "ms.txt",
        person_rows(rpps_id(9), surname="Y", boxes=["y@medecin.mssante.test"], specialty=False),
    )
    summary, _ = run(source, "mssante", section(tmp_path, [dead, directory.url]))
    assert summary.outcomes["added"] == 1


def test_target_errors_are_clear(
    tmp_path: Path, directory: SlapdInstance, slapd_factory: Callable[..., SlapdInstance]
) -> None:
    source = write_mssante(
        tmp_path / "ms.txt",
        person_rows(rpps_id(10), surname="Z", boxes=["z@medecin.mssante.test"], specialty=False),
    )
    dead = f"ldap://127.0.0.1:{free_port()}/"
    cases = [
        (
            section(tmp_path, [directory.url], bind_dn=None, bind_password_file=None),
            "needs a bind DN",
        ),
        (section(tmp_path, [dead]), "no directory server reachable"),
        (
            section(tmp_path, [directory.url], base_dn="ou=nowhere,dc=annuaire,dc=test"),
            "does not exist",
        ),
    ]
    for config, message in cases:
        with pytest.raises(TargetError, match=message):
            run(source, "mssante", config)
    wrong = tmp_path / "wrong.secret"
    wrong.write_text("not the password", encoding="utf-8")
    with pytest.raises(TargetError, match="bad credentials") as caught:
        run(source, "mssante", section(tmp_path, [directory.url], bind_password_file=wrong))
    assert "not the password" not in str(caught.value)
    stock = slapd_factory()  # no annuaire schema loaded
    with pytest.raises(TargetError, match="annuaire schema"):
        run(source, "mssante", section(tmp_path, [stock.url]))
    summary, _ = run(source, "mssante", section(tmp_path, [stock.url]), health_schema=False)
    assert summary.outcomes["added"] == 1


def test_hostile_values_are_stored_literally(tmp_path: Path, directory: SlapdInstance) -> None:
    box = "a+b=c#d@x.test"  # RFC 5322 atext that RFC 4514 must escape in a DN
    hostile = "*)(uid=*)\\2a"
    rows = [
        mssante_row(type="ORG", address=box, service=hostile, organisation="O"),
        mssante_row(type="PER", address="p@medecin.mssante.test", national_id=rpps_id(1),
                    surname=hostile, given_name="x" * 1000),
        mssante_row(type="PER", address="q@medecin.mssante.test", national_id=rpps_id(2),
                    surname="x" * 10_000),
        mssante_row(type="PER", address="r@medecin.mssante.test", national_id=rpps_id(3),
                    surname="NUL\x00"),
    ]  # fmt: skip
    source = write_mssante(tmp_path / "ms.txt", rows)
    with source.open("ab") as stream:
        stream.write(rows[1].replace("p@", "s@").encode("utf-8").replace(b"x", b"\xff", 1) + b"\n")
    summary, seen = run(source, "mssante", section(tmp_path, [directory.url]))
    assert summary.outcomes["added"] == 2 and summary.skipped == 3
    assert [row.line for row in seen.bad_rows] == [4, 5, 6]
    stored = entries(directory)
    assert len(stored) == 2
    # slapd answers with the DN escaped its own way (uid=a\2bb\3dc#d@...): match the uid
    (structure,) = [e for e in stored.values() if e["uid"] == [box.encode()]]
    assert structure["mail"] == [box.encode()]
    assert structure["cn"] == [f"{hostile} - O".encode()]
    person = stored[f"uid={rpps_id(1)},{BASE_DN}".lower()]
    assert person["sn"] == [hostile.encode()]


class StopsTheServer:
    """Delegates to the real sink, and stops slapd after ``after`` entries."""

    def __init__(self, sink: Any, slapd: SlapdInstance, after: int) -> None:
        self.sink, self.slapd, self.after, self.count = sink, slapd, after, 0

    def put(self, entry: Any) -> Any:
        self.count += 1
        if self.count == self.after + 1:
            self.slapd.stop()
        return self.sink.put(entry)


def test_a_lost_connection_stops_the_import_and_a_rerun_finishes_it(
    tmp_path: Path, directory: SlapdInstance
) -> None:
    rows = [
        mssante_row(type="PER", address=f"p{n}@medecin.mssante.test", national_id=rpps_id(n))
        for n in range(1, 21)
    ]
    source = write_mssante(tmp_path / "ms.txt", rows)
    config = section(tmp_path, [directory.url])
    extract_format = FORMATS["mssante"]
    with pytest.raises(TargetError, match="LDAP: search failed"):
        with ldap_sink(config, (), carries_mailboxes=True) as sink:
            import_extract(source, extract_format, StopsTheServer(sink, directory, after=5))
    directory.start()
    summary, _ = run(source, "mssante", config)
    assert (summary.outcomes["unchanged"], summary.outcomes["added"]) == (5, 15)
    assert len(entries(directory)) == 20
