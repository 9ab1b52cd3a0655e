"""Sample annuaire entries shared by the annuaire tests (synthetic, obviously fake)."""

from __future__ import annotations

from annuaire.mapping import DEFAULT_ATTRIBUTES
from annuaire.model import Entry, Mailbox

ATTRIBUTES = DEFAULT_ATTRIBUTES
BASE_DN = "ou=personnes,dc=annuaire,dc=test"


def helene(certificates: tuple[bytes, ...] = ()) -> Entry:
    """A cardiologist with accents, an apostrophe and a hyphen in her names."""
    return Entry(
        key="810000000001",
        kind="person",
        national_id="810000000001",
        display_name="Hélène L'Œuvre-Dupré",
        given_name="Hélène",
        surname="L'Œuvre-Dupré",
        profession_code="10",
        profession_label="Médecin",
        specialty_code="SM04",
        specialty_label="Cardiologie et maladies vasculaires",
        organisation="CHU A (fictif)",
        postal_address=("Service de cardiologie", "1 rue de l'Exemple $ bis \\ 2"),
        postal_code="99001",
        city="Saint-Étienne-Test",
        department="99",
        region="Île-de-Test",
        mailboxes=(
            Mailbox("helene.loeuvre@chu-a.test", "PER"),
            Mailbox("cardio.secretariat@chu-a.test", "CAB"),
        ),
        certificates=certificates,
    )


def marc(certificates: tuple[bytes, ...] = ()) -> Entry:
    """A general practitioner (ADELI id) in another city."""
    return Entry(
        key="0990000002",
        kind="person",
        national_id="0990000002",
        display_name="Marc Martin",
        given_name="Marc",
        surname="Martin",
        profession_code="10",
        profession_label="Médecin",
        specialty_code="SM54",
        specialty_label="Médecine générale",
        postal_address=("2 avenue du Test",),
        postal_code="99002",
        city="Ville-B",
        department="98",
        region="Région Test",
        mailboxes=(Mailbox("marc.martin@clinique-b.test"),),
        certificates=certificates,
    )


def martine(certificates: tuple[bytes, ...] = ()) -> Entry:
    """A nurse whose surname starts like Martin."""
    return Entry(
        key="810000000003",
        kind="person",
        national_id="810000000003",
        display_name="Martine Martinez",
        given_name="Martine",
        surname="Martinez",
        profession_code="60",
        profession_label="Infirmier",
        postal_code="99001",
        city="Saint-Étienne-Test",
        department="99",
        region="Île-de-Test",
        mailboxes=(Mailbox("martine.martinez@chu-a.test"),),
        certificates=certificates,
    )


def structure(certificates: tuple[bytes, ...] = ()) -> Entry:
    """An organisational mailbox of a clinic (no national id of a person)."""
    return Entry(
        key="accueil@clinique-b.test",
        kind="structure",
        national_id="1990000004",
        display_name="Clinique B - Accueil",
        organisation="Clinique B (fictive)",
        postal_address=("2 avenue du Test",),
        postal_code="99002",
        city="Ville-B",
        department="98",
        region="Région Test",
        mailboxes=(Mailbox("accueil@clinique-b.test", "ORG"),),
        certificates=certificates,
    )


def all_samples() -> list[Entry]:
    return [helene(), marc(), martine(), structure()]
