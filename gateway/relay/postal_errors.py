"""Why a postal fallback letter cannot be made: the ``PostalError`` family.

Role: the errors of the postal fallback (issue 6, item 5), raised by the modules that
make the letter (``gateway.relay.postal_address``, ``gateway.relay.letter_content``,
``gateway.relay.letter``) and re-exported by ``gateway.relay.postal`` (the outbox
writer), which adds ``OutboxError``. They sit in a module of their own, below every
other postal module, so that each imports them without an import cycle.

Invariants: ``permanent`` errors end in a failure DSN that says ``reason``; the others
are retried (the message stays queued). An entry without address lines, postcode or
city, or with more than 6 lines, raises ``NoPostalAddress`` (the caller then sends the
failure DSN); a multipart message whose boundaries are broken or missing raises
``UnreadableMessage``; a body or a letter past its bounds raises ``LetterTooLong``;
missing font files raise ``PostalUnavailable`` (temporary: the operator installs the
package, the queue retries).

Trust level: pure data; no I/O, no logging.
"""

from __future__ import annotations

# --- errors -----------------------------------------------------------------------------


class PostalError(Exception):
    """The letter cannot be made. ``permanent`` errors end in a failure DSN that says
    ``reason``; the others are retried (the message stays queued)."""

    permanent = True

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class NoPostalAddress(PostalError):
    """The annuaire entry has no usable postal address."""


class UnreadableMessage(PostalError):
    """The message is not MIME that can be turned into a letter."""


class LetterTooLong(PostalError):
    """The body would need more than ``MAX_LETTER_PAGES`` pages."""


class PostalUnavailable(PostalError):
    """The gateway cannot make letters now (font missing, outbox unwritable)."""

    permanent = False
