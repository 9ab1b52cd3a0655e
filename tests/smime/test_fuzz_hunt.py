"""Adversarial hunt (session 5, H19) on the S/MIME engine's parsers, driven through the
inbound worker's entry point ``gateway.inbound.process.process_inbound`` and through
``gateway.smime.decrypt.decrypt`` / ``gateway.smime.verify.verify`` directly.

The promise attacked (``gateway/inbound/process.py``, "Failure contract"; issue 7 items
1-2, 7): no input crashes a worker; hostile CMS/ASN.1/MIME ends as a typed error
(``DecryptError``, an invalid signature) or a hold, never another exception type, never
a hang, never memory out of proportion to the input; one public behaviour for every
decryption failure (RFC 3218 §2.3), CBC padding failures included.

Every reproducer is built here from messages made in-process (the outbound agent's
composition, ``tests.inbound.test_process.outbound``), never random at test time; the
fuzz loop at the end is seeded and bounded.
"""

from __future__ import annotations

import random
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.inbound.headers import Signature
from gateway.inbound.process import (
    KEY_NOT_HELD,
    UNPROCESSABLE,
    UNSIGNED_CBC,
    Decision,
    InboundPolicy,
    InboundResult,
    process_inbound,
)
from gateway.pki.dev import DevPki
from gateway.smime import ber, der, mime, smime_parts, transfer
from gateway.smime.decrypt import decrypt
from gateway.smime.encrypt import Recipient, encrypt, encrypt_entity
from gateway.smime.sign import sign
from gateway.smime.types import PUBLIC_DECRYPT_ERROR, DecryptError
from gateway.smime.verify import verify
from tests.inbound.test_process import (
    ALICE,
    CLAIRE,
    HOST,
    LETTER,
    TEXT_ENTITY,
    Cast,
    build_cast,
    outbound,
    outer_fields,
)

MEMORY_FACTOR = 100  # the brief's bound: peak allocation at most 100x the input


@pytest.fixture(scope="module")
def cast(dev_pki: DevPki) -> Cast:
    return build_cast(dev_pki)


# --------------------------------------------------------------------------- DER surgery


def _element(buf: memoryview, element: ber.Tlv) -> bytes:
    return bytes(buf[element.start : element.end])


def _rebuilt(
    envelope: bytes, *, algorithm: bytes | None = None, encrypted_content: bytes | None = None
) -> bytes:
    """``envelope`` (a DER (Auth)EnvelopedData ContentInfo) with its content-encryption
    AlgorithmIdentifier and/or its [0] encryptedContent replaced (complete elements)."""
    buf = memoryview(envelope)
    content_type, explicit = ber.children(buf, ber.read_top(buf))
    version, infos, encrypted_info, *rest = ber.children(buf, ber.children(buf, explicit)[0])
    data_oid, old_algorithm, old_content = ber.children(buf, encrypted_info)
    info = der.sequence(
        _element(buf, data_oid),
        algorithm if algorithm is not None else _element(buf, old_algorithm),
        encrypted_content if encrypted_content is not None else _element(buf, old_content),
    )
    fields = [_element(buf, version), _element(buf, infos), info]
    fields += [_element(buf, field) for field in rest]
    return der.sequence(_element(buf, content_type), der.explicit(0, der.sequence(*fields)))


def _peak_allocation(run: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        run()
    except DecryptError:
        pass
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


# --------------------------------------------------------------------------- findings


@pytest.mark.parametrize(
    "piece",
    [b"\x04\x00", b"\x04\x01A", b"\x24\x03\x04\x01A"],
    ids=["empty-pieces", "one-octet-pieces", "nested-one-octet-pieces"],
)
def test_constructed_octet_string_of_tiny_pieces_costs_memory_in_proportion(
    cast: Cast, piece: bytes
) -> None:
    """Finding (fixed in ``ber.octet_string_chunks``): an encryptedContent made of ~40 000
    empty pieces (80 KB of DER) made the decryptor allocate 15 MB (187x: a Tlv tuple per
    piece, all held in a list, and an empty memoryview per piece; 125x with one-octet
    pieces), before any check could refuse the message."""
    envelope = encrypt(TEXT_ENTITY, [Recipient(cast.cert(ALICE))], cipher="aes-256-cbc")
    pieces = piece * (80_000 // len(piece))
    constructed = der.context_header(0, True, len(pieces)) + pieces
    hostile = _rebuilt(envelope, encrypted_content=constructed)
    with pytest.raises(DecryptError):
        decrypt(hostile, cast.alice_keys)
    peak = _peak_allocation(lambda: decrypt(hostile, cast.alice_keys))
    assert peak < MEMORY_FACTOR * len(hostile), f"{peak} bytes for {len(hostile)} of input"


def test_empty_pieces_still_decrypt_as_their_concatenation(cast: Cast) -> None:
    """The fix drops empty pieces: a BER string with empty pieces between the real ones
    (X.690 §8.7.3 allows them) still decrypts."""
    envelope = encrypt(TEXT_ENTITY, [Recipient(cast.cert(ALICE))], cipher="aes-128-cbc")
    buf = memoryview(envelope)
    explicit = ber.children(buf, ber.read_top(buf))[1]
    encrypted_info = ber.children(buf, ber.children(buf, explicit)[0])[2]
    (ciphertext,) = ber.octet_string_chunks(buf, ber.children(buf, encrypted_info)[2])
    pieces = b"".join(
        der.octet_string(b"") + der.octet_string(bytes(ciphertext[at : at + 16]))
        for at in range(0, len(ciphertext), 16)
    )
    chopped = _rebuilt(envelope, encrypted_content=b"\xa0\x80" + pieces + b"\x00\x00")
    assert decrypt(chopped, cast.alice_keys).content == TEXT_ENTITY


@pytest.mark.timeout(5)  # the brief's hang bound for an input below 100 KB
def test_long_display_name_in_from_is_processed_in_linear_time() -> None:
    """Finding (open, ``gateway/inbound/process.py``): ``_ADDRESS_IN_TEXT`` is applied to
    the RFC 2047-decoded display names of From; its unbounded ``[^...]+@`` backtracks
    from every position of a run without "@", so the time is quadratic in the run.
    Adjacent encoded-words are joined without their folding white space (RFC 2047 §6.2),
    so short, legal-looking lines make one long run: 99 KB of header took 25+ s here
    (57 000 characters: 8.5 s, measured). A clear message, no key needed."""
    word = b"=?us-ascii?q?" + b"a" * 900 + b"?="
    name = b"\r\n ".join([word] * 108)  # lines of 915 octets (< 998, RFC 5322 §2.1.1)
    message = LETTER.replace(b"From: Claire <", b"From: " + name + b" <")
    assert len(message) < 100_000
    result = process_inbound(
        message, ALICE, keys=(), validator=None, policy=InboundPolicy(), hostname=HOST
    )
    assert result.decision is Decision.DELIVER


def test_cbc_plaintext_with_valid_padding_is_never_held_as_unprocessable(cast: Cast) -> None:
    """Finding (open, ``gateway/inbound/process.py`` / ``gateway/smime/mime.py``): with
    ``unsigned_cbc = "mark"`` a CBC padding failure is delivered marked, so that a sender
    who tampers with the last blocks cannot tell valid padding from invalid (Vaudenay).
    But a decrypted Cryptographic Payload whose Content-Type holds a non-ASCII octet makes
    ``entity_views.without_hp_parameter`` -> ``mime.replace_header_field`` raise UnicodeEncodeError
    (the value was decoded with U+FFFD, re-encoded as ASCII), and the message is HELD
    (``UNPROCESSABLE``, a DSN). A sender who knows the first blocks of a captured message
    (the Content-Type line of a header-protected payload is predictable) sets them with
    the IV / previous ciphertext block (CBC malleability) to such a line and changes the
    last blocks: held <=> padding valid, the oracle the module docstring rules out."""
    plaintext = b'Content-Type: a\x80; hp="cipher"\r\n\r\nx\r\n'
    entity = encrypt_entity(plaintext, [Recipient(cast.cert(ALICE))], cipher="aes-128-cbc")
    result = cast.process(outer_fields() + entity)
    broken = _broken_padding(cast)
    assert broken.decision is Decision.DELIVER  # the padding failure: delivered marked
    assert (result.decision, result.reason) == (Decision.DELIVER, ""), (
        f"held: {result.reason!r} ({result.facts.failure_detail})"
    )


def _broken_padding(cast: Cast) -> InboundResult:
    """The same kind of message with its last ciphertext block damaged (padding fails)."""
    envelope = encrypt(TEXT_ENTITY, [Recipient(cast.cert(ALICE))], cipher="aes-128-cbc")
    damaged = envelope[:-1] + bytes((envelope[-1] ^ 0x55,))
    return cast.process(outer_fields() + smime_parts.pkcs7_mime_entity(damaged, "enveloped-data"))


def _certificate(
    subject: str, issuer: str, public_key: ec.EllipticCurvePublicKey, ca: bool, serial: int
) -> x509.CertificateBuilder:
    now = datetime.now(UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        return builder
    return builder.add_extension(
        x509.SubjectAlternativeName([x509.RFC822Name(CLAIRE)]), critical=False
    ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)


@pytest.mark.timeout(5)  # the brief's hang bound: hours before the fix
def test_pool_of_same_name_cas_without_an_anchor_is_refused_quickly(cast: Cast) -> None:
    """Finding (fixed in ``pathdiag.candidate_paths``, budget ``MAX_VISITS``): after the
    library refuses a path, the diagnosis walked every simple name-linked path of up to
    8 links when none reached an anchor: 20 self-made CA certificates sharing one name
    (10 KB of signed message, no trusted key needed) cost ~n!/(n-8)! steps (measured:
    9 certificates 2.5 s, x5 per certificate added; 20 still running after 5 min)."""
    ca_key = ec.generate_private_key(ec.SECP256R1())
    signer_key = ec.generate_private_key(ec.SECP256R1())
    pool = [
        _certificate("Evil CA", "Evil CA", ca_key.public_key(), True, 100 + index).sign(
            ca_key, hashes.SHA256()
        )
        for index in range(20)
    ]
    leaf = _certificate("c", "Evil CA", signer_key.public_key(), False, 7).sign(
        ca_key, hashes.SHA256()
    )
    result = cast.process(outer_fields() + sign(TEXT_ENTITY, leaf, signer_key, pool))
    assert result.facts.signature is Signature.INVALID
    assert result.facts.signature_reason.endswith("no path to a trusted anchor")


# --------------------------------------------------------------------------- what held


def _signed_der(cast: Cast) -> bytes:
    entity = cast.signed(TEXT_ENTITY, detached=False)
    return transfer.body_bytes(mime.parse_entity(mime.canonicalize_crlf(entity)))


def _signed_data_parts(signed: bytes) -> tuple[bytes, list[bytes]]:
    buf = memoryview(signed)
    content_type, explicit = ber.children(buf, ber.read_top(buf))
    fields = ber.children(buf, ber.children(buf, explicit)[0])
    return _element(buf, content_type), [_element(buf, field) for field in fields]


def _signed_with(content_type: bytes, fields: list[bytes]) -> bytes:
    return der.sequence(content_type, der.explicit(0, der.sequence(*fields)))


def test_signer_infos_beyond_the_bound_are_refused_before_any_work(cast: Cast) -> None:
    content_type, fields = _signed_data_parts(_signed_der(cast))
    buf = memoryview(fields[-1])
    (signer,) = ber.children(buf, ber.read_top(buf))
    one = _element(buf, signer)
    many = der.header(der.SET, 17 * len(one)) + one * 17
    hostile = _signed_with(content_type, [*fields[:-1], many])
    entity = smime_parts.pkcs7_mime_entity(hostile, "signed-data")
    result = verify(entity, validator=cast.validator, from_address=CLAIRE)
    assert not result.valid and result.reason == "more than 16 signers"


def test_deeply_nested_indefinite_econtent_is_an_invalid_signature(cast: Cast) -> None:
    content_type, fields = _signed_data_parts(_signed_der(cast))
    depth = 5000
    nested = b"\xa0\x80" + b"\x24\x80" * depth + b"\x04\x01A" + b"\x00\x00" * (depth + 1)
    encapsulated = der.sequence(der.oid("1.2.840.113549.1.7.1"), nested)
    hostile = _signed_with(content_type, [fields[0], fields[1], encapsulated, *fields[3:]])
    message = outer_fields() + smime_parts.pkcs7_mime_entity(hostile, "signed-data")
    result = cast.process(message)
    assert result.decision is Decision.DELIVER
    assert result.facts.signature_reason.startswith("malformed CMS")


@pytest.mark.parametrize(
    ("nonce", "tag_length"),
    [(b"n" * 12, 0), (b"n" * 12, 255), (b"n" * 12, 2**31 - 1), (b"", 12), (b"n" * 4096, 12)],
)
def test_absurd_gcm_parameters_are_one_decrypt_error(
    cast: Cast, nonce: bytes, tag_length: int
) -> None:
    envelope = encrypt(TEXT_ENTITY, [Recipient(cast.cert(ALICE))], cipher="aes-128-gcm")
    parameters = der.sequence(der.octet_string(nonce), der.integer(tag_length))
    algorithm = der.sequence(der.oid("2.16.840.1.101.3.4.1.6"), parameters)  # id-aes128-GCM
    hostile = _rebuilt(envelope, algorithm=algorithm)
    result = cast.process(
        outer_fields() + smime_parts.pkcs7_mime_entity(hostile, "authEnveloped-data")
    )
    assert (result.decision, result.reason) == (Decision.HOLD, PUBLIC_DECRYPT_ERROR)
    assert result.facts.failure_detail.startswith("bad GCM")


# --------------------------------------------------------------------------- small fuzz loop

SEED = 19
ROUNDS = 400
_KNOWN_REASONS = {"", PUBLIC_DECRYPT_ERROR, UNPROCESSABLE, KEY_NOT_HELD, UNSIGNED_CBC}


def _mutate(rng: random.Random, data: bytes) -> bytes:
    """A few edits: bit flip, cut, insert, delete, length octet made huge, repeat."""
    out = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randrange(len(out)) if out else 0
        edit = rng.randrange(6)
        if edit == 0 and out:
            out[at] ^= 1 << rng.randrange(8)
        elif edit == 1:
            del out[at:]
        elif edit == 2:
            out[at:at] = rng.randbytes(rng.randint(1, 8))
        elif edit == 3:
            del out[at : at + rng.randint(1, 16)]
        elif edit == 4 and out:
            out[at : at + 2] = rng.choice([b"\x84\xff", b"\x80\x00", b"\x88\x7f", b"\x24\x80"])
        else:
            out[at:at] = bytes(out[at : at + rng.randint(1, 64)]) * rng.randint(1, 20)
    return bytes(out)


def _binary_entity(message: bytes) -> tuple[bytes, bytes]:
    """(outer fields, DER) of an application/pkcs7-mime message."""
    block, entity = mime.split_message(message)
    return block, transfer.body_bytes(mime.parse_entity(mime.canonicalize_crlf(entity)))


def test_seeded_mutations_never_escape_the_failure_contract(cast: Cast) -> None:
    """Seeded, bounded (a few seconds): mutations of signed, enveloped (CBC, GCM),
    signed-then-enveloped, header-protected and wrapped messages, at the MIME level and
    at the DER level, end as a decision with a known public reason; every decryption
    failure that is held says the one public text."""
    messages = [
        outbound(cast),
        outbound(cast, cipher="aes-128-cbc"),
        outbound(cast, wrap=True),
        outbound(cast, protect_headers=False, signed=False),
        outer_fields() + cast.signed(TEXT_ENTITY),
        outer_fields() + cast.signed(TEXT_ENTITY, detached=False),
    ]
    binaries = [_binary_entity(message) for message in messages if b"pkcs7-mime" in message]
    rng = random.Random(SEED)
    for _ in range(ROUNDS):
        if rng.random() < 0.5:
            block, body = rng.choice(binaries)
            kind = "enveloped-data" if rng.random() < 0.7 else "signed-data"
            message = block + smime_parts.pkcs7_mime_entity(_mutate(rng, body), kind)
        else:
            message = _mutate(rng, rng.choice(messages))
        result = cast.process(message)
        assert result.reason in _KNOWN_REASONS
        if result.facts.encrypted and result.decision is Decision.HOLD:
            assert result.reason in (PUBLIC_DECRYPT_ERROR, KEY_NOT_HELD, UNPROCESSABLE)
