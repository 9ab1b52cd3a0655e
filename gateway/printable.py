"""Text shown in a terminal or a pager: every non-printable character as ``\\uXXXX``.

Role: one function for the files Missive writes for people and their tools from values
a peer may control (the audit exports, the postal manifest). A character that
``str.isprintable`` rejects (C0 and C1 controls, DEL, bidi overrides and isolates,
zero-width and other format characters, U+2028/U+2029, spaces other than U+0020) is
written as a JSON escape instead of raw: read in a terminal it must not run a peer's
escape sequence (CWE-150), a bidi override must not reorder what is shown
(CVE-2021-42574), a line separator must not forge another line for a line-based reader
(CWE-117).

Applied to JSON text, the result is JSON for the same value: such characters occur
only inside strings there (``json.dumps`` escapes the C0 ones itself), where a
``\\uXXXX`` escape means the character; structural white space is kept when passed in
``keep`` (``"\\n"`` for indented JSON). Applied to plain text (a CSV cell), it is a
visible notation, for reading only.
"""

from __future__ import annotations


def escaped(char: str) -> str:
    """One character as a JSON escape (a UTF-16 surrogate pair above U+FFFF)."""
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    high, low = divmod(code - 0x10000, 0x400)
    return f"\\u{0xD800 + high:04x}\\u{0xDC00 + low:04x}"


def shown(text: str, keep: str = "") -> str:
    """``text`` with each non-printable character not in ``keep`` escaped."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() or char in keep else escaped(char) for char in text)
