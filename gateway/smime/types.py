"""Types shared by the parts of the S/MIME engine and by its callers.

Kept in one small module so that the signer, the verifier, the encryptor, the
decryptor and the certificate validator agree on one vocabulary without importing
one another. Pure data: no I/O, no crypto.

Security note: ``DecryptError`` has one public text for every cause (RFC 3218 §2.3:
a sender must not learn whether PKCS#1 v1.5 padding, the key or the structure
failed); the precise cause is only in ``detail``, for the local log.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from cryptography import x509

if TYPE_CHECKING:  # mime imports this module
    from gateway.smime.mime import MimeEntity


class Purpose(enum.Enum):
    """What a certificate is being validated for (decides key usage and EKU checks)."""

    SMIME_SIGN = "smime-sign"  # digitalSignature or nonRepudiation; EKU emailProtection
    SMIME_ENCRYPT = "smime-encrypt"  # keyEncipherment or keyAgreement; EKU emailProtection
    TLS_SERVER = "tls-server"  # EKU serverAuth
    TLS_CLIENT = "tls-client"  # EKU clientAuth


class CertStatus(enum.Enum):
    """Outcome of a validation; the names are what ``missive certs check`` prints."""

    VALID = "valid"
    EXPIRED = "expired"  # or not yet valid
    REVOKED = "revoked"
    WRONG_USAGE = "wrong-usage"  # key usage / EKU / basic constraints
    UNTRUSTED = "untrusted"  # no path to a configured anchor, bad signature in the path
    WEAK = "weak"  # RSA < 2048, SHA-1 signature, other refused algorithm
    REVOCATION_UNKNOWN = "revocation-unknown"  # hard-fail and no usable CRL/OCSP answer
    INVALID = "invalid"  # malformed certificate or extension


@dataclass(frozen=True)
class ValidationResult:
    """Result of validating one end-entity certificate for one purpose at one time."""

    status: CertStatus
    reason: str = ""  # human-readable, safe to log (no secrets)
    chain: tuple[x509.Certificate, ...] = ()  # leaf first, anchor last, when a path was built
    revocation_checked: bool = False  # True when CRL/OCSP confirmed "good"

    @property
    def valid(self) -> bool:
        return self.status is CertStatus.VALID


class ChainValidator(Protocol):
    """What the verifier, the SMTP front, the relay and the annuaire call to validate a
    certificate. Implemented by ``gateway.smime.validate.CertificateValidator``.

    Synchronous and thread-safe: revocation data is cached; an asyncio caller uses
    ``asyncio.to_thread``. ``untrusted`` are extra certificates that may serve as
    intermediates (e.g. those carried in a SignedData); they are never anchors.
    """

    def validate(
        self,
        certificate: x509.Certificate,
        untrusted: Sequence[x509.Certificate] = (),
        purpose: Purpose = Purpose.SMIME_SIGN,
        at: datetime | None = None,
    ) -> ValidationResult: ...


@dataclass(frozen=True)
class RecipientCapabilities:
    """What a correspondent's client is known to support, learnt from the
    smimeCapabilities attribute (RFC 8551 §2.5.2) of a verified signed message it sent,
    or from configuration. Absent knowledge means "assume the least": AES-CBC with
    RSA PKCS#1 v1.5, which every client opens."""

    aes_gcm: bool = False  # id-aes128-GCM / id-aes256-GCM (RFC 5084)
    rsa_oaep: bool = False  # id-RSAES-OAEP (RFC 8017 / RFC 3560)
    ciphers: tuple[str, ...] = ()  # dotted OIDs in the sender's order of preference
    learnt_at: datetime | None = None
    source: str = ""  # "signed-message" | "config"


PUBLIC_DECRYPT_ERROR = "the message could not be decrypted"


class SmimeError(Exception):
    """Base of the engine's typed errors."""


class DecryptError(SmimeError):
    """Any decryption failure. ``str()`` is always the one public text; the cause, for the
    local log only, is in ``detail``. Never carries partial plaintext."""

    def __init__(self, detail: str = "") -> None:
        super().__init__(PUBLIC_DECRYPT_ERROR)
        self.detail = detail


class EncryptError(SmimeError):
    """A message could not be encrypted (unusable recipient certificate or key type)."""


class SignError(SmimeError):
    """A message could not be signed (unusable key or certificate)."""


class MalformedMessage(SmimeError):
    """The MIME or CMS structure could not be parsed (verification of such input gives an
    *invalid* result, not this exception; this is for API misuse and hopeless input)."""


@dataclass(frozen=True)
class SignerInfoResult:
    """One signer's outcome in a verification."""

    signature_valid: bool
    reason: str  # why invalid ("" when valid)
    certificate: x509.Certificate | None
    certificate_validation: ValidationResult | None  # None when no validator was given
    digest_algorithm: str  # e.g. "sha256"
    signature_algorithm: str  # e.g. "rsassa_pkcs1v15", "rsassa_pss", "ecdsa", "ed25519"
    signing_time: datetime | None
    capabilities: RecipientCapabilities | None
    email_addresses: tuple[str, ...] = ()  # rfc822Name SANs (and emailAddress in the DN)


@dataclass(frozen=True)
class VerifyResult:
    """Result of verifying a signed message. ``valid`` only when every signer's
    signature is valid, its certificate validates for signing, and one signer is bound to
    the From address (RFC 8550 §3)."""

    valid: bool
    reason: str
    signers: tuple[SignerInfoResult, ...] = ()
    content: bytes = b""  # the signed MIME entity (canonical CRLF bytes)
    from_address_bound: bool = False
    detached: bool = True
    extra: dict[str, str] = field(default_factory=dict)
    # Added by the signverify helper: the header fields the signature protects, from an
    # RFC 9788 Cryptographic Payload (hp="clear"/"cipher") or from the inner message of a
    # wrapped message (RFC 8551 §3.1, Direct), as (name, unfolded raw value) in order;
    # and, for a wrapped message, the inner RFC 5322 message itself.
    protected_headers: tuple[tuple[str, str], ...] = ()
    inner_message: bytes | None = None
    # ``content`` parsed whole (``mime.parse_entity(content)``, ``data`` is ``content``)
    # when the verifier parsed it already, so that a caller need not parse it again;
    # None otherwise. Not part of the comparison: it is ``content``, parsed.
    content_entity: MimeEntity | None = field(default=None, compare=False, repr=False)
