"""A client certificate's DN as the spool record and the audit trail keep it.

A certificate a trusted CA issued can carry a subject no record or audit value takes:
a line feed in a CN (the record refuses control characters) or 2,100 accented
characters (within the record's 4,096 characters, beyond the trail's 4 KiB of UTF-8).
With the DN recorded as ``rfc4514_string()`` wrote it, every message of such a client
failed (451 at each attempt). ``recorded_dn`` makes it printable and bounded; matching
uses the certificate's ``Name``, not this text.
"""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from gateway.audit import AuditEvent
from gateway.audit.event import utc_now
from gateway.smtp.session_identity import MAX_RECORDED_DN, recorded_dn
from gateway.spool import Envelope, Origin, Recipient
from gateway.spool.events import added_details
from gateway.spool.ids import new_queue_id
from gateway.spool.model import QueueRecord, RecordError, initial_state


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CHU A"),
        ]
    )


def _added_event(dn: str) -> AuditEvent:
    """``spool.added`` of an entry from a client with ``dn``, as the spool builds it."""
    now = utc_now()
    envelope = Envelope("a@clinique-b.test", (Recipient("b@chu-a.test"),))
    origin = Origin("mx", client_address="127.0.0.1", client_cert_dn=dn)
    record = QueueRecord(
        queue_id=new_queue_id(),
        parent=None,
        received=now,
        created=now,
        content_length=0,
        content_sha256="0" * 64,
        envelope=envelope,
        origin=origin,
        state=initial_state(envelope, now),
    )
    return AuditEvent("spool.added", details=added_details(record, None))


def test_an_ordinary_dn_is_recorded_as_rfc_4514_writes_it() -> None:
    name = _name("smtp.chu-a.test")
    assert recorded_dn(name) == name.rfc4514_string() == "O=CHU A,CN=smtp.chu-a.test"


def test_control_and_bidi_characters_become_hex_escapes_the_record_takes() -> None:
    name = _name("relay\nX-Injected: yes\u202e")
    with pytest.raises(RecordError):  # what every message of this client met before
        Origin("mx", client_cert_dn=name.rfc4514_string())
    dn = recorded_dn(name)
    assert dn == "O=CHU A,CN=relay\\0AX-Injected: yes\\E2\\80\\AE"
    assert _added_event(dn).details["client_dn"] == dn


def test_a_dn_past_the_trails_4_kib_is_cut_to_a_bounded_printable_text() -> None:
    name = x509.Name(
        [x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "é" * 60) for _ in range(35)]
    )
    with pytest.raises(ValueError):  # the trail refuses the raw DN: over 4 KiB of UTF-8
        _added_event(name.rfc4514_string())
    dn = recorded_dn(name)
    assert len(dn) == MAX_RECORDED_DN + 3 and dn.endswith("...")
    assert len(dn.encode("utf-8")) <= 4096
    assert _added_event(dn).details["client_dn"] == dn
