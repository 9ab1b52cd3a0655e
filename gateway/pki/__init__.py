"""Public-key infrastructure tooling of Missive.

``dev`` (with ``dev_authority``: ``DevPki``) builds a development PKI shaped like
IGC-Santé (root, two intermediates, per-user signature and encryption certificates,
server certificates, CRLs);
``demo`` turns it into a demo annuaire (LDIF) and a local key store; ``cli``
registers the ``missive certs`` command group. Nothing here is used to validate
certificates: that is ``gateway.smime``'s job.
"""
