"""Password hashes, the users file model and rewrite, and the ``Authenticator``."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import threading
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from gateway.errors import ConfigError
from gateway.smtp import passwords, user_table, users, users_rewrite
from gateway.smtp.passwords import (
    DEFAULT_PARAMETERS,
    BadHash,
    BadPassword,
    ScryptHash,
    ScryptParameters,
    check_new_password,
    hash_password,
    parse_hash,
    verify_password,
)
from gateway.smtp.user_table import User, UsersFileError, UserTable, load_users, parse_users
from gateway.smtp.users import REFUSED, Authenticator, AuthResult
from gateway.smtp.users_rewrite import render_users, write_users_file

FAST = ScryptParameters(ln=10, r=8, p=1)  # 1 MiB, ~1 ms: for tests that are not about cost
PASSWORD = "correct horse battery staple"
ALICE = "alice.martin@chu-a.test"


def user(login: str = ALICE, password: str = PASSWORD, *addresses: str) -> User:
    return User(login, parse_hash(hash_password(password, FAST)), addresses or (login,))


@pytest.fixture
def users_file(tmp_path: Path) -> Path:
    path = tmp_path / "users.toml"
    write_users_file(path, UserTable((user(),)))
    return path


class Records(logging.Handler):
    """Collects the ``missive.users`` events (the logger may not propagate)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[tuple[str, dict[str, object]]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.events.append((record.getMessage(), getattr(record, "fields", {})))


@pytest.fixture
def records() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("missive.users")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


# ---------------------------------------------------------------- hashes


def test_hash_format_and_default_parameters() -> None:
    text = hash_password(PASSWORD)
    assert text.startswith("$scrypt$ln=14,r=8,p=1$")
    parsed = parse_hash(text)
    assert parsed.parameters == DEFAULT_PARAMETERS == ScryptParameters(14, 8, 1)
    assert (len(parsed.salt), len(parsed.key)) == (16, 32)
    assert parsed.encode() == text
    assert "=" not in "".join(text.split("$")[-2:])  # base64 without padding (PHC format)
    assert hash_password(PASSWORD) != text  # a fresh salt each time


def test_verify() -> None:
    stored = parse_hash(hash_password(PASSWORD, FAST))
    assert verify_password(PASSWORD, stored)
    assert not verify_password(PASSWORD + " ", stored)
    assert not verify_password("", stored)
    assert not verify_password("x" * 5000, stored)  # over MAX_LENGTH: refused, not hashed


def test_known_vector() -> None:
    """RFC 7914 §12, second vector (N=1024, r=8, p=16, 64 bytes)."""
    key = bytes.fromhex(
        "fdbabe1c9d3472007856e7190d01e9fe7c6ad7cbc8237830e77376634b373162"
        "2eaf30d92e22a3886ff109279d9830dac727afb94a83ee6d8360cbdfa2cc0640"
    )
    stored = ScryptHash(ScryptParameters(10, 8, 16), b"NaCl", key)
    # the salt is shorter than parse_hash accepts, so the object is built directly
    assert verify_password("password", stored)


def test_password_compared_after_nfc() -> None:
    composed = "mot de passe très sûr"
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert verify_password(decomposed, parse_hash(hash_password(composed, FAST)))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("$argon2id$v=19$m=65536,t=3,p=4$c2FsdA$aGFzaA", "argon2 hashes are not supported"),
        ("plain-password", "expected a hash like $scrypt$"),
        ("$scrypt$ln=25,r=8,p=1$c2FsdHNhbHQ$" + "A" * 43, "out of range"),
        ("$scrypt$ln=18,r=8,p=1$c2FsdHNhbHQ$" + "A" * 43, "too costly"),
        ("$scrypt$ln=14,r=8,p=1$c2FsdHNhb$" + "A" * 43, "the salt is not valid base64"),
        ("$scrypt$ln=14,r=8,p=1$c2FsdA$" + "A" * 43, "the salt must be 8 to 64 bytes"),
        ("$scrypt$ln=14,r=8,p=1$c2FsdHNhbHQ$AAAA", "the hash must be 16 to 64 bytes"),
    ],
)
def test_bad_hashes(text: str, message: str) -> None:
    with pytest.raises(BadHash) as caught:
        parse_hash(text)
    assert message in str(caught.value)
    assert text not in str(caught.value)


@pytest.mark.parametrize(
    ("password", "message"),
    [
        ("", "the password is empty"),
        ("a" * 11, "too short (11 characters, at least 12)"),
        ("a" * 1025, "too long"),
        ("twelve chars\x00", "control character"),
        ("twelve chars\n", "control character"),
    ],
)
def test_password_policy(password: str, message: str) -> None:
    with pytest.raises(BadPassword, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_new_password(password)


def test_password_policy_accepts() -> None:
    check_new_password("a" * 12)
    check_new_password("Ça c'est un mot de passe")


# ---------------------------------------------------------------- file model


def test_parse_and_may_send_as() -> None:
    text = render_users(
        UserTable((user(ALICE, PASSWORD, "alice.martin@chu-a.test", "Secretariat@Chu-A.TEST"),))
    )
    table = parse_users(text, "users.toml")
    (alice,) = table.users
    assert alice.addresses == ("alice.martin@chu-a.test", "Secretariat@chu-a.test")
    assert table.may_send_as(ALICE, "alice.martin@CHU-A.test")  # domain: any case
    assert table.may_send_as("alice.martin@CHU-A.TEST", "Secretariat@chu-a.test")  # login too
    assert not table.may_send_as(ALICE, "Alice.Martin@chu-a.test")  # local part: exact
    assert not table.may_send_as(ALICE, "secretariat@chu-a.test")
    assert not table.may_send_as(ALICE, "bob@chu-a.test")
    assert not table.may_send_as(ALICE, "not an address")
    assert not table.may_send_as("bob@chu-a.test", "alice.martin@chu-a.test")


def test_round_trip_with_escapes() -> None:
    odd = user('o"neil\\x', PASSWORD, "oneil@chu-a.test")
    table = UserTable((user(), odd))
    text = render_users(table, "# header\n")
    assert text.startswith("# header\n\n[[users]]\n")
    assert parse_users(text, "users.toml") == table


def test_every_problem_gets_a_line() -> None:
    good = user().password_hash.encode()
    text = f"""
title = "x"
[[users]]
login = "{ALICE}"
password_hash = "{good}"
addresses = ["alice.martin@chu-a.test", "bad address", 3]
enabled = true
[[users]]
login = "alice.martin@CHU-A.test"
password_hash = "{good}"
addresses = ["alice.martin@chu-a.test"]
[[users]]
login = "with space"
password_hash = "$scrypt$secret-looking"
addresses = []
[[users]]
login = "carol"
"""
    with pytest.raises(UsersFileError) as caught:
        parse_users(text, "users.toml")
    assert isinstance(caught.value, ConfigError)
    assert caught.value.problems == (
        "users.toml: title: unknown key (only [[users]] tables belong here)",
        "users.toml: users[0].enabled: unknown key",
        "users.toml: users[0].addresses[1]: expected a mail address like name@domain,"
        ' got "bad address"',
        "users.toml: users[0].addresses[2]: expected a string",
        "users.toml: users[2].login: a login cannot contain spaces or control characters",
        "users.toml: users[2].password_hash: expected a hash like"
        " $scrypt$ln=14,r=8,p=1$<salt>$<hash>",
        "users.toml: users[2].addresses: expected a non-empty array of mail addresses",
        "users.toml: users[3].password_hash: missing (required)",
        "users.toml: users[3].addresses: missing (required)",
    )
    # users[1] repeats users[0]'s login, but users[0] is invalid: one problem at a time


def test_a_login_given_twice() -> None:
    alice, again = user(), user("alice.martin@CHU-A.test", "some other password")
    text = render_users(UserTable((alice,))) + render_users(UserTable((again,)), "")
    with pytest.raises(UsersFileError) as caught:
        parse_users(text, "users.toml")
    assert caught.value.problems == (
        "users.toml: users[1].login: login already defined in users[0]",
    )


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"[[users]\n", "users.toml: invalid TOML: "),
        (b"users = 3\n", "users.toml: users: expected an array of tables ([[users]])"),
        (b"users = [1]\n", "users.toml: users[0]: expected a table ([[users]])"),
        (b"\xff\xfe", "users.toml: invalid TOML: not UTF-8 (byte 0 of the file)"),
    ],
)
def test_unreadable_files(tmp_path: Path, data: bytes, message: str) -> None:
    path = tmp_path / "users.toml"
    path.write_bytes(data)
    with pytest.raises(UsersFileError) as caught:
        load_users(path)
    assert caught.value.problems[0].startswith(message)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="does not exist"):
        load_users(tmp_path / "users.toml")


def test_empty_file_is_an_empty_table(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("# nobody yet\n")
    assert len(load_users(path)) == 0


# ---------------------------------------------------------------- rewrite


def test_rewrite_is_0600_keeps_header_and_owner(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    path.write_text("# my header\n#   kept\n\n[[users]]\n# this comment goes\n")
    path.chmod(0o644)
    owner = (1234, 2345) if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    os.chown(path, *owner)
    old_umask = os.umask(0)
    try:
        write_users_file(path, UserTable((user(),)), user_table.read_header(path))
    finally:
        os.umask(old_umask)
    info = path.stat()
    assert stat.S_IMODE(info.st_mode) == 0o600
    assert (info.st_uid, info.st_gid) == owner
    assert path.read_text().startswith("# my header\n#   kept\n\n[[users]]\nlogin = ")
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]  # no temporary left
    assert load_users(path) == UserTable((load_users(path).users[0],))


def test_rewrite_follows_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real.toml"
    link = tmp_path / "users.toml"
    real.write_text("")
    link.symlink_to(real)
    write_users_file(link, UserTable((user(),)))
    assert link.is_symlink()
    assert len(load_users(real)) == 1


def test_failed_rewrite_leaves_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users.toml"
    write_users_file(path, UserTable((user(),)))
    before = path.read_bytes()

    def fail(*_: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(users_rewrite.os, "replace", fail)
    with pytest.raises(UsersFileError, match=r"cannot write .*: No space left on device"):
        write_users_file(path, UserTable())
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["users.toml"]


# ---------------------------------------------------------------- authenticator


async def test_authenticate(users_file: Path) -> None:
    authenticator = Authenticator(users_file)
    result = await authenticator.authenticate(ALICE, PASSWORD)
    assert result == AuthResult(ok=True, login=ALICE, addresses=frozenset({ALICE}))
    assert (await authenticator.authenticate("alice.martin@CHU-A.TEST", PASSWORD)).ok


async def test_wrong_password_and_unknown_login_look_the_same(users_file: Path) -> None:
    authenticator = Authenticator(users_file)
    wrong = await authenticator.authenticate(ALICE, PASSWORD + "!")
    unknown = await authenticator.authenticate("mallory@chu-a.test", PASSWORD)
    invalid = await authenticator.authenticate("bad login", PASSWORD)
    assert wrong == unknown == invalid == REFUSED
    assert type(wrong) is type(unknown) is AuthResult


async def test_unknown_login_costs_one_default_derivation(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[ScryptParameters] = []

    def spy(password: str, stored: ScryptHash) -> bool:
        seen.append(stored.parameters)
        return verify_password(password, stored)

    monkeypatch.setattr(users, "verify_password", spy)
    authenticator = Authenticator(users_file)
    assert await authenticator.authenticate("mallory@chu-a.test", PASSWORD) == REFUSED
    assert seen == [DEFAULT_PARAMETERS]


async def test_comparison_is_constant_time(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[int, int]] = []

    def spy(first: bytes, second: bytes) -> bool:
        calls.append((len(first), len(second)))
        return False  # the decision is compare_digest's: a "no" here refuses

    monkeypatch.setattr(passwords, "compare_digest", spy)
    authenticator = Authenticator(users_file)
    assert await authenticator.authenticate(ALICE, PASSWORD) == REFUSED
    assert calls == [(32, 32)]


async def test_verification_runs_in_the_executor(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[str] = []

    def spy(password: str, stored: ScryptHash) -> bool:
        threads.append(threading.current_thread().name)
        return verify_password(password, stored)

    monkeypatch.setattr(users, "verify_password", spy)
    with ThreadPoolExecutor(1, thread_name_prefix="scrypt") as executor:
        authenticator = Authenticator(users_file, executor=executor)
        assert (await authenticator.authenticate(ALICE, PASSWORD)).ok
    assert len(threads) == 1 and threads[0].startswith("scrypt")


async def test_concurrent_verifications_are_bounded(
    users_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = threading.Condition()
    active, peak, release = 0, 0, threading.Event()

    def blocking(password: str, stored: ScryptHash) -> bool:
        nonlocal active, peak
        with state:
            active += 1
            peak = max(peak, active)
            state.notify_all()
        release.wait(30)
        with state:
            active -= 1
        return False

    monkeypatch.setattr(users, "verify_password", blocking)
    with ThreadPoolExecutor(6) as executor:
        authenticator = Authenticator(users_file, executor=executor, max_concurrent=2)
        tasks = [asyncio.create_task(authenticator.authenticate(ALICE, "x")) for _ in range(6)]
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: _wait_for(state, lambda: active == 2))
        for _ in range(20):  # give the other four every chance to start (they must not)
            await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*tasks) == [REFUSED] * 6
    assert peak == 2


def _wait_for(state: threading.Condition, predicate: object) -> None:
    with state:
        assert state.wait_for(predicate, timeout=30)  # type: ignore[arg-type]


async def test_reload_on_change(users_file: Path, records: Records) -> None:
    authenticator = Authenticator(users_file)
    bob = user("bob@chu-a.test", "another long password")
    write_users_file(users_file, load_users(users_file).with_user(bob))
    assert (await authenticator.authenticate("bob@chu-a.test", "another long password")).ok
    assert authenticator.may_send_as("bob@chu-a.test", "bob@chu-a.test")
    assert ("users.reloaded", {"file": str(users_file), "users": 2}) in records.events

    new_alice = user(ALICE, "a brand new password")
    write_users_file(users_file, load_users(users_file).with_user(new_alice))
    assert await authenticator.authenticate(ALICE, PASSWORD) == REFUSED
    assert (await authenticator.authenticate(ALICE, "a brand new password")).ok

    write_users_file(users_file, load_users(users_file).without("bob@chu-a.test"))
    assert await authenticator.authenticate("bob@chu-a.test", "another long password") == REFUSED
    assert not authenticator.may_send_as("bob@chu-a.test", "bob@chu-a.test")


async def test_a_broken_file_keeps_the_last_good_table(users_file: Path, records: Records) -> None:
    authenticator = Authenticator(users_file)
    hashed = load_users(users_file).users[0].password_hash.encode()
    users_file.write_text(
        f'[[users]]\nlogin = 3\npassword_hash = "{hashed}"\naddresses = ["a@b.test"]\n'
    )
    assert (await authenticator.authenticate(ALICE, PASSWORD)).ok
    (event,) = [fields for name, fields in records.events if name == "users.reload_failed"]
    assert event["problem"] == "users.toml: users[0].login: expected a string"
    assert event["kept_users"] == 1
    users_file.unlink()
    assert (await authenticator.authenticate(ALICE, PASSWORD)).ok
    write_users_file(users_file, UserTable((user(ALICE, "after the repair"),)))
    assert (await authenticator.authenticate(ALICE, "after the repair")).ok


def test_a_missing_or_bad_file_stops_the_start(tmp_path: Path) -> None:
    with pytest.raises(UsersFileError, match="does not exist"):
        Authenticator(tmp_path / "users.toml")
    (tmp_path / "users.toml").write_text("users = 1\n")
    with pytest.raises(UsersFileError, match="expected an array of tables"):
        Authenticator(tmp_path / "users.toml")


def test_a_readable_file_is_logged(users_file: Path, records: Records) -> None:
    users_file.chmod(0o644)
    Authenticator(users_file)
    assert (
        "users.file_mode",
        {"file": str(users_file), "mode": "0644", "advice": "chmod 600"},
    ) in records.events


async def test_no_secret_in_the_log(users_file: Path, records: Records) -> None:
    authenticator = Authenticator(users_file)
    await authenticator.authenticate(ALICE, PASSWORD)
    await authenticator.authenticate(ALICE, "wrong password here")
    hashed = load_users(users_file).users[0].password_hash.encode()
    logged = repr(records.events)
    assert PASSWORD not in logged and "wrong password here" not in logged
    assert hashed not in logged and hashed.split("$")[-1] not in logged


async def test_a_failing_derivation_is_a_refusal(
    users_file: Path, monkeypatch: pytest.MonkeyPatch, records: Records
) -> None:
    def out_of_memory(password: str, stored: ScryptHash) -> bool:
        raise ValueError("[digital envelope routines] memory limit exceeded")

    monkeypatch.setattr(users, "verify_password", out_of_memory)
    authenticator = Authenticator(users_file)
    assert await authenticator.authenticate(ALICE, PASSWORD) == REFUSED
    assert ("users.verify_failed", {"login": ALICE, "error": "ValueError"}) in records.events
