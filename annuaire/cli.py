"""``missive annuaire``: search the directory, look up a recipient's certificates, import.

Commands (each reads the configuration: ``--config FILE``, default ``conf/missive.toml``):

- ``missive annuaire search [--name N] [--profession P] [--specialty S] [--city C]
  [--postcode P] [--department D] [--region R] [--id ID] [--page N] [--page-size N]
  [--json]``: ranked, paginated results (``annuaire.search``). Exit 0 with results, 1
  when nothing matched (a negative answer), 2 for a usage or configuration error or an
  unreachable directory.
- ``missive annuaire lookup ADDRESS [--json]``: what the secure agent would find for
  ADDRESS (``annuaire.lookup``): the entry, then every certificate with its purpose
  (from keyUsage: sign, encrypt), subject, serial, notAfter, where it was found and its
  validity for encryption as the validator says (valid, expired, revoked, wrong-usage,
  untrusted, ...). Exit 0 when a valid encryption certificate exists, 1 when none, 2 on
  errors. The lookup cache is not used (one-shot); DNS CERT is asked when ``dns_cert``.
- ``missive annuaire import ...``: registered by ``annuaire.importers.cli`` (another
  module); if that module is missing, ``import`` says so (exit 2) instead of vanishing.

Output: plain text for people, ``--json`` for scripts (UTF-8, one JSON document). Bad
input never shows a traceback: ``SearchError``/``DirectoryUnavailable`` and
configuration errors are ``MissiveError`` lines on stderr.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from cryptography import x509

from annuaire.backend import Directory, open_directory
from annuaire.lookup import Candidate, CertificateLookup, LookupResult, certificate_purpose
from annuaire.model import Entry
from annuaire.search import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, SearchPage, SearchQuery, search
from gateway.cli_common import SubParsers, add_config_argument, load_config_from_args
from gateway.config import Config
from gateway.errors import UsageError

T = TypeVar("T")

_SEARCH_OPTIONS = (
    ("--name", "name", "name prefix, case- and accent-insensitive (e.g. 'hel dup')"),
    ("--profession", "profession", "profession code or label words (e.g. 10, 'medecin')"),
    ("--specialty", "specialty", "specialty (savoir-faire) code or label words (SM04, cardio)"),
    ("--city", "city", "city words (e.g. 'saint etienne')"),
    ("--postcode", "postcode", "postcode prefix (e.g. 75)"),
    ("--department", "department", "département code (75, 2A, 974) or name"),
    ("--region", "region", "region words (e.g. 'ile de france')"),
    ("--id", "national_id", "identification nationale (8+RPPS, 0+ADELI) or an RPPS number"),
)


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Add the ``annuaire`` group: ``search``, ``lookup`` and ``import``."""
    group = subparsers.add_parser("annuaire", help="the health-professional directory")
    commands = group.add_subparsers(dest="annuaire_command", metavar="COMMAND", required=True)
    _add_search(commands)
    _add_lookup(commands)
    _add_import(commands)


def _add_search(commands: SubParsers[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "search",
        help="find practitioners and structures",
        description="Search the annuaire; every criterion given must match. "
        "Exit 0 with results, 1 when nothing matched.",
    )
    for flag, dest, text in _SEARCH_OPTIONS:
        parser.add_argument(flag, dest=dest, metavar="TEXT", help=text)
    parser.add_argument("--page", type=int, default=1, metavar="N", help="page number (from 1)")
    parser.add_argument(
        "--page-size",
        type=int,
        default=DEFAULT_PAGE_SIZE,
        metavar="N",
        help=f"results per page (1-{MAX_PAGE_SIZE}, default {DEFAULT_PAGE_SIZE})",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_config_argument(parser)
    parser.set_defaults(handler=run_search)


def _add_lookup(commands: SubParsers[argparse.ArgumentParser]) -> None:
    parser = commands.add_parser(
        "lookup",
        help="show a recipient's certificates and their validity",
        description="Look ADDRESS up as the secure agent does. Exit 0 when a valid "
        "encryption certificate exists, 1 when none does.",
    )
    parser.add_argument("address", metavar="ADDRESS", help="recipient address")
    parser.add_argument("--json", action="store_true", help="print JSON")
    add_config_argument(parser)
    parser.set_defaults(handler=run_lookup)


def _add_import(commands: SubParsers[argparse.ArgumentParser]) -> None:
    try:
        from annuaire.importers.cli import add_import_parser
    except ModuleNotFoundError as error:
        if error.name not in ("annuaire.importers", "annuaire.importers.cli"):
            raise
        parser = commands.add_parser(
            "import",
            help="import a public extract (not installed)",
            add_help=False,
            prefix_chars="\0",  # take every argument, options included, as arguments
        )
        parser.add_argument("arguments", nargs="*")
        parser.set_defaults(handler=_importer_missing)
        return
    add_import_parser(commands)


def _importer_missing(args: argparse.Namespace) -> int:
    raise UsageError("annuaire import: the importers (annuaire.importers.cli) are not installed")


# ------------------------------------------------------------------ running
def _with_directory(config: Config, work: Callable[[Directory], Coroutine[Any, Any, T]]) -> T:
    async def main() -> T:
        directory = open_directory(config.annuaire, anchors=config.trust.anchors)
        try:
            return await work(directory)
        finally:
            await directory.close()

    return asyncio.run(main())


def run_search(args: argparse.Namespace) -> int:
    query = SearchQuery(**{dest: getattr(args, dest) for _, dest, _ in _SEARCH_OPTIONS})
    if not query.criteria():
        raise UsageError("annuaire search: give at least one criterion (see --help)")
    config = load_config_from_args(args)
    page = _with_directory(
        config, lambda d: search(d, query, page=args.page, page_size=args.page_size)
    )
    print(
        json.dumps(page_json(page), ensure_ascii=False, indent=2) if args.json else page_text(page)
    )
    return 0 if page.total else 1


def run_lookup(args: argparse.Namespace) -> int:
    config = load_config_from_args(args)
    from gateway.smime.validate import CertificateValidator

    trust = config.trust
    validator = CertificateValidator.from_files(
        trust.anchors, trust.intermediates, trust.crls, trust.revocation
    )

    async def work(directory: Directory) -> LookupResult:
        lookup = CertificateLookup.from_config(config, directory, validator)
        return await lookup.lookup(args.address)

    result = _with_directory(config, work)
    print(
        json.dumps(lookup_json(result), ensure_ascii=False, indent=2)
        if args.json
        else lookup_text(result)
    )
    return 0 if result.found else 1


# ------------------------------------------------------------------ rendering
def entry_json(entry: Entry) -> dict[str, Any]:
    return {
        "key": entry.key,
        "kind": entry.kind,
        "display_name": entry.display_name,
        "national_id": entry.national_id,
        "given_name": entry.given_name,
        "surname": entry.surname,
        "profession": {"code": entry.profession_code, "label": entry.profession_label},
        "specialty": {"code": entry.specialty_code, "label": entry.specialty_label},
        "organisation": entry.organisation,
        "postal_address": list(entry.postal_address),
        "postal_code": entry.postal_code,
        "city": entry.city,
        "department": entry.department,
        "region": entry.region,
        "mailboxes": [{"address": m.address, "type": m.type} for m in entry.mailboxes],
        "certificate_count": len(entry.certificates),
    }


def page_json(page: SearchPage) -> dict[str, Any]:
    return {
        "total": page.total,
        "page": page.page,
        "page_size": page.page_size,
        "pages": page.pages,
        "truncated": page.truncated,
        "entries": [entry_json(entry) for entry in page.entries],
    }


def entry_line(entry: Entry) -> str:
    """One line per entry: name — profession · specialty — place — mailboxes — id."""
    name = (
        f"{entry.surname}, {entry.given_name}"
        if entry.surname and entry.given_name
        else entry.display_name
    )
    work = " · ".join(v for v in (entry.profession_label, entry.specialty_label) if v)
    place = " ".join(v for v in (entry.postal_code, entry.city) if v)
    boxes = ", ".join(f"{m.address} ({m.type})" for m in entry.mailboxes)
    parts = [name, work, place, boxes, f"id {entry.national_id}" if entry.national_id else ""]
    return " — ".join(part for part in parts if part)


def page_text(page: SearchPage) -> str:
    if not page.total:
        return "no entry matches"
    more = " (the directory had more: refine the search)" if page.truncated else ""
    lines = [f"{page.total} result(s), page {page.page}/{page.pages}{more}"]
    lines += [entry_line(entry) for entry in page.entries]
    return "\n".join(lines)


def candidate_json(candidate: Candidate) -> dict[str, Any]:
    certificate = candidate.certificate
    return {
        "purpose": certificate_purpose(certificate),
        "subject": certificate.subject.rfc4514_string(),
        "serial": format(certificate.serial_number, "x"),
        "not_after": certificate.not_valid_after_utc.isoformat(),
        "source": candidate.source,
        "validity": candidate.validation.status.value,
        "reason": candidate.validation.reason,
    }


def lookup_json(result: LookupResult) -> dict[str, Any]:
    return {
        "address": result.address,
        "found": result.found,
        "entry": entry_json(result.entry) if result.entry is not None else None,
        "certificates": [candidate_json(c) for c in result.candidates],
        "skipped": list(result.skipped),
    }


def _subject(certificate: x509.Certificate) -> str:
    try:
        return certificate.subject.rfc4514_string()
    except ValueError:
        return "(unreadable subject)"


def lookup_text(result: LookupResult) -> str:
    lines = [f"address: {result.address}"]
    lines.append(f"entry: {entry_line(result.entry)}" if result.entry else "entry: none")
    lines.append(f"certificates: {len(result.candidates)}")
    for candidate in result.candidates:
        certificate = candidate.certificate
        status = candidate.validation.status.value
        reason = f" ({candidate.validation.reason})" if candidate.validation.reason else ""
        lines.append(
            f"  [{status}] {certificate_purpose(certificate)} serial "
            f"{certificate.serial_number:x} notAfter "
            f"{certificate.not_valid_after_utc:%Y-%m-%d} from {candidate.source}{reason}"
        )
        lines.append(f"      subject {_subject(certificate)}")
    lines += [f"  skipped: {reason}" for reason in result.skipped]
    count = len(result.certificates)
    lines.append(
        f"result: {count} valid encryption certificate(s)"
        if count
        else "result: no valid encryption certificate"
    )
    return "\n".join(lines)
