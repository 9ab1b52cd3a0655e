"""``missive smime encrypt`` and ``missive smime decrypt``: the command line of the envelope.

Role: the handlers of the two commands (``run_encrypt``, ``run_decrypt``);
``gateway.smime.cli`` registers them and imports this module, never the reverse. Each
command reads a file (or standard input) and writes standard output, bytes in and bytes
out (CRLF kept).

``smime encrypt FILE --recipient-cert C... [--cipher ...] [--key-transport ...]
[--id-type issuer-serial|ski]``: every recipient certificate is validated for
encryption first (fail closed: the trust arguments are required); ``auto`` means the
safe default of ``algorithms`` (AES-256-CBC, RSA PKCS#1 v1.5) since the command knows
nothing of the recipients' capabilities. Output: application/pkcs7-mime.

``smime decrypt FILE (--key K [--cert C] | --address A) [--accept-3des]``: input an
application/pkcs7-mime entity or raw DER/BER CMS; output the decrypted entity. Any
failure prints the one public text (``PUBLIC_DECRYPT_ERROR``) and exits 1; the cause
goes to the debug log only (RFC 3218 §2.3).

Trust for encrypt: ``--anchors``/``--intermediates``/``--crl``/``--revocation``, else the
configuration's ``[trust]`` (``cli_support``). Exit status: 0 success, 1 negative answer
(undecryptable message), 2 usage or configuration error, each a single line on standard
error.
"""

from __future__ import annotations

import argparse
import sys

from cryptography import x509

from gateway.errors import UsageError
from gateway.log import get_logger
from gateway.smime import cli_support as support
from gateway.smime import mime
from gateway.smime.certinfo import name
from gateway.smime.decrypt import Decrypted, decrypt, decrypt_entity
from gateway.smime.encrypt import encrypt_entity, plan_recipients
from gateway.smime.key_arguments import check_key_choice, store_from_args
from gateway.smime.recipient_infos import DecryptionKey
from gateway.smime.types import PUBLIC_DECRYPT_ERROR, DecryptError, Purpose, SmimeError

_log = get_logger("smime.cli")


def _decryption_keys(args: argparse.Namespace) -> list[DecryptionKey]:
    check_key_choice(args)
    if args.key is not None:
        key_file = support.read_key_file(args.key)
        leaf, _ = support.leaf_and_chain(key_file, args.cert, args.key)
        try:
            return [DecryptionKey(leaf, key_file.key)]  # type: ignore[arg-type]
        except (ValueError, TypeError):
            raise UsageError(f"{args.key}: this key cannot decrypt") from None
    keys = store_from_args(args).decryption_keys(args.address)
    if not keys:
        raise UsageError(f"no encryption key for {args.address} in the key store")
    return keys


def _recipients(args: argparse.Namespace) -> list[x509.Certificate]:
    certificates = support.read_all_certificates(args.recipient_cert, "--recipient-cert")
    validator = support.build_validator(args)
    problems = []
    for certificate in certificates:
        result = validator.validate(certificate, purpose=Purpose.SMIME_ENCRYPT)
        if not result.valid:
            problems.append(
                f"recipient {name(certificate.subject)}: {result.status.value} ({result.reason})"
            )
    if problems:
        raise UsageError(problems)
    return certificates


def run_encrypt(args: argparse.Namespace) -> int:
    """Handler of ``missive smime encrypt``."""
    entity = support.read_input(args.input)
    certificates = _recipients(args)
    try:
        cipher, recipients = plan_recipients(
            [(certificate, None) for certificate in certificates],
            content_cipher=args.cipher,
            key_transport=args.key_transport,
            id_type=args.id_type,
        )
        message = encrypt_entity(mime.canonicalize_crlf(entity), recipients, cipher=cipher)
    except SmimeError as error:
        raise UsageError(f"cannot encrypt: {error}") from None
    support.write_output(message)
    return 0


def run_decrypt(args: argparse.Namespace) -> int:
    """Handler of ``missive smime decrypt``."""
    data = support.read_input(args.input)
    keys = _decryption_keys(args)
    try:
        result: Decrypted = (
            decrypt(data, keys, accept_3des=args.accept_3des)
            if data[:1] == b"\x30"
            else decrypt_entity(data, keys, accept_3des=args.accept_3des)
        )
    except DecryptError as error:
        _log.debug("smime.decrypt.failed", detail=error.detail)
        print(PUBLIC_DECRYPT_ERROR, file=sys.stderr)
        return 1
    if result.weak:
        print(f"warning: decrypted with {result.cipher}, a weak cipher", file=sys.stderr)
    support.write_output(result.content)
    return 0
