"""Daily load curves and statistics: hand-made days whose figures are computed here by hand,
local days in a fixed-offset zone and a DST zone, the split by tariff-period class, and a
property on random curves."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from typing import Any

import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterlake.analytics.usage import STAT_COLUMNS, daily_usage
from meterlake.config.schemas import DAILY_USAGE

UTC = dt.UTC
SHANGHAI_MIDNIGHT = dt.datetime(2026, 10, 1, 16, tzinfo=UTC)
"""Local midnight of 2 October 2026 in Asia/Shanghai (UTC+8)."""
OCT2 = dt.date(2026, 10, 2)


def day_rows(
    meter_id: str,
    start: dt.datetime,
    import_kwh: Sequence[float | None],
    *,
    minutes: int = 15,
    export_kwh: Sequence[float | None] | None = None,
    status: Sequence[str] | None = None,
    tou_class: Sequence[str | None] | None = None,
) -> pl.DataFrame:
    """Consecutive intervals of ``minutes`` from ``start`` with the given import; a null import is
    a ``missing`` interval unless ``status`` says otherwise."""
    n = len(import_kwh)
    columns: dict[str, Any] = {
        "meter_id": [meter_id] * n,
        "interval_start": [start + i * dt.timedelta(minutes=minutes) for i in range(n)],
        "interval_minutes": [minutes] * n,
        "energy_import_kwh": list(import_kwh),
        "energy_export_kwh": (
            list(export_kwh)
            if export_kwh is not None
            else [None if v is None else 0.0 for v in import_kwh]
        ),
        "status": (
            list(status)
            if status is not None
            else ["missing" if v is None else "actual" for v in import_kwh]
        ),
    }
    schema: dict[str, Any] = {
        "meter_id": pl.String,
        "interval_start": pl.Datetime("us", "UTC"),
        "interval_minutes": pl.Int16,
        "energy_import_kwh": pl.Float64,
        "energy_export_kwh": pl.Float64,
        "status": pl.String,
    }
    if tou_class is not None:
        columns["tou_class"] = list(tou_class)
        schema["tou_class"] = pl.String
    return pl.DataFrame(columns, schema=schema)


def zones(**by_meter: str | None) -> pl.DataFrame:
    return pl.DataFrame(
        {"meter_id": list(by_meter), "timezone": list(by_meter.values())},
        schema={"meter_id": pl.String, "timezone": pl.String},
    )


def usage(rows: pl.DataFrame, meters: pl.DataFrame | None = None, **kwargs: Any) -> pl.DataFrame:
    meters = meters if meters is not None else zones(m1="Asia/Shanghai")
    return daily_usage(rows.lazy(), meters, **kwargs).collect().sort("meter_id", "day")


def one_day(rows: pl.DataFrame, meters: pl.DataFrame | None = None) -> dict[str, Any]:
    out = usage(rows, meters)
    assert out.height == 1, out
    return out.row(0, named=True)


# --- a hand-made day -------------------------------------------------------------------------

# 96 quarter hours of local 2 October: one quiet interval (0.05 kW), 20 at 0.2 kW, 59 at
# 0.4 kW and an evening of 16 at 2.0 kW.
QUIET, LOW, MID, HIGH = 0.0125, 0.05, 0.1, 0.5  # [kWh per quarter hour]
DAY = [LOW] * 20 + [QUIET] + [MID] * 55 + [HIGH] * 16 + [MID] * 4


def test_the_statistics_of_a_hand_made_day() -> None:
    export = [0.0] * 40 + [0.25] * 4 + [0.0] * 52
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, DAY, export_kwh=export))

    energy = 0.0125 + 20 * 0.05 + 59 * 0.1 + 16 * 0.5  # 14.9125 kWh
    assert day["meter_id"] == "m1"
    assert day["day"] == OCT2
    assert day["timezone"] == "Asia/Shanghai"
    assert day["interval_minutes"] == 15
    assert day["energy_kwh"] == pytest.approx(energy)
    assert day["export_kwh"] == pytest.approx(1.0)
    assert day["peak_kw"] == pytest.approx(2.0)
    assert day["min_kw"] == pytest.approx(0.05)
    assert day["mean_kw"] == pytest.approx(energy / 24)
    assert day["load_factor"] == pytest.approx(energy / 24 / 2.0)
    assert day["peak_valley_diff_kw"] == pytest.approx(1.95)
    assert day["peak_valley_ratio"] == pytest.approx(0.975)
    # 10th percentile, 'lower': the 10th of 96 sorted values (index floor(0.1 x 95) = 9); the
    # single quiet interval does not pull it down
    assert day["base_load_kw"] == pytest.approx(0.2)
    assert (day["intervals"], day["intervals_estimated"], day["intervals_missing"]) == (96, 0, 0)
    assert day["actual_share"] == 1.0
    assert day["curve_kw"] == pytest.approx([kwh * 4 for kwh in DAY])
    # no tou_class column: no split
    for name in ("peak", "flat", "valley", "critical"):
        assert day[f"energy_{name}_kwh"] is None


def test_the_frame_has_the_daily_usage_columns_and_types() -> None:
    out = usage(day_rows("m1", SHANGHAI_MIDNIGHT, DAY))
    assert out.columns == list(STAT_COLUMNS)
    assert dict(out.schema) == {c: DAILY_USAGE.schema[c] for c in STAT_COLUMNS}
    assert "profile" not in out.columns and "run_id" not in out.columns


def test_base_load_is_robust_to_a_few_quiet_intervals() -> None:
    # nine intervals at zero and the rest at 1 kW: the 10th lowest is 1 kW
    kwh = [0.0] * 9 + [0.25] * 87
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh))
    assert day["min_kw"] == 0.0
    assert day["base_load_kw"] == pytest.approx(1.0)
    # ten of them: the 10th lowest is one of them
    kwh = [0.0] * 10 + [0.25] * 86
    assert one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh))["base_load_kw"] == 0.0


def test_a_flat_zero_day_has_no_load_factor_or_ratio() -> None:
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, [0.0] * 96))
    assert day["energy_kwh"] == 0.0  # a measured zero, not a missing day
    assert day["peak_kw"] == 0.0
    assert day["load_factor"] is None
    assert day["peak_valley_ratio"] is None
    assert day["peak_valley_diff_kw"] == 0.0


def test_vee_counts_and_actual_share() -> None:
    kwh: list[float | None] = [0.1] * 96
    status = ["actual"] * 96
    for i in (3, 4, 5, 6):
        status[i] = "estimated"
    for i in (10, 11):
        kwh[i] = None
        status[i] = "missing"
    status[20] = "edited"
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh, status=status))
    assert day["intervals"] == 96
    assert day["intervals_estimated"] == 4
    assert day["intervals_missing"] == 2
    assert day["actual_share"] == pytest.approx(89 / 96)  # edited is not actual either
    assert day["energy_kwh"] == pytest.approx(9.4)
    assert day["mean_kw"] == pytest.approx(0.4)  # over the 94 intervals with a value


def test_the_curve_is_in_time_order_when_the_rows_are_shuffled() -> None:
    kwh = [0.01 * (i + 1) for i in range(96)]
    rows = day_rows("m1", SHANGHAI_MIDNIGHT, kwh)
    ordered = usage(rows)
    shuffled = usage(rows.sample(fraction=1.0, shuffle=True, seed=7))
    assert shuffled["curve_kw"].to_list() == ordered["curve_kw"].to_list()
    assert shuffled["curve_kw"][0].to_list() == pytest.approx([v * 4 for v in kwh])
    for column in ("energy_kwh", "mean_kw", "peak_kw", "min_kw", "base_load_kw"):
        assert shuffled[column].item() == pytest.approx(ordered[column].item()), column


def test_missing_intervals_are_nulls_in_the_curve_and_skipped_by_the_statistics() -> None:
    kwh: list[float | None] = [0.25] * 96
    kwh[0] = None
    kwh[50] = None
    kwh[51] = 1.0  # 4 kW
    kwh[52] = 0.0
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh))
    curve = day["curve_kw"]
    assert len(curve) == 96
    assert curve[0] is None and curve[50] is None
    assert curve[51] == 4.0 and curve[52] == 0.0 and curve[1] == 1.0
    assert day["energy_kwh"] == pytest.approx(92 * 0.25 + 1.0)
    assert day["peak_kw"] == 4.0 and day["min_kw"] == 0.0
    assert day["mean_kw"] == pytest.approx((92 * 1.0 + 4.0) / 94)
    assert day["intervals_missing"] == 2


def test_a_day_with_every_interval_missing_has_null_energy_not_zero() -> None:
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, [None] * 96))
    assert day["energy_kwh"] is None
    assert day["export_kwh"] is None
    for column in ("peak_kw", "min_kw", "mean_kw", "load_factor", "base_load_kw"):
        assert day[column] is None, column
    assert day["peak_valley_diff_kw"] is None and day["peak_valley_ratio"] is None
    assert day["curve_kw"] == [None] * 96
    assert (day["intervals"], day["intervals_missing"], day["actual_share"]) == (96, 96, 0.0)


def test_export_null_only_when_no_interval_has_an_export() -> None:
    kwh = [0.1] * 96
    export: list[float | None] = [None] * 96
    assert one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh, export_kwh=export))["export_kwh"] is None
    export[5] = 0.3
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh, export_kwh=export))
    assert day["export_kwh"] == pytest.approx(0.3)


# --- local days --------------------------------------------------------------------------------


def test_an_interval_at_16_utc_belongs_to_the_next_local_day_in_shanghai() -> None:
    start = SHANGHAI_MIDNIGHT - dt.timedelta(minutes=30)  # 23:30 local on 1 October
    out = usage(day_rows("m1", start, [0.1, 0.2, 0.3, 0.4]))
    assert out["day"].to_list() == [dt.date(2026, 10, 1), OCT2]
    assert out["intervals"].to_list() == [2, 2]
    assert out["energy_kwh"].to_list() == pytest.approx([0.3, 0.7])
    assert out["curve_kw"].to_list() == [pytest.approx([0.4, 0.8]), pytest.approx([1.2, 1.6])]


def test_meters_not_listed_or_without_a_zone_use_the_default_zone() -> None:
    rows = pl.concat(
        [
            day_rows("listed", SHANGHAI_MIDNIGHT - dt.timedelta(minutes=15), [0.1, 0.1]),
            day_rows("unlisted", SHANGHAI_MIDNIGHT - dt.timedelta(minutes=15), [0.1, 0.1]),
            day_rows("null-zone", SHANGHAI_MIDNIGHT - dt.timedelta(minutes=15), [0.1, 0.1]),
        ]
    )
    meters = zones(listed="Europe/Berlin", **{"null-zone": None})
    out = usage(rows, meters)
    by_meter = {m: out.filter(pl.col("meter_id") == m) for m in ("listed", "unlisted", "null-zone")}
    # 15:45 and 16:00 UTC are 17:45 and 18:00 in Berlin: one day
    assert by_meter["listed"]["day"].to_list() == [dt.date(2026, 10, 1)]
    assert by_meter["listed"]["timezone"].to_list() == ["Europe/Berlin"]
    for meter in ("unlisted", "null-zone"):
        assert by_meter[meter]["day"].to_list() == [dt.date(2026, 10, 1), OCT2], meter
        assert set(by_meter[meter]["timezone"]) == {"Asia/Shanghai"}
    # another default zone moves them
    out = usage(rows, meters, default_timezone="UTC")
    for meter in ("unlisted", "null-zone"):
        row = out.filter(pl.col("meter_id") == meter).row(0, named=True)
        assert (row["timezone"], row["day"], row["intervals"]) == ("UTC", dt.date(2026, 10, 1), 2)


def quarter_hours_per_day(start: dt.datetime, hours: int, zone: str) -> dict[dt.date, int]:
    rows = day_rows("m1", start, [0.1] * (hours * 4))
    out = usage(rows, zones(m1=zone))
    assert out["curve_kw"].list.len().to_list() == out["intervals"].to_list()
    return dict(zip(out["day"], out["intervals"], strict=True))


def test_berlin_spring_forward_day_has_92_quarter_hours() -> None:
    # local midnight of 28 March (CET, UTC+1) to local midnight of 31 March (CEST, UTC+2)
    start = dt.datetime(2026, 3, 27, 23, tzinfo=UTC)
    counts = quarter_hours_per_day(start, 24 + 23 + 24, "Europe/Berlin")
    assert counts == {
        dt.date(2026, 3, 28): 96,
        dt.date(2026, 3, 29): 92,
        dt.date(2026, 3, 30): 96,
    }


def test_berlin_fall_back_day_has_100_quarter_hours() -> None:
    # local midnight of 24 October (CEST) to local midnight of 26 October (CET)
    start = dt.datetime(2026, 10, 23, 22, tzinfo=UTC)
    counts = quarter_hours_per_day(start, 24 + 25 + 24, "Europe/Berlin")
    assert counts == {
        dt.date(2026, 10, 24): 96,
        dt.date(2026, 10, 25): 100,
        dt.date(2026, 10, 26): 96,
    }
    day = usage(day_rows("m1", start, [0.1] * (73 * 4)), zones(m1="Europe/Berlin")).filter(
        pl.col("day") == dt.date(2026, 10, 25)
    )
    assert day["energy_kwh"].item() == pytest.approx(10.0)
    assert day["mean_kw"].item() == pytest.approx(0.4)


def test_meters_in_two_zones_at_once() -> None:
    start = dt.datetime(2026, 10, 1, tzinfo=UTC)
    kwh = [0.25] * 96  # one UTC day at 1 kW
    rows = pl.concat([day_rows("sh", start, kwh), day_rows("be", start, kwh)])
    out = usage(rows, zones(sh="Asia/Shanghai", be="Europe/Berlin"))
    sh = out.filter(pl.col("meter_id") == "sh")
    be = out.filter(pl.col("meter_id") == "be")
    # UTC 00:00-24:00 is 08:00 on 1 October to 08:00 on 2 October in Shanghai
    assert dict(zip(sh["day"], sh["intervals"], strict=True)) == {
        dt.date(2026, 10, 1): 64,
        OCT2: 32,
    }
    # ... and 02:00 on 1 October to 02:00 on 2 October in Berlin (CEST)
    assert dict(zip(be["day"], be["intervals"], strict=True)) == {
        dt.date(2026, 10, 1): 88,
        OCT2: 8,
    }
    assert set(sh["timezone"]) == {"Asia/Shanghai"} and set(be["timezone"]) == {"Europe/Berlin"}
    assert sh["energy_kwh"].to_list() == pytest.approx([16.0, 8.0])
    assert be["energy_kwh"].to_list() == pytest.approx([22.0, 2.0])


@pytest.mark.parametrize(("minutes", "count"), [(30, 48), (60, 24)])
def test_longer_intervals_give_power_as_energy_over_their_length(minutes: int, count: int) -> None:
    kwh = [0.5] * (count - 1) + [1.5]
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh, minutes=minutes))
    per_hour = 60 / minutes
    assert day["interval_minutes"] == minutes
    assert day["intervals"] == count
    assert day["energy_kwh"] == pytest.approx(0.5 * (count - 1) + 1.5)
    assert day["peak_kw"] == pytest.approx(1.5 * per_hour)
    assert day["min_kw"] == pytest.approx(0.5 * per_hour)
    assert day["mean_kw"] == pytest.approx(day["energy_kwh"] / 24)
    assert day["curve_kw"] == pytest.approx([v * per_hour for v in kwh])


# --- the split by tariff-period class ---------------------------------------------------------


def test_import_is_split_by_the_class_of_each_interval() -> None:
    kwh = [0.1] * 32 + [0.3] * 40 + [0.2] * 16 + [0.5] * 8
    classes = ["valley"] * 32 + ["peak"] * 40 + ["flat"] * 16 + ["critical"] * 8
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh, tou_class=classes))
    assert day["energy_valley_kwh"] == pytest.approx(3.2)
    assert day["energy_peak_kwh"] == pytest.approx(12.0)
    assert day["energy_flat_kwh"] == pytest.approx(3.2)
    assert day["energy_critical_kwh"] == pytest.approx(4.0)
    parts = sum(day[f"energy_{c}_kwh"] for c in ("peak", "flat", "valley", "critical"))
    assert parts == pytest.approx(day["energy_kwh"])


def test_a_class_without_intervals_that_day_is_zero_and_missing_ones_are_skipped() -> None:
    kwh: list[float | None] = [0.1] * 96
    kwh[40] = None
    classes = ["valley"] * 32 + ["peak"] * 64
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh, tou_class=classes))
    assert day["energy_valley_kwh"] == pytest.approx(3.2)
    assert day["energy_peak_kwh"] == pytest.approx(6.3)
    assert day["energy_flat_kwh"] == 0.0
    assert day["energy_critical_kwh"] == 0.0


def test_the_split_is_null_on_a_day_without_any_import() -> None:
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, [None] * 96, tou_class=["peak"] * 96))
    for name in ("peak", "flat", "valley", "critical"):
        assert day[f"energy_{name}_kwh"] is None


def test_a_meter_whose_intervals_have_no_class_has_no_split() -> None:
    # with_tou_class leaves tou_class null for meters without a TOU tariff (tiered or flat, or
    # no tariff): "its meters' split stays null" (meterlake.tariffs.usage)
    rows = pl.concat(
        [
            day_rows("tou", SHANGHAI_MIDNIGHT, [0.1] * 96, tou_class=["peak"] * 96),
            day_rows("tiered", SHANGHAI_MIDNIGHT, [0.1] * 96, tou_class=[None] * 96),
        ]
    )
    out = usage(rows, zones(tou="Asia/Shanghai", tiered="Asia/Shanghai"))
    tou = out.filter(pl.col("meter_id") == "tou").row(0, named=True)
    assert tou["energy_peak_kwh"] == pytest.approx(9.6)
    tiered = out.filter(pl.col("meter_id") == "tiered").row(0, named=True)
    assert tiered["energy_kwh"] == pytest.approx(9.6)
    # no split, rather than 0.0 per class (which would read as "no peak use")
    for name in ("peak", "flat", "valley", "critical"):
        assert tiered[f"energy_{name}_kwh"] is None, name


# --- a property --------------------------------------------------------------------------------

kwh_values = st.one_of(
    st.none(), st.floats(min_value=0.0, max_value=5.0, allow_nan=False, allow_infinity=False)
)


@settings(max_examples=60, deadline=None)
@given(
    minutes=st.sampled_from([15, 30, 60]),
    data=st.data(),
)
def test_energy_is_the_curve_times_interval_hours_and_peak_mean_min_are_ordered(
    minutes: int, data: st.DataObject
) -> None:
    per_day = 24 * 60 // minutes
    kwh = data.draw(st.lists(kwh_values, min_size=per_day, max_size=per_day))
    day = one_day(day_rows("m1", SHANGHAI_MIDNIGHT, kwh, minutes=minutes))
    curve = day["curve_kw"]
    assert len(curve) == per_day
    present = [v for v in kwh if v is not None]
    if not present:
        assert day["energy_kwh"] is None
        return
    hours = minutes / 60
    assert day["energy_kwh"] == pytest.approx(sum(v for v in curve if v is not None) * hours)
    assert day["energy_kwh"] == pytest.approx(math.fsum(present))
    assert day["peak_kw"] >= day["mean_kw"] - 1e-12
    assert day["mean_kw"] >= day["min_kw"] - 1e-12
    assert day["min_kw"] <= day["base_load_kw"] <= day["peak_kw"]
    if day["peak_kw"] > 0:
        assert 0.0 <= day["load_factor"] <= 1.0 + 1e-12
        assert 0.0 <= day["peak_valley_ratio"] <= 1.0
    else:
        assert day["load_factor"] is None
