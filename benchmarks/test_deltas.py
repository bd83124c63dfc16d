"""Register reads -> interval energy over a simulated fleet, next to a plain group-by sum.

The fleet (full: 10,000 meters x 30 days of 15-minute reads, about 29M import reads plus the
export register of the PV meters; smoke: 60 meters x 2 days) comes from the seeded simulator,
with its faults, built in shards of meters with distinct ids, reduced to one value per key as
``readings_current`` does, and ordered as compacted lake partitions come (day by day, each
sorted by meter, quantity and time).

Timed in the same run, interleaved, best of ``scale.repeats``, with Polars' in-memory engine:

floor
    ``group_by("meter_id").agg(value.sum())`` of the same reads: one pass, one hash table.
all at once
    :func:`register_intervals` over every read.
meter shards
    the same reads split by meter beforehand (VEE runs per meter shard), one call per shard.

Peak memory is measured apart, each step in a fresh process that scans the same reads from a
Parquet file (its ``VmHWM``: input, work and result; in shards only one shard's reads are
loaded at a time). Goals (issue 4): within 10x of the floor; peak memory under 8 GiB.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl
from polars.testing import assert_frame_equal

from meterlake.analytics.deltas import REGISTER_QUANTITIES, register_intervals
from meterlake.ingest.simulator import FleetSpec, simulate_readings
from meterlake.storage.compaction import dedup_readings

if TYPE_CHECKING:
    from conftest import Scale

ENGINE: Final = "in-memory"
GIB: Final = 1 << 30


@dataclass(frozen=True)
class Fleet:
    meters: int
    days: int
    shard_meters: int
    """Meters per simulated shard, and per VEE shard."""


FLEETS: Final = {
    "smoke": Fleet(meters=60, days=2, shard_meters=20),
    "full": Fleet(meters=10_000, days=30, shard_meters=1_000),
}
GOAL_RATIO: Final = 10.0
GOAL_PEAK_BYTES: Final = 8 * GIB
GUARD_RATIO: Final = 25.0
"""What ``make bench`` asserts: a regression guard, looser than the goal (see the report)."""


def fleet_reads(fleet: Fleet) -> pl.DataFrame:
    """The register reads of ``fleet``, in compacted-lake order."""
    parts = []
    for shard in range(fleet.meters // fleet.shard_meters):
        spec = FleetSpec(
            meters=fleet.shard_meters,
            start=dt.datetime(2026, 4, 1, tzinfo=dt.UTC),
            days=fleet.days,
            seed=4_000 + shard,
            pv_share=0.1,
        )
        reads = (
            simulate_readings(spec)
            .lazy()
            .filter(pl.col("quantity").is_in(REGISTER_QUANTITIES))
            .with_columns(meter_id=pl.format("s{}-{}", pl.lit(shard), pl.col("meter_id")))
        )
        parts.append(dedup_readings(reads).collect())
    return pl.concat(parts).sort(pl.col("ts").dt.date(), "meter_id", "quantity", "ts").rechunk()


MEASURE_MEMORY: Final = r"""
import sys
import polars as pl
from meterlake.analytics.deltas import register_intervals
path, step, shard_meters = sys.argv[1], sys.argv[2], int(sys.argv[3])
reads = pl.scan_parquet(path)
if step == "floor":
    reads.group_by("meter_id").agg(pl.col("value").sum()).collect(engine="in-memory")
elif step == "all at once":
    register_intervals(reads).collect(engine="in-memory")
else:
    meters = reads.select(pl.col("meter_id").unique().sort()).collect().to_series()
    for i in range(0, meters.len(), shard_meters):
        shard = reads.filter(pl.col("meter_id").is_in(meters.slice(i, shard_meters).implode()))
        register_intervals(shard).collect(engine="in-memory")
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(int(status.split()[0]) * 1024)
"""
"""Run one step in a fresh process that scans the reads from Parquet, as a VEE job would, and
print its peak resident size [bytes] (``VmHWM``: input, work and result together)."""


def peak_memory(path: Path, step: str, shard_meters: int) -> int:
    """The peak resident size [bytes] of ``step`` run on its own (see :data:`MEASURE_MEMORY`)."""
    done = subprocess.run(
        [sys.executable, "-c", MEASURE_MEMORY, str(path), step, str(shard_meters)],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(done.stdout.split()[-1])


def best_time(run: Callable[[], Any]) -> tuple[float, Any]:
    began = time.perf_counter()
    result = run()
    return time.perf_counter() - began, result


def test_register_intervals_against_the_floor(
    scale: Scale, floor_table: Any, tmp_path: Path
) -> None:
    fleet = FLEETS[scale.name]
    reads = fleet_reads(fleet)
    path = tmp_path / "reads.parquet"
    reads.write_parquet(path)
    meters = reads["meter_id"].unique().sort()
    shards = [
        reads.filter(pl.col("meter_id").is_in(meters.slice(i, fleet.shard_meters).implode()))
        for i in range(0, meters.len(), fleet.shard_meters)
    ]

    def floor() -> pl.DataFrame:
        return reads.lazy().group_by("meter_id").agg(pl.col("value").sum()).collect(engine=ENGINE)

    def at_once() -> pl.DataFrame:
        return register_intervals(reads.lazy()).collect(engine=ENGINE)

    def sharded() -> pl.DataFrame:
        return pl.concat(
            [register_intervals(shard.lazy()).collect(engine=ENGINE) for shard in shards]
        )

    steps = {"floor": floor, "all at once": at_once, "meter shards": sharded}
    seconds = dict.fromkeys(steps, float("inf"))
    results: dict[str, Any] = {}
    for _ in range(scale.repeats):  # interleaved, so that a busy moment hits all alike
        for name, run in steps.items():
            results.pop(name, None)  # let the previous result go before the next run
            elapsed, results[name] = best_time(run)
            seconds[name] = min(seconds[name], elapsed)
    peaks = {name: peak_memory(path, name, fleet.shard_meters) for name in steps}

    whole = results["all at once"]
    assert_frame_equal(results["meter shards"], whole)  # a meter's result ignores its shard
    # Every quarter-hour from a meter's first read to its last (gaps are spread, not dropped).
    spans = reads.group_by("meter_id").agg(span=pl.col("ts").max() - pl.col("ts").min())
    assert whole.height == (spans["span"].dt.total_minutes() // 15).sum()
    flags = set(whole["flags"].explode().drop_nulls().unique().to_list())
    assert {"rollover", "meter_reset", "glitch", "gap_apportioned"} <= flags

    floor_s = seconds["floor"]
    ratio = min(seconds["all at once"], seconds["meter shards"]) / floor_s
    peak = min(peaks["all at once"], peaks["meter shards"])
    registers = reads.select("meter_id", "quantity").n_unique()
    floor_table(
        f"register reads -> intervals: {reads.height:,} reads of {registers:,} registers "
        f"({fleet.meters:,} meters x {fleet.days} days, shards of {fleet.shard_meters:,} "
        f"meters, scale {scale.name}, best of {scale.repeats}, {os.cpu_count()} cores, "
        "in-memory engine)",
        reads.height,
        seconds,
        peaks,
        goal_ratio=GOAL_RATIO,
        goal_peak=GOAL_PEAK_BYTES,
        ratio=ratio,
        peak=peak,
        strict=scale.strict,
    )
    if scale.strict:
        assert peak < GOAL_PEAK_BYTES
        assert ratio <= GUARD_RATIO
