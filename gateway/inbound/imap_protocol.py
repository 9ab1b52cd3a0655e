"""One repair to aioimaplib's protocol: its responses read in a loop, not by recursion.

Role: ``read_responses_in_a_loop(protocol)`` replaces, on one ``IMAP4ClientProtocol``
object, the method that splits received bytes into response lines. aioimaplib 2.0.3
(``IMAP4ClientProtocol._handle_responses``) handles each line with one more level of
recursion, so about a thousand lines in one read (a server reporting a flag change for
each of thousands of messages, RFC 9051 §7.5.2, after another client marked them read)
reach Python's recursion limit: the protocol fails inside ``data_received`` and the
connection is lost (a helper's review measured 1,200 lines fail, 500 pass). The
replacement does the same steps in the same order as a loop: the line handler, the
literal and the incomplete-read rules are aioimaplib's own (called, not copied); only
the tail call became an iteration. Written here, by hand, because no release of the
library does it; to drop when one does.

Invariant: the object's behaviour is aioimaplib's for every input it handled before;
only the depth of the Python stack changes.

Trust level: parses what an IMAP server sends; no I/O of its own.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

from aioimaplib import aioimaplib as library


def read_responses_in_a_loop(protocol: library.IMAP4ClientProtocol) -> None:
    """Give ``protocol`` the iterative ``_handle_responses`` (module docstring)."""
    protocol._handle_responses = types.MethodType(_handle_responses, protocol)


def _handle_responses(
    self: library.IMAP4ClientProtocol,
    data: bytes,
    line_handler: Callable[[bytes, Any], Any],
    current_cmd: Any = None,
) -> None:
    """aioimaplib 2.0.3's ``_handle_responses``, its tail recursion as a loop."""
    while True:
        if not data:
            if self.pending_sync_command is not None:
                self.pending_sync_command.flush()
            if current_cmd is not None and current_cmd.wait_data():
                raise library.IncompleteRead(current_cmd)
            return
        if current_cmd is not None and current_cmd.wait_literal_data():
            data = current_cmd.append_literal_data(data)
            if current_cmd.wait_literal_data():
                raise library.IncompleteRead(current_cmd)
        line, separator, tail = data.partition(library.CRLF)
        if not separator:
            raise library.IncompleteRead(current_cmd, data)
        cmd = line_handler(line, current_cmd)
        begin_literal = library.literal_data_re.match(line)
        if begin_literal:
            if cmd is None:
                cmd = library.Command("NIL", "unused")
            cmd.begin_literal_data(int(begin_literal.group("size")))
            data, current_cmd = tail, cmd
        elif cmd is not None and cmd.wait_data():
            data, current_cmd = tail, cmd
        else:
            data, current_cmd = tail, None
