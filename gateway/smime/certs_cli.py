"""``missive certs show FILE...`` and ``missive certs check [--config FILE]``.

Role: let a sysadmin see what a certificate is and whether the gateway would trust it,
and check every certificate the configuration uses before it bites. Hooked into the
``certs`` group of ``gateway.pki.cli`` through ``add_certs_subcommands``.

``certs show FILE...`` prints, for each certificate of each file (PEM bundle, a key
store file, or DER): subject, issuer, serial, validity, key type and size, key usage,
EKU, subjectAltName, what it is for (sign / encrypt / TLS server / TLS client, by the
validator's own usage rules), then for each of those purposes the validator's verdict
with the chain it built and whether revocation was confirmed. Trust: ``--anchors``...
or the configuration (``cli_support``); when neither is available (no ``--anchors``,
no ``--config``, no ``conf/missive.toml``) the validation lines say so. Exit 0.

``certs check [--config FILE]`` goes over every certificate the configuration uses:
``tls.certificate`` (TLS server and client: the relay presents it too), each listener's
own certificate (TLS server), every key of ``keys.dir`` (its purpose),
``keys.organisation_signing`` (signing), the trust anchors and intermediates (dates,
and each intermediate's issuer among them) and the configured CRLs (signature by a
configured CA, nextUpdate). One line per finding: ``ok``, ``warn`` or ``FAIL``.
Decisions: a certificate (or CRL nextUpdate) ending within ``EXPIRY_WARNING`` (30 days)
is a warning; in the key store only the *current* key of each address and purpose is
judged (an older key superseded by a valid newer one is ``ok`` whatever its dates: an
older encryption key is kept for decryption; a *newer* key that does not validate is a
warning: it is not used); an address whose every key of a purpose is invalid is a
failure. Exit 0 when everything is ``ok``, 1 when any line is ``warn`` or ``FAIL``
(so a daily cron job can mail the output), 2 when the configuration cannot be read.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa

from gateway.cli_common import DEFAULT_CONFIG, SubParsers
from gateway.config import Config, material
from gateway.errors import MissiveError, UsageError
from gateway.smime import certinfo
from gateway.smime import cli_support as support
from gateway.smime.keystore import KeyStore, StoredKey, newest_first, validate_stored
from gateway.smime.types import ChainValidator, Purpose, ValidationResult
from gateway.smime.validate import CertificateValidator

EXPIRY_WARNING = timedelta(days=30)
_CRL_SIGNER_KEYS = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
    dsa.DSAPublicKey,
)


def add_certs_subcommands(commands: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``show`` and ``check`` to the ``certs`` group's subparsers."""
    show = commands.add_parser(
        "show",
        help="describe certificates: usage, chain, revocation status",
        description="Describe each certificate of each FILE and validate it for what it is for.",
    )
    show.add_argument("files", type=Path, nargs="+", metavar="FILE")
    support.add_trust_arguments(show)
    show.set_defaults(handler=run_show)
    check = commands.add_parser(
        "check",
        help="check every certificate the configuration uses (exit 1 if any needs action)",
    )
    support.add_optional_config_argument(check)
    check.set_defaults(handler=run_check)


# =========================================================================== show


def _certificates_of(path: Path) -> list[x509.Certificate]:
    return support.read_certificates(path, str(path))


def _show_validator(args: argparse.Namespace) -> tuple[ChainValidator | None, str]:
    if not args.anchors and args.config is None and not DEFAULT_CONFIG.exists():
        return None, "not validated: no --anchors and no configuration"
    return support.build_validator(args), ""


def _validation_lines(result: ValidationResult, label: str) -> list[str]:
    detail = f" ({result.reason})" if result.reason else ""
    lines = [f"  validation ({label}): {result.status.value}{detail}"]
    if result.chain:
        lines.append("    chain: " + " <- ".join(certinfo.name(c.subject) for c in result.chain))
        revocation = "confirmed good" if result.revocation_checked else "not confirmed"
        lines.append(f"    revocation: {revocation}")
    return lines


def show_lines(
    certificate: x509.Certificate,
    others: list[x509.Certificate],
    validator: ChainValidator | None,
    note: str,
    now: datetime,
) -> list[str]:
    """What ``certs show`` prints for one certificate."""
    lines = [f"  {label}: {value}" for label, value in certinfo.describe(certificate, now)]
    if certinfo.is_ca(certificate):
        return lines
    if validator is None:
        return [*lines, f"  validation: {note}"]
    purposes = certinfo.purposes(certificate) or [Purpose.SMIME_SIGN]
    for purpose in purposes:
        result = validator.validate(certificate, others, purpose)
        lines += _validation_lines(result, certinfo.PURPOSE_LABELS[purpose])
    return lines


def run_show(args: argparse.Namespace) -> int:
    """Handler of ``missive certs show``."""
    loaded = [(path, _certificates_of(path)) for path in args.files]  # every file first
    validator, note = _show_validator(args)
    now = datetime.now(UTC)
    for path, certificates in loaded:
        for number, certificate in enumerate(certificates, start=1):
            print(f"{path} [{number}/{len(certificates)}]")
            others = [c for c in certificates if c is not certificate]
            for line in show_lines(certificate, others, validator, note, now):
                print(line)
    return 0


# =========================================================================== check


@dataclass(frozen=True)
class Finding:
    level: str  # "ok" | "warn" | "FAIL"
    key: str  # configuration key (or key store file)
    text: str

    def line(self) -> str:
        return f"{self.level:<4} {self.key}: {self.text}"


def _expiry_level(end: datetime, now: datetime) -> str:
    return "warn" if end - now <= EXPIRY_WARNING else "ok"


def _judge(
    key: str, certificate: x509.Certificate, result: ValidationResult, now: datetime
) -> Finding:
    subject = certinfo.name(certificate.subject)
    end = certificate.not_valid_after_utc
    if not result.valid:
        detail = f" ({result.reason})" if result.reason else ""
        return Finding("FAIL", key, f"{subject}: {result.status.value}{detail}")
    level = _expiry_level(end, now)
    return Finding(
        level, key, f"{subject}: valid, expires {end:%Y-%m-%d} ({(end - now).days} days)"
    )


def _check_leaf_file(
    key: str, path: Path, purposes: Iterable[Purpose], validator: ChainValidator, now: datetime
) -> list[Finding]:
    try:
        certificates = material.read_certificates(path)
    except material.Unusable as error:
        return [Finding("FAIL", key, str(error))]
    leaf, chain = certificates[0], certificates[1:]
    findings = []
    for purpose in purposes:
        result = validator.validate(leaf, chain, purpose)
        label = f"{key} ({certinfo.PURPOSE_LABELS[purpose]})"
        findings.append(_judge(label, leaf, result, now))
    return findings


def _tls_findings(config: Config, validator: ChainValidator, now: datetime) -> list[Finding]:
    findings: list[Finding] = []
    if config.tls.certificate is not None:
        findings += _check_leaf_file(
            "tls.certificate",
            config.tls.certificate,
            (Purpose.TLS_SERVER, Purpose.TLS_CLIENT),
            validator,
            now,
        )
    for index, listener in enumerate(config.listeners):
        if listener.certificate is not None:
            key = f"listeners[{index}].certificate"
            findings += _check_leaf_file(
                key, listener.certificate, (Purpose.TLS_SERVER,), validator, now
            )
    if config.keys.organisation_signing is not None:
        findings += _check_leaf_file(
            "keys.organisation_signing",
            config.keys.organisation_signing,
            (Purpose.SMIME_SIGN,),
            validator,
            now,
        )
    return findings


def _slot_findings(
    keys: list[StoredKey], validator: ChainValidator, now: datetime
) -> list[Finding]:
    """One address and purpose: the newest valid key is judged, the rest are older."""
    findings: list[Finding] = []
    failures: list[Finding] = []
    current: StoredKey | None = None
    for stored in newest_first(keys):
        label = f"keys.dir {stored.path.name}"
        if current is not None:
            findings.append(Finding("ok", label, _older(stored)))
            continue
        result = validate_stored(stored, validator)
        finding = _judge(label, stored.certificate, result, now)
        if result.valid:
            current = stored
            findings.append(finding)
        else:
            failures.append(finding)
    if current is None:
        return findings + failures
    # a newer key that does not validate (revoked, wrong usage...) is not used: say so
    return findings + [Finding("warn", f.key, f"not used, {f.text}") for f in failures]


def _older(key: StoredKey) -> str:
    if key.purpose == "enc":
        return "older key, kept for decryption"
    return "older key, superseded by a newer one"


def _key_store_findings(config: Config, validator: ChainValidator, now: datetime) -> list[Finding]:
    store, problems = KeyStore.scan(config.keys.dir)
    findings = [Finding("FAIL", "keys.dir", problem) for problem in problems]
    slots: dict[tuple[str, str], list[StoredKey]] = {}
    for stored in store.keys:
        slots.setdefault((stored.address, stored.purpose), []).append(stored)
    for slot in sorted(slots):
        findings += _slot_findings(slots[slot], validator, now)
    if not store.keys and not problems:
        findings.append(Finding("ok", "keys.dir", f"no keys in {config.keys.dir}"))
    return findings


def _ca_finding(
    key: str, certificate: x509.Certificate, issuers: list[x509.Certificate], now: datetime
) -> Finding:
    subject = certinfo.name(certificate.subject)
    end = certificate.not_valid_after_utc
    if not certificate.not_valid_before_utc <= now <= end:
        return Finding("FAIL", key, f"{subject}: {certinfo.validity(certificate, now)}")
    if certificate.issuer != certificate.subject and not any(
        _issued_by(certificate, issuer) for issuer in issuers
    ):
        return Finding(
            "FAIL", key, f"{subject}: its issuer is not a configured anchor or intermediate"
        )
    return Finding(_expiry_level(end, now), key, f"{subject}: expires {end:%Y-%m-%d}")


def _issued_by(certificate: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _trust_findings(config: Config, now: datetime) -> list[Finding]:
    findings: list[Finding] = []
    groups = (
        ("trust.anchors", config.trust.anchors),
        ("trust.intermediates", config.trust.intermediates),
    )
    loaded = [
        (f"{key}[{index}]", material.read_certificates(path))
        for key, paths in groups
        for index, path in enumerate(paths)
    ]
    every = [certificate for _, certificates in loaded for certificate in certificates]
    for key, certificates in loaded:
        findings += [_ca_finding(key, certificate, every, now) for certificate in certificates]
    for index, path in enumerate(config.trust.crls):
        findings += [
            _crl_finding(f"trust.crls[{index}]", crl, every, now)
            for crl in material.read_crls(path)
        ]
    return findings


def _crl_finding(
    key: str, crl: x509.CertificateRevocationList, issuers: list[x509.Certificate], now: datetime
) -> Finding:
    issuer = certinfo.name(crl.issuer)
    signed = any(_crl_signed_by(crl, certificate) for certificate in issuers)
    if not signed:
        return Finding("FAIL", key, f"CRL of {issuer}: not signed by a configured CA")
    next_update = crl.next_update_utc
    if next_update is None:
        return Finding("warn", key, f"CRL of {issuer}: no nextUpdate")
    if next_update < now:
        return Finding("FAIL", key, f"CRL of {issuer}: stale since {next_update:%Y-%m-%dT%H:%MZ}")
    level = "warn" if next_update - now <= timedelta(days=1) else "ok"
    return Finding(level, key, f"CRL of {issuer}: next update {next_update:%Y-%m-%dT%H:%MZ}")


def _crl_signed_by(crl: x509.CertificateRevocationList, issuer: x509.Certificate) -> bool:
    key = issuer.public_key()
    if issuer.subject != crl.issuer or not isinstance(key, _CRL_SIGNER_KEYS):
        return False
    return crl.is_signature_valid(key)


def check_findings(config: Config, validator: ChainValidator, now: datetime) -> list[Finding]:
    """Every finding of ``certs check`` for ``config``."""
    return [
        *_tls_findings(config, validator, now),
        *_key_store_findings(config, validator, now),
        *_trust_findings(config, now),
    ]


def run_check(args: argparse.Namespace) -> int:
    """Handler of ``missive certs check``."""
    config = support.load_config(args)
    trust = config.trust
    try:
        validator = CertificateValidator.from_files(
            trust.anchors, trust.intermediates, trust.crls, trust.revocation
        )
        findings = check_findings(config, validator, datetime.now(UTC))
    except material.Unusable as error:
        raise UsageError(str(error)) from None
    except MissiveError:
        raise
    for finding in findings:
        print(finding.line())
    return 0 if all(f.level == "ok" for f in findings) else 1
