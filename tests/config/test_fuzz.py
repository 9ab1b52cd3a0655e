"""Seeded fuzzing: parsers raise only ``BadValue``; loading raises only ``ConfigError``."""

from __future__ import annotations

import random
import string
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.config import (
    ConfigError,
    domains,
    hosts,
    load_config,
    names,
    quantities,
    values,
)
from gateway.config.value_errors import BadValue
from tests.config.support import BASE, Site

ALPHABET = string.ascii_letters + string.digits + '=,+;\\#"<>:/[]@.*-_ \t\n\x00é%?&~'
PREFIXES = ["", "dn:", "CN=", "ldap://", "imaps://", "lmtp://", "smtp://", "maildir:", "route:",
            "[", "127.0.0.1:", "*.", "5", "xn--"]  # fmt: skip
PARSERS: dict[str, Callable[[str], object]] = {
    "duration": quantities.parse_duration,
    "size": quantities.parse_size,
    "host_port": hosts.parse_host_port,
    "domain": domains.parse_domain,
    "domain_pattern": domains.parse_domain_pattern,
    "email": domains.parse_email,
    "network": hosts.parse_network,
    "relay_client": names.parse_relay_client,
    "subject_dn": names.parse_subject_dn,
    "ldap_dn": names.parse_ldap_dn,
    "ldap_url": values.parse_ldap_url,
    "imap_url": values.parse_imap_url,
    "deliver_to": lambda text: values.parse_deliver_to(text, Path("/srv")),
    "fallback": values.parse_fallback,
    "cipher_list": values.parse_cipher_list,
    "name": names.parse_name,
    "login": names.parse_login,
    "ldap_attribute": names.parse_ldap_attribute,
    "hostname": lambda text: domains.parse_hostname(text, fully_qualified=True),
}


@pytest.mark.parametrize("name", sorted(PARSERS))
def test_parsers_raise_only_bad_value(name: str) -> None:
    parse = PARSERS[name]
    rnd = random.Random(name)
    for _ in range(1500):
        text = rnd.choice(PREFIXES) + "".join(
            rnd.choice(ALPHABET) for _ in range(rnd.randint(0, 24))
        )
        try:
            parse(text)
        except BadValue:
            pass


TOML_VALUES = ['"x"', "1", "-1", "0", "true", "[]", '[1, "a"]', "{ a = 1 }", "1979-05-27",
               '"\\u0000"', '""', '"*"', '"dn:"', '"[::]:0"', '"0s"', '"maildir:"', "inf",
               '"route:default"', '["*"]', '"../.."', '"/dev/zero"', '"/"', '"a\\nb"']  # fmt: skip


def test_mutated_files_give_config_errors_only(site: Site) -> None:
    """Random values in random keys of a valid file: a Config or a ConfigError, no crash."""
    rnd = random.Random(20261128)
    lines = BASE.splitlines()
    keyed = [index for index, line in enumerate(lines) if " = " in line]
    for _ in range(150):
        mutated = list(lines)
        for index in rnd.sample(keyed, rnd.randint(1, 3)):
            key = mutated[index].split(" = ", 1)[0]
            mutated[index] = f"{key} = {rnd.choice(TOML_VALUES)}"
        site.write("\n".join(mutated) + "\n")
        try:
            load_config(site.config)
        except ConfigError as error:
            assert error.problems
            assert all("\n" not in line for line in error.problems)
