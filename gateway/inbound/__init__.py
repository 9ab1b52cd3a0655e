"""The inbound side of Missive: what the secure agent does to mail for local domains
(issue 7).

``process.process_inbound`` is the sans-IO core (STYLE §1): one received message and one
local recipient's keys in, the message to deliver (or to hold) and the facts to audit
out. It decrypts (only when the whole body is enveloped: EFAIL), verifies and binds the
signer to From, shows the protected headers of RFC 9788 header protection and of a
wrapped message, removes every inbound header that imitates ours and adds the result
(``headers``: Authentication-Results per RFC 8601 / RFC 7281, ``Missive-Security`` and
the ``[NON VÉRIFIÉ]`` Subject tag).

``stage.InboundStage`` runs that core for each local recipient of each message in the
spool's ``inbound/`` queue (one copy per recipient, opened with its own key), hands what
may be delivered to ``local/``, holds the rest in quarantine with a DSN to the sender, and
records every decision in the audit trail. ``delivery.LocalDelivery`` delivers ``local/``
per ``[inbound] deliver_to`` with the outbound retry rules (and queues the dispatched MDN
a message asks for): over LMTP or SMTP through ``store_client.StorePool`` (RFC 2033,
RFC 5321, STARTTLS per RFC 3207), or into ``maildir.deliver_to_maildir``.
``imap_fetch`` pulls remote mailboxes into ``inbound/`` (``imap_connection``: the IMAP
session).

Trust level: runs in the secure agent's worker processes, which alone hold private keys
and never listen on a socket (STYLE §9).
"""
