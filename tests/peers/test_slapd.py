"""The slapd fixture really serves LDAP: entries loaded from LDIF (offline with slapadd and
online with ldapadd) come back byte for byte through ldap3 and ldapsearch, also after a
restart; extra schema files are honoured, and a bad one is reported by slaptest."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from gateway.pki.dev import DevPki
from tests.peers.procs import live_processes
from tests.peers.slapd import PEOPLE_DN, SlapdError, SlapdInstance

pytestmark = pytest.mark.peer

ALICE = "alice.martin@chu-a.test"
BRUNO = "bruno.petit@chu-a.test"


def person_ldif(uid: str, mail: str, certificate_der: bytes | None = None) -> str:
    """One inetOrgPerson entry (RFC 2798) under ou=personnes, optionally with a certificate."""
    lines = [
        f"dn: uid={uid},{PEOPLE_DN}",
        "objectClass: inetOrgPerson",
        f"uid: {uid}",
        f"cn: {uid}",
        f"sn: {uid}",
        f"mail: {mail}",
    ]
    if certificate_der is not None:
        lines.append(f"userCertificate;binary:: {base64.b64encode(certificate_der).decode()}")
    return "\n".join(lines) + "\n\n"


def certificate_der(dev_pki: DevPki, address: str) -> bytes:
    pem = dev_pki.user_cert(address, "enc").read_bytes()
    return x509.load_pem_x509_certificate(pem).public_bytes(Encoding.DER)


def write_people(directory: Path, dev_pki: DevPki) -> tuple[Path, bytes]:
    der = certificate_der(dev_pki, ALICE)
    path = directory / "people.ldif"
    path.write_text(person_ldif("amartin", ALICE, der) + person_ldif("bpetit", BRUNO))
    return path, der


def ldap3_people(slapd: SlapdInstance) -> dict[str, dict[str, list[bytes]]]:
    """mail -> raw attributes of every inetOrgPerson, searched with ldap3."""
    connection = slapd.connect()
    try:
        _found, result, response, _request = connection.search(
            PEOPLE_DN,
            "(objectClass=inetOrgPerson)",
            attributes=["mail", "userCertificate;binary"],
        )
    finally:
        connection.unbind()
    assert result["result"] == 0, result
    return {
        entry["raw_attributes"]["mail"][0].decode(): entry["raw_attributes"] for entry in response
    }


def ldapsearch_certificate(slapd: SlapdInstance, mail: str) -> bytes:
    """The userCertificate;binary value of ``mail``'s entry, as printed by ldapsearch."""
    output = slapd.ldapsearch(f"(mail={mail})", "userCertificate;binary")
    prefix = "userCertificate;binary:: "
    values = [line[len(prefix) :] for line in output.splitlines() if line.startswith(prefix)]
    assert len(values) == 1, output
    return base64.b64decode(values[0])


def assert_people_served(slapd: SlapdInstance, der: bytes) -> None:
    people = ldap3_people(slapd)
    assert sorted(people) == [ALICE, BRUNO]
    assert people[ALICE]["userCertificate;binary"] == [der]
    assert people[BRUNO].get("userCertificate;binary", []) == []
    assert ldapsearch_certificate(slapd, ALICE) == der


def test_offline_ldif_is_served_identically_and_survives_restart(
    slapd_factory: Callable[..., SlapdInstance], dev_pki: DevPki, tmp_path: Path
) -> None:
    people, der = write_people(tmp_path, dev_pki)
    slapd = slapd_factory(ldif=[people])
    assert_people_served(slapd, der)

    first_pid = slapd.daemon.pid if slapd.daemon else None
    slapd.restart()
    assert slapd.daemon is not None and slapd.daemon.pid != first_pid
    assert_people_served(slapd, der)


def test_ldif_loaded_while_running_goes_through_ldapadd(
    slapd: SlapdInstance, dev_pki: DevPki, tmp_path: Path
) -> None:
    assert ldap3_people(slapd) == {}
    people, der = write_people(tmp_path, dev_pki)
    slapd.load_ldif(people)
    assert_people_served(slapd, der)


def test_loading_a_duplicate_entry_is_a_clear_error(slapd: SlapdInstance) -> None:
    with pytest.raises(SlapdError, match="ldapadd failed"):
        slapd.load_ldif_text(person_ldif("x", "x@chu-a.test") * 2)


SCHEMA = """\
attributetype ( 1.3.6.1.4.1.99999.77.1.1 NAME 'mvTestRpps'
    EQUALITY caseIgnoreMatch SYNTAX 1.3.6.1.4.1.1466.115.121.1.15 SINGLE-VALUE )
objectclass ( 1.3.6.1.4.1.99999.77.2.1 NAME 'mvTestPro'
    SUP top AUXILIARY MAY ( mvTestRpps ) )
"""


def test_extra_schema_is_loaded_after_the_system_ones(
    slapd_factory: Callable[..., SlapdInstance], tmp_path: Path
) -> None:
    schema = tmp_path / "test.schema"
    schema.write_text(SCHEMA)
    slapd = slapd_factory(extra_schemas=[schema], extra_config=["index mvTestRpps eq"])
    entry = person_ldif("dr", "dr@chu-a.test").replace(
        "objectClass: inetOrgPerson", "objectClass: inetOrgPerson\nobjectClass: mvTestPro"
    )
    slapd.load_ldif_text(entry.rstrip("\n") + "\nmvTestRpps: 10001234567\n")
    assert "mvTestRpps: 10001234567" in slapd.ldapsearch("(mvTestRpps=10001234567)", "mvTestRpps")


def test_bad_schema_is_reported_by_slaptest(
    slapd_factory: Callable[..., SlapdInstance], tmp_path: Path
) -> None:
    schema = tmp_path / "broken.schema"
    schema.write_text("attributetype ( not-an-oid NAME 'x' )\n")
    with pytest.raises(SlapdError, match=r"slaptest failed[\s\S]*broken\.schema"):
        slapd_factory(extra_schemas=[schema])


def test_stop_leaves_no_process(slapd: SlapdInstance) -> None:
    assert slapd.daemon is not None
    session = slapd.daemon.proc.pid
    slapd.stop()
    pgrep = subprocess.run(["pgrep", "-f", slapd.directory.name], capture_output=True, text=True)
    assert pgrep.returncode == 1, pgrep.stdout
    assert live_processes(sessions=[session]) == []
