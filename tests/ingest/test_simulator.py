"""The fleet simulator: determinism, the readings contract, realistic shape, and its faults."""

from __future__ import annotations

import dataclasses
import datetime as dt
import doctest

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from meterlake.config.errors import ConfigError
from meterlake.config.schemas import METERS, READINGS, Quality
from meterlake.ingest import simulator
from meterlake.ingest.simulator import (
    FAULTS_SCHEMA,
    REGISTER_WRAP_KWH,
    FaultKind,
    FleetSpec,
    simulate_batches,
    simulate_faults,
    simulate_meter_records,
    simulate_meters,
    simulate_readings,
)
from meterlake.storage.writer import conform

UTC = dt.UTC
# Monday 2 March 2026: a week with a weekend; 120 meters give each fault kind one meter.
SPEC = FleetSpec(meters=120, start=dt.datetime(2026, 3, 2, tzinfo=UTC), days=7, seed=11)
# Europe/Berlin switches to summer time on 29 March 2026 (a 23-hour local day).
DST_SPEC = FleetSpec(
    meters=60,
    start=dt.datetime(2026, 3, 23, tzinfo=UTC),
    days=14,
    timezone="Europe/Berlin",
    seed=5,
    pv_share=0.3,
)
ENERGY = "energy_import_kwh"
REGISTER_FAULTS = (FaultKind.ROLLOVER, FaultKind.REPLACEMENT, FaultKind.GLITCH)


@pytest.fixture(scope="module")
def readings() -> pl.DataFrame:
    return simulate_readings(SPEC)


@pytest.fixture(scope="module")
def faults() -> pl.DataFrame:
    return simulate_faults(SPEC)


@pytest.fixture(scope="module")
def meters() -> pl.DataFrame:
    return simulate_meters(SPEC)


def fault_meters(faults: pl.DataFrame, *kinds: FaultKind) -> list[str]:
    return faults.filter(pl.col("kind").is_in([k.value for k in kinds]))["meter_id"].to_list()


def local_hour(spec: FleetSpec) -> pl.Expr:
    return pl.col("ts").dt.convert_time_zone(spec.timezone).dt.hour()


def test_doctests() -> None:
    assert doctest.testmod(simulator).failed == 0


def test_same_seed_same_fleet(readings: pl.DataFrame, faults: pl.DataFrame) -> None:
    assert_frame_equal(simulate_readings(SPEC), readings, check_exact=True)
    assert_frame_equal(simulate_faults(SPEC), faults, check_exact=True)


def test_other_seed_other_fleet(readings: pl.DataFrame, faults: pl.DataFrame) -> None:
    other = dataclasses.replace(SPEC, seed=SPEC.seed + 1)
    assert not simulate_readings(other)["value"].equals(readings["value"])
    assert not simulate_faults(other).equals(faults)
    assert not simulate_meters(other).equals(simulate_meters(SPEC))


def test_conforms_to_the_readings_contract(readings: pl.DataFrame) -> None:
    assert readings.schema == READINGS.schema
    assert_frame_equal(conform(readings, READINGS), readings, check_exact=True)
    ids = readings["meter_id"].unique().sort()
    assert ids.to_list() == [f"m-{i:05d}" for i in range(1, SPEC.meters + 1)]
    assert readings["source"].str.contains(r"^sim:gw-\d{2}$").all()
    assert readings["quantity"].unique().sort().to_list() == [
        "energy_export_kwh",
        "energy_import_kwh",
        "power_w",
        "voltage_v",
    ]


def test_rows_are_sorted_by_time_meter_and_quantity(readings: pl.DataFrame) -> None:
    assert readings.select("ts", "meter_id", "quantity").equals(
        readings.select("ts", "meter_id", "quantity").sort("ts", "meter_id", "quantity")
    )


def test_received_shortly_after_measured(readings: pl.DataFrame) -> None:
    delay = (readings["received_at"] - readings["ts"]).dt.total_seconds(fractional=True)
    assert delay.min() >= 1.0
    assert delay.max() < 20 * 60


def test_row_count_is_grid_minus_missing_plus_duplicates(
    readings: pl.DataFrame, faults: pl.DataFrame, meters: pl.DataFrame
) -> None:
    per_meter = meters.select(
        "meter_id", quantities=pl.when("has_pv").then(4).otherwise(3).cast(pl.Int64)
    )
    steps = ((pl.col("end") - pl.col("start")) / SPEC.interval + 1).cast(pl.Int64)
    touched = (
        faults.join(per_meter, on="meter_id")
        .with_columns(
            rows=pl.when(pl.col("quantity").is_null()).then("quantities").otherwise(1) * steps
        )
        .group_by("kind")
        .agg(pl.col("rows").sum())
    )
    rows = dict(touched.iter_rows())
    grid = per_meter["quantities"].sum() * SPEC.intervals
    missing = rows[FaultKind.GAP] + rows[FaultKind.DEAD]
    extra = rows[FaultKind.DUPLICATE] + rows[FaultKind.CONFLICT]
    assert readings.height == grid - missing + extra


def test_without_faults_every_reading_once() -> None:
    spec = dataclasses.replace(SPEC, faults=False)
    frame = simulate_readings(spec)
    pv = simulate_meters(spec)["has_pv"].sum()
    assert frame.height == (3 * spec.meters + pv) * spec.intervals
    assert frame.select(READINGS.dedup_key).is_unique().all()
    assert frame["value"].is_finite().all()
    assert (frame["quality"].list.len() == 0).all()
    assert simulate_faults(spec).is_empty()
    assert simulate_faults(spec).schema == FAULTS_SCHEMA


def test_registers_are_monotone_without_register_faults(
    readings: pl.DataFrame, faults: pl.DataFrame
) -> None:
    excluded = fault_meters(faults, *REGISTER_FAULTS)
    steps = (
        readings.filter(
            pl.col("quantity").str.starts_with("energy_"), ~pl.col("meter_id").is_in(excluded)
        )
        .sort("meter_id", "quantity", "ts")
        .select(step=pl.col("value").diff().over("meter_id", "quantity"))
        .drop_nulls()
    )
    assert steps.height > 0
    assert steps["step"].min() >= 0.0


def test_register_advance_matches_mean_power(
    readings: pl.DataFrame, faults: pl.DataFrame, meters: pl.DataFrame
) -> None:
    """Without PV, the register advance over an interval is the interval's mean power."""
    plain = meters.filter(~pl.col("has_pv"), ~pl.col("meter_id").is_in(faults["meter_id"]))
    wide = (
        readings.filter(pl.col("meter_id").is_in(plain["meter_id"]))
        .pivot(on="quantity", index=["meter_id", "ts"], values="value")
        .sort("meter_id", "ts")
        .with_columns(advance_w=pl.col(ENERGY).diff().over("meter_id") * 1000 / 0.25)
        .drop_nulls("advance_w")
    )
    error = (wide["advance_w"] - wide["power_w"]).abs()
    # The register shows whole 0.01 kWh: 40 W over 15 minutes.
    assert error.max() < 40.0 + 1e-6


def test_evening_peak_in_local_time(readings: pl.DataFrame, meters: pl.DataFrame) -> None:
    households = meters.filter(pl.col("segment") == "household", ~pl.col("has_pv"))["meter_id"]
    power = readings.filter(
        pl.col("quantity") == "power_w",
        pl.col("meter_id").is_in(households),
        pl.col("value").is_not_nan(),
    ).with_columns(hour=local_hour(SPEC))
    evening = power.filter(pl.col("hour").is_between(19, 20))["value"].mean()
    night = power.filter(pl.col("hour").is_between(3, 4))["value"].mean()
    assert isinstance(evening, float)
    assert isinstance(night, float)
    assert evening > 2 * night


def test_businesses_work_in_daytime_on_weekdays(
    readings: pl.DataFrame, meters: pl.DataFrame
) -> None:
    businesses = meters.filter(pl.col("segment") == "business", ~pl.col("has_pv"))["meter_id"]
    local = pl.col("ts").dt.convert_time_zone(SPEC.timezone)
    power = readings.filter(
        pl.col("quantity") == "power_w",
        pl.col("meter_id").is_in(businesses),
        pl.col("value").is_not_nan(),
    ).with_columns(hour=local.dt.hour(), weekend=local.dt.weekday() >= 6)
    by = power.group_by("weekend", day=pl.col("hour").is_between(10, 15)).agg(
        pl.col("value").mean()
    )
    mean = {(w, d): v for w, d, v in by.iter_rows()}
    assert mean[False, True] > 2 * mean[False, False]
    assert mean[True, True] < mean[False, True]


def test_daily_shape_follows_local_time_across_dst() -> None:
    frame = simulate_readings(DST_SPEC)
    households = simulate_meters(DST_SPEC).filter(
        pl.col("segment") == "household", ~pl.col("has_pv")
    )["meter_id"]
    power = frame.filter(
        pl.col("quantity") == "power_w",
        pl.col("meter_id").is_in(households),
        pl.col("value").is_not_nan(),
    ).with_columns(
        hour=local_hour(DST_SPEC), summer=pl.col("ts") >= dt.datetime(2026, 3, 29, 1, tzinfo=UTC)
    )
    for summer in (False, True):
        part = power.filter(pl.col("summer") == summer)
        evening = part.filter(pl.col("hour").is_between(19, 20))["value"].mean()
        night = part.filter(pl.col("hour").is_between(3, 4))["value"].mean()
        assert isinstance(evening, float)
        assert isinstance(night, float)
        assert evening > 2 * night


def test_pv_meters_export_around_noon() -> None:
    frame = simulate_readings(DST_SPEC)
    fleet = simulate_meters(DST_SPEC)
    pv = fleet.filter("has_pv")["meter_id"]
    assert 0 < pv.len() < fleet.height
    export = frame.filter(pl.col("quantity") == "energy_export_kwh")
    assert set(export["meter_id"].unique()) == set(pv)
    power = frame.filter(pl.col("quantity") == "power_w", pl.col("value").is_not_nan())
    negative = power.filter(pl.col("value") < 0)
    assert set(negative["meter_id"].unique()) <= set(pv)
    hours = negative.select(local_hour(DST_SPEC))["ts"]
    assert hours.min() >= 6
    assert hours.max() <= 19


def test_voltage_near_nominal(readings: pl.DataFrame) -> None:
    volts = readings.filter(pl.col("quantity") == "voltage_v", pl.col("value").is_not_nan())
    assert 215 < volts["value"].mean() < 225  # type: ignore[operator]
    assert volts["value"].min() > 195  # type: ignore[operator]
    assert volts["value"].max() < 245  # type: ignore[operator]


def test_faults_list_each_kind(faults: pl.DataFrame) -> None:
    assert faults.schema == FAULTS_SCHEMA
    counts = dict(faults["kind"].value_counts().iter_rows())
    assert counts == dict.fromkeys(FaultKind, 1)
    assert faults["meter_id"].is_unique().all()
    assert (faults["start"] <= faults["end"]).all()


def test_more_meters_more_faults_each() -> None:
    spec = dataclasses.replace(SPEC, meters=300, days=2)
    counts = dict(simulate_faults(spec)["kind"].value_counts().iter_rows())
    assert counts == dict.fromkeys(FaultKind, 3)


def test_gaps_and_dead_meters_have_no_readings(
    readings: pl.DataFrame, faults: pl.DataFrame
) -> None:
    for kind in (FaultKind.GAP, FaultKind.DEAD):
        fault = faults.filter(pl.col("kind") == kind).row(0, named=True)
        mine = readings.filter(pl.col("meter_id") == fault["meter_id"])
        assert mine.filter(pl.col("ts").is_between(fault["start"], fault["end"])).is_empty()
        assert not mine.filter(pl.col("ts") == fault["start"] - SPEC.interval).is_empty()
    dead = faults.filter(pl.col("kind") == FaultKind.DEAD).row(0, named=True)
    assert dead["end"] == SPEC.start + (SPEC.intervals - 1) * SPEC.interval


def energy_of(readings: pl.DataFrame, meter_id: str) -> pl.DataFrame:
    return readings.filter(pl.col("meter_id") == meter_id, pl.col("quantity") == ENERGY).sort("ts")


def test_rollover_wraps_at_the_register_width(readings: pl.DataFrame, faults: pl.DataFrame) -> None:
    fault = faults.filter(pl.col("kind") == FaultKind.ROLLOVER).row(0, named=True)
    energy = energy_of(readings, fault["meter_id"]).with_columns(step=pl.col("value").diff())
    drops = energy.filter(pl.col("step") < 0)
    assert drops["ts"].to_list() == [fault["start"]]
    before = energy.filter(pl.col("ts") < fault["start"])["value"]
    assert before.max() <= REGISTER_WRAP_KWH - 0.01  # type: ignore[operator]
    assert drops["step"].item() == pytest.approx(-REGISTER_WRAP_KWH, abs=10.0)


def test_replacement_restarts_the_registers(readings: pl.DataFrame, faults: pl.DataFrame) -> None:
    fault = faults.filter(pl.col("kind") == FaultKind.REPLACEMENT).row(0, named=True)
    energy = energy_of(readings, fault["meter_id"]).with_columns(step=pl.col("value").diff())
    drops = energy.filter(pl.col("step") < 0)
    assert drops["ts"].to_list() == [fault["start"]]
    assert drops["value"].item() < 1.0
    assert energy["value"].first() > 100.0  # type: ignore[operator]


def test_glitch_is_one_low_read(readings: pl.DataFrame, faults: pl.DataFrame) -> None:
    fault = faults.filter(pl.col("kind") == FaultKind.GLITCH).row(0, named=True)
    energy = energy_of(readings, fault["meter_id"])
    clean = energy.filter(pl.col("ts") != fault["start"])["value"]
    assert (clean.diff().drop_nulls() >= 0).all()
    glitch = energy.filter(pl.col("ts") == fault["start"])["value"].item()
    before = energy.filter(pl.col("ts") < fault["start"])["value"].max()
    assert glitch < 0.5 * before  # type: ignore[operator]


def test_duplicate_delivery_repeats_rows(readings: pl.DataFrame, faults: pl.DataFrame) -> None:
    fault = faults.filter(pl.col("kind") == FaultKind.DUPLICATE).row(0, named=True)
    span = readings.filter(
        pl.col("meter_id") == fault["meter_id"],
        pl.col("ts").is_between(fault["start"], fault["end"]),
    )
    assert span.height > 0
    unique = span.unique(maintain_order=True)
    assert span.height == 2 * unique.height
    others = readings.filter(pl.col("meter_id") != fault["meter_id"])
    assert not others.is_duplicated().any()


def test_conflict_has_two_values_for_one_key(readings: pl.DataFrame, faults: pl.DataFrame) -> None:
    fault = faults.filter(pl.col("kind") == FaultKind.CONFLICT).row(0, named=True)
    rows = readings.filter(
        pl.col("meter_id") == fault["meter_id"],
        pl.col("ts") == fault["start"],
        pl.col("quantity") == fault["quantity"],
    )
    assert rows.height == 2
    assert rows["value"].n_unique() == 2
    assert rows["received_at"][1] > rows["received_at"][0]
    keys = readings.filter(~pl.col("meter_id").is_in(fault_meters(faults, FaultKind.DUPLICATE)))
    repeated = keys.filter(keys.select(READINGS.dedup_key).is_duplicated())
    assert repeated.height == 2
    assert repeated["meter_id"].unique().to_list() == [fault["meter_id"]]


def test_nan_is_kept_and_flagged(readings: pl.DataFrame, faults: pl.DataFrame) -> None:
    fault = faults.filter(pl.col("kind") == FaultKind.NAN).row(0, named=True)
    invalid = readings.filter(pl.col("value").is_nan())
    assert invalid.select("meter_id", "ts", "quantity").row(0) == (
        fault["meter_id"],
        fault["start"],
        fault["quantity"],
    )
    assert invalid.height == 1
    assert invalid["quality"].to_list() == [[Quality.INVALID_VALUE.value]]
    assert (readings.filter(pl.col("value").is_not_nan())["quality"].list.len() == 0).all()


@pytest.mark.parametrize("batch_hours", [1, 5])
def test_batches_concatenate_to_the_readings(readings: pl.DataFrame, batch_hours: int) -> None:
    batches = list(simulate_batches(SPEC, batch_hours=batch_hours))
    assert len(batches) == -(-SPEC.days * 24 // batch_hours)
    assert_frame_equal(pl.concat(batches), readings, check_exact=True)
    window = dt.timedelta(hours=batch_hours)
    for i, batch in enumerate(batches):
        lo = SPEC.start + i * window
        assert batch["ts"].is_between(lo, lo + window, closed="left").all()


def test_tiny_fleet_gets_the_first_fault_kinds() -> None:
    spec = FleetSpec(meters=3, start=dt.datetime(2026, 1, 5, tzinfo=UTC), days=1)
    assert simulate_faults(spec)["kind"].sort().to_list() == sorted(
        [FaultKind.ROLLOVER, FaultKind.REPLACEMENT, FaultKind.GLITCH]
    )
    assert conform(simulate_readings(spec), READINGS).height > 0


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("meters", 0, "meters=0"),
        ("start", dt.datetime(2026, 1, 1), "naive"),
        ("days", 0, "days=0"),
        ("interval_minutes", 7, "divisor of 60"),
        ("timezone", "Mars/Olympus", "IANA"),
        ("seed", -1, "non-negative"),
        ("pv_share", 1.5, "between 0 and 1"),
    ],
)
def test_bad_spec_is_refused(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        dataclasses.replace(SPEC, **{field: value})


def test_meter_records_are_master_data_of_the_same_fleet(meters: pl.DataFrame) -> None:
    now = dt.datetime(2026, 11, 1, tzinfo=UTC)
    records = conform(simulate_meter_records(SPEC, now), METERS)
    assert records["meter_id"].to_list() == meters["meter_id"].to_list()
    assert records["meter_group"].to_list() == meters["segment"].to_list()
    assert records["pv"].to_list() == meters["has_pv"].to_list()
    assert (records["import_only"] == ~records["pv"]).all()
    assert records["timezone"].is_null().all()  # the site's zone
    assert set(records["updated_at"]) == {now}
