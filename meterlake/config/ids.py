"""Validation of identifiers and partition values before they become part of a path.

A meter id is at most 64 characters of letters, digits and ``. _ - :``, starting with a letter
or digit; that rules out ``/``, ``..`` as a path component, NUL and other control characters.
Partition values are checked against their exact format (``YYYY-MM-DD`` or ``YYYY-MM``) and must
be real dates.
"""

from __future__ import annotations

import datetime as dt
import re
import threading
from typing import Final

import duckdb
import polars as pl

from meterlake.config.errors import UnsafeIdentifierError

METER_ID_MAX_LEN: Final = 64
METER_ID_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9._:\-]{0,63}$"
_METER_ID_RE: Final = re.compile(METER_ID_PATTERN)
_DAY_RE: Final = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_MONTH_RE: Final = re.compile(r"^\d{4}-\d{2}$")


def is_safe_meter_id(meter_id: str) -> bool:
    """True if ``meter_id`` may become part of a path (see :func:`validate_meter_id`)."""
    return isinstance(meter_id, str) and _METER_ID_RE.fullmatch(meter_id) is not None


def validate_meter_id(meter_id: str) -> str:
    """Return ``meter_id`` unchanged if it is safe, else raise :class:`UnsafeIdentifierError`.

    >>> validate_meter_id("m-0001")
    'm-0001'
    """
    if not is_safe_meter_id(meter_id):
        raise UnsafeIdentifierError(
            f"meter id {meter_id!r} is not allowed: use 1 to {METER_ID_MAX_LEN} letters, "
            "digits or '._-:', starting with a letter or digit "
            "(no '/', '..', spaces or control characters)"
        )
    return meter_id


def meter_id_is_safe(column: str = "meter_id") -> pl.Expr:
    """A boolean expression: true where ``column`` holds a safe meter id (null is unsafe)."""
    return pl.col(column).str.contains(METER_ID_PATTERN).fill_null(value=False)


def validate_partition_value(kind: str, value: str) -> str:
    """Check a partition value: ``date`` is ``YYYY-MM-DD``, ``month`` and ``period`` ``YYYY-MM``.

    >>> validate_partition_value("date", "2026-10-01")
    '2026-10-01'
    """
    if kind == "date":
        ok = bool(_DAY_RE.fullmatch(value)) and _is_real_date(value)
        allowed = "a calendar day YYYY-MM-DD"
    elif kind in ("month", "period"):
        ok = bool(_MONTH_RE.fullmatch(value)) and _is_real_date(value + "-01")
        allowed = "a month YYYY-MM"
    else:
        raise UnsafeIdentifierError(f"unknown partition kind {kind!r}: use date, month or period")
    if not ok:
        raise UnsafeIdentifierError(
            f"partition value {kind}={value!r} is not allowed: use {allowed}"
        )
    return value


def _is_real_date(value: str) -> bool:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        return False
    return True


_local = threading.local()


def _hasher() -> duckdb.DuckDBPyConnection:
    """This thread's in-memory DuckDB connection for hashing (opening one costs ~20 ms, more
    than hashing a bill run's ids; connections are not shared between threads)."""
    con: duckdb.DuckDBPyConnection | None = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect()
    return con


def stable_ids(frame: pl.DataFrame, columns: list[str], prefix: str) -> pl.Series:
    """A stable id per row: ``prefix`` and the first 24 hex digits of the SHA-256 of the
    columns joined by ``|`` (DuckDB's, so ids do not depend on the Polars version).

    >>> stable_ids(pl.DataFrame({"a": ["m1"], "b": [1]}), ["a", "b"], "x-").str.len_chars()[0]
    26
    """
    keys = frame.select(
        pl.concat_str([pl.col(c).cast(pl.String) for c in columns], separator="|").alias("k")
    )
    con = _hasher()
    try:
        con.register("keys", keys.to_arrow())
        table = con.sql("SELECT sha256(k) AS id FROM keys").to_arrow_table()
        con.unregister("keys")
    except BaseException:
        # a failed connection may stay invalid: the next call opens a new one
        con.close()
        del _local.con
        raise
    digests = pl.DataFrame(pl.from_arrow(table))["id"]
    return prefix + digests.str.slice(0, 24)
