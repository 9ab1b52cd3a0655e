"""Drive the real S/MIME programs of the interop tests: OpenSSL ``cms``, GnuPG ``gpgsm``
and NSS ``cmsutil`` (the CMS library of Thunderbird).

Role: each class wraps one program in its own private temp dir under /tmp (mode 0700,
removed by ``close()``; every class is also a context manager). Inputs and outputs are
raw bytes; the CMS in and out is DER (raw ``ContentInfo``, what NSS and gpgsm speak)
unless a method says otherwise. A failing program raises ``PeerToolError`` carrying the
command, its exit status and stderr (plus the status lines for gpgsm); nothing here
returns a half result. Each run is bounded by ``TOOL_TIMEOUT`` so a program that waits
for a pinentry or a terminal fails instead of hanging the suite. A missing program skips
the test locally and fails it under ``CI=true`` (``require_binary``).

Facts these helpers rely on, checked on this system (Debian 12: OpenSSL 3.0.19,
GnuPG 2.2.40, NSS 3.87):

OpenSSL ``cms``
- ``-sign`` is detached unless ``-nodetach``; ``-binary`` keeps the bytes as given
  (without it, text is canonicalised to CRLF before hashing);
- ``-encrypt -aes-128-gcm/-aes-256-gcm`` makes AuthEnvelopedData (RFC 5083/5084);
  ``-recip CERT -keyopt rsa_padding_mode:oaep`` makes RSA-OAEP (RFC 8017/3560) for the
  ``-recip`` it follows; ``-des3`` is 3DES.

GnuPG ``gpgsm``
- needs a short private ``GNUPGHOME`` (unix socket paths are limited to 108 bytes),
  ``--batch``, ``allow-loopback-pinentry`` in gpg-agent.conf and ``--pinentry-mode
  loopback``; gpgsm.conf has ``disable-crl-checks`` and ``disable-policy-checks`` (test
  CAs have neither CRL fetching nor the usual policies) and ``disable-dirmngr`` (so no
  dirmngr is started and nothing is looked up on the network);
- PKCS#12 import only works with legacy algorithms and an empty passphrase: ``openssl
  pkcs12 -export -certpbe PBE-SHA1-3DES -keypbe PBE-SHA1-3DES -macalg sha1 -passout
  pass:`` (OpenSSL 3's default AES PKCS#12 fails with "error parsing or decrypting the
  PKCS#12 file"). Even so gpgsm refuses about 1 export in 75 with that same message
  (after "possibly bad passphrase given" or "data error at
  shrouded_key_bag.decrypted-text"; 2 of 150 exports of one certificate here): the same
  file always fails, a new export (new salt and IV) imports, so ``import_identity``
  exports again and retries;
- a root is trusted by a ``<SHA-1 fingerprint> S relax`` line in ``trustlist.txt``;
- ``--decrypt`` exits with status **2 although it decrypted** when the message also
  has a recipient whose certificate (or its issuer) it does not know: success is read
  from the ``DECRYPTION_OKAY`` status line, never from the exit status alone; it cannot
  decrypt recipients identified by subjectKeyIdentifier (``openssl cms -keyid``), nor
  OAEP, GCM or ECDH (2.2.x);
- the agent it starts is stopped with ``gpgconf --kill all`` (same ``GNUPGHOME``) at
  ``close()``, and its PID is checked gone.

NSS ``cmsutil``
- own database: ``certutil -N -d sql:DIR --empty-password``; identities arrive as
  PKCS#12 through ``pk12util`` (OpenSSL 3's default AES PKCS#12 is fine here); roots are
  trusted with ``certutil -A -t C,C,C``. NSS gives every certificate with the same
  subject DN the same nickname: a signature and an encryption certificate of one person
  share the nickname of the first one imported, and ``-N`` picks the one whose key usage
  fits;
- ``-S`` without ``-Y`` adds an encryptionKeyPreference for the *signing* certificate
  and fails (``SEC_ERROR_INADEQUATE_KEY_USAGE``) when it lacks keyEncipherment, as
  IGC-Santé-style signature certificates do: ``-Y NONE`` or the encryption nickname;
- ``-D`` exits 0 even when a signature is bad or untrusted: the verdict is in the
  ``-h 1`` header lines (``signer0.status=GoodSignature``, ``DigestMismatch``,
  ``SigningCertNotTrusted``...), which ``verify`` parses; NSS 3.87 cannot decrypt
  RSA-OAEP, ECDH or AuthEnvelopedData.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.peers.procs import require_binary

#: Upper bound for one run of a program (a prompt waiting for a terminal fails here).
TOOL_TIMEOUT = 60.0
#: Fresh PKCS#12 exports tried before gpgsm's import is reported as failed.
PKCS12_ATTEMPTS = 5
#: How long ``Gpgsm.close`` waits for the agent to exit before it is killed.
AGENT_EXIT_TIMEOUT = 10.0

CmsFormat = Literal["DER", "PEM", "SMIME"]

#: Content ciphers ``OpenSSLCms.encrypt`` accepts (GCM ones make AuthEnvelopedData).
OPENSSL_CIPHERS = frozenset(
    {
        "aes-128-cbc",
        "aes-192-cbc",
        "aes-256-cbc",
        "aes-128-gcm",
        "aes-192-gcm",
        "aes-256-gcm",
        "des3",
    }
)


#: des-ede3-cbc (RFC 8018 §B.2.2), for ``Gpgsm.encrypt_with_cipher``.
GPGSM_3DES_OID = "1.2.840.113549.3.7"


class PeerToolError(RuntimeError):
    """A program failed; ``str()`` gives the command, exit status and stderr tail."""

    def __init__(
        self, argv: Sequence[str], returncode: int | None, stderr: str, detail: str = ""
    ) -> None:
        self.argv = tuple(str(a) for a in argv)
        self.returncode = returncode
        self.stderr = stderr
        status = "timed out" if returncode is None else f"exited with status {returncode}"
        text = f"{' '.join(self.argv)} {status}"
        if detail:
            text += f": {detail}"
        if stderr.strip():
            text += f"\n{stderr.strip()[-3000:]}"
        super().__init__(text)


def run_tool(
    argv: Sequence[str | Path],
    *,
    stdin: bytes = b"",
    env: Mapping[str, str] | None = None,
    accept: Sequence[int] = (0,),
) -> subprocess.CompletedProcess[bytes]:
    """Run a program to completion (bounded by ``TOOL_TIMEOUT``); raise unless its exit
    status is in ``accept``."""
    command = [str(part) for part in argv]
    try:
        result = subprocess.run(
            command,
            input=stdin,
            capture_output=True,
            env=dict(env) if env else None,
            timeout=TOOL_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        stderr = (error.stderr or b"").decode("utf-8", "replace")
        raise PeerToolError(command, None, stderr) from error
    if result.returncode not in accept:
        raise PeerToolError(command, result.returncode, result.stderr.decode("utf-8", "replace"))
    return result


def sha1_fingerprint(cert_pem_or_der: Path) -> str:
    """Upper-case hex SHA-1 fingerprint of a certificate file (PEM or DER), as gpgsm's
    trustlist.txt wants it."""
    data = cert_pem_or_der.read_bytes()
    cert = (
        x509.load_pem_x509_certificate(data)
        if b"-----BEGIN" in data
        else x509.load_der_x509_certificate(data)
    )
    # gpgsm's trustlist.txt names roots by their SHA-1 fingerprint: an identifier here.
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # noqa: S303


def export_pkcs12(
    cert: Path,
    key: Path,
    out: Path,
    *,
    name: str,
    chain: Path | None = None,
    legacy: bool = False,
) -> Path:
    """Write an unprotected PKCS#12 (empty password) with ``openssl pkcs12 -export``.

    ``legacy`` selects PBE-SHA1-3DES and a SHA-1 MAC (what gpgsm 2.2 can read).
    """
    argv: list[str | Path] = [
        require_binary("openssl"),
        "pkcs12",
        "-export",
        "-in",
        cert,
        "-inkey",
        key,
        "-out",
        out,
        "-passout",
        "pass:",
        "-name",
        name,
    ]
    if chain is not None:
        argv += ["-certfile", chain]
    if legacy:
        argv += ["-certpbe", "PBE-SHA1-3DES", "-keypbe", "PBE-SHA1-3DES", "-macalg", "sha1"]
    run_tool(argv)
    return out


class _ToolHome:
    """A private temp dir (0700) with numbered scratch files; ``close()`` removes it."""

    def __init__(self, prefix: str) -> None:
        self.workdir = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
        self._counter = itertools.count(1)
        self._closed = False

    def _scratch(self, stem: str, data: bytes | None = None) -> Path:
        path = self.workdir / f"{next(self._counter):03d}-{stem}"
        if data is not None:
            path.write_bytes(data)
        return path

    def _shutdown(self) -> None:
        """Stop what the program left running (overridden by Gpgsm)."""

    def close(self) -> None:
        """Stop what was started and remove the directory (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._shutdown()
        finally:
            shutil.rmtree(self.workdir)

    def __enter__(self) -> _ToolHome:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class OpenSSLCms(_ToolHome):
    """``openssl cms``: sign, verify, encrypt, decrypt (keys and certificates by path)."""

    def __init__(self) -> None:
        self.openssl = require_binary("openssl")
        super().__init__("mv-ossl-")

    def __enter__(self) -> OpenSSLCms:
        return self

    def _cms(self, *args: str | Path) -> None:
        run_tool([self.openssl, "cms", *args])

    def sign(
        self,
        content: bytes,
        signer_cert: Path,
        signer_key: Path,
        *,
        chain: Path | None = None,
        detached: bool = False,
        binary: bool = True,
        outform: CmsFormat = "DER",
    ) -> bytes:
        """SignedData over ``content``; ``chain`` (PEM) adds the intermediates."""
        source, out = self._scratch("content", content), self._scratch("signed")
        args: list[str | Path] = [
            "-sign",
            "-in",
            source,
            "-signer",
            signer_cert,
            "-inkey",
            signer_key,
            "-outform",
            outform,
            "-out",
            out,
        ]
        if chain is not None:
            args += ["-certfile", chain]
        if not detached:
            args.append("-nodetach")
        if binary:
            args.append("-binary")
        self._cms(*args)
        return out.read_bytes()

    def verify(
        self,
        message: bytes,
        ca_file: Path,
        *,
        content: bytes | None = None,
        untrusted: Path | None = None,
        purpose: str = "smimesign",
        inform: CmsFormat = "DER",
        binary: bool = True,
    ) -> bytes:
        """Verify against ``ca_file`` (path validation and ``purpose``); return the
        signed content (``content`` for a detached signature). Raises if invalid."""
        source, out = self._scratch("signed", message), self._scratch("verified")
        args: list[str | Path] = [
            "-verify",
            "-in",
            source,
            "-inform",
            inform,
            "-CAfile",
            ca_file,
            "-purpose",
            purpose,
            "-out",
            out,
        ]
        if content is not None:
            args += ["-content", self._scratch("detached-content", content)]
        if untrusted is not None:
            args += ["-certfile", untrusted]
        if binary:
            args.append("-binary")
        self._cms(*args)
        return out.read_bytes()

    def encrypt(
        self,
        content: bytes,
        recipients: Sequence[Path],
        *,
        cipher: str = "aes-256-cbc",
        oaep: bool = False,
        binary: bool = True,
        outform: CmsFormat = "DER",
    ) -> bytes:
        """EnvelopedData (AuthEnvelopedData for GCM) to every recipient certificate."""
        if cipher not in OPENSSL_CIPHERS:
            raise ValueError(f"cipher must be one of {sorted(OPENSSL_CIPHERS)}, not {cipher!r}")
        if not recipients:
            raise ValueError("at least one recipient certificate is needed")
        source, out = self._scratch("content", content), self._scratch("enveloped")
        args: list[str | Path] = [
            "-encrypt",
            "-in",
            source,
            f"-{cipher}",
            "-outform",
            outform,
            "-out",
            out,
        ]
        for recipient in recipients:
            args += ["-recip", recipient]
            if oaep:
                args += ["-keyopt", "rsa_padding_mode:oaep"]
        if binary:
            args.append("-binary")
        self._cms(*args)
        return out.read_bytes()

    def decrypt(
        self,
        message: bytes,
        recipient_cert: Path,
        recipient_key: Path,
        *,
        inform: CmsFormat = "DER",
        binary: bool = True,
    ) -> bytes:
        """Decrypt with one recipient's certificate and key; return the content."""
        source, out = self._scratch("enveloped", message), self._scratch("decrypted")
        args: list[str | Path] = [
            "-decrypt",
            "-in",
            source,
            "-inform",
            inform,
            "-recip",
            recipient_cert,
            "-inkey",
            recipient_key,
            "-out",
            out,
        ]
        if binary:
            args.append("-binary")
        self._cms(*args)
        return out.read_bytes()


_GPGSM_AGENT_CONF = "allow-loopback-pinentry\n"
_PKCS12_REFUSED = "error parsing or decrypting the PKCS#12 file"
_GPGSM_CONF = "disable-crl-checks\ndisable-policy-checks\ndisable-dirmngr\n"
_BAD_SIGNATURE_STATUS = (
    "BADSIG",
    "ERRSIG",
    "EXPSIG",
    "EXPKEYSIG",
    "REVKEYSIG",
    "TRUST_NEVER",
    "TRUST_UNDEFINED",
)


def _status_lines(stdout: bytes) -> list[list[str]]:
    """``[GNUPG:] KEYWORD args`` lines from ``--status-fd 1``, split into words."""
    lines = []
    for raw in stdout.decode("utf-8", "replace").splitlines():
        if raw.startswith("[GNUPG:] "):
            lines.append(raw[len("[GNUPG:] ") :].split())
    return lines


def _keywords(status: list[list[str]]) -> list[str]:
    return [words[0] for words in status if words]


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (absent or a zombie waiting to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8", errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return True
    return stat[stat.rindex(")") + 2 :].split()[0] in ("Z", "X")


class Gpgsm(_ToolHome):
    """``gpgsm`` with its own short ``GNUPGHOME``; identities by e-mail address."""

    def __init__(self) -> None:
        self.gpgsm = require_binary("gpgsm")
        self.gpgconf = require_binary("gpgconf")
        self.connect_agent = require_binary("gpg-connect-agent")
        super().__init__("mv-g-")
        self.home = self.workdir
        (self.home / "gpg-agent.conf").write_text(_GPGSM_AGENT_CONF, encoding="ascii")
        (self.home / "gpgsm.conf").write_text(_GPGSM_CONF, encoding="ascii")
        self.env = {**os.environ, "GNUPGHOME": str(self.home), "LC_ALL": "C"}

    def __enter__(self) -> Gpgsm:
        return self

    def _run(
        self,
        *args: str | Path,
        accept: Sequence[int] = (0,),
    ) -> tuple[subprocess.CompletedProcess[bytes], list[list[str]]]:
        argv: list[str | Path] = [
            self.gpgsm,
            "--batch",
            "--status-fd",
            "1",
            "--pinentry-mode",
            "loopback",
            "--passphrase-fd",
            "0",
            *args,
        ]
        result = run_tool(argv, stdin=b"\n", env=self.env, accept=accept)
        return result, _status_lines(result.stdout)

    def import_certificate(self, cert: Path) -> None:
        """Add a certificate (PEM or DER, possibly several) to the keybox."""
        self._run("--import", cert)

    def import_identity(self, cert: Path, key: Path, *, chain: Path | None = None) -> None:
        """Import a certificate with its private key (through a legacy PKCS#12).

        A refused PKCS#12 ("possibly bad passphrase given", see the module docstring)
        is exported again with a fresh salt, up to ``PKCS12_ATTEMPTS`` times.
        """
        for attempt in range(1, PKCS12_ATTEMPTS + 1):
            p12 = export_pkcs12(
                cert, key, self._scratch("identity.p12"), name=cert.stem, chain=chain, legacy=True
            )
            try:
                self._import_pkcs12(p12)
                return
            except PeerToolError as error:
                if attempt == PKCS12_ATTEMPTS or _PKCS12_REFUSED not in error.stderr:
                    raise

    def _import_pkcs12(self, p12: Path) -> None:
        result, status = self._run("--import", p12, accept=(0, 1, 2))
        for words in status:
            if words[0] == "IMPORT_RES" and len(words) > 12:
                secret_read, secret_imported, secret_known = map(int, words[10:13])
                if secret_read >= 1 and secret_imported + secret_known >= 1:
                    return
        raise PeerToolError(
            [self.gpgsm, "--import", str(p12)],
            result.returncode,
            result.stderr.decode("utf-8", "replace"),
            "no secret key imported",
        )

    def trust_root(self, root_cert: Path) -> str:
        """Import a root and mark it trusted in trustlist.txt; return its fingerprint."""
        self.import_certificate(root_cert)
        fingerprint = sha1_fingerprint(root_cert)
        with (self.home / "trustlist.txt").open("a", encoding="ascii") as trustlist:
            trustlist.write(f"{fingerprint} S relax\n")
        run_tool([self.gpgconf, "--reload", "gpg-agent"], env=self.env)
        return fingerprint

    def encrypt(self, content: bytes, recipients: Sequence[str]) -> bytes:
        """EnvelopedData (AES-CBC, RSA PKCS#1 v1.5) to the certificates of ``recipients``."""
        args: list[str | Path] = ["--encrypt"]
        for recipient in recipients:
            args += ["-r", recipient]
        out = self._scratch("enveloped")
        self._run(*args, "--output", out, self._scratch("content", content))
        return out.read_bytes()

    def encrypt_with_cipher(
        self, content: bytes, recipients: Sequence[str], cipher_oid: str
    ) -> bytes:
        """EnvelopedData as ``encrypt`` but with the content cipher named by its OID
        (``--cipher-algo``): gpgsm 2.2 still writes ``GPGSM_3DES_OID`` (3DES) that way."""
        args: list[str | Path] = ["--encrypt", "--cipher-algo", cipher_oid]
        for recipient in recipients:
            args += ["-r", recipient]
        out = self._scratch("enveloped")
        self._run(*args, "--output", out, self._scratch("content", content))
        return out.read_bytes()

    def decrypt(self, message: bytes) -> bytes:
        """Decrypt with a key in the keybox; success is ``DECRYPTION_OKAY`` (see module
        docstring: exit status 2 is normal when another recipient is unknown)."""
        out = self._scratch("decrypted")
        result, status = self._run(
            "--decrypt", "--output", out, self._scratch("enveloped", message), accept=(0, 2)
        )
        keywords = _keywords(status)
        if "DECRYPTION_OKAY" not in keywords or "DECRYPTION_FAILED" in keywords:
            raise PeerToolError(
                [self.gpgsm, "--decrypt"],
                result.returncode,
                result.stderr.decode("utf-8", "replace"),
                f"status {keywords}",
            )
        return out.read_bytes()

    def sign(self, content: bytes, signer: str, *, detached: bool = False) -> bytes:
        """SignedData by ``signer``'s signing key, with the whole chain it knows."""
        out = self._scratch("signed")
        command = "--detach-sign" if detached else "--sign"
        _, status = self._run(
            command,
            "-u",
            signer,
            "--include-certs",
            "-1",
            "--output",
            out,
            self._scratch("content", content),
        )
        if "SIG_CREATED" not in _keywords(status):
            raise PeerToolError([self.gpgsm, command], 0, "", f"no SIG_CREATED in {status}")
        return out.read_bytes()

    def verify(self, message: bytes, *, content: bytes | None = None) -> bytes:
        """Check every signature is good and its chain fully trusted; return the content."""
        signed = self._scratch("signed", message)
        if content is None:
            out = self._scratch("verified")
            result, status = self._run("--verify", "--output", out, signed, accept=(0, 1, 2))
        else:
            out = self._scratch("detached-content", content)
            result, status = self._run("--verify", signed, out, accept=(0, 1, 2))
        keywords = _keywords(status)
        signatures = keywords.count("NEWSIG")
        trusted = keywords.count("TRUST_FULLY") + keywords.count("TRUST_ULTIMATE")
        good = (
            result.returncode == 0
            and signatures >= 1
            and keywords.count("GOODSIG") == signatures
            and trusted == signatures
            and not any(k in _BAD_SIGNATURE_STATUS for k in keywords)
        )
        if not good:
            raise PeerToolError(
                [self.gpgsm, "--verify"],
                result.returncode,
                result.stderr.decode("utf-8", "replace"),
                f"status {keywords}",
            )
        return out.read_bytes()

    def agent_pid(self) -> int | None:
        """PID of the gpg-agent serving this home, or None when none runs."""
        result = run_tool(
            [self.connect_agent, "--no-autostart", "getinfo pid", "/bye"],
            env=self.env,
            accept=(0, 1),
        )
        for line in result.stdout.decode("ascii", "replace").splitlines():
            if line.startswith("D ") and line[2:].strip().isdigit():
                return int(line[2:].strip())
        return None

    def _shutdown(self) -> None:
        """``gpgconf --kill all``, then make sure the agent's PID is gone (SIGKILL if not)."""
        pid = self.agent_pid()
        run_tool([self.gpgconf, "--kill", "all"], env=self.env)
        if pid is None:
            return
        deadline = time.monotonic() + AGENT_EXIT_TIMEOUT
        while not process_gone(pid):
            if time.monotonic() >= deadline:
                os.kill(pid, signal.SIGKILL)
                return
            time.sleep(0.02)


_NSS_SIGNER_STATUS = re.compile(r"signer(\d+)\.status=(\w+)")
_NSS_SIGNER_COUNT = re.compile(r"nsigners=(\d+)")


class NssCmsutil(_ToolHome):
    """NSS ``cmsutil`` with its own certificate/key database (``sql:DIR``)."""

    def __init__(self) -> None:
        self.cmsutil = require_binary("cmsutil")
        self.certutil = require_binary("certutil")
        self.pk12util = require_binary("pk12util")
        super().__init__("mv-nss-")
        self.db = f"sql:{self.workdir}"
        run_tool([self.certutil, "-N", "-d", self.db, "--empty-password"])

    def __enter__(self) -> NssCmsutil:
        return self

    def import_identity(
        self, cert: Path, key: Path, *, nickname: str, chain: Path | None = None
    ) -> None:
        """Import a certificate with its private key (PKCS#12 through pk12util)."""
        p12 = export_pkcs12(cert, key, self._scratch("identity.p12"), name=nickname, chain=chain)
        run_tool([self.pk12util, "-i", p12, "-d", self.db, "-W", ""])

    def import_certificate(self, cert: Path, nickname: str, trust: str = ",,") -> None:
        """Add a certificate (recipient or intermediate) with NSS trust flags."""
        run_tool([self.certutil, "-A", "-d", self.db, "-n", nickname, "-t", trust, "-i", cert])

    def trust_root(self, root_cert: Path, nickname: str = "root") -> None:
        """Trust a root for TLS, S/MIME and code signing (``C,C,C``)."""
        self.import_certificate(root_cert, nickname, "C,C,C")

    def encrypt(self, content: bytes, recipients: Sequence[str]) -> bytes:
        """EnvelopedData (BER) to recipients named by e-mail address or nickname."""
        out = self._scratch("enveloped")
        run_tool(
            [
                self.cmsutil,
                "-E",
                "-d",
                self.db,
                "-r",
                ",".join(recipients),
                "-i",
                self._scratch("content", content),
                "-o",
                out,
            ]
        )
        return out.read_bytes()

    def decrypt(self, message: bytes) -> bytes:
        """Decrypt with whichever private key in the database matches a recipient."""
        out = self._scratch("decrypted")
        run_tool(
            [
                self.cmsutil,
                "-D",
                "-d",
                self.db,
                "-i",
                self._scratch("enveloped", message),
                "-o",
                out,
            ]
        )
        return out.read_bytes()

    def sign(
        self,
        content: bytes,
        nickname: str,
        *,
        detached: bool = False,
        encryption_key_preference: str | None = None,
    ) -> bytes:
        """SignedData with signing time and SMIMECapabilities (``-G -P``); the
        encryptionKeyPreference names ``encryption_key_preference`` or is omitted."""
        out = self._scratch("signed")
        argv: list[str | Path] = [
            self.cmsutil,
            "-S",
            "-d",
            self.db,
            "-N",
            nickname,
            "-G",
            "-P",
            "-Y",
            encryption_key_preference or "NONE",
        ]
        if detached:
            argv.append("-T")
        run_tool([*argv, "-i", self._scratch("content", content), "-o", out])
        return out.read_bytes()

    def signer_statuses(self, message: bytes, *, content: bytes | None = None) -> list[str]:
        """NSS's verdict per signer (``GoodSignature``, ``DigestMismatch``, ...)."""
        report = self._scratch("verify-report")
        argv: list[str | Path] = [
            self.cmsutil,
            "-D",
            "-d",
            self.db,
            "-h",
            "1",
            "-n",
            "-i",
            self._scratch("signed", message),
            "-o",
            report,
        ]
        if content is not None:
            argv += ["-c", self._scratch("detached-content", content)]
        run_tool(argv)
        text = report.read_text(encoding="utf-8", errors="replace")
        count = _NSS_SIGNER_COUNT.search(text)
        statuses = dict(_NSS_SIGNER_STATUS.findall(text))
        expected = int(count.group(1)) if count else 0
        return [statuses.get(str(index), "Missing") for index in range(expected)]

    def verify(self, message: bytes, *, content: bytes | None = None) -> bytes:
        """Require every signer to be ``GoodSignature``; return the signed content."""
        statuses = self.signer_statuses(message, content=content)
        if not statuses or any(status != "GoodSignature" for status in statuses):
            raise PeerToolError(
                [self.cmsutil, "-D", "-h", "1"],
                0,
                "",
                f"signer statuses {statuses or 'none (not signed data?)'}",
            )
        if content is not None:
            return content
        out = self._scratch("verified")
        run_tool(
            [self.cmsutil, "-D", "-d", self.db, "-i", self._scratch("signed", message), "-o", out]
        )
        return out.read_bytes()
