"""A minimal configuration file on the session's development PKI, for in-process tests.

Each part's tests (relay, inbound, SMTP front) need the same base — the directories a
configuration requires (``var/keys`` 0700, an empty annuaire LDIF and users file),
``[gateway]`` for ``mx.chu-a.test`` with the local domain ``chu-a.test``, ``[tls]`` with
that server's certificate, ``[trust]`` with the dev PKI's root, intermediates and CRLs —
and add the tables they are about. ``tests/sites.py`` is the other kind of site: a copy
of the shipped ``conf/`` run by ``missive serve``.
"""

from __future__ import annotations

from pathlib import Path

from gateway.config import Config, load_config
from gateway.pki.dev import DevPki

HOST = "mx.chu-a.test"
LOCAL_DOMAIN = "chu-a.test"


def write_test_config(
    home: Path, pki: DevPki, tables: str, *, tls_extra: str = "", agent_keys: bool = True
) -> Config:
    """Write ``home/missive.toml`` (the base above, then ``tables``) and load it."""
    keys = home / "var" / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    keys.chmod(0o700)
    (home / "var" / "annuaire.ldif").touch()
    (home / "conf").mkdir(exist_ok=True)
    (home / "conf" / "users.toml").touch()
    path = home / "missive.toml"
    path.write_text(
        f"""\
[gateway]
home = "{home}"
hostname = "{HOST}"
local_domains = ["{LOCAL_DOMAIN}"]

[tls]
certificate = "{pki.server_cert(HOST)}"
private_key = "{pki.server_key(HOST)}"
{tls_extra}

[trust]
anchors = ["{pki.root_cert}"]
intermediates = ["{pki.intermediates}"]
crls = ["{pki.crl("personnes")}", "{pki.crl("serveurs")}"]

{tables}
""",
        encoding="utf-8",
    )
    return load_config(path, agent_keys=agent_keys)
