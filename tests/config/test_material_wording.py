"""The reason ``check_private_mode`` gives names who can reach the file as its mode says:
its group, others, or group and others; readable, or only accessible (write/search)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from gateway.config import material


@pytest.mark.parametrize(
    ("mode", "exposure"),
    [
        (0o640, "readable by its group"),
        (0o660, "readable by its group"),
        (0o604, "readable by others"),
        (0o644, "readable by group and others"),
        (0o666, "readable by group and others"),
        (0o620, "accessible by its group"),
        (0o601, "accessible by others"),
        (0o611, "accessible by group and others"),
        (0o642, "readable by its group and accessible by others"),
        (0o624, "accessible by its group and readable by others"),
    ],
    ids=lambda value: f"{value:04o}" if isinstance(value, int) else None,
)
def test_the_reason_says_who_can_reach_the_key(tmp_path: Path, mode: int, exposure: str) -> None:
    key = tmp_path / "mx.key"
    key.write_bytes(b"")
    os.chmod(key, mode)
    with pytest.raises(material.Unusable) as caught:
        material.check_private_mode(key)
    assert str(caught.value) == f"key file {key} is {exposure} (mode {mode:04o}); chmod 600"


def test_a_secret_file_gets_the_same_wording(tmp_path: Path) -> None:
    secret = tmp_path / "bind.pw"
    secret.write_bytes(b"pw\n")
    os.chmod(secret, 0o640)
    with pytest.raises(material.Unusable) as caught:
        material.check_secret_file(secret)
    assert str(caught.value) == (
        f"secret file {secret} is readable by its group (mode 0640); chmod 600"
    )


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_an_owner_only_file_passes(tmp_path: Path, mode: int) -> None:
    key = tmp_path / "mx.key"
    key.write_bytes(b"")
    os.chmod(key, mode)
    material.check_private_mode(key)


@pytest.mark.parametrize(
    ("mode", "who"),
    [(0o775, "its group"), (0o757, "others"), (0o777, "group and others")],
)
def test_a_shared_directory_names_who_can_write_in_it(tmp_path: Path, mode: int, who: str) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    directory.chmod(mode)
    with pytest.raises(material.Unusable) as raised:
        material.check_directory_target(directory)
    assert f"is writable by {who} (mode {mode:04o}); chmod 700" in str(raised.value)
