"""The development certificate authorities of Missive: ``DevPki``, one PKI directory.

Role: ``DevPki`` is a development PKI on disk (``gateway.pki.dev`` builds or opens it and
documents the layout of its directory): the paths of its files, ``issue_user`` and
``issue_server`` (tests use them to make odd certificates: expired, wrong key usage,
weak key, no EKU...), ``revoke`` and ``refresh_crls``, and the per-CA index
(``<ca>.index.json``: CRL number, issued and revoked serials). Certificate profiles are
in ``gateway.pki.builders``. Split out of ``gateway.pki.dev`` (STYLE 11; a pure move:
every definition unchanged); ``gateway.pki.dev`` re-exports every public name.

Invariants:
- A key is never overwritten (``files.create_private_file``): an existing key is reused,
  and asking for another kind of key at its path (``rsa_bits``/``ec``) is an error.
- RSA-2048 by default; ``ec=True`` makes every new key P-256 (encryption certificates then
  carry keyAgreement, RFC 5753 / RFC 8550 §4.4.2). The key type is fixed per directory.
- Validity: CAs 10 years, leaves 2 years (capped by the issuer's notAfter), notBefore one
  hour in the past for clock skew; CRLs: thisUpdate one minute in the past, nextUpdate
  7 days later; a CRL is rewritten when missing, stale (< 1 day left), signed by another
  key or out of step with the index.
- Revocation pointers: with ``crl_base_url`` every certificate below the root carries the
  CRL distribution point ``f"{crl_base_url}/{issuing_ca}.crl"``; with ``ocsp_url`` every
  leaf carries an AIA OCSP access location equal to ``ocsp_url``.
- Addresses are ASCII (rfc822Name is an IA5String; SMTPUTF8 addresses would need the
  RFC 8398 otherName, which this development tool does not make). Only the domain is
  lower-cased (RFC 5321 §2.4: the local part is case-sensitive).
- ``gateway.pki.dev`` (the builder of a directory) is this class's one friend: it uses
  ``_now``, ``_issuer``/``_issuers``, ``_obtain_key``, ``_record_issued``, ``_note`` and
  ``_user_path``, which are private to the package, not to this module.

Security notes: this is a *development* tool. CA keys sit unencrypted next to the
certificates; never trust ``AC RACINE MISSIVE DEV`` outside tests. One writer per
directory at a time (no lock). No shelling out: everything is built with ``cryptography``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal, get_args

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from gateway.log import get_logger
from gateway.pki import builders
from gateway.pki.builders import Issuer, LeafProfile, PrivateKey, ProfileError, Revocation
from gateway.pki.files import (
    create_private_file,
    ensure_private_dir,
    replace_file,
    tighten_private_file,
)
from gateway.pki.store import (
    CaIndex,
    Change,
    DevPkiError,
    Settings,
    load_first_certificate,
    load_private_key,
    normalise_address,
    normalise_hostname,
    pem_certs,
    pem_key,
)

CaName = Literal["root", "personnes", "serveurs"]
Purpose = Literal["sign", "enc"]
CA_NAMES: tuple[CaName, ...] = get_args(CaName)
INTERMEDIATE_NAMES: tuple[CaName, ...] = ("personnes", "serveurs")
PURPOSES: tuple[Purpose, ...] = get_args(Purpose)

CA_LIFETIME = timedelta(days=3650)
LEAF_LIFETIME = timedelta(days=730)
CLOCK_SKEW = timedelta(hours=1)
CRL_SKEW = timedelta(minutes=1)
CRL_LIFETIME = timedelta(days=7)
RENEWAL_MARGIN = timedelta(days=1)

_log = get_logger("pki")


def _now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


class DevPki:
    """A development PKI in ``directory``; build it with ``init_dev_pki`` or open an
    existing one with ``load_dev_pki``. Path accessors raise ``DevPkiError`` when the
    file was never issued."""

    def __init__(self, directory: Path, settings: Settings) -> None:
        self.directory = directory
        self.settings = settings
        self.changes: list[Change] = []
        self._issuers: dict[str, Issuer] = {}

    # ----------------------------------------------------------------- paths
    @property
    def ec(self) -> bool:
        return self.settings.ec

    @property
    def root_cert(self) -> Path:
        return self.ca_cert("root")

    @property
    def intermediates(self) -> Path:
        return self._existing(self.directory / "intermediates.pem")

    def ca_cert(self, name: str) -> Path:
        return self._existing(self.directory / f"{_ca(name)}.crt")

    def ca_key(self, name: str) -> Path:
        return self._existing(self.directory / f"{_ca(name)}.key")

    def crl(self, name: str) -> Path:
        return self._existing(self.directory / f"{_ca(name)}.crl")

    def server_cert(self, hostname: str) -> Path:
        return self._existing(self.directory / f"{normalise_hostname(hostname)}.crt")

    def server_key(self, hostname: str) -> Path:
        return self._existing(self.directory / f"{normalise_hostname(hostname)}.key")

    def user_cert(self, address: str, purpose: str) -> Path:
        return self._existing(self._user_path(address, purpose, ".crt"))

    def user_key(self, address: str, purpose: str) -> Path:
        return self._existing(self._user_path(address, purpose, ".key"))

    def users(self) -> list[str]:
        """Addresses that have a signature or encryption certificate, sorted."""
        users_dir = self.directory / "users"
        names = users_dir.glob("*.crt") if users_dir.is_dir() else []
        return sorted({p.name.rsplit(".", 2)[0] for p in names})

    def _user_path(self, address: str, purpose: str, suffix: str) -> Path:
        if purpose not in PURPOSES:
            raise DevPkiError(f"purpose must be one of {', '.join(PURPOSES)}, not {purpose!r}")
        return self.directory / "users" / f"{normalise_address(address)}.{purpose}{suffix}"

    @staticmethod
    def _existing(path: Path) -> Path:
        if not path.exists():
            raise DevPkiError(f"{path} does not exist: issue it first (missive certs init-dev)")
        return path

    # --------------------------------------------------------------- issuing
    def issue_user(
        self,
        address: str,
        purpose: Purpose = "sign",
        *,
        key_usage: Sequence[str] | None = None,
        eku: Sequence[str] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        rsa_bits: int | None = None,
        ec: bool | None = None,
        emails: Sequence[str] | None = None,
        common_name: str | None = None,
        ca: CaName = "personnes",
        path: Path | None = None,
    ) -> Path:
        """Issue a person certificate now and return its path (the key is next to it).

        Defaults give the regular profile of ``purpose``. ``key_usage``/``eku`` take RFC
        5280 names (``"digitalSignature"``, ``"emailProtection"``, a dotted OID); an empty
        sequence omits the extension. ``emails`` replaces the SAN addresses (empty: no
        SAN). ``path`` puts the certificate there and its key at ``path.with_suffix(".key")``
        (default: ``users/<address>.<purpose>.crt``). An existing key is reused, never
        replaced; if ``rsa_bits``/``ec`` ask for another kind of key that is an error.
        """
        address = normalise_address(address)
        default_path = self._user_path(address, purpose, ".crt")  # also checks the purpose
        cert_path = path or default_path
        default_usage = self._default_usage(purpose, self._ec_for(ec))
        profile = LeafProfile(
            subject=builders.person_name(address, common_name),
            key_usage=tuple(default_usage if key_usage is None else key_usage),
            eku=tuple(("emailProtection",) if eku is None else eku),
            emails=tuple((address,) if emails is None else emails),
            not_before=not_before,
            not_after=not_after,
        )
        return self._issue_leaf(cert_path, ca, profile, rsa_bits=rsa_bits, ec_key=ec, chain=False)

    def issue_server(
        self,
        hostname: str,
        *,
        key_usage: Sequence[str] | None = None,
        eku: Sequence[str] | None = None,
        not_before: datetime | None = None,
        not_after: datetime | None = None,
        rsa_bits: int | None = None,
        ec: bool | None = None,
        dns_names: Sequence[str] | None = None,
        loopback: bool = True,
        ca: CaName = "serveurs",
        path: Path | None = None,
    ) -> Path:
        """Issue a server certificate (leaf + issuing CA in one PEM) and return its path;
        the key is at ``path.with_suffix(".key")`` (default ``<host>.crt``/``<host>.key``).
        Same conventions as ``issue_user``; ``loopback`` adds IP:127.0.0.1 to the SAN."""
        hostname = normalise_hostname(hostname)
        cert_path = path or self.directory / f"{hostname}.crt"
        usage = (
            ("digitalSignature",) if self._ec_for(ec) else ("digitalSignature", "keyEncipherment")
        )
        profile = LeafProfile(
            subject=builders.server_name(hostname),
            key_usage=tuple(usage if key_usage is None else key_usage),
            eku=tuple(("serverAuth", "clientAuth") if eku is None else eku),
            dns_names=tuple((hostname,) if dns_names is None else dns_names),
            ip_addresses=(builders.LOOPBACK,) if loopback else (),
            not_before=not_before,
            not_after=not_after,
        )
        return self._issue_leaf(cert_path, ca, profile, rsa_bits=rsa_bits, ec_key=ec, chain=True)

    @staticmethod
    def _default_usage(purpose: str, ec_key: bool) -> tuple[str, ...]:
        if purpose == "sign":
            return ("digitalSignature", "nonRepudiation")
        return ("keyAgreement",) if ec_key else ("keyEncipherment",)

    def _ec_for(self, ec_key: bool | None) -> bool:
        return self.ec if ec_key is None else ec_key

    def _issue_leaf(
        self,
        cert_path: Path,
        ca: str,
        profile: LeafProfile,
        *,
        rsa_bits: int | None,
        ec_key: bool | None,
        chain: bool,
    ) -> Path:
        if cert_path.suffix == ".key":
            raise DevPkiError(f"{cert_path}: a certificate path must not end in .key")
        if ec_key and rsa_bits is not None:
            raise DevPkiError("rsa_bits and ec=True contradict each other")
        ensure_private_dir(cert_path.parent)
        strict = rsa_bits is not None or ec_key is not None
        key = self._obtain_key(
            cert_path.with_suffix(".key"), self._ec_for(ec_key), rsa_bits, strict=strict
        )
        issuer = self._issuer(_ca(ca))
        try:
            certificate = builders.build_leaf_certificate(
                profile,
                key.public_key(),
                issuer,
                now=_now(),
                lifetime=LEAF_LIFETIME,
                skew=CLOCK_SKEW,
                crl_base_url=self.settings.crl_base_url,
                ocsp_url=self.settings.ocsp_url,
            )
        except ProfileError as error:
            raise DevPkiError(str(error)) from None
        self._write_certificate(cert_path, certificate, issuer, chain=chain)
        return cert_path

    def _obtain_key(
        self, key_path: Path, ec_key: bool, rsa_bits: int | None, *, strict: bool
    ) -> PrivateKey:
        wanted = "ec-secp256r1" if ec_key else f"rsa-{rsa_bits or builders.DEFAULT_RSA_BITS}"
        if key_path.exists():
            key = load_private_key(key_path)
            if tighten_private_file(key_path):
                self._note("tightened", key_path)
            self._note("kept", key_path)
            if strict and builders.key_description(key) != wanted:
                raise DevPkiError(
                    f"{key_path} holds an {builders.key_description(key)} key, not {wanted};"
                    " existing keys are never replaced: choose another path"
                )
            return key
        if rsa_bits is not None and not 512 <= rsa_bits <= 16384:
            raise DevPkiError(f"rsa_bits must be between 512 and 16384, not {rsa_bits}")
        key = builders.generate_key(ec_key=ec_key, rsa_bits=rsa_bits or builders.DEFAULT_RSA_BITS)
        if create_private_file(key_path, pem_key(key)):
            self._note("created", key_path)
            return key
        return load_private_key(key_path)  # another writer won the race: use its key

    def _write_certificate(
        self, cert_path: Path, certificate: x509.Certificate, issuer: Issuer, *, chain: bool
    ) -> None:
        extra = (issuer.certificate,) if chain and issuer.name != "root" else ()
        action = "reissued" if cert_path.exists() else "created"
        replace_file(cert_path, pem_certs(certificate, *extra))
        self._record_issued(issuer.name, certificate, cert_path)
        self._note(action, cert_path)

    def _record_issued(self, ca: str, certificate: x509.Certificate, path: Path) -> None:
        index = self._load_index(ca)
        index.issued.append(
            {
                "serial": format(certificate.serial_number, "x"),
                "subject": certificate.subject.rfc4514_string(),
                "not_after": certificate.not_valid_after_utc.isoformat(),
                "file": str(path),
            }
        )
        self._save_index(ca, index)

    # ----------------------------------------------------------- revocation
    def revoke(
        self,
        cert_path: Path,
        *,
        reason: x509.ReasonFlags | None = None,
        when: datetime | None = None,
    ) -> None:
        """Revoke the (first) certificate of ``cert_path``: record it in its issuing CA's
        index and rewrite that CA's CRL. Revoking twice is harmless."""
        certificate = load_first_certificate(cert_path)
        issuer = self._issuer_of(certificate)
        if issuer is None:
            raise DevPkiError(f"{cert_path} was not issued by a CA of {self.directory}")
        index = self._load_index(issuer.name)
        if all(r.serial != certificate.serial_number for r in index.revoked):
            revoked_at = when or _now() - CRL_SKEW
            index.revoked.append(Revocation(certificate.serial_number, revoked_at, reason))
            self._save_index(issuer.name, index)
            _log.info("pki.revoked", ca=issuer.name, serial=format(certificate.serial_number, "x"))
        self._write_crl(issuer.name)

    def _issuer_of(self, certificate: x509.Certificate) -> Issuer | None:
        for name in CA_NAMES:
            issuer = self._issuer(name)
            if certificate == issuer.certificate:
                continue  # a CA does not revoke itself
            try:
                certificate.verify_directly_issued_by(issuer.certificate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return issuer
        return None

    def refresh_crls(self, *, force: bool = False) -> None:
        """Rewrite each CA's CRL that is missing, stale or out of step (all if ``force``)."""
        for name in CA_NAMES:
            if force or not self._crl_is_current(name):
                self._write_crl(name)
            else:
                self._note("kept", self.directory / f"{name}.crl")

    def _crl_is_current(self, ca: str) -> bool:
        path = self.directory / f"{ca}.crl"
        if not path.exists():
            return False
        try:
            crl = x509.load_pem_x509_crl(path.read_bytes())
        except ValueError:
            return False
        issuer = self._issuer(ca)
        next_update = crl.next_update_utc
        wanted = {r.serial for r in self._load_index(ca).revoked}
        return (
            crl.is_signature_valid(issuer.key.public_key())
            and next_update is not None
            and next_update > _now() + RENEWAL_MARGIN
            and {r.serial_number for r in crl} == wanted
        )

    def _write_crl(self, ca: str) -> None:
        index = self._load_index(ca)
        index.crl_number += 1
        this_update = _now() - CRL_SKEW
        crl = builders.build_crl(
            self._issuer(ca),
            index.revoked,
            number=index.crl_number,
            this_update=this_update,
            next_update=this_update + CRL_LIFETIME,
        )
        self._save_index(ca, index)
        path = self.directory / f"{ca}.crl"
        action = "refreshed" if path.exists() else "created"
        replace_file(path, crl.public_bytes(serialization.Encoding.PEM))
        self._note(action, path)

    # ------------------------------------------------------ CA and indexes
    def _issuer(self, name: str) -> Issuer:
        if name not in self._issuers:
            key = load_private_key(self.ca_key(name))
            certificate = load_first_certificate(self.ca_cert(name))
            if certificate.public_key() != key.public_key():
                raise DevPkiError(f"{self.ca_key(name)} does not match {self.ca_cert(name)}")
            self._issuers[name] = Issuer(name, certificate, key)
        return self._issuers[name]

    def _index_path(self, ca: str) -> Path:
        return self.directory / f"{ca}.index.json"

    def _load_index(self, ca: str) -> CaIndex:
        path = self._index_path(ca)
        if not path.exists():
            return CaIndex()
        try:
            return CaIndex.from_json(json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, KeyError, TypeError) as error:
            raise DevPkiError(f"{path}: unreadable CA index ({error})") from None

    def _save_index(self, ca: str, index: CaIndex) -> None:
        text = json.dumps(index.to_json(), indent=2, sort_keys=True) + "\n"
        replace_file(self._index_path(ca), text.encode("utf-8"))

    def _note(self, action: str, path: Path) -> None:
        self.changes.append(Change(action, path))
        if action != "kept":
            _log.info(f"pki.{action}", path=str(path))


def _ca(name: str) -> CaName:
    for known in CA_NAMES:
        if name == known:
            return known
    raise DevPkiError(f"unknown CA {name!r} (known: {', '.join(CA_NAMES)})")
