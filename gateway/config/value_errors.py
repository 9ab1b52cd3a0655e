"""The error of every configuration value parser, and how a bad value is shown.

Role: the value parsers (``gateway.config.quantities``, ``domains``, ``hosts``,
``names``, ``values``; each imports this module, the lowest of them) raise ``BadValue``
with a message a sysadmin can act on; the TOML layer (``gateway.config.schema``) checks
TOML types first and turns ``BadValue`` into a problem line that names the key.

Security notes: parsers never echo a whole long value back (``show`` truncates it and
escapes what is not printable). Pure, no I/O.
"""

from __future__ import annotations


class BadValue(ValueError):
    """A value that cannot be used; ``str(error)`` is the sysadmin-facing reason."""


def show(value: object) -> str:
    """A short, one-line rendering of a TOML value for an error message."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        text = value if len(value) <= 60 else value[:57] + "..."
        escaped = text.replace("\\", "\\\\").replace('"', '\\"')
        escaped = "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in escaped)
        return f'"{escaped}"'
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if hasattr(value, "isoformat"):
        return f"a date/time ({value.isoformat()})"
    return repr(value)
