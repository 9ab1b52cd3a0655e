"""The MSSanté *liste blanche*: which operator certificate DN may speak for which domain.

Role: read the XML the Agence du Numérique en Santé publishes
(``https://espacedeconfiance.mssante.fr/listeblanchemssante.xml``) into an immutable
``ListeBlanche`` that the relay listener (``[inbound] accept = "trust-space"``) and
``tls-only`` routes ask ``allows(domain, peer_certificate.subject)``. Pure parsing
(``ListeBlancheParser.feed``/``close``, sans-IO) plus ``load_liste_blanche(path)``.

Format (namespace ``https://listeblanche.mssante.fr/schema``)::

    <ListeBlancheMSSante xmlns="https://listeblanche.mssante.fr/schema">
      <DateDeGeneration>2025-03-13T14:54:10Z</DateDeGeneration>
      <ListeDomaines>
        <Domaine>
          <Nom>15-20.mssante.fr</Nom>  <Description>...</Description>
          <DNCertificatOperateur>CN=...,OU=...,O=...,ST=...,C=FR</DNCertificatOperateur>
          <ResponsableContact/> <SupportContact/> <DateMAJ>...</DateMAJ>
        </Domaine> ...

Several ``Domaine`` elements may share a ``Nom``: one domain, several operator DNs
(``15-20.mssante.fr`` lists four servers of two operators). A ``Domaine`` with several
``DNCertificatOperateur`` is read the same way. Contacts are not kept.

Decisions:

- Safe XML: defusedxml's parser with DTDs forbidden, so no ``DOCTYPE`` at all is
  accepted (billion laughs, external entities and any other entity trick are refused
  before they expand); the ANS file has none.
- Streaming and bounded: the file is fed to expat in 64 KiB chunks and only the
  fields Missive uses are kept; limits: ``MAX_FILE_BYTES`` (64 MiB), ``MAX_DOMAINES``
  (200,000 elements), ``MAX_DEPTH`` (8), ``MAX_FIELD_CHARS`` (4,096 per field).
- File-level problems (unreadable, too big, not well-formed, a DOCTYPE, a root other
  than ``{namespace}ListeBlancheMSSante``, no valid ``DateDeGeneration``, no
  ``ListeDomaines``) raise ``ListeBlancheError`` naming the file, line and column:
  the whole list is unusable (whoever refreshes it keeps the last good copy).
- Entry-level problems (no ``Nom``, a ``Nom`` that is not an ASCII domain name, no
  ``DNCertificatOperateur``, a DN that does not parse, an over-long field) make an
  ``InvalidEntry`` (position and reason) and that entry is left out: fail closed for
  that entry only, so one bad line of the national list does not stop all MSSanté
  mail. ``strict=True`` raises on the first one instead.
- One defect is tolerated, because the list ANS published on 13/03/2025 has it (its
  published SHA-256 matches that file): the file ends right after ``</ListeDomaines>``
  without the root's end tag ``</ListeBlancheMSSante>``. Only that exact case (expat's
  "no element found" at the end, with nothing open but the root and ``ListeDomaines``
  complete, so no entry can be missing) is accepted, with a warning in
  ``ListeBlanche.warnings``; ``strict=True`` refuses it. A file cut anywhere else is
  not well-formed and refused.
- Elements in other namespaces and unknown elements are ignored (forward
  compatibility), except as the root.
- Domains: ``Nom`` is lower-cased and checked as a DNS name in A-label form
  (``gateway.config.domains.parse_domain``); ``allows`` matches the domain exactly
  (lower-cased, trailing dot dropped): a subdomain of a listed domain is not listed.
- DNs: parsed and compared as ``gateway.smtp.dnmatch`` documents (RFC 4514 parsing,
  RFC 4518 caseIgnoreMatch preparation, multi-valued RDNs order-independent, the
  whole DN must match).
- Dates are ISO 8601 (``datetime.fromisoformat``); one without a zone is taken as UTC.
  A bad ``DateMAJ`` is ignored (it decides nothing).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from pyexpat import errors as expat_errors
from typing import Any
from xml.etree.ElementTree import ParseError

from cryptography import x509
from cryptography.x509.oid import NameOID
from defusedxml import DTDForbidden, EntitiesForbidden, ExternalReferenceForbidden
from defusedxml.ElementTree import DefusedXMLParser

from gateway.config.domains import parse_domain
from gateway.config.value_errors import BadValue
from gateway.errors import MissiveError
from gateway.smtp.dnmatch import NormalisedDN, normalise_dn, parse_dn, prepare_value

NAMESPACE = "https://listeblanche.mssante.fr/schema"
MAX_FILE_BYTES = 64 * 1024 * 1024
MAX_DOMAINES = 200_000
MAX_DEPTH = 8
MAX_FIELD_CHARS = 4096
CHUNK_BYTES = 64 * 1024

_ROOT = f"{{{NAMESPACE}}}ListeBlancheMSSante"
_DATE = f"{{{NAMESPACE}}}DateDeGeneration"
_LIST = f"{{{NAMESPACE}}}ListeDomaines"
_DOMAINE = f"{{{NAMESPACE}}}Domaine"
_FIELDS = {
    f"{{{NAMESPACE}}}{name}": name
    for name in ("Nom", "Description", "DNCertificatOperateur", "DateMAJ")
}


class ListeBlancheError(MissiveError):
    """The liste blanche file cannot be used; one line per problem, with its position."""


@dataclass(frozen=True, slots=True, order=True)
class Position:
    """Where an element starts in the file (1-based line and column)."""

    line: int
    column: int

    def __str__(self) -> str:
        return f"line {self.line}, column {self.column}"


@dataclass(frozen=True, slots=True)
class Entry:
    """One (domain, operator DN) pair of the list."""

    domain: str
    dn: x509.Name
    dn_text: str
    description: str
    updated: datetime | None
    position: Position

    @property
    def organisation(self) -> str | None:
        """The first ``O=`` value of the DN (the operator), if any."""
        values = self.dn.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
        return str(values[0].value) if values else None


@dataclass(frozen=True, slots=True)
class InvalidEntry:
    """A ``Domaine`` element that was left out, and why."""

    position: Position
    reason: str
    domain: str | None = None


@dataclass(frozen=True, slots=True)
class Operator:
    """An operator (by ``O=``) with the number of domains and distinct DNs it serves."""

    organisation: str
    domains: int
    dns: int


@dataclass(frozen=True, slots=True)
class Stats:
    generated: datetime
    entries: int
    domains: int
    dns: int
    several_dns: dict[str, int]  # domain -> number of distinct DNs, when more than one
    operators: tuple[Operator, ...]
    invalid: tuple[InvalidEntry, ...]
    warnings: tuple[str, ...]


def _normalise_domain(domain: str) -> str:
    return domain.lower().removesuffix(".")


@dataclass(frozen=True)
class ListeBlanche:
    """The parsed list: entries by domain, compared DNs precomputed."""

    generated: datetime
    entries: tuple[Entry, ...]
    invalid: tuple[InvalidEntry, ...] = ()
    source: str = ""
    warnings: tuple[str, ...] = ()
    _by_domain: dict[str, tuple[Entry, ...]] = field(init=False, repr=False, compare=False)
    _keys: dict[str, frozenset[NormalisedDN]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        grouped: dict[str, list[Entry]] = defaultdict(list)
        for entry in self.entries:
            grouped[entry.domain].append(entry)
        by_domain = {domain: tuple(entries) for domain, entries in grouped.items()}
        keys = {
            domain: frozenset(normalise_dn(entry.dn) for entry in entries)
            for domain, entries in by_domain.items()
        }
        object.__setattr__(self, "_by_domain", by_domain)
        object.__setattr__(self, "_keys", keys)

    def __contains__(self, domain: object) -> bool:
        return isinstance(domain, str) and _normalise_domain(domain) in self._keys

    def domains(self) -> frozenset[str]:
        return frozenset(self._by_domain)

    def entries_for(self, domain: str) -> tuple[Entry, ...]:
        return self._by_domain.get(_normalise_domain(domain), ())

    def operator_dns(self, domain: str) -> frozenset[x509.Name]:
        """Every operator DN listed for ``domain`` (as written; empty if unlisted)."""
        return frozenset(entry.dn for entry in self.entries_for(domain))

    def allows(self, domain: str, peer_dn: x509.Name) -> bool:
        """True if ``peer_dn`` equals (see ``gateway.smtp.dnmatch``) a DN listed for
        ``domain``; False for an unlisted domain."""
        keys = self._keys.get(_normalise_domain(domain))
        return keys is not None and normalise_dn(peer_dn) in keys

    def stats(self) -> Stats:
        operator_domains: dict[str, set[str]] = defaultdict(set)
        operator_dns: dict[str, set[NormalisedDN]] = defaultdict(set)
        names: dict[str, str] = {}
        for entry in self.entries:
            organisation = entry.organisation or "(no O=)"
            key = prepare_value(organisation)
            names.setdefault(key, organisation)
            operator_domains[key].add(entry.domain)
            operator_dns[key].add(normalise_dn(entry.dn))
        operators = [
            Operator(names[key], len(operator_domains[key]), len(operator_dns[key]))
            for key in names
        ]
        operators.sort(key=lambda operator: (-operator.domains, operator.organisation))
        return Stats(
            generated=self.generated,
            entries=len(self.entries),
            domains=len(self._keys),
            dns=len(set().union(*self._keys.values())),
            several_dns={d: len(keys) for d, keys in sorted(self._keys.items()) if len(keys) > 1},
            operators=tuple(operators),
            invalid=self.invalid,
            warnings=self.warnings,
        )


# ---------------------------------------------------------------- parsing


@dataclass
class _DomaineBuilder:
    position: Position
    fields: dict[str, list[str]] = field(default_factory=dict)
    too_long: str | None = None


def _parse_date(text: str) -> datetime:
    value = datetime.fromisoformat(text.strip())
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


class _Target:
    """The expat target: keeps the state of the walk and builds entries as it goes."""

    def __init__(self, parser: ListeBlancheParser) -> None:
        self._owner = parser
        self._stack: list[str] = []
        self._text: list[str] | None = None
        self._text_size = 0
        self._domaine: _DomaineBuilder | None = None
        self.domaines = 0
        self.generated_text: str | None = None
        self.generated_position: Position | None = None
        self.seen_list = False
        self.list_closed = False

    def start(self, tag: str, attributes: dict[str, str]) -> None:
        position = self._owner.position()
        depth = len(self._stack) + 1
        if depth > MAX_DEPTH:
            raise self._owner.error(position, f"elements nested deeper than {MAX_DEPTH}")
        if depth == 1 and tag != _ROOT:
            raise self._owner.error(
                position, f"the root element is {_show_tag(tag)}, expected {_show_tag(_ROOT)}"
            )
        parent = self._stack[-1] if self._stack else None
        self._stack.append(tag)
        if parent == _ROOT and tag == _DATE:
            self.generated_position = position
            self._start_text()
        elif parent == _ROOT and tag == _LIST:
            self.seen_list = True
        elif parent == _LIST and tag == _DOMAINE:
            self.domaines += 1
            if self.domaines > MAX_DOMAINES:
                raise self._owner.error(position, f"more than {MAX_DOMAINES} Domaine elements")
            self._domaine = _DomaineBuilder(position)
        elif parent == _DOMAINE and tag in _FIELDS and self._domaine is not None:
            self._start_text()

    def _start_text(self) -> None:
        self._text, self._text_size = [], 0

    def data(self, text: str) -> None:
        if self._text is None:
            return
        self._text_size += len(text)
        if self._text_size <= MAX_FIELD_CHARS:
            self._text.append(text)

    def end(self, tag: str) -> None:
        self._stack.pop()
        parent = self._stack[-1] if self._stack else None
        text, size = "".join(self._text or ()), self._text_size
        self._text = None
        if parent == _ROOT and tag == _DATE:
            self.generated_text = text if size <= MAX_FIELD_CHARS else ""
        elif parent == _ROOT and tag == _LIST:
            self.list_closed = True
        elif parent == _DOMAINE and tag in _FIELDS and self._domaine is not None:
            name = _FIELDS[tag]
            if size > MAX_FIELD_CHARS:
                self._domaine.too_long = f"{name} longer than {MAX_FIELD_CHARS} characters"
            self._domaine.fields.setdefault(name, []).append(text.strip())
        elif parent == _LIST and tag == _DOMAINE and self._domaine is not None:
            self._owner.add_domaine(self._domaine)
            self._domaine = None

    def close(self) -> None:
        return None

    def only_root_open(self) -> bool:
        """True when the walk is past a complete ListeDomaines with only the root open."""
        return self._stack == [_ROOT] and self.list_closed


def _show_tag(tag: str) -> str:
    namespace, _, local = tag[1:].rpartition("}") if tag.startswith("{") else ("", "", tag)
    where = f"namespace {namespace}" if namespace else "no namespace"
    return f"<{local}> in {where}"


class ListeBlancheParser:
    """Push parser: ``feed(bytes)`` as the file arrives, then ``close()`` -> ``ListeBlanche``."""

    def __init__(self, source: str = "liste blanche", *, strict: bool = False) -> None:
        self.source = source
        self.strict = strict
        self._entries: list[Entry] = []
        self._invalid: list[InvalidEntry] = []
        self._size = 0
        self._warnings: list[str] = []
        self._parse_error_code: int | None = None
        self._target = _Target(self)
        self._xml: Any = DefusedXMLParser(
            target=self._target, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )

    # -- helpers for the target

    def position(self) -> Position:
        expat = self._xml.parser
        return Position(expat.CurrentLineNumber, expat.CurrentColumnNumber + 1)

    def error(self, position: Position | None, message: str) -> ListeBlancheError:
        where = f"{position}: " if position is not None else ""
        return ListeBlancheError(f"{self.source}: {where}{message}")

    def add_domaine(self, builder: _DomaineBuilder) -> None:
        try:
            self._entries.extend(_entries_of(builder))
        except _Invalid as invalid:
            entry = InvalidEntry(builder.position, invalid.reason, invalid.domain)
            if self.strict:
                raise self.error(entry.position, entry.reason) from None
            self._invalid.append(entry)

    # -- public

    def feed(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_FILE_BYTES:
            raise self.error(None, f"larger than {MAX_FILE_BYTES} bytes")
        self._run(self._xml.feed, data)

    def close(self) -> ListeBlanche:
        try:
            self._run(self._xml.close)
        except ListeBlancheError:
            if self.strict or not self._root_end_tag_missing():
                raise
            self._warnings.append(_ROOT_NOT_CLOSED)
        target = self._target
        if target.generated_text is None:
            raise self.error(None, "no DateDeGeneration element under the root")
        try:
            generated = _parse_date(target.generated_text)
        except ValueError:
            raise self.error(
                target.generated_position, "DateDeGeneration is not an ISO 8601 date and time"
            ) from None
        if not target.seen_list:
            raise self.error(None, "no ListeDomaines element under the root")
        return ListeBlanche(
            generated,
            tuple(self._entries),
            tuple(self._invalid),
            self.source,
            tuple(self._warnings),
        )

    def _root_end_tag_missing(self) -> bool:
        """The one defect tolerated (see module doc): the file ends right where the root's
        end tag should be, after a complete ListeDomaines."""
        no_elements = expat_errors.codes[expat_errors.XML_ERROR_NO_ELEMENTS]
        return self._parse_error_code == no_elements and self._target.only_root_open()

    def _run(self, step: Any, *args: bytes) -> None:
        try:
            step(*args)
        except ParseError as error:
            self._parse_error_code = error.code
            line, column = error.position
            reason = str(error).split(":")[0]
            raise self.error(
                Position(line, column + 1), f"not well-formed XML ({reason})"
            ) from None
        except DTDForbidden:
            raise self.error(
                self.position(),
                "a DOCTYPE declaration is refused (DTDs and entities are never processed)",
            ) from None
        except (EntitiesForbidden, ExternalReferenceForbidden):
            raise self.error(self.position(), "an entity declaration is refused") from None


_ROOT_NOT_CLOSED = (
    "the file ends without </ListeBlancheMSSante> (the root's end tag);"
    " ListeDomaines is complete, so the list is used"
)


class _Invalid(Exception):
    def __init__(self, reason: str, domain: str | None = None) -> None:
        super().__init__(reason)
        self.reason, self.domain = reason, domain


def _one(builder: _DomaineBuilder, name: str, domain: str | None = None) -> str | None:
    values = builder.fields.get(name, [])
    if len(values) > 1:
        raise _Invalid(f"{name} given {len(values)} times in one Domaine", domain)
    return values[0] if values and values[0] else None


def _entries_of(builder: _DomaineBuilder) -> list[Entry]:
    """The entries of one ``Domaine`` (one per DN), or ``_Invalid``."""
    name = _one(builder, "Nom")
    if name is None:
        raise _Invalid("Domaine without Nom")
    try:
        domain = parse_domain(name)
    except BadValue as error:
        raise _Invalid(f"Nom: {error}", name) from None
    if builder.too_long is not None:
        raise _Invalid(builder.too_long, domain)
    dn_texts = [text for text in builder.fields.get("DNCertificatOperateur", []) if text]
    if not dn_texts:
        raise _Invalid(f"Domaine {domain} without DNCertificatOperateur", domain)
    description = _one(builder, "Description", domain) or ""
    updated_text = _one(builder, "DateMAJ", domain)
    try:
        updated = _parse_date(updated_text) if updated_text else None
    except ValueError:
        updated = None
    entries = []
    for dn_text in dn_texts:
        try:
            dn = parse_dn(dn_text)
        except ValueError as error:
            raise _Invalid(f"DNCertificatOperateur {dn_text!r}: {error}", domain) from None
        entries.append(Entry(domain, dn, dn_text, description, updated, builder.position))
    return entries


def parse_liste_blanche(
    chunks: bytes | Iterable[bytes], *, source: str = "liste blanche", strict: bool = False
) -> ListeBlanche:
    """Parse a whole list given as bytes or an iterable of byte chunks."""
    parser = ListeBlancheParser(source, strict=strict)
    for chunk in [chunks] if isinstance(chunks, bytes) else chunks:
        parser.feed(chunk)
    return parser.close()


def load_liste_blanche(path: Path, *, strict: bool = False) -> ListeBlanche:
    """Read the list at ``path`` in 64 KiB chunks (blocking); ``ListeBlancheError``."""
    parser = ListeBlancheParser(str(path), strict=strict)
    try:
        with path.open("rb") as stream:
            while chunk := stream.read(CHUNK_BYTES):
                parser.feed(chunk)
    except FileNotFoundError:
        raise ListeBlancheError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ListeBlancheError(f"{path}: is a directory, not a file") from None
    except OSError as error:
        raise ListeBlancheError(f"{path}: cannot read: {error.strerror}") from None
    return parser.close()
