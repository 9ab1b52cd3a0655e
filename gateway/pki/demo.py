"""Demo data built on the development PKI: an LDIF annuaire and a local key store.

Role: the embedded default of ``missive serve`` runs on loopback with an LDIF annuaire of
a few synthetic practitioners whose certificates come from the dev PKI (``gateway.pki.dev``).
This module writes that annuaire (``write_demo_annuaire``) and installs the private keys of
the *local* users into ``[keys] dir`` (``install_demo_keys``).

Annuaire (RFC 2849 LDIF, content records): one ``inetOrgPerson`` entry per practitioner
under ``ou=people,dc=annuaire,dc=test`` (``uid=<address>`` as RDN, escaped per RFC 4514
§2.4) with ``cn``, ``sn``, ``givenName``, ``mail``, ``postalAddress`` (RFC 4517 §3.3.28:
lines joined by ``$``), ``postalCode``, ``l`` and ``userCertificate;binary`` holding the
DER of the practitioner's *encryption* certificate (the one a sender encrypts to; the
signature certificate travels inside signed messages). The entries are inetOrgPerson
only for now: the health attributes (RPPS id, profession, specialty) come with the
annuaire's own schema. The parent entries ``dc=annuaire,dc=test`` and ``ou=people`` are
written first unless ``base_entries=False`` (for a directory that already has them).
The LDIF writer is hand-written (about 30 lines): ldap3 has no public LDIF *content*
writer and the subset needed (safe strings or base64, folding at 76 columns) is small.

Key store layout (CONFIG-CONTRACT ``[keys] dir``): ``<address>.sign.pem`` and
``<address>.enc.pem``, each the private key (PKCS#8 PEM) followed by its certificate,
mode 0600 in a 0700 directory. Existing files are never overwritten.

The people are synthetic and obviously fake: domains ``chu-a.test`` (local hospital) and
``clinique-b.test`` (a remote colleague's clinic), postal codes ``99xxx``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from ldap3.utils.dn import escape_rdn

from gateway.pki.dev import PURPOSES, Change, DevPki, DevPkiError, normalise_address
from gateway.pki.files import create_private_file, ensure_private_dir, replace_file

BASE_DN = "dc=annuaire,dc=test"
PEOPLE_DN = f"ou=people,{BASE_DN}"
DEFAULT_LOCAL_DOMAINS: tuple[str, ...] = ("chu-a.test",)
LDIF_LINE_LIMIT = 76  # RFC 2849: lines SHOULD NOT be longer than 76 characters


@dataclass(frozen=True)
class Practitioner:
    """A synthetic health professional of the demo annuaire."""

    address: str
    given_name: str
    surname: str
    postal_lines: tuple[str, ...]
    postal_code: str
    locality: str

    @property
    def common_name(self) -> str:
        return f"{self.given_name} {self.surname}".strip()


DEMO_PRACTITIONERS: tuple[Practitioner, ...] = (
    Practitioner(
        "alice.martin@chu-a.test",
        "Alice",
        "Martin",
        ("CHU A (fictif)", "Service de cardiologie", "1 rue de l'Exemple"),
        "99001",
        "Ville-A",
    ),
    Practitioner(
        "bruno.petit@chu-a.test",
        "Bruno",
        "Petit",
        ("CHU A (fictif)", "Service de pédiatrie", "1 rue de l'Exemple"),
        "99001",
        "Ville-A",
    ),
    Practitioner(
        "claire.durand@clinique-b.test",
        "Claire",
        "Durand",
        ("Clinique B (fictive)", "Médecine générale", "2 avenue du Test"),
        "99002",
        "Ville-B",
    ),
)


def practitioner_for(address: str) -> Practitioner:
    """The demo practitioner with this address, or a minimal one named after the
    address' ``given.surname`` local part (no postal fields)."""
    address = normalise_address(address)
    for practitioner in DEMO_PRACTITIONERS:
        if practitioner.address == address:
            return practitioner
    local = address.rpartition("@")[0]
    given, _, surname = local.partition(".")
    if not surname:
        given, surname = "", local
    return Practitioner(address, given.title(), surname.title(), (), "", "")


def local_addresses(addresses: Iterable[str], local_domains: Iterable[str]) -> list[str]:
    """The addresses whose domain is one of ``local_domains`` (case-insensitive)."""
    domains = {d.lower().rstrip(".") for d in local_domains}
    return [a for a in addresses if a.rpartition("@")[2].lower() in domains]


# ------------------------------------------------------------------ LDIF
def _is_safe_string(value: str) -> bool:
    """RFC 2849 SAFE-STRING: ASCII without NUL/LF/CR, not starting with space, ``:`` or
    ``<``; a trailing space is also base64-encoded (the RFC's note on trailing spaces)."""
    if not value:
        return True
    if not value.isascii() or any(c in value for c in "\0\n\r"):
        return False
    return value[0] not in " :<" and not value.endswith(" ")


def _fold(line: str) -> str:
    """Fold a line at ``LDIF_LINE_LIMIT``: continuation lines start with one space."""
    if len(line) <= LDIF_LINE_LIMIT:
        return line
    pieces = [line[:LDIF_LINE_LIMIT]]
    rest = line[LDIF_LINE_LIMIT:]
    step = LDIF_LINE_LIMIT - 1
    pieces += [" " + rest[i : i + step] for i in range(0, len(rest), step)]
    return "\n".join(pieces)


def ldif_line(attribute: str, value: str | bytes) -> str:
    """``attr: value`` or ``attr:: base64`` (bytes and unsafe strings), folded."""
    if isinstance(value, str) and _is_safe_string(value):
        return _fold(f"{attribute}: {value}")
    raw = value.encode("utf-8") if isinstance(value, str) else value
    return _fold(f"{attribute}:: {base64.b64encode(raw).decode('ascii')}")


def ldif_record(dn: str, attributes: Sequence[tuple[str, str | bytes]]) -> str:
    """One LDIF content record, ending with the blank line that separates records."""
    lines = [ldif_line("dn", dn)] + [ldif_line(name, value) for name, value in attributes]
    return "\n".join(lines) + "\n\n"


def _postal_address(lines: Sequence[str]) -> str:
    """RFC 4517 §3.3.28 PostalAddress: ``$`` between lines, ``\\`` and ``$`` escaped."""
    return "$".join(line.replace("\\", "\\5C").replace("$", "\\24") for line in lines)


def practitioner_dn(practitioner: Practitioner) -> str:
    return f"uid={escape_rdn(practitioner.address)},{PEOPLE_DN}"


def _practitioner_record(practitioner: Practitioner, certificate: x509.Certificate) -> str:
    attributes: list[tuple[str, str | bytes]] = [
        ("objectClass", "top"),
        ("objectClass", "person"),
        ("objectClass", "organizationalPerson"),
        ("objectClass", "inetOrgPerson"),
        ("uid", practitioner.address),
        ("cn", practitioner.common_name),
        ("sn", practitioner.surname),
        ("givenName", practitioner.given_name),
        ("mail", practitioner.address),
        ("postalAddress", _postal_address(practitioner.postal_lines)),
        ("postalCode", practitioner.postal_code),
        ("l", practitioner.locality),
        ("userCertificate;binary", certificate.public_bytes(serialization.Encoding.DER)),
    ]
    present = [(name, value) for name, value in attributes if value]  # optional fields
    return ldif_record(practitioner_dn(practitioner), present)


def _base_records() -> str:
    return ldif_record(
        BASE_DN,
        [
            ("objectClass", "top"),
            ("objectClass", "dcObject"),
            ("objectClass", "organization"),
            ("dc", "annuaire"),
            ("o", "Annuaire de démonstration Missive (fictif)"),
        ],
    ) + ldif_record(
        PEOPLE_DN, [("objectClass", "top"), ("objectClass", "organizationalUnit"), ("ou", "people")]
    )


def demo_annuaire_ldif(
    pki: DevPki,
    practitioners: Sequence[Practitioner] = DEMO_PRACTITIONERS,
    *,
    base_entries: bool = True,
) -> str:
    """The LDIF text of the demo annuaire; ``DevPkiError`` if a practitioner has no
    encryption certificate in ``pki``."""
    records = ["version: 1\n\n"]
    if base_entries:
        records.append(_base_records())
    for practitioner in practitioners:
        cert_path = pki.user_cert(practitioner.address, "enc")
        certificate = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        records.append(_practitioner_record(practitioner, certificate))
    return "".join(records)


def write_demo_annuaire(
    pki: DevPki,
    ldif_path: Path,
    practitioners: Sequence[Practitioner] = DEMO_PRACTITIONERS,
    *,
    overwrite: bool = True,
    base_entries: bool = True,
) -> bool:
    """Write the demo annuaire to ``ldif_path`` (atomically, 0644); with
    ``overwrite=False`` an existing file is kept. Returns True when the file was written."""
    if ldif_path.exists() and not overwrite:
        return False
    text = demo_annuaire_ldif(pki, practitioners, base_entries=base_entries)
    ldif_path.parent.mkdir(parents=True, exist_ok=True)
    replace_file(ldif_path, text.encode("utf-8"))
    return True


# ------------------------------------------------------------- key store
def install_demo_keys(pki: DevPki, keys_dir: Path, addresses: Iterable[str]) -> list[Change]:
    """Copy each address' signature and encryption key + certificate into ``keys_dir`` as
    ``<address>.<sign|enc>.pem`` (0600, directory 0700), never overwriting a file.

    Give it the *local* users only (``local_addresses``): a remote colleague's private
    key has no business in this gateway's key store.
    """
    changes: list[Change] = []
    if ensure_private_dir(keys_dir):
        changes.append(Change("created", keys_dir))
    for address in addresses:
        address = normalise_address(address)
        for purpose in PURPOSES:
            target = keys_dir / f"{address}.{purpose}.pem"
            if target.exists():
                changes.append(Change("kept", target))
                continue
            try:
                pem = pki.user_key(address, purpose).read_bytes()
                pem += pki.user_cert(address, purpose).read_bytes()
            except OSError as error:
                raise DevPkiError(f"{address}: cannot read its {purpose} key ({error})") from None
            created = create_private_file(target, pem)
            changes.append(Change("created" if created else "kept", target))
    return changes
