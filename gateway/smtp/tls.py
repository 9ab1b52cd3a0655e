"""TLS for the listeners: server SSL contexts, and the client certificate check.

Role: build one ``ssl.SSLContext`` per listener (``[tls]`` defaults, the listener's own
certificate if it has one) and, after a handshake, turn the peer's certificate into a
validated subject DN with the S/MIME engine's ``CertificateValidator`` (RFC 5280 path,
key usage, EKU clientAuth, revocation by CRL/OCSP per ``[trust] revocation``).

Decisions:

- TLS 1.2 at least (``tls.min_version``, RFC 8996 retired 1.0/1.1; RFC 8314 §4.1);
  ``tls.ciphers`` (OpenSSL syntax) applies to TLS 1.2, TLS 1.3 suites are OpenSSL's.
- ``client_certificate = "optional" | "required"``: the certificate is requested and
  OpenSSL checks its chain against ``[trust] anchors`` + ``intermediates`` during the
  handshake (a certificate with no path fails the handshake); the validator then decides
  (revocation above all, which OpenSSL is not asked to check). A certificate that does
  not validate is *refused* - the session answers 550 5.7.1 to MAIL - rather than
  treated as absent: presenting a revoked certificate is not anonymous mail.
- Compression and renegotiation are off (CRIME; RFC 7457 §2.6), server cipher order.

Trust level: loads the listener's private key (needed for TLS; the front never loads a
signing or decryption key). Runs validation in a worker thread (``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from gateway.config import Config
from gateway.config.model import Listener
from gateway.errors import ConfigError
from gateway.log import get_logger
from gateway.smime.types import ChainValidator, Purpose

_log = get_logger("smtp.tls")

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


@dataclass(frozen=True)
class TlsFacts:
    """What a session learnt from its handshake (for the record and the policy)."""

    version: str | None
    cipher: str | None
    certificate: x509.Certificate | None


@dataclass(frozen=True)
class ClientCertificateCheck:
    """The validator's verdict: ``dn`` when valid, else ``problem`` (safe to log)."""

    dn: x509.Name | None
    problem: str | None = None
    serial: str | None = None


def server_context(config: Config, listener: Listener) -> ssl.SSLContext | None:
    """The SSL context of ``listener``, or None when its ``tls`` is ``none``."""
    if listener.tls == "none":
        return None
    certificate = listener.certificate or config.tls.certificate
    key = listener.private_key or config.tls.private_key
    if certificate is None or key is None:
        raise ConfigError(f"listeners[{listener.name}]: TLS without a certificate and key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = _VERSIONS[config.tls.min_version]
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    context.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
    if config.tls.ciphers:
        context.set_ciphers(config.tls.ciphers)
    _load_chain(context, certificate, key)
    if listener.client_certificate != "none":
        for path in (*config.trust.anchors, *config.trust.intermediates):
            context.load_verify_locations(cafile=str(path))
        required = listener.client_certificate == "required"
        context.verify_mode = ssl.CERT_REQUIRED if required else ssl.CERT_OPTIONAL
    return context


def _load_chain(context: ssl.SSLContext, certificate: Path, key: Path) -> None:
    try:
        context.load_cert_chain(str(certificate), str(key))
    except (OSError, ssl.SSLError) as error:
        raise ConfigError(f"{certificate}: cannot load TLS certificate/key: {error}") from None


def tls_facts(ssl_object: ssl.SSLObject | ssl.SSLSocket | None) -> TlsFacts:
    """Version, cipher and peer certificate of a finished handshake."""
    if ssl_object is None:
        return TlsFacts(None, None, None)
    cipher = ssl_object.cipher()
    der = ssl_object.getpeercert(binary_form=True)
    certificate = x509.load_der_x509_certificate(der) if der else None
    return TlsFacts(ssl_object.version(), cipher[0] if cipher else None, certificate)


async def check_client_certificate(
    validator: ChainValidator | None, certificate: x509.Certificate
) -> ClientCertificateCheck:
    """Validate ``certificate`` for TLS client use; never raises for a bad certificate."""
    serial = format(certificate.serial_number, "x")
    if validator is None:
        return ClientCertificateCheck(None, "no validator configured", serial)
    try:
        result = await asyncio.to_thread(validator.validate, certificate, (), Purpose.TLS_CLIENT)
    except Exception as error:  # noqa: BLE001 - any validator failure refuses (fail closed)
        _log.error("tls.client_cert.validation_error", serial=serial, error=type(error).__name__)
        return ClientCertificateCheck(None, "validation error", serial)
    if not result.valid:
        return ClientCertificateCheck(None, f"{result.status.value}: {result.reason}", serial)
    return ClientCertificateCheck(certificate.subject, None, serial)
