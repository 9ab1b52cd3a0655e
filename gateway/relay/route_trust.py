"""The trust of a route: ``[trust] anchors`` plus the route's own ``anchors``.

Role: CONFIG-CONTRACT gives a route "optional extra trust anchors for this network"
(an Apicrypt-like partner network runs its own PKI). They extend what the gateway
trusts *on that route only*, for both things the route relies on: the TLS certificate of
its next hop (``gateway.relay.tlsclient.PeerVerifier``) and the S/MIME encryption
certificates of its recipients (``gateway.relay.agent.SecureAgent``). Elsewhere — other
routes, inbound signatures, the SMTP front's client certificates — they are not trusted.

Invariants: a route without ``anchors`` gets the base validator itself; routes with the
same anchor files share one validator (its result cache is its own, since trust differs;
revocation caches are shared, ``CertificateValidator.with_extra_anchors``). Anchor files
are read once, at first use, in the caller's thread (call it from a worker thread in
async code).

Trust level: public certificates only.
"""

from __future__ import annotations

import threading
from pathlib import Path

from gateway.config.model import Route
from gateway.smime.validate import CertificateValidator, load_certificates


class RouteTrust:
    """Validators per route (see the module docstring); thread-safe."""

    def __init__(self, validator: CertificateValidator) -> None:
        self.base = validator
        self._per_anchor_set: dict[tuple[Path, ...], CertificateValidator] = {}
        self._lock = threading.Lock()

    def validator_for(self, route: Route) -> CertificateValidator:
        """The base validator with ``route.anchors`` added (one per anchor set)."""
        if not route.anchors:
            return self.base
        key = tuple(route.anchors)
        with self._lock:
            validator = self._per_anchor_set.get(key)
            if validator is None:
                extra = [cert for path in key for cert in load_certificates(path)]
                validator = self.base.with_extra_anchors(extra)
                self._per_anchor_set[key] = validator
            return validator
