"""Estimation of missing and register-bounded intervals (the "E" of VEE)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from meterlake.analytics.estimation import (
    PROFILE_SCHEMA,
    EstimationRules,
    class_load_profiles,
    estimate_intervals,
    local_slots,
)
from meterlake.config.errors import ConfigError

UTC = dt.UTC
SCHEMA = pl.Schema(
    {
        "meter_id": pl.String(),
        "interval_start": pl.Datetime("us", "UTC"),
        "interval_minutes": pl.Int16(),
        "energy_import_kwh": pl.Float64(),
        "energy_export_kwh": pl.Float64(),
        "status": pl.String(),
        "flags": pl.List(pl.String()),
        "method": pl.String(),
    }
)
GAP = ["gap_apportioned"]


def meters(*rows: tuple[str, str, str]) -> pl.DataFrame:
    return pl.DataFrame(rows, schema=["meter_id", "timezone", "group"], orient="row")


SHANGHAI = meters(("m1", "Asia/Shanghai", "res"), ("m2", "Asia/Shanghai", "res"))


def series(
    meter: str,
    start: dt.datetime,
    imports: Sequence[float | None],
    *,
    minutes: int = 60,
    statuses: Sequence[str] | None = None,
    flags: Sequence[list[str]] | None = None,
    exports: Sequence[float | None] | None = None,
) -> pl.DataFrame:
    """One row per value; status ``missing`` where the value is None unless given."""
    n = len(imports)
    step = dt.timedelta(minutes=minutes)
    return pl.DataFrame(
        {
            "meter_id": [meter] * n,
            "interval_start": [start + i * step for i in range(n)],
            "interval_minutes": [minutes] * n,
            "energy_import_kwh": list(imports),
            "energy_export_kwh": list(exports) if exports is not None else [None] * n,
            "status": list(statuses)
            if statuses is not None
            else ["missing" if v is None else "actual" for v in imports],
            "flags": list(flags) if flags is not None else [[] for _ in range(n)],
            "method": [None] * n,
        },
        schema=SCHEMA,
    )


def run(frame: pl.DataFrame, meter_frame: pl.DataFrame = SHANGHAI, **kwargs: Any) -> pl.DataFrame:
    return estimate_intervals(frame.lazy(), meter_frame, **kwargs).collect()


def local_midnight(day: dt.date, tz: str = "Asia/Shanghai") -> dt.datetime:
    from zoneinfo import ZoneInfo

    return dt.datetime.combine(day, dt.time(), ZoneInfo(tz)).astimezone(UTC)


def days_of(
    meter: str, first: dt.date, values: Sequence[Sequence[float | None]], **kw: Any
) -> pl.DataFrame:
    """Consecutive local Shanghai days of hourly values (24 per day)."""
    flat = [v for day in values for v in day]
    return series(meter, local_midnight(first), flat, **kw)


# --- rules -----------------------------------------------------------------------------------


def test_rules_validate() -> None:
    with pytest.raises(ConfigError, match="like_days"):
        EstimationRules(like_days=0)
    with pytest.raises(ConfigError, match="IANA time zone"):
        EstimationRules(default_timezone="Mars/Olympus")


# --- linear ----------------------------------------------------------------------------------


def test_linear_fills_short_gap_between_actuals() -> None:
    # Itron's example: 75, 4 missing, 100 -> 80, 85, 90, 95 (here kWh / 100)
    t = dt.datetime(2026, 10, 1, tzinfo=UTC)
    frame = series(
        "m1",
        t,
        [0.75, None, None, None, None, 1.0, 1.04],
        minutes=15,
        exports=[0.0, None, None, None, None, 0.5, 0.5],
    )
    out = run(frame)
    assert out["energy_import_kwh"].to_list() == pytest.approx(
        [0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.04]
    )
    assert out["energy_export_kwh"].to_list() == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.5])
    assert out["status"].to_list() == ["actual"] + ["estimated"] * 4 + ["actual"] * 2
    assert out["method"].to_list()[1:5] == ["linear"] * 4
    assert out["flags"].to_list()[1] == ["estimated_linear"]


def test_linear_needs_both_neighbours_and_a_short_gap() -> None:
    t = dt.datetime(2026, 10, 1, tzinfo=UTC)
    # a leading gap, a 2 h 15 min gap, and a gap next to a suspect interval
    values = [None, 1.0] + [None] * 9 + [1.0, 5.0, None, 1.0]
    statuses = ["missing", "actual"] + ["missing"] * 9 + ["actual", "suspect", "missing", "actual"]
    out = run(series("m1", t, values, minutes=15, statuses=statuses))
    assert out["status"].to_list() == statuses  # nothing to fill from: stays missing
    assert out["energy_import_kwh"].null_count() == 11  # never silently 0


def test_linear_gap_limit_is_configurable() -> None:
    t = dt.datetime(2026, 10, 1, tzinfo=UTC)
    frame = series("m1", t, [1.0, *([None] * 9), 2.0], minutes=15)
    out = run(frame, rules=EstimationRules(max_linear_gap_h=2.25))
    assert out["energy_import_kwh"].to_list() == pytest.approx([1 + i / 10 for i in range(11)])


# --- like day ---------------------------------------------------------------------------------


def flat_day(v: float) -> list[float | None]:
    return [v] * 24


def test_like_day_averages_nearest_clean_days_of_same_type_in_local_time() -> None:
    # Shanghai: Mon 2026-10-12 .. Mon 10-19; each local day has its own constant level, so
    # any UTC-day mix-up would blend two levels
    levels = {12: 1.0, 13: 2.0, 14: 3.0, 15: 4.0, 16: 5.0, 17: 60.0, 18: 70.0}
    days = [flat_day(levels[d]) for d in range(12, 19)] + [[None] * 24]
    frame = days_of("m1", dt.date(2026, 10, 12), days)
    out = run(frame).tail(24)
    # the nearest 4 weekdays to Mon 19: Fri 16, Thu 15, Wed 14, Tue 13 -> (5+4+3+2)/4
    assert out["energy_import_kwh"].to_list() == pytest.approx([3.5] * 24)
    assert set(out["method"]) == {"like_day"}
    assert out["flags"].to_list()[0] == ["estimated_like_day"]


def test_like_day_skips_days_with_outage_or_estimate() -> None:
    levels = [1.0, 2.0, 3.0, 4.0, 5.0]  # Mon 12 .. Fri 16
    days = [flat_day(v) for v in levels] + [flat_day(60.0), flat_day(70.0), [None] * 24]
    frame = days_of("m1", dt.date(2026, 10, 12), days)
    # Thu 15 had a suspect interval, Wed 14 an estimated one: neither is a like day
    thu, wed = 3 * 24 + 5, 2 * 24 + 7
    frame = frame.with_columns(
        pl.when(pl.int_range(pl.len()) == thu)
        .then(pl.lit("suspect"))
        .when(pl.int_range(pl.len()) == wed)
        .then(pl.lit("estimated"))
        .otherwise(pl.col("status"))
        .alias("status")
    )
    out = run(frame).tail(24)
    assert out["energy_import_kwh"].to_list() == pytest.approx([(5 + 2 + 1) / 3] * 24)


def test_like_day_weekend_and_holiday_types() -> None:
    # Golden Week: Thu 2026-10-01 .. Wed 10-07 are holidays; Sat 10-10 and Sun 10-11 weekend
    first = dt.date(2026, 9, 26)  # Sat
    values = {}
    for i in range(17):  # Sat 9-26 .. Mon 10-12
        day = first + dt.timedelta(days=i)
        values[day] = float(day.day)
    holidays = [dt.date(2026, 10, d) for d in range(1, 8)]
    missing = {dt.date(2026, 10, 11), dt.date(2026, 10, 8)}  # a Sunday, a weekday
    missing.add(dt.date(2026, 10, 7))  # a holiday
    days = [[None] * 24 if d in missing else flat_day(v) for d, v in values.items()]
    out = run(days_of("m1", first, days), holidays=holidays)
    local = local_slots(out.lazy(), SHANGHAI, holidays=holidays).collect()
    got = local.group_by("local_date").agg(pl.col("energy_import_kwh").mean()).sort("local_date")
    result = dict(got.iter_rows())
    # Sun 10-11: weekend days Sat 10-10, Sun 9-27, Sat 9-26 (not the holiday weekend 3/4)
    assert result[dt.date(2026, 10, 11)] == pytest.approx((10 + 27 + 26) / 3)
    # Thu 10-08: weekdays Fri 9, Mon 12, Wed 9-30, Tue 9-29
    assert result[dt.date(2026, 10, 8)] == pytest.approx((9 + 12 + 30 + 29) / 4)
    # Wed 10-07 holiday: the nearest holidays 6, 5, 4, 3
    assert result[dt.date(2026, 10, 7)] == pytest.approx((6 + 5 + 4 + 3) / 4)


def test_like_day_on_europe_berlin_dst_day() -> None:
    # Sun 2026-10-25 has 25 local hours in Berlin (02:00 twice); each interval's value is its
    # local hour + 1, so the like-day estimate must follow local slots across the change
    berlin = meters(("m1", "Europe/Berlin", "res"))
    start = local_midnight(dt.date(2026, 10, 3), "Europe/Berlin")
    end = local_midnight(dt.date(2026, 10, 26), "Europe/Berlin")
    n = int((end - start) / dt.timedelta(hours=1))
    frame = series("m1", start, [1.0] * n)
    local = local_slots(frame.lazy(), berlin).collect()
    target = pl.col("local_date") == dt.date(2026, 10, 25)
    assert local.filter(target).height == 25
    frame = local.select(
        *(c for c in SCHEMA.names() if c != "energy_import_kwh"),
        pl.when(target).then(None).otherwise(pl.col("slot_minute") / 60 + 1).alias("e"),
    ).select(*SCHEMA.names()[:3], pl.col("e").alias("energy_import_kwh"), *SCHEMA.names()[4:])
    frame = frame.with_columns(
        pl.when(pl.col("energy_import_kwh").is_null())
        .then(pl.lit("missing"))
        .otherwise(pl.col("status"))
        .alias("status")
    )
    out = run(frame, berlin).tail(25)
    hours = [0, 1, 2, 2, *range(3, 24)]
    assert out["energy_import_kwh"].to_list() == pytest.approx([h + 1.0 for h in hours])
    assert set(out["status"]) == {"estimated"}


# --- scaled -----------------------------------------------------------------------------------


def test_gap_apportioned_day_gets_like_day_shape_scaled_to_register() -> None:
    shape = [1.0] * 12 + [3.0] * 12  # a day of 48 kWh
    # Mon 12 .. Thu 15 measured; on Fri 16 the register says 96 kWh, spread flat by deltas
    days = [shape] * 4 + [[4.0] * 24]
    frame = days_of("m1", dt.date(2026, 10, 12), days, flags=[[]] * 96 + [GAP] * 24)
    out = run(frame).tail(24)
    assert out["energy_import_kwh"].to_list() == pytest.approx([2.0] * 12 + [6.0] * 12)
    assert out["energy_import_kwh"].sum() == pytest.approx(96.0, rel=1e-12)
    assert set(out["method"]) == {"scaled"}
    assert out["flags"].to_list()[0] == [
        "gap_apportioned",
        "estimated_like_day",
        "estimated_scaled",
    ]


def test_short_gap_apportioned_run_uses_linear_shape() -> None:
    t = dt.datetime(2026, 10, 1, tzinfo=UTC)
    frame = series(
        "m1",
        t,
        [1.0, 1.5, 1.5, 3.0],
        minutes=15,
        flags=[[], GAP, GAP, []],
    )
    out = run(frame)
    # linear shape 1.6667, 2.3333 scaled to 3.0 kWh: 1.25, 1.75
    assert out["energy_import_kwh"].to_list() == pytest.approx([1.0, 1.25, 1.75, 3.0])
    assert out["flags"].to_list()[1] == ["gap_apportioned", "estimated_linear", "estimated_scaled"]


def test_explicit_register_total_bounds_missing_and_actual_intervals() -> None:
    t = dt.datetime(2026, 10, 1, tzinfo=UTC)
    frame = series("m1", t, [1.0, None, None, None, None, 2.0, 1.0], minutes=15)
    totals = pl.LazyFrame(
        {
            "meter_id": ["m1"],
            "window_start": [t],
            "window_end": [t + dt.timedelta(minutes=90)],
            "energy_import_kwh": [9.0],
            "energy_export_kwh": [None],
        },
        schema_overrides={"window_start": pl.Datetime("us", "UTC")},
    )
    out = run(frame, register_totals=totals)
    # linear 1.2, 1.4, 1.6, 1.8 (sum 6) scaled to 9 - 1 - 2 = 6: unchanged; sum = 9
    assert out["energy_import_kwh"].to_list() == pytest.approx([1, 1.2, 1.4, 1.6, 1.8, 2, 1])
    assert out["method"].to_list()[1] == "scaled"
    tight = totals.with_columns(pl.lit(4.5).alias("energy_import_kwh"))
    out = run(frame, register_totals=tight)
    assert out["energy_import_kwh"].to_list() == pytest.approx([1, 0.3, 0.35, 0.4, 0.45, 2, 1])
    negative = totals.with_columns(pl.lit(2.0).alias("energy_import_kwh"))
    out = run(frame, register_totals=negative)
    assert out["flags"].to_list()[1] == ["estimated_linear", "scaling_skipped"]
    assert out["method"].to_list()[1] == "linear"


def test_no_shape_at_all_falls_back_to_flat() -> None:
    t = dt.datetime(2026, 10, 1, tzinfo=UTC)
    frame = series("m9", t, [3.0, 3.0, 3.0], flags=[GAP] * 3)
    out = run(frame, meters(("m9", "Asia/Shanghai", "lonely")))
    assert out["energy_import_kwh"].to_list() == pytest.approx([3.0] * 3)
    assert out["flags"].to_list()[0] == ["gap_apportioned", "estimated_flat", "estimated_scaled"]


# --- class profile ----------------------------------------------------------------------------


def test_class_profile_for_a_meter_without_history() -> None:
    peer = days_of("m1", dt.date(2026, 10, 12), [[1.0] * 12 + [3.0] * 12] * 2)  # Mon, Tue
    new = days_of("m2", dt.date(2026, 10, 13), [[None] * 24])  # Tue, no history
    out = run(pl.concat([peer, new])).filter(pl.col("meter_id") == "m2")
    # group "res" weekdays: share 1/48 and 3/48 of a 48 kWh average day
    assert out["energy_import_kwh"].to_list() == pytest.approx([1.0] * 12 + [3.0] * 12)
    assert set(out["method"]) == {"class_profile"}
    assert out["flags"].to_list()[0] == ["estimated_class_profile"]


def test_given_class_profile_scaled_to_register_total() -> None:
    new = days_of("m2", dt.date(2026, 10, 13), [[1.0] * 24], flags=[GAP] * 24)  # 24 kWh
    profile = pl.LazyFrame(
        {
            "group": ["res"] * 24,
            "day_type": ["weekday"] * 24,
            "slot_minute": [60 * h for h in range(24)],
            "share_import": [0.0] * 6 + [1 / 18] * 18,
            "share_export": [None] * 24,
            "daily_import_kwh": [None] * 24,
            "daily_export_kwh": [None] * 24,
        },
        schema=PROFILE_SCHEMA,
    )
    out = run(new, class_profiles=profile)
    assert out["energy_import_kwh"].to_list() == pytest.approx([0.0] * 6 + [24 / 18] * 18)
    assert out["flags"].to_list()[0] == [
        "gap_apportioned",
        "estimated_class_profile",
        "estimated_scaled",
    ]


def test_class_load_profiles_shares_sum_to_one() -> None:
    frame = days_of("m1", dt.date(2026, 10, 12), [[float(h) for h in range(24)]] * 3)
    profiles = class_load_profiles(local_slots(frame.lazy(), SHANGHAI)).collect()
    assert profiles["share_import"].sum() == pytest.approx(1.0)
    assert profiles["daily_import_kwh"].unique().to_list() == [276.0]


def test_local_slots_match_per_row_local_time_in_mixed_zones() -> None:
    # local fields are computed once per instant and zone: they must equal the per-row ones,
    # across Berlin's autumn DST change and for a meter missing from the meter table
    from meterlake.config.localtime import local_time

    mixed = meters(("m1", "Europe/Berlin", "res"), ("m2", "Asia/Shanghai", "shop"))
    start = dt.datetime(2026, 10, 24, 20, tzinfo=UTC)
    rows = pl.concat(series(m, start, [1.0] * 12) for m in ("m1", "m2", "m3"))
    got = local_slots(rows.lazy(), mixed).collect()
    tz = pl.col("meter_id").replace_strict(
        {"m1": "Europe/Berlin", "m2": "Asia/Shanghai", "m3": "Asia/Shanghai"}
    )
    local = local_time(pl.col("interval_start"), tz, ["Europe/Berlin", "Asia/Shanghai"])
    want = rows.select(
        local.dt.date().alias("local_date"),
        (local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32)).alias(
            "slot_minute"
        ),
    )
    assert got.select("local_date", "slot_minute").equals(want)
    assert got["group"].to_list() == ["res"] * 12 + ["shop"] * 12 + [None] * 12
    assert got.columns == [*SCHEMA.names(), "local_date", "slot_minute", "day_type", "group"]


# --- properties -------------------------------------------------------------------------------


@st.composite
def gappy_meter(draw: st.DrawFn) -> tuple[pl.DataFrame, float, int, int]:
    """Four local days of hourly data with missing runs and one register-bounded run."""
    n = 96
    values = draw(st.lists(st.floats(0, 5, allow_nan=False), min_size=n, max_size=n))
    missing = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    statuses = ["missing" if m else "actual" for m in missing]
    suspect = draw(st.sets(st.integers(0, n - 1), max_size=3))
    a = draw(st.integers(0, n - 1))
    b = draw(st.integers(a + 1, min(n, a + 40)))
    total = draw(st.floats(0, 200, allow_nan=False))
    flags: list[list[str]] = [[] for _ in range(n)]
    imports: list[float | None] = []
    for i in range(n):
        if a <= i < b:
            statuses[i], flags[i] = "actual", list(GAP)
            imports.append(total / (b - a))
        elif statuses[i] == "missing":
            imports.append(None)
        else:
            if i in suspect:
                statuses[i] = "suspect"
            imports.append(values[i])
    frame = days_of("m1", dt.date(2026, 10, 10), [imports[i : i + 24] for i in range(0, n, 24)])
    frame = frame.with_columns(pl.Series("status", statuses), pl.Series("flags", flags))
    return frame, total, a, b


@settings(max_examples=40, deadline=None)
@given(gappy_meter(), st.integers(0, 2**32 - 1))
def test_estimation_properties(case: tuple[pl.DataFrame, float, int, int], seed: int) -> None:
    frame, total, a, b = case
    out = run(frame)
    # (a) the register-bounded run sums to the register difference
    bounded = out.slice(a, b - a)
    assert bounded["energy_import_kwh"].sum() == pytest.approx(total, rel=1e-9, abs=1e-12)
    assert set(bounded["status"]) == {"estimated"}
    # (b) no estimate is negative on an import channel
    est = out.filter(pl.col("status") == "estimated")
    assert (est["energy_import_kwh"] >= 0).all()
    # (c) actual and suspect intervals are never changed
    kept = pl.col("status").is_in(["actual", "suspect"]) & ~pl.col("flags").list.contains(GAP[0])
    before = frame.with_row_index().filter(kept)
    after = out.with_row_index().filter(pl.col("index").is_in(before["index"].implode()))
    assert after.equals(before)
    # unfilled intervals stay missing with null energy
    still = out.filter(pl.col("status") == "missing")
    assert still["energy_import_kwh"].null_count() == still.height
    # (d) independent of row order (to rounding: Polars adds floats in an order of its own)
    shuffled = frame.sample(fraction=1.0, shuffle=True, seed=seed)
    assert_frame_equal(run(shuffled), out, check_exact=False, rel_tol=1e-12, abs_tol=1e-15)
