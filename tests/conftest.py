"""Root of the Missive test suite: the plugins every test runs under.

- ``tests.peers.netguard``: the network guard. For the whole session the socket layer of
  this process refuses, before any packet is sent, a connection or datagram to anything
  but loopback (127.0.0.0/8, ::1) and any name lookup that would reach DNS; a test
  that tries one fails, even if the code under test caught the error. ``AF_UNIX`` is
  allowed. See that module for the exact rules and how to provoke a violation on purpose.
- ``tests.peers.ci_strict``: under ``CI=true`` a skipped test is a failure (one rule:
  ``require_binary`` raises instead of skipping, and every other skip is turned into a
  failure), so a CI run never passes because a peer was missing.
- ``tests.peers.fixtures``: slapd, Postfix, Dovecot and the session-wide development PKI
  (``dev_pki``).
- ``tests.peers.small_fixtures``: the capture SMTP sink, the loopback DNS and HTTP
  (CRL/OCSP) servers, and the OpenSSL ``cms`` / GnuPG ``gpgsm`` / NSS ``cmsutil`` helpers.
- ``tests.cli_runner``: the ``missive`` fixture (the command line run in this process).
- ``pytester``: lets the guard and CI tests run a small pytest session in a subprocess.

Nothing here may depend on ``/work/shared`` or any path outside the repository: the
suite runs on a fresh checkout (``./test``).
"""

pytest_plugins = [
    "pytester",
    "tests.peers.netguard",
    "tests.peers.ci_strict",
    "tests.peers.fixtures",
    "tests.peers.small_fixtures",
    "tests.cli_runner",
]
