"""An analysis run over a lake: daily curves and load statistics, typical profiles and anomaly
scores for a range of local days, appended to ``daily_usage``, ``load_profiles`` and
``anomaly_scores`` under one ``run_id`` (the catalogue's ``daily_stats`` and ``anomalies`` views
show each day's latest run).

What a run reads: the meters' current master data, the current intervals of the range, the
daily figures already in the lake for the anomaly rules'
:attr:`~meterlake.analytics.anomalies.AnomalyRules.history_days` before it (the baselines and
the sustained-drop windows look back that far) and, only for days without import, the raw
voltage and power readings (the zero-with-voltage rule). The split of import by tariff period
is the tariffs stage's: the caller passes ``classify`` (intervals -> intervals with
``tou_class``), so this stage never imports tariffs.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from meterlake.analytics.anomalies import (
    SIGNALS_SCHEMA,
    AnomalyRules,
    score_anomalies,
    zero_day_candidates,
)
from meterlake.analytics.profiles import ProfileRules, typical_profiles
from meterlake.analytics.usage import STAT_COLUMNS, daily_usage
from meterlake.config.localtime import local_date
from meterlake.config.schemas import (
    ANOMALY_SCORES,
    DAILY_USAGE,
    INTERVALS,
    LOAD_PROFILES,
    READINGS,
)
from meterlake.storage.scan import (
    latest_daily,
    scan,
    scan_current_intervals,
    scan_current_meters,
    scan_days,
)
from meterlake.storage.writer import write_table

Classifier = Callable[[pl.LazyFrame, pl.DataFrame, dt.datetime, dt.datetime], pl.LazyFrame]
"""``(intervals, meters, start, end) -> intervals with tou_class`` (see the tariffs stage)."""
_ZONE_SLACK = dt.timedelta(hours=14)
"""UTC reaches this far past local midnight in either direction (UTC+14 .. UTC-12)."""


@dataclass(frozen=True)
class AnalysisResult:
    """What a run wrote: the daily rows, the anomaly scores and the profiles."""

    run_id: str
    first_day: dt.date
    end_day: dt.date
    daily: pl.DataFrame
    scores: pl.DataFrame
    profiles: pl.DataFrame


def default_range(root: Path, default_timezone: str, days: int = 35) -> tuple[dt.date, dt.date]:
    """The last ``days`` local days up to the latest interval in the lake (``end``
    exclusive); raises when the lake holds no intervals."""
    latest = scan(root, INTERVALS).select(pl.col("interval_start").max()).collect().item()
    if latest is None:
        raise LookupError("the lake holds no intervals yet: run `meterlake vee` first")
    end = latest.astimezone(zoneinfo.ZoneInfo(default_timezone)).date() + dt.timedelta(days=1)
    return end - dt.timedelta(days=days), end


def daily_figures(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    *,
    default_timezone: str = "Asia/Shanghai",
    shard_meters: int = 5_000,
    prepare: Callable[[pl.LazyFrame], pl.LazyFrame] | None = None,
    span: tuple[dt.datetime, dt.datetime] | None = None,
) -> pl.DataFrame:
    """:func:`~meterlake.analytics.usage.daily_usage` of ``intervals``, collected
    ``shard_meters`` meters at a time: a meter's days need only its own intervals, so peak
    memory grows with the shard, not the fleet (``prepare``, e.g. the tariff classifier, is
    applied to each shard; ``span``: the UTC range the intervals lie in, see ``daily_usage``)."""
    ids = intervals.select(pl.col("meter_id").unique().sort()).collect()["meter_id"]
    parts = [pl.DataFrame(schema={c: DAILY_USAGE.schema[c] for c in STAT_COLUMNS})]
    for offset in range(0, ids.len(), shard_meters):
        wanted = ids.slice(offset, shard_meters).implode()
        shard = intervals.filter(pl.col("meter_id").is_in(wanted))
        if prepare is not None:
            shard = prepare(shard)
        usage = daily_usage(shard, meters, default_timezone=default_timezone, span=span)
        parts.append(usage.collect())
    return pl.concat(parts)


def run_analysis(
    root: Path,
    first_day: dt.date,
    end_day: dt.date,
    *,
    run_id: str,
    now: dt.datetime,
    default_timezone: str = "Asia/Shanghai",
    classify: Classifier | None = None,
    anomaly_rules: AnomalyRules | None = None,
    profile_rules: ProfileRules | None = None,
    shard_meters: int = 5_000,
) -> AnalysisResult:
    """Analyse the local days ``first_day`` up to ``end_day`` (exclusive) and append the
    results to the lake. The daily figures are computed ``shard_meters`` meters at a time
    (peak memory grows with the shard, not the fleet); profiles and anomaly scores see all."""
    if end_day <= first_day:
        raise ValueError(f"empty range: {first_day} to {end_day}")
    meters = scan_current_meters(root).collect()
    start = dt.datetime.combine(first_day, dt.time(), tzinfo=dt.UTC) - _ZONE_SLACK
    end = dt.datetime.combine(end_day, dt.time(), tzinfo=dt.UTC) + _ZONE_SLACK
    in_range = pl.col("day").is_between(first_day, end_day, closed="left")

    def prepare(shard: pl.LazyFrame) -> pl.LazyFrame:
        return shard if classify is None else classify(shard, meters, start, end)

    daily = daily_figures(
        scan_current_intervals(root, start, end),
        meters,
        default_timezone=default_timezone,
        shard_meters=shard_meters,
        prepare=prepare,
        span=(start, end),
    ).filter(in_range)
    profiles = typical_profiles(daily, profile_rules)
    stamp = {"run_id": pl.lit(run_id), "computed_at": pl.lit(now.astimezone(dt.UTC))}
    daily = daily.join(profiles.assigned, on=["meter_id", "day"], how="left").with_columns(**stamp)
    anomaly_rules = anomaly_rules or AnomalyRules()
    history_start = first_day - dt.timedelta(days=anomaly_rules.history_days)
    history = latest_daily(scan_days(root, DAILY_USAGE, history_start, first_day)).collect()
    scored = pl.concat([history.select(daily.columns), daily], how="vertical_relaxed")
    signals = _signals(root, zero_day_candidates(daily, anomaly_rules), meters, default_timezone)
    scores = (
        score_anomalies(scored, meters, signals, anomaly_rules)
        .filter(in_range)
        .with_columns(**stamp)
    )
    profile_rows = profiles.profiles.with_columns(**stamp)
    write_table(root, DAILY_USAGE, daily.select(list(DAILY_USAGE.schema)))
    write_table(root, ANOMALY_SCORES, scores.select(list(ANOMALY_SCORES.schema)))
    write_table(root, LOAD_PROFILES, profile_rows.select(list(LOAD_PROFILES.schema)))
    return AnalysisResult(run_id, first_day, end_day, daily, scores, profile_rows)


def _signals(
    root: Path, candidates: pl.DataFrame, meters: pl.DataFrame, default_timezone: str
) -> pl.DataFrame:
    """Mean voltage and highest power reading of each candidate day, from raw readings."""
    if candidates.height == 0:
        return pl.DataFrame(schema=SIGNALS_SCHEMA)
    first, last = candidates["day"].min(), candidates["day"].max()
    assert isinstance(first, dt.date) and isinstance(last, dt.date)
    start = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC) - _ZONE_SLACK
    end = dt.datetime.combine(last, dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=1) + _ZONE_SLACK
    zones = meters.select(
        "meter_id", pl.col("timezone").fill_null(default_timezone).alias("timezone")
    )
    names = sorted(set(zones["timezone"]) | {default_timezone})
    wanted = candidates["meter_id"].unique().to_list()
    readings = (
        scan(root, READINGS, start, end)
        .filter(
            pl.col("meter_id").is_in(wanted) & pl.col("quantity").is_in(["voltage_v", "power_w"])
        )
        .join(zones.lazy(), on="meter_id", how="left")
        .with_columns(
            day=local_date(pl.col("ts"), pl.col("timezone").fill_null(default_timezone), names)
        )
        .join(candidates.lazy(), on=["meter_id", "day"])
        .group_by("meter_id", "day")
        .agg(
            pl.col("value").filter(pl.col("quantity") == "voltage_v").mean().alias("voltage_v"),
            pl.col("value").filter(pl.col("quantity") == "power_w").max().alias("max_power_w"),
        )
    )
    return readings.collect().select(pl.col(c).cast(t) for c, t in SIGNALS_SCHEMA.items())
