"""Mail addresses as a reader recognises them in free text (a display name, a comment).

Role: ``addresses_in(text)`` finds every ``local@domain.tld`` written in text that is not
an address field's own mailbox list: the SMTP front (``gateway.smtp.policy``) and the
inbound agent (``gateway.inbound.process``) bind or judge those too, since most message
lists show a display name instead of the address (``"bruno@chu-a.test" <claire@...>``).

Invariant: linear time in the length of ``text``. The local part is at most 64
characters and the domain at most 253 (RFC 5321 §4.5.3.1.1, §4.5.3.1.2): an unbounded
pattern backtracks over every start position of a long run without ``@`` (quadratic: a
95 KB From of adjacent encoded-words took 8.5 s, a helper's fuzzing found).

Trust level: pure function over text from anyone; no I/O.
"""

from __future__ import annotations

import re

_NOT_IN_ADDRESS = r"\s<>()\[\],;:\"@"
_ADDRESS = re.compile(
    rf"([^{_NOT_IN_ADDRESS}]{{1,64}})@"
    rf"([^{_NOT_IN_ADDRESS}]{{1,252}}\.[^{_NOT_IN_ADDRESS}.]{{1,63}})"
)


def addresses_in(text: str) -> list[tuple[str, str]]:
    """(local part, domain) of every address written in ``text``, in order."""
    return _ADDRESS.findall(text)
