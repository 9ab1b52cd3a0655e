"""Content ciphers and key transports of the S/MIME engine, and the choice per recipient.

Role: one table of what the engine knows (names, OIDs, key sizes; which ones it may *send*)
and the rule that picks, for each outgoing message, a content cipher and a key transport
per recipient. Pure functions, no I/O.

The rule (issue "S/MIME engine" §2; RFC 8551 §2.7 and §2.7.1 on choosing by the
recipient's smimeCapabilities):
- ``auto`` content cipher: AES-GCM (AuthEnvelopedData, RFC 5083/5084) only for a recipient
  known to support it (``RecipientCapabilities.aes_gcm``), else AES-256-CBC, which every
  client opens. With several recipients there is one content-encryption key, so the
  cipher must suit all of them: GCM only when *all* support it.
- ``auto`` key transport: RSA-OAEP (SHA-256) only for a recipient known to support it,
  else RSA PKCS#1 v1.5. EC recipients always use ECDH ephemeral-static (RFC 5753); an
  explicit RSA key transport in the configuration does not apply to them.
- An explicit cipher / key transport from the configuration is honoured as given.
- 3DES (and AES-192, which few clients advertise) are decrypt-only: never sent.

Invariant: every name returned is in ``SEND_CIPHERS`` / ``KEY_TRANSPORTS``; anything
unusable raises ``EncryptError`` naming the reason (never silently downgraded).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes

from gateway.smime.types import EncryptError, RecipientCapabilities


@dataclass(frozen=True)
class ContentCipher:
    """A content-encryption algorithm as CMS names it."""

    name: str  # our name, as in the configuration ("aes-256-gcm")
    oid: str
    asn1_name: str  # asn1crypto's name for the OID
    key_size: int  # bytes
    aead: bool  # True: AES-GCM in AuthEnvelopedData; False: CBC in EnvelopedData
    block_size: int  # CBC block size (16 for AES, 8 for 3DES); 16 for GCM (unused)
    sendable: bool


_AES = "2.16.840.1.101.3.4.1"
CIPHERS: dict[str, ContentCipher] = {
    c.name: c
    for c in (
        ContentCipher("aes-128-cbc", f"{_AES}.2", "aes128_cbc", 16, False, 16, True),
        ContentCipher("aes-192-cbc", f"{_AES}.22", "aes192_cbc", 24, False, 16, False),
        ContentCipher("aes-256-cbc", f"{_AES}.42", "aes256_cbc", 32, False, 16, True),
        ContentCipher("aes-128-gcm", f"{_AES}.6", "aes128_gcm", 16, True, 16, True),
        ContentCipher("aes-192-gcm", f"{_AES}.26", "aes192_gcm", 24, True, 16, False),
        ContentCipher("aes-256-gcm", f"{_AES}.46", "aes256_gcm", 32, True, 16, True),
        # RFC 8551 §2.7: 3DES is decrypt-only ("SHOULD-" to receive, never to send here)
        ContentCipher("des-ede3-cbc", "1.2.840.113549.3.7", "tripledes_3key", 24, False, 8, False),
    )
}
CIPHERS_BY_ASN1_NAME = {c.asn1_name: c for c in CIPHERS.values()}
SEND_CIPHERS = tuple(name for name, c in CIPHERS.items() if c.sendable)
WEAK_CIPHERS = frozenset({"des-ede3-cbc"})

RSA_PKCS1V15 = "rsa-pkcs1v15"
RSA_OAEP = "rsa-oaep"
ECDH = "ecdh"
KEY_TRANSPORTS = (RSA_PKCS1V15, RSA_OAEP, ECDH)

AUTO = "auto"
DEFAULT_CIPHER = "aes-256-cbc"  # the safe default every client opens
GCM_OIDS = frozenset({CIPHERS["aes-128-gcm"].oid, CIPHERS["aes-256-gcm"].oid})

# RFC 3565 §2.3.2 / RFC 5753 §7.1.5: AES key wrap OIDs by key size (bytes)
AES_WRAP_OIDS = {16: f"{_AES}.5", 24: f"{_AES}.25", 32: f"{_AES}.45"}


@dataclass(frozen=True)
class Choice:
    """The algorithms for one message: one content cipher, a key transport per recipient
    (in the order the recipients were given)."""

    cipher: str
    key_transports: tuple[str, ...]


@functools.lru_cache(maxsize=1024)
def public_key_of(certificate: x509.Certificate) -> CertificatePublicKeyTypes:
    """The certificate's public key, parsed once per certificate (recipients recur)."""
    return certificate.public_key()


def key_kind(certificate: x509.Certificate) -> str:
    """``"rsa"`` or ``"ec"``; ``EncryptError`` for any other recipient key (Ed25519,
    DSA, X25519 ... are not encryption keys the engine supports)."""
    public_key = public_key_of(certificate)
    if isinstance(public_key, rsa.RSAPublicKey):
        return "rsa"
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return "ec"
    raise EncryptError(f"unsupported recipient key type {type(public_key).__name__}")


def check_send_cipher(cipher: str) -> ContentCipher:
    """The ``ContentCipher`` for a name we may send; ``EncryptError`` otherwise (3DES,
    AES-192, unknown names)."""
    spec = CIPHERS.get(cipher)
    if spec is None or not spec.sendable:
        allowed = ", ".join(SEND_CIPHERS)
        raise EncryptError(f"content cipher {cipher!r} cannot be used to send ({allowed})")
    return spec


def _gcm_cipher_for(caps: RecipientCapabilities | None) -> str | None:
    """The GCM cipher a recipient supports, preferring AES-256; None when unknown.

    ``caps.ciphers`` (the advertised OIDs) narrows the size when it lists one GCM variant
    only; an empty list with ``aes_gcm`` set (e.g. from configuration) means both."""
    if caps is None or not caps.aes_gcm:
        return None
    advertised = set(caps.ciphers) & GCM_OIDS
    if advertised == {CIPHERS["aes-128-gcm"].oid}:
        return "aes-128-gcm"
    return "aes-256-gcm"


def _key_transport_for(kind: str, caps: RecipientCapabilities | None, key_transport: str) -> str:
    if kind == "ec":
        return ECDH  # EC recipients always use ECDH (RFC 5753), whatever the setting
    if key_transport == AUTO:
        return RSA_OAEP if caps is not None and caps.rsa_oaep else RSA_PKCS1V15
    if key_transport not in (RSA_PKCS1V15, RSA_OAEP):
        raise EncryptError(f"key transport {key_transport!r} does not apply to an RSA key")
    return key_transport


def choose_algorithms(
    cert: x509.Certificate,
    caps: RecipientCapabilities | None,
    content_cipher: str = AUTO,
    key_transport: str = AUTO,
) -> tuple[str, str]:
    """(content cipher, key transport) for one recipient, per the module's rule."""
    choice = choose_for_recipients([(cert, caps)], content_cipher, key_transport)
    return choice.cipher, choice.key_transports[0]


def choose_for_recipients(
    recipients: Sequence[tuple[x509.Certificate, RecipientCapabilities | None]],
    content_cipher: str = AUTO,
    key_transport: str = AUTO,
) -> Choice:
    """The common content cipher and each recipient's key transport.

    With ``auto``, GCM is chosen only when every recipient supports it (AES-256-GCM unless
    one of them advertises AES-128-GCM only), else AES-256-CBC."""
    if not recipients:
        raise EncryptError("no recipient to encrypt to")
    transports = tuple(
        _key_transport_for(key_kind(cert), caps, key_transport) for cert, caps in recipients
    )
    if content_cipher != AUTO:
        return Choice(check_send_cipher(content_cipher).name, transports)
    gcm = [_gcm_cipher_for(caps) for _, caps in recipients]
    if any(choice is None for choice in gcm):
        return Choice(DEFAULT_CIPHER, transports)
    cipher = "aes-128-gcm" if "aes-128-gcm" in gcm else "aes-256-gcm"
    return Choice(cipher, transports)
