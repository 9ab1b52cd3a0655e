"""Load one configuration file: read TOML, build the typed ``Config``, run every check.

Role: the composition of ``schema`` (keys and values), ``rules`` (keys together) and
``checks`` (the files named). All problems are collected before anything is raised,
so one run shows every line to fix (contract: one line per problem naming the key,
exit status 2, never a traceback).

Order of work: the file is read as UTF-8 and parsed with ``tomllib`` (TOML 1.0); a
missing or unreadable file, bad UTF-8 or bad TOML is a single problem line and stops
there (nothing else can be said). Then ``gateway.home`` is resolved first, because
every other path depends on it: a relative ``home`` is taken from the directory of
the configuration file, and ``home`` defaults to that directory. Then every section
is read, then the rules, then the files.
"""

from __future__ import annotations

import os
import stat
import tomllib
from pathlib import Path

from gateway.config import schema
from gateway.config.checks import check_files
from gateway.config.material import Unusable, read_file
from gateway.config.model import AuthSection, Config
from gateway.config.problems import Problems
from gateway.config.rules import check_rules
from gateway.config.value_errors import BadValue, show
from gateway.config.values import resolve_path
from gateway.errors import ConfigError


def load_config(path: str | os.PathLike[str], *, agent_keys: bool = True) -> Config:
    """Read, validate and return the configuration at ``path``.

    Raises ``ConfigError`` whose ``problems`` are every problem line. With
    ``agent_keys=False`` files that only the secure agent reads are not opened
    (see ``gateway.config.checks``).
    """
    return _load(Path(path), agent_keys=agent_keys, key_store=False)


def check_config(path: str | os.PathLike[str]) -> Config:
    """What ``missive check-config`` runs: ``load_config`` plus the key store in ``keys.dir``."""
    return _load(Path(path), agent_keys=True, key_store=True)


def users_file_of(path: str | os.PathLike[str]) -> Path:
    """``auth.users_file`` of the configuration at ``path``, resolved against
    ``gateway.home``, with no other check: ``missive users`` must work before the rest
    of the configuration (TLS material, the users file itself) exists."""
    source = Path(path).absolute()
    problems = Problems(source.name)
    document = _read_toml(source)
    home = _resolve_home(document, source.parent, problems)
    table = document.get("auth", {})
    if not isinstance(table, dict):
        problems.add("auth", "expected a table")
        table = {}
    auth = schema.build(AuthSection, table, "auth", schema.Context(home), problems)
    problems.raise_if_any()
    return auth.users_file


def _load(path: Path, *, agent_keys: bool, key_store: bool) -> Config:
    source = path.absolute()
    problems = Problems(source.name)
    document = _read_toml(source)
    home = _resolve_home(document, source.parent, problems)
    config = schema.build(Config, document, "", schema.Context(home), problems, source=source)
    check_rules(config, problems)
    check_files(config, problems, agent_keys=agent_keys, key_store=key_store)
    problems.raise_if_any()
    return config


def _read_toml(source: Path) -> dict[str, object]:
    """The TOML document of ``source``: a regular file of at most ``MAX_FILE`` bytes (a
    FIFO or a device would be waited on or read without end); one ``ConfigError`` line
    for anything else, never a traceback (deep nesting, a number of thousands of
    digits: ``tomllib`` raises ``RecursionError`` / ``ValueError`` for those)."""
    try:
        mode = source.stat().st_mode
    except FileNotFoundError:
        raise ConfigError(f"{source.name}: cannot read {source}: no such file") from None
    except OSError as error:
        raise ConfigError(f"{source.name}: cannot read {source}: {error.strerror}") from None
    if not stat.S_ISREG(mode):
        what = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
        raise ConfigError(f"{source.name}: cannot read {source}: {what}")
    try:
        data = read_file(source)
    except Unusable as error:
        raise ConfigError(f"{source.name}: cannot read {source}: {error}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise ConfigError(
            f"{source.name}: invalid TOML: not UTF-8 (byte {error.start} of the file)"
        ) from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{source.name}: invalid TOML: nested too deeply") from None
    except ValueError as error:  # TOMLDecodeError, or a number too long to convert
        raise ConfigError(f"{source.name}: invalid TOML: {error}") from None


def _resolve_home(document: dict[str, object], config_dir: Path, problems: Problems) -> Path:
    """``gateway.home`` as an absolute path; on a problem, the config directory."""
    gateway = document.get("gateway")
    raw = gateway.get("home", ".") if isinstance(gateway, dict) else "."
    if not isinstance(raw, str) or not raw:
        problems.add("gateway.home", f"expected a path, got {show(raw)}")
        return config_dir
    try:
        return resolve_path(raw, config_dir)
    except BadValue as error:
        problems.add("gateway.home", str(error))
        return config_dir
