"""The outbound side of Missive: the secure agent and the relay (issue 6).

After the queue, for each outbound message: ``routing`` places each recipient on a route
(the implicit local route for ``gateway.local_domains``, else the first ``[[routes]]``
match), ``protect`` builds the RFC 9788 header-protected (or Direct-wrapped) payload and
the clear outer header block, and ``agent.SecureAgent`` signs and encrypts per route —
one message for the To/Cc recipients, one per Bcc recipient — or sends a recipient
without a valid certificate to its route's fallback, never in clear. The relay modules
of this package deliver the results to the next hops.

Trust level: the secure agent runs in worker processes that alone load private keys and
never listen on a socket (STYLE §9); the relay holds only the TLS client key.
"""
