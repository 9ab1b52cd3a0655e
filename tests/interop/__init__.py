"""Interoperability tests against real S/MIME programs (OpenSSL, NSS, GnuPG)."""
