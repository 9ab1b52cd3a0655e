"""Missive: a secure health-mail gateway.

The package is split by concern (see ARCHITECTURE in docs/): ``smtp`` receives,
``smime`` signs/encrypts/decrypts/verifies, ``relay`` queues and delivers,
``config`` reads and validates the one TOML file, ``audit`` keeps the
tamper-evident trail, ``pki`` makes the development PKI.
"""

__version__ = "0.1.0"
