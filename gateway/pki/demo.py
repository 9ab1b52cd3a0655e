"""Demo data built on the development PKI: an LDIF annuaire and a local key store.

Role: the embedded default of ``missive serve`` runs on loopback with an LDIF annuaire of
a few synthetic practitioners whose certificates come from the dev PKI (``gateway.pki.dev``).
This module writes that annuaire (``write_demo_annuaire``) and installs the private keys of
the *local* users into ``[keys] dir`` (``install_demo_keys``).

Annuaire: each practitioner becomes an ``annuaire.model.Entry`` (identification nationale,
profession and specialty, organisation, postal address, one PER mailbox, the DER of the
*encryption* certificate: the one a sender encrypts to; the signature certificate travels
inside signed messages) and is written by the annuaire's own mapping and streaming LDIF
writer (``annuaire.mapping``, ``annuaire.ldif``): an ``inetOrgPerson`` with the
``missiveHealthEntry`` auxiliary class under ``ou=people,dc=annuaire,dc=test``, DN
``uid=<national id>``. The parent entries ``dc=annuaire,dc=test`` and ``ou=people`` are
written first unless ``base_entries=False`` (for a directory that already has them). The
file is exactly what the LDIF backend reads and what ``slapadd`` loads into a slapd that
has the schema of ``annuaire/schema``.

Key store layout (CONFIG-CONTRACT ``[keys] dir``): ``<address>.sign.pem`` and
``<address>.enc.pem``, each the private key (PKCS#8 PEM) followed by its certificate,
mode 0600 in a 0700 directory. Existing files are never overwritten.

Organisation signing key (``install_organisation_key``, ``[keys] organisation_signing``):
IGC-Santé issues "ORG" certificates to a structure rather than a person; the secure agent
signs with one the mail of relay clients and of senders without a personal key. The dev
PKI issues it from the persons' CA with the person *signature* profile (digitalSignature
+ nonRepudiation, EKU emailProtection) and ``CN=<organisation name>, OU=<domain>``; its
only SAN address is ``postmaster@<domain>`` (RFC 5321 §4.5.1: the one role address every
domain has), never a person's address, so a verifier that binds the signer to From
(RFC 8550 §3) sees that the organisation, not the author, signed. It is written key +
certificate + personnes CA as ``<keys dir>/organisation/sign.pem`` (0600, directory 0700,
never overwritten): a *subdirectory*, because every ``*.pem`` directly in the key store
must be named ``<address>.<sign|enc>.pem`` (``gateway.smime.keystore``).

The people are synthetic and obviously fake: domains ``chu-a.test`` (local hospital) and
``clinique-b.test`` (a remote colleague's clinic), postal codes ``99xxx``, national ids
``8999...`` (no RPPS number starts with 999), département ``99`` and region
``Région Exemple`` that do not exist.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from annuaire.ldif import atomic_ldif_file
from annuaire.mapping import DEFAULT_ATTRIBUTES, entry_dn, entry_to_attributes
from annuaire.model import Entry, Mailbox
from gateway.pki.dev import PURPOSES, Change, DevPki, DevPkiError, normalise_address
from gateway.pki.files import create_private_file, ensure_private_dir

BASE_DN = "dc=annuaire,dc=test"
PEOPLE_DN = f"ou=people,{BASE_DN}"
DEFAULT_LOCAL_DOMAINS: tuple[str, ...] = ("chu-a.test",)
ORGANISATION_KEY_FILE = Path("organisation") / "sign.pem"  # under [keys] dir
ORGANISATION_MAILBOX = "postmaster"
DEMO_REGION = "Région Exemple"
DEMO_DEPARTMENT = "99"


@dataclass(frozen=True)
class Practitioner:
    """A synthetic health professional of the demo annuaire."""

    address: str
    given_name: str
    surname: str
    postal_lines: tuple[str, ...]
    postal_code: str
    locality: str
    national_id: str | None = None
    profession: tuple[str, str] | None = None  # (code, label)
    specialty: tuple[str, str] | None = None  # savoir-faire (code, label)
    organisation: str | None = None

    @property
    def common_name(self) -> str:
        return f"{self.given_name} {self.surname}".strip()


_MEDECIN = ("10", "Médecin")

DEMO_PRACTITIONERS: tuple[Practitioner, ...] = (
    Practitioner(
        "alice.martin@chu-a.test",
        "Alice",
        "Martin",
        ("Service de cardiologie", "1 rue de l'Exemple"),
        "99001",
        "Ville-A",
        national_id="899900000001",
        profession=_MEDECIN,
        specialty=("SM04", "Cardiologie et maladies vasculaires"),
        organisation="CHU A (fictif)",
    ),
    Practitioner(
        "bruno.petit@chu-a.test",
        "Bruno",
        "Petit",
        ("Service de pédiatrie", "1 rue de l'Exemple"),
        "99001",
        "Ville-A",
        national_id="899900000002",
        profession=_MEDECIN,
        specialty=("SM40", "Pédiatrie"),
        organisation="CHU A (fictif)",
    ),
    Practitioner(
        "claire.durand@clinique-b.test",
        "Claire",
        "Durand",
        ("2 avenue du Test",),
        "99002",
        "Ville-B",
        national_id="899900000003",
        profession=_MEDECIN,
        specialty=("SM54", "Médecine générale"),
        organisation="Clinique B (fictive)",
    ),
)


def practitioner_for(address: str) -> Practitioner:
    """The demo practitioner with this address, or a minimal one named after the
    address' ``given.surname`` local part (no postal fields, no national id)."""
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


# ------------------------------------------------------------------ annuaire
def practitioner_entry(practitioner: Practitioner, certificates: Sequence[bytes] = ()) -> Entry:
    """The annuaire entry of a demo practitioner (certificates as DER)."""
    profession = practitioner.profession or (None, None)
    specialty = practitioner.specialty or (None, None)
    placed = bool(practitioner.postal_code)
    return Entry(
        key=practitioner.national_id or practitioner.address,
        kind="person",
        national_id=practitioner.national_id,
        display_name=practitioner.common_name or practitioner.address,
        given_name=practitioner.given_name or None,
        surname=practitioner.surname or None,
        profession_code=profession[0],
        profession_label=profession[1],
        specialty_code=specialty[0],
        specialty_label=specialty[1],
        organisation=practitioner.organisation,
        postal_address=practitioner.postal_lines,
        postal_code=practitioner.postal_code or None,
        city=practitioner.locality or None,
        department=DEMO_DEPARTMENT if placed else None,
        region=DEMO_REGION if placed else None,
        mailboxes=(Mailbox(practitioner.address, "PER"),),
        certificates=tuple(certificates),
    )


def practitioner_dn(practitioner: Practitioner) -> str:
    return entry_dn(practitioner_entry(practitioner), PEOPLE_DN)


_BASE_RECORDS: tuple[tuple[str, dict[str, list[str | bytes]]], ...] = (
    (
        BASE_DN,
        {
            "objectClass": ["top", "dcObject", "organization"],
            "dc": ["annuaire"],
            "o": ["Annuaire de démonstration Missive (fictif)"],
        },
    ),
    (PEOPLE_DN, {"objectClass": ["top", "organizationalUnit"], "ou": ["people"]}),
)


def demo_entries(
    pki: DevPki, practitioners: Sequence[Practitioner] = DEMO_PRACTITIONERS
) -> list[Entry]:
    """The entries of the demo annuaire; ``DevPkiError`` if a practitioner has no
    encryption certificate in ``pki``."""
    entries = []
    for practitioner in practitioners:
        cert_path = pki.user_cert(practitioner.address, "enc")
        certificate = x509.load_pem_x509_certificates(cert_path.read_bytes())[0]
        der = certificate.public_bytes(serialization.Encoding.DER)
        entries.append(practitioner_entry(practitioner, (der,)))
    return entries


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
    entries = demo_entries(pki, practitioners)  # before opening: an error leaves no file
    with atomic_ldif_file(ldif_path) as writer:
        writer.comment("Missive demo annuaire: synthetic, obviously fake practitioners")
        if base_entries:
            for dn, attributes in _BASE_RECORDS:
                writer.write(dn, attributes)
        for entry in entries:
            writer.write(entry_dn(entry, PEOPLE_DN), entry_to_attributes(entry, DEFAULT_ATTRIBUTES))
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


def organisation_name(domain: str) -> str:
    """The demo organisation of ``domain`` (from the demo practitioners), else the domain."""
    domain = domain.lower().rstrip(".")
    for practitioner in DEMO_PRACTITIONERS:
        if practitioner.organisation and practitioner.address.endswith(f"@{domain}"):
            return practitioner.organisation
    return domain


def install_organisation_key(pki: DevPki, keys_dir: Path, domain: str) -> list[Change]:
    """Issue the organisation signature certificate of ``domain`` (see the module
    docstring) and write key + certificate + issuing CA to ``keys_dir /
    ORGANISATION_KEY_FILE``; an existing file is kept untouched (never overwritten)."""
    target = keys_dir / ORGANISATION_KEY_FILE
    changes: list[Change] = []
    if ensure_private_dir(keys_dir):
        changes.append(Change("created", keys_dir))
    if ensure_private_dir(target.parent):
        changes.append(Change("created", target.parent))
    if target.exists():
        return [*changes, Change("kept", target)]
    address = normalise_address(f"{ORGANISATION_MAILBOX}@{domain}")
    cert_path = pki.issue_user(
        address,
        "sign",
        common_name=organisation_name(domain),
        path=pki.directory / "organisations" / f"{address.rpartition('@')[2]}.sign.crt",
    )
    try:
        pem = cert_path.with_suffix(".key").read_bytes() + cert_path.read_bytes()
        pem += pki.ca_cert("personnes").read_bytes()
    except OSError as error:
        raise DevPkiError(f"{domain}: cannot read its organisation key ({error})") from None
    created = create_private_file(target, pem)
    return [*changes, Change("created" if created else "kept", target)]
