"""Merging the rows of one practitioner or structure into one entry.

Role: the MSSanté extract has one row per mailbox and the RPPS file one row per
activity, so one entry comes from several rows sharing a key. A row parser returns a
``Draft`` (the entry's fields, not yet checked by the model); ``Draft.absorb`` folds a
later row of the same key into it, in file order; ``Draft.build`` makes the one
``annuaire.model.Entry`` the annuaire stores, running the model's checks once per entry
rather than once per row (the import's hot path; pass 1 already refused every row the
model would refuse, so ``build`` failing means a bug, and the pipeline reports it as a
refused entry).

Rules (deterministic: the result depends only on the rows and their order):
- Identity fields (national id, names, display name) come from the first row that has
  them; a later row only fills what is still empty.
- Profession and specialty are taken as code+label pairs from the first row that has
  the code (never a code from one row with the label of another).
- The place (organisation, postal lines, postcode, city, department, region) is taken
  as one block from the first row that has any of it, so an address never mixes the
  street of one practice with the city of another. That first row is the address the
  postal fallback uses.
- Mailboxes are the union of all rows, in first-seen order, without duplicates
  (addresses are already lower-cased by the row checks).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from annuaire.model import Entry, EntryKind, Mailbox, MailboxType


@dataclass(slots=True)
class Draft:
    """The fields of an entry read from one or more rows (mutable, importer-private)."""

    key: str
    kind: EntryKind
    display_name: str
    national_id: str | None = None
    given_name: str | None = None
    surname: str | None = None
    profession_code: str | None = None
    profession_label: str | None = None
    specialty_code: str | None = None
    specialty_label: str | None = None
    organisation: str | None = None
    postal_address: tuple[str, ...] = ()
    postal_code: str | None = None
    city: str | None = None
    department: str | None = None
    region: str | None = None
    mailboxes: list[tuple[str, MailboxType]] = field(default_factory=list)

    def has_place(self) -> bool:
        return bool(
            self.organisation
            or self.postal_address
            or self.postal_code
            or self.city
            or self.department
        )

    def absorb(self, later: Draft) -> None:
        """Complete this draft with a later row of the same key (rules above)."""
        if self.national_id is None:
            self.national_id = later.national_id
        if self.given_name is None and self.surname is None and (later.given_name or later.surname):
            self.given_name, self.surname = later.given_name, later.surname
            self.display_name = later.display_name
        if self.profession_code is None and later.profession_code:
            self.profession_code, self.profession_label = (
                later.profession_code,
                later.profession_label,
            )
        if self.specialty_code is None and later.specialty_code:
            self.specialty_code, self.specialty_label = later.specialty_code, later.specialty_label
        if not self.has_place() and later.has_place():
            self.organisation, self.postal_address = later.organisation, later.postal_address
            self.postal_code, self.city = later.postal_code, later.city
            self.department, self.region = later.department, later.region
        for mailbox in later.mailboxes:
            if mailbox not in self.mailboxes:
                self.mailboxes.append(mailbox)

    def build(self) -> Entry:
        """The model's entry (``EntryError`` if a value breaks a model invariant)."""
        return Entry(
            key=self.key,
            kind=self.kind,
            display_name=self.display_name,
            national_id=self.national_id,
            given_name=self.given_name,
            surname=self.surname,
            profession_code=self.profession_code,
            profession_label=self.profession_label,
            specialty_code=self.specialty_code,
            specialty_label=self.specialty_label,
            organisation=self.organisation,
            postal_address=self.postal_address,
            postal_code=self.postal_code,
            city=self.city,
            department=self.department,
            region=self.region,
            mailboxes=tuple(Mailbox(address, kind) for address, kind in self.mailboxes),
        )
