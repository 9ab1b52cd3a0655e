"""The typed configuration: frozen dataclasses whose fields are the TOML keys.

Role: this module *is* the schema of ``missive.toml`` (CONFIG-CONTRACT, documented line
by line in ``conf/missive.toml``). Each field names its reader and its default as it
would be written in the file; ``gateway.config.schema.build`` turns a TOML table into
these objects. Field names equal the TOML keys, so a key path in an error message is
also the attribute path in code (``config.routes[0].tls``).

Invariants: everything is immutable (frozen dataclasses, tuples, never lists); every
path is absolute (relative paths resolved against ``gateway.home``); durations are
``timedelta``, sizes ``int`` bytes, endpoints ``HostPort``; an optional file or
endpoint that is not set is ``None`` (the TOML value ``""``). A ``Config`` that
``load_config`` returns has passed every rule of ``gateway.config.rules`` and every
file check of ``gateway.config.checks``.

Required keys (no default; decided here, the contract gives the rest):
``gateway.hostname`` (EHLO name, fully qualified), ``gateway.local_domains`` (at least
one: a gateway serves a domain), ``trust.anchors`` (at least one file: nothing can be
validated without them), and in each ``[[listeners]]`` ``name``, ``address`` and
``kind``; in each ``[[routes]]`` ``name`` and ``domains``; in each
``[[inbound.imap_fetch]]`` every key. Conditionally required (see ``rules``):
``tls.certificate``/``tls.private_key`` when a listener uses TLS without a certificate
of its own or an SMTP route uses TLS; ``annuaire.ldif`` for the LDIF backend (it has
a default); ``bind_password_file`` with ``bind_dn``; ``auth_password_file`` with
``auth_user``.

Defaults the contract's sample leaves implicit, decided here: a listener's ``tls`` is
``starttls``, its ``client_certificate`` ``none`` and ``relay_clients`` empty; a route's
``transport`` is ``smtp`` and its ``tls`` ``verify`` (fail closed); arrays of tables
(listeners, routes, imap_fetch) are empty; every optional file or address is ``""``.

Keys added to the contract: ``inbound.quarantine_retention`` (how long the inbound
agent's quarantine in ``inbound/hold/`` is kept; at least
``QUARANTINE_RETENTION_MINIMUM``, see ``gateway.inbound.quarantine``).
Also added: ``gateway.crypto_workers`` (processes per crypto stage, 0..64, 0 = one per
core; ``gateway.workers``) and ``gateway.front_workers`` (SMTP front processes sharing
the listeners with ``SO_REUSEPORT``, 1..64, default 1; ``gateway.smtp.listener``).
``Config.source`` (the file read) is not a key.
"""

# The field specs below (setting, required, section, table_array) return dataclasses.field()
# objects that carry the TOML reader and default: they are not mutable default values.
# ruff: noqa: RUF009

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, get_args

from gateway.config import schema as s
from gateway.config.domains import domain_matches, parse_domain
from gateway.config.hosts import HostPort
from gateway.config.names import RelayClient
from gateway.config.values import DeliverTo

LogLevel = Literal["debug", "info", "warning", "error"]
Language = Literal["fr", "en"]
TlsVersion = Literal["1.2", "1.3"]
Revocation = Literal["hard-fail", "soft-fail", "off"]
ListenerKind = Literal["submission", "relay"]
ListenerTls = Literal["starttls", "implicit", "none"]
ClientCertificate = Literal["none", "optional", "required"]
Backend = Literal["ldif", "ldap"]
ContentCipher = Literal["auto", "aes-256-gcm", "aes-128-gcm", "aes-256-cbc", "aes-128-cbc"]
KeyTransport = Literal["auto", "rsa-oaep", "rsa-pkcs1v15"]
Transport = Literal["smtp", "local", "postal", "reject"]
RouteTls = Literal["none", "opportunistic", "verify"]
Security = Literal["smime", "tls-only"]
InboundAccept = Literal["trust-space", "signed", "any"]
UnknownKey = Literal["pass-marked", "hold"]
UnsignedCbc = Literal["mark", "hold"]

# A sysadmin must have time to look at a quarantined message (and its sender to
# answer the DSN) before it is purged: a shorter retention is refused.
QUARANTINE_RETENTION_MINIMUM = timedelta(days=1)


def _choice(literal: Any) -> s.Reader[Any]:
    """Reader of one of the strings of a ``Literal[...]`` type."""
    return s.choice(get_args(literal))


_optional_path = s.optional(s.path)


@dataclass(frozen=True, kw_only=True, slots=True)
class GatewaySection:
    home: Path = s.setting(s.home, ".")
    hostname: str = s.required(s.fqdn, "")
    local_domains: tuple[str, ...] = s.required(s.array(s.domain, non_empty=True), ())
    spool_dir: Path = s.setting(s.path, "var/spool")
    data_dir: Path = s.setting(s.path, "var")
    log_level: LogLevel = s.setting(_choice(LogLevel), "info")
    language: Language = s.setting(_choice(Language), "fr")
    nameservers: tuple[HostPort, ...] = s.setting(
        s.array(s.host_port(default_port=53, ip_only=True)), []
    )
    crypto_workers: int = s.setting(s.integer(0, 64), 0)  # per crypto stage; 0 = one per core
    front_workers: int = s.setting(s.integer(1, 64), 1)  # SMTP front processes (SO_REUSEPORT)
    spool_io_threads: int = s.setting(s.integer(0, 64), 0)  # per stage worker; 0 = on its loop


@dataclass(frozen=True, kw_only=True, slots=True)
class TlsSection:
    certificate: Path | None = s.setting(_optional_path, "")
    private_key: Path | None = s.setting(_optional_path, "")
    min_version: TlsVersion = s.setting(_choice(TlsVersion), "1.2")
    ciphers: str = s.setting(s.cipher_list, "")


@dataclass(frozen=True, kw_only=True, slots=True)
class TrustSection:
    anchors: tuple[Path, ...] = s.required(s.array(s.path, non_empty=True), ())
    intermediates: tuple[Path, ...] = s.setting(s.array(s.path), [])
    crls: tuple[Path, ...] = s.setting(s.array(s.path), [])
    revocation: Revocation = s.setting(_choice(Revocation), "hard-fail")
    liste_blanche: Path | None = s.setting(_optional_path, "")


@dataclass(frozen=True, kw_only=True, slots=True)
class Listener:
    name: str = s.required(s.name, "")
    address: HostPort = s.required(s.host_port(allow_port_zero=True), HostPort("", 0))
    kind: ListenerKind = s.required(_choice(ListenerKind), "submission")
    tls: ListenerTls = s.setting(_choice(ListenerTls), "starttls")
    certificate: Path | None = s.setting(_optional_path, "")
    private_key: Path | None = s.setting(_optional_path, "")
    client_certificate: ClientCertificate = s.setting(_choice(ClientCertificate), "none")
    relay_clients: tuple[RelayClient, ...] = s.setting(s.array(s.network_or_dn), [])
    max_connections: int = s.setting(s.integer(1, 100_000), 200)
    max_connections_per_ip: int = s.setting(s.integer(1, 100_000), 20)
    max_recipients: int = s.setting(s.integer(1, 100_000), 100)
    command_timeout: timedelta = s.setting(s.duration(positive=True), "5m")
    data_timeout: timedelta = s.setting(s.duration(positive=True), "10m")


@dataclass(frozen=True, kw_only=True, slots=True)
class AuthSection:
    users_file: Path = s.setting(s.path, "conf/users.toml")


@dataclass(frozen=True, kw_only=True, slots=True)
class KeysSection:
    dir: Path = s.setting(s.path, "var/keys")
    organisation_signing: Path | None = s.setting(_optional_path, "")


@dataclass(frozen=True, kw_only=True, slots=True)
class AnnuaireAttributes:
    mail: str = s.setting(s.ldap_attribute, "mail")
    certificate: tuple[str, ...] = s.setting(
        s.array(s.ldap_attribute, non_empty=True),
        ["userCertificate;binary", "userSMIMECertificate"],
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class AnnuaireSection:
    backend: Backend = s.setting(_choice(Backend), "ldif")
    ldif: Path = s.setting(s.path, "var/annuaire.ldif")
    url: tuple[str, ...] = s.setting(s.array(s.ldap_url), ["ldap://127.0.0.1:3389"])
    base_dn: str = s.setting(s.ldap_dn, "ou=people,dc=annuaire,dc=test")
    bind_dn: str | None = s.setting(s.optional(s.ldap_dn), "")
    bind_password_file: Path | None = s.setting(_optional_path, "")
    ca_file: Path | None = s.setting(_optional_path, "")
    timeout: timedelta = s.setting(s.duration(positive=True), "5s")
    pool_size: int = s.setting(s.integer(1, 256), 4)
    cache_ttl: timedelta = s.setting(s.duration(), "5m")
    negative_cache_ttl: timedelta = s.setting(s.duration(), "1m")
    dns_cert: bool = s.setting(s.boolean, False)
    attributes: AnnuaireAttributes = s.section(AnnuaireAttributes)


@dataclass(frozen=True, kw_only=True, slots=True)
class SmimeSection:
    sign: bool = s.setting(s.boolean, True)
    encrypt: bool = s.setting(s.boolean, True)
    content_cipher: ContentCipher = s.setting(_choice(ContentCipher), "auto")
    key_transport: KeyTransport = s.setting(_choice(KeyTransport), "auto")
    protect_headers: bool = s.setting(s.boolean, True)
    copy_to_sender: bool = s.setting(s.boolean, True)
    accept_3des: bool = s.setting(s.boolean, True)


@dataclass(frozen=True, kw_only=True, slots=True)
class Route:
    name: str = s.required(s.name, "")
    domains: tuple[str, ...] = s.required(s.array(s.domain_pattern, non_empty=True), ())
    transport: Transport = s.setting(_choice(Transport), "smtp")
    next_hop: HostPort | None = s.setting(s.optional(s.host_port(default_port=25)), "")
    tls: RouteTls = s.setting(_choice(RouteTls), "verify")
    tls_name: str | None = s.setting(s.optional(s.hostname), "")
    security: Security = s.setting(_choice(Security), "smime")
    wrap: bool = s.setting(s.boolean, False)
    fallback: str = s.setting(s.fallback, "bounce")
    anchors: tuple[Path, ...] = s.setting(s.array(s.path), [])
    auth_user: str | None = s.setting(s.optional(s.login), "")
    auth_password_file: Path | None = s.setting(_optional_path, "")

    @property
    def fallback_route(self) -> str | None:
        """The route named by ``fallback = "route:<name>"``, else ``None``."""
        return self.fallback.removeprefix("route:") if self.fallback.startswith("route:") else None

    def matches(self, domain: str) -> bool:
        """True if one of ``domains`` matches ``domain`` (normalised, lower-case)."""
        return any(domain_matches(pattern, domain) for pattern in self.domains)


@dataclass(frozen=True, kw_only=True, slots=True)
class DeliverySection:
    retry_schedule: tuple[timedelta, ...] = s.setting(
        s.array(s.duration(positive=True), non_empty=True), ["1m", "5m", "15m", "1h", "4h"]
    )
    max_lifetime: timedelta = s.setting(s.duration(positive=True), "5d")
    delay_warning: timedelta = s.setting(s.duration(positive=True), "4h")
    max_message_size: int = s.setting(s.size, "50MB")
    concurrency_per_destination: int = s.setting(s.integer(1, 1000), 10)


@dataclass(frozen=True, kw_only=True, slots=True)
class ImapFetch:
    url: str = s.required(s.imap_url, "")
    user: str = s.required(s.login, "")
    password_file: Path = s.required(s.path, Path())
    deliver_to_address: str = s.required(s.email, "")


@dataclass(frozen=True, kw_only=True, slots=True)
class InboundSection:
    deliver_to: DeliverTo = s.setting(s.deliver_to, "maildir:var/mail")
    accept: InboundAccept = s.setting(_choice(InboundAccept), "signed")
    unknown_key: UnknownKey = s.setting(_choice(UnknownKey), "pass-marked")
    unsigned_cbc: UnsignedCbc = s.setting(_choice(UnsignedCbc), "mark")
    quarantine_retention: timedelta = s.setting(
        s.duration_at_least(QUARANTINE_RETENTION_MINIMUM, "1d"), "30d"
    )
    imap_fetch: tuple[ImapFetch, ...] = s.table_array(ImapFetch)


@dataclass(frozen=True, kw_only=True, slots=True)
class PostalSection:
    outbox: Path = s.setting(s.path, "var/postal")


@dataclass(frozen=True, kw_only=True, slots=True)
class AuditSection:
    path: Path = s.setting(s.path, "var/audit.sqlite")
    retention: timedelta = s.setting(s.duration(positive=True), "183d")


@dataclass(frozen=True, kw_only=True, slots=True)
class MetricsSection:
    address: HostPort | None = s.setting(s.optional(s.host_port(allow_port_zero=True)), "")


@dataclass(frozen=True, kw_only=True, slots=True)
class Config:
    """The whole file. ``source`` is the file it was read from (absolute)."""

    gateway: GatewaySection = s.section(GatewaySection)
    tls: TlsSection = s.section(TlsSection)
    trust: TrustSection = s.section(TrustSection)
    listeners: tuple[Listener, ...] = s.table_array(Listener)
    auth: AuthSection = s.section(AuthSection)
    keys: KeysSection = s.section(KeysSection)
    annuaire: AnnuaireSection = s.section(AnnuaireSection)
    smime: SmimeSection = s.section(SmimeSection)
    routes: tuple[Route, ...] = s.table_array(Route)
    delivery: DeliverySection = s.section(DeliverySection)
    inbound: InboundSection = s.section(InboundSection)
    postal: PostalSection = s.section(PostalSection)
    audit: AuditSection = s.section(AuditSection)
    metrics: MetricsSection = s.section(MetricsSection)
    source: Path = field(default=Path())

    def route_for(self, domain: str) -> Route | None:
        """The first route whose ``domains`` match ``domain`` ("*.x" = subdomains of x).

        The implicit route of ``gateway.local_domains`` is the relay's business, not
        this lookup's. A domain that is not a valid DNS name matches no route.
        """
        try:
            normalised = parse_domain(domain)
        except ValueError:
            return None
        return next((route for route in self.routes if route.matches(normalised)), None)

    def route_named(self, name: str) -> Route | None:
        return next((route for route in self.routes if route.name == name), None)

    def listener_named(self, name: str) -> Listener | None:
        return next((listener for listener in self.listeners if listener.name == name), None)
