"""Say *why* a certificate path was refused, after the path validator refused it.

Role: ``cryptography.x509.verification`` decides (``gateway.smime.validate``); when it
refuses, its message is a free-form string ("candidates exhausted: ..."). To report a
stable ``CertStatus`` (EXPIRED, WEAK, WRONG_USAGE, UNTRUSTED) this module looks at the
candidate paths itself: chains of certificates linked by issuer name == subject name,
from the leaf to a configured anchor, through the given pool. It never turns a refusal
into an acceptance: its only output is a status and a reason for a refused path.

Rules: no name-linked path to an anchor -> UNTRUSTED. Otherwise, on the path with the
fewest problems, the first problem found from the leaf upwards decides: a CA signed with
MD5/SHA-1 or holding an RSA key below 2048 bits -> WEAK; a certificate outside its
validity at ``when`` -> EXPIRED; a CA without basicConstraints cA or without
keyCertSign -> WRONG_USAGE; a signature that does not verify -> UNTRUSTED. A path with
no problem visible here (path length, name constraints, unknown critical extension...)
-> UNTRUSTED with the library's message. The search is bounded (``MAX_DEPTH`` links,
``MAX_PATHS`` paths, ``MAX_VISITS`` candidate issuers looked at in all) so a pool crafted
with many same-name certificates costs little: without the last bound, a pool with no
path to an anchor made the search walk every simple path of up to ``MAX_DEPTH`` links
(n!/(n-8)! for n certificates sharing one name; 20 of them in a 10 KB signed message
hung a worker, found by a hunt). When the budget runs out the paths found so far decide
(none: UNTRUSTED), which only changes the reason given for a refusal.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.smime.leafcheck import MIN_RSA_BITS, WEAK_HASHES
from gateway.smime.types import CertStatus

MAX_DEPTH = 8
MAX_PATHS = 16
MAX_VISITS = 4096  # candidate issuers looked at, over the whole search


def diagnose_path_failure(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
    when: datetime,
    library_message: str,
) -> tuple[CertStatus, str]:
    """Status and reason for a path the library refused (see module docstring)."""
    paths = candidate_paths(leaf, pool, anchors)
    if not paths:
        return CertStatus.UNTRUSTED, "no path to a trusted anchor"
    problems = min((_path_problems(path, when) for path in paths), key=_rank)
    if problems:
        return problems[0]
    return CertStatus.UNTRUSTED, f"certificate path refused ({library_message})"


def _rank(problems: list[tuple[CertStatus, str]]) -> tuple[bool, int]:
    """Prefer paths whose signatures verify, then paths with fewer problems."""
    return any(status is CertStatus.UNTRUSTED for status, _ in problems), len(problems)


def candidate_paths(
    leaf: x509.Certificate,
    pool: Sequence[x509.Certificate],
    anchors: Sequence[x509.Certificate],
) -> list[list[x509.Certificate]]:
    """Name-linked paths leaf -> ... -> anchor (depth-first, bounded)."""
    anchor_set = set(anchors)
    candidates = [*anchors, *pool]
    found: list[list[x509.Certificate]] = []
    visits = 0

    def extend(path: list[x509.Certificate]) -> None:
        nonlocal visits
        if len(found) >= MAX_PATHS or len(path) > MAX_DEPTH:
            return
        current = path[-1]
        for issuer in candidates:
            visits += 1
            if visits > MAX_VISITS:
                return
            if issuer.subject != current.issuer or issuer in path:
                continue
            if issuer in anchor_set:
                found.append([*path, issuer])
            else:
                extend([*path, issuer])

    if leaf in anchor_set:
        return [[leaf]]
    extend([leaf])
    return found


def _path_problems(path: list[x509.Certificate], when: datetime) -> list[tuple[CertStatus, str]]:
    problems: list[tuple[CertStatus, str]] = []
    for position, certificate in enumerate(path):
        label = "certificate" if position == 0 else f"CA {certificate.subject.rfc4514_string()}"
        if position > 0:
            problems += _ca_problems(certificate, label)
        if not certificate.not_valid_before_utc <= when <= certificate.not_valid_after_utc:
            problems.append((CertStatus.EXPIRED, f"{label} is not valid at {when:%Y-%m-%d}"))
        if position + 1 < len(path):
            problems += _signature_problems(certificate, path[position + 1], label)
    return problems


def _ca_problems(certificate: x509.Certificate, label: str) -> list[tuple[CertStatus, str]]:
    problems: list[tuple[CertStatus, str]] = []
    key = certificate.public_key()
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        problems.append((CertStatus.WEAK, f"{label} has an RSA key of {key.key_size} bits"))
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        is_ca = constraints.value.ca
    except x509.ExtensionNotFound:
        is_ca = False
    if not is_ca:
        problems.append((CertStatus.WRONG_USAGE, f"{label} is not a CA (basicConstraints)"))
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.key_cert_sign:
            problems.append((CertStatus.WRONG_USAGE, f"{label} key usage lacks keyCertSign"))
    except x509.ExtensionNotFound:
        pass
    return problems


def _signature_problems(
    certificate: x509.Certificate, issuer: x509.Certificate, label: str
) -> list[tuple[CertStatus, str]]:
    try:
        algorithm = certificate.signature_hash_algorithm
    except Exception:  # noqa: BLE001 - UnsupportedAlgorithm
        return [(CertStatus.WEAK, f"{label} signature algorithm not supported")]
    if algorithm is not None and algorithm.name in WEAK_HASHES:
        return [(CertStatus.WEAK, f"{label} signed with {algorithm.name.upper()}, refused")]
    try:
        certificate.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return [(CertStatus.UNTRUSTED, f"{label}: signature does not verify with its issuer")]
    return []
