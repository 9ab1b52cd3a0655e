"""Tests of the development PKI, the demo annuaire and ``missive certs init-dev``."""
