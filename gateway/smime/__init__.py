"""S/MIME engine: sign, encrypt, decrypt, verify (RFC 8551, RFC 5652) and certificate
validation (RFC 5280) with revocation (CRL, OCSP).

Trust level: this package handles private keys; it is imported by the secure agent
(worker processes) and by the CLI, never by the SMTP front except for
``validate`` (which holds no private key). Shared types live in ``types``.
"""
