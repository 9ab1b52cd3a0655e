"""Loading: TOML reading, keys and types, defaults of the contract, typed objects."""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from typing import Any

import pytest

from gateway.config import (
    Config,
    ConfigError,
    DeliverTo,
    HostPort,
    Route,
    load_config,
    model,
    schema,
)
from tests.config.support import BASE, Site, replace


def test_base_loads_typed_and_frozen(site: Site) -> None:
    config = site.load()
    assert config.source == site.config
    assert config.gateway.home == site.root
    assert config.gateway.hostname == "mx.chu-a.test"
    assert config.gateway.local_domains == ("chu-a.test",)
    assert config.tls.certificate == site.path("var/pki/mx.chu-a.test.crt")
    assert config.listeners[0].address == HostPort("127.0.0.1", 2587)
    assert isinstance(config.trust.anchors, tuple)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.gateway.hostname = "other.test"  # type: ignore[misc]


def test_contract_defaults(site: Site) -> None:
    """Every default of CONFIG-CONTRACT, for the keys the base file leaves out."""
    config = site.load()
    root = site.root
    gateway, listener = config.gateway, config.listeners[0]
    assert gateway.spool_dir == root / "var/spool"
    assert gateway.data_dir == root / "var"
    assert (gateway.log_level, gateway.language, gateway.nameservers) == ("info", "fr", ())
    assert (config.tls.min_version, config.tls.ciphers) == ("1.2", "")
    assert (config.trust.revocation, config.trust.liste_blanche) == ("hard-fail", None)
    assert (listener.tls, listener.certificate, listener.private_key) == ("starttls", None, None)
    assert (listener.max_connections, listener.max_connections_per_ip) == (200, 20)
    assert listener.max_recipients == 100
    assert listener.command_timeout == timedelta(minutes=5)
    assert listener.data_timeout == timedelta(minutes=10)
    assert (listener.client_certificate, listener.relay_clients) == ("none", ())
    assert config.auth.users_file == root / "conf/users.toml"
    assert (config.keys.dir, config.keys.organisation_signing) == (root / "var/keys", None)
    annuaire = config.annuaire
    assert (annuaire.backend, annuaire.ldif) == ("ldif", root / "var/annuaire.ldif")
    assert annuaire.url == ("ldap://127.0.0.1:3389",)
    assert annuaire.base_dn == "ou=people,dc=annuaire,dc=test"
    assert (annuaire.bind_dn, annuaire.bind_password_file, annuaire.ca_file) == (None,) * 3
    assert (annuaire.timeout, annuaire.pool_size) == (timedelta(seconds=5), 4)
    assert (annuaire.cache_ttl, annuaire.negative_cache_ttl) == (
        timedelta(minutes=5),
        timedelta(minutes=1),
    )
    assert annuaire.dns_cert is False
    assert annuaire.attributes.mail == "mail"
    assert annuaire.attributes.certificate == ("userCertificate;binary", "userSMIMECertificate")
    smime = config.smime
    assert (smime.sign, smime.encrypt, smime.protect_headers) == (True, True, True)
    assert (smime.copy_to_sender, smime.accept_3des) == (True, True)
    assert (smime.content_cipher, smime.key_transport) == ("auto", "auto")
    assert config.routes == ()
    delivery = config.delivery
    assert delivery.retry_schedule == tuple(timedelta(minutes=m) for m in (1, 5, 15, 60, 240))
    assert (delivery.max_lifetime, delivery.delay_warning) == (
        timedelta(days=5),
        timedelta(hours=4),
    )
    assert delivery.max_message_size == 50_000_000
    assert delivery.concurrency_per_destination == 10
    inbound = config.inbound
    assert inbound.deliver_to == DeliverTo("maildir", path=root / "var/mail")
    assert (inbound.accept, inbound.unknown_key, inbound.unsigned_cbc) == (
        "signed",
        "pass-marked",
        "mark",
    )
    assert inbound.imap_fetch == ()
    assert config.postal.outbox == root / "var/postal"
    assert config.audit.path == root / "var/audit.sqlite"
    assert config.audit.retention == timedelta(days=183)
    assert config.metrics.address is None


def test_route_defaults_and_lookup(site: Site) -> None:
    text = (
        BASE
        + """
[[routes]]
name = "clinique-b"
domains = ["clinique-b.test"]
next_hop = "127.0.0.1:2526"
tls_name = "mx.clinique-b.test"

[[routes]]
name = "apicrypt"
domains = ["*.apicrypt.test"]
transport = "postal"

[[routes]]
name = "default"
domains = ["*"]
transport = "reject"
"""
    )
    config = site.load(text)
    first = config.routes[0]
    assert (first.transport, first.tls, first.security, first.wrap) == (
        "smtp",
        "verify",
        "smime",
        False,
    )
    assert (first.fallback, first.fallback_route, first.anchors) == ("bounce", None, ())
    assert (first.auth_user, first.auth_password_file) == (None, None)
    assert first.next_hop == HostPort("127.0.0.1", 2526)

    def name_of(route: Route | None) -> str | None:
        return route.name if route else None

    assert name_of(config.route_for("clinique-b.test")) == "clinique-b"
    assert name_of(config.route_for("CLINIQUE-B.test.")) == "clinique-b"
    assert name_of(config.route_for("medical.apicrypt.test")) == "apicrypt"
    assert name_of(config.route_for("apicrypt.test")) == "default"  # "*.x" is subdomains only
    assert name_of(config.route_for("elsewhere.test")) == "default"
    assert config.route_for("not a domain") is None
    assert name_of(config.route_named("apicrypt")) == "apicrypt"
    assert config.listener_named("mx") is config.listeners[1]


def test_home_resolution(site: Site) -> None:
    # absolute home; a relative path may leave it with ".."
    text = replace(BASE, 'home = ".."', f'home = "{site.root}"')
    text = replace(text, "[gateway]\n", '[gateway]\nspool_dir = "../elsewhere/spool"\n')
    config = site.load(text)
    assert config.gateway.home == site.root
    assert config.gateway.spool_dir == site.root.parent / "elsewhere" / "spool"
    # no home: the configuration file's directory
    conf_only = replace(BASE, 'home = ".."\n', "").replace('"var/', '"../var/')
    conf_only += '\n[annuaire]\nldif = "../var/annuaire.ldif"\n[auth]\nusers_file = "users.toml"\n'
    config = site.load(conf_only)
    assert config.gateway.home == site.root / "conf"
    assert config.tls.certificate == site.path("var/pki/mx.chu-a.test.crt")


def test_relative_config_path(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    site.write(BASE)
    monkeypatch.chdir(site.root)
    config = load_config("conf/missive.toml")
    assert config.source == site.config
    assert config.gateway.home == site.root


@pytest.mark.parametrize(
    ("snippet", "key"),
    [
        ("[gateway]\nhostnam = 1\n", "gateway.hostnam"),
        ("[tls]\ncertficate = 1\n", "tls.certficate"),
        ("[annuaire.attributes]\nmial = 'mail'\n", "annuaire.attributes.mial"),
        (
            "[[routes]]\nname = 'r'\ndomains = ['x.test']\ntransport = 'reject'\nnxt = 1\n",
            "routes[0].nxt",
        ),
        (
            "[[inbound.imap_fetch]]\nurl = 'imaps://i.x.test/INBOX'\nuser = 'a'\n"
            "password_file = 'p'\ndeliver_to_address = 'a@chu-a.test'\nfolder = 'x'\n",
            "inbound.imap_fetch[0].folder",
        ),
        ("[frobnicate]\nx = 1\n", "frobnicate"),
        ('"weird key" = 1\n', '"weird key"'),
    ],
)
def test_unknown_keys_at_every_depth(site: Site, snippet: str, key: str) -> None:
    text = _merge(BASE, snippet)
    assert f"{key}: unknown key" in site.problems(text)


def _merge(base: str, snippet: str) -> str:
    """``base`` plus ``snippet``; a table the base already opens is merged into it."""
    for header in ("[gateway]\n", "[tls]\n"):
        if snippet.startswith(header):
            return base.replace(header, snippet, 1)
    if not snippet.startswith("["):
        return snippet + base
    return base + "\n" + snippet


@pytest.mark.parametrize(
    ("line", "key", "message"),
    [
        (
            'max_connections = "200"',
            "listeners[0].max_connections",
            'expected an integer, got "200"',
        ),
        ("max_connections = true", "listeners[0].max_connections", "expected an integer, got true"),
        ("max_connections = 0", "listeners[0].max_connections", "expected an integer from 1 to"),
        ("max_connections = 2.5", "listeners[0].max_connections", "expected an integer, got 2.5"),
        ("tls = 1", "listeners[0].tls", "expected one of starttls|implicit|none, got 1"),
        ('tls = "yes"', "listeners[0].tls", 'expected one of starttls|implicit|none, got "yes"'),
        ("command_timeout = 5", "listeners[0].command_timeout", 'expected a duration like "30s"'),
        ('command_timeout = "0s"', "listeners[0].command_timeout", "must be longer than 0s"),
        ('relay_clients = "127.0.0.1/32"', "listeners[0].relay_clients", "expected an array"),
        ('relay_clients = ["10.0.0.1/8", 5]', "listeners[0].relay_clients[0]", "host bits set"),
        ('relay_clients = ["10.0.0.1/8", 5]', "listeners[0].relay_clients[1]", "expected a CIDR"),
        ("certificate = 1979-05-27T07:32:00Z", "listeners[0].certificate", "a date/time"),
    ],
)
def test_wrong_types_and_values_in_listener(site: Site, line: str, key: str, message: str) -> None:
    text = replace(BASE, 'name = "submission"\n', f'name = "submission"\n{line}\n')
    lines = site.problems(text)
    assert any(problem.startswith(f"{key}: ") and message in problem for problem in lines), lines


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('hostname = "mx.chu-a.test"', "", "gateway.hostname: required"),
        (
            'hostname = "mx.chu-a.test"',
            'hostname = "localhost"',
            'gateway.hostname: "localhost" is not a fully qualified',
        ),
        (
            'local_domains = ["chu-a.test"]',
            "local_domains = []",
            "gateway.local_domains: must not be empty",
        ),
        (
            'local_domains = ["chu-a.test"]',
            'local_domains = ["chu_a.test"]',
            "gateway.local_domains[0]: ",
        ),
        ('anchors = ["var/pki/root.crt"]', "", "trust.anchors: required"),
        (
            'anchors = ["var/pki/root.crt"]',
            'anchors = "var/pki/root.crt"',
            "trust.anchors: expected an array",
        ),
        ('name = "mx"', "", "listeners[1].name: required"),
        (
            'kind = "relay"',
            'kind = "mta"',
            'listeners[1].kind: expected one of submission|relay, got "mta"',
        ),
        ('home = ".."', "home = 3", "gateway.home: expected a path, got 3"),
        ('home = ".."', 'home = "../nowhere"', "gateway.home: "),
        (
            'address = "127.0.0.1:2587"',
            'address = ["127.0.0.1:1"]',
            'listeners[0].address: expected a "host:port" string, got an array',
        ),
    ],
)
def test_required_and_bad_values(site: Site, old: str, new: str, expected: str) -> None:
    lines = site.problems(replace(BASE, old, new))
    assert any(line.startswith(expected) for line in lines), lines


def test_section_that_is_not_a_table(site: Site) -> None:
    text = "tls = 5\n" + replace(BASE, "[tls]\n", "[unused]\n")
    lines = site.problems(text)
    assert "tls: expected a table, got 5" in lines
    assert not any(line.startswith("tls.") for line in lines), lines  # no derived complaint


def test_array_of_tables_shape(site: Site) -> None:
    lines = site.problems(BASE + "\n[routes]\nname = 'x'\n")
    assert "routes: expected an array of tables ([[routes]]), got a table" in lines
    lines = site.problems("routes = [1]\n" + BASE)
    assert "routes[0]: expected a table, got 1" in lines


def test_invalid_toml_is_one_line_with_position(site: Site) -> None:
    lines = site.problems(BASE + "\n[gateway\n", full=True)
    assert len(lines) == 1
    assert lines[0].startswith("missive.toml: invalid TOML: ")
    assert "line" in lines[0] and "column" in lines[0]
    lines = site.problems(BASE + "[gateway]\nx = 1\n", full=True)  # table declared twice
    assert len(lines) == 1 and "invalid TOML" in lines[0]


def test_not_utf8(site: Site) -> None:
    site.config.write_bytes(BASE.encode() + b"# caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_config(site.config)
    assert caught.value.problems == (
        f"missive.toml: invalid TOML: not UTF-8 (byte {len(BASE) + 5} of the file)",
    )


def test_missing_and_unreadable_file(site: Site) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(site.root / "conf" / "nope.toml")
    assert caught.value.problems == (
        f"nope.toml: cannot read {site.root}/conf/nope.toml: no such file",
    )
    with pytest.raises(ConfigError) as caught:
        load_config(site.root / "conf")
    (line,) = caught.value.problems
    assert line.startswith("conf: cannot read ") and "directory" in line


def _leaf_keys(cls: type[Any], prefix: str) -> list[tuple[str, schema.Setting[Any]]]:
    """Every scalar/array key of a model class, with its setting (sub-tables recursed)."""
    keys: list[tuple[str, schema.Setting[Any]]] = []
    for field in dataclasses.fields(cls):
        spec = field.metadata.get(schema.SPEC)
        if isinstance(spec, schema.Setting):
            keys.append((f"{prefix}.{field.name}", spec))
        elif isinstance(spec, schema.Section):
            keys.extend(_leaf_keys(spec.cls, f"{prefix}.{field.name}"))
    return keys


SECTIONS = [
    (field.name, spec.cls)
    for field in dataclasses.fields(Config)
    if isinstance(spec := field.metadata.get(schema.SPEC), schema.Section)
]
WRONG_VALUES = ["{ a = 1 }", "1979-05-27", "[[1]]", "-1", "nan"]


@pytest.mark.parametrize("section", [name for name, _ in SECTIONS])
def test_every_key_rejects_wrong_types(site: Site, section: str) -> None:
    """Each key of each [section], given values of wrong types, gives a line naming it."""
    cls = dict(SECTIONS)[section]
    for key, _spec in _leaf_keys(cls, section):
        table, _, name = key.rpartition(".")
        for wrong in WRONG_VALUES:
            text = _with_key(table, name, wrong)
            lines = site.problems(text)
            assert any(line.startswith((f"{key}: ", f"{key}[")) for line in lines), (key, wrong)


def _with_key(table: str, name: str, value: str) -> str:
    """BASE with ``table.name = value`` (the table opened, or its line replaced)."""
    header = f"[{table}]\n"
    if header not in BASE:
        return BASE + f"\n{header}{name} = {value}\n"
    before, _, rest = BASE.partition(header)
    body, next_header, after = rest.partition("\n[")
    kept = [line for line in body.splitlines() if not line.startswith(f"{name} = ")]
    body = "\n".join([f"{name} = {value}", *kept])
    return before + header + body + ("\n" + next_header + after if next_header else "\n")


def test_model_keys_match_contract_sections() -> None:
    """The top-level keys are exactly the contract's sections."""
    assert schema.keys_of(Config) == (
        "gateway", "tls", "trust", "listeners", "auth", "keys", "annuaire", "smime",
        "routes", "delivery", "inbound", "postal", "audit", "metrics",
    )  # fmt: skip
    assert "source" not in schema.keys_of(Config)
    assert schema.keys_of(model.ImapFetch) == (
        "url", "user", "password_file", "deliver_to_address",
    )  # fmt: skip


def test_listener_port_zero_and_metrics(site: Site) -> None:
    text = replace(BASE, 'address = "127.0.0.1:2587"', 'address = "127.0.0.1:0"')
    text = replace(text, 'address = "127.0.0.1:2525"', 'address = "127.0.0.1:0"')
    config = site.load(text + '\n[metrics]\naddress = "127.0.0.1:9465"\n')
    assert config.listeners[0].address.port == 0  # any free port: never a conflict
    assert config.metrics.address == HostPort("127.0.0.1", 9465)


def test_nameservers(site: Site) -> None:
    text = replace(
        BASE, "[gateway]\n", '[gateway]\nnameservers = ["127.0.0.1:5353", "::1", "10.0.0.1"]\n'
    )
    lines = site.problems(text)
    assert any(
        line.startswith("gateway.nameservers[1]: an IPv6 address needs brackets") for line in lines
    )
    text = replace(
        BASE, "[gateway]\n", '[gateway]\nnameservers = ["127.0.0.1:5353", "[::1]", "10.0.0.1"]\n'
    )
    assert site.load(text).gateway.nameservers == (
        HostPort("127.0.0.1", 5353),
        HostPort("::1", 53),
        HostPort("10.0.0.1", 53),
    )


def test_agent_keys_false_does_not_open_organisation_key(site: Site) -> None:
    text = BASE + '\n[keys]\norganisation_signing = "var/org.pem"\n'
    site.write_private("var/org.pem", b"not a key", mode=0o644)
    with pytest.raises(ConfigError):
        load_config(site.write(text))
    config = load_config(site.config, agent_keys=False)
    assert config.keys.organisation_signing == site.path("var/org.pem")


def test_config_is_hashable_and_comparable(site: Site) -> None:
    first, second = site.load(), site.load()
    assert first == second
    assert hash(first.listeners[1]) == hash(second.listeners[1])
    assert os.fspath(first.source).endswith("missive.toml")


ARRAYS = [
    (
        "listeners",
        2,
        model.Listener,
        {"name": '"extra"', "address": '"127.0.0.1:2999"', "kind": '"relay"'},
    ),
    ("routes", 0, model.Route, {"name": '"r"', "domains": '["x.test"]', "transport": '"reject"'}),
    (
        "inbound.imap_fetch",
        0,
        model.ImapFetch,
        {
            "url": '"imaps://imap.partner.test/INBOX"',
            "user": '"alice"',
            "password_file": '"var/imap.secret"',
            "deliver_to_address": '"alice@chu-a.test"',
        },
    ),
]


@pytest.mark.parametrize(("array", "index", "cls", "entry"), ARRAYS, ids=[a[0] for a in ARRAYS])
def test_every_array_key_rejects_wrong_types(
    site: Site, array: str, index: int, cls: type[Any], entry: dict[str, str]
) -> None:
    for name in schema.keys_of(cls):
        key = f"{array}[{index}].{name}"
        for wrong in WRONG_VALUES:
            fields = {**entry, name: wrong}
            body = "".join(f"{field} = {value}\n" for field, value in fields.items())
            lines = site.problems(f"{BASE}\n[[{array}]]\n{body}")
            assert any(line.startswith((f"{key}: ", f"{key}[")) for line in lines), (key, wrong)
