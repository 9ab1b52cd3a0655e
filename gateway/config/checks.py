"""Checks of the files a configuration names, each reported on its key.

Role: for every key that names a file, make sure the file is there and usable, so
``serve`` fails at start with one line per problem instead of at the first message:

- must exist and be readable: ``tls`` and listener certificates and keys, trust
  anchors, intermediates and CRLs, ``trust.liste_blanche`` (well-formed XML),
  ``annuaire.ldif`` (backend ``ldif``), ``annuaire.bind_password_file``,
  ``annuaire.ca_file``, ``keys.organisation_signing``, ``auth.users_file`` (valid
  TOML whose ``users``, if present, is an array of tables; the entries themselves are
  the business of the user store), route ``anchors`` and ``auth_password_file``,
  ``inbound.imap_fetch[].password_file``;
- PEM material: a certificate file starts with the leaf (the rest is its chain); its
  private key parses, is unencrypted, matches that leaf and is mode 0600; anchor files
  hold at least one CA certificate, intermediate files only CA certificates; each CRL
  parses (PEM or DER) and is issued by a configured anchor or intermediate;
  ``keys.organisation_signing`` holds a key and its certificate; password files are
  0600 and not empty;
- directories created at start (``spool_dir``, ``data_dir``, ``keys.dir``,
  ``postal.outbox``, a ``maildir:`` target) and the audit database need not exist
  (see ``material``); ``gateway.home`` must be an existing directory.

Privilege (STYLE §9): ``agent_keys=False`` skips opening files that only the secure
agent reads (``keys.organisation_signing``), for a process such as the SMTP front
that must never load a private key; their paths are still validated.
``key_store=True`` (``missive check-config``) also checks every ``*.pem`` of
``keys.dir``: named ``<address>.sign.pem`` or ``<address>[.<tag>].enc.pem``, mode
0600, a key and its matching certificate in each.
"""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TypeVar

from cryptography import x509

from gateway.config import material
from gateway.config.material import Unusable
from gateway.config.model import Config
from gateway.config.problems import Problems

T = TypeVar("T")


class _Checker:
    """Runs one file check for one key and turns ``Unusable`` into a problem line."""

    def __init__(self, problems: Problems) -> None:
        self.problems = problems

    def run(self, key: str, check: Callable[[], T]) -> T | None:
        try:
            return check()
        except Unusable as error:
            self.problems.add(key, str(error))
            return None

    def usable(self, key: str) -> bool:
        return not self.problems.is_bad(key)


def check_files(
    config: Config, problems: Problems, *, agent_keys: bool = True, key_store: bool = False
) -> None:
    """Report every unusable file ``config`` names (see module doc)."""
    checker = _Checker(problems)
    if checker.usable("gateway.home"):
        checker.run("gateway.home", partial(_check_home, config.gateway.home))
    _check_directories(config, checker)
    _check_tls_material(config, checker)
    _check_trust(config, checker)
    _check_annuaire(config, checker)
    _check_secrets(config, checker)
    _check_users_file(config, checker)
    if agent_keys:
        _check_organisation_signing(config, checker)
    if key_store and checker.usable("keys.dir"):
        _check_key_store(config.keys.dir, checker)


def _check_home(home: Path) -> None:
    if not home.is_dir():
        raise Unusable(f"{home} is not an existing directory")


def _check_directories(config: Config, checker: _Checker) -> None:
    directories = {
        "gateway.spool_dir": config.gateway.spool_dir,
        "gateway.data_dir": config.gateway.data_dir,
        "keys.dir": config.keys.dir,
        "postal.outbox": config.postal.outbox,
    }
    if config.inbound.deliver_to.path is not None:
        directories["inbound.deliver_to"] = config.inbound.deliver_to.path
    for key, path in directories.items():
        if checker.usable(key):
            checker.run(key, partial(material.check_directory_target, path))
    if checker.usable("audit.path"):
        checker.run("audit.path", partial(material.check_file_target, config.audit.path))


# ---------------------------------------------------------------- TLS


def _check_pair(prefix: str, certificate: Path | None, key: Path | None, checker: _Checker) -> None:
    cert_key, key_key = f"{prefix}.certificate", f"{prefix}.private_key"
    chain = leaf_key = None
    if certificate is not None and checker.usable(cert_key):
        chain = checker.run(cert_key, partial(material.read_certificates, certificate))
    if key is not None and checker.usable(key_key):
        checker.run(key_key, partial(material.check_private_mode, key))
        leaf_key = checker.run(key_key, partial(material.read_private_key, key))
    if chain and leaf_key is not None and not material.key_matches(leaf_key, chain[0]):
        checker.problems.add(
            key_key, f"{key} does not match the certificate in {certificate} (its first one)"
        )


def _check_tls_material(config: Config, checker: _Checker) -> None:
    _check_pair("tls", config.tls.certificate, config.tls.private_key, checker)
    for index, listener in enumerate(config.listeners):
        prefix = f"listeners[{index}]"
        _check_pair(prefix, listener.certificate, listener.private_key, checker)


# ---------------------------------------------------------------- trust


def _read_all(
    key: str, paths: tuple[Path, ...], read: Callable[[Path], list[T]], checker: _Checker
) -> list[T] | None:
    """Everything ``read`` gets from ``paths`` (key ``key[i]``); None if one failed."""
    if not checker.usable(key):
        return None
    result: list[T] = []
    complete = True
    for index, path in enumerate(paths):
        items = checker.run(f"{key}[{index}]", partial(read, path))
        complete = complete and items is not None
        result.extend(items or [])
    return result if complete else None


def _read_intermediates(path: Path) -> list[x509.Certificate]:
    certificates = material.read_certificates(path)
    for number, certificate in enumerate(certificates, start=1):
        if not material.is_ca(certificate):
            subject = certificate.subject.rfc4514_string()
            raise Unusable(f"certificate {number} in {path} ({subject}) is not a CA certificate")
    return certificates


def _check_trust(config: Config, checker: _Checker) -> None:
    trust = config.trust
    anchors = _read_all("trust.anchors", trust.anchors, material.read_anchors, checker)
    intermediates = _read_all(
        "trust.intermediates", trust.intermediates, _read_intermediates, checker
    )
    issuers = None
    if anchors is not None and intermediates is not None:
        issuers = {certificate.subject for certificate in anchors + intermediates}
    for index, path in enumerate(trust.crls):
        key = f"trust.crls[{index}]"
        if checker.usable(key):
            checker.run(key, partial(_check_crl_file, path, issuers))
    if trust.liste_blanche is not None and checker.usable("trust.liste_blanche"):
        blanche = trust.liste_blanche
        checker.run("trust.liste_blanche", partial(material.check_liste_blanche, blanche))
    for index, route in enumerate(config.routes):
        _read_all(f"routes[{index}].anchors", route.anchors, material.read_anchors, checker)


def _check_crl_file(path: Path, issuers: set[x509.Name] | None) -> None:
    for crl in material.read_crls(path):
        if issuers is not None and crl.issuer not in issuers:
            raise Unusable(
                f"{path} is issued by {crl.issuer.rfc4514_string()}, which is not among"
                " trust.anchors and trust.intermediates"
            )


# ---------------------------------------------------------------- other files


def _check_annuaire(config: Config, checker: _Checker) -> None:
    annuaire = config.annuaire
    if annuaire.backend == "ldif" and checker.usable("annuaire.backend"):
        if checker.usable("annuaire.ldif"):
            checker.run("annuaire.ldif", partial(material.check_readable, annuaire.ldif))
    ca_file = annuaire.ca_file
    if ca_file is not None and checker.usable("annuaire.ca_file"):
        checker.run("annuaire.ca_file", partial(material.read_anchors, ca_file))


def _secret_files(config: Config) -> dict[str, Path]:
    secrets: dict[str, Path] = {}
    if config.annuaire.bind_password_file is not None:
        secrets["annuaire.bind_password_file"] = config.annuaire.bind_password_file
    for index, route in enumerate(config.routes):
        if route.auth_password_file is not None:
            secrets[f"routes[{index}].auth_password_file"] = route.auth_password_file
    for index, fetch in enumerate(config.inbound.imap_fetch):
        secrets[f"inbound.imap_fetch[{index}].password_file"] = fetch.password_file
    return secrets


def _check_secrets(config: Config, checker: _Checker) -> None:
    for key, path in _secret_files(config).items():
        if checker.usable(key):
            checker.run(key, partial(material.check_secret_file, path))


def _check_users_file(config: Config, checker: _Checker) -> None:
    if checker.usable("auth.users_file"):
        checker.run("auth.users_file", partial(_read_users_file, config.auth.users_file))


def _read_users_file(path: Path) -> None:
    data = material.read_file(path)
    try:
        document = tomllib.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise Unusable(f"{path} is not valid TOML: {error}") from None
    users = document.get("users", [])
    if not isinstance(users, list) or not all(isinstance(user, dict) for user in users):
        raise Unusable(f"{path}: users must be an array of tables ([[users]])")


def _check_organisation_signing(config: Config, checker: _Checker) -> None:
    path = config.keys.organisation_signing
    key = "keys.organisation_signing"
    if path is not None and checker.usable(key):
        checker.run(key, partial(material.check_private_mode, path))
        checker.run(key, partial(_check_key_and_certificate, path))


def _check_key_and_certificate(path: Path) -> None:
    data = material.read_file(path)
    key = material.private_key_in(data, path)
    certificates = material.certificates_in(data, path)
    if not material.key_matches(key, certificates[0]):
        raise Unusable(f"the key in {path} does not match its (first) certificate")


def _key_file_name_is_valid(name: str) -> bool:
    stem = name.removesuffix(".pem")
    return "@" in stem and (stem.endswith(".sign") or stem.endswith(".enc"))


def _check_key_store(directory: Path, checker: _Checker) -> None:
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.pem")):
        if not _key_file_name_is_valid(path.name):
            checker.problems.add(
                "keys.dir",
                f"{path.name} is not named <address>.sign.pem or <address>[.<tag>].enc.pem",
            )
            continue
        checker.run("keys.dir", partial(material.check_private_mode, path))
        checker.run("keys.dir", partial(_check_key_and_certificate, path))
