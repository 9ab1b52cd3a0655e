"""The on-disk hash partition that bounds the import's memory."""

from __future__ import annotations

from pathlib import Path

from annuaire.importers.partition import (
    MAX_BUCKETS,
    Partition,
    bucket_count,
    final_buckets,
)


def test_bucket_count() -> None:
    assert bucket_count(0, 1000) == 1
    assert bucket_count(1000, 1000) == 1
    assert bucket_count(1001, 1000) == 2
    assert bucket_count(10**12, 1000) == MAX_BUCKETS


def rows_of(paths: list[Path]) -> list[list[tuple[int, str, str]]]:
    result = []
    for path in paths:
        records = []
        for record in path.read_text(encoding="utf-8").splitlines():
            line, key, text = record.split("\t", 2)
            records.append((int(line), key, text))
        result.append(records)
    return result


def test_oversized_buckets_are_split_and_keys_stay_whole(tmp_path: Path) -> None:
    partition = Partition(tmp_path, 2)
    for line in range(2, 2002):
        key = f"key-{line % 300}"
        partition.add(key, line, f"row {line}\tkeeps its tab|é")
    partition.close()
    buckets = list(final_buckets(partition.paths, bucket_bytes=2000))
    assert len(buckets) > 2
    assert all(path.stat().st_size <= 2 * 2000 for path in buckets)
    seen: dict[str, Path] = {}
    total = 0
    for path, records in zip(buckets, rows_of(buckets), strict=True):
        lines = [line for line, _, _ in records]
        assert lines == sorted(lines)  # file order survives the split
        for line, key, text in records:
            assert seen.setdefault(key, path) == path  # a key lives in one bucket
            assert text == f"row {line}\tkeeps its tab|é"
            total += 1
    assert total == 2000 and len(seen) == 300
    assert not any(path.exists() for path in partition.paths if path not in buckets)
