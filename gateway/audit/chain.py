"""Verifying the hash chain, and the checkpoint records that retention leaves behind.

Role: a pure function over stored rows in ``seq`` order (``verify_rows``) that
recomputes every hash and reports the *first* bad record, plus the codec of the
checkpoint record that ``prune`` appends. No I/O: the store feeds it rows.

What is detected, at the first record where it shows:

- an edited record (any column): its recomputed hash differs from the stored one;
- a deleted record: a gap in ``seq``; at the start of the trail, records missing
  before the first one that no checkpoint accounts for;
- an inserted or reordered record: its ``prev_hash`` is not the previous record's
  hash (``seq`` is inside the hashed bytes, so renumbering is an edit too);
- a rewritten history, when the operator gives an ``Anchor`` (``seq`` + ``hash``
  noted earlier from ``missive audit verify``): the anchored record differs, or the
  trail now ends before it (truncation).

Limit (documented on purpose): a hash chain alone cannot detect someone who edits a
record and recomputes every later hash, or who cuts records off the end: the result
is again a valid chain. Only an external anchor detects that, which is why verify
prints the head (``seq`` + ``hash``) for the operator to note or ship elsewhere, and
accepts it back with ``--anchor``. The same holds for a checkpoint: whoever can write
the database can delete records and append a checkpoint that accounts for them, with
the hash of an anchored record copied in; so an anchor that lands on a pruned record is
reported as matched *by a checkpoint* (``anchor_by_checkpoint``), never as plainly
matching. A keyed chain (HMAC with a key the database host does not hold) or periodic
signed heads are future work.

Retention: ``prune`` deletes the oldest records and appends a checkpoint record
(``type = "audit.checkpoint"``) whose details name the deleted range, their count, the
cutoff time and the hash of the last deleted record. The retained trail then starts
at a record whose ``prev_hash`` is that hash, and the *latest* checkpoint must account
for exactly that start; so pruning is visible (when, by whom, how much) and the chain
still verifies, while deleting more old records by hand is still detected.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gateway.audit.event import format_time
from gateway.audit.record import (
    CHECKPOINT_TYPE,
    GENESIS_HASH,
    AuditReceipt,
    AuditRecord,
    RecordFormatError,
    Row,
    recomputed_hash,
    record_from_row,
)

_ANCHOR_RE = re.compile(r"(?:seq=)?([0-9]+)[: ](?:hash=)?([0-9a-fA-F]{64})")


@dataclass(frozen=True, slots=True)
class Anchor:
    """A (seq, hash) pair noted outside the database, e.g. from an earlier verify."""

    seq: int
    hash: str

    @classmethod
    def parse(cls, text: str) -> Anchor:
        """Read ``SEQ:HASH`` (or the ``seq=SEQ hash=HASH`` that verify prints)."""
        match = _ANCHOR_RE.fullmatch(text.strip())
        if match is None or int(match.group(1)) < 1:
            raise ValueError(f"expected SEQ:HASH (64 hex digits), got {text!r}")
        return cls(int(match.group(1)), match.group(2).lower())


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What a checkpoint record says about the records that retention deleted."""

    cutoff: str
    deleted_from_seq: int
    deleted_to_seq: int
    deleted_count: int
    last_deleted_hash: str

    def details(self) -> dict[str, str]:
        """The checkpoint as an event's ``details`` mapping."""
        return {
            "cutoff": self.cutoff,
            "deleted_from_seq": str(self.deleted_from_seq),
            "deleted_to_seq": str(self.deleted_to_seq),
            "deleted_count": str(self.deleted_count),
            "last_deleted_hash": self.last_deleted_hash,
        }

    @classmethod
    def build(cls, cutoff: datetime, first: int, last: AuditReceipt, count: int) -> Checkpoint:
        return cls(format_time(cutoff), first, last.seq, count, last.hash)

    @classmethod
    def of(cls, record: AuditRecord) -> Checkpoint:
        """Decode a checkpoint record; ``RecordFormatError`` if its details are malformed."""
        details: Mapping[str, str] = record.event.details
        try:
            checkpoint = cls(
                cutoff=details["cutoff"],
                deleted_from_seq=int(details["deleted_from_seq"]),
                deleted_to_seq=int(details["deleted_to_seq"]),
                deleted_count=int(details["deleted_count"]),
                last_deleted_hash=details["last_deleted_hash"],
            )
        except (KeyError, ValueError):
            raise RecordFormatError(record.seq, "checkpoint details are malformed") from None
        return checkpoint


@dataclass(frozen=True, slots=True)
class ChainBreak:
    """The first bad record: its ``seq`` and why."""

    seq: int
    reason: str

    def __str__(self) -> str:
        return f"BROKEN at seq {self.seq}: {self.reason}"


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of a verification; ``problem`` is None when the chain is intact."""

    records: int
    first_seq: int | None
    head: AuditReceipt | None
    checkpoint: Checkpoint | None
    anchor_checked: bool | None
    problem: ChainBreak | None
    # the anchored record was pruned: only the checkpoint's copy of its hash was compared
    anchor_by_checkpoint: bool = False

    @property
    def ok(self) -> bool:
        return self.problem is None


class _Walk:
    """State of one pass over the rows (previous record, latest checkpoint, count)."""

    def __init__(self, anchor: Anchor | None) -> None:
        self.anchor = anchor
        self.anchor_checked: bool | None = None if anchor is None else False
        self.anchor_by_checkpoint = False
        self.first: AuditRecord | None = None
        self.previous: AuditRecord | None = None
        self.checkpoint: Checkpoint | None = None
        self.count = 0

    def step(self, row: Row) -> ChainBreak | None:
        try:
            record = record_from_row(row)
        except RecordFormatError as error:
            seq = error.seq if error.seq >= 0 else self._expected_seq()
            return ChainBreak(seq, f"record unreadable ({error.reason}): edited outside Missive")
        problem = self._check_link(record) or self._check_content(record)
        if problem is not None:
            return problem
        if self.first is None:
            self.first = record
        self.previous = record
        self.count += 1
        return None

    def _expected_seq(self) -> int:
        return 1 if self.previous is None else self.previous.seq + 1

    def _check_link(self, record: AuditRecord) -> ChainBreak | None:
        previous = self.previous
        if previous is None:
            if record.seq < 1:
                return ChainBreak(record.seq, "seq must start at 1 (record edited)")
            if record.seq == 1 and record.prev_hash != GENESIS_HASH:
                return ChainBreak(1, "the first record does not start from the genesis hash")
            return None
        expected = previous.seq + 1
        if record.seq != expected:
            return ChainBreak(
                expected, f"record missing (deleted); the next one present is seq {record.seq}"
            )
        if record.prev_hash != previous.hash:
            return ChainBreak(
                record.seq,
                f"does not follow seq {previous.seq}: prev_hash differs from its hash "
                f"(seq {previous.seq} edited and rehashed, or records inserted, deleted "
                "or reordered)",
            )
        return None

    def _check_content(self, record: AuditRecord) -> ChainBreak | None:
        if recomputed_hash(record) != record.hash:
            return ChainBreak(record.seq, "hash mismatch (record edited)")
        if record.event.type == CHECKPOINT_TYPE:
            try:
                self.checkpoint = Checkpoint.of(record)
            except RecordFormatError as error:
                return ChainBreak(record.seq, error.reason)
        anchor = self.anchor
        if anchor is not None and anchor.seq == record.seq:
            if anchor.hash != record.hash:
                return ChainBreak(record.seq, "hash differs from the anchor (history rewritten)")
            self.anchor_checked = True
        return None

    def finish(self) -> ChainBreak | None:
        first, head = self.first, self.previous
        if first is None or head is None:
            if self.anchor is not None:
                return ChainBreak(
                    1, f"the trail is empty but the anchor names seq {self.anchor.seq}"
                )
            return None
        return self._check_start(first) or self._check_anchor_bounds(first, head)

    def _check_start(self, first: AuditRecord) -> ChainBreak | None:
        if first.seq == 1:
            return None
        checkpoint = self.checkpoint
        if checkpoint is None:
            return ChainBreak(
                first.seq,
                f"records before seq {first.seq} are missing and no checkpoint accounts "
                "for them (deleted)",
            )
        if (
            checkpoint.deleted_to_seq != first.seq - 1
            or checkpoint.last_deleted_hash != first.prev_hash
        ):
            return ChainBreak(
                first.seq,
                f"records before seq {first.seq} are missing: the latest checkpoint accounts "
                f"for seq {checkpoint.deleted_from_seq}..{checkpoint.deleted_to_seq} only "
                "(deleted)",
            )
        return None

    def _check_anchor_bounds(self, first: AuditRecord, head: AuditRecord) -> ChainBreak | None:
        anchor = self.anchor
        if anchor is None:
            return None
        if anchor.seq > head.seq:
            return ChainBreak(
                head.seq + 1,
                f"records after seq {head.seq} are missing: the anchor names seq "
                f"{anchor.seq} (trail truncated)",
            )
        checkpoint = self.checkpoint
        if anchor.seq < first.seq and checkpoint and anchor.seq == checkpoint.deleted_to_seq:
            if anchor.hash != checkpoint.last_deleted_hash:
                return ChainBreak(
                    anchor.seq,
                    "the checkpoint's hash of this pruned record differs from the "
                    "anchor (history rewritten)",
                )
            self.anchor_checked = self.anchor_by_checkpoint = True
        return None

    def report(self, problem: ChainBreak | None) -> VerifyReport:
        head = self.previous
        return VerifyReport(
            records=self.count,
            first_seq=None if self.first is None else self.first.seq,
            head=None if head is None else head.receipt,
            checkpoint=self.checkpoint,
            anchor_checked=self.anchor_checked,
            problem=problem,
            anchor_by_checkpoint=self.anchor_by_checkpoint,
        )


def verify_rows(rows: Iterable[Row], anchor: Anchor | None = None) -> VerifyReport:
    """Walk ``rows`` (in ``seq`` order) and report the first bad record, if any."""
    walk = _Walk(anchor)
    for row in rows:
        problem = walk.step(row)
        if problem is not None:
            return walk.report(problem)
    return walk.report(walk.finish())
