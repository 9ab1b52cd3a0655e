"""The inbound side of Missive: what the secure agent does to mail for local domains
(issue 7).

``process.process_inbound`` is the sans-IO core (STYLE §1): one received message and one
local recipient's keys in, the message to deliver (or to hold) and the facts to audit
out. It decrypts (only when the whole body is enveloped: EFAIL), verifies and binds the
signer to From, shows the protected headers of RFC 9788 header protection and of a
wrapped message, removes every inbound header that imitates ours and adds the result
(``headers``: Authentication-Results per RFC 8601 / RFC 7281, ``Missive-Security`` and
the ``[NON VÉRIFIÉ]`` Subject tag).

Not wired yet: the stage runner, quarantine, local delivery (LMTP/SMTP/maildir), the
IMAP fetcher, MDN/DSN and the audit trail call this core later.

Trust level: runs in the secure agent's worker processes, which alone hold private keys
and never listen on a socket (STYLE §9).
"""
