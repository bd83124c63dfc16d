"""The atomic, partitioned Parquet writer: the one way data enters the lake.

Each call splits a frame by partition and writes one file per partition: to ``<lake>/.tmp`` first,
fsynced, then renamed into the partition directory. A reader therefore sees a file whole or not at
all, a crash leaves at most an invisible temporary file, and because every file name is unique per
writer (host, process, sequence, random part), any number of processes can write one lake at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

import polars as pl

from meterlake.config.errors import SchemaError, UnsafeIdentifierError
from meterlake.config.ids import meter_id_is_safe, validate_partition_value
from meterlake.config.schemas import TableSpec
from meterlake.storage.layout import new_file_name, partition_dir, publish, tmp_path

COMPRESSION: Final = "zstd"
_PART: Final = "__partition"


def conform(frame: pl.DataFrame, table: TableSpec) -> pl.DataFrame:
    """Return ``frame`` with exactly ``table``'s columns, in order and type, or raise.

    Timestamps in another time zone are converted to UTC; naive timestamps are refused (their
    zone would be a guess). Key columns must not be null and meter ids must be path-safe.

    Raises
    ------
    SchemaError
        A column is missing or unknown, a value cannot be cast, or a key column holds null.
    UnsafeIdentifierError
        A ``meter_id`` could escape a path.
    """
    names = set(frame.columns)
    missing = [c for c in table.schema if c not in names]
    extra = [c for c in frame.columns if c not in table.schema]
    if missing or extra:
        raise SchemaError(
            f"{table.name}: columns do not match the contract"
            + (f"; missing: {', '.join(missing)}" if missing else "")
            + (f"; unknown: {', '.join(extra)}" if extra else "")
        )
    exprs = []
    for name, dtype in table.schema.items():
        actual = frame.schema[name]
        col = pl.col(name)
        if isinstance(dtype, pl.Datetime) and isinstance(actual, pl.Datetime):
            if actual.time_zone is None:
                raise SchemaError(
                    f"{table.name}.{name}: naive timestamps are refused; attach their time zone"
                )
            col = col.dt.convert_time_zone("UTC")
        exprs.append(col.cast(dtype, strict=True))
    try:
        out = frame.select(exprs)
    except (pl.exceptions.InvalidOperationError, pl.exceptions.ComputeError) as exc:
        raise SchemaError(f"{table.name}: a column has values of the wrong type: {exc}") from None
    key_columns = dict.fromkeys((*table.dedup_key, table.partition_from))
    nulls = out.select(pl.col(c).null_count() for c in key_columns)
    bad = [c for c, n in nulls.row(0, named=True).items() if n]
    if bad:
        raise SchemaError(f"{table.name}: key columns hold null values: {', '.join(bad)}")
    if "meter_id" in out.columns:
        ids = out.select(pl.col("meter_id").unique()).filter(~meter_id_is_safe())
        if ids.height:
            shown = ", ".join(repr(v) for v in ids["meter_id"].head(3).to_list())
            raise UnsafeIdentifierError(
                f"{table.name}: {ids.height} unsafe meter id(s), e.g. {shown}: use letters, "
                "digits or '._-:' (at most 64, starting with a letter or digit)"
            )
    return out


def write_table(root: Path, table: TableSpec, frame: pl.DataFrame) -> list[Path]:
    """Write ``frame`` into ``table`` of the lake at ``root``; return the files written.

    The frame is checked against the contract first (:func:`conform`): nothing is written unless
    all of it is valid. An empty frame writes nothing.
    """
    data = conform(frame, table)
    if data.height == 0:
        return []
    targets = []
    for value, part in _split_by_partition(data, table).items():
        validate_partition_value(table.partition, value)
        targets.append((partition_dir(root, table, value), part))
    return [write_file(root, directory, part) for directory, part in targets]


def _split_by_partition(data: pl.DataFrame, table: TableSpec) -> dict[str, pl.DataFrame]:
    """A conformed frame split by partition value, in order of first appearance; each part keeps
    the rows' order.

    Formatting every row's timestamp into its partition value takes longer than writing the
    rows, so the usual case is done without it: when the rows of each partition are contiguous
    (time-ordered input, as collectors deliver it), the partition values are computed once per
    run of equal UTC days (a ``date`` or ``month`` partition depends only on the day) and the
    parts are zero-copy slices. Any other order takes the general, row-by-row way.
    """
    column = pl.col(table.partition_from)
    day = column if table.partition == "period" else column.dt.date()
    runs = (
        data.select(day.rle().alias("run"))
        .unnest("run")
        .rename({"value": table.partition_from})
        .select(table.partition_expr().cast(pl.String).alias(_PART), "len")
    )
    blocks = runs.group_by(pl.col(_PART).rle_id().alias("block"), maintain_order=True).agg(
        pl.col(_PART).first(), pl.col("len").sum()
    )
    if blocks[_PART].is_unique().all():
        offsets = blocks["len"].cum_sum() - blocks["len"]
        return {
            value: data.slice(offset, length)
            for value, offset, length in zip(blocks[_PART], offsets, blocks["len"], strict=True)
        }
    parts = data.with_columns(table.partition_expr().alias(_PART)).partition_by(
        _PART, as_dict=True, include_key=False, maintain_order=True
    )
    return {str(value): part for (value,), part in parts.items()}


def write_file(root: Path, directory: Path, frame: pl.DataFrame, prefix: str = "") -> Path:
    """Write one already-conformed frame as one new file in ``directory``, atomically."""
    name = new_file_name(prefix)
    tmp = tmp_path(root, name)
    try:
        frame.write_parquet(tmp, compression=COMPRESSION, statistics=True)
        final = directory / name
        publish(tmp, final)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return final
