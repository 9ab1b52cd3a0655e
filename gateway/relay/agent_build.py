"""The ``SecureAgent`` of a secure agent worker, built from the configuration.

Role: ``build_secure_agent`` assembles what ``gateway.relay.agent.SecureAgent`` is given
(the key store of ``[keys] dir``, the organisation signing key, the capabilities store,
the ``send_as`` rule of the users file, the per-route trust) for
``gateway.relay.agent_stage.run_agent_worker``, which imports this module;
``gateway.relay.agent_stage`` re-exports the name.

Invariants: fail closed at start: a key file that cannot be used raises
(``ConfigError`` / ``KeyStoreError``) before any entry is claimed, never at the first
message that needs it.

Security notes: this is where the outbound path loads S/MIME private keys; nothing of a
key is logged.

Trust level: call only in the secure agent worker process (``missive worker agent``),
the only process of the outbound path that loads private keys; it never listens on a
socket.
"""

from __future__ import annotations

from annuaire.lookup import CertificateLookup
from gateway.config import Config
from gateway.relay.agent import OrganisationSigner, SecureAgent
from gateway.relay.route_trust import RouteTrust
from gateway.smime.capabilities import CapabilitiesStore
from gateway.smime.keystore import KeyStore
from gateway.smime.validate import CertificateValidator
from gateway.smtp.users import Authenticator


def build_secure_agent(
    config: Config, lookup: CertificateLookup, validator: CertificateValidator
) -> SecureAgent:
    """The ``SecureAgent`` of a worker: key store, organisation key, capabilities, users.

    Loads private keys: call only in the secure agent worker (``ConfigError`` /
    ``KeyStoreError`` when a key file is unusable: fail closed at start)."""
    organisation = config.keys.organisation_signing
    return SecureAgent(
        config,
        lookup,
        KeyStore.load(config.keys.dir),
        validator,
        CapabilitiesStore(config.gateway.data_dir),
        OrganisationSigner.load(organisation) if organisation is not None else None,
        send_as=Authenticator(config.auth.users_file),
        route_trust=RouteTrust(validator),
    )
