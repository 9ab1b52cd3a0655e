"""``missive users add|passwd|list|remove``: files, modes, password input, exit status."""

from __future__ import annotations

import io
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import gateway.cli
from gateway.smtp import users_cli
from gateway.smtp.passwords import verify_password
from gateway.smtp.user_table import load_users
from tests.cli_runner import Run

PASSWORD = "correct horse battery staple"
ALICE = "alice.martin@chu-a.test"
REPOSITORY = Path(__file__).resolve().parents[2]


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def password_of(path: Path, login: str) -> Callable[[str], bool]:
    user = load_users(path).get(login)
    assert user is not None
    return lambda password: verify_password(password, user.password_hash)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_add_reads_stdin_and_writes_0600(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    old_umask = os.umask(0o022)
    try:
        status, out, err = missive("users", "add", ALICE, "--users-file", path,
                                   stdin=PASSWORD + "\n")  # fmt: skip
    finally:
        os.umask(old_umask)
    assert (status, err) == (0, "")
    assert out == f"users: added {ALICE} ({ALICE}) to {path}\n"
    assert mode(path) == 0o600
    assert password_of(path, ALICE)(PASSWORD)
    assert not password_of(path, ALICE)(PASSWORD + "\n")
    assert path.read_text().startswith("# Missive: logins of the submission listeners")
    assert PASSWORD not in path.read_text()


def test_add_with_addresses_and_crlf(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    status, _, _ = missive(
        "users", "add", "ALICE", "--users-file", path,
        "--address", "alice.martin@CHU-A.test", "--address", "Secretariat@chu-a.test",
        "--address", "alice.martin@chu-a.test",
        stdin=PASSWORD + "\r\n",
    )  # fmt: skip
    assert status == 0
    (user,) = load_users(path).users
    assert (user.login, user.addresses) == ("ALICE", (ALICE, "Secretariat@chu-a.test"))
    assert password_of(path, "ALICE")(PASSWORD)


@pytest.mark.parametrize(
    ("args", "stdin", "message"),
    [
        ((ALICE,), "", "users: the password is empty; nothing changed"),
        ((ALICE,), "short pw\n", "users: the password is too short (8 characters, at least 12)"),
        (("alice",), PASSWORD, "users: the login 'alice' is not a mail address: give --address"),
        ((ALICE, "--address", "x@"), PASSWORD, "users: invalid --address: "),
        (("bad login",), PASSWORD, "users: invalid login 'bad login': a login cannot contain"),
    ],
)
def test_add_refusals_write_nothing(
    missive: Run, tmp_path: Path, args: tuple[str, ...], stdin: str, message: str
) -> None:
    path = tmp_path / "users.toml"
    status, out, err = missive("users", "add", *args, "--users-file", path, stdin=stdin)
    assert (status, out) == (2, "")
    assert err.startswith(message) and len(err.splitlines()) == 1
    assert not path.exists()


def test_add_an_existing_login(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    assert missive("users", "add", ALICE, "--users-file", path, stdin=PASSWORD)[0] == 0
    before = path.read_bytes()
    status, _, err = missive("users", "add", "alice.martin@CHU-A.TEST", "--users-file", path,
                             stdin="another password!")  # fmt: skip
    assert status == 2
    assert err == f"users: {ALICE} already exists in {path}; use `missive users passwd`\n"
    assert path.read_bytes() == before


def test_add_to_a_missing_directory(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "users.toml"
    status, _, err = missive("users", "add", ALICE, "--users-file", path, stdin=PASSWORD)
    assert (status, err) == (2, f"users: directory {path.parent} does not exist\n")


def test_passwd(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    missive("users", "add", ALICE, "--users-file", path, "--address", "sec@chu-a.test",
            stdin=PASSWORD)  # fmt: skip
    path.chmod(0o644)
    status, out, err = missive("users", "passwd", ALICE, "--users-file", path,
                               stdin="a brand new password\n")  # fmt: skip
    assert (status, out, err) == (0, f"users: new password for {ALICE} in {path}\n", "")
    check = password_of(path, ALICE)
    assert check("a brand new password") and not check(PASSWORD)
    assert load_users(path).users[0].addresses == ("sec@chu-a.test",)
    assert mode(path) == 0o600


def test_passwd_and_remove_of_an_unknown_login(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    missive("users", "add", ALICE, "--users-file", path, stdin=PASSWORD)
    for command in ("passwd", "remove"):
        status, _, err = missive("users", command, "bob@chu-a.test", "--users-file", path,
                                 stdin=PASSWORD)  # fmt: skip
        assert (status, err) == (2, f"users: no login bob@chu-a.test in {path}\n")


def test_remove(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    missive("users", "add", ALICE, "--users-file", path, stdin=PASSWORD)
    missive("users", "add", "bob@chu-a.test", "--users-file", path, stdin=PASSWORD)
    status, out, _ = missive("users", "remove", "Bob@CHU-A.test", "--users-file", path)
    assert (status, out) == (2, "")  # the local part is exact: no such login
    status, out, _ = missive("users", "remove", "bob@CHU-A.test", "--users-file", path)
    assert (status, out) == (0, f"users: removed bob@chu-a.test from {path}\n")
    assert [user.login for user in load_users(path).users] == [ALICE]
    assert mode(path) == 0o600


def test_list(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    missive("users", "add", ALICE, "--users-file", path, "--address", ALICE,
            "--address", "sec@chu-a.test", stdin=PASSWORD)  # fmt: skip
    missive("users", "add", "bob@chu-a.test", "--users-file", path, stdin=PASSWORD)
    status, out, _ = missive("users", "list", "--users-file", path)
    assert (status, out) == (
        0,
        f"{ALICE}\t{ALICE} sec@chu-a.test\nbob@chu-a.test\tbob@chu-a.test\n",
    )
    status, out, _ = missive("users", "list", "--json", "--users-file", path)
    assert json.loads(out) == {
        "users_file": str(path),
        "users": [
            {"login": ALICE, "addresses": [ALICE, "sec@chu-a.test"], "scheme": "scrypt"},
            {"login": "bob@chu-a.test", "addresses": ["bob@chu-a.test"], "scheme": "scrypt"},
        ],
    }
    assert "$scrypt$" not in out


def test_broken_or_missing_file_exits_2(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    status, out, err = missive("users", "list", "--users-file", path)
    assert (status, out, err) == (2, "", f"users.toml: users file {path} does not exist\n")
    path.write_text('[[users]]\nlogin = "a@b.test"\npassword_hash = "secret"\naddresses = [1]\n')
    status, out, err = missive("users", "add", ALICE, "--users-file", path, stdin=PASSWORD)
    assert (status, out) == (2, "")
    assert err.splitlines() == [
        "users.toml: users[0].password_hash: expected a hash like"
        " $scrypt$ln=14,r=8,p=1$<salt>$<hash>",
        "users.toml: users[0].addresses[0]: expected a string",
    ]
    assert "Traceback" not in err


def test_terminal_asks_twice(missive: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "users.toml"
    answers = iter([PASSWORD, PASSWORD, PASSWORD, "something else"])
    prompts: list[str] = []

    def getpass(prompt: str = "") -> str:
        prompts.append(prompt)
        return next(answers)

    monkeypatch.setattr(users_cli.getpass, "getpass", getpass)
    monkeypatch.setattr(sys, "stdin", FakeTerminal())
    assert gateway.cli.main(["users", "add", ALICE, "--users-file", str(path)]) == 0
    assert prompts == ["New password: ", "Repeat the password: "]
    assert password_of(path, ALICE)(PASSWORD)
    assert gateway.cli.main(["users", "passwd", ALICE, "--users-file", str(path)]) == 2
    assert password_of(path, ALICE)(PASSWORD)


def test_file_from_config(missive: Run, tmp_path: Path) -> None:
    """Only gateway.home and [auth] are read: no TLS material needed yet."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "conf").mkdir()
    config = tmp_path / "etc" / "missive.toml"
    config.write_text('[gateway]\nhome = ".."\n[auth]\nusers_file = "conf/logins.toml"\n'
                      '[tls]\ncertificate = "missing.crt"\n')  # fmt: skip
    status, _, err = missive("users", "add", ALICE, "--config", config, stdin=PASSWORD)
    assert (status, err) == (0, "")
    assert load_users(tmp_path / "conf" / "logins.toml").get(ALICE) is not None
    config.write_text("[auth]\nusers_file = 3\n")
    status, _, err = missive("users", "list", "--config", config)
    assert (status, err) == (2, "missive.toml: auth.users_file: expected a path, got 3\n")


def test_default_file_is_conf_users_toml(
    missive: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "conf").mkdir()
    monkeypatch.chdir(tmp_path)
    assert missive("users", "add", ALICE, stdin=PASSWORD)[0] == 0
    assert load_users(tmp_path / "conf" / "users.toml").get(ALICE) is not None


def test_shipped_sample_keeps_its_header(missive: Run, tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    shipped = (REPOSITORY / "conf" / "users.toml").read_text()
    path.write_text(shipped)
    assert missive("users", "add", ALICE, "--users-file", path, stdin=PASSWORD)[0] == 0
    text = path.read_text()
    assert text.startswith(shipped.rstrip("\n") + "\n\n[[users]]\n")


def test_real_process_reads_one_line_of_stdin(tmp_path: Path) -> None:
    path = tmp_path / "users.toml"
    completed = subprocess.run(
        [sys.executable, "-m", "gateway", "users", "add", ALICE, "--users-file", str(path)],
        input=f"{PASSWORD}\nignored second line\n".encode(),
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert (completed.returncode, completed.stderr) == (0, b"")
    assert mode(path) == 0o600
    assert password_of(path, ALICE)(PASSWORD)
