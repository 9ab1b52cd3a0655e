"""Password hashes of the submission logins: scrypt, in a self-describing string.

Role: make and check the ``password_hash`` values of ``conf/users.toml`` (pure
functions, no I/O; ``gateway.smtp.users`` calls them from an executor because one
check costs ~50 ms of CPU and 16 MiB of memory by design).

Format (the PHC string format, the same layout as passlib's ``scrypt`` hashes)::

    $scrypt$ln=14,r=8,p=1$<salt>$<hash>

- ``ln`` is log2 of the scrypt cost N, ``r`` the block size, ``p`` the
  parallelisation (RFC 7914 §2); ``salt`` and ``hash`` are standard base64
  (RFC 4648 §4) without ``=`` padding. New hashes use a 16-byte random salt
  (``secrets``) and a 32-byte derived key.
- Default parameters ``ln=14, r=8, p=1`` (N = 16384, 16 MiB of memory): measured on
  the project's 2-vCPU machine with ``hashlib.scrypt`` at 47 ms median (38 to 100 ms
  over 7 runs on a busy machine; 51 ms median, 47 to 83 ms, over 15 verifications at
  load 1.8); ``ln=15`` took 112 ms, ``ln=13`` 18 ms. The
  parameters travel with each hash, so raising them later only affects new hashes.
- Hashes read from the file are bounded before use (a hand-edited hash must not make
  one login attempt allocate gigabytes): ``10 <= ln <= 20``, ``1 <= r <= 32``,
  ``1 <= p <= 16``, memory ``128 * r * N <= 128 MiB``, ``N * p <= 2**20``, salt 8 to
  64 bytes, hash 16 to 64 bytes.
- argon2 (``$argon2id$...``) is recognised and refused with a clear message: no
  maintained argon2 library is installed with Missive (``hashlib`` has none), and
  none was added for it. Reset such a login with ``missive users passwd``.

Passwords (decisions):

- Compared after Unicode NFC normalisation, then UTF-8 (RFC 8265 §4.2, the
  OpaqueString profile that RFC 4616 PLAIN's SASLprep was replaced by), so the same
  password typed on two keyboards that compose accents differently still matches.
- A new password has at least ``MIN_LENGTH`` (12) characters, at most ``MAX_LENGTH``
  (1024), and no control character (C0, DEL, C1: they cannot be typed in a mail
  client's password field and would break the one-line stdin protocol of the CLI).
  No composition rules: length is what counts (NIST SP 800-63B §5.1.1.2).
- Verification never raises on a bad password: anything longer than ``MAX_LENGTH``
  is simply refused (bounded work per attempt).

Security notes: the derived key is compared with ``hmac.compare_digest`` (constant
time); nothing here logs, and no error message ever echoes a password or a hash.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import secrets
import unicodedata
from dataclasses import dataclass
from hmac import compare_digest

MIN_LENGTH = 12
MAX_LENGTH = 1024

SCHEME = "scrypt"
SALT_BYTES = 16
KEY_BYTES = 32
MAX_MEMORY = 128 * 1024 * 1024
MAX_WORK = 1 << 20

_HASH = re.compile(
    r"\$scrypt\$ln=(?P<ln>\d{1,2}),r=(?P<r>\d{1,2}),p=(?P<p>\d{1,2})"
    r"\$(?P<salt>[A-Za-z0-9+/]+)\$(?P<key>[A-Za-z0-9+/]+)"
)


class BadHash(ValueError):
    """A ``password_hash`` value that cannot be used; the message never quotes it."""


class BadPassword(ValueError):
    """A new password that the policy refuses (see module doc); never quotes it."""


@dataclass(frozen=True, slots=True)
class ScryptParameters:
    """scrypt cost parameters (RFC 7914 §2): N = 2**ln."""

    ln: int = 14
    r: int = 8
    p: int = 1

    @property
    def n(self) -> int:
        return 1 << self.ln

    @property
    def memory(self) -> int:
        """Bytes OpenSSL needs for one derivation (its own check, plus 64 KiB slack)."""
        return 128 * self.r * (self.n + self.p + 2) + (1 << 16)

    def check(self) -> None:
        """``BadHash`` unless the parameters are within the bounds of the module doc."""
        if not (10 <= self.ln <= 20 and 1 <= self.r <= 32 and 1 <= self.p <= 16):
            raise BadHash("scrypt parameters out of range (10<=ln<=20, 1<=r<=32, 1<=p<=16)")
        if 128 * self.r * self.n > MAX_MEMORY or self.n * self.p > MAX_WORK:
            raise BadHash("scrypt parameters too costly (memory over 128 MiB or N*p over 2**20)")


DEFAULT_PARAMETERS = ScryptParameters()


@dataclass(frozen=True, slots=True)
class ScryptHash:
    """A parsed ``$scrypt$`` string."""

    parameters: ScryptParameters
    salt: bytes
    key: bytes

    def encode(self) -> str:
        p = self.parameters
        return f"$scrypt$ln={p.ln},r={p.r},p={p.p}${_b64(self.salt)}${_b64(self.key)}"


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise BadHash(f"the {what} is not valid base64") from None


def parse_hash(text: str) -> ScryptHash:
    """Parse and bound a ``password_hash`` value; ``BadHash`` says what is wrong."""
    if text.startswith("$argon2"):
        raise BadHash(
            "argon2 hashes are not supported (no argon2 library is installed);"
            " set a new password with `missive users passwd`"
        )
    match = _HASH.fullmatch(text)
    if match is None:
        raise BadHash("expected a hash like $scrypt$ln=14,r=8,p=1$<salt>$<hash>")
    parameters = ScryptParameters(int(match["ln"]), int(match["r"]), int(match["p"]))
    parameters.check()
    salt, key = _unb64(match["salt"], "salt"), _unb64(match["key"], "hash")
    if not 8 <= len(salt) <= 64:
        raise BadHash("the salt must be 8 to 64 bytes")
    if not 16 <= len(key) <= 64:
        raise BadHash("the hash must be 16 to 64 bytes")
    return ScryptHash(parameters, salt, key)


def _password_bytes(password: str) -> bytes:
    return unicodedata.normalize("NFC", password).encode("utf-8")


def _derive(password: bytes, salt: bytes, parameters: ScryptParameters, length: int) -> bytes:
    return hashlib.scrypt(
        password,
        salt=salt,
        n=parameters.n,
        r=parameters.r,
        p=parameters.p,
        maxmem=parameters.memory,
        dklen=length,
    )


def check_new_password(password: str) -> None:
    """``BadPassword`` unless ``password`` meets the policy of the module doc."""
    length = len(unicodedata.normalize("NFC", password))
    if length == 0:
        raise BadPassword("the password is empty")
    if length < MIN_LENGTH:
        raise BadPassword(f"the password is too short ({length} characters, at least {MIN_LENGTH})")
    if length > MAX_LENGTH:
        raise BadPassword(f"the password is too long (more than {MAX_LENGTH} characters)")
    if any(unicodedata.category(char) == "Cc" for char in password):
        raise BadPassword("the password contains a control character")


def hash_password(password: str, parameters: ScryptParameters = DEFAULT_PARAMETERS) -> str:
    """A new ``$scrypt$`` string for ``password`` (the policy is the caller's business:
    ``check_new_password``); blocking, ~50 ms with the default parameters."""
    parameters.check()
    salt = secrets.token_bytes(SALT_BYTES)
    key = _derive(_password_bytes(password), salt, parameters, KEY_BYTES)
    return ScryptHash(parameters, salt, key).encode()


def verify_password(password: str, stored: ScryptHash) -> bool:
    """True if ``password`` derives to ``stored`` (constant-time comparison); blocking."""
    if len(password) > MAX_LENGTH:
        return False
    candidate = _derive(_password_bytes(password), stored.salt, stored.parameters, len(stored.key))
    return compare_digest(candidate, stored.key)
