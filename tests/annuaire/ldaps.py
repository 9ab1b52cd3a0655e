"""A slapd that listens on ``ldaps://`` with a dev PKI server certificate.

The shared fixture (``tests.peers.slapd``) only speaks plain ``ldap://``; this subclass
adds the TLS directives to the *global* part of slapd.conf (they are global settings in
slapd, so they must come before ``database``) and listens on ``ldaps://127.0.0.1:PORT/``.
Its readiness probe binds over TLS, verifying the server against the dev PKI's root.
Everything else (start/stop by PID, temp dir, LDIF loading) is the shared fixture's.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ldap3

from tests.peers.ports import free_port
from tests.peers.procs import make_temp_dir
from tests.peers.slapd import SlapdInstance, destroy_slapd


@dataclass
class LdapsSlapd(SlapdInstance):
    """slapd on ldaps:// (see the module docstring)."""

    certificate: Path = Path()
    key: Path = Path()
    ca_file: Path = Path()

    @property
    def url(self) -> str:
        return f"ldaps://{self.host}:{self.port}/"

    def config_text(self) -> str:
        text = super().config_text()
        tls = (
            f"TLSCertificateFile {self.certificate}\n"
            f"TLSCertificateKeyFile {self.key}\n"
            f"TLSCACertificateFile {self.ca_file}\n"
            "TLSProtocolMin 3.3\n"  # TLS 1.2
        )
        return text.replace("database mdb\n", tls + "database mdb\n", 1)

    def _connection(self, user: str, password: str, *, auto_bind: bool) -> Any:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(self.ca_file))
        server = ldap3.Server(
            self.host, port=self.port, use_ssl=True, tls=tls, get_info=ldap3.NONE, connect_timeout=2
        )
        return ldap3.Connection(
            server,
            user=user,
            password=password,
            client_strategy=ldap3.SAFE_SYNC,
            auto_bind=auto_bind,
            receive_timeout=5,
        )


def create_ldaps_slapd(
    certificate: Path,
    key: Path,
    ca_file: Path,
    *,
    extra_schemas: tuple[Path, ...] = (),
    ldif: tuple[Path, ...] = (),
) -> LdapsSlapd:
    """A started ldaps slapd holding the suffix, ``ou=personnes`` and ``ldif`` (loaded
    offline) (the caller destroys it)."""
    from tests.peers.slapd import BASE_LDIF

    instance = LdapsSlapd(
        make_temp_dir("mv-ldaps-"),
        free_port(),
        extra_schemas,
        certificate=certificate,
        key=key,
        ca_file=ca_file,
    )
    try:
        instance.write_config()
        instance.load_ldif_text(BASE_LDIF, "base.ldif")
        for path in ldif:
            instance.load_ldif(path)
        instance.start()
    except BaseException:
        destroy_slapd(instance)
        raise
    return instance
