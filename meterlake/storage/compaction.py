"""Compaction: merge a partition's small files into few large ones, and remove duplicates.

Dedup rules
-----------
readings
    Rows equal on (meter_id, quantity, ts, value) are one reading: the latest received copy is kept.
    Rows equal on (meter_id, quantity, ts) with *different* values are a conflict: every distinct
    value is kept (raw data is never thrown away) and flagged ``duplicate_conflict``; the
    ``readings_current`` view picks the latest received one.
every other table
    Rows equal on every column are exact duplicates; one is kept.

Crash safety
------------
A compaction of one partition is a journalled replace of its input files by its output files:

1. read the inputs, deduplicate, write the outputs to ``<lake>/.tmp`` (invisible to readers);
2. write the journal ``<lake>/.compaction/<id>.json`` naming inputs and outputs (atomic);
3. rename each output into the partition;
4. delete the inputs;
5. delete the journal.

A crash before 2 leaves only invisible temporary files. After 2, :func:`recover` (run at the
start of every compaction and catalogue refresh) finishes the job when all outputs were published
and otherwise takes them back out, so the partition ends as either the inputs or the outputs.
Inputs and outputs hold the same current rows, so the ``*_current`` views give the same results
at every step, even while a crashed compaction waits for its recovery.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import polars as pl

from meterlake.config.durable import fsync_dir
from meterlake.config.errors import LakeBusyError
from meterlake.config.schemas import FLAGS, READINGS, TABLES, Quality, TableSpec
from meterlake.storage.layout import (
    TMP_DIR,
    list_partitions,
    new_file_name,
    partition_dir,
    partition_files,
    publish,
    sweep_tmp,
    write_bytes_atomic,
)
from meterlake.storage.writer import COMPRESSION

JOURNAL_DIR: Final = ".compaction"
StepHook = Callable[[str], None]


@dataclass(frozen=True)
class CompactionResult:
    """What compacting one partition did."""

    table: str
    partition: str
    files_in: int
    files_out: int
    rows_in: int
    rows_out: int
    conflicts: int
    """Rows kept because another value exists for their key (flagged ``duplicate_conflict``)."""


def dedup_readings(frame: pl.LazyFrame) -> pl.LazyFrame:
    """Collapse repeated readings and flag conflicting ones (see the module docstring).

    The surviving copy of a reading is its latest received one (ties: the greatest ``source``),
    the same row the ``readings_current`` view picks.
    """
    key = list(READINGS.dedup_key)
    flag = Quality.DUPLICATE_CONFLICT.value
    conflict = pl.col("value").n_unique().over(key) > 1
    quality = pl.col("quality").fill_null(pl.lit([], dtype=FLAGS))  # null: no flags yet
    return (
        frame.sort(["received_at", "source"], descending=True, nulls_last=True)
        .unique([*key, "value"], keep="first", maintain_order=True)
        .with_columns(
            pl.when(conflict & ~quality.list.contains(flag))
            .then(quality.list.concat(pl.lit([flag])))
            .otherwise(pl.col("quality"))
            .alias("quality")
        )
    )


def deduplicate(frame: pl.LazyFrame, table: TableSpec) -> pl.LazyFrame:
    """The deduplicated rows of ``table``, sorted by its key for compact, prunable files."""
    if table.name == READINGS.name:
        frame = dedup_readings(frame)
    else:
        frame = frame.unique(maintain_order=True)
    return frame.sort(list(table.dedup_key))


def compact_partition(
    root: Path,
    table: TableSpec,
    value: str,
    *,
    target_rows: int = 5_000_000,
    min_files: int = 2,
    on_step: StepHook | None = None,
) -> CompactionResult | None:
    """Compact one partition if it has at least ``min_files`` files; ``None`` if it was skipped.

    ``on_step`` is called with the name of each completed step (``"outputs_written"``,
    ``"journaled"``, ``"published"``, ``"inputs_removed"``); tests use it to crash on purpose.
    """
    step = on_step or (lambda _name: None)
    inputs = partition_files(root, table, value)
    if len(inputs) < min_files:
        return None
    source = pl.scan_parquet(inputs, schema=table.schema, hive_partitioning=False)
    merged = deduplicate(source, table).collect()
    rows_in = source.select(pl.len()).collect().item()
    conflicts = 0
    if table.name == READINGS.name:
        conflicts = merged.filter(
            pl.col("quality").list.contains(Quality.DUPLICATE_CONFLICT.value)
        ).height
    outputs = []
    tmp_dir = root / TMP_DIR
    tmp_dir.mkdir(exist_ok=True)
    for offset in range(0, max(merged.height, 1), target_rows):
        name = new_file_name("c-")
        merged.slice(offset, target_rows).write_parquet(
            tmp_dir / f"{name}.part", compression=COMPRESSION, statistics=True
        )
        outputs.append(name)
    step("outputs_written")
    directory = partition_dir(root, table, value)
    journal = _journal_dir(root) / f"{table.name}--{value}--{secrets.token_hex(6)}.json"
    record = {
        "table": table.name,
        "partition": value,
        "inputs": [p.name for p in inputs],
        "outputs": outputs,
    }
    write_bytes_atomic(journal, json.dumps(record).encode())
    step("journaled")
    for name in outputs:
        publish(tmp_dir / f"{name}.part", directory / name)
    step("published")
    for path in inputs:
        path.unlink(missing_ok=True)
    fsync_dir(directory)
    step("inputs_removed")
    journal.unlink()
    return CompactionResult(
        table=table.name,
        partition=value,
        files_in=len(inputs),
        files_out=len(outputs),
        rows_in=rows_in,
        rows_out=merged.height,
        conflicts=conflicts,
    )


def recover(root: Path) -> int:
    """Finish or undo compactions that a crash interrupted; return how many were found.

    Call it only while holding :func:`compaction_lock`: a journal of a compaction that is still
    running elsewhere looks exactly like a crashed one.
    """
    directory = _journal_dir(root)
    journals = sorted(directory.glob("*.json"))
    for journal in journals:
        record = json.loads(journal.read_bytes())
        table = TABLES[record["table"]]
        part = partition_dir(root, table, record["partition"])
        outputs = [part / name for name in record["outputs"]]
        if all(p.exists() for p in outputs):
            for name in record["inputs"]:
                (part / name).unlink(missing_ok=True)
        else:
            for path in outputs:
                path.unlink(missing_ok=True)
        for name in record["outputs"]:
            (root / TMP_DIR / f"{name}.part").unlink(missing_ok=True)
        if part.is_dir():
            fsync_dir(part)
        journal.unlink()
    sweep_tmp(root)  # temporary files of writers killed mid-write
    return len(journals)


@contextlib.contextmanager
def compaction_lock(root: Path) -> Iterator[None]:
    """Hold the lake's compaction lock (one compactor at a time; writers need no lock)."""
    lock_path = _journal_dir(root) / "lock"
    with lock_path.open("a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LakeBusyError(
                f"{root}: another compaction is running; try again when it has finished"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def recover_if_idle(root: Path) -> int:
    """Run :func:`recover` unless a compaction is running right now (then it recovers itself)."""
    try:
        with compaction_lock(root):
            return recover(root)
    except LakeBusyError:
        return 0


def compact_lake(
    root: Path,
    tables: list[TableSpec],
    *,
    target_rows: int = 5_000_000,
    min_files: int = 2,
) -> Iterator[tuple[int, CompactionResult | None]]:
    """Compact every partition of ``tables`` with at least ``min_files`` files, under the lock.

    Yields ``(total partitions, result)`` after each partition, so a caller can show progress.
    """
    with compaction_lock(root):
        recover(root)
        todo = [(t, v) for t in tables for v in partitions_to_compact(root, t, min_files)]
        for table, value in todo:
            yield (
                len(todo),
                compact_partition(root, table, value, target_rows=target_rows, min_files=min_files),
            )


def partitions_to_compact(root: Path, table: TableSpec, min_files: int) -> list[str]:
    """Partitions of ``table`` with at least ``min_files`` data files."""
    return [
        v for v in list_partitions(root, table) if len(partition_files(root, table, v)) >= min_files
    ]


def _journal_dir(root: Path) -> Path:
    directory = root / JOURNAL_DIR
    directory.mkdir(parents=True, exist_ok=True)
    return directory
