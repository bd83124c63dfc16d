"""Interval versions: each VEE run appends a new version only where something changed.

Raw readings are never changed, and neither are stored intervals: a run computes every interval
of its range anew, compares it with the latest stored version of the same (meter, interval), and
appends a row with ``version = latest + 1`` only where the energy, status, flags or method differ
(or the interval is new). Running VEE twice on the same data therefore writes nothing the second
time, and ``intervals_current`` (the highest version) always shows the latest judgement.
"""

from __future__ import annotations

from typing import Final

import polars as pl

from meterlake.config.schemas import INTERVALS
from meterlake.storage.scan import INTERVAL_KEY, latest_versions

KEY: Final = INTERVAL_KEY
COMPARED: Final = ("interval_minutes", "status", "flags", "method")
ENERGY: Final = ("energy_import_kwh", "energy_export_kwh")
ENERGY_TOLERANCE_KWH: Final = 1e-9
"""Energy differences below this are float noise of a recomputation, not a change [kWh]."""


def new_versions(computed: pl.LazyFrame, stored: pl.LazyFrame, run_id: str) -> pl.LazyFrame:
    """The rows a VEE run appends: ``computed`` intervals that are new or differ from ``stored``.

    Parameters
    ----------
    computed
        This run's intervals: the ``INTERVALS`` columns except ``version`` and ``run_id``.
    stored
        Intervals already in the lake (any versions) for at least the same meters and range.
    run_id
        Names this run on every appended row.

    Returns
    -------
    pl.LazyFrame
        In the ``INTERVALS`` contract, ``version`` one above the stored latest (1 if new).
    """
    current = latest_versions(stored).select(
        *KEY,
        *(pl.col(c).alias(f"{c}__stored") for c in (*COMPARED, *ENERGY)),
        pl.col("version").alias("version__stored"),
    )
    joined = computed.join(current, on=list(KEY), how="left", nulls_equal=False)
    unchanged = pl.col("version__stored").is_not_null()
    for column in COMPARED:
        unchanged &= pl.col(column).eq_missing(pl.col(f"{column}__stored"))
    for column in ENERGY:
        a, b = pl.col(column), pl.col(f"{column}__stored")
        same = (a.is_null() & b.is_null()) | ((a - b).abs() <= ENERGY_TOLERANCE_KWH)
        unchanged &= same.fill_null(value=False)
    return (
        joined.filter(~unchanged)
        .with_columns(
            (pl.col("version__stored").fill_null(0) + 1).cast(pl.Int32).alias("version"),
            pl.lit(run_id).alias("run_id"),
        )
        .select(INTERVALS.schema.names())
        .cast(INTERVALS.schema)
        .sort(list(KEY))  # a join does not keep row order: make the output deterministic
    )
