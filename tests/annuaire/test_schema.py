"""The health schema: slapd loads both forms and they define the same things."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import ldap3

from annuaire.ldif import read_ldif_file
from tests.annuaire.conftest import SCHEMA_FILE, SCHEMA_LDIF
from tests.annuaire.samples import helene, marc
from tests.peers.ports import LOOPBACK, free_port
from tests.peers.procs import make_temp_dir, require_binary, spawn_daemon
from tests.peers.slapd import SlapdInstance

ARC = "2.25.236918921885369982579453661223727713557"
SYSTEM_LDIF = [
    Path(f"/etc/ldap/schema/{name}.ldif") for name in ("core", "cosine", "inetorgperson")
]


def _definitions_of_schema_file(text: str) -> set[str]:
    text = re.sub(r"(?m)^#.*\n", "", text)
    blocks = re.findall(
        r"(attributetype|objectclass)\s*(\(.*?\))\s*(?=attributetype|objectclass|$)",
        text,
        flags=re.S | re.I,
    )
    return {" ".join(body.split()) for _, body in blocks}


def _definitions_of_ldif() -> set[str]:
    (record,) = list(read_ldif_file(SCHEMA_LDIF))
    values = record.values("olcAttributeTypes") + record.values("olcObjectClasses")
    return {" ".join(value.decode().split()) for value in values}


def test_both_forms_define_the_same_schema() -> None:
    from_schema = _definitions_of_schema_file(SCHEMA_FILE.read_text())
    assert from_schema == _definitions_of_ldif()
    assert len(from_schema) == 10
    assert all(definition.startswith(f"( {ARC}.") for definition in from_schema)
    assert ARC in (SCHEMA_FILE.parent / "README.md").read_text()


def test_slapd_with_the_schema_file_stores_and_finds_health_entries(
    annuaire_slapd_factory: Callable[..., SlapdInstance],
) -> None:
    slapd = annuaire_slapd_factory([helene(), marc()])
    out = slapd.ldapsearch("(&(objectClass=missiveHealthEntry)(missiveSearchKey=n:hel*))", "uid")
    assert "uid: 810000000001" in out and "0990000002" not in out
    out = slapd.ldapsearch("(missiveSearchKey=s:*ardio*)", "mail")
    assert "mail: helene.loeuvre@chu-a.test" in out
    out = slapd.ldapsearch("(missiveMailbox=CAB:cardio.SECRETARIAT@chu-a.test)", "uid")
    assert "uid: 810000000001" in out


def _config_ldif(directory: Path) -> str:
    """A whole cn=config tree: global, schema (system LDIF files + ours), one mdb."""
    parts = [
        "dn: cn=config\nobjectClass: olcGlobal\ncn: config\n"
        f"olcPidFile: {directory / 'slapd.pid'}\n",
        "dn: cn=module{0},cn=config\nobjectClass: olcModuleList\ncn: module{0}\n"
        "olcModulePath: /usr/lib/ldap\nolcModuleLoad: back_mdb\n",
        "dn: cn=schema,cn=config\nobjectClass: olcSchemaConfig\ncn: schema\n",
    ]
    for path in (*SYSTEM_LDIF, SCHEMA_LDIF):
        parts.append(path.read_text())
    parts.append(
        "dn: olcDatabase={1}mdb,cn=config\nobjectClass: olcDatabaseConfig\n"
        "objectClass: olcMdbConfig\nolcDatabase: {1}mdb\nolcSuffix: dc=annuaire,dc=test\n"
        "olcRootDN: cn=admin,dc=annuaire,dc=test\nolcRootPW: secret\n"
        f"olcDbDirectory: {directory / 'db'}\nolcDbIndex: missiveSearchKey eq,sub\n"
    )
    return "\n".join(part.strip() + "\n" for part in parts)


def test_slapd_loads_the_cn_config_ldif() -> None:
    """slapadd -n0 builds a slapd.d from it; slapd starts on it and accepts our entries."""
    directory = make_temp_dir("mv-cnconfig-")
    try:
        config = directory / "slapd.d"
        config.mkdir()
        (directory / "db").mkdir()
        (directory / "config.ldif").write_text(_config_ldif(directory))
        subprocess.run(
            [
                require_binary("slapadd"),
                "-n0",
                "-F",
                str(config),
                "-l",
                str(directory / "config.ldif"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        listing = "\n".join(p.name for p in (config / "cn=config" / "cn=schema").iterdir())
        assert "missive-sante.ldif" in listing
        port = free_port()
        daemon = spawn_daemon(
            "slapd cn=config",
            [
                require_binary("slapd"),
                "-d",
                "none",
                "-F",
                str(config),
                "-h",
                f"ldap://{LOOPBACK}:{port}/",
            ],
            directory / "slapd.log",
            lambda: _can_connect(port),
        )
        try:
            server = ldap3.Server(LOOPBACK, port=port, get_info=ldap3.NONE)
            connection = ldap3.Connection(
                server,
                "cn=admin,dc=annuaire,dc=test",
                "secret",
                client_strategy=ldap3.SAFE_SYNC,
                auto_bind=True,
            )
            try:
                ok, *_ = connection.add(
                    "dc=annuaire,dc=test",
                    ["dcObject", "organization"],
                    {"dc": "annuaire", "o": "test"},
                )
                assert ok
                ok, result, *_ = connection.add(
                    "uid=k,dc=annuaire,dc=test",
                    ["inetOrgPerson", "missiveHealthEntry"],
                    {
                        "cn": "K",
                        "sn": "K",
                        "missiveSearchKey": ["n:k"],
                        "missiveEntryKind": "person",
                    },
                )
                assert ok, result
                ok, _, response, _ = connection.search(
                    "dc=annuaire,dc=test", "(missiveSearchKey=n:*)"
                )
                assert ok and [r["dn"] for r in response] == ["uid=k,dc=annuaire,dc=test"]
            finally:
                connection.unbind()
        finally:
            daemon.stop()
    finally:
        shutil.rmtree(directory)


def _can_connect(port: int) -> bool:
    import socket

    try:
        socket.create_connection((LOOPBACK, port), timeout=1).close()
    except OSError:
        return False
    return True
