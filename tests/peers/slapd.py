"""A throwaway OpenLDAP ``slapd`` on a loopback port, for annuaire and gateway tests.

Role: write a ``slapd.conf`` (old-style config, no cn=config tree), check it with
``slaptest -u``, load LDIF, run ``slapd`` in the foreground and stop it by PID. The
database survives ``stop()``/``start()``, so tests can check restart survival and
fail-over (two instances at once work: each has its own dir, pidfile and port).

Facts this relies on (checked with slapd 2.5.13 on Debian 12, as root):
- ``slapd -d none -h ldap://127.0.0.1:PORT/ -f slapd.conf``: any ``-d`` keeps slapd in
  the foreground, so the Popen PID is slapd itself. ``-d none`` still prints errors and
  "slapd starting"; ``-d 0`` hides every error (a missing db dir then just gives rc 1).
- The mdb ``directory`` must exist before ``slaptest``/``slapadd``/``slapd``.
- ``slaptest -u -f slapd.conf`` reports schema and config errors with line numbers,
  without opening the database; run first so a bad extra schema fails clearly.
- ``slapadd`` writes the database offline and must not run while slapd has it open,
  so ``load_ldif`` uses ``slapadd`` when stopped and ``ldapadd`` (as the rootdn) when
  running.
- Extra schema files (the annuaire's health schema) are included after core, cosine
  and inetorgperson so they may use those definitions.
- SIGTERM stops slapd cleanly (rc 0) in a few ms; it is ready for searches about 30 ms
  after start. Readiness is a successful simple bind, a real LDAP answer (RFC 4511 §4.2).

Security: test-only. The root password is a fixed test value, the listener is bound to
127.0.0.1 only, and the default slapd access policy (read for all) applies.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException

from tests.peers.ports import LOOPBACK, free_port
from tests.peers.procs import (
    DaemonProcess,
    log_tail,
    make_temp_dir,
    remove_temp_dir,
    require_binary,
    spawn_daemon,
)

SUFFIX = "dc=annuaire,dc=test"
ROOT_DN = f"cn=admin,{SUFFIX}"
ROOT_PASSWORD = "admin-test-secret"
PEOPLE_DN = f"ou=personnes,{SUFFIX}"

SYSTEM_SCHEMA_DIR = Path("/etc/ldap/schema")
SYSTEM_SCHEMAS = ("core", "cosine", "inetorgperson")
MODULE_PATH = Path("/usr/lib/ldap")

#: The suffix entry and one organisational unit for people: what most tests start from.
BASE_LDIF = f"""\
dn: {SUFFIX}
objectClass: dcObject
objectClass: organization
dc: annuaire
o: Annuaire de test

dn: {PEOPLE_DN}
objectClass: organizationalUnit
ou: personnes
"""


class SlapdError(RuntimeError):
    """slapd configuration, LDIF loading or an LDAP tool failed; carries the tool output."""


@dataclass
class SlapdInstance:
    """One slapd with its own directory, port, config and mdb database."""

    directory: Path
    port: int
    extra_schemas: tuple[Path, ...] = ()
    extra_config: tuple[str, ...] = ()
    suffix: str = SUFFIX
    root_dn: str = ROOT_DN
    root_password: str = ROOT_PASSWORD
    host: str = LOOPBACK
    daemon: DaemonProcess | None = field(default=None, repr=False)

    @property
    def conf_path(self) -> Path:
        return self.directory / "slapd.conf"

    @property
    def db_dir(self) -> Path:
        return self.directory / "db"

    @property
    def log_path(self) -> Path:
        return self.directory / "slapd.log"

    @property
    def url(self) -> str:
        """``ldap://127.0.0.1:PORT/`` (RFC 4516 form, as the gateway config expects)."""
        return f"ldap://{self.host}:{self.port}/"

    def running(self) -> bool:
        return self.daemon is not None and self.daemon.running()

    def log(self, lines: int = 40) -> str:
        """Tail of slapd's output, for failure messages."""
        return log_tail(self.log_path, lines)

    # -- configuration -----------------------------------------------------------------

    def config_text(self) -> str:
        """The slapd.conf for this instance (global part, then the mdb database)."""
        schemas = [SYSTEM_SCHEMA_DIR / f"{name}.schema" for name in SYSTEM_SCHEMAS]
        includes = [f"include {path}" for path in (*schemas, *self.extra_schemas)]
        lines = [
            *includes,
            f"modulepath {MODULE_PATH}",
            "moduleload back_mdb",
            f"pidfile {self.directory / 'slapd.pid'}",
            f"argsfile {self.directory / 'slapd.args'}",
            "database mdb",
            "maxsize 104857600",
            f'suffix "{self.suffix}"',
            f'rootdn "{self.root_dn}"',
            f"rootpw {self.root_password}",
            f"directory {self.db_dir}",
            "index objectClass eq",
            *self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    def write_config(self) -> None:
        """Write slapd.conf, create the db dir, and check both with ``slaptest -u``."""
        self.db_dir.mkdir(mode=0o700, exist_ok=True)
        self.conf_path.write_text(self.config_text(), encoding="utf-8")
        _run_tool([require_binary("slaptest"), "-u", "-f", str(self.conf_path)], "slaptest")

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start slapd in the foreground and wait for a successful bind as the rootdn."""
        if self.running():
            return
        argv = [require_binary("slapd"), "-d", "none", "-h", self.url, "-f", str(self.conf_path)]
        self.daemon = spawn_daemon(f"slapd on {self.url}", argv, self.log_path, self._can_bind)

    def stop(self) -> None:
        """SIGTERM slapd and wait; the database stays for a later ``start()``."""
        if self.daemon is not None:
            self.daemon.stop()

    def restart(self) -> None:
        self.stop()
        self.start()

    def _can_bind(self) -> bool:
        """Readiness probe: a simple bind as the rootdn succeeds.

        A plain TCP connect comes first: ldap3 2.9.1 leaves its socket open when the
        connection is refused, which would surface as a ResourceWarning (an error here).
        """
        socket.create_connection((self.host, self.port), timeout=2).close()
        connection = self._connection(self.root_dn, self.root_password, auto_bind=False)
        try:
            ok: bool = connection.bind()[0]
        except LDAPException:
            return False
        finally:
            connection.unbind()
        return ok

    # -- data --------------------------------------------------------------------------

    def load_ldif(self, path: Path) -> None:
        """Add the entries of an LDIF file: ``slapadd`` when stopped, ``ldapadd`` when running."""
        if self.running():
            argv = [require_binary("ldapadd"), "-x", "-H", self.url, "-D", self.root_dn]
            argv += ["-w", self.root_password, "-f", str(path)]
            _run_tool(argv, "ldapadd")
        else:
            argv = [require_binary("slapadd"), "-f", str(self.conf_path), "-l", str(path)]
            _run_tool(argv, "slapadd")

    def load_ldif_text(self, text: str, name: str = "load.ldif") -> None:
        """Write ``text`` to a file in the instance dir and ``load_ldif`` it."""
        path = self.directory / name
        path.write_text(text, encoding="utf-8")
        self.load_ldif(path)

    def connect(self, *, user: str | None = None, password: str | None = None) -> Any:
        """An ldap3 SAFE_SYNC connection, bound as ``user`` (default: the rootdn).

        SAFE_SYNC methods return ``(ok, result, response, request)`` tuples.
        """
        return self._connection(
            user if user is not None else self.root_dn,
            password if password is not None else self.root_password,
            auto_bind=True,
        )

    def _connection(self, user: str, password: str, *, auto_bind: bool) -> Any:
        server = ldap3.Server(self.host, port=self.port, get_info=ldap3.NONE, connect_timeout=2)
        return ldap3.Connection(
            server,
            user=user,
            password=password,
            client_strategy=ldap3.SAFE_SYNC,
            auto_bind=auto_bind,
            receive_timeout=5,
        )

    def ldapsearch(self, search_filter: str, *attributes: str, base: str | None = None) -> str:
        """Run the ``ldapsearch`` tool (anonymous, LDIF output without comments)."""
        argv = [require_binary("ldapsearch"), "-x", "-LLL", "-o", "ldif-wrap=no", "-H", self.url]
        argv += ["-b", base or self.suffix, search_filter, *attributes]
        return _run_tool(argv, "ldapsearch")


def _run_tool(argv: Sequence[str], what: str) -> str:
    """Run an OpenLDAP tool; return stdout or raise SlapdError with its output."""
    completed = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    if completed.returncode != 0:
        raise SlapdError(
            f"{what} failed with status {completed.returncode}:\n"
            f"{completed.stderr.strip()}\n{completed.stdout.strip()}"
        )
    return completed.stdout


def create_slapd(
    *,
    extra_schemas: Sequence[Path] = (),
    extra_config: Sequence[str] = (),
    ldif: Sequence[Path] = (),
    base_entries: bool = True,
    start: bool = True,
) -> SlapdInstance:
    """Make a dir, write and check the config, load ``BASE_LDIF`` then ``ldif`` (offline), start.

    The caller must ``destroy_slapd`` it (the fixtures do, even when a test fails).
    """
    directory = make_temp_dir("mv-ldap-")
    instance = SlapdInstance(
        directory, free_port(), tuple(extra_schemas), extra_config=tuple(extra_config)
    )
    try:
        instance.write_config()
        if base_entries:
            instance.load_ldif_text(BASE_LDIF, "base.ldif")
        for path in ldif:
            instance.load_ldif(path)
        if start:
            instance.start()
    except BaseException:
        destroy_slapd(instance)
        raise
    return instance


def destroy_slapd(instance: SlapdInstance) -> None:
    """Stop slapd (if running) and remove its directory."""
    try:
        instance.stop()
    finally:
        remove_temp_dir(instance.directory)
