"""Queue ids: shape, order, uniqueness, deterministic children."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.spool.ids import (
    child_queue_id,
    is_queue_id,
    new_queue_id,
    parse_queue_id,
    queue_id_time,
)


def test_an_id_is_26_crockford_characters_and_a_safe_file_name() -> None:
    queue_id = new_queue_id()
    assert len(queue_id) == 26
    assert is_queue_id(queue_id)
    assert not set(queue_id) & set("ILOU/.\\ abcdefghijklmnopqrstuvwxyz")


def test_ids_sort_by_time_and_give_it_back() -> None:
    earlier = new_queue_id(1_700_000_000.000)
    later = new_queue_id(1_700_000_000.001)
    assert earlier < later
    assert queue_id_time(earlier) == datetime.fromtimestamp(1_700_000_000, UTC)


def test_ids_are_unique_within_one_millisecond() -> None:
    ids = {new_queue_id(1_700_000_000.0) for _ in range(10_000)}
    assert len(ids) == 10_000


def test_a_child_id_is_deterministic_per_key_and_sorts_with_its_parent() -> None:
    parent = new_queue_id()
    first = child_queue_id(parent, "relay/clinique-b")
    assert first == child_queue_id(parent, "relay/clinique-b")
    assert first != child_queue_id(parent, "bcc-1")
    assert first != child_queue_id(new_queue_id(), "relay/clinique-b")
    assert is_queue_id(first)
    assert first[:10] == parent[:10]


@pytest.mark.parametrize("key", ["", "../x", "a b", "é", "-x", "x" * 129])
def test_a_bad_hand_off_key_is_refused(key: str) -> None:
    with pytest.raises(ValueError, match="hand-off key"):
        child_queue_id(new_queue_id(), key)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "01M8H4BQW0ZZ5NEQ3BDRMA3DY",
        "01M8H4BQW0ZZ5NEQ3BDRMA3DYI",
        "../../etc/passwd",
        "01m8h4bqw0zz5neq3bdrma3dym",
    ],
)
def test_parse_refuses_what_is_not_an_id(text: str) -> None:
    with pytest.raises(ValueError, match="not a queue id"):
        parse_queue_id(text)
