"""The reader's snapshots: rebuilt exactly when their files change, one build for many
threads, bounded, and a lake whose files keep vanishing answered as busy."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import polars as pl
import pytest

from meterlake.api.lake import LakeReader, Snapshots, read_stable
from meterlake.config.errors import LakeBusyError
from meterlake.config.schemas import BILLS
from meterlake.storage.compaction import compact_lake
from meterlake.storage.layout import init_lake
from meterlake.storage.writer import write_table
from tests.api.lakes import PERIOD
from tests.api.server import synthetic_bills


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_snapshot_is_rebuilt_when_its_files_change_and_only_then() -> None:
    clock = Clock()
    snapshots: Snapshots[int] = Snapshots(1.0, monotonic=clock)
    files = [(Path("a.parquet"),)]
    built: list[tuple[Path, ...]] = []

    def build(listed: tuple[Path, ...]) -> int:
        built.append(listed)
        return len(built)

    assert snapshots.get("k", lambda: files[0], build) == 1
    files[0] = (Path("a.parquet"), Path("b.parquet"))
    assert snapshots.get("k", lambda: files[0], build) == 1  # not looked at within poll_s
    clock.now = 1.5
    assert snapshots.get("k", lambda: files[0], build) == 2  # looked at: changed
    clock.now = 3.0
    assert snapshots.get("k", lambda: files[0], build) == 2  # looked at: the same files
    assert snapshots.builds == 2
    assert built == [(Path("a.parquet"),), (Path("a.parquet"), Path("b.parquet"))]


def test_many_threads_wait_for_one_build_and_old_snapshots_are_dropped() -> None:
    snapshots: Snapshots[str] = Snapshots(60.0, capacity=2)
    calls = []

    def slow(listed: tuple[Path, ...]) -> str:
        calls.append(listed)
        time.sleep(0.2)
        return "built"

    threads = [
        threading.Thread(target=snapshots.get, args=("k", lambda: (), slow)) for _ in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    for key in ("x", "y"):
        snapshots.get(key, lambda: (), lambda _files, value=key: value)
    snapshots.get("k", lambda: (), slow)  # evicted by x and y: built again
    assert len(calls) == 2


def test_a_lake_that_keeps_changing_under_a_read_is_busy() -> None:
    def vanished(_files: tuple[Path, ...]) -> int:
        raise FileNotFoundError("compacted away")

    with pytest.raises(LakeBusyError):
        read_stable(lambda: (), vanished)


def test_bills_seen_before_and_after_a_compaction_are_the_same(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    bills, _lines = synthetic_bills(200, seed=1)
    for part in bills.iter_slices(50):  # four files, and one of them twice
        write_table(lake, BILLS, part)
    write_table(lake, BILLS, bills.head(10))
    reader = LakeReader(lake, site_timezone="Asia/Shanghai", poll_s=0)
    before = reader.bills(PERIOD).rows
    assert before.height == 200  # the copies are shown once
    list(compact_lake(lake, [BILLS]))
    assert len(list((lake / BILLS.name).rglob("*.parquet"))) == 1
    after = reader.bills(PERIOD).rows
    assert after.equals(before)
    assert reader.find_bill(before["bill_id"][7]) is not None
    assert reader.find_bill("b-nothing") is None
    assert before["_us"].is_sorted()
    assert before.select(pl.struct("_us", "bill_id").is_unique().all()).item()
