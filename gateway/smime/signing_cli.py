"""``missive smime sign`` and ``missive smime verify``: the command line of signing.

Role: the handlers of the two commands (``run_sign``, ``run_verify``) and the text that
verify prints (``result_lines``); ``gateway.smime.cli`` registers them and imports this
module, never the reverse. Each command reads a file (or standard input) and writes
standard output, bytes in and bytes out (CRLF kept).

``smime sign FILE (--key K [--cert C] | --address A) [--chain F]... [--opaque]``:
the input is the MIME entity to protect (signed whole, as ``openssl cms -sign`` does);
output multipart/signed (default) or application/pkcs7-mime signed-data.
``--address`` takes the newest valid signing key of the key store (validated with the
trust arguments; the intermediates of the path found travel in the signature) and
names the address' encryption certificate as encryptionKeyPreference (RFC 8551 §2.5.3).

``smime verify FILE [--from ADDRESS] [--output F]``: prints the result (signer,
certificate validity and chain, algorithms, signing time, capabilities, reason) and
exits 0 when valid, 1 when not; ``--output`` writes the signed content when valid.
Raw DER input is taken as an opaque signed-data.

Trust for sign (``--address``) and verify: ``--anchors``/``--intermediates``/``--crl``/
``--revocation``, else the configuration's ``[trust]`` (``cli_support``). Exit status: 0
success, 1 negative answer (invalid signature), 2 usage or configuration error, each a
single line on standard error.
"""

from __future__ import annotations

import argparse
from datetime import UTC, datetime

from cryptography import x509

from gateway.errors import MissiveError, UsageError
from gateway.smime import cli_support as support
from gateway.smime import mime, smime_parts
from gateway.smime.certinfo import name, serial, validity
from gateway.smime.key_arguments import check_key_choice, store_from_args
from gateway.smime.keystore import validate_stored
from gateway.smime.sign import sign
from gateway.smime.types import SignerInfoResult, SmimeError, VerifyResult
from gateway.smime.verify import verify


def _signer(
    args: argparse.Namespace,
) -> tuple[x509.Certificate, object, list[x509.Certificate], x509.Certificate | None]:
    """(certificate, key, chain, encryption certificate) of the signer."""
    check_key_choice(args)
    extra = support.read_all_certificates(args.chain, "--chain")
    if args.key is not None:
        key_file = support.read_key_file(args.key)
        leaf, chain = support.leaf_and_chain(key_file, args.cert, args.key)
        return leaf, key_file.key, [*chain, *extra], None
    store = store_from_args(args)
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
