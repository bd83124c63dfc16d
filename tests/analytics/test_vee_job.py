"""VEE jobs on a lake: incremental runs touch only what late data changed and agree with a
full run; meter master data, meter events and stored history reach the rules."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Sequence
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from meterlake.analytics.vee_job import run_vee
from meterlake.config.schemas import INTERVALS, METER_EVENTS, METERS, READINGS, VEE_RUNS
from meterlake.config.settings import Settings
from meterlake.ingest.simulator import FleetSpec, simulate_faults, simulate_readings
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import latest_versions, scan
from meterlake.storage.writer import write_table

UTC = dt.UTC
START = dt.datetime(2026, 10, 4, 16, tzinfo=UTC)  # local midnight in Asia/Shanghai
SPEC = FleetSpec(meters=12, start=START, days=6, seed=11)
NOW = dt.datetime(2026, 11, 1, tzinfo=UTC)
STEP = dt.timedelta(minutes=15)


def age_files(lake: Path, hours: float) -> None:
    """Make every lake file look ``hours`` older (time passing between writes and runs)."""
    for path in lake.rglob("*.parquet"):
        if ".schema" in path.parts:
            continue
        stat = path.stat()
        os.utime(path, (stat.st_atime - hours * 3600, stat.st_mtime - hours * 3600))


def current(lake: Path) -> pl.DataFrame:
    return (
        latest_versions(scan(lake, INTERVALS))
        .select("meter_id", "interval_start", "energy_import_kwh", "status", "flags", "method")
        .sort("meter_id", "interval_start")
        .collect()
    )


def meter_reads(
    meter_id: str, start: dt.datetime, energies: Sequence[float], first_kwh: float = 1000.0
) -> pl.DataFrame:
    """Import register reads every 15 minutes whose steps are ``energies``."""
    values = [first_kwh]
    for e in energies:
        values.append(values[-1] + e)
    return pl.DataFrame(
        {
            "meter_id": meter_id,
            "ts": [start + i * STEP for i in range(len(values))],
            "quantity": "energy_import_kwh",
            "value": values,
            "quality": [[] for _ in values],
            "source": "test",
            "received_at": [start + i * STEP for i in range(len(values))],
        },
        schema=READINGS.schema,
    )


def meters_frame(**columns: list[object]) -> pl.DataFrame:
    rows = len(next(iter(columns.values())))
    frame = pl.DataFrame(columns)
    return frame.select(
        pl.col(c).cast(dtype) if c in frame.columns else pl.lit(None, dtype).alias(c)
        for c, dtype in METERS.schema.items()
    ).with_columns(pl.lit(NOW).alias("updated_at").cast(METERS.schema["updated_at"]))[:rows]


# --- incremental runs ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fleet() -> pl.DataFrame:
    return simulate_readings(SPEC)


def test_late_reads_rerun_only_their_days_and_agree_with_a_full_run(
    tmp_path: Path, fleet: pl.DataFrame
) -> None:
    faulty = set(simulate_faults(SPEC)["meter_id"])
    meter = sorted(set(fleet["meter_id"]) - faulty)[0]
    gap_from, gap_to = START + dt.timedelta(days=2, hours=20), START + dt.timedelta(days=3, hours=2)
    in_gap = (
        (pl.col("meter_id") == meter)
        & pl.col("ts").is_between(gap_from, gap_to, closed="left")
        & pl.col("quantity").str.starts_with("energy")
    )
    settings = Settings()

    lake = init_lake(tmp_path / "incremental")
    write_table(lake, READINGS, fleet.filter(~in_gap))
    age_files(lake, 2)
    first = run_vee(lake, settings, run_id="run-1", now=dt.datetime.now(UTC))
    assert first.mode == "incremental"
    assert first.meters == fleet["meter_id"].n_unique()  # the first run sees everything
    gap = first.written.filter(
        pl.col("meter_id") == meter,
        pl.col("interval_start").is_between(gap_from, gap_to, closed="left"),
    )
    assert set(gap["status"]) == {"estimated"}
    age_files(lake, 2)

    write_table(lake, READINGS, fleet.filter(in_gap))  # the gateway's spool arrives late
    second = run_vee(lake, settings, run_id="run-2", now=dt.datetime.now(UTC))
    assert second.meters == 1
    assert set(second.written["meter_id"]) == {meter}
    # only the local days of the gap (plus the read before and after it) were rewritten
    local_days = set(
        second.written["interval_start"].dt.convert_time_zone("Asia/Shanghai").dt.date()
    )
    assert local_days <= {
        (gap_from + dt.timedelta(hours=8)).date(),
        (gap_to + dt.timedelta(hours=8)).date(),
    }
    assert set(second.written["run_id"]) == {"run-2"}

    full = init_lake(tmp_path / "full")
    write_table(full, READINGS, fleet)
    run_vee(full, settings, run_id="full", now=NOW)
    # the same intervals, statuses, flags and methods (sums of estimates to rounding)
    assert_frame_equal(current(lake), current(full), check_exact=False, rel_tol=1e-9)

    third = run_vee(lake, settings, run_id="run-3", now=dt.datetime.now(UTC))
    assert third.written.height == 0
    runs = scan(lake, VEE_RUNS).collect().sort("started_at")
    assert runs["run_id"].to_list() == ["run-1", "run-2"]  # a run that changed nothing: no row
    assert runs["rows_written"].to_list() == [first.written.height, second.written.height]


def test_an_incremental_run_without_new_files_does_nothing(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    result = run_vee(lake, Settings(), run_id="r", now=NOW)
    assert result.meters == 0
    assert result.written.height == 0
    assert scan(lake, VEE_RUNS).collect().height == 0


# --- what the meters table, meter events and history change ----------------------------------


def test_the_meters_table_sets_max_power_import_only_and_group(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    day = [0.25] * 96
    day[40] = 2.0  # 8 kW for a quarter-hour
    reads = pl.concat([meter_reads("small", START, day), meter_reads("big", START, day)])
    export = meter_reads("small", START, [0.01] * 96).with_columns(
        pl.lit("energy_export_kwh").alias("quantity")
    )
    write_table(lake, READINGS, pl.concat([reads, export]))
    write_table(
        lake,
        METERS,
        meters_frame(
            meter_id=["small", "big"],
            meter_group=["flat", "flat"],
            max_power_kw=[5.0, 50.0],
            import_only=[True, None],
        ),
    )
    settings = Settings.model_validate({"vee": {"groups": {"flat": {"spike": {"enabled": False}}}}})
    result = run_vee(
        lake,
        settings,
        run_id="r",
        now=NOW,
        first_day=dt.date(2026, 10, 5),
        last_day=dt.date(2026, 10, 5),
    )
    flags = result.written.explode("flags").group_by("meter_id", "flags").len()
    small = dict(flags.filter(pl.col("meter_id") == "small").select("flags", "len").rows())
    big = dict(flags.filter(pl.col("meter_id") == "big").select("flags", "len").rows())
    # 8 kW on a 5 kW meter is not taken at face value; on a 50 kW meter it is
    assert {"glitch", "implausible_delta", "over_max_power"} & set(small)
    assert set(big) == set()
    limit = 5.0 * 0.25 * Settings().vee.max_power.safety_factor
    assert result.written.filter(pl.col("meter_id") == "small")["energy_import_kwh"].max() <= limit
    assert small.get("negative") == 96  # export on a meter the table calls import-only
    assert "spike" not in small  # the group's rules apply (2.0 kWh against 0.25 is a spike)


def test_a_recorded_replacement_restarts_the_register(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    old = meter_reads("m", START, [0.25] * 40, first_kwh=5000.0)
    swap = START + 40 * STEP
    new = meter_reads("m", swap + STEP, [0.25] * 55, first_kwh=60.0)  # not near zero: no guess
    write_table(lake, READINGS, pl.concat([old, new]))
    event = pl.DataFrame(
        {
            "meter_id": ["m"],
            "ts": [swap + STEP / 2],
            "kind": ["replacement"],
            "note": [None],
            "recorded_at": [NOW],
        },
        schema=METER_EVENTS.schema,
    )
    write_table(lake, METER_EVENTS, event)
    result = run_vee(lake, Settings(), run_id="r", now=NOW, meter_ids=["m"])
    energy = result.written["energy_import_kwh"].drop_nulls()
    assert energy.max() <= 0.25 + 1e-9  # no spike and no negative step across the swap
    assert energy.min() >= 0
    assert "meter_reset" in set(result.written.explode("flags")["flags"])


def test_a_day_far_above_the_stored_history_is_high_usage(tmp_path: Path) -> None:
    lake = init_lake(tmp_path / "lake")
    settings = Settings.model_validate({"vee": {"usage": {"min_history_days": 3}}})
    quiet = meter_reads("m", START, [0.1] * (96 * 5))
    write_table(lake, READINGS, quiet)
    first = dt.date(2026, 10, 5)
    run_vee(
        lake, settings, run_id="r1", now=NOW, first_day=first, last_day=first + dt.timedelta(days=4)
    )
    busy_start = START + dt.timedelta(days=5)
    busy = meter_reads("m", busy_start, [1.0] * 96, first_kwh=quiet["value"][-1])
    write_table(lake, READINGS, busy)
    day = first + dt.timedelta(days=5)
    result = run_vee(lake, settings, run_id="r2", now=NOW, first_day=day, last_day=day)
    flagged = result.written.filter(pl.col("flags").list.contains("high_usage"))
    assert flagged.height == 96  # the whole day, against 9.6 kWh/day of history
    assert set(flagged["status"]) == {"actual"}  # a flag, not a verdict (usage.suspect=false)
