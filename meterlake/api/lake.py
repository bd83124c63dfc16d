"""What the API reads from the lake: lazy Polars scans, and in-memory snapshots of the hot tables.

The server reads Parquet through :mod:`meterlake.storage` and never opens ``catalog.duckdb``:
a read-only DuckDB connection held by the server would lock writers out of the catalogue
refresh (and one opened per request would race with it), and a bill looked up through the
catalogue's views reads the whole period (about 15 ms through ``bills``, 160 ms through
``bills_current`` for 100,000 bills on the 2-core reference machine) -- too slow for
16 concurrent clients and a 100 ms p99.

So the tables a client asks for again and again -- a period's bills and their lines, the
meter master records, the current tier progress, the alerts -- are read once into memory and
kept as a *snapshot* together with the list of files it was built from. Lake files are
immutable (written under a unique name, renamed into place; compaction writes new names and
deletes old ones), so the same file list means the same data: a snapshot is rebuilt exactly
when its files change. The file list is looked at again at most every ``poll_s`` seconds.
Interval data, daily curves and anything else asked for one meter at a time is scanned per
request, with partition pruning.

A file that disappears between listing and reading (a compaction finished in between) makes
the read start over with a new list; if that keeps happening the request is answered 503.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, Generic, Literal, TypeVar
from zoneinfo import ZoneInfo

import polars as pl

from meterlake.api.models import BILL_FIELDS, LINE_FIELDS
from meterlake.api.render import json_objects
from meterlake.config.errors import LakeBusyError
from meterlake.config.schemas import (
    ALERTS,
    BILL_LINES,
    BILL_REVIEWS,
    BILLS,
    DAILY_USAGE,
    METERS,
    TABLES,
    TIER_PROGRESS,
    IntervalStatus,
)
from meterlake.config.timezones import is_timezone
from meterlake.storage.layout import list_partitions, partition_files
from meterlake.storage.scan import (
    alert_states,
    current_meters,
    files_in_range,
    latest_daily,
    latest_rows,
    released_bills,
    scan_current_intervals,
    scan_days,
    scan_files,
)

T = TypeVar("T")
Files = tuple[Path, ...]
Resolution = Literal["interval", "day", "month"]

READ_ATTEMPTS: Final = 3
SORT_KEY: Final = "_us"
"""The listing order's first key: ``issued_at`` (or ``updated_at``) in µs since the epoch."""
_NULL_US: Final = -(2**63)
_ESTIMATED: Final = (IntervalStatus.ESTIMATED.value, IntervalStatus.EDITED.value)


# --- snapshots ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Entry(Generic[T]):
    files: Files
    checked: float
    value: T


class Snapshots(Generic[T]):
    """Values built from lake files, kept until their files change.

    Parameters
    ----------
    poll_s
        A snapshot younger than this [s] is used without listing its files again.
    capacity
        At most this many snapshots are kept (the least recently used go first); None: all.
    monotonic
        The clock that ages snapshots [s].
    """

    def __init__(
        self,
        poll_s: float,
        *,
        capacity: int | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._poll_s = poll_s
        self._capacity = capacity
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._entries: OrderedDict[Hashable, _Entry[T]] = OrderedDict()
        self._builders: dict[Hashable, threading.Lock] = {}
        self.builds = 0
        """How many snapshots were built (for tests and metrics)."""

    def _fresh(self, key: Hashable) -> _Entry[T] | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and self._monotonic() - entry.checked < self._poll_s:
                self._entries.move_to_end(key)
                return entry
            return None

    def get(
        self, key: Hashable, list_files: Callable[[], Sequence[Path]], build: Callable[[Files], T]
    ) -> T:
        """The snapshot ``key``: ``build(files)`` of the files ``list_files()`` names now.

        One thread builds a snapshot while the others asking for it wait for that one.

        Raises
        ------
        LakeBusyError
            Files kept disappearing while the snapshot was read (compactions).
        """
        if (entry := self._fresh(key)) is not None:
            return entry.value
        with self._lock:
            builder = self._builders.setdefault(key, threading.Lock())
        with builder:
            if (entry := self._fresh(key)) is not None:
                return entry.value
            with self._lock:
                old = self._entries.get(key)
            files, value = read_stable(list_files, build, old)
            with self._lock:
                if old is None or value is not old.value:
                    self.builds += 1
                self._entries[key] = _Entry(files, self._monotonic(), value)
                self._entries.move_to_end(key)
                while self._capacity is not None and len(self._entries) > self._capacity:
                    evicted, _ = self._entries.popitem(last=False)
                    self._builders.pop(evicted, None)
            return value


def read_stable(
    list_files: Callable[[], Sequence[Path]],
    build: Callable[[Files], T],
    old: _Entry[T] | None = None,
) -> tuple[Files, T]:
    """``build`` of the current files (``old``'s value when they are ``old``'s files), listed
    again when a file vanished while it was read (see :func:`retry_vanished`)."""

    def attempt() -> tuple[Files, T]:
        files = tuple(list_files())
        if old is not None and old.files == files:
            return files, old.value
        return files, build(files)

    return retry_vanished(attempt)


def retry_vanished(read: Callable[[], T]) -> T:
    """``read()``, called again (it lists the files anew) when a file it listed vanished before
    it was read: a compaction replaced it.

    Raises
    ------
    LakeBusyError
        A file vanished during each of :data:`READ_ATTEMPTS` attempts.
    """
    for _ in range(READ_ATTEMPTS):
        try:
            return read()
        except FileNotFoundError:
            continue
    raise LakeBusyError("the lake's files changed while they were read (a compaction?)")


# --- bills --------------------------------------------------------------------------------------


def bill_versions(bills: pl.LazyFrame, reviews: pl.LazyFrame) -> pl.LazyFrame:
    """Every version of a period's bills in listing order (``issued_at``, then ``bill_id``).

    ``status`` is ``released`` once a review released the version (``released_by``,
    ``released_at`` name the first such review), ``superseded_by`` names the version issued to
    replace it (null: none was) and ``_us`` is ``issued_at`` in µs, the page cursor's key.

    >>> t = dt.datetime(2026, 11, 2, tzinfo=dt.UTC)
    >>> bills = pl.LazyFrame({"bill_id": ["b-2", "b-1"], "supersedes": ["b-1", None],
    ...     "status": ["held", "released"], "issued_at": [t + dt.timedelta(days=1), t]})
    >>> reviews = pl.LazyFrame({"bill_id": ["b-2"], "action": ["released"],
    ...     "reviewer": ["li.wei"], "reviewed_at": [t + dt.timedelta(days=2)]})
    >>> bill_versions(bills, reviews).collect().select(
    ...     "bill_id", "status", "superseded_by", "released_by").rows()
    [('b-1', 'released', 'b-2', None), ('b-2', 'released', None, 'li.wei')]
    """
    versions = released_bills(bills, reviews)
    successors = (
        versions.filter(pl.col("supersedes").is_not_null())
        .sort("issued_at", "bill_id", nulls_last=False)
        .group_by("supersedes", maintain_order=True)
        .first()
        .select(bill_id="supersedes", superseded_by="bill_id")
    )
    return (
        versions.join(successors, on="bill_id", how="left")
        .with_columns(pl.col("issued_at").dt.epoch("us").fill_null(_NULL_US).alias(SORT_KEY))
        .sort(SORT_KEY, "bill_id")
    )


def page(
    rows: pl.DataFrame, after: tuple[int, str] | None, keep: pl.Expr, limit: int, id_column: str
) -> tuple[pl.DataFrame, tuple[int, str] | None]:
    """Up to ``limit`` rows of ``rows`` (sorted by ``_us``, then ``id_column``) that ``keep``
    selects and that sort after the key ``after``: a page, and the key of its last row when
    more rows follow (None: this is the last page).

    >>> rows = pl.DataFrame({"_us": [1, 1, 2], "id": ["a", "b", "a"]})
    >>> shown, last = page(rows, (1, "a"), pl.lit(True), 1, "id")
    >>> shown["id"].to_list(), last
    (['b'], (1, 'b'))
    """
    frame = rows.lazy()
    if after is not None:
        us, previous = after
        key = pl.col(SORT_KEY)
        frame = frame.filter((key > us) | ((key == us) & (pl.col(id_column) > previous)))
    found = frame.filter(keep).head(limit + 1).collect()
    shown = found.head(limit)
    if found.height <= limit:
        return shown, None
    last = shown.row(limit - 1, named=True)
    return shown, (last[SORT_KEY], last[id_column])


@dataclass(frozen=True)
class PeriodBills:
    """The bills of one period, every version, in listing order: the columns pages are cut and
    filtered by (``_us``, ``bill_id``, ``account``, ``status``) and each bill rendered as JSON
    once (``_json``, :data:`~meterlake.api.models.BILL_FIELDS`); ``rows_of`` finds a bill's
    row by its id."""

    period: str
    rows: pl.DataFrame
    row_of: dict[str, int]

    @classmethod
    def of(cls, period: str, rows: pl.DataFrame) -> PeriodBills:
        return cls(period, rows, {bill_id: i for i, bill_id in enumerate(rows["bill_id"])})


@dataclass(frozen=True)
class PeriodLines:
    """The lines of one period's bills, sorted by bill and line number, each rendered as JSON
    once (``_json``, :data:`~meterlake.api.models.LINE_FIELDS`)."""

    rows: pl.DataFrame
    spans: dict[str, tuple[int, int]]
    """Each bill's first row and number of lines."""

    @classmethod
    def of(cls, rows: pl.DataFrame) -> PeriodLines:
        runs = rows.select(pl.col("bill_id").rle()).unnest("bill_id")
        starts = runs["len"].cum_sum() - runs["len"]
        spans = zip(starts, runs["len"], strict=True)
        return cls(rows, dict(zip(runs["value"], spans, strict=True)))

    def lines(self, bill_id: str) -> pl.DataFrame:
        """The lines of ``bill_id``, in order (none for an unknown bill)."""
        start, count = self.spans.get(bill_id, (0, 0))
        return self.rows.slice(start, count)


# --- usage --------------------------------------------------------------------------------------


def usage_steps(
    intervals: pl.LazyFrame,
    timezone: str,
    resolution: Literal["day", "month"],
    first: dt.date,
    last: dt.date,
) -> pl.LazyFrame:
    """Energy [kWh] per local day or month from ``first`` to ``last`` (inclusive; for months
    the months that hold them), with how much of it was measured.

    Every step is there, also one without intervals. ``status``: ``actual`` when every interval
    is actual, ``missing`` when none has energy, else ``estimated`` (some energy is estimated,
    edited or suspect, or some intervals are missing); the counts per interval status follow.

    >>> t = dt.datetime(2026, 9, 30, 16, tzinfo=dt.UTC)  # 2026-10-01 00:00 in Shanghai
    >>> rows = pl.LazyFrame({"interval_start": [t, t + dt.timedelta(hours=1)],
    ...     "energy_import_kwh": [0.5, 0.25], "energy_export_kwh": [0.0, None],
    ...     "status": ["actual", "estimated"]})
    >>> steps = usage_steps(rows, "Asia/Shanghai", "day", dt.date(2026, 10, 1),
    ...                     dt.date(2026, 10, 2)).collect()
    >>> steps.select("start", "energy_import_kwh", "status", "estimated").rows()
    [('2026-10-01', 0.75, 'estimated', 1), ('2026-10-02', None, 'missing', 0)]
    """
    local_day = pl.col("interval_start").dt.convert_time_zone(timezone).dt.date()
    step = local_day if resolution == "day" else local_day.dt.truncate("1mo")
    status = pl.col("status")
    measured = pl.col("energy_import_kwh").is_not_null()

    def energy(column: str) -> pl.Expr:
        col = pl.col(column)
        return pl.when(col.is_not_null().any()).then(col.sum()).alias(column)

    sums = intervals.group_by(step.alias("step")).agg(
        energy("energy_import_kwh"),
        energy("energy_export_kwh"),
        pl.len().cast(pl.Int64).alias("intervals"),
        (status == IntervalStatus.ACTUAL.value).sum().cast(pl.Int64).alias("actual"),
        status.is_in(_ESTIMATED).sum().cast(pl.Int64).alias("estimated"),
        (status == IntervalStatus.SUSPECT.value).sum().cast(pl.Int64).alias("suspect"),
        ((status == IntervalStatus.MISSING.value) | ~measured)
        .sum()
        .cast(pl.Int64)
        .alias("missing"),
    )
    if resolution == "month":
        first, last = first.replace(day=1), last.replace(day=1)
    calendar = pl.LazyFrame(
        {"step": pl.date_range(first, last, "1d" if resolution == "day" else "1mo", eager=True)}
    )
    counts = ("intervals", "actual", "estimated", "suspect", "missing")
    fmt = "%Y-%m-%d" if resolution == "day" else "%Y-%m"
    return (
        calendar.join(sums, on="step", how="left")
        .with_columns(pl.col(c).fill_null(0) for c in counts)
        .with_columns(
            pl.when(pl.col("energy_import_kwh").is_null())
            .then(pl.lit("missing"))
            .when((pl.col("actual") == pl.col("intervals")) & (pl.col("missing") == 0))
            .then(pl.lit("actual"))
            .otherwise(pl.lit("estimated"))
            .alias("status"),
            pl.col("step").dt.strftime(fmt).alias("start"),
        )
        .select("start", "energy_import_kwh", "energy_export_kwh", "status", *counts)
        .sort("start")
    )


ALERT_COLUMNS: Final = (
    "alert_id",
    "rule",
    "severity",
    "meter_id",
    "state",
    "raised_at",
    "updated_at",
    "message",
)
"""The fields of an alert as the API lists it (its figures, ``values_json``, come apart)."""


def alert_summaries(events: pl.LazyFrame) -> pl.LazyFrame:
    """One row per alert: its latest event (``state``, ``updated_at``, message, figures) and
    its first (``raised_at``), in listing order (``updated_at``, then ``alert_id``).

    >>> t = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    >>> events = pl.LazyFrame({"alert_id": ["a", "a", "b"], "rule": ["r"] * 3,
    ...     "severity": ["warning"] * 3, "meter_id": ["m-1"] * 3,
    ...     "state": ["raised", "resolved", "raised"], "message": ["x", None, "y"],
    ...     "values_json": ["{}", None, "{}"],
    ...     "ts": [t, t + dt.timedelta(hours=2), t + dt.timedelta(hours=1)]})
    >>> alert_summaries(events).collect().select("alert_id", "state").rows()
    [('b', 'raised'), ('a', 'resolved')]
    """
    return (
        alert_states(events)
        .rename({"ts": "updated_at"})
        .with_columns(pl.col("updated_at").dt.epoch("us").fill_null(_NULL_US).alias(SORT_KEY))
        .select(*ALERT_COLUMNS, "values_json", SORT_KEY)
        .sort(SORT_KEY, "alert_id")
    )


@dataclass(frozen=True)
class Meter:
    """What the API needs to know of a meter: its account and local time zone."""

    meter_id: str
    account: str | None
    timezone: str


# --- the reader ---------------------------------------------------------------------------------


class LakeReader:
    """Reads the lake at ``root`` for the API (see the module docstring).

    Parameters
    ----------
    root
        The lake.
    site_timezone
        The zone of meters whose master record names none.
    poll_s
        Snapshots younger than this [s] are used without looking at the files.
    cache_periods
        How many periods' bills and lines stay in memory.
    """

    def __init__(
        self, root: Path, *, site_timezone: str, poll_s: float = 1.0, cache_periods: int = 12
    ) -> None:
        self.root = root
        self.site_timezone = site_timezone
        self._bills: Snapshots[PeriodBills] = Snapshots(poll_s, capacity=cache_periods)
        self._lines: Snapshots[PeriodLines] = Snapshots(poll_s, capacity=cache_periods)
        self._ids: Snapshots[frozenset[str]] = Snapshots(poll_s)
        self._meters: Snapshots[dict[str, tuple[str | None, str | None]]] = Snapshots(poll_s)
        self._frames: Snapshots[pl.DataFrame] = Snapshots(poll_s)

    def warm(self) -> None:
        """Build the newest period's snapshots now (a server does it in the background when it
        starts, so its first clients do not wait for them)."""
        periods = self.periods()
        if periods:
            self.bills(periods[-1])
            self.lines(periods[-1])

    def periods(self) -> list[str]:
        """The billing periods that have bills, oldest first."""
        return list_partitions(self.root, BILLS)

    def bills(self, period: str) -> PeriodBills:
        """Every bill version of ``period`` (empty when it has none)."""

        def build(files: Files) -> PeriodBills:
            bill_files = [f for f in files if f.parent.parent.name == BILLS.name]
            review_files = [f for f in files if f.parent.parent.name == BILL_REVIEWS.name]
            rows = bill_versions(
                scan_files(bill_files, BILLS), scan_files(review_files, BILL_REVIEWS)
            ).collect()
            rows = rows.select(
                SORT_KEY, "bill_id", "account", "status", json_objects(rows, BILL_FIELDS)
            )
            return PeriodBills.of(period, rows)

        return self._bills.get(
            period,
            lambda: (
                partition_files(self.root, BILLS, period)
                + partition_files(self.root, BILL_REVIEWS, period)
            ),
            build,
        )

    def lines(self, period: str) -> PeriodLines:
        """The lines of every bill version of ``period``."""

        def build(files: Files) -> PeriodLines:
            rows = (  # stored twice only as exact copies (the dedup key): keep one
                scan_files(list(files), BILL_LINES)
                .filter(pl.col("line_id").is_first_distinct())
                .sort("bill_id", "line_no", "line_id")
                .collect()
            )
            return PeriodLines.of(rows.select("bill_id", json_objects(rows, LINE_FIELDS)))

        listed = partial(partition_files, self.root, BILL_LINES, period)
        return self._lines.get(period, listed, build)

    def find_bill(self, bill_id: str) -> tuple[PeriodBills, int] | None:
        """The bills of the period that holds ``bill_id`` and its row, or None."""

        def ids(files: Files) -> frozenset[str]:
            return frozenset(scan_files(list(files), BILLS).select("bill_id").collect()["bill_id"])

        for period in reversed(self.periods()):
            listed = partial(partition_files, self.root, BILLS, period)
            if bill_id in self._ids.get(period, listed, ids):
                bills = self.bills(period)
                row = bills.row_of.get(bill_id)
                return None if row is None else (bills, row)
        return None

    def _meter_table(self) -> dict[str, tuple[str | None, str | None]]:
        def build(files: Files) -> dict[str, tuple[str | None, str | None]]:
            rows = current_meters(scan_files(list(files), METERS))
            frame = rows.select("meter_id", "account", "timezone").collect()
            pairs = zip(frame["account"], frame["timezone"], strict=True)
            return dict(zip(frame["meter_id"], pairs, strict=True))

        return self._meters.get("meters", partial(files_in_range, self.root, METERS), build)

    def meter(self, meter_id: str) -> Meter:
        """A meter's account and time zone (the site's zone and no account without a master
        record; the site's zone also when the record's is not an IANA name)."""
        meters = self._meter_table()
        account, zone = meters.get(meter_id, (None, None))
        timezone = zone if zone is not None and is_timezone(zone) else self.site_timezone
        return Meter(meter_id, account, timezone)

    def accounts(self) -> dict[str, str | None]:
        """Each registered meter's account."""
        return {m: account for m, (account, _zone) in self._meter_table().items()}

    def usage(
        self, meter: Meter, resolution: Resolution, start: dt.datetime, end: dt.datetime
    ) -> pl.DataFrame:
        """A meter's energy in ``[start, end)``: its current intervals, in time order, or
        :func:`usage_steps` per local day or month."""
        zone = ZoneInfo(meter.timezone)
        first = start.astimezone(zone).date()
        last = (end - dt.timedelta(microseconds=1)).astimezone(zone).date()

        def read() -> pl.DataFrame:
            rows = scan_current_intervals(self.root, start, end).filter(
                pl.col("meter_id") == meter.meter_id
            )
            if resolution == "interval":
                return rows.sort("interval_start").collect()
            return usage_steps(rows, meter.timezone, resolution, first, last).collect()

        return retry_vanished(read)

    def daily(self, meter_id: str, day: dt.date) -> dict[str, Any] | None:
        """A meter's latest ``daily_usage`` row of ``day`` (its figures and curve), or None."""

        def read() -> pl.DataFrame:
            rows = scan_days(self.root, DAILY_USAGE, day, day + dt.timedelta(days=1))
            return latest_daily(rows.filter(pl.col("meter_id") == meter_id)).collect()

        found = retry_vanished(read)
        return found.row(0, named=True) if found.height else None

    def tier_progress(self) -> pl.DataFrame:
        """Each meter's latest tier progress (``tier_progress_current``)."""
        return self._frames.get(
            "tier_progress",
            partial(files_in_range, self.root, TIER_PROGRESS),
            lambda files: latest_rows(
                scan_files(list(files), TIER_PROGRESS), ["meter_id"], ["as_of", "computed_at"]
            ).collect(),
        )

    def alerts(self) -> pl.DataFrame:
        """Every alert's latest state (:func:`alert_summaries`)."""
        return self._frames.get(
            "alerts",
            partial(files_in_range, self.root, ALERTS),
            lambda files: alert_summaries(scan_files(list(files), ALERTS)).collect(),
        )

    def last_writes(self) -> dict[str, tuple[int, float]]:
        """Per table: its number of data files and the newest one's modification time [s]."""
        out = {}
        for name, table in TABLES.items():
            newest, count = 0.0, 0
            for path in files_in_range(self.root, table):
                try:
                    newest = max(newest, path.stat().st_mtime)
                except FileNotFoundError:  # compacted away since it was listed
                    continue
                count += 1
            out[name] = (count, newest)
        return out
