"""The central jobs, each a plain function that composes the stages: compaction, VEE, analysis,
alerts and bills.

The ``meterlake`` commands (``compact``, ``vee``, ``analyze``, ``alerts``, ``bill``) call them
once and print their results; ``meterlake run`` (:mod:`meterlake.cli.schedule`) calls them on a
schedule and logs a one-line summary of each. The wall clock is passed in (``now``): it stamps
the run ids and what the runs write, and picks the defaults (the analysis range, the bill
period). None of them refreshes the DuckDB catalogue; the caller does, with :func:`refresh`.
"""

from __future__ import annotations

import datetime as dt
import secrets
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import polars as pl

from meterlake.alerts.conditions import UTC_MINUTE
from meterlake.alerts.job import AlertRunResult, run_alerts
from meterlake.alerts.rules import AlertRules
from meterlake.analytics.vee_job import VeeJobResult, run_vee
from meterlake.config.errors import LakeBusyError, PermanentError
from meterlake.config.schemas import TABLES
from meterlake.config.settings import Settings
from meterlake.storage.catalog import refresh_catalog
from meterlake.storage.compaction import CompactionResult, compact_lake
from meterlake.tariffs.bill_job import BillRunResult, run_billing
from meterlake.tariffs.model import Tariff
from meterlake.tariffs.progress_job import run_tier_progress
from meterlake.tariffs.registry import load_tariffs
from meterlake.tariffs.usage import with_tou_class

if TYPE_CHECKING:
    from meterlake.analytics.analysis_job import AnalysisResult

COMPACTION_COUNTS = ("files_in", "files_out", "rows_in", "rows_out", "conflicts")
"""The counts of a :class:`~meterlake.storage.compaction.CompactionResult`, in table order."""


def new_run_id(prefix: str, now: dt.datetime) -> str:
    """A run id: ``prefix``, the UTC start time and a random suffix.

    >>> new_run_id("vee", dt.datetime(2026, 10, 1, 12, tzinfo=dt.UTC))[:21]
    'vee-20261001T120000Z-'
    """
    return f"{prefix}-{now.astimezone(dt.UTC):%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def utc_minute(value: object) -> str:
    """A time as ``YYYY-MM-DD HH:MM UTC`` (anything else as ``str``).

    >>> utc_minute(dt.datetime(2026, 10, 1, 20, 5, tzinfo=dt.timezone(dt.timedelta(hours=8))))
    '2026-10-01 12:05 UTC'
    """
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC).strftime(UTC_MINUTE)
    return str(value)


def refresh(root: Path) -> str | None:
    """Refresh the catalogue after a write; returns why it was not refreshed (the data has
    landed either way), or None."""
    try:
        refresh_catalog(root)
    except LakeBusyError as exc:
        return str(exc)
    return None


def job_tariffs(settings: Settings, extra: Sequence[Path] = ()) -> dict[str, Tariff]:
    """The catalogue's tariffs, the config's ``[bill] tariffs_dir`` and the ``extra``
    directories, by id."""
    dirs = [d for d in (settings.bill.tariffs_dir, *extra) if d is not None]
    return load_tariffs(dirs)


@dataclass(frozen=True)
class CompactJobResult:
    """The partitions a compaction run compacted."""

    results: tuple[CompactionResult, ...]

    def by_table(self) -> list[tuple[str, int, dict[str, int]]]:
        """Per table (in run order): its name, the partitions compacted and the sums of
        :data:`COMPACTION_COUNTS`."""
        rows = []
        for name in dict.fromkeys(r.table for r in self.results):
            mine = [r for r in self.results if r.table == name]
            sums = {f: sum(getattr(r, f) for r in mine) for f in COMPACTION_COUNTS}
            rows.append((name, len(mine), sums))
        return rows

    def summary(self) -> str:
        """One line: what was compacted."""
        if not self.results:
            return "nothing to compact"
        tables = self.by_table()
        total = {f: sum(sums[f] for _, _, sums in tables) for f in COMPACTION_COUNTS}
        return (
            f"compacted {len(self.results)} partitions of {', '.join(t for t, _, _ in tables)}: "
            f"{total['files_in']} files -> {total['files_out']}, "
            f"{total['rows_in']} rows -> {total['rows_out']}, {total['conflicts']} conflicts"
        )


def compact_job(
    root: Path,
    settings: Settings,
    tables: Sequence[str] | None = None,
    on_partition: Callable[[int], None] | None = None,
) -> CompactJobResult:
    """Compact the lake's ``tables`` (default: all) as ``[lake]`` says.

    ``on_partition`` is called with the number of partitions to compact after each one.

    Raises
    ------
    PermanentError
        An unknown table name.
    LakeBusyError
        Another compaction of the lake is running.
    """
    unknown = sorted(set(tables or ()) - set(TABLES))
    if unknown:
        raise PermanentError(f"unknown table(s) {', '.join(unknown)}; tables: {', '.join(TABLES)}")
    specs = [TABLES[name] for name in (tables or TABLES)]
    results = []
    for total, result in compact_lake(
        root,
        specs,
        target_rows=settings.lake.compact_target_rows,
        min_files=settings.lake.compact_min_files,
    ):
        if on_partition is not None:
            on_partition(total)
        if result is not None:
            results.append(result)
    return CompactJobResult(tuple(results))


def vee_job(
    root: Path,
    settings: Settings,
    now: dt.datetime,
    *,
    first_day: dt.date | None = None,
    last_day: dt.date | None = None,
    meter_ids: Sequence[str] | None = None,
    on_shard: Callable[[int, int], None] | None = None,
) -> VeeJobResult:
    """VEE on the lake: incremental (only the days new data reached) without a range or
    meters, else those days and meters (see :mod:`meterlake.analytics.vee_job`)."""
    return run_vee(
        root,
        settings,
        run_id=new_run_id("vee", now),
        now=now,
        first_day=first_day,
        last_day=last_day,
        meter_ids=meter_ids,
        on_shard=on_shard,
    )


def vee_summary(result: VeeJobResult, timezone: str) -> str:
    """One line: the range (local times of ``timezone``) and what was written."""
    if result.start is None or result.end is None:
        return "VEE: no new readings, nothing to do"
    zone = zoneinfo.ZoneInfo(timezone)
    first, last = result.start.astimezone(zone), result.end.astimezone(zone)
    span = f"{first:%Y-%m-%d %H:%M}..{last:%Y-%m-%d %H:%M} {timezone}"
    written = result.written
    if written.height == 0:
        return (
            f"VEE {result.mode} {span} ({result.meters} meters): nothing changed, nothing written"
        )
    counts = written["status"].value_counts(sort=True)
    statuses = ", ".join(f"{n} {s}" for s, n in counts.iter_rows())
    return (
        f"VEE {result.mode} {span} ({result.run_id}): wrote {written.height} interval versions "
        f"of {written['meter_id'].n_unique()} of {result.meters} meters ({statuses})"
    )


@dataclass(frozen=True)
class AnalyzeJobResult:
    """An analysis run: its local days (``first`` to ``last``, inclusive), what it wrote and
    the tier progress rows."""

    run_id: str
    first: dt.date
    last: dt.date
    analysis: AnalysisResult
    tier_progress: pl.DataFrame

    @property
    def flagged(self) -> pl.DataFrame:
        """The anomaly scores of meter-days with at least one kind of anomaly."""
        return self.analysis.scores.filter(pl.col("kinds").list.len() > 0)

    def summary(self) -> str:
        """One line: meter-days, profiles, flags and tier progress."""
        daily = self.analysis.daily
        portfolio = self.analysis.profiles.filter(pl.col("scope") == "portfolio")
        return (
            f"analysis {self.first}..{self.last} ({self.run_id}): {daily.height} meter-days of "
            f"{daily['meter_id'].n_unique()} meters; {portfolio.height} typical profiles; "
            f"{self.flagged.height} meter-days flagged; tier progress of "
            f"{self.tier_progress.height} meters"
        )


def analysis_days(
    root: Path, timezone: str, first: dt.date | None = None, last: dt.date | None = None
) -> tuple[dt.date, dt.date]:
    """The local days to analyse: ``first`` and ``last`` (inclusive) where given, else the 35
    days up to the latest interval's local day.

    Raises
    ------
    PermanentError
        The lake holds no intervals (and a day is missing), or ``last`` is before ``first``.
    """
    # scikit-learn takes seconds to import: only the analysis pays for it
    from meterlake.analytics.analysis_job import default_range  # noqa: PLC0415

    if first is None or last is None:
        try:
            default_first, default_end = default_range(root, timezone)
        except LookupError as exc:
            raise PermanentError(str(exc)) from None
        last = last or default_end - dt.timedelta(days=1)
        first = first or last - (default_end - default_first) + dt.timedelta(days=1)
    if last < first:
        raise PermanentError(f"--to {last} is before --from {first}")
    return first, last


def analyze_job(
    root: Path,
    settings: Settings,
    tariffs: dict[str, Tariff],
    now: dt.datetime,
    first: dt.date | None = None,
    last: dt.date | None = None,
) -> AnalyzeJobResult:
    """Daily curves, load statistics, profiles and anomaly scores of the local days ``first``
    to ``last`` (default: :func:`analysis_days`), split by the ``tariffs``' periods, and the
    tier progress as of ``last``."""
    from meterlake.analytics.analysis_job import run_analysis  # noqa: PLC0415

    zone = settings.site.timezone
    first, last = analysis_days(root, zone, first, last)
    run_id = new_run_id("ana", now)

    def classify(
        intervals: pl.LazyFrame, meters: pl.DataFrame, start: dt.datetime, end: dt.datetime
    ) -> pl.LazyFrame:
        return with_tou_class(intervals, meters, tariffs, start, end)

    analysis = run_analysis(
        root,
        first,
        last + dt.timedelta(days=1),
        run_id=run_id,
        now=now,
        default_timezone=zone,
        classify=classify,
    )
    progress = run_tier_progress(root, tariffs, last, run_id=run_id, now=now)
    return AnalyzeJobResult(run_id, first, last, analysis, progress)


def alerts_job(
    root: Path, rules: AlertRules, now: dt.datetime, clock: Callable[[], dt.datetime]
) -> AlertRunResult:
    """Evaluate ``rules`` as of ``now``, write the events and deliver them (``clock``: the
    wall clock of the deliveries)."""
    return run_alerts(root, rules, now, clock=clock)


def alerts_summary(result: AlertRunResult) -> str:
    """One line: the conditions true and the events by state."""
    counts = result.counts()
    events = ", ".join(f"{counts[s].sum()} {s}" for s in ("raised", "renotified", "resolved"))
    return (
        f"alerts as of {utc_minute(result.now)}: {result.conditions.height} conditions true; "
        + events
    )


def previous_period(now: dt.datetime, timezone: str) -> str:
    """The billing period (``YYYY-MM``) before the local month of ``now``.

    >>> previous_period(dt.datetime(2026, 10, 31, 17, tzinfo=dt.UTC), "Asia/Shanghai")
    '2026-10'
    """
    local = now.astimezone(zoneinfo.ZoneInfo(timezone)).date()
    return f"{local.replace(day=1) - dt.timedelta(days=1):%Y-%m}"


def bill_job(
    root: Path,
    settings: Settings,
    tariffs: dict[str, Tariff],
    period: str,
    now: dt.datetime,
) -> BillRunResult:
    """Bill every meter of the lake with a known tariff for ``period`` (``YYYY-MM``); only
    new or changed bills are written (a re-run of the same data writes nothing)."""
    return run_billing(
        root, tariffs, period, run_id=new_run_id("bill", now), now=now, settings=settings.bill
    )


def bill_summary(result: BillRunResult) -> str:
    """One line: meters billed, bills new, corrected and unchanged, lines written."""
    written = result.bills
    new = written.filter(pl.col("version") == 1).height
    return (
        f"bills {result.period} ({result.run_id}): {result.billed} meters billed, "
        f"{new} new, {written.height - new} corrected, {result.unchanged} unchanged; "
        f"{result.lines.height} lines written"
    )
