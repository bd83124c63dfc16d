"""The fleet simulator: determinism, the readings contract, realistic shape, its faults and its
anomalies."""

from __future__ import annotations

import dataclasses
import datetime as dt
import doctest
import statistics
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from meterlake.config.errors import ConfigError
from meterlake.config.schemas import METERS, READINGS, Quality
from meterlake.ingest import simulator
from meterlake.ingest.simulator import (
    ANOMALIES_SCHEMA,
    FAULTS_SCHEMA,
    REGISTER_WRAP_KWH,
    AnomalyKind,
    FaultKind,
    FleetSpec,
    simulate_anomalies,
    simulate_batches,
    simulate_faults,
    simulate_meter_records,
    simulate_meters,
    simulate_readings,
)
from meterlake.storage.writer import conform
from tests.cli_runner import run_cli

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


# --- anomalies -----------------------------------------------------------------------------------

# 30 days (31 local days in Shanghai) of 120 meters: two meters per anomaly kind.
ANOMALY_SPEC = FleetSpec(
    meters=120, start=dt.datetime(2026, 3, 2, tzinfo=UTC), days=30, seed=11, anomaly_share=0.1
)
CLEAN_SPEC = dataclasses.replace(ANOMALY_SPEC, anomaly_share=0.0)
NOW = dt.datetime(2026, 11, 1, tzinfo=UTC)
FIRST_LOCAL_DAY = dt.date(2026, 3, 2)  # 08:00 local at the start
LAST_LOCAL_DAY = dt.date(2026, 4, 1)  # until 08:00 local


@pytest.fixture(scope="module")
def anomalies() -> pl.DataFrame:
    return simulate_anomalies(ANOMALY_SPEC)


@pytest.fixture(scope="module")
def anomalous() -> pl.DataFrame:
    return simulate_readings(ANOMALY_SPEC)


@pytest.fixture(scope="module")
def clean() -> pl.DataFrame:
    """The same fleet without anomalies: what the anomalous meters would have read."""
    return simulate_readings(CLEAN_SPEC)


@pytest.fixture(scope="module")
def records() -> pl.DataFrame:
    return simulate_meter_records(ANOMALY_SPEC, NOW)


def of_kind(anomalies: pl.DataFrame, kind: AnomalyKind) -> list[dict[str, Any]]:
    rows = anomalies.filter(pl.col("kind") == kind).to_dicts()
    assert rows, f"no {kind} anomaly"
    return rows


def quantity_of(readings: pl.DataFrame, meter_id: str, quantity: str) -> pl.DataFrame:
    return readings.filter(pl.col("meter_id") == meter_id, pl.col("quantity") == quantity).sort(
        "ts"
    )


def local_day(spec: FleetSpec) -> pl.Expr:
    """The local day of the interval that ends at ``ts``."""
    return (pl.col("ts") - spec.interval / 2).dt.convert_time_zone(spec.timezone).dt.date()


def daily_import(readings: pl.DataFrame, meter_id: str) -> dict[dt.date, float]:
    """Register advance [kWh] per local day (the first read of the period has no advance)."""
    energy = quantity_of(readings, meter_id, ENERGY).with_columns(
        step=pl.col("value").diff(), day=local_day(ANOMALY_SPEC)
    )
    per_day = energy.group_by("day").agg(pl.col("step").sum())
    return dict(per_day.iter_rows())


def last_ts(spec: FleetSpec) -> dt.datetime:
    return spec.start + (spec.intervals - 1) * spec.interval


def test_anomaly_ground_truth_is_deterministic(anomalies: pl.DataFrame) -> None:
    assert anomalies.schema == ANOMALIES_SCHEMA
    assert_frame_equal(simulate_anomalies(ANOMALY_SPEC), anomalies, check_exact=True)
    other = simulate_anomalies(dataclasses.replace(ANOMALY_SPEC, seed=12))
    assert not other.equals(anomalies)


def test_anomalies_spread_over_the_kinds_on_meters_without_faults(
    anomalies: pl.DataFrame, records: pl.DataFrame
) -> None:
    assert dict(anomalies["kind"].value_counts().iter_rows()) == dict.fromkeys(AnomalyKind, 2)
    assert anomalies["meter_id"].is_unique().all()
    faulted = set(simulate_faults(ANOMALY_SPEC)["meter_id"])
    assert faulted
    assert not faulted & set(anomalies["meter_id"])
    reversed_ = anomalies.filter(pl.col("kind") == AnomalyKind.REVERSE_ENERGY)["meter_id"]
    import_only = records.filter(pl.col("meter_id").is_in(reversed_.implode()))["import_only"]
    assert import_only.to_list() == [True, True]
    factor = anomalies.filter(pl.col("factor").is_not_null())
    assert set(factor["kind"]) == {AnomalyKind.SURGE, AnomalyKind.SUSTAINED_DROP}
    surge = factor.filter(pl.col("kind") == AnomalyKind.SURGE)["factor"]
    drop = factor.filter(pl.col("kind") == AnomalyKind.SUSTAINED_DROP)["factor"]
    assert surge.is_between(2.5, 4.0).all()
    assert drop.is_between(0.15, 0.4).all()


def test_anomalies_take_whole_local_days_after_a_baseline(anomalies: pl.DataFrame) -> None:
    half = ANOMALY_SPEC.interval / 2
    for row in anomalies.iter_rows(named=True):
        local = [
            (row[c] - half).astimezone(ZoneInfo(ANOMALY_SPEC.timezone)) for c in ("start", "end")
        ]
        before = (row["start"] - 3 * half).astimezone(ZoneInfo(ANOMALY_SPEC.timezone))
        after = (row["end"] + half).astimezone(ZoneInfo(ANOMALY_SPEC.timezone))
        assert [t.date() for t in local] == [row["first_day"], row["last_day"]]
        assert row["start"] == ANOMALY_SPEC.start or before.date() < row["first_day"]
        assert after.date() > row["last_day"] or row["end"] == last_ts(ANOMALY_SPEC)
        if row["kind"] == AnomalyKind.VACANT_USE:
            assert (row["first_day"], row["last_day"]) == (FIRST_LOCAL_DAY, LAST_LOCAL_DAY)
            continue
        # The second half of the period, at least ten normal days and three anomalous days.
        assert row["first_day"] >= FIRST_LOCAL_DAY + dt.timedelta(days=15)
        assert row["first_day"] <= LAST_LOCAL_DAY - dt.timedelta(days=2)
        if row["kind"] == AnomalyKind.SURGE:
            assert 1 <= (row["last_day"] - row["first_day"]).days + 1 <= 3
        else:
            assert row["last_day"] == LAST_LOCAL_DAY
            assert row["end"] == last_ts(ANOMALY_SPEC)


def test_readings_differ_only_where_the_anomalies_are(
    anomalous: pl.DataFrame, clean: pl.DataFrame, anomalies: pl.DataFrame, records: pl.DataFrame
) -> None:
    """No other draw shifts: meters without anomaly, and every meter before its anomaly, read
    exactly as without anomalies."""
    touched = pl.col("meter_id").is_in(
        pl.concat([anomalies["meter_id"], records.filter("vacant")["meter_id"]]).implode()
    )
    assert_frame_equal(anomalous.filter(~touched), clean.filter(~touched), check_exact=True)
    starts = anomalies.select("meter_id", first_ts="start")
    before = pl.col("ts") < pl.col("first_ts")
    early = anomalous.join(starts, on="meter_id").filter(before).drop("first_ts")
    assert early.height > 0
    expected = clean.join(starts, on="meter_id").filter(before).drop("first_ts")
    assert_frame_equal(early, expected, check_exact=True)


def test_surge_multiplies_the_load_on_its_days(
    anomalous: pl.DataFrame, clean: pl.DataFrame, anomalies: pl.DataFrame
) -> None:
    for row in of_kind(anomalies, AnomalyKind.SURGE):
        days, normal = (
            daily_import(anomalous, row["meter_id"]),
            daily_import(clean, row["meter_id"]),
        )
        baseline = statistics.median(
            v for d, v in days.items() if FIRST_LOCAL_DAY < d < row["first_day"]
        )
        surge_days = [d for d in days if row["first_day"] <= d <= row["last_day"]]
        assert surge_days
        for day in surge_days:
            assert days[day] == pytest.approx(row["factor"] * normal[day], abs=0.1)
            assert days[day] >= 2.5 * normal[day]
            assert days[day] >= 1.8 * baseline
        for day in days:
            if day > row["last_day"]:
                assert days[day] == pytest.approx(normal[day], abs=0.02)


def test_sustained_drop_records_a_share_of_the_load(
    anomalous: pl.DataFrame, clean: pl.DataFrame, anomalies: pl.DataFrame
) -> None:
    for row in of_kind(anomalies, AnomalyKind.SUSTAINED_DROP):
        meter, after = row["meter_id"], pl.col("ts") >= row["start"]
        days, normal = daily_import(anomalous, meter), daily_import(clean, meter)
        for day in days:
            if day >= row["first_day"]:
                assert days[day] == pytest.approx(row["factor"] * normal[day], abs=0.02)
        power = quantity_of(anomalous, meter, "power_w").filter(after)["value"]
        real = quantity_of(clean, meter, "power_w").filter(after)["value"]
        assert (power - real * row["factor"]).abs().max() <= 0.1 + 1e-9
        # Still reporting as usual: every quantity, the voltage of the real load.
        assert (
            anomalous.filter(pl.col("meter_id") == meter).height
            == clean.filter(pl.col("meter_id") == meter).height
        )
        volts = quantity_of(anomalous, meter, "voltage_v")
        assert volts["value"].equals(quantity_of(clean, meter, "voltage_v")["value"])


def test_zero_with_voltage_stops_the_register_only(
    anomalous: pl.DataFrame, clean: pl.DataFrame, anomalies: pl.DataFrame
) -> None:
    for row in of_kind(anomalies, AnomalyKind.ZERO_WITH_VOLTAGE):
        meter, after = row["meter_id"], pl.col("ts") >= row["start"]
        energy = quantity_of(anomalous, meter, ENERGY)
        last_good = energy.filter(pl.col("ts") == row["start"] - ANOMALY_SPEC.interval)["value"]
        stuck = energy.filter(after)["value"]
        assert stuck.len() > 96
        assert (stuck == last_good.item()).all()
        assert energy.filter(~after)["value"].diff().drop_nulls().sum() > 10.0
        volts = quantity_of(anomalous, meter, "voltage_v").filter(after)["value"]
        assert volts.is_between(205.0, 235.0).all()
        power = quantity_of(anomalous, meter, "power_w").filter(after)["value"]
        assert (power > 0).all()
        assert power.equals(quantity_of(clean, meter, "power_w").filter(after)["value"])


def test_reverse_energy_counts_consumption_as_export(
    anomalous: pl.DataFrame, clean: pl.DataFrame, anomalies: pl.DataFrame
) -> None:
    pv = set(simulate_meters(ANOMALY_SPEC).filter("has_pv")["meter_id"])
    for row in of_kind(anomalies, AnomalyKind.REVERSE_ENERGY):
        meter, after = row["meter_id"], pl.col("ts") >= row["start"]
        assert meter not in pv
        export = quantity_of(anomalous, meter, "energy_export_kwh")
        assert export["ts"].min() == row["start"]  # reported from the first reversed read on
        assert export["ts"].max() == last_ts(ANOMALY_SPEC)
        assert (export["value"].diff().drop_nulls() >= 0).all()
        energy = quantity_of(anomalous, meter, ENERGY).filter(pl.col("ts") >= row["start"])
        assert energy["value"].n_unique() == 1
        used = quantity_of(clean, meter, ENERGY)
        start_kwh = used.filter(pl.col("ts") == row["start"] - ANOMALY_SPEC.interval)["value"]
        expected = used["value"].last() - start_kwh.item()
        assert export["value"].last() == pytest.approx(expected, abs=0.02)
        assert expected > 5.0
        power = quantity_of(anomalous, meter, "power_w").filter(after)["value"]
        assert (power < 0).all()
        assert (-power).equals(quantity_of(clean, meter, "power_w").filter(after)["value"])


def test_flat_line_advances_by_one_constant_step(
    anomalous: pl.DataFrame, clean: pl.DataFrame, anomalies: pl.DataFrame
) -> None:
    for row in of_kind(anomalies, AnomalyKind.FLAT_LINE):
        meter, after = row["meter_id"], pl.col("ts") >= row["start"]
        steps = (
            quantity_of(anomalous, meter, ENERGY)
            .with_columns(hundredths=(pl.col("value").diff() * 100).round().cast(pl.Int64))
            .filter(after)["hundredths"]
        )
        assert steps.n_unique() == 1
        step = steps.first()
        assert isinstance(step, int)
        assert step >= 1
        used = quantity_of(clean, meter, ENERGY)["value"].to_numpy()
        mean_kwh = (used[-1] - used[0]) / (used.size - 1)
        assert step / 100 == pytest.approx(mean_kwh, abs=0.006)
        power = quantity_of(anomalous, meter, "power_w").filter(after)["value"]
        assert power.unique().to_list() == [step / 100 * 1000 / 0.25]
        earlier = quantity_of(anomalous, meter, ENERGY).filter(~after)["value"].diff()
        assert earlier.drop_nulls().n_unique() > 3


def test_vacant_meters_in_the_master_data(
    anomalous: pl.DataFrame,
    clean: pl.DataFrame,
    anomalies: pl.DataFrame,
    records: pl.DataFrame,
) -> None:
    vacant = set(records.filter("vacant")["meter_id"])
    assert records["vacant"].drop_nulls().all()
    in_use = {row["meter_id"] for row in of_kind(anomalies, AnomalyKind.VACANT_USE)}
    assert in_use < vacant
    for meter in in_use:  # consumes like a household, all period long
        mine = pl.col("meter_id") == meter
        assert_frame_equal(anomalous.filter(mine), clean.filter(mine), check_exact=True)
        assert sum(daily_import(anomalous, meter).values()) > 30.0
    idle = vacant - in_use  # 2 % of the households, standby only: not anomalies
    meters = simulate_meters(ANOMALY_SPEC).filter(pl.col("meter_id").is_in(list(idle)))
    households = int((simulate_meters(ANOMALY_SPEC)["segment"] == "household").sum())
    assert len(idle) == max(1, round(0.02 * households))
    assert set(meters["segment"]) == {"household"}
    assert not meters["has_pv"].any()
    assert not idle & set(simulate_faults(ANOMALY_SPEC)["meter_id"])
    for meter in idle:
        used = sum(daily_import(anomalous, meter).values())
        normal = sum(daily_import(clean, meter).values())
        assert used == pytest.approx(0.03 * normal, abs=0.02)


def test_no_anomaly_share_changes_nothing(
    readings: pl.DataFrame, faults: pl.DataFrame, meters: pl.DataFrame
) -> None:
    spec = dataclasses.replace(SPEC, anomaly_share=0.0)
    assert spec == SPEC
    assert_frame_equal(simulate_readings(spec), readings, check_exact=True)
    assert_frame_equal(simulate_faults(spec), faults, check_exact=True)
    assert_frame_equal(simulate_meters(spec), meters, check_exact=True)
    assert simulate_meter_records(spec, NOW)["vacant"].is_null().all()
    none = simulate_anomalies(spec)
    assert none.is_empty()
    assert none.schema == ANOMALIES_SCHEMA


def test_anomalies_leave_faults_and_other_streams_alone() -> None:
    assert_frame_equal(simulate_faults(ANOMALY_SPEC), simulate_faults(CLEAN_SPEC), check_exact=True)
    assert_frame_equal(simulate_meters(ANOMALY_SPEC), simulate_meters(CLEAN_SPEC), check_exact=True)


def test_short_period_puts_anomalies_in_its_middle() -> None:
    spec = FleetSpec(
        meters=60, start=dt.datetime(2026, 3, 2, tzinfo=UTC), days=3, anomaly_share=0.1
    )
    truth = simulate_anomalies(spec).filter(pl.col("kind") != AnomalyKind.VACANT_USE)
    assert set(truth["kind"]) == set(AnomalyKind) - {AnomalyKind.VACANT_USE}
    # Four local days (two partial): two normal days, then the anomaly.
    assert set(truth["first_day"]) == {dt.date(2026, 3, 4)}
    zero = truth.filter(pl.col("kind") == AnomalyKind.ZERO_WITH_VOLTAGE).row(0, named=True)
    energy = quantity_of(simulate_readings(spec), zero["meter_id"], ENERGY)
    assert energy.filter(pl.col("ts") >= zero["start"])["value"].n_unique() == 1
    assert energy.filter(pl.col("ts") < zero["start"])["value"].n_unique() > 50


def test_tiny_fleet_gets_the_first_anomaly_kinds() -> None:
    spec = FleetSpec(meters=3, start=dt.datetime(2026, 1, 5, tzinfo=UTC), days=1, anomaly_share=0.5)
    assert simulate_anomalies(spec)["kind"].sort().to_list() == sorted(
        [AnomalyKind.SURGE, AnomalyKind.SUSTAINED_DROP, AnomalyKind.ZERO_WITH_VOLTAGE]
    )
    assert simulate_meter_records(spec, NOW)["vacant"].sum() == 0


def test_no_reversed_wiring_without_import_only_meters() -> None:
    spec = FleetSpec(
        meters=30,
        start=dt.datetime(2026, 1, 5, tzinfo=UTC),
        days=2,
        pv_share=1.0,
        faults=False,
        anomaly_share=0.5,
    )
    kinds = simulate_anomalies(spec)["kind"]
    assert AnomalyKind.REVERSE_ENERGY not in kinds
    assert set(kinds) == set(AnomalyKind) - {AnomalyKind.REVERSE_ENERGY}


@pytest.mark.parametrize("share", [-0.1, 1.5])
def test_bad_anomaly_share_is_refused(share: float) -> None:
    with pytest.raises(ConfigError, match=r"anomaly_share=.*between 0 and 1"):
        dataclasses.replace(SPEC, anomaly_share=share)


def test_cli_simulate_injects_anomalies(tmp_path: Path) -> None:
    root = tmp_path / "lake"
    assert run_cli("init", root).returncode == 0
    done = run_cli(
        "simulate",
        "--lake",
        root,
        "--meters",
        "30",
        "--days",
        "2",
        "--start",
        "2026-10-01",
        "--anomalies",
        "0.2",
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(line.startswith("injected faults: ") for line in lines)
    line = next(line for line in lines if line.startswith("injected anomalies: "))
    counts = dict(
        part.rsplit(" ", 1) for part in line.removeprefix("injected anomalies: ").split(", ")
    )
    assert counts == dict.fromkeys(AnomalyKind, "1")
    plain = run_cli("simulate", "--lake", root, "--meters", "5", "--days", "1")
    assert plain.returncode == 0, plain.stderr
    assert "injected anomalies" not in plain.stdout
