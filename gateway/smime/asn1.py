"""asn1crypto registrations the S/MIME engine needs to *parse* what real peers send.

Role: importing this module (``import gateway.smime.asn1``) teaches asn1crypto 1.5.1 the
types it lacks; every module of the engine that parses CMS imports it first. The
registrations are idempotent and only add entries, never replace asn1crypto's own.

What is added, and why (measured on asn1crypto 1.5.1):
- ``GCMParameters`` (RFC 5084 §3.2) for id-aes128/192/256-GCM: asn1crypto leaves them as
  an opaque ``Any``.
- The ECDH key agreement schemes of RFC 5753 §7.1.4 (dhSinglePass-stdDH-sha*kdf-scheme
  and the cofactorDH variants, SECG and ANSI X9.63 arcs) as KeyEncryptionAlgorithm ids,
  with their parameter, the KeyWrapAlgorithm (an AlgorithmIdentifier, RFC 5753 §3.1.1);
  asn1crypto does not know them, so kari recipients written by OpenSSL parse only as
  unnamed OIDs.
- The Microsoft encryption-key-preference signed attribute 1.3.6.1.4.1.311.16.4 (an
  IssuerAndSerialNumber) that NSS and Outlook add: without a spec ``.native`` on a
  SignerInfo raises ``ValueError`` (measured), and verification must never break on an
  unknown attribute.
- ``EccCmsSharedInfo`` (RFC 5753 §7.2), used by the tests to check the KDF input we build.
- The ESS signingCertificate(V2) attributes come with ``asn1crypto.tsp``, imported here so
  that they are always registered.

Security note: specs only describe shapes; nothing here evaluates input.
"""

from __future__ import annotations

from typing import Any

from asn1crypto import algos, cms, core
from asn1crypto import tsp as _tsp  # noqa: F401 - registers signing_certificate(_v2)


class GCMParameters(core.Sequence):  # type: ignore[misc]  # asn1crypto is untyped
    """RFC 5084 §3.2: ``GCMParameters ::= SEQUENCE { aes-nonce OCTET STRING,
    aes-ICVlen AES-GCM-ICVlen DEFAULT 12 }`` (ICVlen is 12..16)."""

    _fields = [  # noqa: RUF012 - asn1crypto declares fields as class lists
        ("aes_nonce", core.OctetString),
        ("aes_icvlen", core.Integer, {"default": 12}),
    ]


class MicrosoftEncryptionKeyPreference(core.SetOf):  # type: ignore[misc]
    """Values of attribute 1.3.6.1.4.1.311.16.4: the sender's encryption certificate."""

    _child_spec = cms.IssuerAndSerialNumber


class EccCmsSharedInfo(core.Sequence):  # type: ignore[misc]
    """RFC 5753 §7.2 ``ECC-CMS-SharedInfo``: the X9.63 KDF's SharedInfo."""

    _fields = [  # noqa: RUF012
        ("key_info", cms.KeyEncryptionAlgorithm),
        ("entity_u_info", core.OctetString, {"explicit": 0, "optional": True}),
        ("supp_pub_info", core.OctetString, {"explicit": 2}),
    ]


GCM_ALGORITHMS = ("aes128_gcm", "aes192_gcm", "aes256_gcm")

# RFC 5753 §7.1.4 (and RFC 3278 for the SHA-1 ANSI X9.63 arcs): OID -> asn1crypto name.
ECDH_SCHEMES: dict[str, str] = {
    "1.3.133.16.840.63.0.2": "dh_single_pass_std_dh_sha1kdf",
    "1.3.132.1.11.0": "dh_single_pass_std_dh_sha224kdf",
    "1.3.132.1.11.1": "dh_single_pass_std_dh_sha256kdf",
    "1.3.132.1.11.2": "dh_single_pass_std_dh_sha384kdf",
    "1.3.132.1.11.3": "dh_single_pass_std_dh_sha512kdf",
    "1.3.133.16.840.63.0.3": "dh_single_pass_cofactor_dh_sha1kdf",
    "1.3.132.1.14.0": "dh_single_pass_cofactor_dh_sha224kdf",
    "1.3.132.1.14.1": "dh_single_pass_cofactor_dh_sha256kdf",
    "1.3.132.1.14.2": "dh_single_pass_cofactor_dh_sha384kdf",
    "1.3.132.1.14.3": "dh_single_pass_cofactor_dh_sha512kdf",
}

MICROSOFT_ENCRYPTION_KEY_PREFERENCE = "1.3.6.1.4.1.311.16.4"


def _add_oid_name(id_class: Any, dotted: str, name: str) -> None:
    """Add ``dotted -> name`` to an asn1crypto ObjectIdentifier subclass's map, keeping
    its lazily built reverse map consistent; never overrides an existing name."""
    if dotted in id_class._map:
        return
    id_class._map[dotted] = name
    if id_class._reverse_map is not None:
        id_class._reverse_map[name] = dotted


def _register() -> None:
    for name in GCM_ALGORITHMS:
        algos.EncryptionAlgorithm._oid_specs.setdefault(name, GCMParameters)
    for dotted, name in ECDH_SCHEMES.items():
        _add_oid_name(cms.KeyEncryptionAlgorithmId, dotted, name)
        cms.KeyEncryptionAlgorithm._oid_specs.setdefault(name, cms.KeyEncryptionAlgorithm)
    _add_oid_name(
        cms.CMSAttributeType,
        MICROSOFT_ENCRYPTION_KEY_PREFERENCE,
        "microsoft_encryption_key_preference",
    )
    cms.CMSAttribute._oid_specs.setdefault(
        "microsoft_encryption_key_preference", MicrosoftEncryptionKeyPreference
    )


_register()
