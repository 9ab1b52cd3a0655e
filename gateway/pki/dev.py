"""The development PKI of Missive: a small CA hierarchy shaped like IGC-Santé, on disk.

Role: ``init_dev_pki(DIR)`` (and ``missive certs init-dev DIR``) creates, or completes, a
test PKI: a root CA, an intermediate for persons and one for servers; for each user a
*signature* certificate and a separate *encryption* certificate (the IGC-Santé split of
usages); server certificates usable for TLS on both sides; and CRLs. ``load_dev_pki(DIR)``
opens an existing one. Both return a ``DevPki`` (``gateway.pki.dev_authority``: paths,
``issue_user``/``issue_server`` for odd certificates, ``revoke``, CRLs, validity policy).
Certificate profiles are in ``gateway.pki.builders``; names imitate IGC-Santé (``CN=AC
RACINE MISSIVE DEV, OU=IGC-SANTE-LIKE DEV, OU=0002 000000000, O=MISSIVE DEV (TEST ONLY),
C=FR``) and are obviously fake.

This module is where callers import the development PKI from: every name they use
(``DevPki``, ``init_dev_pki``, ``load_dev_pki``, ``DevPkiError``, ``load_private_key``...)
is importable here. Split by concern (STYLE 11; a pure move, every definition unchanged):
``dev_authority`` holds the ``DevPki`` object, this module builds and opens a directory.

Layout of DIR (directory 0700, keys 0600, everything else 0644)::

    pki.json                      settings: key type (rsa|ec), CRL base URL, OCSP URL
    root.crt  root.key  root.crl  root CA (its CRL lists revoked intermediates)
    personnes.crt .key .crl       intermediate CA for persons (pathLen 0)
    serveurs.crt  .key  .crl      intermediate CA for servers (pathLen 0)
    intermediates.pem             both intermediate certificates
    <ca>.index.json               per CA: CRL number, issued and revoked serials
    <host>.crt  <host>.key        server leaf followed by the serveurs certificate
    users/<address>.sign.crt|.key users/<address>.enc.crt|.key   (leaf only)

Revocation pointers: with ``crl_base_url`` every certificate below the root carries the
CRL distribution point ``f"{crl_base_url}/{issuing_ca}.crl"`` (``root.crl`` for the
intermediates, ``personnes.crl``/``serveurs.crl`` for leaves), so serving DIR over HTTP
at that base URL publishes the CRLs; with ``ocsp_url`` every leaf carries an AIA OCSP
access location equal to ``ocsp_url`` (one responder for both intermediates; a test
starts its own responder and passes its loopback URL to a *fresh* PKI). The URLs are
recorded in ``pki.json``: an existing PKI keeps them (asking for other ones is an error).

Invariants:
- Idempotent: a second run never overwrites a key (``files.create_private_file``) and
  keeps every certificate that still matches its key, verifies under its current issuer
  and is valid for at least one more day; otherwise (key present but certificate missing,
  CA re-keyed, certificate expiring) the certificate alone is (re)issued for the existing
  key. A user added later gets only their own certificates.
- The key type (RSA-2048 by default, ``ec=True``: P-256) and the URLs are fixed per DIR
  by ``pki.json``; a request that contradicts them is a ``DevPkiError``, never a silent
  change. Validity periods and CRL freshness: ``gateway.pki.dev_authority``.
- Bad addresses or host names and OS errors are a ``DevPkiError`` (one line each), never
  a traceback from the CLI.

Security notes: this is a *development* tool. CA keys sit unencrypted next to the
certificates; never trust ``AC RACINE MISSIVE DEV`` outside tests. One writer per DIR
at a time (no lock). No shelling out: everything is built with ``cryptography``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Literal

from cryptography.exceptions import InvalidSignature

from gateway.pki import builders
from gateway.pki.builders import Issuer, PrivateKey
from gateway.pki.dev_authority import (
    CA_LIFETIME,
    CA_NAMES,
    CLOCK_SKEW,
    INTERMEDIATE_NAMES,
    PURPOSES,
    RENEWAL_MARGIN,
    CaName,
    DevPki,
    Purpose,
    _now,
)
from gateway.pki.files import (
    PRIVATE_FILE_MODE,
    ensure_private_dir,
    replace_file,
    tighten_private_file,
)
from gateway.pki.store import (
    Change,
    DevPkiError,
    Settings,
    describe_os_error,
    load_first_certificate,
    load_private_key,
    normalise_address,
    normalise_hostname,
    pem_certs,
)

DEMO_USERS: tuple[str, ...] = (
    "alice.martin@chu-a.test",
    "bruno.petit@chu-a.test",
    "claire.durand@clinique-b.test",
)
DEFAULT_SERVERS: tuple[str, ...] = ("mx.chu-a.test",)


class _Builder:
    """The steps of ``init_dev_pki``: make sure each piece exists and is sound."""

    def __init__(self, pki: DevPki) -> None:
        self.pki = pki
        self.directory = pki.directory

    def ensure_ca(self, name: CaName) -> None:
        key_path = self.directory / f"{name}.key"
        cert_path = self.directory / f"{name}.crt"
        key = self.pki._obtain_key(key_path, self.pki.ec, None, strict=False)
        parent = None if name == "root" else self.pki._issuer("root")
        if self._certificate_is_sound(cert_path, key, parent or "self"):
            self.pki._note("kept", cert_path)
            return
        certificate = builders.build_ca_certificate(
            name,
            key,
            issuer=parent,
            now=_now(),
            lifetime=CA_LIFETIME,
            skew=CLOCK_SKEW,
            crl_base_url=self.pki.settings.crl_base_url,
        )
        action = "reissued" if cert_path.exists() else "created"
        replace_file(cert_path, pem_certs(certificate))
        if parent is not None:
            self.pki._record_issued("root", certificate, cert_path)
        self.pki._issuers.pop(name, None)
        self.pki._note(action, cert_path)

    def ensure_intermediates_bundle(self) -> None:
        path = self.directory / "intermediates.pem"
        bundle = b"".join(
            (self.directory / f"{name}.crt").read_bytes() for name in INTERMEDIATE_NAMES
        )
        if path.exists() and path.read_bytes() == bundle:
            self.pki._note("kept", path)
            return
        action = "reissued" if path.exists() else "created"
        replace_file(path, bundle)
        self.pki._note(action, path)

    def ensure_leaf(self, cert_path: Path, ca: CaName, issue: Callable[[], Path]) -> None:
        key_path = cert_path.with_suffix(".key")
        if key_path.exists():
            key = load_private_key(key_path)
            if tighten_private_file(key_path):
                self.pki._note("tightened", key_path)
            if self._certificate_is_sound(cert_path, key, self.pki._issuer(ca)):
                self.pki._note("kept", key_path)
                self.pki._note("kept", cert_path)
                return
        issue()

    @staticmethod
    def _certificate_is_sound(
        cert_path: Path, key: PrivateKey, issuer: Issuer | Literal["self"]
    ) -> bool:
        """The certificate exists, is for ``key``, verifies under ``issuer`` and stays
        valid for at least ``RENEWAL_MARGIN``."""
        if not cert_path.exists():
            return False
        try:
            certificate = load_first_certificate(cert_path)
            issuer_cert = certificate if issuer == "self" else issuer.certificate
            certificate.verify_directly_issued_by(issuer_cert)
        except (DevPkiError, ValueError, TypeError, InvalidSignature):
            return False
        return (
            certificate.public_key() == key.public_key()
            and certificate.not_valid_after_utc > _now() + RENEWAL_MARGIN
        )


def _settings_for(
    directory: Path, ec: bool | None, crl_base_url: str | None, ocsp_url: str | None
) -> Settings:
    """The settings recorded in ``pki.json`` merged with the requested ones."""
    path = directory / "pki.json"
    requested = Settings(bool(ec), _strip_url(crl_base_url), ocsp_url or None)
    if not path.exists():
        replace_file(path, (json.dumps(requested.to_json(), indent=2) + "\n").encode())
        return requested
    try:
        recorded = Settings.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, AttributeError) as error:
        raise DevPkiError(f"{path}: unreadable settings ({error})") from None
    mismatches = []
    if ec is not None and ec != recorded.ec:
        kind = "EC P-256" if recorded.ec else "RSA"
        mismatches.append(f"{directory} holds {kind} keys; use another directory to change")
    for label, asked, kept in (
        ("CRL base URL", requested.crl_base_url, recorded.crl_base_url),
        ("OCSP URL", requested.ocsp_url, recorded.ocsp_url),
    ):
        if asked is not None and asked != kept:
            mismatches.append(f"{directory} was created with {label} {kept!r}, not {asked!r}")
    if mismatches:
        raise DevPkiError(mismatches)
    return recorded


def _strip_url(url: str | None) -> str | None:
    return url.rstrip("/") if url else None


def load_dev_pki(directory: Path) -> DevPki:
    """Open an existing development PKI without creating anything."""
    if not (directory / "pki.json").exists():
        raise DevPkiError(f"{directory} is not a development PKI (no pki.json): run init first")
    return DevPki(directory, _settings_for(directory, None, None, None))


def init_dev_pki(
    directory: Path,
    users: Sequence[str] = DEMO_USERS,
    servers: Sequence[str] = DEFAULT_SERVERS,
    *,
    ec: bool | None = None,
    crl_base_url: str | None = None,
    ocsp_url: str | None = None,
) -> DevPki:
    """Create or complete the development PKI in ``directory`` and return it.

    ``ec``: None keeps the recorded key type (RSA for a new directory). ``pki.changes``
    lists what was created, kept or reissued. Raises ``DevPkiError`` for a bad address or
    host name and for settings that contradict the existing directory.
    """
    addresses = [normalise_address(a) for a in users]
    hostnames = [normalise_hostname(h) for h in servers]
    directory = Path(directory)
    try:
        created_dir = ensure_private_dir(directory)
        settings = _settings_for(directory, ec, crl_base_url, ocsp_url)
        pki = DevPki(directory, settings)
        if created_dir:
            pki._note("created", directory)
        _populate(pki, addresses, hostnames)
    except OSError as error:
        raise DevPkiError(describe_os_error(error, directory)) from None
    return pki


def _populate(pki: DevPki, addresses: Sequence[str], hostnames: Sequence[str]) -> None:
    builder = _Builder(pki)
    for name in CA_NAMES:
        builder.ensure_ca(name)
    builder.ensure_intermediates_bundle()
    ensure_private_dir(pki.directory / "users")
    for address in dict.fromkeys(addresses):
        for purpose in PURPOSES:
            cert_path = pki._user_path(address, purpose, ".crt")

            def issue(address: str = address, purpose: Purpose = purpose) -> Path:
                return pki.issue_user(address, purpose)

            builder.ensure_leaf(cert_path, "personnes", issue)
    for hostname in dict.fromkeys(hostnames):

        def issue_server(hostname: str = hostname) -> Path:
            return pki.issue_server(hostname)

        builder.ensure_leaf(pki.directory / f"{hostname}.crt", "serveurs", issue_server)
    pki.refresh_crls()


__all__ = [
    "CA_NAMES",
    "DEFAULT_SERVERS",
    "DEMO_USERS",
    "PRIVATE_FILE_MODE",
    "PURPOSES",
    "CaName",
    "Change",
    "DevPki",
    "DevPkiError",
    "Purpose",
    "describe_os_error",
    "init_dev_pki",
    "load_dev_pki",
    "load_first_certificate",
    "load_private_key",
    "normalise_address",
    "normalise_hostname",
]
