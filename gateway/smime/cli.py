"""``missive keys import|list`` and ``missive smime sign|encrypt|decrypt|verify``.

Role: the command line of the key store (``gateway.smime.keystore``/``keyimport``) and
of the S/MIME engine, for sysadmins and for interop tests. Each ``smime`` command reads a
file (or standard input) and writes standard output, bytes in and bytes out (CRLF kept).

``keys import ADDRESS FILE [--purpose sign|enc|auto] [--password-file F]
[--allow-expired]`` and ``keys list [--json]`` work on ``--keys-dir DIR``, else on the
configuration's ``[keys] dir`` (``--config``). Passwords never travel on the command line.

``smime sign FILE (--key K [--cert C] | --address A) [--chain F]... [--opaque]``:
the input is the MIME entity to protect (signed whole, as ``openssl cms -sign`` does);
output multipart/signed (default) or application/pkcs7-mime signed-data.
``--address`` takes the newest valid signing key of the key store (validated with the
trust arguments; the intermediates of the path found travel in the signature) and
names the address' encryption certificate as encryptionKeyPreference (RFC 8551 §2.5.3).

``smime encrypt FILE --recipient-cert C... [--cipher ...] [--key-transport ...]
[--id-type issuer-serial|ski]``: every recipient certificate is validated for
encryption first (fail closed: the trust arguments are required); ``auto`` means the
safe default of ``algorithms`` (AES-256-CBC, RSA PKCS#1 v1.5) since the command knows
nothing of the recipients' capabilities. Output: application/pkcs7-mime.

``smime decrypt FILE (--key K [--cert C] | --address A) [--accept-3des]``: input an
application/pkcs7-mime entity or raw DER/BER CMS; output the decrypted entity. Any
failure prints the one public text (``PUBLIC_DECRYPT_ERROR``) and exits 1; the cause
goes to the debug log only (RFC 3218 §2.3).

``smime verify FILE [--from ADDRESS] [--output F]``: prints the result (signer,
certificate validity and chain, algorithms, signing time, capabilities, reason) and
exits 0 when valid, 1 when not; ``--output`` writes the signed content when valid.
Raw DER input is taken as an opaque signed-data.

Trust for sign (``--address``), encrypt and verify: ``--anchors``/``--intermediates``/
``--crl``/``--revocation``, else the configuration's ``[trust]`` (``cli_support``).
Exit status: 0 success, 1 negative answer (invalid signature, undecryptable message),
2 usage or configuration error, each a single line on standard error.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

from cryptography import x509

from gateway.cli_common import SubParsers
from gateway.errors import MissiveError, UsageError
from gateway.log import get_logger
from gateway.smime import cli_support as support
from gateway.smime import mime, smime_parts
from gateway.smime.algorithms import AUTO, KEY_TRANSPORTS, SEND_CIPHERS
from gateway.smime.certinfo import name, serial, validity
from gateway.smime.decrypt import Decrypted, DecryptionKey, decrypt, decrypt_entity
from gateway.smime.encrypt import ID_TYPES, ISSUER_SERIAL, encrypt_entity, plan_recipients
from gateway.smime.keyimport import (
    import_identity,
    password_from_file,
    password_from_terminal_or_stdin,
    read_identity,
)
from gateway.smime.keystore import KeyStore, StoredKey, newest_first, validate_stored
from gateway.smime.sign import sign
from gateway.smime.types import (
    PUBLIC_DECRYPT_ERROR,
    DecryptError,
    Purpose,
    SignerInfoResult,
    SmimeError,
    VerifyResult,
)
from gateway.smime.verify import verify

_log = get_logger("smime.cli")


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Add the ``keys`` and ``smime`` command groups."""
    _register_keys(subparsers)
    _register_smime(subparsers)


# =========================================================================== keys


def _add_store_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keys-dir",
        type=Path,
        metavar="DIR",
        help="key store directory (default: the configuration's [keys] dir)",
    )
    support.add_optional_config_argument(parser)


def _register_keys(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser("keys", help="local users' S/MIME keys ([keys] dir)")
    commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND", required=True)
    imp = commands.add_parser(
        "import",
        help="import a key and its certificate (PKCS#12 or PEM) for an address",
        description="Import FILE (.p12/.pfx or PEM) for ADDRESS into the key store, 0600."
        " Never overwrites: a renewed certificate gets a new file, the old one is kept.",
    )
    imp.add_argument("address", metavar="ADDRESS")
    imp.add_argument("file", type=Path, metavar="FILE")
    imp.add_argument(
        "--purpose",
        choices=("auto", "sign", "enc"),
        default="auto",
        help="what the key is for (default auto: what its key usage allows)",
    )
    imp.add_argument(
        "--password-file",
        type=Path,
        metavar="F",
        help="file whose first line is the password (default: ask, or stdin)",
    )
    imp.add_argument(
        "--allow-expired",
        action="store_true",
        help="accept an expired encryption certificate (to decrypt old mail)",
    )
    _add_store_arguments(imp)
    imp.set_defaults(handler=run_keys_import)
    lst = commands.add_parser("list", help="list the keys of the key store")
    lst.add_argument("--json", action="store_true", help="one JSON document on stdout")
    _add_store_arguments(lst)
    lst.set_defaults(handler=run_keys_list)


def _keys_dir(args: argparse.Namespace) -> Path:
    directory: Path | None = args.keys_dir
    return directory if directory is not None else support.load_config(args).keys.dir


def run_keys_import(args: argparse.Namespace) -> int:
    """Handler of ``missive keys import``."""
    path: Path = args.file
    if args.password_file is not None:
        password = password_from_file(args.password_file)
    else:
        password = password_from_terminal_or_stdin(f"Password for {path.name}: ")
    directory = _keys_dir(args)
    identity = read_identity(path, password)
    done = import_identity(
        directory, args.address, identity, args.purpose, allow_expired=args.allow_expired
    )
    for outcome in done:
        print(f"{outcome.action:<8} {outcome.purpose:<4} {outcome.path}")
    return 0


def _key_status(key: StoredKey, current: set[Path], now: datetime) -> str:
    if now > key.not_after:
        return "expired"
    if now < key.not_before:
        return "not-yet-valid"
    return "current" if key.path in current else "older"


def _current_keys(store: KeyStore, now: datetime) -> set[Path]:
    """Per address and purpose, the newest key in its validity period (dates only:
    ``certs check`` validates chains and revocation)."""
    chosen: dict[tuple[str, str], Path] = {}
    for key in newest_first(store.keys):
        slot = (key.address, key.purpose)
        if slot not in chosen and key.in_validity(now):
            chosen[slot] = key.path
    return set(chosen.values())


def run_keys_list(args: argparse.Namespace) -> int:
    """Handler of ``missive keys list``."""
    store, problems = KeyStore.scan(_keys_dir(args))
    now = datetime.now(UTC)
    current = _current_keys(store, now)
    rows = [
        {
            "address": key.address,
            "purpose": key.purpose,
            "status": _key_status(key, current, now),
            "file": key.path.name,
            "serial": serial(key.certificate),
            "subject": name(key.certificate.subject),
            "issuer": name(key.certificate.issuer),
            "not_before": key.not_before.isoformat(),
            "not_after": key.not_after.isoformat(),
        }
        for key in sorted(store.keys, key=lambda k: (k.address, k.purpose, k.path.name))
    ]
    if args.json:
        print(
            json.dumps(
                {"directory": str(store.directory), "keys": rows, "problems": problems}, indent=2
            )
        )
    else:
        for row in rows:
            print(
                f"{row['address']:<32} {row['purpose']:<4} {row['status']:<13} "
                f"{row['not_after'][:10]} {row['serial']:<20} {row['file']}"
            )
        if not rows:
            print(f"no keys in {store.directory}")
    for problem in problems:
        print(problem, file=sys.stderr)
    return 2 if problems else 0


# =========================================================================== smime


def _add_key_arguments(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument(
        "--key",
        type=Path,
        metavar="FILE",
        help=f"{what} private key (PEM, mode 0600; may hold its certificate)",
    )
    parser.add_argument(
        "--cert",
        type=Path,
        metavar="FILE",
        help="its certificate (PEM or DER; default: from the key file)",
    )
    parser.add_argument(
        "--address",
        metavar="ADDRESS",
        help="use this address' keys from the key store instead of --key",
    )
    parser.add_argument(
        "--keys-dir",
        type=Path,
        metavar="DIR",
        help="key store for --address (default: the configuration's [keys] dir)",
    )


def _register_smime(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    smime = subparsers.add_parser("smime", help="sign, encrypt, decrypt, verify S/MIME")
    commands = smime.add_subparsers(dest="smime_command", metavar="COMMAND", required=True)

    sign_parser = commands.add_parser("sign", help="sign a MIME entity")
    support.add_input_argument(sign_parser, "MIME entity to sign")
    _add_key_arguments(sign_parser, "signer's")
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
    _add_key_arguments(dec, "recipient's")
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


# --------------------------------------------------------------------------- helpers


def _store(args: argparse.Namespace) -> KeyStore:
    directory: Path | None = args.keys_dir
    return KeyStore.load(directory if directory is not None else support.load_config(args).keys.dir)


def _check_key_choice(args: argparse.Namespace) -> None:
    if (args.key is None) == (args.address is None):
        raise UsageError("give either --key FILE (with --cert) or --address ADDRESS")
    if args.address is not None and args.cert is not None:
        raise UsageError("--cert goes with --key, not with --address")


def _signer(
    args: argparse.Namespace,
) -> tuple[x509.Certificate, object, list[x509.Certificate], x509.Certificate | None]:
    """(certificate, key, chain, encryption certificate) of the signer."""
    _check_key_choice(args)
    extra = support.read_all_certificates(args.chain, "--chain")
    if args.key is not None:
        key_file = support.read_key_file(args.key)
        leaf, chain = support.leaf_and_chain(key_file, args.cert, args.key)
        return leaf, key_file.key, [*chain, *extra], None
    store = _store(args)
    validator = support.build_validator(args)
    signer = store.signing_key(args.address, validator)
    path = validate_stored(signer, validator).chain[1:-1]  # intermediates the validator found
    chain = [*signer.chain, *(c for c in path if c not in signer.chain)]
    try:
        encryption: x509.Certificate | None = store.encryption_key(
            args.address, validator
        ).certificate
    except MissiveError:
        encryption = None
    return signer.certificate, signer.private_key, [*chain, *extra], encryption


def _decryption_keys(args: argparse.Namespace) -> list[DecryptionKey]:
    _check_key_choice(args)
    if args.key is not None:
        key_file = support.read_key_file(args.key)
        leaf, _ = support.leaf_and_chain(key_file, args.cert, args.key)
        try:
            return [DecryptionKey(leaf, key_file.key)]  # type: ignore[arg-type]
        except (ValueError, TypeError):
            raise UsageError(f"{args.key}: this key cannot decrypt") from None
    keys = _store(args).decryption_keys(args.address)
    if not keys:
        raise UsageError(f"no encryption key for {args.address} in the key store")
    return keys


# --------------------------------------------------------------------------- handlers


def run_sign(args: argparse.Namespace) -> int:
    """Handler of ``missive smime sign``."""
    # a whole message: its From/To/Subject/... stay outside the signature, its MIME
    # entity (Content-* fields and body) is what gets signed (RFC 8551 §3.1)
    outer_headers, entity = mime.split_message(support.read_input(args.input))
    certificate, key, chain, encryption = _signer(args)
    try:
        signed = sign(
            entity, certificate, key, chain, detached=not args.opaque, encryption_cert=encryption
        )
    except SmimeError as error:
        raise UsageError(f"cannot sign: {error}") from None
    support.write_output(outer_headers + signed)
    return 0


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


def run_verify(args: argparse.Namespace) -> int:
    """Handler of ``missive smime verify``."""
    data = support.read_input(args.input)
    if data[:1] == b"\x30":
        data = smime_parts.pkcs7_mime_entity(data, "signed-data")
    validator = support.build_validator(args)
    result = verify(data, validator=validator, from_address=args.from_address)
    for line in result_lines(result):
        print(line)
    if result.valid and args.output is not None:
        try:
            args.output.write_bytes(result.content)
        except OSError as error:
            raise UsageError(f"cannot write {args.output}: {error.strerror}") from None
    return 0 if result.valid else 1


# --------------------------------------------------------------------------- result text


def _yes(value: bool) -> str:
    return "yes" if value else "no"


def _signer_lines(number: int, signer: SignerInfoResult) -> list[str]:
    certificate = signer.certificate
    lines = [f"signer {number}:"]
    if certificate is not None:
        lines += [
            f"  subject: {name(certificate.subject)}",
            f"  issuer: {name(certificate.issuer)}",
            f"  serial: {serial(certificate)}",
            f"  validity: {validity(certificate, datetime.now(UTC))}",
        ]
    lines.append(f"  addresses: {', '.join(signer.email_addresses) or '(none)'}")
    signature = "valid" if signer.signature_valid else f"INVALID ({signer.reason})"
    lines.append(f"  signature: {signature}")
    validation = signer.certificate_validation
    if validation is not None:
        detail = f" ({validation.reason})" if validation.reason else ""
        lines.append(f"  certificate: {validation.status.value}{detail}")
        if validation.chain:
            lines.append("  chain: " + " <- ".join(name(c.subject) for c in validation.chain))
    lines.append(f"  algorithms: {signer.digest_algorithm} / {signer.signature_algorithm}")
    when = signer.signing_time
    lines.append(f"  signing time: {when:%Y-%m-%dT%H:%M:%SZ}" if when else "  signing time: (none)")
    caps = signer.capabilities
    if caps is not None:
        lines.append(
            f"  capabilities: aes-gcm {_yes(caps.aes_gcm)}, rsa-oaep {_yes(caps.rsa_oaep)}"
        )
    return lines


def result_lines(result: VerifyResult) -> list[str]:
    """What ``smime verify`` prints (no content: only who signed and how)."""
    lines = [f"valid: {_yes(result.valid)}"]
    if result.reason:
        lines.append(f"reason: {result.reason}")
    lines.append(f"form: {'detached' if result.detached else 'opaque'}")
    lines.append(f"from bound to signer: {_yes(result.from_address_bound)}")
    for number, signer in enumerate(result.signers, start=1):
        lines += _signer_lines(number, signer)
    return lines


__all__ = ["register", "result_lines"]
