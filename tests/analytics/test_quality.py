"""Per-meter quality figures of interval data."""

from __future__ import annotations

import datetime as dt

import polars as pl
import pytest

from meterlake.analytics.quality import quality_figures

T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)


def intervals(meter: str, statuses: list[str | None], minutes: int = 15) -> pl.DataFrame:
    """One row per status; None leaves that interval out entirely."""
    step = dt.timedelta(minutes=minutes)
    rows = [(meter, T0 + i * step, minutes, s) for i, s in enumerate(statuses) if s is not None]
    return pl.DataFrame(
        rows,
        schema={
            "meter_id": pl.String,
            "interval_start": pl.Datetime("us", "UTC"),
            "interval_minutes": pl.Int16,
            "status": pl.String,
        },
        orient="row",
    )


def figures(*frames: pl.DataFrame) -> dict[str, tuple[object, ...]]:
    got = quality_figures(pl.concat(frames).lazy()).collect()
    return {row[0]: row[1:] for row in got.iter_rows()}


def test_complete_meter() -> None:
    assert figures(intervals("m1", ["actual"] * 96)) == {"m1": (96, 100.0, 0.0, 0.0, 0)}


def test_gaps_estimates_and_suspects_per_meter() -> None:
    a = intervals("a", ["actual", None, None, None, "actual", "estimated", "suspect", "actual"])
    b = intervals("b", ["actual", "actual", "missing", "actual"], minutes=60)
    got = figures(a, b)
    expected_a, completeness_a, estimated_a, gap_a, suspect_a = got["a"]
    assert expected_a == 8
    assert completeness_a == pytest.approx(3 / 8 * 100)
    assert estimated_a == pytest.approx(1 / 8 * 100)
    assert gap_a == pytest.approx(0.75)  # three quarter-hours with no row at all
    assert suspect_a == 1
    assert got["b"] == (4, 75.0, 0.0, 1.0, 0)


def test_a_meter_without_any_measured_interval() -> None:
    got = figures(intervals("m1", ["estimated"] * 4))
    assert got["m1"] == (4, 0.0, 100.0, 1.0, 0)
