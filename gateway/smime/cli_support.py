"""What the S/MIME and key commands share: input and output, trust, key files.

Role: small adapters between ``argparse`` and the engine, so that ``gateway.smime.cli``
and ``gateway.smime.certs_cli`` only say what each command does. Every user mistake
becomes a ``UsageError`` (one line, exit status 2); nothing here prints a traceback.

Trust (decision): commands that validate certificates take ``--anchors FILE``
(repeatable) with ``--intermediates``, ``--crl`` and ``--revocation``; without
``--anchors`` they use the configuration's ``[trust]`` (``--config``, default
``conf/missive.toml``), exactly as the gateway would. Revocation data fetched over HTTP
(CRL distribution points, OCSP) is kept in memory only: a command run by hand writes
nothing under ``data_dir``. ``--revocation`` defaults to the configuration's value, or
``hard-fail`` with ``--anchors`` (fail closed; ``--crl`` gives local CRLs).

Key files (``--key``): PEM, mode 0600 like the key store (a key readable by others is
refused, not used); the key file may also hold its certificate and chain, as the key
store's files do, so ``--cert`` is optional then.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from gateway.cli_common import DEFAULT_CONFIG
from gateway.config import material
from gateway.errors import UsageError
from gateway.smime.revocation import RevocationMode
from gateway.smime.validate import CertificateValidator

if TYPE_CHECKING:
    from gateway.config import Config

MAX_INPUT = 256 * 1024 * 1024  # a message larger than this is not read (delivery caps 50 MB)
REVOCATION_CHOICES = tuple(mode.value for mode in RevocationMode)


# --------------------------------------------------------------------------- arguments


def add_input_argument(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "input",
        nargs="?",
        type=Path,
        metavar="FILE",
        help=f"{what} (default or '-': standard input)",
    )


def add_trust_arguments(parser: argparse.ArgumentParser) -> None:
    """``--anchors/--intermediates/--crl/--revocation`` and ``--config``."""
    group = parser.add_argument_group("trust (default: the configuration's [trust])")
    group.add_argument(
        "--anchors",
        type=Path,
        action="append",
        metavar="FILE",
        help="trust anchor certificates (PEM), repeatable",
    )
    group.add_argument(
        "--intermediates",
        type=Path,
        action="append",
        metavar="FILE",
        help="intermediate CA certificates (PEM), repeatable",
    )
    group.add_argument(
        "--crl",
        type=Path,
        action="append",
        metavar="FILE",
        help="CRL file (PEM or DER), repeatable",
    )
    group.add_argument(
        "--revocation",
        choices=REVOCATION_CHOICES,
        help="hard-fail | soft-fail | off (default: configuration, or hard-fail)",
    )
    add_optional_config_argument(parser)


def add_optional_config_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help=f"configuration file (default: {DEFAULT_CONFIG})",
    )


# --------------------------------------------------------------------------- input/output


def read_input(path: Path | None) -> bytes:
    """The bytes of ``path``, or of standard input for None or ``-``."""
    if path is None or str(path) == "-":
        data = sys.stdin.buffer.read(MAX_INPUT + 1)
        source = "standard input"
    else:
        try:
            with path.open("rb") as stream:
                data = stream.read(MAX_INPUT + 1)
        except OSError as error:
            raise UsageError(f"cannot read {path}: {error.strerror or error}") from None
        source = str(path)
    if len(data) > MAX_INPUT:
        raise UsageError(f"{source} is larger than {MAX_INPUT} bytes")
    if not data:
        raise UsageError(f"{source} is empty")
    return data


def write_output(data: bytes) -> None:
    sys.stdout.buffer.write(data)
    sys.stdout.buffer.flush()


# --------------------------------------------------------------------------- configuration


def config_path(args: argparse.Namespace) -> Path:
    path: Path | None = getattr(args, "config", None)
    return path if path is not None else DEFAULT_CONFIG


def load_config(args: argparse.Namespace) -> Config:
    """The configuration named by ``--config`` (default ``conf/missive.toml``)."""
    from gateway.config import load_config as load

    return load(config_path(args))


# --------------------------------------------------------------------------- trust


def _revocation(args: argparse.Namespace, default: str) -> str:
    chosen: str | None = getattr(args, "revocation", None)
    return chosen or default


def build_validator(args: argparse.Namespace) -> CertificateValidator:
    """The validator the trust arguments describe (module doc); ``MissiveError`` if
    neither ``--anchors`` nor a usable configuration is there."""
    anchors: list[Path] = getattr(args, "anchors", None) or []
    intermediates: list[Path] = getattr(args, "intermediates", None) or []
    crls: list[Path] = getattr(args, "crl", None) or []
    if anchors:
        return CertificateValidator.from_files(
            anchors, intermediates, crls, _revocation(args, RevocationMode.HARD_FAIL.value)
        )
    if getattr(args, "config", None) is None and not DEFAULT_CONFIG.exists():
        raise UsageError(
            f"no trust anchors: give --anchors FILE or --config FILE ({DEFAULT_CONFIG} not found)"
        )
    trust = load_config(args).trust
    return CertificateValidator.from_files(
        [*trust.anchors],
        [*trust.intermediates, *intermediates],
        [*trust.crls, *crls],
        _revocation(args, trust.revocation),
    )


# --------------------------------------------------------------------------- key files


@dataclass(frozen=True)
class KeyFile:
    """A private key read from ``--key``, with the certificates found next to it."""

    key: PrivateKeyTypes
    certificates: list[x509.Certificate]


def read_key_file(path: Path) -> KeyFile:
    """A PEM private key file, mode 0600; its certificates if it holds any."""
    try:
        material.check_private_mode(path)
        data = material.read_file(path)
        key = material.private_key_in(data, path)
    except material.Unusable as error:
        raise UsageError(str(error)) from None
    try:
        certificates = material.certificates_in(data, path)
    except material.Unusable:
        certificates = []
    return KeyFile(key, certificates)


def read_certificates(path: Path, what: str) -> list[x509.Certificate]:
    """Every certificate of a PEM bundle or a DER file; ``UsageError`` otherwise."""
    try:
        data = material.read_file(path)
    except material.Unusable as error:
        raise UsageError(str(error)) from None
    if b"-----BEGIN" in data:
        try:
            return material.certificates_in(data, path)
        except material.Unusable as error:
            raise UsageError(f"{what}: {error}") from None
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise UsageError(f"{what}: {path} is neither a PEM nor a DER certificate") from None


def read_all_certificates(paths: list[Path] | None, what: str) -> list[x509.Certificate]:
    return [cert for path in paths or [] for cert in read_certificates(path, what)]


def leaf_and_chain(
    key_file: KeyFile, cert_path: Path | None, key_path: Path
) -> tuple[x509.Certificate, list[x509.Certificate]]:
    """The certificate of the key (from ``--cert`` or the key file) and the others."""
    certificates = read_certificates(cert_path, "--cert") if cert_path else key_file.certificates
    if not certificates:
        raise UsageError(f"no certificate for {key_path}: give --cert FILE")
    leaf = next((c for c in certificates if material.key_matches(key_file.key, c)), None)
    if leaf is None:
        source = cert_path or key_path
        raise UsageError(f"the key in {key_path} does not match the certificate in {source}")
    return leaf, [c for c in certificates if c is not leaf]
