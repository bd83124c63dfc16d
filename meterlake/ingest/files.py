"""Import of readings and interval energy from CSV or Parquet files (pure: bytes in, frames out).

Four forms are recognised by their columns (names are case-insensitive):

readings
    ``meter_id, ts, quantity, value`` and optionally ``quality`` (flag names separated by ``|``)
    and ``source``.
intervals
    ``meter_id, interval_start, energy_import_kwh`` and optionally ``energy_export_kwh`` and
    ``interval_minutes``.
meter_events
    ``meter_id, ts, kind`` (``replacement`` or ``reset``) and optionally ``note``: a meter swapped
    or its register cleared at ``ts``.
meters
    ``meter_id`` and any of the other columns of the ``meters`` table (master data: ``account``,
    ``meter_group``, ``timezone``, ``import_only``, ``max_power_kw``, ``wrap_kwh``,
    ``tariff_id``, ``billing_day`` (1-28), ``tier_year_start`` (``MM-DD``), ``pv``,
    ``prepaid``, ``vacant``, ``feeder``); an empty cell means the default. Booleans are
    ``true/false``, ``yes/no`` or ``1/0``. A meter's latest import is its current record.

Timestamps are ISO 8601 (``2026-10-01T00:15:00Z``, ``2026-10-01 08:15:00+08:00``); naive ones
(``2026-10-01 08:15``) are local time of the zone passed as ``tz``. Every row is checked on its
own: the good rows come back conformed to the lake's contract, the bad ones as quarantine records
carrying the row verbatim and the reason, so nothing good is lost to a bad neighbour.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

import polars as pl

from meterlake.config.errors import InputFileError
from meterlake.config.ids import meter_id_is_safe
from meterlake.config.schemas import (
    INTERVALS,
    METER_EVENTS,
    METERS,
    QUARANTINE,
    READINGS,
    IntervalStatus,
    Quality,
    known_quantity,
)
from meterlake.config.timezones import is_timezone

Kind = Literal["readings", "intervals", "meter_events", "meters"]
INTERVAL_MINUTES: Final = (5, 15, 30, 60)
EVENT_KINDS: Final = ("replacement", "reset")
_METER_FIELDS: Final = tuple(
    c for c in METERS.schema.names() if c not in ("meter_id", "updated_at")
)
_REQUIRED: Final[dict[Kind, tuple[str, ...]]] = {
    "readings": ("meter_id", "ts", "quantity", "value"),
    "intervals": ("meter_id", "interval_start", "energy_import_kwh"),
    "meter_events": ("meter_id", "ts", "kind"),
    "meters": ("meter_id",),
}
_OPTIONAL: Final[dict[Kind, tuple[str, ...]]] = {
    "readings": ("quality", "source"),
    "intervals": ("energy_export_kwh", "interval_minutes"),
    "meter_events": ("note",),
    "meters": _METER_FIELDS,
}
TABLE_OF: Final = {
    "readings": READINGS,
    "intervals": INTERVALS,
    "meter_events": METER_EVENTS,
    "meters": METERS,
}
"""The lake table each kind of file lands in."""
_AWARE_FORMATS: Final = ("%Y-%m-%dT%H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M%#z")
_NAIVE_FORMATS: Final = ("%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M")
_LINE: Final = "__line"
_REASON: Final = "__reason"


@dataclass(frozen=True)
class ImportedFile:
    """What one file gave: its kind, the rows that conform, and the rows set aside."""

    path: Path
    kind: Kind
    good: pl.DataFrame
    """Rows conformed to the contract of ``TABLE_OF[kind]``."""
    rejected: pl.DataFrame
    """Quarantine records (``QUARANTINE`` contract), one per bad row."""


def read_import_file(
    path: Path,
    *,
    received_at: dt.datetime,
    tz: str | None = None,
    interval_minutes: int = 15,
) -> ImportedFile:
    """Read one CSV or Parquet file of one of the four forms and sort its rows into good and bad.

    Parameters
    ----------
    path
        A ``.csv`` or ``.parquet`` file.
    received_at
        When the data arrived (UTC); stamped on readings, meter records (``updated_at``), meter
        events (``recorded_at``) and quarantine records.
    tz
        IANA zone of naive timestamps; without it, rows with naive timestamps are rejected.
    interval_minutes
        Interval length when an intervals file has no ``interval_minutes`` column.

    Raises
    ------
    InputFileError
        The file cannot be read at all or its columns fit neither form.
    """
    if tz is not None:
        _check_zone(tz)
    if interval_minutes not in INTERVAL_MINUTES:
        raise InputFileError(
            f"interval length {interval_minutes} min: use one of {INTERVAL_MINUTES}"
        )
    raw, first_line = _read_as_text(path)
    kind = detect_kind(raw.columns, path)
    raw = raw.with_row_index(_LINE, offset=first_line)
    if kind == "readings":
        checked = check_readings(raw, tz=tz, source=f"import:{path.name}", received_at=received_at)
    elif kind == "intervals":
        run_id = "import-" + hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        checked = check_intervals(raw, tz=tz, interval_minutes=interval_minutes, run_id=run_id)
    elif kind == "meter_events":
        checked = check_meter_events(raw, tz=tz, recorded_at=received_at)
    else:
        checked = check_meters(raw, updated_at=received_at)
    spec = TABLE_OF[kind]
    good = checked.filter(pl.col(_REASON).is_null()).select(spec.schema.names())
    rejected = quarantine_records(
        raw, checked.filter(pl.col(_REASON).is_not_null()), path, received_at
    )
    return ImportedFile(path=path, kind=kind, good=good, rejected=rejected)


def whole_file_quarantine(path: Path, reason: str, received_at: dt.datetime) -> pl.DataFrame:
    """A quarantine record holding an unreadable file verbatim."""
    return pl.DataFrame(
        {
            "received_at": [received_at],
            "source": [f"import:{path.name}"],
            "reason": [reason],
            "payload": [path.read_bytes()],
        },
        schema=QUARANTINE.schema,
    )


def detect_kind(columns: list[str], path: Path) -> Kind:
    """Which long form ``columns`` are, or an :class:`InputFileError` that says what is missing."""
    present = set(columns)
    kinds: list[Kind] = [
        k
        for k, req in _REQUIRED.items()
        if present.issuperset(req)
        and (k != "meters" or present.issubset({*req, *_OPTIONAL["meters"]}))
    ]
    if len(kinds) != 1:
        forms = " or ".join(
            f"{k} ({', '.join(req)}; optional {', '.join(_OPTIONAL[k])})"
            for k, req in _REQUIRED.items()
        )
        found = ", ".join(columns) or "none"
        raise InputFileError(f"{path}: columns [{found}] fit neither form; expected {forms}")
    return kinds[0]


def check_readings(
    raw: pl.DataFrame, *, tz: str | None, source: str, received_at: dt.datetime
) -> pl.DataFrame:
    """Parse and check readings given as text; ``__reason`` is null for good rows."""
    frame = raw.lazy()
    allowed = [q.value for q in Quality]
    quality = (
        pl.col("quality").str.strip_chars().str.split("|").list.eval(pl.element().str.strip_chars())
        if "quality" in raw.columns
        else pl.lit([], dtype=pl.List(pl.String))
    )
    no_flags = pl.lit([], dtype=pl.List(pl.String))
    quality = pl.when(quality.list.first().fill_null("") == "").then(no_flags).otherwise(quality)
    src = pl.col("source") if "source" in raw.columns else pl.lit(None, pl.String)
    ts, ts_reason = parse_timestamp("ts", tz)
    value = pl.col("value").str.strip_chars().cast(pl.Float64, strict=False)
    frame = frame.with_columns(
        _meter_id(),
        ts.alias("ts"),
        pl.col("quantity").str.strip_chars(),
        value.alias("value"),
        quality.alias("quality"),
        pl.when(src.str.strip_chars().fill_null("") == "")
        .then(pl.lit(source))
        .otherwise(src)
        .alias("source"),
        pl.lit(received_at).dt.convert_time_zone("UTC").alias("received_at"),
        pl.concat_str(
            _meter_id_reason(),
            ts_reason,
            pl.when(~known_quantity())
            .then(
                pl.format(
                    "quantity {} is not a canonical quantity (see table quantities)",
                    _shown(pl.col("quantity")),
                )
            )
            .otherwise(None),
            pl.when(value.is_null())
            .then(pl.format("value {} is not a number", _shown(pl.col("value"))))
            .otherwise(None),
            pl.when(~quality.list.eval(pl.element().is_in(allowed)).list.all())
            .then(
                pl.format(
                    "quality {} has unknown flags (allowed: {})",
                    _shown(quality.list.join("|")),
                    pl.lit(", ".join(allowed)),
                )
            )
            .otherwise(None),
            separator="; ",
            ignore_nulls=True,
        ).alias(_REASON),
    )
    invalid = Quality.INVALID_VALUE.value
    frame = frame.with_columns(
        pl.when(~pl.col("value").is_finite() & ~pl.col("quality").list.contains(invalid))
        .then(pl.col("quality").list.concat(pl.lit([invalid])))
        .otherwise(pl.col("quality"))
        .alias("quality")
    )
    return frame.with_columns(_empty_reason_to_null()).collect()


def check_intervals(
    raw: pl.DataFrame, *, tz: str | None, interval_minutes: int, run_id: str
) -> pl.DataFrame:
    """Parse and check interval energy given as text; ``__reason`` is null for good rows."""
    start, start_reason = parse_timestamp("interval_start", tz)
    minutes = (
        pl.col("interval_minutes").str.strip_chars().cast(pl.Int16, strict=False)
        if "interval_minutes" in raw.columns
        else pl.lit(interval_minutes, pl.Int16)
    )
    energy_in = pl.col("energy_import_kwh").str.strip_chars().cast(pl.Float64, strict=False)
    export_text = (
        pl.col("energy_export_kwh").str.strip_chars()
        if "energy_export_kwh" in raw.columns
        else pl.lit(None, pl.String)
    )
    energy_out = export_text.cast(pl.Float64, strict=False)
    on_grid = (start.dt.epoch("s") % (minutes.cast(pl.Int64) * 60)) == 0
    frame = raw.lazy().with_columns(
        _meter_id(),
        start.alias("interval_start"),
        minutes.alias("interval_minutes"),
        energy_in.alias("energy_import_kwh"),
        energy_out.alias("energy_export_kwh"),
        pl.lit(IntervalStatus.ACTUAL.value).alias("status"),
        pl.lit([], dtype=pl.List(pl.String)).alias("flags"),
        pl.lit(None, pl.String).alias("method"),
        pl.lit(1, pl.Int32).alias("version"),
        pl.lit(run_id).alias("run_id"),
        pl.concat_str(
            _meter_id_reason(),
            start_reason,
            pl.when(~minutes.is_in(INTERVAL_MINUTES).fill_null(value=False))
            .then(
                pl.format(
                    "interval_minutes {} is not one of {}",
                    _shown(minutes),
                    pl.lit(str(INTERVAL_MINUTES)),
                )
            )
            .when(start.is_not_null() & ~on_grid)
            .then(pl.lit("interval_start is not on the interval grid"))
            .otherwise(None),
            pl.when(~energy_in.is_finite().fill_null(value=False))
            .then(
                pl.format(
                    "energy_import_kwh {} is not a finite number",
                    _shown(pl.col("energy_import_kwh")),
                )
            )
            .otherwise(None),
            pl.when(
                export_text.fill_null("").ne("") & ~energy_out.is_finite().fill_null(value=False)
            )
            .then(pl.format("energy_export_kwh {} is not a finite number", _shown(export_text)))
            .otherwise(None),
            separator="; ",
            ignore_nulls=True,
        ).alias(_REASON),
    )
    return frame.with_columns(_empty_reason_to_null()).collect()


def check_meter_events(
    raw: pl.DataFrame, *, tz: str | None, recorded_at: dt.datetime
) -> pl.DataFrame:
    """Parse and check meter events given as text; ``__reason`` is null for good rows."""
    ts, ts_reason = parse_timestamp("ts", tz)
    kind = pl.col("kind").str.strip_chars().str.to_lowercase()
    note = _text("note") if "note" in raw.columns else pl.lit(None, pl.String)
    frame = raw.lazy().with_columns(
        _meter_id(),
        ts.alias("ts"),
        kind.alias("kind"),
        note.alias("note"),
        pl.lit(recorded_at).dt.convert_time_zone("UTC").alias("recorded_at"),
        pl.concat_str(
            _meter_id_reason(),
            ts_reason,
            pl.when(~kind.is_in(EVENT_KINDS).fill_null(value=False))
            .then(
                pl.format(
                    "kind {} is not one of {}",
                    _shown(pl.col("kind")),
                    pl.lit(", ".join(EVENT_KINDS)),
                )
            )
            .otherwise(None),
            separator="; ",
            ignore_nulls=True,
        ).alias(_REASON),
    )
    return frame.with_columns(_empty_reason_to_null()).collect()


def check_meters(raw: pl.DataFrame, *, updated_at: dt.datetime) -> pl.DataFrame:
    """Parse and check meter master data given as text; ``__reason`` is null for good rows.

    A meter listed twice in one file is refused on both lines: which record is meant is not
    something to guess.
    """
    present = set(raw.columns)
    values: dict[str, pl.Expr] = {}
    reasons: list[pl.Expr] = [_meter_id_reason()]
    for name in _METER_FIELDS:
        text = _text(name) if name in present else pl.lit(None, pl.String)
        value, reason = _meter_field(name, text)
        values[name] = value.alias(name)
        reasons.append(reason)
    zones = raw.select(_text("timezone").drop_nulls().unique()) if "timezone" in present else None
    bad_zones = [
        z for z in ([] if zones is None else zones.to_series().to_list()) if not is_timezone(z)
    ]
    reasons.append(
        pl.when(values["timezone"].is_in(bad_zones))
        .then(
            pl.format(
                "timezone {} is not an IANA time zone such as Asia/Shanghai",
                _shown(values["timezone"]),
            )
        )
        .otherwise(None)
    )
    reasons.append(
        pl.when(pl.len().over(_meter_id()) > 1)
        .then(pl.lit("meter_id appears more than once in the file"))
        .otherwise(None)
    )
    frame = raw.lazy().with_columns(
        _meter_id(),
        *values.values(),
        pl.lit(updated_at).dt.convert_time_zone("UTC").alias("updated_at"),
        pl.concat_str(*reasons, separator="; ", ignore_nulls=True).alias(_REASON),
    )
    return frame.with_columns(_empty_reason_to_null()).collect()


_TRUE: Final = ("true", "yes", "y", "1")
_FALSE: Final = ("false", "no", "n", "0")


def _meter_field(name: str, text: pl.Expr) -> tuple[pl.Expr, pl.Expr]:
    """One meter column parsed from ``text`` (stripped, empty as null) and a reason or null."""
    dtype = METERS.schema[name]
    given = text.is_not_null()
    value: pl.Expr
    if dtype == pl.Boolean():
        low = text.str.to_lowercase()
        value = pl.when(low.is_in(_TRUE)).then(pl.lit(value=True))
        value = value.when(low.is_in(_FALSE)).then(pl.lit(value=False))
        wrong = given & value.is_null()
        what = "is not true/false, yes/no or 1/0"
    elif dtype == pl.Float64():
        value = text.cast(pl.Float64, strict=False)
        wrong = given & ~((value > 0) & value.is_finite()).fill_null(value=False)
        what = "is not a number above 0"
    elif name == "billing_day":
        value = text.cast(pl.Int8, strict=False)
        wrong = given & ~value.is_between(1, 28).fill_null(value=False)
        what = "is not a day of the month from 1 to 28"
    elif name == "tier_year_start":
        value = text
        real = pl.concat_str(pl.lit("2001-"), text).str.to_date("%Y-%m-%d", strict=False)
        wrong = given & (~text.str.contains(r"^\d{2}-\d{2}$") | real.is_null())
        what = "is not a day of the year MM-DD such as 01-01"
    else:
        return text, pl.lit(None, pl.String)
    reason = pl.when(wrong).then(pl.format("{} {} " + what, pl.lit(name), _shown(text)))
    return pl.when(wrong).then(None).otherwise(value), reason.otherwise(None)


def _text(name: str) -> pl.Expr:
    """A text column stripped, with empty cells as null."""
    stripped = pl.col(name).str.strip_chars()
    return pl.when(stripped == "").then(None).otherwise(stripped)


def parse_timestamp(column: str, tz: str | None) -> tuple[pl.Expr, pl.Expr]:
    """Parse an ISO 8601 text column to UTC; return the value and a reason (null when fine).

    Timestamps with an offset or ``Z`` are exact; naive ones are read in ``tz``, and a local time
    that does not exist or is ambiguous (a DST change) is refused rather than guessed.
    """
    text = pl.col(column).str.strip_chars().str.replace(r"^(\d{4}-\d{2}-\d{2}) ", "${1}T")
    aware = pl.coalesce(
        [
            text.str.to_datetime(f, strict=False, time_zone="UTC", time_unit="us")
            for f in _AWARE_FORMATS
        ]
    )
    naive = pl.coalesce(
        [text.str.to_datetime(f, strict=False, time_unit="us") for f in _NAIVE_FORMATS]
    )
    if tz is not None:
        local = naive.dt.replace_time_zone(tz, ambiguous="null", non_existent="null")
        value = pl.coalesce([aware, local.dt.convert_time_zone("UTC")])
        naive_reason = pl.format(
            "{} {} does not exist or is ambiguous in {}", pl.lit(column), _shown(text), pl.lit(tz)
        )
    else:
        value = aware
        naive_reason = pl.format("{} {} has no time zone; pass --tz", pl.lit(column), _shown(text))
    reason = (
        pl.when(value.is_not_null())
        .then(None)
        .when(naive.is_not_null())
        .then(naive_reason)
        .otherwise(pl.format("{} {} is not an ISO 8601 timestamp", pl.lit(column), _shown(text)))
    )
    return value, reason


def quarantine_records(
    raw: pl.DataFrame, bad: pl.DataFrame, path: Path, received_at: dt.datetime
) -> pl.DataFrame:
    """Quarantine records for ``bad`` rows: the original row as JSON, its line and the reason."""
    originals = raw.join(bad.select(_LINE, _REASON), on=_LINE, how="inner", maintain_order="left")
    fields = [c for c in raw.columns if c != _LINE]
    return originals.select(
        pl.lit(received_at).dt.convert_time_zone("UTC").alias("received_at"),
        pl.format("import:{}:{}", pl.lit(path.name), pl.col(_LINE)).alias("source"),
        pl.col(_REASON).alias("reason"),
        pl.struct(fields).struct.json_encode().cast(pl.Binary).alias("payload"),
    ).cast(QUARANTINE.schema)


def _read_as_text(path: Path) -> tuple[pl.DataFrame, int]:
    """The file as all-text columns with lower-case names, and the line number of its first row."""
    suffix = path.suffix.lower()
    try:
        if suffix == ".csv":
            frame = pl.read_csv(path, infer_schema=False, raise_if_empty=False)
            first_line = 2  # line 1 is the header
        elif suffix == ".parquet":
            frame = pl.read_parquet(path)
            frame = frame.select(_as_text(name, dtype) for name, dtype in frame.schema.items())
            first_line = 0  # Parquet rows are numbered from 0
        else:
            raise InputFileError(f"{path}: unknown file type {suffix!r}; use .csv or .parquet")
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InputFileError(f"{path}: cannot be read: {exc}") from None
    renamed = {c: c.strip().lower() for c in frame.columns}
    if len(set(renamed.values())) != len(renamed):
        raise InputFileError(f"{path}: repeated column names: {', '.join(frame.columns)}")
    return frame.rename(renamed), first_line


def _as_text(name: str, dtype: pl.DataType) -> pl.Expr:
    col = pl.col(name)
    if isinstance(dtype, pl.Datetime):
        fmt = "%Y-%m-%dT%H:%M:%S%.f" + ("%:z" if dtype.time_zone else "")
        return col.dt.to_string(fmt).alias(name)
    if isinstance(dtype, pl.List):
        return col.cast(pl.List(pl.String)).list.join("|").alias(name)
    return col.cast(pl.String).alias(name)


def _meter_id() -> pl.Expr:
    return pl.col("meter_id").str.strip_chars().alias("meter_id")


def _meter_id_reason() -> pl.Expr:
    meter_id = pl.col("meter_id").str.strip_chars()
    return (
        pl.when(meter_id.fill_null("") == "")
        .then(pl.lit("meter_id is empty"))
        .when(~meter_id_is_safe())
        .then(
            pl.format(
                "meter_id {} is not allowed (letters, digits, '._-:', at most 64)",
                _shown(pl.col("meter_id")),
            )
        )
        .otherwise(None)
    )


def _shown(text: pl.Expr) -> pl.Expr:
    """A value as it appears in a reason: quoted, cut to 40 characters."""
    return pl.format("'{}'", text.cast(pl.String).fill_null("").str.slice(0, 40))


def _empty_reason_to_null() -> pl.Expr:
    return pl.when(pl.col(_REASON) == "").then(None).otherwise(pl.col(_REASON)).alias(_REASON)


def _check_zone(tz: str) -> None:
    if not is_timezone(tz):
        raise InputFileError(f"--tz {tz!r} is not an IANA time zone (e.g. Asia/Shanghai)")
