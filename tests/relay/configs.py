"""A configuration of the secure agent's tests: a site on a dev PKI, written as TOML and
loaded with the real loader (so the routes are what a sysadmin would write)."""

from __future__ import annotations

from pathlib import Path

from gateway.config import Config
from gateway.pki.dev import DevPki
from tests.site_config import write_test_config

ROUTES = """
[[routes]]
name = "clinique-b"
domains = ["clinique-b.test"]
next_hop = "127.0.0.1:2526"
tls_name = "mx.clinique-b.test"
fallback = "postal"

[[routes]]
name = "direct"
domains = ["direct.test"]
next_hop = "127.0.0.1:2527"
tls_name = "mx.direct.test"
wrap = true

[[routes]]
name = "mss"
domains = ["mss.test"]
next_hop = "127.0.0.1:2528"
tls_name = "mx.mss.test"
security = "tls-only"

[[routes]]
name = "partner"
domains = ["*.partner.test"]
next_hop = "127.0.0.1:2529"
tls_name = "mx.partner.test"
fallback = "route:clinique-b"

[[routes]]
name = "default"
domains = ["*"]
transport = "reject"
"""


def write_site(
    directory: Path,
    pki: DevPki,
    *,
    organisation_signing: Path | None = None,
    smime: str = "",
) -> Config:
    """The site's configuration (``smime`` adds keys to ``[smime]``)."""
    tables = f"""\
[keys]
organisation_signing = "{organisation_signing or ""}"

[smime]
{smime}
{ROUTES}"""
    return write_test_config(directory, pki, tables)
