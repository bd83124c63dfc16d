"""The record every collector and decoder produces, and the one way records become a frame.

A :class:`Reading` is deliberately a plain tuple with the timestamp in integer microseconds:
decoders run once per MQTT message or Modbus poll, and building datetimes or frames per message
would cost more than the decoding. Frames are built once per batch by :func:`readings_frame`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Final, NamedTuple

import polars as pl

from meterlake.config.schemas import READINGS, UTC_TS, Quality

US_PER_S: Final = 1_000_000
DEFAULT_MAX_FUTURE_S: Final = 300
"""A device clock more than this ahead of the gateway's is not trusted."""
DEFAULT_MAX_PAST_S: Final = 7 * 86_400
"""A device timestamp older than this (relative to receipt) is not trusted."""


class Reading(NamedTuple):
    """One measured value of one quantity of one meter."""

    meter_id: str
    ts_us: int
    """When the meter measured it, UTC microseconds since the epoch."""
    quantity: str
    """A canonical quantity name (``energy_import_kwh``, ``power_w``, ...)."""
    value: float
    """In the quantity's canonical unit; NaN stays NaN (flagged ``invalid_value``)."""
    quality: tuple[str, ...] = ()
    source: str = ""


def to_us(moment: dt.datetime) -> int:
    """UTC microseconds since the epoch of an aware datetime.

    >>> to_us(dt.datetime(1970, 1, 1, 0, 0, 1, tzinfo=dt.UTC))
    1000000
    """
    if moment.tzinfo is None:
        raise ValueError(f"{moment} is naive")
    delta = moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (delta.days * 86_400 + delta.seconds) * US_PER_S + delta.microseconds


def choose_timestamp(
    device_us: int | None,
    received_us: int,
    *,
    max_future_s: float = DEFAULT_MAX_FUTURE_S,
    max_past_s: float = DEFAULT_MAX_PAST_S,
) -> tuple[int, tuple[str, ...]]:
    """The device's timestamp when it is present and plausible, else the receipt time, flagged.

    >>> choose_timestamp(None, 5_000_000)
    (5000000, ('clock_invalid',))
    >>> choose_timestamp(4_000_000, 5_000_000)
    (4000000, ())
    """
    if device_us is not None and (
        received_us - max_past_s * US_PER_S <= device_us <= received_us + max_future_s * US_PER_S
    ):
        return device_us, ()
    return received_us, (Quality.CLOCK_INVALID.value,)


def readings_frame(rows: Iterable[Reading], *, received_at_us: int | list[int]) -> pl.DataFrame:
    """A frame in the ``readings`` contract from records; NaN/inf values are flagged, not dropped.

    ``received_at_us`` is one receipt time for all rows, or one per row.
    """
    rows = list(rows)
    # Columns are built by transposing the tuples: far faster than a row-oriented frame.
    # Quality tuples repeat (mostly empty), so each distinct one is converted once.
    meter_ids, ts, quantities, values, qualities, sources = (
        zip(*rows, strict=True) if rows else ((), (), (), (), (), ())
    )
    codes: dict[tuple[str, ...], int] = {}
    quality_index = [codes.setdefault(q, len(codes)) for q in qualities]
    distinct = pl.Series([list(q) for q in codes], dtype=pl.List(pl.String))
    frame = pl.DataFrame(
        {
            "meter_id": pl.Series(meter_ids, dtype=pl.String),
            "ts": pl.Series(ts, dtype=pl.Int64),
            "quantity": pl.Series(quantities, dtype=pl.String),
            "value": pl.Series(values, dtype=pl.Float64),
            "quality": distinct.gather(pl.Series(quality_index, dtype=pl.UInt32)),
            "source": pl.Series(sources, dtype=pl.String),
        }
    )
    received = (
        pl.Series("received_at", received_at_us, dtype=pl.Int64)
        if isinstance(received_at_us, list)
        else pl.repeat(received_at_us, frame.height, dtype=pl.Int64, eager=True)
    )
    invalid = Quality.INVALID_VALUE.value
    return frame.with_columns(
        pl.col("ts").cast(UTC_TS),
        pl.when(~pl.col("value").is_finite() & ~pl.col("quality").list.contains(invalid))
        .then(pl.col("quality").list.concat(pl.lit([invalid])))
        .otherwise(pl.col("quality"))
        .alias("quality"),
        received.alias("received_at").cast(UTC_TS),
    ).select(READINGS.schema.names())
