"""``gateway.smtp.session`` split by concern: the names it exported before stay importable
from it (the same objects as in their new modules), and the stage base classes (DATA,
identity) hold no command aiosmtpd would look for: every ``smtp_*`` and ``auth_*`` method
is on ``MissiveSMTP`` itself."""

from __future__ import annotations

import gateway.smtp.session as session
from gateway.smtp import session_data, session_settings
from gateway.smtp.session_data import DataStage
from gateway.smtp.session_identity import IdentityStage

SETTINGS_NAMES = (
    "AuditRecorder",
    "AuthOutcome",
    "Gate",
    "MessageQueue",
    "MessageWriter",
    "PasswordAuthenticator",
    "SessionSettings",
)


def test_moved_names_are_re_exported_by_the_session_module() -> None:
    for name in SETTINGS_NAMES:
        assert getattr(session, name) is getattr(session_settings, name), name
        assert name in session.__all__
    assert session.read_block is session_data.read_block
    assert "read_block" in session.__all__


def test_the_stages_are_the_only_bases_and_define_no_command() -> None:
    assert session.MissiveSMTP.__bases__ == (IdentityStage, DataStage)
    for stage in (IdentityStage, DataStage):
        commands = [name for name in vars(stage) if name.startswith(("smtp_", "auth_"))]
        assert commands == [], stage
    own = vars(session.MissiveSMTP)
    for name in ("smtp_EHLO", "smtp_MAIL", "smtp_RCPT", "smtp_DATA", "smtp_AUTH", "smtp_STARTTLS"):
        assert name in own, name
    assert "auth_PLAIN" in own and "auth_LOGIN" in own
