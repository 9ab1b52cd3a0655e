"""Fixtures of the S/MIME CLI tests: an RSA development PKI, and ``cli`` which runs
``gateway.cli.main`` in-process with bytes on standard input and captures both outputs
(standard output as bytes: S/MIME output must keep its CRLF)."""

from __future__ import annotations

import io
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.cli import main
from gateway.pki.dev import DevPki
from tests.smime.keystore.support import make_pki


@dataclass(frozen=True)
class Run:
    status: int
    out: bytes
    err: str

    @property
    def err_lines(self) -> list[str]:
        return self.err.splitlines()


Cli = Callable[..., Run]


@pytest.fixture(scope="session")
def cli_pki(tmp_path_factory: pytest.TempPathFactory) -> DevPki:
    return make_pki(tmp_path_factory.mktemp("cli-pki"))


def make_cli(capture: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``run(*argv, stdin=b"")`` -> ``Run(status, out, err)``, in-process."""

    def run(*argv: str | Path, stdin: bytes = b"") -> Run:
        capture.readouterr()  # drop what an earlier run left
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(stdin)))
        status = main([str(arg) for arg in argv])
        captured = capture.readouterr()
        return Run(status, captured.out, captured.err.decode("utf-8", "replace"))

    return run


@pytest.fixture
def cli(capsysbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch) -> Cli:
    """``cli(*argv, stdin=b"")`` -> ``Run(status, out, err)``."""
    return make_cli(capsysbinary, monkeypatch)


def trust_args(pki: DevPki) -> list[str]:
    """--anchors/--intermediates/--crl for the dev PKI (hard-fail, local CRLs)."""
    return [
        "--anchors",
        str(pki.root_cert),
        "--intermediates",
        str(pki.intermediates),
        "--crl",
        str(pki.crl("personnes")),
        "--crl",
        str(pki.crl("root")),
    ]
