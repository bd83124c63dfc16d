"""VEE validation rules: one test group per rule, DST days, and properties of validate()."""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Sequence
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from meterlake.analytics.validation import (
    COLUMNS,
    flag_duplicates,
    flag_interval_count,
    flag_negative,
    flag_over_max_power,
    flag_prolonged_estimation,
    flag_spikes,
    flag_sum_check,
    flag_usage,
    flag_zero_runs,
    materialise_gaps,
    validate,
)
from meterlake.config.vee import VeeSettings

UTC = dt.UTC
DEFAULT = VeeSettings()


def local_midnight(tz: str, day: dt.date) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=zoneinfo.ZoneInfo(tz)).astimezone(UTC)


def day_starts(tz: str, day: dt.date, minutes: int = 15) -> list[dt.datetime]:
    """UTC starts of every interval of a local day."""
    start = local_midnight(tz, day)
    end = local_midnight(tz, day + dt.timedelta(days=1))
    n = int((end - start).total_seconds() // 60 // minutes)
    return [start + dt.timedelta(minutes=minutes * i) for i in range(n)]


def frame(
    starts: Sequence[dt.datetime],
    imports: Sequence[float | None] | float = 0.1,
    *,
    meter: str = "m1",
    minutes: int = 15,
    exports: Sequence[float | None] | float = 0.0,
    status: Sequence[str] | str = "actual",
) -> pl.LazyFrame:
    n = len(starts)

    def col(v: Any) -> list[Any]:
        return list(v) if isinstance(v, list | tuple) else [v] * n

    return pl.LazyFrame(
        {
            "meter_id": [meter] * n,
            "interval_start": list(starts),
            "interval_minutes": [minutes] * n,
            "energy_import_kwh": col(imports),
            "energy_export_kwh": col(exports),
            "status": col(status),
            "flags": [[] for _ in range(n)],
            "method": [None] * n,
        },
        schema_overrides={"energy_import_kwh": pl.Float64, "energy_export_kwh": pl.Float64},
    )


def meters(
    tz: str = "Asia/Shanghai",
    *,
    meter: str = "m1",
    group: str | None = None,
    import_only: bool = True,
    max_power_kw: float | None = 13.8,
) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "meter_id": [meter],
            "group": [group],
            "timezone": [tz],
            "import_only": [import_only],
            "max_power_kw": [max_power_kw],
        },
        schema_overrides={"group": pl.String, "max_power_kw": pl.Float64},
    )


def flagged(out: pl.LazyFrame | pl.DataFrame, flag: str) -> pl.DataFrame:
    df = out.collect() if isinstance(out, pl.LazyFrame) else out
    return df.filter(pl.col("flags").list.contains(flag))


SHANGHAI_DAY = dt.date(2026, 3, 30)  # a Monday
SH = day_starts("Asia/Shanghai", SHANGHAI_DAY)


# ---------------------------------------------------------------------------------------------
# interval count and gaps, DST-aware

DST_DAYS = [
    ("Europe/Berlin", dt.date(2026, 3, 29), 92),
    ("Europe/Berlin", dt.date(2026, 10, 25), 100),
    ("America/New_York", dt.date(2026, 3, 8), 92),
    ("America/New_York", dt.date(2026, 11, 1), 100),
    ("Asia/Shanghai", dt.date(2026, 3, 29), 96),
    ("Asia/Shanghai", dt.date(2026, 10, 25), 96),
]


@pytest.mark.parametrize(("tz", "day", "expected"), DST_DAYS)
def test_complete_dst_day_is_not_flagged(tz: str, day: dt.date, expected: int) -> None:
    starts = day_starts(tz, day)
    assert len(starts) == expected
    out = validate(frame(starts), meters(tz), DEFAULT).collect()
    assert out.height == expected
    assert flagged(out, "interval_count").is_empty()
    assert flagged(out, "gap").is_empty()


@pytest.mark.parametrize(("tz", "day", "expected"), DST_DAYS)
def test_dst_day_with_one_interval_removed_is_flagged(tz: str, day: dt.date, expected: int) -> None:
    starts = day_starts(tz, day)
    removed = starts[9]
    out = validate(frame(starts[:9] + starts[10:]), meters(tz), DEFAULT).collect()
    assert out.height == expected  # the gap is materialised
    assert flagged(out, "interval_count").height == expected
    gap = flagged(out, "gap")
    assert gap["interval_start"].to_list() == [removed]
    assert gap["status"].to_list() == ["missing"]
    assert gap["energy_import_kwh"].to_list() == [None]


@pytest.mark.parametrize(("minutes", "expected"), [(5, 276), (15, 92), (30, 46), (60, 23)])
def test_interval_lengths_on_spring_forward_day(minutes: int, expected: int) -> None:
    starts = day_starts("Europe/Berlin", dt.date(2026, 3, 29), minutes)
    assert len(starts) == expected
    intervals = frame(starts, minutes=minutes)
    assert flagged(
        flag_interval_count(intervals, meters("Europe/Berlin"), DEFAULT), "interval_count"
    ).is_empty()
    short = frame(starts[1:], minutes=minutes)
    assert (
        flagged(
            flag_interval_count(short, meters("Europe/Berlin"), DEFAULT), "interval_count"
        ).height
        == expected - 1
    )


def test_gaps_span_whole_local_days_and_keep_other_days_clean() -> None:
    day2 = day_starts("Asia/Shanghai", SHANGHAI_DAY + dt.timedelta(days=1))
    out = materialise_gaps(frame(SH + day2[:-4]), meters(), DEFAULT).collect()
    assert out.height == 192
    assert flagged(out, "gap")["interval_start"].to_list() == day2[-4:]
    counted = flag_interval_count(frame(SH + day2[:-4]), meters(), DEFAULT).collect()
    assert flagged(counted, "interval_count").height == 92  # only day 2's rows


def test_disabled_gap_rule_adds_no_rows() -> None:
    config = VeeSettings.model_validate({"gap": {"enabled": False}})
    out = validate(frame(SH[1:]), meters(), config).collect()
    assert out.height == 95
    assert flagged(out, "interval_count").height == 95


def test_gap_rows_of_a_missing_day_are_counted_on_that_day() -> None:
    day3 = day_starts("Asia/Shanghai", SHANGHAI_DAY + dt.timedelta(days=2))
    out = validate(frame(SH + day3), meters(), DEFAULT).collect()
    assert out.height == 3 * 96
    gap = flagged(out, "gap")
    assert gap.height == 96
    assert gap["flags"].to_list() == [["gap", "interval_count"]] * 96
    assert flagged(out, "interval_count").height == 96  # the other two days are complete


def test_given_flags_are_kept_and_merged_with_rule_flags() -> None:
    rows = frame(SH, spiky(0.81)).with_columns(
        pl.when(pl.int_range(pl.len()).is_in([10, 11]))
        .then(pl.lit(["spike", "glitch"]))
        .otherwise(pl.lit([], dtype=pl.List(pl.String)))
        .alias("flags")
    )
    out = validate(rows, meters(), DEFAULT).collect()
    assert out["flags"].to_list()[10:12] == [["glitch", "spike"], ["glitch", "spike"]]
    assert out["flags"].to_list()[12] == []


# ---------------------------------------------------------------------------------------------
# duplicates


def test_duplicates_keep_edited_then_larger_value() -> None:
    rows = pl.concat(
        [
            frame(SH[:2], [0.2, 0.5]),
            frame(SH[:2], [0.3, 0.5]),
            frame(SH[:1], [0.1], status="edited"),
        ]
    )
    out = flag_duplicates(rows, meters(), DEFAULT).collect()
    assert out.height == 2
    first, second = out.rows(named=True)
    assert (first["energy_import_kwh"], first["status"]) == (0.1, "edited")  # edits win
    assert first["flags"] == ["duplicate"]
    # identical copies: flagged, not suspect
    assert (second["energy_import_kwh"], second["status"], second["flags"]) == (
        0.5,
        "actual",
        ["duplicate"],
    )


def test_conflicting_duplicates_are_suspect_and_keep_the_larger() -> None:
    rows = pl.concat([frame(SH[:1], [0.2]), frame(SH[:1], [0.3])])
    row = flag_duplicates(rows, meters(), DEFAULT).collect().row(0, named=True)
    assert (row["energy_import_kwh"], row["status"]) == (0.3, "suspect")


def test_group_that_keeps_copies_keeps_all_of_them() -> None:
    config = VeeSettings.model_validate({"groups": {"raw": {"duplicate": {"enabled": False}}}})
    rows = pl.concat([frame(SH[1:], 0.1), frame(SH[1:2], 0.3, status="edited")])
    out = validate(rows, meters(group="raw"), config).collect()
    assert out.height == 97  # 95 rows, the copy, and the materialised gap
    assert flagged(out, "duplicate").is_empty()
    copies = out.filter(pl.col("interval_start") == SH[1])
    assert sorted(copies["status"].to_list()) == ["actual", "edited"]


def test_dropped_first_copy_does_not_lose_the_meter() -> None:
    # the meter's first row is a copy that is dropped: its gaps are still materialised
    rows = pl.concat([frame(SH[:1], 0.1), frame(SH[:1], 0.2), frame(SH[2:], 0.1)])
    out = validate(rows, meters(), DEFAULT).collect()
    assert out.height == 96
    assert flagged(out, "gap")["interval_start"].to_list() == [SH[1]]
    assert flagged(out, "duplicate")["energy_import_kwh"].to_list() == [0.2]


def test_no_duplicates_no_flag() -> None:
    assert flagged(flag_duplicates(frame(SH), meters(), DEFAULT), "duplicate").is_empty()


# ---------------------------------------------------------------------------------------------
# spikes


def spiky(peak: float, third: float = 0.4) -> list[float]:
    values = [0.1] * 96
    values[10], values[20], values[30] = peak, third + 0.05, third
    return values


def test_spike_above_ratio_is_flagged_and_suspect() -> None:
    out = flag_spikes(frame(SH, spiky(0.81)), meters(), DEFAULT).collect()
    hit = flagged(out, "spike")
    assert hit["interval_start"].to_list() == [SH[10]]
    assert hit["status"].to_list() == ["suspect"]


def test_spike_at_exact_ratio_is_not_flagged() -> None:
    # 0.8 == 2.0 * 0.4: the rule needs strictly more
    assert flagged(flag_spikes(frame(SH, spiky(0.8)), meters(), DEFAULT), "spike").is_empty()


def test_spike_below_the_floor_is_not_flagged() -> None:
    small = spiky(0.49, third=0.01)
    assert flagged(flag_spikes(frame(SH, small), meters(), DEFAULT), "spike").is_empty()
    at_floor = spiky(0.5, third=0.01)
    assert flagged(flag_spikes(frame(SH, at_floor), meters(), DEFAULT), "spike").height == 1


def test_spike_threshold_per_group() -> None:
    config = VeeSettings.model_validate({"groups": {"shop": {"spike": {"ratio": 3.0}}}})
    out = flag_spikes(frame(SH, spiky(1.0)), meters(group="shop"), config)
    assert flagged(out, "spike").is_empty()
    out = flag_spikes(frame(SH, spiky(1.0)), meters(group="home"), config)
    assert flagged(out, "spike").height == 1


# ---------------------------------------------------------------------------------------------
# high / low usage


def history(
    days: int, kwh: float, *, end: dt.date = SHANGHAI_DAY, weekend_kwh: float | None = None
) -> pl.LazyFrame:
    dates = [end - dt.timedelta(days=i) for i in range(1, days + 1)]
    values = [
        weekend_kwh if weekend_kwh is not None and d.isoweekday() >= 6 else kwh for d in dates
    ]
    return pl.LazyFrame({"meter_id": "m1", "day": dates, "energy_import_kwh": values})


@pytest.mark.parametrize(
    ("per_interval", "flag"),
    # history averages 60 kWh/day: high above 180 (= 96 * 1.875), low below 12 (= 96 * 0.125)
    [(1.876, "high_usage"), (1.875, None), (0.124, "low_usage"), (0.125, None), (0.6, None)],
)
def test_usage_against_average_daily_use(per_interval: float, flag: str | None) -> None:
    out = flag_usage(frame(SH, per_interval), meters(), DEFAULT, history(21, 60.0)).collect()
    flags = {f for fs in out["flags"].to_list() for f in fs}
    assert flags == ({flag} if flag else set())
    assert set(out["status"]) == {"actual"}  # a flag, not a judgement on the values


def test_usage_needs_minimum_history() -> None:
    out = flag_usage(frame(SH, 1.0), meters(), DEFAULT, history(13, 10.0))
    assert out.collect()["flags"].to_list() == [[]] * 96


def test_usage_prefers_same_day_type() -> None:
    # 28 days: weekdays average 10 kWh, weekends 40 kWh; a Monday of 35 kWh is high
    hist = history(28, 10.0, weekend_kwh=40.0)
    out = flag_usage(frame(SH, 35.0 / 96), meters(), DEFAULT, hist)
    assert flagged(out, "high_usage").height == 96
    sunday = SHANGHAI_DAY - dt.timedelta(days=1)
    hist = history(28, 10.0, end=sunday, weekend_kwh=40.0)
    starts = day_starts("Asia/Shanghai", sunday)
    assert flagged(
        flag_usage(frame(starts, 35.0 / 96), meters(), DEFAULT, hist), "high_usage"
    ).is_empty()


def test_low_usage_ignores_incomplete_days() -> None:
    out = flag_usage(frame(SH[:40], 0.001), meters(), DEFAULT, history(21, 10.0))
    assert flagged(out, "low_usage").is_empty()


def test_usage_counts_the_frames_own_earlier_days_as_history() -> None:
    # 15 quiet days then a busy one in a single frame, no stored history: the busy day is
    # judged against the quiet days before it, and none of the quiet days is flagged
    days = [SHANGHAI_DAY + dt.timedelta(days=i) for i in range(16)]
    starts = [t for d in days for t in day_starts("Asia/Shanghai", d)]
    values = [0.1] * (15 * 96) + [1.0] * 96
    empty = pl.LazyFrame(
        schema={"meter_id": pl.String, "day": pl.Date, "energy_import_kwh": pl.Float64}
    )
    out = flag_usage(frame(starts, values), meters(), DEFAULT, empty).collect()
    assert flagged(out, "high_usage")["interval_start"].to_list() == starts[-96:]


def test_usage_history_is_only_the_window_before_the_day() -> None:
    # 21 days of 60 kWh, but all of them more than history_days (14) before the day
    config = DEFAULT.model_copy(update={"history_days": 14})
    old = history(21, 60.0, end=SHANGHAI_DAY - dt.timedelta(days=20))
    out = flag_usage(frame(SH, 1.876), meters(), config, old)
    assert flagged(out, "high_usage").is_empty()
    assert not flagged(
        flag_usage(frame(SH, 1.876), meters(), DEFAULT, old), "high_usage"
    ).is_empty()


# ---------------------------------------------------------------------------------------------
# zero runs, negative, max power, prolonged estimation


def two_days() -> list[dt.datetime]:
    return SH + day_starts("Asia/Shanghai", SHANGHAI_DAY + dt.timedelta(days=1))


def test_zero_run_longer_than_limit() -> None:
    values = [0.1] * 192
    values[10:107] = [0.0] * 97  # 24 h 15 min
    out = flag_zero_runs(frame(two_days(), values), meters(), DEFAULT).collect()
    assert flagged(out, "zero_run")["interval_start"].to_list() == two_days()[10:107]
    values[106] = 0.1  # exactly 24 h: not longer than the limit
    assert flagged(
        flag_zero_runs(frame(two_days(), values), meters(), DEFAULT), "zero_run"
    ).is_empty()


def test_missing_interval_breaks_a_zero_run() -> None:
    values: list[float | None] = [0.0] * 192
    values[96] = None  # 24 h of zeros on either side: neither run is longer than 24 h
    out = flag_zero_runs(frame(two_days(), values), meters(), DEFAULT)
    assert flagged(out, "zero_run").is_empty()


def test_zero_import_while_exporting_is_not_a_zero_run() -> None:
    out = flag_zero_runs(frame(two_days(), 0.0, exports=0.2), meters(import_only=False), DEFAULT)
    assert flagged(out, "zero_run").is_empty()


def test_negative_and_reverse_energy() -> None:
    rows = frame(SH[:3], [-0.1, 0.1, 0.1], exports=[0.0, 0.2, 0.0])
    out = flag_negative(rows, meters(import_only=True), DEFAULT).collect()
    assert out["flags"].to_list() == [["negative"], ["negative"], []]
    assert out["status"].to_list() == ["suspect", "suspect", "actual"]
    out = flag_negative(rows, meters(import_only=False), DEFAULT).collect()
    assert out["flags"].to_list() == [["negative"], [], []]


def test_over_max_power_edges() -> None:
    # 10 kW * 1.1 = 11 kW = 2.75 kWh per quarter-hour
    rows = frame(SH[:3], [2.75, 2.7501, 0.1], exports=[0.0, 0.0, 2.76])
    out = flag_over_max_power(rows, meters(max_power_kw=10.0, import_only=False), DEFAULT)
    assert out.collect()["flags"].to_list() == [[], ["over_max_power"], ["over_max_power"]]
    unknown = flag_over_max_power(rows, meters(max_power_kw=None), DEFAULT)
    assert flagged(unknown, "over_max_power").is_empty()


def test_prolonged_estimation() -> None:
    starts = [SH[0] + dt.timedelta(minutes=15 * i) for i in range(4 * 96)]
    status = ["actual"] * len(starts)
    status[5 : 5 + 289] = ["estimated"] * 289  # 72 h 15 min
    out = flag_prolonged_estimation(frame(starts, status=status), meters(), DEFAULT).collect()
    hit = flagged(out, "prolonged_estimation")
    assert hit.height == 289
    assert set(hit["status"]) == {"estimated"}
    status[5 + 288] = "actual"  # exactly 72 h
    out2 = flag_prolonged_estimation(frame(starts, status=status), meters(), DEFAULT)
    assert flagged(out2, "prolonged_estimation").is_empty()


# ---------------------------------------------------------------------------------------------
# sum check against register reads


def reads(points: Sequence[tuple[dt.datetime, float]]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "meter_id": "m1",
            "ts": [t for t, _ in points],
            "energy_import_kwh": [v for _, v in points],
        }
    )


def test_sum_check_passes_when_intervals_add_up() -> None:
    end = SH[-1] + dt.timedelta(minutes=15)
    ok = reads([(SH[0], 100.0), (SH[48], 104.8), (end, 109.6)])
    assert flagged(flag_sum_check(frame(SH), meters(), DEFAULT, ok), "sum_check").is_empty()


def test_sum_check_flags_the_span_that_differs() -> None:
    end = SH[-1] + dt.timedelta(minutes=15)
    bad = reads([(SH[0], 100.0), (SH[48], 104.8), (end, 110.0)])  # second half: 4.8 vs 5.2
    out = flag_sum_check(frame(SH), meters(), DEFAULT, bad).collect()
    hit = flagged(out, "sum_check")
    assert hit["interval_start"].to_list() == SH[48:]
    assert set(hit["status"]) == {"suspect"}


def test_sum_check_skips_a_span_over_which_the_register_fell() -> None:
    end = SH[-1] + dt.timedelta(minutes=15)
    # a rollover or a new meter between the middle and the end: the register rules' business
    fell = reads([(SH[0], 99_995.0), (SH[48], 99_999.8), (end, 4.6)])
    assert flagged(flag_sum_check(frame(SH), meters(), DEFAULT, fell), "sum_check").is_empty()


def test_sum_check_tolerance_edges() -> None:
    end = SH[-1] + dt.timedelta(minutes=15)
    # 9.6 kWh in the intervals; 2 % of 9.79 = 0.1958 > 0.19: within tolerance
    inside = reads([(SH[0], 0.0), (end, 9.79)])
    assert flagged(flag_sum_check(frame(SH), meters(), DEFAULT, inside), "sum_check").is_empty()
    outside = reads([(SH[0], 0.0), (end, 9.82)])
    assert flagged(flag_sum_check(frame(SH), meters(), DEFAULT, outside), "sum_check").height == 96


def test_sum_check_apportions_reads_inside_an_interval() -> None:
    # a read 5 minutes into interval 4 sees 4 intervals + 1/3 of the fifth
    mid = SH[4] + dt.timedelta(minutes=5)
    ok = reads([(SH[0], 0.0), (mid, 0.4 + 0.1 / 3)])
    assert flagged(flag_sum_check(frame(SH), meters(), DEFAULT, ok), "sum_check").is_empty()
    bad = reads([(SH[0], 0.0), (mid, 1.0)])
    hit = flagged(flag_sum_check(frame(SH), meters(), DEFAULT, bad), "sum_check")
    assert hit["interval_start"].to_list() == SH[:5]


def test_sum_check_flags_the_interval_a_failed_span_starts_in() -> None:
    end = SH[-1] + dt.timedelta(minutes=15)
    mid = SH[4] + dt.timedelta(minutes=5)
    bad = reads([(SH[0], 0.0), (mid, 0.4 + 0.1 / 3), (end, 50.0)])
    hit = flagged(flag_sum_check(frame(SH), meters(), DEFAULT, bad), "sum_check")
    assert hit["interval_start"].to_list() == SH[4:]


def test_sum_check_skips_spans_with_missing_intervals() -> None:
    end = SH[-1] + dt.timedelta(minutes=15)
    values: list[float | None] = [0.1] * 96
    values[50] = None
    bad = reads([(SH[0], 0.0), (end, 50.0)])
    out = flag_sum_check(frame(SH, values), meters(), DEFAULT, bad)
    assert flagged(out, "sum_check").is_empty()


# ---------------------------------------------------------------------------------------------
# settings


def test_settings_reject_unknown_keys_and_bad_values() -> None:
    with pytest.raises(ValidationError, match="extra"):
        VeeSettings.model_validate({"spike": {"ratoi": 2.0}})
    with pytest.raises(ValidationError, match=r"groups\.shop\.spike\.ratio"):
        VeeSettings.model_validate({"groups": {"shop": {"spike": {"ratio": 0.5}}}})


def test_disabled_rule_per_group() -> None:
    config = VeeSettings.model_validate({"groups": {"lab": {"negative": {"enabled": False}}}})
    rows = frame(SH[:1], [-1.0])
    assert flagged(flag_negative(rows, meters(group="lab"), config), "negative").is_empty()
    assert flagged(flag_negative(rows, meters(group="x"), config), "negative").height == 1


def test_unknown_timezone_is_a_config_error() -> None:
    from meterlake.config.errors import ConfigError

    with pytest.raises(ConfigError, match="Mars/Olympus"):
        validate(frame(SH), meters("Mars/Olympus"), DEFAULT)


# ---------------------------------------------------------------------------------------------
# properties of validate()

BERLIN_DAY = day_starts("Europe/Berlin", dt.date(2026, 10, 25))  # 100 quarter-hours
VALUES = st.one_of(
    st.none(), st.sampled_from([0.0, -0.2, 5.0]), st.floats(0, 3, allow_nan=False, width=32)
)


@st.composite
def interval_frames(draw: st.DrawFn) -> pl.DataFrame:
    rows: list[dict[str, Any]] = []
    for meter in ("a", "b"):
        picked = draw(st.lists(st.integers(0, 99), min_size=3, max_size=100, unique=True))
        picked += draw(st.lists(st.sampled_from(picked), max_size=5))  # duplicates
        for i in picked:
            rows.append(
                {
                    "meter_id": meter,
                    "interval_start": BERLIN_DAY[i],
                    "interval_minutes": 15,
                    "energy_import_kwh": draw(VALUES),
                    "energy_export_kwh": draw(st.sampled_from([0.0, 0.3, None])),
                    "status": draw(st.sampled_from(["actual", "estimated", "edited"])),
                    "flags": [],
                    "method": None,
                }
            )
    return pl.DataFrame(rows, schema=_SCHEMA)


_SCHEMA = {
    "meter_id": pl.String(),
    "interval_start": pl.Datetime("us", "UTC"),
    "interval_minutes": pl.Int16(),
    "energy_import_kwh": pl.Float64(),
    "energy_export_kwh": pl.Float64(),
    "status": pl.String(),
    "flags": pl.List(pl.String()),
    "method": pl.String(),
}
PROPERTY_METERS = pl.LazyFrame(
    {
        "meter_id": ["a", "b"],
        "group": [None, "g"],
        "timezone": ["Europe/Berlin", "Europe/Berlin"],
        "import_only": [True, False],
        "max_power_kw": [10.0, None],
    }
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=interval_frames(), seed=st.integers(0, 2**16))
def test_validate_never_changes_energy_and_ignores_row_order(data: pl.DataFrame, seed: int) -> None:
    hist = pl.LazyFrame(
        {
            "meter_id": ["a"] * 20,
            "day": [dt.date(2026, 10, 1) + dt.timedelta(days=i) for i in range(20)],
            "energy_import_kwh": [5.0] * 20,
        }
    )
    rd = pl.LazyFrame(
        {
            "meter_id": ["a", "a"],
            "ts": [BERLIN_DAY[0], BERLIN_DAY[50]],
            "energy_import_kwh": [0.0, 3.0],
        }
    )

    def run(df: pl.DataFrame) -> pl.DataFrame:
        return validate(df.lazy(), PROPERTY_METERS, DEFAULT, reads=rd, history=hist).collect()

    out = run(data)
    assert out.columns == list(COLUMNS)
    assert out.height == 200  # one row per (meter, interval) of the 25-hour day
    assert out.select(pl.struct("meter_id", "interval_start").is_unique().all()).item()
    # every energy in the output is one of the input values of its (meter, interval)
    given_values = data.group_by("meter_id", "interval_start").agg(
        pl.col("energy_import_kwh").alias("imports"), pl.col("energy_export_kwh").alias("exports")
    )
    joined = out.join(given_values, on=["meter_id", "interval_start"], how="left")
    for row in joined.iter_rows(named=True):
        if row["imports"] is None:  # added by the gap rule
            assert row["status"] == "missing"
            assert row["energy_import_kwh"] is None
            assert row["flags"] == sorted(set(row["flags"])) and "gap" in row["flags"]
        else:
            assert row["energy_import_kwh"] in row["imports"]
            assert row["energy_export_kwh"] in row["exports"]
            assert row["flags"] == sorted(set(row["flags"]))
    # deterministic and independent of the input's row order
    shuffled = data.sample(fraction=1.0, shuffle=True, seed=seed)
    assert run(shuffled).equals(out)
    assert run(data).equals(out)


def test_a_meter_absent_from_meters_gets_the_default_rules_on_utc_days() -> None:
    day = day_starts("UTC", SHANGHAI_DAY)
    values: list[float | None] = [0.3] * 96
    values[50] = 5.0  # a spike by the default rule
    rows = frame(day, values, meter="stranger").filter(pl.col("interval_start") != day[10])
    out = validate(rows, meters(), DEFAULT).collect()
    assert out.height == 96  # the gap is materialised on the meter's UTC day
    assert "gap" in out.filter(pl.col("interval_start") == day[10])["flags"][0]
    assert flagged(out, "spike")["interval_start"].to_list() == [day[50]]
