"""``missive annuaire import``: load a public extract into the annuaire.

``missive annuaire import --format mssante|rpps FILE --to ldif:OUT | ldap
[--config FILE] [--base-dn DN] [--no-health-schema] [--jobs N] [--work-dir DIR]``

- ``--to ldif:OUT`` writes every entry to the LDIF file OUT, replaced atomically (the
  embedded annuaire's file, or input for ``slapadd``). The ``[annuaire]`` section of the
  configuration is read (alone: the rest need not be complete yet) when ``--config``
  names a file or ``conf/missive.toml`` exists, for ``base_dn`` and
  ``[annuaire.attributes]``; without one the contract's defaults apply.
- ``--to ldap`` upserts into the directory of the configuration's ``[annuaire]``
  (``url``, ``base_dn``, ``bind_dn`` + ``bind_password_file`` with write rights,
  ``ca_file``, ``timeout``); the configuration is required.
- ``--jobs N``: pass 2 of an LDIF import (parse, merge, format) runs in N worker
  processes (default: the CPU count, at most 4); the file is the same whatever N.

Output: bad rows and refused entries on stderr, one line each as ``FILE:LINE: reason``
(the line of the entry's first row for a refused entry); a progress line on stderr
only when it is a terminal; one summary line on stdout: rows read, rows skipped,
entries imported (for LDAP: how many added, updated, unchanged), entries failed.
Exit status: 0 when every entry was written (bad rows are reported and skipped, they
do not fail the import), 1 when the target refused some entries, 2 for a usage,
configuration or target error (nothing or only part written: re-run after fixing, the
import is idempotent).

This module is wired into ``missive annuaire`` by ``annuaire.cli`` through
``add_import_parser``.
"""

from __future__ import annotations

import argparse
import os
import sys
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final, TextIO

from ldap3.core.exceptions import LDAPException
from ldap3.utils.dn import parse_dn

from annuaire.importers.formats import FORMATS, ExtractFormat
from annuaire.importers.ldap_target import ldap_sink
from annuaire.importers.ldif_target import ldif_sink
from annuaire.importers.partition import DEFAULT_BUCKET_BYTES
from annuaire.importers.pipeline import ImportSummary, import_extract
from annuaire.importers.progress import TerminalProgress
from annuaire.importers.rows import BadRow
from annuaire.importers.sinks import EntryFailure, EntrySink
from annuaire.mapping import DEFAULT_ATTRIBUTES
from gateway.cli_common import DEFAULT_CONFIG, SubParsers, add_config_argument
from gateway.config import AnnuaireSection, load_config, schema
from gateway.config.problems import Problems
from gateway.errors import ConfigError, MissiveError, UsageError

LDIF_PREFIX: Final = "ldif:"
DEFAULT_JOBS: Final = max(1, min(4, os.cpu_count() or 1))
MAX_JOBS: Final = 64
DEFAULT_BASE_DN: Final = "ou=people,dc=annuaire,dc=test"  # the contract's [annuaire] default


def add_import_parser(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    """Add ``import`` to the ``missive annuaire`` subcommands."""
    parser = subparsers.add_parser(
        "import",
        help="import a public extract (MSSanté, RPPS) into LDIF or LDAP",
        description="Import an MSSanté extract or an RPPS PS_LibreAcces_Personne_activite "
        "file into an LDIF file or the configured LDAP directory. Bad rows are reported "
        "with their line number and skipped; re-running updates entries, never duplicates.",
    )
    parser.add_argument("--format", required=True, choices=sorted(FORMATS), help="extract format")
    parser.add_argument(
        "file", type=Path, metavar="FILE", help="the extract (UTF-8, '|'-separated)"
    )
    parser.add_argument(
        "--to",
        required=True,
        metavar="ldif:OUT|ldap",
        help="ldif:OUT writes the LDIF file OUT (replaced atomically); ldap upserts into "
        "the directory of [annuaire] (needs bind_dn with write rights)",
    )
    add_config_argument(parser)
    parser.add_argument(
        "--base-dn", metavar="DN", help="entries go under DN (default: [annuaire] base_dn)"
    )
    parser.add_argument(
        "--no-health-schema",
        action="store_true",
        help="write inetOrgPerson attributes only (a directory without the annuaire schema)",
    )
    parser.add_argument(
        "--jobs",
        type=_jobs,
        default=DEFAULT_JOBS,
        metavar="N",
        help=f"worker processes formatting LDIF (default {DEFAULT_JOBS}; 1: none; "
        "the ldap target always writes from one process)",
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        metavar="DIR",
        help="where the temporary sort buckets go (default: the system temporary directory)",
    )
    parser.set_defaults(handler=run_import)


class CliObserver:
    """Prints bad rows and refused entries on stderr (above the progress line)."""

    def __init__(self, source: Path, stream: TextIO, progress: TerminalProgress | None) -> None:
        self._source = source
        self._stream = stream
        self._progress = progress

    def _say(self, text: str) -> None:
        if self._progress is not None:
            self._progress.clear()
        print(text, file=self._stream)

    def bad_row(self, row: BadRow) -> None:
        self._say(f"{self._source}:{row.line}: skipped: {row.reason}")

    def entry_failed(self, failure: EntryFailure) -> None:
        self._say(
            f"{self._source}:{failure.line}: entry {failure.key!r} not written: {failure.reason}"
        )

    def reading(self, bytes_read: int, rows: int) -> None:
        if self._progress is not None:
            self._progress.reading(bytes_read, rows)

    def writing(self, entries: int) -> None:
        if self._progress is not None:
            self._progress.writing(entries)


def _jobs(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 1 <= value <= MAX_JOBS:
        raise argparse.ArgumentTypeError(f"between 1 and {MAX_JOBS}")
    return value


def annuaire_section_of(path: Path) -> AnnuaireSection:
    """``[annuaire]`` of the configuration at ``path``, checked, and nothing else.

    The LDIF target needs only ``base_dn`` and ``[annuaire.attributes]``; loading the
    whole file would also demand that ``annuaire.ldif`` exist, which is what a first
    import is about to create (the same reason as ``gateway.config.loader.users_file_of``).
    Relative paths in the section are resolved against the file's directory; the LDIF
    target does not use them.
    """
    source = path.absolute()
    problems = Problems(source.name)
    try:
        document = tomllib.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source.name}: cannot read {source}: no such file") from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise ConfigError(f"{source.name}: cannot read {source}: {error}") from None
    table = document.get("annuaire", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{source.name}: annuaire: expected a table")
    section = schema.build(
        AnnuaireSection, table, "annuaire", schema.Context(source.parent), problems
    )
    problems.raise_if_any()
    return section


def _section_for_ldif(args: argparse.Namespace) -> AnnuaireSection | None:
    """``[annuaire]`` when a configuration is named or the default file exists."""
    path: Path = args.config
    if path.exists() or path != DEFAULT_CONFIG:
        return annuaire_section_of(path)
    return None


def _checked_base_dn(value: str) -> str:
    try:
        parse_dn(value)
    except (LDAPException, ValueError, IndexError):
        raise UsageError(f"--base-dn: {value!r} is not a valid DN (RFC 4514)") from None
    return value


@contextmanager
def _open_sink(args: argparse.Namespace, extract_format: ExtractFormat) -> Iterator[EntrySink]:
    target: str = args.to
    health_schema = not args.no_health_schema
    base_dn = _checked_base_dn(args.base_dn) if args.base_dn else None
    if target == "ldap":
        config = load_config(args.config)
        with ldap_sink(
            config.annuaire,
            config.trust.anchors,
            carries_mailboxes=extract_format.carries_mailboxes,
            health_schema=health_schema,
            base_dn=base_dn,
        ) as sink:
            yield sink
        return
    if not target.startswith(LDIF_PREFIX) or not target[len(LDIF_PREFIX) :]:
        raise UsageError(f"--to: expected ldif:OUT or ldap, got {target!r}")
    found = _section_for_ldif(args)
    attributes = found.attributes if found else DEFAULT_ATTRIBUTES
    base_dn = base_dn or (found.base_dn if found else DEFAULT_BASE_DN)
    output = Path(target[len(LDIF_PREFIX) :])
    with ldif_sink(output, base_dn, attributes, health_schema=health_schema) as sink:
        yield sink


def summary_line(
    extract_format: ExtractFormat, source: Path, target: str, summary: ImportSummary
) -> str:
    """``mssante FILE -> TARGET: N rows, N skipped; N imported (N added, N updated,
    N unchanged), N failed`` (the parenthesis for the LDAP target only)."""
    details = ", ".join(
        f"{summary.outcomes[name]} {name}"
        for name in ("added", "updated", "unchanged")
        if summary.outcomes[name]
    )
    return (
        f"{extract_format.name} {source} -> {target}: {summary.rows} rows, "
        f"{summary.skipped} skipped; {summary.imported} imported"
        f"{f' ({details})' if details else ''}, {summary.failed} failed"
    )


def run_import(args: argparse.Namespace) -> int:
    extract_format = FORMATS[args.format]
    source: Path = args.file
    if not source.is_file():
        raise UsageError(f"{source}: no such file")
    if args.work_dir is not None and not args.work_dir.is_dir():
        raise UsageError(f"--work-dir: {args.work_dir} is not a directory")
    progress = TerminalProgress(sys.stderr, source.stat().st_size) if sys.stderr.isatty() else None
    observer = CliObserver(source, sys.stderr, progress)
    try:
        with _open_sink(args, extract_format) as sink:
            summary = import_extract(
                source,
                extract_format,
                sink,
                observer=observer,
                work_dir=args.work_dir,
                bucket_bytes=DEFAULT_BUCKET_BYTES,
                jobs=args.jobs,
            )
    except OSError as error:
        raise MissiveError(f"{error.filename or source}: {error.strerror or error}") from None
    finally:
        if progress is not None:
            progress.clear()
    print(summary_line(extract_format, source, args.to, summary))
    return 1 if summary.failed else 0
