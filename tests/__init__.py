"""Missive test suite (a package so that tests.peers.* and shared helpers import)."""
