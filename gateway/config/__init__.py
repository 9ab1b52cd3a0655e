"""The configuration of Missive: one TOML file, validated whole, read into frozen objects.

Public API::

    from gateway.config import load_config, Config, HostPort, ConfigError
    config = load_config("conf/missive.toml")      # raises ConfigError (.problems)
    config.gateway.hostname, config.routes[0].tls, config.route_for("clinique-b.test")

Modules: ``values`` (pure value parsers and value types), ``schema`` (TOML readers and
the table walker), ``model`` (the dataclasses = the keys), ``rules`` (keys together,
unsafe combinations), ``material`` and ``checks`` (the files the keys name),
``loader`` (the composition), ``cli`` (``missive check-config``). The contract is
CONFIG-CONTRACT (keys, meanings, defaults); ``conf/missive.toml`` documents each key.
"""

from gateway.config.hosts import HostPort
from gateway.config.loader import check_config, load_config
from gateway.config.model import (
    AnnuaireAttributes,
    AnnuaireSection,
    AuditSection,
    AuthSection,
    Config,
    DeliverySection,
    GatewaySection,
    ImapFetch,
    InboundSection,
    KeysSection,
    Listener,
    MetricsSection,
    PostalSection,
    Route,
    SmimeSection,
    TlsSection,
    TrustSection,
)
from gateway.config.values import DeliverTo
from gateway.errors import ConfigError

__all__ = [
    "AnnuaireAttributes",
    "AnnuaireSection",
    "AuditSection",
    "AuthSection",
    "Config",
    "ConfigError",
    "DeliverTo",
    "DeliverySection",
    "GatewaySection",
    "HostPort",
    "ImapFetch",
    "InboundSection",
    "KeysSection",
    "Listener",
    "MetricsSection",
    "PostalSection",
    "Route",
    "SmimeSection",
    "TlsSection",
    "TrustSection",
    "check_config",
    "load_config",
]
