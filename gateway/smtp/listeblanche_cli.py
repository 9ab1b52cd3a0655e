"""``missive listeblanche check FILE [--json]``: read a liste blanche and summarise it.

Prints the generation date, the numbers of entries, domains and distinct operator DNs,
the domains that list several DNs, the operators (grouped by the DN's ``O=``), the
warnings and every invalid entry with its position and reason
(``gateway.smtp.listeblanche`` decides what is valid). ``--json`` prints the same as
one JSON object.

Exit status: 0 the list is usable and every entry valid; 1 the list is usable but
some entries were left out (a negative answer: the file is not clean); 2 the file is
unusable (unreadable, not well-formed, a DOCTYPE, wrong namespace...), one line on
stderr naming the position.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from gateway.cli_common import SubParsers
from gateway.smtp.listeblanche import Stats, load_liste_blanche

EXAMPLES = 5  # domains with several DNs shown by name in the text summary


def _as_json(path: Path, stats: Stats) -> dict[str, Any]:
    return {
        "file": str(path),
        "generated": stats.generated.isoformat(),
        "entries": stats.entries,
        "domains": stats.domains,
        "operator_dns": stats.dns,
        "domains_with_several_dns": stats.several_dns,
        "operators": [
            {"organisation": op.organisation, "domains": op.domains, "dns": op.dns}
            for op in stats.operators
        ],
        "warnings": list(stats.warnings),
        "invalid": [
            {
                "line": item.position.line,
                "column": item.position.column,
                "domain": item.domain,
                "reason": item.reason,
            }
            for item in stats.invalid
        ],
    }


def _text_lines(path: Path, stats: Stats) -> list[str]:
    several = list(stats.several_dns.items())
    examples = ", ".join(f"{domain} ({count})" for domain, count in several[:EXAMPLES])
    lines = [
        f"file: {path}",
        f"generated: {stats.generated.isoformat()}",
        f"entries: {stats.entries}",
        f"domains: {stats.domains}",
        f"operator DNs: {stats.dns}",
        f"domains with several DNs: {len(several)}" + (f" (e.g. {examples})" if several else ""),
        f"operators (by O=): {len(stats.operators)}",
    ]
    lines += [
        f"  {op.organisation}: {op.domains} domain{'s' * (op.domains != 1)},"
        f" {op.dns} DN{'s' * (op.dns != 1)}"
        for op in stats.operators
    ]
    lines += [f"warning: {warning}" for warning in stats.warnings]
    lines.append(f"invalid entries: {len(stats.invalid)}")
    lines += [
        f"  {item.position}: {item.reason}"
        + (f" [{item.domain}]" if item.domain and item.domain not in item.reason else "")
        for item in stats.invalid
    ]
    return lines


def _cmd_check(args: argparse.Namespace) -> int:
    path: Path = args.file
    stats = load_liste_blanche(path).stats()
    if args.json:
        print(json.dumps(_as_json(path, stats), ensure_ascii=False, indent=2))
    else:
        print("\n".join(_text_lines(path, stats)))
    return 1 if stats.invalid else 0


def register(subparsers: SubParsers[argparse.ArgumentParser]) -> None:
    parser = subparsers.add_parser("listeblanche", help="MSSanté liste blanche tools")
    commands = parser.add_subparsers(dest="listeblanche_command", metavar="ACTION", required=True)
    check = commands.add_parser("check", help="read a liste blanche XML file and summarise it")
    check.add_argument("file", type=Path, metavar="FILE")
    check.add_argument("--json", action="store_true", help="print JSON")
    check.set_defaults(handler=_cmd_check)
