"""From parsed TOML to frozen dataclasses: readers of TOML values and the table walker.

Role: ``gateway.config.model`` declares each section as a frozen dataclass whose fields
carry a *spec* (``setting``, ``required``, ``section``, ``table_array``) naming the
reader of the TOML value and the default *as it would be written in the file*
(``"5m"``, ``"var/spool"``), so a default is parsed and resolved exactly like a value.
``build`` walks a TOML table against such a class: it reads every known key, reports
every unknown key, and records every problem in ``Problems`` without stopping.

Invariants: ``build`` always returns an object. A key with a problem gets its default
(or, for a required key, a placeholder) and is marked bad, so the caller can go on
checking the rest of the file; ``load_config`` never returns such an object (it raises
``ConfigError`` when any problem was found). TOML types are strict: a string where an
integer is expected is an error, not a conversion (STYLE: fail fast, no "warn and use
the default").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Final, Generic, TypeVar

from gateway.config import domains, hosts, names, quantities, values
from gateway.config.problems import Problems, join_key
from gateway.config.value_errors import BadValue, show

T = TypeVar("T")
SPEC: Final = "missive.config.spec"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = _Missing()


@dataclass(frozen=True)
class Context:
    """What readers need beyond the value: ``home``, the base of relative paths."""

    home: Path


class FieldProblem(Exception):
    """Raised by a reader: ``items`` are (key suffix such as ``"[1]"`` or ``""``, message)."""

    def __init__(self, message: str, items: list[tuple[str, str]] | None = None) -> None:
        super().__init__(message)
        self.items: list[tuple[str, str]] = items if items is not None else [("", message)]


Reader = Callable[[object, Context], T]


# ---------------------------------------------------------------- TOML type checks


def expect_str(raw: object, what: str = "a string") -> str:
    if not isinstance(raw, str):
        raise FieldProblem(f"expected {what}, got {show(raw)}")
    return raw


def _parsed(parse: Callable[[str], T], what: str) -> Reader[T]:
    """Reader of a string value (``what`` it should be) through a parser of ``values``."""

    def read(raw: object, ctx: Context) -> T:
        try:
            return parse(expect_str(raw, what))
        except BadValue as error:
            raise FieldProblem(str(error)) from None

    return read


def boolean(raw: object, ctx: Context) -> bool:
    if not isinstance(raw, bool):
        raise FieldProblem(f"expected true or false, got {show(raw)}")
    return raw


def integer(minimum: int, maximum: int) -> Reader[int]:
    def read(raw: object, ctx: Context) -> int:
        if not isinstance(raw, int) or isinstance(raw, bool):
            raise FieldProblem(f"expected an integer, got {show(raw)}")
        if not minimum <= raw <= maximum:
            raise FieldProblem(f"expected an integer from {minimum} to {maximum}, got {raw}")
        return raw

    return read


def choice(options: tuple[T, ...]) -> Reader[T]:
    """One of ``options`` (strings), e.g. the values of a ``Literal`` type."""

    def read(raw: object, ctx: Context) -> T:
        for option in options:
            if raw == option and isinstance(raw, str):
                return option
        allowed = "|".join(str(option) for option in options)
        raise FieldProblem(f"expected one of {allowed}, got {show(raw)}")

    return read


def duration(*, positive: bool = False) -> Reader[timedelta]:
    parse = _parsed(quantities.parse_duration, 'a duration like "30s", "5m", "4h", "5d"')

    def read(raw: object, ctx: Context) -> timedelta:
        value = parse(raw, ctx)
        if positive and not value:
            raise FieldProblem("must be longer than 0s")
        return value

    return read


def duration_at_least(minimum: timedelta, shown: str) -> Reader[timedelta]:
    """A duration no shorter than ``minimum`` (written ``shown`` in the message, e.g. "1d")."""
    parse = duration()

    def read(raw: object, ctx: Context) -> timedelta:
        value = parse(raw, ctx)
        if value < minimum:
            raise FieldProblem(f"must be at least {shown}, got {show(raw)}")
        return value

    return read


def size(raw: object, ctx: Context) -> int:
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise FieldProblem(f'expected a size like "50MB" or an integer of bytes, got {show(raw)}')
    try:
        value = quantities.parse_size(raw)
    except BadValue as error:
        raise FieldProblem(str(error)) from None
    if value == 0:
        raise FieldProblem("must be larger than 0 bytes")
    return value


def host_port(
    *, default_port: int | None = None, allow_port_zero: bool = False, ip_only: bool = False
) -> Reader[hosts.HostPort]:
    return _parsed(
        lambda s: hosts.parse_host_port(
            s, default_port=default_port, allow_port_zero=allow_port_zero, ip_only=ip_only
        ),
        'a "host:port" string',
    )


def optional(reader: Reader[T]) -> Reader[T | None]:
    """The empty string means "not set" (``None``); anything else goes to ``reader``."""

    def read(raw: object, ctx: Context) -> T | None:
        if raw == "":
            return None
        return reader(raw, ctx)

    return read


def path(raw: object, ctx: Context) -> Path:
    """A non-empty path, absolute (relative ones resolve against ``gateway.home``)."""
    value = expect_str(raw, "a path")
    if not value:
        raise FieldProblem("expected a path, got an empty string")
    try:
        return values.resolve_path(value, ctx.home)
    except BadValue as error:
        raise FieldProblem(str(error)) from None


def array(item: Reader[T], *, non_empty: bool = False) -> Reader[tuple[T, ...]]:
    """A TOML array; every bad item is reported with its index."""

    def read(raw: object, ctx: Context) -> tuple[T, ...]:
        if not isinstance(raw, list):
            raise FieldProblem(f"expected an array, got {show(raw)}")
        if non_empty and not raw:
            raise FieldProblem("must not be empty")
        result: list[T] = []
        failures: list[tuple[str, str]] = []
        for index, element in enumerate(raw):
            try:
                result.append(item(element, ctx))
            except FieldProblem as error:
                failures.extend((f"[{index}]{suffix}", msg) for suffix, msg in error.items)
        if failures:
            raise FieldProblem(failures[0][1], failures)
        return tuple(result)

    return read


def home(raw: object, ctx: Context) -> Path:
    """``gateway.home`` was resolved before the walk (``Context.home``); see the loader."""
    return ctx.home


domain = _parsed(domains.parse_domain, "a domain name")
domain_pattern = _parsed(
    domains.parse_domain_pattern, 'a domain pattern ("*", "*.x.test", "x.test")'
)
fqdn = _parsed(lambda s: domains.parse_hostname(s, fully_qualified=True), "a host name")
hostname = _parsed(domains.parse_hostname, "a host name")
email = _parsed(domains.parse_email, "a mail address")
network_or_dn = _parsed(names.parse_relay_client, 'a CIDR or "dn:<subject DN>"')
ldap_dn = _parsed(names.parse_ldap_dn, "a distinguished name")
ldap_url = _parsed(values.parse_ldap_url, "an ldap:// or ldaps:// URL")
ldap_attribute = _parsed(names.parse_ldap_attribute, "an LDAP attribute name")
imap_url = _parsed(values.parse_imap_url, "an imaps:// URL")
name = _parsed(names.parse_name, "a name")
login = _parsed(names.parse_login, "a login")
fallback = _parsed(values.parse_fallback, "one of bounce|postal|route:<name>")
cipher_list = _parsed(values.parse_cipher_list, "an OpenSSL cipher string")


def deliver_to(raw: object, ctx: Context) -> values.DeliverTo:
    try:
        return values.parse_deliver_to(expect_str(raw, "lmtp://, smtp:// or maildir:"), ctx.home)
    except BadValue as error:
        raise FieldProblem(str(error)) from None


# ---------------------------------------------------------------- specs and the walker


@dataclass(frozen=True)
class Setting(Generic[T]):
    """A scalar or array key: its reader, and its default as written in TOML."""

    reader: Reader[T]
    default: object = MISSING
    placeholder: object = None

    def read(self, raw: object, key: str, ctx: Context, problems: Problems) -> object:
        if raw is MISSING:
            if self.default is MISSING:
                problems.add(key, "required")
                return self.placeholder
            raw = self.default
        try:
            return self.reader(raw, ctx)
        except FieldProblem as error:
            for suffix, message in error.items:
                problems.add(key + suffix, message)
            problems.mark_bad(key)
            if self.default is MISSING:
                return self.placeholder
            return self.reader(self.default, ctx)


@dataclass(frozen=True)
class Section:
    """A sub-table (``[tls]``, ``[annuaire.attributes]``) read into ``cls``."""

    cls: type[Any]

    def read(self, raw: object, key: str, ctx: Context, problems: Problems) -> object:
        if raw is MISSING:
            raw = {}
        if not isinstance(raw, dict):
            problems.add(key, f"expected a table, got {show(raw)}")
            return build(self.cls, {}, key, ctx, Problems(problems.file_name))
        return build(self.cls, raw, key, ctx, problems)


@dataclass(frozen=True)
class TableArray:
    """An array of tables (``[[routes]]``) read into a tuple of ``cls``."""

    cls: type[Any]

    def read(self, raw: object, key: str, ctx: Context, problems: Problems) -> object:
        if raw is MISSING:
            return ()
        if not isinstance(raw, list):
            problems.add(key, f"expected an array of tables ([[{key}]]), got {show(raw)}")
            return ()
        items = []
        for index, element in enumerate(raw):
            item_key = f"{key}[{index}]"
            if not isinstance(element, dict):
                problems.add(item_key, f"expected a table, got {show(element)}")
                items.append(build(self.cls, {}, item_key, ctx, Problems(problems.file_name)))
                continue
            items.append(build(self.cls, element, item_key, ctx, problems))
        return tuple(items)


Spec = Setting[Any] | Section | TableArray


def setting(reader: Reader[T], default: object) -> T:
    """A key with a default (written as in the TOML file)."""
    spec: Setting[T] = Setting(reader, default)
    return dataclasses.field(metadata={SPEC: spec})  # type: ignore[no-any-return]


def required(reader: Reader[T], placeholder: T) -> T:
    """A key without a default; ``placeholder`` stands in while other checks run."""
    spec: Setting[T] = Setting(reader, MISSING, placeholder)
    return dataclasses.field(metadata={SPEC: spec})  # type: ignore[no-any-return]


def section(cls: type[T]) -> T:
    return dataclasses.field(metadata={SPEC: Section(cls)})  # type: ignore[no-any-return]


def table_array(cls: type[T]) -> tuple[T, ...]:
    return dataclasses.field(metadata={SPEC: TableArray(cls)})  # type: ignore[no-any-return]


def keys_of(cls: type[Any]) -> tuple[str, ...]:
    """The TOML keys a model class accepts, in declaration order."""
    return tuple(f.name for f in dataclasses.fields(cls) if SPEC in f.metadata)


def build(
    cls: type[T],
    table: Mapping[str, object],
    prefix: str,
    ctx: Context,
    problems: Problems,
    **extra: object,
) -> T:
    """Read ``table`` into ``cls``; unknown keys and bad values go to ``problems``."""
    kwargs: dict[str, object] = dict(extra)
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        spec: Spec | None = field.metadata.get(SPEC)
        if spec is not None:
            raw = table.get(field.name, MISSING)
            kwargs[field.name] = spec.read(raw, join_key(prefix, field.name), ctx, problems)
    known = set(keys_of(cls))
    for key in table:
        if key not in known:
            problems.add(join_key(prefix, key), "unknown key")
    return cls(**kwargs)
