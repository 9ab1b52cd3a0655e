"""Synthetic MSSanté extracts and RPPS files of any size, for tests and benchmarks.

Role: the repository holds no real personal data, yet the importers, the search and
the benchmarks need realistic extracts: French names, professions and savoir-faire of
the public nomenclatures, real cities with their postcodes and departments, several
mailboxes per practitioner scattered through the file (as in the real extract, which is
not sorted by person), structure and application boxes, and on request a few
deliberately bad rows. ``scripts/generate-annuaire-extracts`` is the command line.

Invariants:
- Deterministic: the same (format, rows, seed, bad rows) gives byte-identical output,
  on any machine (``random.Random`` seeded; no clock, no hash()).
- Streaming: lines are produced one at a time; memory is a fixed pool of practices
  and a window of 256 pending rows (the shuffle), whatever ``rows`` is.
- The same seed describes the same practitioners in both formats (the n-th person of
  the MSSanté extract is the n-th of the RPPS file), so importing both merges them.
- Obviously synthetic, never real: RPPS numbers start with ``99`` (real ones start with
  ``10``) and carry a valid Luhn digit; ADELI numbers start with ``99`` (no such
  department); FINESS and SIRET numbers contain ``99`` as their department or start
  with ``999``; every mailbox is under ``.test`` (RFC 2606), e.g.
  ``camille.lefebvre.42@medecin.mssante.test``; no phone number or ordinary e-mail
  address is generated.
- ``rows`` counts data rows (the header is extra); ``bad_rows`` of them are corrupted
  in turn: wrong column count, invalid UTF-8, invalid mailbox address (MSSanté) or empty
  national id (RPPS), national id with a wrong Luhn digit.

Not cryptographic randomness (ruff S311): it must be reproducible, not secret.
"""

from __future__ import annotations

import argparse
import random
import sys
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import BinaryIO, Final

from annuaire.importers import mssante, rpps
from annuaire.importers.checks import luhn_valid
from annuaire.importers.synthetic_data import (
    APPLICATIONS,
    CITIES,
    CLINIC_NAMES,
    FEMALE_NAMES,
    MALE_NAMES,
    OTHER_SPECIALTIES,
    PHYSICIAN_SPECIALTIES,
    PROFESSIONS,
    SERVICES,
    STREET_NAMES,
    STREET_TYPES,
    SURNAMES,
)

SHUFFLE_WINDOW: Final = 256
SITES_PER_CITY: Final = 12
MAIL_SUFFIX: Final = "mssante.test"
_ID_MULTIPLIER: Final = 7_654_321  # odd and not a multiple of 5: a bijection modulo 10**k


def ascii_slug(text: str) -> str:
    """``"Saint-Étienne"`` -> ``"saint-etienne"``: a DNS-label and local-part fragment."""
    bare = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
    words = "".join(c if c.isalnum() else " " for c in bare.lower()).split()
    return "-".join(words)


def upper_ascii(text: str) -> str:
    """``"de l'Église"`` -> ``"DE L'EGLISE"`` (how the extracts write street names)."""
    return unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii").upper()


def luhn_digit(body: str) -> str:
    """The digit that makes ``body + digit`` pass the Luhn check."""
    return next(d for d in "0123456789" if luhn_valid(body + d))


@dataclass(frozen=True, slots=True)
class Site:
    """A place of practice: hospital, clinic or private practice."""

    kind: str  # "hospital" | "clinic" | "cabinet"
    name: str
    id_type: str  # "1" FINESS | "3" SIRET
    ident: str
    city: str
    postcode: str
    department: str
    number: str
    street_type: tuple[str, str]
    street: str
    domain: str

    @property
    def structure_id(self) -> str:
        return self.id_type + self.ident

    @property
    def routing(self) -> str:
        return f"{self.postcode} {upper_ascii(self.city)}"


@dataclass(frozen=True, slots=True)
class Practitioner:
    index: int
    id_type: str  # "8" RPPS | "0" ADELI
    ident: str
    female: bool
    given_name: str
    surname: str
    profession: tuple[str, str, str]  # code, label, MSSanté domain label
    specialty: tuple[str, str] | None
    salaried: bool
    sites: tuple[Site, ...]

    @property
    def national_id(self) -> str:
        return self.id_type + self.ident

    @property
    def local_part(self) -> str:
        return f"{ascii_slug(self.given_name)}.{ascii_slug(self.surname)}.{self.index}"


class World:
    """The practices and the practitioners of one seed."""

    def __init__(self, seed: int) -> None:
        self.seed = seed
        # two streams: ``people`` draws only the practitioners (the same in both
        # formats for one seed), ``rng`` the places and each format's own choices
        self.people = random.Random(seed)  # noqa: S311 - reproducible test data, not secrets
        self.rng = random.Random(seed + 1)  # noqa: S311 - idem
        self.hospitals: list[Site] = []
        self.cabinets: list[Site] = []
        for city_index, city in enumerate(CITIES):
            self._add_sites(city_index, city)
        self._professions = [(p[0], p[1], p[3]) for p in PROFESSIONS]
        self._profession_weights = list(accumulate(p[2] for p in PROFESSIONS))
        self._specialties = [s[:2] for s in PHYSICIAN_SPECIALTIES]
        self._specialty_weights = list(accumulate(s[2] for s in PHYSICIAN_SPECIALTIES))

    def _add_sites(self, city_index: int, city: tuple[str, tuple[str, ...], str]) -> None:
        """A hospital, a clinic and private practices in one city."""
        name, postcodes, department = city
        slug = ascii_slug(name)
        finess_department = "20" if department in ("2A", "2B") else department[:2]
        big = len(postcodes) > 3
        for number in range(SITES_PER_CITY):
            serial = city_index * SITES_PER_CITY + number
            street_type = self.rng.choice(STREET_TYPES)
            street = self.rng.choice(STREET_NAMES)
            if number == 0:
                kind, label = "hospital", f"{'CHU' if big else 'Centre hospitalier'} de {name}"
                domain = f"{'chu' if big else 'ch'}-{slug}.{MAIL_SUFFIX}"
            elif number == 1:
                kind, label = "clinic", self.rng.choice(CLINIC_NAMES)
                domain = f"{ascii_slug(label)}-{slug}.{MAIL_SUFFIX}"
            else:
                kind, label = "cabinet", f"Cabinet médical {street}"
                domain = f"{slug}.{MAIL_SUFFIX}"
            site = Site(
                kind=kind,
                name=label,
                id_type="3" if kind == "cabinet" else "1",
                ident=f"999{serial:011d}"
                if kind == "cabinet"
                else f"{finess_department}99{serial:05d}",
                city=name,
                postcode=self.rng.choice(postcodes),
                department=department,
                number=str(self.rng.randint(1, 180)),
                street_type=street_type,
                street=street,
                domain=domain,
            )
            (self.cabinets if kind == "cabinet" else self.hospitals).append(site)

    def practitioner(self, index: int) -> Practitioner:
        """The ``index``-th practitioner (1-based; call in order: draws are sequential)."""
        rng = self.people
        profession = rng.choices(self._professions, cum_weights=self._profession_weights)[0]
        female = rng.random() < 0.55
        adeli = profession[0] not in ("10", "21", "40", "50") and rng.random() < 0.15
        salaried = rng.random() < 0.35
        sites = [rng.choice(self.hospitals if salaried else self.cabinets)]
        if rng.random() < 0.2:
            sites.append(rng.choice(self.cabinets if salaried else self.hospitals))
        return Practitioner(
            index=index,
            id_type="0" if adeli else "8",
            ident=self._adeli(index) if adeli else self._rpps(index),
            female=female,
            given_name=rng.choice(FEMALE_NAMES if female else MALE_NAMES),
            surname=rng.choice(SURNAMES),
            profession=profession,
            specialty=self._specialty(profession[0]),
            salaried=salaried,
            sites=tuple(sites),
        )

    def _specialty(self, profession: str) -> tuple[str, str] | None:
        rng = self.people
        if profession == "10":
            return rng.choices(self._specialties, cum_weights=self._specialty_weights)[0]
        choices = OTHER_SPECIALTIES.get(profession)
        if choices and rng.random() < 0.3:
            return rng.choice(choices)
        return None

    def _rpps(self, index: int) -> str:
        body = f"99{(index * _ID_MULTIPLIER + self.seed) % 10**8:08d}"
        return body + luhn_digit(body)

    def _adeli(self, index: int) -> str:
        return f"99{(index * _ID_MULTIPLIER + self.seed) % 10**7:07d}"


# -- MSSanté rows ----------------------------------------------------------------------


def _mssante_place(site: Site) -> list[str]:
    """Columns 19-31 (structure name and address) for a site."""
    return [
        site.name, "", "", "", site.number, "", site.street_type[0],
        upper_ascii(site.street), "", site.routing, site.postcode, site.department, "FRANCE",
    ]  # fmt: skip


def _person_boxes(world: World, person: Practitioner) -> list[tuple[str, Site]]:
    """The person's mailboxes (1 to 3) with the practice each one belongs to."""
    first = person.sites[0]
    own_domain = f"{person.profession[2]}.{MAIL_SUFFIX}"
    boxes = [(f"{person.local_part}@{first.domain if person.salaried else own_domain}", first)]
    draw = world.rng.random()
    if draw < 0.30:
        other = person.sites[-1]
        domain = own_domain if person.salaried else other.domain
        boxes.append((f"{person.local_part}@{domain}", other))
    if draw < 0.08:
        boxes.append((f"{person.local_part}@{ascii_slug(first.city)}.{MAIL_SUFFIX}", first))
    return list(dict.fromkeys(boxes))


def _mssante_person_rows(world: World, person: Practitioner) -> Iterator[list[str]]:
    attached = world.rng.random() >= 0.03  # ANS: some PER boxes have no national id
    specialty = person.specialty or ("", "")
    for address, site in _person_boxes(world, person):
        yield [
            "PER", address,
            person.id_type if attached else "", person.ident if attached else "",
            person.national_id if attached else "",
            site.id_type, site.structure_id, "",
            "DR" if person.profession[0] in ("10", "40") else "",
            upper_ascii(person.surname), person.given_name, "C", "Civil",
            person.profession[0], person.profession[1], specialty[0], specialty[1],
            "O" if world.rng.random() < 0.7 else "N",
            *_mssante_place(site),
        ]  # fmt: skip


def _mssante_structure_row(world: World, counter: int) -> list[str]:
    site = world.rng.choice(world.hospitals)
    if world.rng.random() < 0.2:
        label, local = world.rng.choice(APPLICATIONS)
        box_type = "APP"
    else:
        label, local = world.rng.choice(SERVICES)
        box_type = "ORG"
    return [
        box_type, f"{local}.{counter}@{site.domain}", "", "", "", site.id_type,
        site.structure_id, label, "", "", "", "", "", "", "", "", "", "O",
        *_mssante_place(site),
    ]  # fmt: skip


def _mssante_records(world: World) -> Iterator[list[str]]:
    """MSSanté rows in generation order (persons' boxes together), endless."""
    index = 0
    counter = 0
    while True:
        index += 1
        yield from _mssante_person_rows(world, world.practitioner(index))
        if world.rng.random() < 0.12:
            counter += 1
            yield _mssante_structure_row(world, counter)


# -- RPPS rows -------------------------------------------------------------------------

_RPPS_SECTORS: Final = {
    "hospital": ("SA01", "Etablissement public de santé"),
    "clinic": ("SA02", "Etablissement privé de santé"),
    "cabinet": ("SA07", "Cabinet individuel"),
}


def _rpps_activity(person: Practitioner, site: Site | None, world: World) -> list[str]:
    specialty = person.specialty or ("", "")
    doctor = person.profession[0] in ("10", "40")
    head = [
        person.id_type, person.ident, person.national_id,
        "DR" if doctor else "", "Docteur" if doctor else "",
        "MME" if person.female else "M", "Madame" if person.female else "Monsieur",
        upper_ascii(person.surname), upper_ascii(person.given_name),
        person.profession[0], person.profession[1], "C", "Civil",
        "S" if specialty[0] else "", "Spécialité ordinale" if specialty[0] else "",
        specialty[0], specialty[1],
    ]  # fmt: skip
    if site is None:  # a registered practitioner without any activity
        return [*head, *([""] * (len(rpps.HEADER) - len(head))), ""]
    sector = _RPPS_SECTORS[site.kind]
    city = upper_ascii(site.city)
    return [
        *head,
        "S" if person.salaried else "L", "Salarié" if person.salaried else "Libéral",
        site.ident if site.id_type == "3" else "", "",
        site.ident if site.id_type == "1" else "", "", f"R{site.structure_id}",
        site.name.upper(), "", site.name.upper(), "",
        site.number, "", site.street_type[0], site.street_type[1], upper_ascii(site.street),
        "", f"{site.postcode} {city}", site.postcode, "",
        city if world.rng.random() < 0.5 else "",
        "", "", "", "", "", "",
        site.department if world.rng.random() < 0.5 else "", "",
        "", "CNOM/CNOM/CNOM" if doctor else "ARS/ARS/ARS", sector[0], sector[1], "", "",
        "",
    ]  # fmt: skip


def _rpps_records(world: World) -> Iterator[list[str]]:
    """RPPS rows (one per activity; 3% of people without activity), endless."""
    index = 0
    while True:
        index += 1
        person = world.practitioner(index)
        if world.rng.random() < 0.03:
            yield _rpps_activity(person, None, world)
            continue
        for site in person.sites:
            yield _rpps_activity(person, site, world)


# -- bad rows, shuffle, output ---------------------------------------------------------


def _corrupt(fields: list[str], kind: int, id_column: int, address_column: int | None) -> bytes:
    """One deliberately bad row of kind 0..3 (see the module docstring)."""
    if kind == 0:
        return "|".join(fields[:-1]).encode("utf-8")
    if kind == 1:
        return "|".join(fields).encode("utf-8").replace(b"|", b"|\xff\xfe", 1)
    if kind == 2 or not fields[id_column]:
        if address_column is not None:
            fields[address_column] = fields[address_column].replace("@", ".at.")
        else:
            fields[id_column] = ""
        return "|".join(fields).encode("utf-8")
    ident = fields[id_column]
    fields[id_column] = ident[:-1] + str((int(ident[-1]) + 1) % 10)
    if ident[0] != "8":  # an ADELI has no check digit: make it unmistakably malformed
        fields[id_column] = "8" + "1" * 11
    return "|".join(fields).encode("utf-8")


def _emit(
    records: Iterator[list[str]],
    header: Sequence[str],
    rows: int,
    bad_rows: int,
    seed: int,
    columns: tuple[int, int | None],
) -> Iterator[bytes]:
    """Header, then ``rows`` shuffled data lines of which ``bad_rows`` are corrupted."""
    yield "|".join(header).encode("utf-8") + b"\n"
    shuffle = random.Random(seed ^ 0x5EED)  # noqa: S311 - reproducible, not secret
    bad = set(shuffle.sample(range(rows), min(bad_rows, rows)))
    pending: list[list[str]] = []
    emitted = 0
    kinds = 0
    while emitted < rows:
        if len(pending) < SHUFFLE_WINDOW:
            pending.append(next(records))
            if len(pending) < SHUFFLE_WINDOW and len(pending) < rows - emitted:
                continue
        chosen = shuffle.randrange(len(pending))
        pending[chosen], pending[-1] = pending[-1], pending[chosen]
        fields = pending.pop()
        if emitted in bad:
            yield _corrupt(fields, kinds % 4, *columns) + b"\n"
            kinds += 1
        else:
            yield "|".join(fields).encode("utf-8") + b"\n"
        emitted += 1


def mssante_lines(rows: int, *, seed: int = 0, bad_rows: int = 0) -> Iterator[bytes]:
    """An MSSanté extract: header and ``rows`` data lines (bytes, with ``\\n``)."""
    world = World(seed)
    columns = (mssante.HEADER.index("Identification nationale PP"), 1)
    return _emit(_mssante_records(world), mssante.HEADER, rows, bad_rows, seed, columns)


def rpps_lines(rows: int, *, seed: int = 0, bad_rows: int = 0) -> Iterator[bytes]:
    """An RPPS ``PS_LibreAcces_Personne_activite`` file (each line ends with ``|``)."""
    world = World(seed)
    columns = (rpps.HEADER.index("Identification nationale PP"), None)
    return _emit(_rpps_records(world), (*rpps.HEADER, ""), rows, bad_rows, seed, columns)


GENERATORS: Final[dict[str, Callable[..., Iterator[bytes]]]] = {
    mssante.NAME: mssante_lines,
    rpps.NAME: rpps_lines,
}


def write_extract(
    stream: BinaryIO, extract_format: str, rows: int, *, seed: int = 0, bad_rows: int = 0
) -> int:
    """Write an extract to ``stream``; returns the number of bytes written."""
    written = 0
    for line in GENERATORS[extract_format](rows, seed=seed, bad_rows=bad_rows):
        stream.write(line)
        written += len(line)
    return written


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="generate-annuaire-extracts",
        description="Write a synthetic MSSanté extract or RPPS file (no real personal data).",
    )
    parser.add_argument("--format", required=True, choices=sorted(GENERATORS))
    parser.add_argument("--rows", type=_count, default=1000, help="data rows (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--bad-rows", type=_count, default=0, help="rows to corrupt (default 0)")
    parser.add_argument("output", nargs="?", default="-", help="output file, - for stdout")
    args = parser.parse_args(argv)
    if args.bad_rows > args.rows:
        parser.error("--bad-rows cannot exceed --rows")
    if args.output == "-":
        write_extract(sys.stdout.buffer, args.format, args.rows, seed=args.seed,
                      bad_rows=args.bad_rows)  # fmt: skip
        sys.stdout.buffer.flush()
        return 0
    try:
        with Path(args.output).open("wb") as stream:
            write_extract(stream, args.format, args.rows, seed=args.seed, bad_rows=args.bad_rows)
    except OSError as error:
        print(f"{args.output}: {error.strerror}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
