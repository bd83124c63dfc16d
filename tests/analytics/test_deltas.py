"""Register reads -> interval energy: every rule on hand-built reads, properties, the fleet.

Expected intervals are worked out by hand in the comments. The property tests also compare the
vectorised pipeline with :func:`reference`, a plain loop over one register at a time that
follows the rules of ``meterlake.analytics.deltas`` the obvious way.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from meterlake.analytics.deltas import (
    CHANNEL_SCHEMA,
    DEFAULT_WRAP_KWH,
    EXPORT,
    IMPORT,
    OUTPUT_SCHEMA,
    DeltaFlag,
    RegisterRules,
    check_interval_minutes,
    native_intervals,
    register_channel_intervals,
    register_intervals,
)
from meterlake.config.errors import ConfigError, SchemaError
from meterlake.config.localtime import local_date
from meterlake.config.schemas import READINGS, Quality
from meterlake.ingest.simulator import (
    FaultKind,
    FleetSpec,
    simulate_faults,
    simulate_meters,
    simulate_readings,
)
from meterlake.storage.compaction import dedup_readings

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 2, tzinfo=UTC)
MIN = dt.timedelta(minutes=1)
Q = dt.timedelta(minutes=15)
ENGINE: Final = "in-memory"


def at(minutes: float) -> dt.datetime:
    return T0 + dt.timedelta(minutes=minutes)


def reads(
    values: Sequence[float | None],
    minutes: Sequence[float] | None = None,
    *,
    meter: str = "m-1",
    quantity: str = IMPORT,
    quality: Sequence[list[str] | None] | None = None,
) -> pl.DataFrame:
    """Register reads of one register, every 15 minutes from T0 unless ``minutes`` says."""
    minutes = minutes if minutes is not None else [15.0 * i for i in range(len(values))]
    n = len(values)
    return pl.DataFrame(
        {
            "meter_id": [meter] * n,
            "ts": [at(m) for m in minutes],
            "quantity": [quantity] * n,
            "value": list(values),
            "quality": list(quality) if quality is not None else [[] for _ in range(n)],
            "source": ["test"] * n,
            "received_at": [at(m) for m in minutes],
        },
        schema=READINGS.schema,
    )


def run(frame: pl.DataFrame, **kwargs: Any) -> pl.DataFrame:
    return register_intervals(frame.lazy(), **kwargs).collect(engine=ENGINE)


def column(out: pl.DataFrame, name: str = "energy_import_kwh") -> list[Any]:
    return out[name].to_list()


def approx(values: Sequence[float | None], rel: float = 1e-9, abs_: float = 1e-9) -> list[Any]:
    """``values`` for comparison within ``rel`` or ``abs_`` (``None``: exactly ``None``)."""
    return [None if x is None else pytest.approx(x, rel=rel, abs=abs_) for x in values]


def starts(out: pl.DataFrame) -> list[dt.datetime]:
    return out["interval_start"].to_list()


# --- the plain spread ----------------------------------------------------------------------------


def test_reads_on_the_grid_give_their_differences() -> None:
    out = run(reads([100.0, 100.25, 100.5, 101.0]))
    assert out.schema == OUTPUT_SCHEMA
    assert starts(out) == [at(0), at(15), at(30)]
    assert column(out) == approx([0.25, 0.25, 0.5])
    assert column(out, "energy_export_kwh") == [None, None, None]
    assert column(out, "coverage") == [1.0, 1.0, 1.0]
    assert column(out, "flags") == [[], [], []]
    assert column(out, "interval_minutes") == [15, 15, 15]


def test_reads_off_the_grid_are_spread_by_time() -> None:
    # 10:07 -> 10:22: 1.5 kWh over 15 minutes; 8 of them in 10:00-10:15, 7 in 10:15-10:30.
    out = run(reads([100.0, 101.5], [7, 22]))
    assert starts(out) == [at(0), at(15)]
    assert column(out) == approx([0.8, 0.7])
    assert column(out, "coverage") == approx([8 / 15, 7 / 15])
    assert column(out, "flags") == [[], []]


def test_jittered_reads_share_each_interval_between_two_segments() -> None:
    # 10:05 100 -> 10:20 101 -> 10:35 103 (0.1 kWh/min, then 0.2 kWh/min... per 15 min: 1, 2)
    # 10:00: 10 min of the first: 10/15; 10:15: 5 min of the first + 10 of the second:
    # 5/15 + 20/15; 10:30: 5 min of the second: 10/15.
    out = run(reads([100.0, 101.0, 103.0], [5, 20, 35]))
    assert column(out) == approx([10 / 15, 25 / 15, 10 / 15])
    assert column(out, "coverage") == approx([10 / 15, 1.0, 5 / 15])
    assert sum(column(out)) == pytest.approx(3.0, rel=1e-12)


def test_reads_closer_than_the_grid_are_summed() -> None:
    # Five-minute reads on an hourly grid: 12 steps of 0.1 kWh per hour.
    values = [50.0 + 0.1 * i for i in range(25)]
    out = run(reads(values, [5.0 * i for i in range(25)]), interval_minutes=60)
    assert starts(out) == [at(0), at(60)]
    assert column(out) == approx([1.2, 1.2])
    assert column(out, "flags") == [[], []]


def test_a_gap_is_spread_linearly_and_flagged() -> None:
    # Nothing between 00:30 and 02:30: 4 kWh over 8 quarter-hours.
    out = run(reads([10.0, 10.5, 11.0, 15.0, 15.25], [0, 15, 30, 150, 165]))
    assert starts(out) == [at(15.0 * i) for i in range(11)]
    assert column(out) == approx([0.5, 0.5, *[0.5] * 8, 0.25])
    gap = [DeltaFlag.GAP_APPORTIONED.value]
    assert column(out, "flags") == [[], [], *[gap] * 8, []]
    assert column(out, "coverage") == [1.0] * 11


def test_gap_threshold_is_a_rule() -> None:
    frame = reads([10.0, 10.5, 11.0], [0, 30, 60])
    assert column(run(frame), "flags") == [["gap_apportioned"]] * 4
    loose = run(frame, rules=RegisterRules(gap_minutes=30))
    assert column(loose, "flags") == [[]] * 4


def test_one_read_gives_no_interval() -> None:
    assert run(reads([10.0])).height == 0
    assert run(reads([])).height == 0


def test_the_grid_length_is_configurable() -> None:
    out = run(reads([0.0, 1.0, 3.0, 6.0, 10.0]), interval_minutes=30)
    assert starts(out) == [at(0), at(30)]
    assert column(out) == approx([3.0, 7.0])
    assert column(out, "interval_minutes") == [30, 30]
    for bad in (0, 7, 50, 2880):
        with pytest.raises(ConfigError, match="divisor of 1440"):
            check_interval_minutes(bad)


# --- rollover ------------------------------------------------------------------------------------


def test_a_rollover_becomes_the_true_small_delta() -> None:
    out = run(reads([99999.90, 99999.98, 0.05, 0.13]))
    assert column(out) == approx([0.08, 0.07, 0.08], abs_=1e-9)
    assert column(out, "flags") == [[], ["rollover"], []]


def test_the_wrap_point_comes_from_the_meter() -> None:
    # A u32 register counting 0.01 kWh wraps at 2**32 * 0.01 kWh.
    wrap = 2**32 * 0.01
    frame = reads([wrap - 0.3, wrap - 0.1, 0.2, 0.4])
    meters = pl.LazyFrame({"meter_id": ["m-1"], "wrap_kwh": [wrap], "max_power_kw": [None]})
    out = run(frame, meters=meters)
    assert column(out) == approx([0.2, 0.3, 0.2], abs_=1e-8)
    assert column(out, "flags")[1] == ["rollover"]
    # With the default width the same drop is no rollover: it stays near zero, a reset.
    default = run(frame)
    assert column(default, "flags")[1] == ["meter_reset"]


def test_an_unknown_wrap_point_detects_no_rollover() -> None:
    out = run(reads([99999.90, 99999.98, 0.05, 0.13, 0.2]), rules=RegisterRules(wrap_kwh=None))
    # The drop to 0.05 stays near zero: a reset, not a rollover.
    assert column(out, "flags")[1] == ["meter_reset"]
    assert column(out)[1] is None


def test_rollover_off_the_grid() -> None:
    # Steps of 0.5 (23:55-00:10), 0.75 across the wrap (00:10-00:25) and 0.25 (00:25-00:40).
    out = run(reads([99999.0, 99999.5, 0.25, 0.5], [-5, 10, 25, 40]))
    assert starts(out) == [at(-15), at(0), at(15), at(30)]
    assert column(out) == approx(
        [
            0.5 * 5 / 15,
            0.5 * 10 / 15 + 0.75 * 5 / 15,
            0.75 * 10 / 15 + 0.25 * 5 / 15,
            0.25 * 10 / 15,
        ]
    )
    assert column(out, "flags") == [[], ["rollover"], ["rollover"], []]


# --- meter reset and replacement -----------------------------------------------------------------


def test_a_detected_replacement_starts_a_new_baseline() -> None:
    out = run(reads([40000.0, 40000.2, 0.3, 0.5, 0.7, 0.9]))
    assert column(out) == approx([0.2, None, 0.2, 0.2, 0.2])
    assert column(out, "coverage") == [1.0, 0.0, 1.0, 1.0, 1.0]
    assert column(out, "flags") == [[], ["meter_reset"], [], [], []]


def test_a_reset_off_the_grid_keeps_what_both_registers_counted() -> None:
    # Old register: 00:05 500.0, 00:20 500.6 (0.04 kWh/min); new: 00:35 0.3, 00:50 0.6
    # (0.02 kWh/min). 00:15: 5 min of the old (0.2 kWh), 00:20-00:30 unknown; 00:30: unknown
    # until 00:35, then 10 min of the new (0.2 kWh).
    out = run(reads([499.4, 500.0, 500.6, 0.3, 0.6, 0.9], [-10, 5, 20, 35, 50, 65]))
    assert starts(out)[1:5] == [at(0), at(15), at(30), at(45)]
    energy = column(out)
    assert energy[2:4] == approx([0.2, 0.2])
    assert column(out, "coverage")[2:4] == approx([5 / 15, 10 / 15])
    assert column(out, "flags")[2:4] == [["meter_reset"], ["meter_reset"]]


def test_an_explicit_replacement_event() -> None:
    # The new meter happens to start above the old one's reading: no drop, only the event says.
    frame = reads([120.0, 120.5, 121.0, 300.0, 300.4, 300.8])
    events = pl.LazyFrame({"meter_id": ["m-1"], "ts": [at(40)], "kind": ["replacement"]})
    out = run(frame, events=events)
    assert column(out) == approx([0.5, 0.5, None, 0.4, 0.4])
    assert column(out, "flags") == [[], [], ["meter_reset"], [], []]
    # Without the event this is a jump far above what the meter can carry: kept and flagged.
    plain = run(frame, rules=RegisterRules(max_power_kw=10))
    assert column(plain, "flags")[2] == ["implausible_delta"]
    assert column(plain)[2] == pytest.approx(179.0)


def test_an_event_at_a_read_belongs_to_the_new_register() -> None:
    frame = reads([120.0, 120.5, 0.1, 0.3])
    events = pl.LazyFrame(
        {"meter_id": ["m-1", "m-1"], "ts": [at(30), at(30)], "kind": ["reset", "calibration"]}
    )
    out = run(frame, events=events)
    assert column(out) == approx([0.5, None, 0.2])
    assert column(out, "flags") == [[], ["meter_reset"], []]


def test_a_drop_that_is_not_confirmed_is_kept_as_negative() -> None:
    # The last read drops: nothing after it can confirm a reset.
    out = run(reads([40000.0, 40000.2, 0.3]))
    assert column(out) == approx([0.2, 0.3 - 40000.2])
    assert column(out, "flags") == [[], ["negative_delta"]]


def test_a_drop_that_stays_but_not_to_zero_is_a_negative_delta() -> None:
    out = run(reads([40000.0, 40000.2, 5000.0, 5000.1, 5000.2]))
    assert column(out)[1] == pytest.approx(5000.0 - 40000.2)
    assert column(out, "flags") == [[], ["negative_delta"], [], []]


def test_reset_confirmation_needs_the_reads_to_stay_low() -> None:
    # Two low reads and back: not a reset (a glitch of two reads is no glitch either).
    out = run(reads([40000.0, 40000.2, 0.3, 0.4, 40000.5, 40000.6]))
    flags = column(out, "flags")
    assert flags[1] == ["negative_delta"]
    assert flags[3] == ["implausible_delta"]
    assert sum(column(out)) == pytest.approx(40000.6 - 40000.0)


# --- glitches ------------------------------------------------------------------------------------


def test_a_low_glitch_is_ignored() -> None:
    # 100.1 -> (30.0) -> 100.3: the read in between is left out; 0.2 kWh over two intervals.
    out = run(reads([100.0, 100.1, 30.0, 100.3, 100.4]))
    assert column(out) == approx([0.1, 0.1, 0.1, 0.1])
    glitch = ["glitch", "gap_apportioned"]
    assert column(out, "flags") == [[], glitch, glitch, []]


def test_a_garbage_glitch_does_not_cost_precision() -> None:
    out = run(reads([100.0, 100.1, 3.4e38, 100.3, 100.4]))
    assert column(out) == approx([0.1, 0.1, 0.1, 0.1], rel=1e-12, abs_=1e-12)


def test_a_glitch_next_to_a_rollover() -> None:
    out = run(reads([99999.7, 99999.8, 12.0, 0.1, 0.2]))
    assert column(out) == approx([0.1, 0.15, 0.15, 0.1])
    assert column(out, "flags")[1:3] == [["rollover", "glitch", "gap_apportioned"]] * 2


def test_the_baseline_is_never_rebased_on_one_read() -> None:
    # A single low read in the middle of a run is a glitch, not a reset.
    out = run(reads([40000.0, 40000.2, 0.3, 40000.6, 40000.8]))
    assert column(out) == approx([0.2, 0.2, 0.2, 0.2])
    assert "meter_reset" not in {f for fs in column(out, "flags") for f in fs}


def test_an_edge_read_is_never_a_glitch() -> None:
    # The first read has no predecessor: the jump after it stays, flagged.
    out = run(reads([5.0, 40000.0, 40000.2]))
    assert column(out, "flags") == [["implausible_delta"], []]


# --- unusable and flagged reads ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "quality"),
    [
        (math.nan, [Quality.INVALID_VALUE.value]),
        (math.nan, []),
        (math.inf, []),
        (None, None),
        (100.2, [Quality.OUT_OF_RANGE.value]),
        (100.2, [Quality.TOTAL_UNRELIABLE.value, Quality.ESTIMATED.value]),
    ],
)
def test_unusable_reads_are_left_out(value: float | None, quality: list[str] | None) -> None:
    frame = reads([100.0, 100.1, value, 100.3], quality=[[], [], quality, []])
    out = run(frame)
    assert column(out) == approx([0.1, 0.1, 0.1])
    spanning = ["gap_apportioned", "invalid_read"]
    assert [sorted(f) for f in column(out, "flags")] == [[], spanning, spanning]


def test_reads_with_quality_flags_are_used_and_flagged() -> None:
    quality = [[], [Quality.ESTIMATED.value], [Quality.CLOCK_INVALID.value], []]
    out = run(reads([1.0, 2.0, 3.0, 4.0], quality=quality))
    assert column(out) == approx([1.0, 1.0, 1.0])
    assert column(out, "flags") == [
        ["estimated_read"],
        ["estimated_read", "clock_invalid"],
        ["clock_invalid"],
    ]


def test_reads_sharing_an_instant_are_left_out() -> None:
    frame = pl.concat([reads([1.0, 2.0, 3.0, 4.0]), reads([9.0], [15])])
    out = run(frame)
    assert column(out) == approx([1.0, 1.0, 1.0])
    assert column(out, "flags")[0] == ["gap_apportioned", "duplicate_conflict"]
    # ... even exact copies: pass readings_current, which keeps one.
    copies = run(pl.concat([reads([1.0, 2.0, 3.0, 4.0]), reads([2.0], [15])]))
    assert column(copies, "flags")[0] == ["gap_apportioned", "duplicate_conflict"]


def test_a_read_flagged_duplicate_conflict_is_used_and_flagged() -> None:
    quality = [[], [Quality.DUPLICATE_CONFLICT.value], []]
    out = run(reads([1.0, 2.0, 3.0], quality=quality))
    assert column(out) == approx([1.0, 1.0])
    assert column(out, "flags") == [["duplicate_conflict"], ["duplicate_conflict"]]


def test_a_small_fall_is_flagged_not_zeroed() -> None:
    out = run(reads([10.0, 10.5, 10.49, 10.7]))
    assert column(out) == approx([0.5, -0.01, 0.21])
    assert column(out, "flags") == [[], ["negative_delta"], []]


def test_other_quantities_are_ignored() -> None:
    frame = pl.concat([reads([1.0, 2.0]), reads([230.0, 231.0], quantity="voltage_v")])
    assert column(run(frame)) == approx([1.0])


# --- both registers, several meters --------------------------------------------------------------


def test_import_and_export_registers_side_by_side() -> None:
    frame = pl.concat(
        [
            reads([10.0, 10.5, 11.0], meter="pv-1"),
            reads([3.0, 3.0, 3.4, 3.6], [0, 15, 30, 45], meter="pv-1", quantity=EXPORT),
            reads([7.0, 7.25, 7.5], meter="a-1"),
        ]
    )
    out = run(frame)
    assert out["meter_id"].to_list() == ["a-1", "a-1", "pv-1", "pv-1", "pv-1"]
    assert column(out) == approx([0.25, 0.25, 0.5, 0.5, None])
    assert column(out, "energy_export_kwh") == approx([None, None, 0.0, 0.4, 0.2])
    assert column(out, "coverage") == [1.0] * 5
    channels = register_channel_intervals(frame.lazy()).collect(engine=ENGINE)
    assert channels.schema == CHANNEL_SCHEMA
    assert channels.select("meter_id", "quantity").rows() == [
        ("a-1", IMPORT),
        ("a-1", IMPORT),
        ("pv-1", EXPORT),
        ("pv-1", EXPORT),
        ("pv-1", EXPORT),
        ("pv-1", IMPORT),
        ("pv-1", IMPORT),
    ]


def test_flags_and_coverage_of_both_registers_combine() -> None:
    frame = pl.concat(
        [
            reads([99999.9, 0.1, 0.3], meter="pv"),
            reads([5.0, 5.5, 6.0], [7, 22, 37], meter="pv", quantity=EXPORT),
        ]
    )
    out = run(frame)
    assert starts(out) == [at(0), at(15), at(30)]
    assert column(out, "flags") == [["rollover"], [], []]
    assert column(out, "coverage") == approx([8 / 15, 1.0, 7 / 15])
    channel = register_channel_intervals(frame.lazy()).collect(engine=ENGINE)
    assert channel.filter(pl.col("quantity") == EXPORT)["flags"].to_list() == [[], [], []]


# --- native intervals, local days ----------------------------------------------------------------


def test_native_intervals_pass_through() -> None:
    rows = pl.LazyFrame(
        {
            "meter_id": ["lp-1", "lp-1", "lp-2"],
            "interval_start": [at(0), at(30), at(0)],
            "interval_minutes": [30, 30, 60],
            "energy_import_kwh": [0.25, None, 1.5],
            "energy_export_kwh": [0.0, None, None],
            "status": ["actual", "missing", "actual"],
            "flags": [[], ["outage"], None],
            "method": [None, None, None],
            "version": [1, 1, 2],
            "run_id": ["r", "r", "r"],
        }
    )
    out = native_intervals(rows).collect()
    assert out.schema == OUTPUT_SCHEMA
    assert out.rows() == [
        ("lp-1", at(0), 30, 0.25, 0.0, 1.0, []),
        ("lp-1", at(30), 30, None, None, 0.0, ["outage"]),
        ("lp-2", at(0), 60, 1.5, None, 1.0, []),
    ]
    # Register intervals and native ones stack into one table.
    both = pl.concat([run(reads([1.0, 2.0])), out])
    assert both.height == 4


@pytest.mark.parametrize(
    ("tz", "day", "expected"),
    [
        ("Asia/Shanghai", dt.date(2026, 3, 29), 96),
        ("Europe/Berlin", dt.date(2026, 3, 29), 92),
        ("Europe/Berlin", dt.date(2026, 10, 25), 100),
        ("Europe/Berlin", dt.date(2026, 10, 26), 96),
        ("America/New_York", dt.date(2026, 3, 8), 92),
        ("America/New_York", dt.date(2026, 11, 1), 100),
    ],
)
def test_local_days_count_their_quarter_hours(tz: str, day: dt.date, expected: int) -> None:
    # A register read every 15 minutes for three UTC days around the local day.
    start = dt.datetime.combine(day, dt.time(), tzinfo=UTC) - dt.timedelta(days=1)
    minutes = [15.0 * i for i in range(3 * 96 + 1)]
    frame = reads([0.1 * i for i in range(len(minutes))], minutes).with_columns(
        ts=pl.col("ts") + (start - T0)
    )
    out = run(frame).with_columns(day=local_date(pl.col("interval_start"), pl.lit(tz), [tz]))
    counts = dict(out.group_by("day").len().rows())
    assert counts[day] == expected
    assert out.filter(pl.col("day") == day)["energy_import_kwh"].sum() == pytest.approx(
        0.1 * expected
    )


# --- parameters ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"wrap_kwh": 0},
        {"max_power_kw": -1},
        {"tolerance_kwh": -0.1},
        {"reset_near_zero_kwh": -1},
        {"reset_confirm_reads": 0},
        {"gap_minutes": 0},
    ],
)
def test_rules_refuse_bad_values(kwargs: dict[str, float]) -> None:
    (name,) = kwargs
    with pytest.raises(ConfigError, match=name):
        RegisterRules(**kwargs)  # type: ignore[arg-type]


def test_a_meters_frame_needs_its_columns() -> None:
    with pytest.raises(SchemaError, match="max_power_kw"):
        register_intervals(
            reads([1.0]).lazy(), meters=pl.LazyFrame({"meter_id": ["m-1"], "wrap_kwh": [1.0]})
        )


def test_per_register_parameters() -> None:
    frame = pl.concat(
        [
            reads([999.8, 999.9, 0.1, 0.2], meter="pv"),
            reads([99.8, 99.9, 0.1, 0.2], meter="pv", quantity=EXPORT),
        ]
    )
    meters = pl.LazyFrame(
        {
            "meter_id": ["pv", "pv"],
            "quantity": [IMPORT, EXPORT],
            "wrap_kwh": [1000.0, 100.0],
            "max_power_kw": [None, 5.0],
        }
    )
    out = run(frame, meters=meters)
    assert column(out) == approx([0.1, 0.2, 0.1])
    assert column(out, "energy_export_kwh") == approx([0.1, 0.2, 0.1])
    assert column(out, "flags")[1] == ["rollover"]


def test_the_physical_maximum_bounds_what_counts_as_plausible() -> None:
    # 60 kWh in 15 minutes is 240 kW: implausible for a 100 kW meter, fine for a 300 kW one.
    frame = reads([0.0, 60.0, 60.1])
    assert column(run(frame), "flags")[0] == ["implausible_delta"]
    big = pl.LazyFrame({"meter_id": ["m-1"], "wrap_kwh": [None], "max_power_kw": [300.0]})
    assert column(run(frame, meters=big), "flags")[0] == []
    # 30 kWh would still be 120 kW, but 30.1 kWh over the next half hour is not: the read in
    # between is the odd one out, a glitch.
    assert column(run(reads([0.0, 30.0, 30.1])), "flags")[0] == ["glitch", "gap_apportioned"]


# --- determinism ---------------------------------------------------------------------------------


def test_engines_agree() -> None:
    frame = pl.concat(
        [
            reads([99999.9, 0.1, 30.0, 0.3, 0.4], [0, 15, 30, 45, 52], meter="x"),
            reads([1.0, 2.0, math.nan, 3.0], [3, 18, 33, 48], meter="y"),
        ]
    )
    lazy = register_intervals(frame.lazy())
    assert_frame_equal(lazy.collect(engine="streaming"), lazy.collect(engine="in-memory"))


# --- the reference: one register at a time, the obvious way --------------------------------------

US = 60_000_000
BAD = {Quality.INVALID_VALUE.value, Quality.OUT_OF_RANGE.value, Quality.TOTAL_UNRELIABLE.value}
CARRIED = {
    Quality.ESTIMATED.value: DeltaFlag.ESTIMATED_READ.value,
    Quality.CLOCK_INVALID.value: DeltaFlag.CLOCK_INVALID.value,
    Quality.DUPLICATE_CONFLICT.value: DeltaFlag.DUPLICATE_CONFLICT.value,
}


@dataclass
class Read:
    t: int
    v: float
    quality: set[str]
    skipped: set[str] = field(default_factory=set)


def reference(
    frame: pl.DataFrame,
    interval_minutes: int = 15,
    rules: RegisterRules | None = None,
    events: Sequence[tuple[str, dt.datetime]] = (),
) -> dict[tuple[str, str, int], tuple[float | None, float, set[str]]]:
    """``(meter, quantity, interval index) -> (energy, coverage, flags)``, register by register."""
    rules = rules or RegisterRules()
    step = interval_minutes * US
    tol, rate = rules.tolerance_kwh, rules.max_power_kw / 60 / US
    wrap = rules.wrap_kwh
    gap = (rules.gap_minutes or 1.5 * interval_minutes) * US
    out: dict[tuple[str, str, int], tuple[float | None, float, set[str]]] = {}

    def us(moment: dt.datetime) -> int:
        return (moment - dt.datetime(1970, 1, 1, tzinfo=UTC)) // dt.timedelta(microseconds=1)

    def plausible(d: float, span: int) -> bool:
        cap = rate * span + tol
        return -tol <= d <= cap or (wrap is not None and -tol <= d + wrap <= cap)

    for (meter, quantity), group in frame.group_by("meter_id", "quantity"):
        if quantity not in (IMPORT, EXPORT):
            continue
        times = [us(m) for m in group["ts"]]
        marks = sorted(us(m) for mid, m in events if mid == meter)
        counts: dict[int, int] = {}
        for t in times:
            counts[t] = counts.get(t, 0) + 1
        usable: list[Read] = []
        pending: set[str] = set()
        rows = sorted(
            zip(times, group["value"].to_list(), group["quality"].to_list(), strict=True),
            key=lambda r: r[0],
        )
        mark = 0
        for t, v, quality in rows:
            while mark < len(marks) and marks[mark] <= t:
                pending.add("event")
                mark += 1
            q = set(quality or [])
            if counts[t] > 1:
                pending.add(DeltaFlag.DUPLICATE_CONFLICT.value)
            elif v is None or not math.isfinite(v) or q & BAD:
                pending.add(DeltaFlag.INVALID_READ.value)
            else:
                usable.append(Read(t, v, q, pending))
                pending = set()
        # glitches
        n = len(usable)
        candidate = [False] * n
        for j in range(1, n - 1):
            a, b, c = usable[j - 1], usable[j], usable[j + 1]
            if "event" in b.skipped or "event" in c.skipped:
                continue
            fits = plausible(b.v - a.v, b.t - a.t) and plausible(c.v - b.v, c.t - b.t)
            candidate[j] = not fits and plausible(c.v - a.v, c.t - a.t)
        kept: list[Read] = []
        for j, r in enumerate(usable):
            if candidate[j] and not candidate[j - 1]:
                usable[j + 1].skipped |= r.skipped | {DeltaFlag.GLITCH.value}
            else:
                kept.append(r)
        energy: dict[int, float] = {}
        covered: dict[int, int] = {}
        flags: dict[int, set[str]] = {}
        for i in range(1, len(kept)):
            a, b = kept[i - 1], kept[i]
            d, span = b.v - a.v, b.t - a.t
            cap = rate * span + tol
            event = "event" in b.skipped
            rolled = not event and d < -tol and wrap is not None and -tol <= d + wrap <= cap
            later = [r.v for r in kept[i + 1 : i + 1 + rules.reset_confirm_reads]]
            drop = not event and not rolled and d < -tol
            stays = bool(later) and max(later) < a.v - tol
            reset = event or (drop and b.v <= rules.reset_near_zero_kwh and stays)
            e = 0.0 if reset else d + wrap if rolled and wrap is not None else d
            f = (b.skipped - {"event"}) | {
                CARRIED[q] for q in (a.quality | b.quality) if q in CARRIED
            }
            f |= {
                name
                for name, on in [
                    (DeltaFlag.ROLLOVER.value, rolled),
                    (DeltaFlag.METER_RESET.value, reset),
                    (DeltaFlag.GAP_APPORTIONED.value, span > gap),
                    (DeltaFlag.NEGATIVE_DELTA.value, e < 0),
                    (DeltaFlag.IMPLAUSIBLE_DELTA.value, e > cap),
                ]
                if on
            }
            for g in range(a.t // step, -(-b.t // step)):
                overlap = min(b.t, (g + 1) * step) - max(a.t, g * step)
                if overlap <= 0:
                    continue
                energy[g] = energy.get(g, 0.0) + e * overlap / span
                covered[g] = covered.get(g, 0) + (0 if reset else overlap)
                flags.setdefault(g, set()).update(f)
        for g, e in energy.items():
            out[(meter, quantity, g)] = (e if covered[g] > 0 else None, covered[g] / step, flags[g])
    return out


def pipeline(
    frame: pl.DataFrame, interval_minutes: int = 15, **kwargs: Any
) -> dict[tuple[str, str, int], tuple[float | None, float, set[str]]]:
    out = register_channel_intervals(
        frame.lazy(), interval_minutes=interval_minutes, **kwargs
    ).collect(engine=ENGINE)
    step = dt.timedelta(minutes=interval_minutes)
    epoch = dt.datetime(1970, 1, 1, tzinfo=UTC)
    return {(m, q, (s - epoch) // step): (e, c, set(f)) for m, q, s, _, e, c, f in out.iter_rows()}


def assert_same(
    got: dict[tuple[str, str, int], tuple[float | None, float, set[str]]],
    want: dict[tuple[str, str, int], tuple[float | None, float, set[str]]],
    frame: pl.DataFrame,
) -> None:
    """Same intervals, flags and coverage; energy equal up to rounding, which grows with the
    largest reading (a garbage read of 1e9 kWh that no rule removes costs 1e-7 kWh)."""
    largest = frame["value"].abs().fill_nan(0.0).max()
    tolerance = 1e-9 + 8 * 2.0**-52 * float(largest or 0.0)  # type: ignore[arg-type]
    assert got.keys() == want.keys()
    for key, (e, c, f) in want.items():
        ge, gc, gf = got[key]
        assert gf == f, key
        assert gc == pytest.approx(c, abs=1e-12), key
        if e is None:
            assert ge is None, key
        else:
            assert ge == pytest.approx(e, rel=1e-9, abs=tolerance), key


def test_reference_agrees_on_the_hand_built_cases() -> None:
    frame = pl.concat(
        [
            reads([99999.90, 99999.98, 0.05, 0.13], meter="a"),
            reads([40000.0, 40000.2, 0.3, 0.5, 0.7, 0.9], meter="b"),
            reads([100.0, 100.1, 30.0, 100.3, 100.4], meter="c"),
            reads([100.0, 101.0, 103.0], [5, 20, 35], meter="d"),
            reads([100.0, 100.1, math.nan, 100.3], meter="e"),
            reads([10.0, 10.5, 11.0, 15.0, 15.25], [0, 15, 30, 150, 165], meter="f"),
        ]
    )
    assert_same(pipeline(frame), reference(frame), frame)


# --- properties ----------------------------------------------------------------------------------

PROPERTY = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def monotone_register(draw: st.DrawFn) -> tuple[list[float], list[float]]:
    """Reads of a register that only counts up, at random minutes on and off the grid."""
    n = draw(st.integers(2, 40))
    start = draw(st.floats(0.0, 90_000.0))
    steps = draw(st.lists(st.floats(0.0, 20.0), min_size=n - 1, max_size=n - 1))
    seconds = draw(
        st.lists(
            st.one_of(st.integers(0, 96 * 3).map(lambda k: 900 * k), st.integers(0, 3 * 86400)),
            min_size=n,
            max_size=n,
            unique=True,
        )
    )
    minutes = [s / 60 for s in seconds]
    values = [start]
    for s in steps:
        values.append(values[-1] + s)
    return values, sorted(minutes)


@PROPERTY
@given(monotone_register())
def test_intervals_between_two_reads_add_up_to_their_difference(
    register: tuple[list[float], list[float]],
) -> None:
    values, minutes = register
    rules = RegisterRules(max_power_kw=1e6)  # nothing here is implausible
    out = run(reads(values, minutes), rules=rules)
    assert sum(column(out)) == pytest.approx(values[-1] - values[0], rel=1e-9, abs=1e-9)
    assert all(f == [] or f == ["gap_apportioned"] for f in column(out, "flags"))
    # Between any two reads on the grid, exactly their difference.
    on_grid = [(m, v) for m, v in zip(minutes, values, strict=True) if m % 15 == 0]
    for (m1, v1), (m2, v2) in itertools.pairwise(on_grid):
        inside = out.filter(pl.col("interval_start").is_between(at(m1), at(m2), closed="left"))
        assert inside["energy_import_kwh"].sum() == pytest.approx(v2 - v1, rel=1e-9, abs=1e-9)


@st.composite
def faulty_register(draw: st.DrawFn) -> pl.DataFrame:
    """One or two registers with rollovers, resets, glitches, gaps and bad reads."""
    frames = []
    for meter in draw(st.sampled_from([["a"], ["a", "b"]])):
        n = draw(st.integers(2, 30))
        value = draw(st.one_of(st.floats(0.0, 100.0), st.floats(99_990.0, 99_999.99)))
        minute = draw(st.integers(0, 30)) * 1.0
        values: list[float | None] = []
        minutes: list[float] = []
        quality: list[list[str]] = []
        for _ in range(n):
            minutes.append(minute)
            kind = draw(st.sampled_from(["ok"] * 8 + ["glitch", "reset", "nan", "flagged", "drop"]))
            q: list[str] = []
            if kind == "glitch":
                values.append(draw(st.floats(0.0, 1e9)))
            elif kind == "nan":
                values.append(math.nan)
                q = [Quality.INVALID_VALUE.value]
            else:
                if kind == "reset":
                    value = draw(st.floats(0.0, 5.0))
                elif kind == "drop":
                    value = max(0.0, value - draw(st.floats(0.0, 50.0)))
                values.append(value)
                if kind == "flagged":
                    q = [draw(st.sampled_from([q.value for q in Quality]))]
            quality.append(q)
            value = value + draw(st.floats(0.0, 20.0))
            if value >= DEFAULT_WRAP_KWH:
                value -= DEFAULT_WRAP_KWH
            minute += draw(st.sampled_from([15.0, 15.0, 15.0, 5.0, 7.5, 45.0, 200.0]))
        frames.append(reads(values, minutes, meter=meter, quality=quality))
    return pl.concat(frames)


@PROPERTY
@given(faulty_register())
def test_the_pipeline_follows_the_reference(frame: pl.DataFrame) -> None:
    assert_same(pipeline(frame), reference(frame), frame)


@PROPERTY
@given(faulty_register(), st.sampled_from([5, 15, 60]))
def test_the_pipeline_follows_the_reference_on_other_grids(
    frame: pl.DataFrame, minutes: int
) -> None:
    assert_same(pipeline(frame, minutes), reference(frame, minutes), frame)


@PROPERTY
@given(faulty_register(), st.lists(st.integers(0, 600), max_size=3))
def test_the_pipeline_follows_the_reference_with_events(
    frame: pl.DataFrame, minutes: list[int]
) -> None:
    events = [("a", at(m)) for m in minutes]
    frame_events = pl.LazyFrame(
        {"meter_id": [e[0] for e in events], "ts": [e[1] for e in events]},
        schema={"meter_id": pl.String, "ts": pl.Datetime("us", "UTC")},
    ).with_columns(kind=pl.lit("replacement"))
    got = pipeline(frame, events=frame_events)
    assert_same(got, reference(frame, events=events), frame)


@PROPERTY
@given(faulty_register())
def test_no_unflagged_negative_import(frame: pl.DataFrame) -> None:
    out = run(frame)
    for energy, flags in (
        out.filter(pl.col("energy_import_kwh") < 0).select("energy_import_kwh", "flags").iter_rows()
    ):
        # A rollover or reset correction may leave a rounding error, never more.
        assert "negative_delta" in flags or (
            {"rollover", "meter_reset"} & set(flags) and energy > -1e-9
        )


@PROPERTY
@given(faulty_register())
def test_rollovers_and_resets_never_make_a_spike(frame: pl.DataFrame) -> None:
    rules = RegisterRules()
    cap = rules.max_power_kw * 15 / 60 + rules.tolerance_kwh
    out = run(frame, rules=rules).filter(
        pl.col("flags").list.contains("rollover") | pl.col("flags").list.contains("meter_reset")
    )
    suspicious = out.filter(
        ~pl.col("flags").list.contains("implausible_delta")
        & ~pl.col("flags").list.contains("negative_delta")
    )
    assert ((suspicious["energy_import_kwh"].fill_null(0.0).abs()) <= cap + 1e-9).all()


@settings(PROPERTY, max_examples=25)
@given(faulty_register(), st.randoms(use_true_random=False))
def test_deterministic_and_independent_of_row_order(frame: pl.DataFrame, rnd: Any) -> None:
    first = run(frame)
    assert_frame_equal(run(frame), first)
    order = list(range(frame.height))
    rnd.shuffle(order)
    assert_frame_equal(run(frame[order]), first)


# --- the simulated fleet -------------------------------------------------------------------------

SPEC = FleetSpec(meters=300, start=T0, days=5, seed=17, pv_share=0.2)


@pytest.fixture(scope="module")
def fleet() -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    readings = dedup_readings(simulate_readings(SPEC).lazy()).collect()
    meters = simulate_meters(SPEC).select(
        "meter_id",
        wrap_kwh=pl.lit(None, pl.Float64),
        # Households are supplied for about 25 kW, small businesses for 100 kW.
        max_power_kw=pl.when(pl.col("segment") == "business").then(100.0).otherwise(25.0),
    )
    out = run(readings, meters=meters.lazy())
    return out, simulate_faults(SPEC), meters


def flagged(out: pl.DataFrame, meter: str, start: dt.datetime, flag: str) -> bool:
    """True if the interval that ends at ``start`` (the first read the fault touches) is
    flagged ``flag``."""
    row = out.filter((pl.col("meter_id") == meter) & (pl.col("interval_start") == start - Q))
    return row.height == 1 and flag in row["flags"][0]


def test_every_injected_register_fault_is_flagged(
    fleet: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
) -> None:
    out, faults, _ = fleet
    expected = {
        FaultKind.ROLLOVER.value: "rollover",
        FaultKind.REPLACEMENT.value: "meter_reset",
        FaultKind.GLITCH.value: "glitch",
    }
    register_faults = faults.filter(pl.col("kind").is_in(list(expected)))
    assert register_faults.height >= 3 * (SPEC.meters // 100)
    for meter, kind, start in register_faults.select("meter_id", "kind", "start").iter_rows():
        assert flagged(out, meter, start, expected[kind]), (meter, kind, start)
    for meter, start, end in (
        faults.filter(pl.col("kind") == FaultKind.GAP.value)
        .select("meter_id", "start", "end")
        .iter_rows()
    ):
        inside = out.filter(
            (pl.col("meter_id") == meter) & pl.col("interval_start").is_between(start, end)
        )
        assert inside.height > 0
        assert all("gap_apportioned" in f for f in inside["flags"].to_list())


def test_the_fleet_has_no_spike_and_no_unflagged_negative(
    fleet: tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame],
) -> None:
    out, faults, meters = fleet
    bounds = out.join(meters, on="meter_id").with_columns(most=pl.col("max_power_kw") * 15 / 60)
    for name in ("energy_import_kwh", "energy_export_kwh"):
        assert bounds.filter(pl.col(name) > pl.col("most")).height == 0
        assert bounds.filter(pl.col(name) < 0).height == 0
    # Flags come only from the injected faults.
    with_flags = out.filter(pl.col("flags").list.len() > 0)["meter_id"].unique()
    assert set(with_flags.to_list()) <= set(faults["meter_id"].to_list())
    assert out["flags"].explode().drop_nulls().unique().sort().to_list() == sorted(
        ["rollover", "meter_reset", "glitch", "gap_apportioned"]
    )
