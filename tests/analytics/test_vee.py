"""A whole VEE run on a simulated fleet: intervals, idempotence, late reads, no extrapolation."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterlake.analytics.deltas import DEFAULT_MAX_POWER_KW, DEFAULT_WRAP_KWH
from meterlake.analytics.vee import VeeRun, current_readings, meter_parameters, vee_versions
from meterlake.config.schemas import INTERVALS, READINGS
from meterlake.ingest.simulator import FleetSpec, simulate_faults, simulate_readings
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import latest_versions, scan
from meterlake.storage.writer import write_table

UTC = dt.UTC
SPEC = FleetSpec(meters=12, start=dt.datetime(2026, 10, 5, 16, tzinfo=UTC), days=3, seed=11)
START = dt.datetime(2026, 10, 5, 16, tzinfo=UTC)  # local midnight in Asia/Shanghai
END = START + dt.timedelta(days=3)


@pytest.fixture(scope="module")
def fleet() -> pl.DataFrame:
    return simulate_readings(SPEC)


def run_once(lake: Path, run_id: str) -> pl.DataFrame:
    readings = scan(lake, READINGS)
    run = VeeRun(run_id=run_id, start=START, end=END)
    appended = vee_versions(
        readings, scan(lake, INTERVALS), meter_parameters(readings, None, "Asia/Shanghai"), run
    ).collect()
    write_table(lake, INTERVALS, appended)
    return appended


def test_a_run_gives_every_meter_intervals_that_sum_to_its_register(
    tmp_path: Path, fleet: pl.DataFrame
) -> None:
    lake = init_lake(tmp_path / "lake")
    write_table(lake, READINGS, fleet)
    first = run_once(lake, "run-1")
    assert set(first["meter_id"]) == set(fleet["meter_id"])
    assert first["interval_start"].min() >= START and first["interval_start"].max() < END

    faulty = set(simulate_faults(SPEC)["meter_id"])
    clean = sorted(set(fleet["meter_id"]) - faulty)
    assert clean, "the fleet should have meters without injected faults"
    register = (
        current_readings(fleet.lazy())
        .filter(pl.col("quantity") == "energy_import_kwh", pl.col("meter_id").is_in(clean))
        .group_by("meter_id")
        .agg((pl.col("value").max() - pl.col("value").min()).alias("register_kwh"))
        .collect()
    )
    energy = first.group_by("meter_id").agg(pl.col("energy_import_kwh").sum())
    both = register.join(energy, on="meter_id")
    assert both.height == len(clean)
    for _meter, reg, total in both.iter_rows():
        assert total == pytest.approx(reg, rel=1e-9)


def test_a_second_run_writes_nothing(tmp_path: Path, fleet: pl.DataFrame) -> None:
    lake = init_lake(tmp_path / "lake")
    write_table(lake, READINGS, fleet)
    assert run_once(lake, "run-1").height > 0
    assert run_once(lake, "run-2").height == 0


def test_a_late_corrected_read_changes_only_the_intervals_it_touches(
    tmp_path: Path, fleet: pl.DataFrame
) -> None:
    lake = init_lake(tmp_path / "lake")
    write_table(lake, READINGS, fleet)
    run_once(lake, "run-1")
    meter = sorted(set(fleet["meter_id"]) - set(simulate_faults(SPEC)["meter_id"]))[0]
    at = START + dt.timedelta(days=1, hours=10)
    old = fleet.filter(
        pl.col("meter_id") == meter, pl.col("quantity") == "energy_import_kwh", pl.col("ts") == at
    )
    assert old.height == 1
    late = old.with_columns(
        pl.col("value") + 0.2,  # the meter's own corrected read, received a day later
        (pl.col("received_at") + dt.timedelta(days=1)).alias("received_at"),
    )
    write_table(lake, READINGS, late)
    second = run_once(lake, "run-2")
    assert set(second["meter_id"]) == {meter}
    assert second["interval_start"].sort().to_list() == [at - dt.timedelta(minutes=15), at]
    assert set(second["version"]) == {2}
    current = latest_versions(scan(lake, INTERVALS)).filter(pl.col("meter_id") == meter)
    total_before = old["value"][0]
    assert current.select(pl.col("energy_import_kwh").sum()).collect().item() == pytest.approx(
        fleet.filter(pl.col("meter_id") == meter, pl.col("quantity") == "energy_import_kwh")
        .select(pl.col("value").max() - pl.col("value").min())
        .item(),
        rel=1e-9,
    )
    assert total_before > 0


# --- properties of a whole run ---------------------------------------------------------------

WRAP = DEFAULT_WRAP_KWH
MAX_KWH = DEFAULT_MAX_POWER_KW * 0.25  # what a quarter-hour can physically hold


@st.composite
def register_history(draw: st.DrawFn) -> pl.DataFrame:
    """Two days of 15-minute import reads of one meter with gaps and, maybe, a rollover, a
    reset to near zero and a one-read glitch (apart from the reset: a low read next to a reset
    is a different, ambiguous story)."""
    n = 192
    steps = draw(st.lists(st.floats(0.0, 1.5), min_size=n, max_size=n))
    value = draw(st.sampled_from([250.0, WRAP - 30.0]))  # the second one wraps
    values = []
    for step in steps:
        values.append(value)
        value = (value + step) % WRAP
    reset = draw(st.none() | st.integers(10, n - 10))
    if reset is not None:  # a new register from here on, starting near zero
        base = values[reset]
        values[reset:] = [(v - base) % WRAP + 0.5 for v in values[reset:]]
    glitch = draw(st.none() | st.integers(1, n - 2))
    if glitch is not None and (reset is None or abs(glitch - reset) > 4):
        values[glitch] *= 0.01  # one garbage read, the counter back on track after it
    kept = sorted(set(range(n)) - draw(st.sets(st.integers(1, n - 1), max_size=60)))
    t0 = START
    return pl.DataFrame(
        {
            "meter_id": "p1",
            "ts": [t0 + dt.timedelta(minutes=15 * i) for i in kept],
            "quantity": "energy_import_kwh",
            "value": [values[i] for i in kept],
            "quality": [[] for _ in kept],
            "source": "test",
            "received_at": [t0 + dt.timedelta(minutes=15 * i) for i in kept],
        },
        schema=READINGS.schema,
    )


@settings(
    max_examples=25, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(register_history())
def test_a_run_is_idempotent_and_never_invents_energy(reads: pl.DataFrame) -> None:
    run = VeeRun(run_id="run-1", start=START, end=START + dt.timedelta(days=2))
    meters = meter_parameters(reads.lazy(), None, "Asia/Shanghai")
    first = vee_versions(reads.lazy(), pl.LazyFrame(schema=INTERVALS.schema), meters, run)
    first_rows = first.collect()
    again = vee_versions(
        reads.lazy(),
        first_rows.lazy(),
        meters,
        VeeRun(run_id="run-2", start=run.start, end=run.end),
    ).collect()
    assert again.height == 0  # re-running VEE on the same reads writes nothing
    energy = first_rows["energy_import_kwh"].drop_nulls()
    assert (energy >= 0).all()  # an import-only meter: never negative
    assert (energy <= MAX_KWH).all()  # a rollover or reset is never a spike
