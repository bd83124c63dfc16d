"""The VEE job on a lake, next to a plain per-meter group-by sum of the same reads.

The lake (full: 10,000 meters x 30 local days of 15-minute reads, about 29M import reads plus
the export register of the PV meters; smoke: 40 meters x 3 days) is built once per module from
the seeded simulator, with its faults, in shards of meters with distinct ids; only the register
reads (``energy_import_kwh``, ``energy_export_kwh``) are written, with
:func:`~meterlake.storage.writer.write_table`, and then compacted with
:func:`~meterlake.storage.compaction.compact_lake`, as in production. There is no meter master
data, so every meter gets the defaults.

Timed in the same run, interleaved, each step in a fresh process on the same lake (the time of
the step alone, not of the process start); both read the same Parquet:

floor
    ``scan(lake, READINGS).group_by("meter_id").agg(value.sum())``: one pass, one hash table;
    best of ``scale.repeats``.
VEE
    :func:`~meterlake.analytics.vee_job.run_vee`, a range run over the simulated local days:
    meter shards of ``[vee] shard_meters`` (the default, 2,000, at full scale), each scanned,
    validated, estimated and written to ``intervals``; the run's row to ``vee_runs``. Every run
    starts from a lake without intervals or runs (both emptied before it, untimed), so one run
    per round (:attr:`Fleet.rounds`).

The peak memory of each step is that process's ``VmHWM``. Goals (issue 4): within 10x of the
floor; peak memory under 8 GiB.

Measured at full scale (2 cores, 24 GiB, a shared machine; 31.6M register reads -> 28.7M
interval rows, shards of 2,000 meters): floor 1.05 s, VEE 257 s (122,900 reads/s), 244x the
floor, so the 10x goal is missed; peak 5.99 GiB, so the memory goal is met. (Before the
validation and estimation rewrites: VEE 681 s, 46,400 reads/s, peak 6.22 GiB.) Per 1,000
meters the stages take roughly: dedup 1 s, register deltas 2.6 s, validation 2.5 s (6.5 s with
the register sum check), estimation 3-4 s, new versions 1 s.
:data:`GUARD_RATIO` is a regression guard above the first measurement (222x).
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl
import pytest

from meterlake.analytics.deltas import REGISTER_QUANTITIES
from meterlake.config.schemas import INTERVALS, READINGS, VEE_RUNS
from meterlake.config.settings import Settings, SiteSettings
from meterlake.config.vee import VeeSettings
from meterlake.ingest.simulator import FleetSpec, simulate_readings
from meterlake.storage.compaction import compact_lake
from meterlake.storage.layout import init_lake, table_dir
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table

if TYPE_CHECKING:
    from conftest import Scale

GIB: Final = 1 << 30
ZONE: Final = "Asia/Shanghai"
FIRST_DAY: Final = dt.date(2026, 4, 1)
START: Final = dt.datetime.combine(FIRST_DAY, dt.time(), tzinfo=dt.UTC) - dt.timedelta(hours=8)
"""Local midnight of :data:`FIRST_DAY` in :data:`ZONE` (UTC+8, no DST), in UTC."""


@dataclass(frozen=True)
class Fleet:
    meters: int
    days: int
    """Local days simulated, and the days of the range run."""
    build_meters: int
    """Meters per simulated shard (each with its own seed and id prefix)."""
    shard_meters: int
    """``[vee] shard_meters`` of the run."""
    rounds: int
    """VEE runs timed (each after a floor of ``scale.repeats``): one takes minutes at full
    scale, long enough that a busy moment of a shared machine hardly moves it."""


FLEETS: Final = {
    "smoke": Fleet(meters=40, days=3, build_meters=20, shard_meters=20, rounds=1),
    "full": Fleet(meters=10_000, days=30, build_meters=1_000, shard_meters=2_000, rounds=1),
}
GOAL_RATIO: Final = 10.0
GOAL_PEAK_BYTES: Final = 8 * GIB
GUARD_RATIO: Final = 335.0
"""What ``make bench`` asserts: a regression guard, 1.5x the ratio measured (222x, see the
module docstring), far looser than the goal; tighten it as VEE gets faster."""


def build_lake(root: Path, fleet: Fleet) -> Path:
    """A compacted lake of ``fleet``'s register reads at ``root``."""
    init_lake(root)
    for shard in range(-(-fleet.meters // fleet.build_meters)):
        spec = FleetSpec(
            meters=min(fleet.build_meters, fleet.meters - shard * fleet.build_meters),
            start=START,
            days=fleet.days,
            timezone=ZONE,
            seed=5_000 + shard,
            pv_share=0.1,
        )
        reads = simulate_readings(spec).filter(pl.col("quantity").is_in(REGISTER_QUANTITIES))
        write_table(
            root,
            READINGS,
            reads.with_columns(meter_id=pl.format("s{}-{}", pl.lit(shard), pl.col("meter_id"))),
        )
    lake = Settings().lake
    for _ in compact_lake(
        root, [READINGS], target_rows=lake.compact_target_rows, min_files=lake.compact_min_files
    ):
        pass
    return root


@pytest.fixture(scope="module")
def lake(scale: Scale, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lake(tmp_path_factory.mktemp("vee") / "lake", FLEETS[scale.name])


def clear_vee_output(root: Path) -> None:
    """Empty ``intervals`` and ``vee_runs``: the next run starts as the first one."""
    for table in (INTERVALS, VEE_RUNS):
        shutil.rmtree(table_dir(root, table))
    init_lake(root)  # puts the empty table directories back


def settings_for(fleet: Fleet) -> Settings:
    return Settings(
        site=SiteSettings(timezone=ZONE), vee=VeeSettings(shard_meters=fleet.shard_meters)
    )


def last_day(fleet: Fleet) -> dt.date:
    return FIRST_DAY + dt.timedelta(days=fleet.days - 1)


STEP: Final = r"""
import datetime as dt, sys, time
from pathlib import Path
import polars as pl
from meterlake.analytics.vee_job import run_vee
from meterlake.config.schemas import READINGS
from meterlake.config.settings import Settings
from meterlake.storage.scan import scan
root, step, settings, first, last, repeats = Path(sys.argv[1]), *sys.argv[2:]
if step == "floor":
    def run():
        scan(root, READINGS).group_by("meter_id").agg(pl.col("value").sum()).collect()
else:
    config = Settings.model_validate_json(settings)
    def run():
        run_vee(root, config, run_id="bench-vee", now=dt.datetime.now(dt.UTC),
                first_day=dt.date.fromisoformat(first), last_day=dt.date.fromisoformat(last))
best = float("inf")
for _ in range(int(repeats)):
    began = time.perf_counter()
    run()
    best = min(best, time.perf_counter() - began)
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and exec.
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(best, int(status.split()[0]) * 1024)
"""
"""Run one step ``repeats`` times in a fresh process on the lake; print its best time [s] and
its peak resident size [bytes] (``VmHWM``: imports, input, work and result together)."""


def run_step(root: Path, step: str, fleet: Fleet, repeats: int) -> tuple[float, int]:
    """The best seconds and the peak resident size [bytes] of ``step`` (see :data:`STEP`)."""
    days = [FIRST_DAY.isoformat(), last_day(fleet).isoformat()]
    settings = settings_for(fleet).model_dump_json()
    done = subprocess.run(
        [sys.executable, "-c", STEP, str(root), step, settings, *days, str(repeats)],
        check=True,
        capture_output=True,
        text=True,
    )
    seconds, peak = done.stdout.split()[-2:]
    return float(seconds), int(peak)


@pytest.mark.timeout(4 * 3600)  # full scale: building the lake and a VEE round take minutes
def test_vee_job_against_the_floor(scale: Scale, lake: Path, floor_table: Any) -> None:
    fleet = FLEETS[scale.name]
    steps = {"floor": scale.repeats, "VEE": 1}
    seconds = dict.fromkeys(steps, float("inf"))
    peaks = dict.fromkeys(steps, 0)
    for _ in range(fleet.rounds):  # interleaved, so that a busy moment hits both alike
        for step, repeats in steps.items():
            clear_vee_output(lake)  # every VEE run starts as the lake's first
            elapsed, peak = run_step(lake, step, fleet, repeats)
            seconds[step] = min(seconds[step], elapsed)
            peaks[step] = max(peaks[step], peak)

    reads = int(scan(lake, READINGS).select(pl.len()).collect().item())
    written = scan(lake, INTERVALS).collect()
    runs = scan(lake, VEE_RUNS).collect()
    assert runs["meters"].to_list() == [fleet.meters]
    assert runs["rows_written"].to_list() == [written.height] and written.height > 0
    # Every meter got every interval from its first read to its last (gaps are estimated, not
    # dropped), once: the lake held no intervals before the run.
    span = (pl.col("ts").max() - pl.col("ts").min()).dt.total_minutes()
    interval_minutes = settings_for(fleet).vee.interval_minutes
    expected = (
        scan(lake, READINGS)
        .group_by("meter_id")
        .agg((span // interval_minutes).cast(pl.UInt32).alias("n"))
        .collect()
    )
    assert expected.height == fleet.meters
    got = written.group_by("meter_id").agg(pl.len().alias("n"))
    assert got.sort("meter_id").equals(expected.sort("meter_id"))
    assert written.select("meter_id", "interval_start").is_unique().all()
    clear_vee_output(lake)

    floor_s, vee_s = seconds["floor"], seconds["VEE"]
    ratio = vee_s / floor_s
    peak = peaks["VEE"]
    floor_table(
        f"VEE job on a lake: {reads:,} register reads -> {written.height:,} interval rows "
        f"({fleet.meters:,} meters x {fleet.days} days, shards of {fleet.shard_meters:,} "
        f"meters, scale {scale.name}, floor best of {scale.repeats}, {fleet.rounds} VEE "
        f"round(s), {os.cpu_count()} cores)",
        reads,
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
