"""Per-meter data-quality figures of interval data: what ``meterlake quality`` reports.

completeness_pct
    Intervals with a measured value (status ``actual`` or ``edited``) over the intervals the
    meter's span holds (from its first to its last interval, every ``interval_minutes``) [%].
estimated_pct
    Intervals whose value was estimated, over the same span [%].
longest_gap_h
    The longest stretch without a measured value (missing, or no row at all) [h].
suspect
    Intervals a validation rule marked ``suspect``.
"""

from __future__ import annotations

import polars as pl

from meterlake.config.schemas import IntervalStatus

_MEASURED = [IntervalStatus.ACTUAL.value, IntervalStatus.EDITED.value]


def quality_figures(intervals: pl.LazyFrame) -> pl.LazyFrame:
    """One row per meter: the figures of the module docstring, from current intervals.

    >>> import datetime as dt
    >>> t = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    >>> q = dt.timedelta(minutes=15)
    >>> rows = pl.LazyFrame({
    ...     "meter_id": ["m1"] * 3, "interval_start": [t, t + q, t + 3 * q],
    ...     "interval_minutes": [15] * 3, "status": ["actual", "estimated", "actual"]})
    >>> quality_figures(rows).collect().row(0)
    ('m1', 4, 50.0, 25.0, 0.5, 0)
    """
    measured = pl.col("status").is_in(_MEASURED)
    minutes = pl.col("interval_minutes").cast(pl.Int64)
    step_us = minutes.first() * 60_000_000
    span = (
        pl.col("interval_start").max() - pl.col("interval_start").min()
    ).dt.total_microseconds() // step_us + 1
    starts = pl.col("interval_start").filter(measured).sort()
    # the gap between two measured intervals, and before the first / after the last one
    inner_gap = (starts.diff().dt.total_microseconds() // step_us - 1).max()
    lead = (starts.min() - pl.col("interval_start").min()).dt.total_microseconds() // step_us
    tail = (pl.col("interval_start").max() - starts.max()).dt.total_microseconds() // step_us
    longest = pl.max_horizontal(inner_gap.fill_null(0), lead.fill_null(span), tail.fill_null(0))
    return (
        intervals.group_by("meter_id")
        .agg(
            span.alias("intervals_expected"),
            (measured.sum() * 100.0 / span).alias("completeness_pct"),
            ((pl.col("status") == IntervalStatus.ESTIMATED.value).sum() * 100.0 / span).alias(
                "estimated_pct"
            ),
            (longest * minutes.first() / 60.0).alias("longest_gap_h"),
            (pl.col("status") == IntervalStatus.SUSPECT.value)
            .sum()
            .cast(pl.Int64)
            .alias("suspect"),
        )
        .sort("meter_id")
    )
