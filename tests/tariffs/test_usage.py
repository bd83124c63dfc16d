"""What a meter's tariff says about its usage: the class of TOU period names and of intervals
under catalogue tariffs, tier windows, tier progress at and around the thresholds with its
projection, and the tier-progress run on a lake."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from meterlake.config.schemas import DAILY_USAGE, METERS, TIER_PROGRESS, TOU_CLASSES, TableSpec
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.scan import latest_rows, scan
from meterlake.storage.writer import write_table
from meterlake.tariffs.model import Tariff
from meterlake.tariffs.progress_job import run_tier_progress
from meterlake.tariffs.registry import load_tariffs
from meterlake.tariffs.usage import (
    RECENT_DAYS,
    tier_progress,
    tier_windows,
    tou_class_of,
    with_tou_class,
)
from tests.tariffs.helpers import write_tariff

UTC = dt.UTC
SHANGHAI = ZoneInfo("Asia/Shanghai")
QUARTER = dt.timedelta(minutes=15)
ZJ_TOU = "cn-zj-residential-tou"  # peak 08:00-22:00, valley 22:00-08:00, annual tiers
ZJ_TIERED = "cn-zj-residential-tiered"  # annual tiers [2760, 4800], no time of use
HB = "cn-hb-industrial-two-part-10kv"  # critical peak, peak, flat, valley
PGE = "us-pge-e-tou-c-nem2"  # tiers [405] per billing cycle
PECO = "us-peco-rate-r"  # flat, no tiers


@pytest.fixture(scope="module")
def tariffs() -> dict[str, Tariff]:
    return load_tariffs()


def table_frame(table: TableSpec, rows: list[dict[str, Any]], **every_row: Any) -> pl.DataFrame:
    """Rows of ``table`` with every column it has (those given neither in a row nor in
    ``every_row`` null)."""
    return pl.DataFrame(
        [{c: {**every_row, **row}.get(c) for c in table.schema} for row in rows],
        schema=table.schema,
    )


# --- the class of a period name ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        # Chinese tariffs (catalogue names and the characters)
        ("peak", "peak"),
        ("valley", "valley"),
        ("flat", "flat"),
        ("critical_peak", "critical"),
        ("critical", "critical"),
        ("尖峰", "critical"),
        ("峰", "peak"),
        ("平", "flat"),
        ("谷", "valley"),
        ("深谷", "valley"),
        # US tariffs: season-prefixed names
        ("summer_peak", "peak"),
        ("winter_peak", "peak"),
        ("summer_on_peak", "peak"),
        ("winter_on_peak", "peak"),
        ("summer_off_peak", "valley"),
        ("winter_off_peak", "valley"),
        ("summer_super_off_peak", "valley"),
        ("winter_super_off_peak", "valley"),
        ("super_off_peak", "valley"),
        ("summer_mid_peak", "flat"),
        ("mid_peak", "flat"),
        ("partial_peak", "flat"),
        ("shoulder", "flat"),
        # SRP's "summer peak" season: the period, not the season, decides
        ("summer_peak_on_peak", "peak"),
        ("summer_peak_off_peak", "valley"),
        ("summer_peak_super_off_peak", "valley"),
        # other spellings
        ("Off-Peak", "valley"),
        ("OFFPEAK", "valley"),
        ("On_Peak", "peak"),
        ("sharp_peak", "critical"),
        # the one period of a tariff without time of use, and unknown names
        ("all", "flat"),
        ("base", "flat"),
        ("", "flat"),
    ],
)
def test_tou_class_of_period_names(period: str, expected: str) -> None:
    assert tou_class_of(period) == expected


def test_every_catalogue_period_has_a_class(tariffs: dict[str, Tariff]) -> None:
    names = {p for t in tariffs.values() for v in t.versions for p in v.periods}
    assert {"summer_on_peak", "winter_super_off_peak", "critical_peak", "valley"} <= names
    classes = {name: tou_class_of(name) for name in names}
    assert set(classes.values()) == set(TOU_CLASSES)  # the catalogue uses all four
    for name, cls in classes.items():
        if "off_peak" in name:
            assert cls == "valley", name
        elif "on_peak" in name:
            assert cls == "peak", name


# --- the class of intervals --------------------------------------------------------------------

OCT2 = dt.datetime(2026, 10, 2, tzinfo=SHANGHAI).astimezone(UTC)  # local midnight


def quarter_hours(meter_id: str, start: dt.datetime, count: int) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "meter_id": [meter_id] * count,
            "interval_start": [start + i * QUARTER for i in range(count)],
            "energy_import_kwh": [0.1] * count,
        },
        schema={
            "meter_id": pl.String,
            "interval_start": pl.Datetime("us", "UTC"),
            "energy_import_kwh": pl.Float64,
        },
    )


def on_tariffs(**by_meter: str | None) -> pl.DataFrame:
    return pl.DataFrame(
        {"meter_id": list(by_meter), "tariff_id": list(by_meter.values())},
        schema={"meter_id": pl.String, "tariff_id": pl.String},
    )


def classify(
    rows: pl.DataFrame,
    meters: pl.DataFrame,
    tariffs: dict[str, Tariff],
    start: dt.datetime = OCT2,
    end: dt.datetime = OCT2 + dt.timedelta(days=1),
) -> pl.DataFrame:
    out = with_tou_class(rows.lazy(), meters, tariffs, start, end).collect()
    assert out.columns == [*rows.columns, "tou_class"]
    assert out.schema["tou_class"] == pl.String
    return out.sort("meter_id", "interval_start")


def test_zhejiang_peak_and_valley_by_local_hour(tariffs: dict[str, Tariff]) -> None:
    out = classify(quarter_hours("m1", OCT2, 96), on_tariffs(m1=ZJ_TOU), tariffs)
    # 00:00-08:00 valley, 08:00-22:00 peak, 22:00-24:00 valley (local)
    assert out["tou_class"].to_list() == ["valley"] * 32 + ["peak"] * 56 + ["valley"] * 8
    assert out["energy_import_kwh"].to_list() == [0.1] * 96  # the rest untouched


def test_a_tiered_tariff_without_time_of_use_gives_no_class(tariffs: dict[str, Tariff]) -> None:
    for tariff_id in (ZJ_TIERED, PECO):
        out = classify(quarter_hours("m1", OCT2, 96), on_tariffs(m1=tariff_id), tariffs)
        assert out["tou_class"].null_count() == 96, tariff_id


def test_meters_on_several_tariffs_at_once(tariffs: dict[str, Tariff]) -> None:
    rows = pl.concat(
        [quarter_hours(m, OCT2, 96) for m in ("zj", "hb", "tiered", "none", "unknown", "unlisted")]
    )
    meters = on_tariffs(zj=ZJ_TOU, hb=HB, tiered=ZJ_TIERED, none=None, unknown="no-such-tariff")
    out = classify(rows, meters, tariffs)
    assert out.height == rows.height
    by_meter = {
        m: out.filter(pl.col("meter_id") == m)["tou_class"].to_list() for m in meters["meter_id"]
    }
    assert by_meter["zj"] == ["valley"] * 32 + ["peak"] * 56 + ["valley"] * 8
    # Hubei outside July and August: valley 00-06, flat 06-12, valley 12-14, flat 14-16,
    # peak 16-18, critical peak 18-20, peak 20-24
    hours = (
        ["valley"] * 6 + ["flat"] * 6 + ["valley"] * 2 + ["flat"] * 2 + ["peak"] * 2
        + ["critical"] * 2 + ["peak"] * 4
    )  # fmt: skip
    assert by_meter["hb"] == [cls for cls in hours for _ in range(4)]
    for meter in ("tiered", "none", "unknown"):
        assert by_meter[meter] == [None] * 96, meter
    assert out.filter(pl.col("meter_id") == "unlisted")["tou_class"].null_count() == 96


@pytest.mark.parametrize("tariff_id", [ZJ_TOU, HB, "us-sce-tou-d-4-9pm", "us-srp-e28", PGE])
def test_each_interval_gets_the_class_of_the_period_it_starts_in(
    tariffs: dict[str, Tariff], tariff_id: str
) -> None:
    """Against the tariff's own ``period_at``, over a DST change (1 November in the US), a
    weekend and the change of season at the turn of a month."""
    tariff = tariffs[tariff_id]
    zone = ZoneInfo(tariff.timezone)
    start = dt.datetime(2026, 9, 28, tzinfo=zone).astimezone(UTC)
    end = dt.datetime(2026, 11, 4, tzinfo=zone).astimezone(UTC)
    count = int((end - start) / QUARTER)
    rows = quarter_hours("m1", start, count)
    out = classify(rows, on_tariffs(m1=tariff_id), tariffs, start, end)
    expected = [
        tou_class_of(tariff.period_at(t.astimezone(zone).replace(tzinfo=None)))
        for t in out["interval_start"]
    ]
    assert out["tou_class"].to_list() == expected


def test_intervals_outside_the_range_have_no_class(tariffs: dict[str, Tariff]) -> None:
    start, end = OCT2 + dt.timedelta(hours=8), OCT2 + dt.timedelta(hours=12)  # 08:00-12:00 local
    rows = quarter_hours("m1", OCT2, 96)
    for meters in (on_tariffs(m1=ZJ_TOU), on_tariffs(m1=ZJ_TOU, m2=HB)):  # one tariff, several
        out = classify(rows, meters, tariffs, start, end)
        assert out["tou_class"].to_list() == [None] * 32 + ["peak"] * 16 + [None] * 48


def test_no_meter_on_a_loaded_tariff_gives_a_null_column(tariffs: dict[str, Tariff]) -> None:
    out = classify(quarter_hours("m1", OCT2, 4), on_tariffs(m1="no-such-tariff"), tariffs)
    assert out["tou_class"].to_list() == [None] * 4


def test_a_range_starting_between_5_minute_steps_classes_by_the_interval_start(
    tariffs: dict[str, Tariff],
) -> None:
    # BUG (see the report): the step table starts at `start` itself, so with start 2 minutes past
    # local midnight an interval's step covers 07:57-08:02 for the interval starting 08:00 and
    # the interval gets the class of 07:57 (valley) instead of the period it starts in (peak);
    # likewise 22:00 comes out peak
    start = OCT2 + dt.timedelta(minutes=2)
    out = classify(quarter_hours("m1", OCT2, 96), on_tariffs(m1=ZJ_TOU), tariffs, start)
    assert out["tou_class"].to_list() == [None] + ["valley"] * 31 + ["peak"] * 56 + ["valley"] * 8


# --- tier windows ------------------------------------------------------------------------------


def windows_of(
    tariffs: dict[str, Tariff], as_of: dt.date, rows: list[dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    meters = pl.DataFrame(
        rows,
        schema={
            "meter_id": pl.String,
            "tariff_id": pl.String,
            "billing_day": pl.Int8,
            "tier_year_start": pl.String,
        },
    )
    out = tier_windows(meters, tariffs, as_of)
    assert out.columns == [
        "meter_id",
        "tariff_id",
        "tier_reset",
        "window_start",
        "window_end",
        "thresholds",
    ]
    return {row["meter_id"]: row for row in out.iter_rows(named=True)}


def window(row: dict[str, Any]) -> tuple[str, dt.date, dt.date]:
    return row["tier_reset"], row["window_start"], row["window_end"]


D = dt.date


def test_annual_window_from_the_tariffs_tier_year(tariffs: dict[str, Tariff]) -> None:
    rows = windows_of(tariffs, D(2026, 11, 30), [{"meter_id": "m1", "tariff_id": ZJ_TIERED}])
    assert window(rows["m1"]) == ("annual", D(2026, 1, 1), D(2027, 1, 1))
    assert rows["m1"]["thresholds"] == [2760.0, 4800.0]
    assert rows["m1"]["tariff_id"] == ZJ_TIERED
    new_year = windows_of(tariffs, D(2027, 1, 1), [{"meter_id": "m1", "tariff_id": ZJ_TIERED}])
    assert window(new_year["m1"]) == ("annual", D(2027, 1, 1), D(2028, 1, 1))


@pytest.mark.parametrize(
    ("as_of", "start", "end"),
    [
        (D(2026, 11, 30), D(2026, 7, 1), D(2027, 7, 1)),
        (D(2026, 7, 1), D(2026, 7, 1), D(2027, 7, 1)),
        (D(2026, 6, 30), D(2025, 7, 1), D(2026, 7, 1)),
        (D(2026, 1, 1), D(2025, 7, 1), D(2026, 7, 1)),
    ],
)
def test_annual_window_from_the_meters_own_tier_year_start(
    tariffs: dict[str, Tariff], as_of: dt.date, start: dt.date, end: dt.date
) -> None:
    rows = windows_of(
        tariffs,
        as_of,
        [
            {"meter_id": "own", "tariff_id": ZJ_TOU, "tier_year_start": "07-01"},
            {"meter_id": "default", "tariff_id": ZJ_TOU},
        ],
    )
    assert window(rows["own"]) == ("annual", start, end)
    default_year = as_of.year
    assert window(rows["default"]) == (
        "annual",
        D(default_year, 1, 1),
        D(default_year + 1, 1, 1),
    )


MONTHLY = """
[energy]
tiers_kwh = [200, 400]
tier_reset = "monthly"
prices = { all = [0.5, 0.6, 0.8] }
"""


@pytest.mark.parametrize(
    ("as_of", "start", "end"),
    [
        (D(2026, 2, 14), D(2026, 2, 1), D(2026, 3, 1)),
        (D(2026, 2, 1), D(2026, 2, 1), D(2026, 3, 1)),
        (D(2026, 12, 31), D(2026, 12, 1), D(2027, 1, 1)),
    ],
)
def test_monthly_window(tmp_path: Path, as_of: dt.date, start: dt.date, end: dt.date) -> None:
    monthly = {"monthly": write_tariff(tmp_path, "monthly", MONTHLY)}
    # a billing day or tier-year start does not move a monthly window
    rows = windows_of(
        monthly,
        as_of,
        [{"meter_id": "m1", "tariff_id": "monthly", "billing_day": 15, "tier_year_start": "07-01"}],
    )
    assert window(rows["m1"]) == ("monthly", start, end)
    assert rows["m1"]["thresholds"] == [200.0, 400.0]


@pytest.mark.parametrize(
    ("as_of", "start", "end"),
    [
        (D(2026, 11, 20), D(2026, 11, 15), D(2026, 12, 15)),
        (D(2026, 11, 15), D(2026, 11, 15), D(2026, 12, 15)),
        (D(2026, 11, 14), D(2026, 10, 15), D(2026, 11, 15)),
        (D(2026, 1, 10), D(2025, 12, 15), D(2026, 1, 15)),
    ],
)
def test_billing_cycle_window_with_billing_day_15(
    tariffs: dict[str, Tariff], as_of: dt.date, start: dt.date, end: dt.date
) -> None:
    rows = windows_of(
        tariffs,
        as_of,
        [
            {"meter_id": "day15", "tariff_id": PGE, "billing_day": 15},
            {"meter_id": "default", "tariff_id": PGE},  # null billing day: the 1st
        ],
    )
    assert window(rows["day15"]) == ("billing_cycle", start, end)
    assert rows["day15"]["thresholds"] == [405.0]
    first = as_of.replace(day=1)
    assert window(rows["default"])[1] == first


def test_meters_without_tiers_or_without_a_loaded_tariff_have_no_window(
    tariffs: dict[str, Tariff],
) -> None:
    rows = windows_of(
        tariffs,
        D(2026, 11, 30),
        [
            {"meter_id": "tiered", "tariff_id": ZJ_TIERED},
            {"meter_id": "flat", "tariff_id": PECO},
            {"meter_id": "tou-no-tiers", "tariff_id": HB},
            {"meter_id": "none", "tariff_id": None},
            {"meter_id": "unknown", "tariff_id": "no-such-tariff"},
        ],
    )
    assert set(rows) == {"tiered"}


def test_windows_need_only_meter_and_tariff_columns(tariffs: dict[str, Tariff]) -> None:
    meters = on_tariffs(a=ZJ_TIERED, b=PGE)
    out = tier_windows(meters, tariffs, D(2026, 11, 20)).sort("meter_id")
    assert out["window_start"].to_list() == [D(2026, 1, 1), D(2026, 11, 1)]


VERSIONED = """
[energy]
tiers_kwh = [100]
tier_reset = "monthly"
prices = { all = [0.5, 0.6] }

[[versions]]
effective_from = 2026-07-01
[versions.energy]
tiers_kwh = [150, 300]
tier_reset = "monthly"
prices = { all = [0.5, 0.6, 0.7] }
"""


def test_the_thresholds_in_force_on_the_day(tmp_path: Path) -> None:
    versioned = {"v": write_tariff(tmp_path, "v", VERSIONED)}
    meters = [{"meter_id": "m1", "tariff_id": "v"}]
    assert windows_of(versioned, D(2026, 6, 30), meters)["m1"]["thresholds"] == [100.0]
    assert windows_of(versioned, D(2026, 7, 1), meters)["m1"]["thresholds"] == [150.0, 300.0]


# --- tier progress -----------------------------------------------------------------------------

AS_OF = D(2026, 11, 30)
YEAR = {"start": D(2026, 1, 1), "end": D(2027, 1, 1), "thresholds": [2760.0, 4800.0]}


def windows_frame(**by_meter: dict[str, Any]) -> pl.DataFrame:
    return pl.DataFrame(
        [
            {
                "meter_id": meter,
                "tariff_id": "t",
                "tier_reset": w.get("reset", "annual"),
                "window_start": w["start"],
                "window_end": w["end"],
                "thresholds": w["thresholds"],
            }
            for meter, w in by_meter.items()
        ],
        schema={
            "meter_id": pl.String,
            "tariff_id": pl.String,
            "tier_reset": pl.String,
            "window_start": pl.Date,
            "window_end": pl.Date,
            "thresholds": pl.List(pl.Float64),
        },
    )


def daily_frame(rows: list[tuple[str, dt.date, float | None]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={"meter_id": pl.String, "day": pl.Date, "energy_kwh": pl.Float64}, orient="row"
    )


def recent(
    meter: str, kwh: float, days: int = RECENT_DAYS, as_of: dt.date = AS_OF
) -> list[tuple[str, dt.date, float | None]]:
    return [(meter, as_of - dt.timedelta(days=i), kwh) for i in range(days)]


def progress_of(
    daily: pl.DataFrame, windows: pl.DataFrame, as_of: dt.date = AS_OF
) -> dict[str, dict[str, Any]]:
    out = tier_progress(daily, windows, as_of)
    assert out.columns == [c for c in TIER_PROGRESS.schema if c not in ("run_id", "computed_at")]
    return {row["meter_id"]: row for row in out.iter_rows(named=True)}


@pytest.mark.parametrize(
    ("used", "tier", "next_threshold"),
    [
        (0.0, 1, 2760.0),
        (2759.0, 1, 2760.0),
        (2760.0, 2, 4800.0),  # the bound's own kWh are tier 1; the next one is tier 2
        (2761.0, 2, 4800.0),
        (4799.5, 2, 4800.0),
        (4800.0, 3, None),
        (6000.0, 3, None),
    ],
)
def test_the_tier_at_and_around_the_thresholds(
    used: float, tier: int, next_threshold: float | None
) -> None:
    # all of it on one early day: no recent import
    row = progress_of(daily_frame([("m1", D(2026, 2, 1), used)]), windows_frame(m1=YEAR))["m1"]
    assert row["energy_kwh"] == used
    assert row["tier"] == tier
    assert row["next_threshold_kwh"] == next_threshold
    if next_threshold is None:
        assert row["threshold_share"] is None
    else:
        assert row["threshold_share"] == pytest.approx(used / next_threshold)
    assert row["daily_kwh"] == 0.0
    assert row["days_to_crossing"] is None and row["projected_crossing"] is None
    assert (row["as_of"], row["window_start"], row["window_end"]) == (
        AS_OF,
        D(2026, 1, 1),
        D(2027, 1, 1),
    )
    assert (row["tariff_id"], row["tier_reset"]) == ("t", "annual")


def test_the_projection_from_the_last_14_days() -> None:
    # 2500 kWh early in the year, then 10 kWh a day for the last 14 days: 2640 kWh
    daily = daily_frame([("m1", D(2026, 3, 1), 2500.0), *recent("m1", 10.0)])
    row = progress_of(daily, windows_frame(m1=YEAR))["m1"]
    assert row["energy_kwh"] == pytest.approx(2640.0)
    assert row["daily_kwh"] == pytest.approx(10.0)
    assert row["days_to_crossing"] == 12  # 120 kWh to go at 10 a day
    assert row["projected_crossing"] == AS_OF + dt.timedelta(days=12)


def test_days_to_crossing_round_up() -> None:
    daily = daily_frame([("m1", D(2026, 3, 1), 2600.0), *recent("m1", 7.0)])  # 2698 kWh
    row = progress_of(daily, windows_frame(m1=YEAR))["m1"]
    assert row["days_to_crossing"] == math.ceil(62 / 7) == 9
    assert row["projected_crossing"] == D(2026, 12, 9)


def test_days_before_the_recent_ones_do_not_count_towards_daily_kwh() -> None:
    # a heavy day 14 days before as_of (just outside the 14) and nothing recent but 1 kWh today
    daily = daily_frame(
        [("m1", AS_OF - dt.timedelta(days=RECENT_DAYS), 700.0), ("m1", AS_OF, 14.0)]
    )
    row = progress_of(daily, windows_frame(m1=YEAR))["m1"]
    assert row["energy_kwh"] == 714.0
    assert row["daily_kwh"] == pytest.approx(1.0)


def test_absent_recent_days_count_zero() -> None:
    daily = daily_frame(recent("m1", 10.0, days=7))  # 7 of the last 14 days
    row = progress_of(daily, windows_frame(m1=YEAR))["m1"]
    assert row["daily_kwh"] == pytest.approx(5.0)


def test_only_days_of_the_window_up_to_as_of_count() -> None:
    daily = daily_frame(
        [
            ("m1", D(2025, 12, 31), 1000.0),  # last tier year
            ("m1", D(2026, 1, 1), 100.0),
            ("m1", AS_OF, 20.0),
            ("m1", AS_OF + dt.timedelta(days=1), 1000.0),  # after as_of
            ("m1", D(2026, 6, 1), None),
        ]
    )
    row = progress_of(daily, windows_frame(m1=YEAR))["m1"]
    assert row["energy_kwh"] == pytest.approx(120.0)
    assert row["daily_kwh"] == pytest.approx(20.0 / RECENT_DAYS)


def test_a_window_shorter_than_14_days_averages_over_its_own_days() -> None:
    cycle = {
        "reset": "billing_cycle",
        "start": D(2026, 11, 25),
        "end": D(2026, 12, 25),
        "thresholds": [405.0],
    }
    daily = daily_frame(recent("m1", 30.0))  # 24 November (outside) up to 30 November
    row = progress_of(daily, windows_frame(m1=cycle))["m1"]
    assert row["energy_kwh"] == pytest.approx(6 * 30.0)  # 25-30 November
    assert row["daily_kwh"] == pytest.approx(30.0)
    assert row["days_to_crossing"] == 8  # 225 kWh to go at 30 a day
    assert row["projected_crossing"] == D(2026, 12, 8)


def test_no_projected_crossing_on_or_after_the_window_end() -> None:
    window = {"start": D(2026, 12, 1), "end": D(2027, 1, 1), "thresholds": [100.0]}
    as_of = D(2026, 12, 21)
    # 1 kWh a day for the 14 days up to as_of: 14 kWh used, daily 1
    daily = daily_frame(recent("m1", 1.0, as_of=as_of))
    # window from 1 December: 14 days of it counted, 86 kWh to go: 86 days, past the end
    row = progress_of(daily, windows_frame(m1=window), as_of)["m1"]
    assert row["days_to_crossing"] == 86
    assert row["projected_crossing"] is None
    # 89 kWh used: 11 days to go lands on 1 January, the (exclusive) window end
    daily = daily_frame([("m1", D(2026, 12, 2), 75.0), *recent("m1", 1.0, as_of=as_of)])
    row = progress_of(daily, windows_frame(m1=window), as_of)["m1"]
    assert (row["energy_kwh"], row["days_to_crossing"]) == (89.0, 11)
    assert row["projected_crossing"] is None
    # 90 kWh used: 10 days to go, 31 December
    daily = daily_frame([("m1", D(2026, 12, 2), 76.0), *recent("m1", 1.0, as_of=as_of)])
    row = progress_of(daily, windows_frame(m1=window), as_of)["m1"]
    assert row["projected_crossing"] == D(2026, 12, 31)


def test_a_meter_without_daily_rows_is_at_the_start_of_tier_1() -> None:
    out = progress_of(daily_frame([("m1", AS_OF, 5.0)]), windows_frame(m1=YEAR, quiet=YEAR))
    quiet = out["quiet"]
    assert (quiet["energy_kwh"], quiet["tier"], quiet["daily_kwh"]) == (0.0, 1, 0.0)
    assert quiet["threshold_share"] == 0.0
    assert quiet["days_to_crossing"] is None and quiet["projected_crossing"] is None
    assert out["m1"]["energy_kwh"] == 5.0


def test_meters_are_counted_in_their_own_windows() -> None:
    windows = windows_frame(
        year=YEAR,
        july={"start": D(2026, 7, 1), "end": D(2027, 7, 1), "thresholds": [2760.0, 4800.0]},
    )
    daily = daily_frame(
        [
            (m, D(2026, 1, 1) + dt.timedelta(days=i), 10.0)
            for m in ("year", "july")
            for i in range(334)
        ]
    )
    out = progress_of(daily, windows)
    assert out["year"]["energy_kwh"] == pytest.approx(3340.0) and out["year"]["tier"] == 2
    assert out["july"]["energy_kwh"] == pytest.approx(1530.0) and out["july"]["tier"] == 1


# --- the tier-progress run on a lake -----------------------------------------------------------

NOW = dt.datetime(2026, 12, 1, 2, tzinfo=UTC)


def daily_usage_rows(
    meter_id: str, first: dt.date, days: int, kwh: float, run_id: str, computed_at: dt.datetime
) -> pl.DataFrame:
    return table_frame(
        DAILY_USAGE,
        [
            {
                "meter_id": meter_id,
                "day": first + dt.timedelta(days=i),
                "timezone": "Asia/Shanghai",
                "interval_minutes": 15,
                "energy_kwh": kwh,
                "run_id": run_id,
                "computed_at": computed_at,
            }
            for i in range(days)
        ],
    )


@pytest.fixture
def tier_lake(lake: Path) -> Path:
    """Meters on an annual tariff (one with its own tier year), a billing-cycle tariff, a flat
    tariff and none, with a year of daily figures from one analysis run."""
    write_table(
        lake,
        METERS,
        table_frame(
            METERS,
            [
                {"meter_id": "annual", "tariff_id": ZJ_TIERED},
                {"meter_id": "july", "tariff_id": ZJ_TOU, "tier_year_start": "07-01"},
                {"meter_id": "cycle", "tariff_id": PGE, "billing_day": 15},
                {"meter_id": "flat", "tariff_id": PECO},
                {"meter_id": "none"},
                {"meter_id": "fresh", "tariff_id": ZJ_TIERED},
            ],
            updated_at=NOW - dt.timedelta(days=30),
        ),
    )
    run = NOW - dt.timedelta(hours=1)
    write_table(
        lake,
        DAILY_USAGE,
        pl.concat(
            [
                # 2025-12-31 .. 2026-12-01: one day either side of what counts
                daily_usage_rows(m, D(2025, 12, 31), 336, kwh, "ana-1", run)
                for m, kwh in (("annual", 8.0), ("july", 20.0), ("cycle", 30.0), ("flat", 5.0))
            ]
        ),
    )
    return lake


def stored_progress(lake: Path) -> pl.DataFrame:
    return scan(lake, TIER_PROGRESS).drop("date", strict=False).collect()


def test_run_tier_progress_writes_a_row_per_tiered_meter(
    tier_lake: Path, tariffs: dict[str, Tariff]
) -> None:
    rows = run_tier_progress(tier_lake, tariffs, AS_OF, run_id="tp-1", now=NOW)

    assert rows.columns == list(TIER_PROGRESS.schema)
    assert dict(rows.schema) == dict(TIER_PROGRESS.schema)
    out = {row["meter_id"]: row for row in rows.iter_rows(named=True)}
    assert set(out) == {"annual", "july", "cycle", "fresh"}
    assert set(rows["run_id"]) == {"tp-1"} and set(rows["computed_at"]) == {NOW}
    assert set(rows["as_of"]) == {AS_OF}

    annual = out["annual"]  # 1 January to 30 November: 334 days x 8 kWh
    assert (annual["tariff_id"], annual["tier_reset"]) == (ZJ_TIERED, "annual")
    assert (annual["window_start"], annual["window_end"]) == (D(2026, 1, 1), D(2027, 1, 1))
    assert annual["energy_kwh"] == pytest.approx(2672.0)
    assert (annual["tier"], annual["next_threshold_kwh"]) == (1, 2760.0)
    assert annual["threshold_share"] == pytest.approx(2672 / 2760)
    assert annual["daily_kwh"] == pytest.approx(8.0)
    assert annual["days_to_crossing"] == 11
    assert annual["projected_crossing"] == D(2026, 12, 11)

    july = out["july"]  # 1 July to 30 November: 153 days x 20 kWh
    assert (july["window_start"], july["window_end"]) == (D(2026, 7, 1), D(2027, 7, 1))
    assert july["energy_kwh"] == pytest.approx(3060.0)
    assert (july["tier"], july["next_threshold_kwh"]) == (2, 4800.0)
    assert july["days_to_crossing"] == 87
    assert july["projected_crossing"] == AS_OF + dt.timedelta(days=87)

    cycle = out["cycle"]  # 15 to 30 November: 16 days x 30 kWh, past the only bound
    assert (cycle["tier_reset"], cycle["window_start"], cycle["window_end"]) == (
        "billing_cycle",
        D(2026, 11, 15),
        D(2026, 12, 15),
    )
    assert cycle["energy_kwh"] == pytest.approx(480.0)
    assert (cycle["tier"], cycle["next_threshold_kwh"], cycle["threshold_share"]) == (2, None, None)
    assert cycle["daily_kwh"] == pytest.approx(30.0)
    assert cycle["days_to_crossing"] is None and cycle["projected_crossing"] is None

    fresh = out["fresh"]  # no daily figures at all
    assert (fresh["energy_kwh"], fresh["tier"], fresh["daily_kwh"]) == (0.0, 1, 0.0)

    stored = stored_progress(tier_lake)
    key = ["meter_id", "as_of"]
    assert stored.select(rows.columns).sort(key).equals(rows.sort(key))


def test_the_latest_daily_figures_and_the_latest_run_win(
    tier_lake: Path, tariffs: dict[str, Tariff]
) -> None:
    first = run_tier_progress(tier_lake, tariffs, AS_OF, run_id="tp-1", now=NOW)
    # a later analysis run restates the last 14 days of `annual` at 18 kWh; a run stamped
    # earlier than the first one, written after it, restates them at 100 kWh and must not win
    write_table(
        tier_lake,
        DAILY_USAGE,
        pl.concat(
            [
                daily_usage_rows("annual", D(2026, 11, 17), 14, 18.0, "ana-2", NOW),
                daily_usage_rows(
                    "annual", D(2026, 11, 17), 14, 100.0, "ana-0", NOW - dt.timedelta(days=2)
                ),
            ]
        ),
    )
    later = NOW + dt.timedelta(hours=1)
    second = run_tier_progress(tier_lake, tariffs, AS_OF, run_id="tp-2", now=later)
    annual = second.filter(pl.col("meter_id") == "annual").row(0, named=True)
    assert annual["energy_kwh"] == pytest.approx(2672.0 + 14 * 10.0)  # 2812 kWh
    assert (annual["tier"], annual["next_threshold_kwh"]) == (2, 4800.0)
    assert annual["daily_kwh"] == pytest.approx(18.0)
    # the other meters did not change
    unchanged = ["july", "cycle", "fresh"]
    columns = ["meter_id", "energy_kwh", "tier", "daily_kwh", "projected_crossing"]
    assert (
        second.filter(pl.col("meter_id").is_in(unchanged)).select(columns).sort("meter_id")
    ).equals(first.filter(pl.col("meter_id").is_in(unchanged)).select(columns).sort("meter_id"))

    stored = stored_progress(tier_lake)
    assert stored.height == first.height + second.height
    current = latest_rows(stored.lazy(), ["meter_id", "as_of"], ["computed_at", "run_id"]).collect()
    assert set(current["run_id"]) == {"tp-2"}
    key = ["meter_id", "as_of"]
    assert current.select(second.columns).sort(key).equals(second.sort(key))

    refresh_catalog(tier_lake)
    con = connect_catalog(tier_lake)
    try:
        view = con.sql(
            "SELECT meter_id, run_id, energy_kwh FROM tier_progress_current ORDER BY meter_id"
        ).fetchall()
    finally:
        con.close()
    assert [(m, r) for m, r, _ in view] == [
        ("annual", "tp-2"),
        ("cycle", "tp-2"),
        ("fresh", "tp-2"),
        ("july", "tp-2"),
    ]
    assert view[0][2] == pytest.approx(2812.0)


def test_a_lake_without_tiered_meters_writes_nothing(
    lake: Path, tariffs: dict[str, Tariff]
) -> None:
    write_table(
        lake,
        METERS,
        table_frame(
            METERS, [{"meter_id": "flat", "tariff_id": PECO}], updated_at=NOW - dt.timedelta(days=1)
        ),
    )
    rows = run_tier_progress(lake, tariffs, AS_OF, run_id="tp-1", now=NOW)
    assert rows.is_empty()
    assert dict(rows.schema) == dict(TIER_PROGRESS.schema)
    assert stored_progress(lake).is_empty()


def test_tiered_meters_without_daily_figures_start_at_tier_1(
    lake: Path, tariffs: dict[str, Tariff]
) -> None:
    write_table(
        lake,
        METERS,
        table_frame(
            METERS,
            [{"meter_id": "new", "tariff_id": ZJ_TIERED}],
            updated_at=NOW - dt.timedelta(days=1),
        ),
    )
    rows = run_tier_progress(lake, tariffs, AS_OF, run_id="tp-1", now=NOW)
    assert rows.select("meter_id", "energy_kwh", "tier", "next_threshold_kwh").rows() == [
        ("new", 0.0, 1, 2760.0)
    ]
    assert stored_progress(lake).height == 1
