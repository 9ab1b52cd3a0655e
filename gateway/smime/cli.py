"""``missive keys import|list`` and ``missive smime sign|encrypt|decrypt|verify``.

Role: the command line of the key store (``gateway.smime.keystore``/``keyimport``) and
of the S/MIME engine, for sysadmins and for interop tests. Each ``smime`` command reads a
file (or standard input) and writes standard output, bytes in and bytes out (CRLF kept).
``register`` adds both command groups (``gateway.cli`` calls it); the commands live by
concern: ``gateway.smime.keys_cli`` (``keys import|list``), ``gateway.smime.signing_cli``
(``smime sign|verify``), ``gateway.smime.envelope_cli`` (``smime encrypt|decrypt``) and
``gateway.smime.key_arguments`` (the ``--key``/``--address`` arguments that sign and
decrypt share). This module imports them, never the reverse.

Trust for sign (``--address``), encrypt and verify: ``--anchors``/``--intermediates``/
``--crl``/``--revocation``, else the configuration's ``[trust]`` (``cli_support``).
Exit status: 0 success, 1 negative answer (invalid signature, undecryptable message),
2 usage or configuration error, each a single line on standard error.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from gateway.cli_common import SubParsers
from gateway.smime import cli_support as support
from gateway.smime.algorithms import AUTO, KEY_TRANSPORTS, SEND_CIPHERS
from gateway.smime.encrypt import ID_TYPES, ISSUER_SERIAL
from gateway.smime.envelope_cli import run_decrypt, run_encrypt
from gateway.smime.key_arguments import add_key_arguments
from gateway.smime.keys_cli import register_keys
from gateway.smime.signing_cli import run_sign, run_verify


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` and ``smime`` command groups."""
    register_keys(subparsers)
    _register_smime(subparsers)


# =========================================================================== smime


def _register_smime(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    smime = subparsers.add_parser("smime", help="sign, encrypt, decrypt, verify S/MIME")
    commands = smime.add_subparsers(dest="smime_command", metavar="COMMAND", required=True)

    sign_parser = commands.add_parser("sign", help="sign a MIME entity")
    support.add_input_argument(sign_parser, "MIME entity to sign")
    add_key_arguments(sign_parser, "signer's")
    sign_parser.add_argument(
        "--chain",
        type=Path,
        action="append",
        metavar="FILE",
        help="certificates to include (PEM), repeatable",
    )
    sign_parser.add_argument(
        "--opaque",
        action="store_true",
        help="application/pkcs7-mime signed-data (default: detached)",
    )
    support.add_trust_arguments(sign_parser)
    sign_parser.set_defaults(handler=run_sign)

    enc = commands.add_parser("encrypt", help="encrypt a MIME entity to recipients")
    support.add_input_argument(enc, "MIME entity to encrypt")
    enc.add_argument(
        "--recipient-cert",
        type=Path,
        action="append",
        metavar="FILE",
        required=True,
        help="recipient certificate (PEM or DER), repeatable",
    )
    enc.add_argument(
        "--cipher",
        choices=(AUTO, *SEND_CIPHERS),
        default=AUTO,
        help="content cipher (default auto: aes-256-cbc)",
    )
    enc.add_argument(
        "--key-transport",
        choices=(AUTO, *KEY_TRANSPORTS[:2]),
        default=AUTO,
        help="RSA key transport (default auto: rsa-pkcs1v15; EC: ECDH always)",
    )
    enc.add_argument(
        "--id-type",
        choices=ID_TYPES,
        default=ISSUER_SERIAL,
        help="how recipients are named (default issuer-serial)",
    )
    support.add_trust_arguments(enc)
    enc.set_defaults(handler=run_encrypt)

    dec = commands.add_parser("decrypt", help="decrypt an S/MIME message")
    support.add_input_argument(dec, "application/pkcs7-mime entity or DER/BER CMS")
    add_key_arguments(dec, "recipient's")
    dec.add_argument(
        "--accept-3des",
        action="store_true",
        help="also open 3DES messages (weak; a warning is printed)",
    )
    support.add_optional_config_argument(dec)
    dec.set_defaults(handler=run_decrypt)

    ver = commands.add_parser("verify", help="verify a signed message (exit 0 valid, 1 not)")
    support.add_input_argument(ver, "signed message or entity (or DER signed-data)")
    ver.add_argument(
        "--from",
        dest="from_address",
        metavar="ADDRESS",
        help="address the signer must be bound to (default: the From field)",
    )
    ver.add_argument(
        "--output",
        type=Path,
        metavar="FILE",
        help="write the signed content here when the signature is valid",
    )
    support.add_trust_arguments(ver)
    ver.set_defaults(handler=run_verify)


__all__ = ["register"]
