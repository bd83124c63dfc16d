"""The vectorised bill engine: every meter's bill for one or more periods in one pass.

How it stays vectorised with many tariffs, billing days and DST zones: time is cut into 5-minute
steps from a UTC origin. For each *combination* of tariff, billing day and tier-year start that the
meters use, a small table gives every step its **class**: the bill period it belongs to, the tariff
version in force, the tier-counter window, the TOU period and the local month. One gather turns
each interval's start into its class, one group-by sums energy, power and quality per (meter,
class) -- the only pass over the intervals. Everything after that works on a few rows per meter:
tier blocks, demand, fixed and minimum charges, levies, export, tax, each a bill line.

Semantics (``docs/tariffs.md``):

- a bill period ``YYYY-MM`` of a meter with billing day ``d`` covers the local dates from
  ``YYYY-MM-d`` up to the same day of the next month (``d = 1``: the calendar month), in the
  tariff's time zone; an interval belongs to the period, version and TOU period in force at its
  start;
- tiers count imported kWh per window (calendar month, billing period or tier year), including the
  meter's import earlier in the window (``prior_kwh``); ``pro_rata`` gives each TOU period its
  share of every tier block (NREL SAM), ``chronological`` fills blocks in time order;
- each line's amount is ``quantity x rate`` rounded once to the currency's minor unit; the bill's
  total is the sum of its lines.
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Final, Literal

import polars as pl

from meterlake.config.errors import PermanentError
from meterlake.config.months import add_months
from meterlake.tariffs.model import (
    ALL_PERIODS,
    DAY_TYPES,
    SLOT_MINUTES,
    SLOTS_PER_DAY,
    Tariff,
    TariffVersion,
)

STEP_MINUTES: Final = 5
"""Resolution of the class tables [min]: every interval grid (5/15/30/60 min) starts on a step."""
RATE_SCALE: Final = 14
"""Rates are multiplied at this scale so ``quantity (6 decimals) x rate (8)`` is exact before the
one rounding of a line."""
QUANTITY_DECIMALS: Final = 6
_KWH_EPSILON: Final = 1e-9
_TOU_KEYS: Final = ["meter_idx", "period", "version", "tou"]
_DECIMAL: Final = pl.Decimal(38, RATE_SCALE)
_MONEY: Final = pl.Decimal(38, 4)
_NO_CLASS: Final = -1

# order of lines on a bill
_ORDER_ENERGY, _ORDER_DEMAND, _ORDER_FIXED, _ORDER_MINIMUM = 100, 200, 300, 400
_ORDER_LEVY, _ORDER_EXPORT, _ORDER_TRUE_UP, _ORDER_TAX, _ORDER_CARRY = 500, 600, 700, 900, 950


class BillingError(PermanentError):
    """Bills cannot be computed as asked (an unknown tariff, a malformed period)."""


@dataclass(frozen=True)
class BillFrames:
    """What a bill run computes.

    ``bills``: one row per (meter, period): ``meter_id, period, period_start, period_end,
    tariff_id, tariff_version, currency, energy_import_kwh, energy_export_kwh, billed_import_kwh,
    estimated_share, intervals, intervals_estimated, intervals_missing, interval_version,
    export_carry_kwh, total_amount``.
    ``lines``: ``meter_id, period, line_no, kind, code, description, quantity, unit, rate,
    amount, currency`` in bill order; ``kind`` ``charge`` lines add up to the total, ``carry``
    lines (amount 0) give the net-metering credit each TOU period carries to the next bill.
    """

    bills: pl.DataFrame
    lines: pl.DataFrame


def month_periods(first: str, last: str) -> list[str]:
    """The ``YYYY-MM`` labels from ``first`` to ``last`` inclusive."""
    start, end = _parse_period(first), _parse_period(last)
    out = []
    year, month = start
    while (year, month) <= end:
        out.append(f"{year:04d}-{month:02d}")
        year, month = (year, month + 1) if month < 12 else (year + 1, 1)
    return out


def compute_bills(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    tariffs: Mapping[str, Tariff],
    periods: Sequence[str],
    *,
    prior_kwh: pl.DataFrame | None = None,
    carry_in: pl.DataFrame | None = None,
) -> BillFrames:
    """Every meter's bill for each of ``periods``.

    Parameters
    ----------
    intervals
        Current intervals (one version per meter and interval): ``meter_id, interval_start,
        interval_minutes, energy_import_kwh, energy_export_kwh, status`` and optionally
        ``version``. Rows outside the bill periods are ignored.
    meters
        ``meter_id, tariff_id`` and optionally ``billing_day`` (1-28, null: 1) and
        ``tier_year_start`` (``MM-DD``, null: the tariff's).
    tariffs
        Every tariff the meters name, by id.
    periods
        Bill period labels ``YYYY-MM``.
    prior_kwh
        ``meter_id, window_start, kwh``: import [kWh] of a tier window before the first period
        billed here (from :func:`prior_windows`); absent windows count 0.
    carry_in
        ``meter_id, tou, export_carry_kwh``: net-metering credit of each TOU period carried into
        the first period [kWh] (the ``carry`` lines of the bill before).
    """
    labels = sorted({_label(p) for p in periods})
    meters = _meter_combos(meters, tariffs)
    classes, steps, segments, t0, n_steps = _class_tables(meters, tariffs, labels)
    used = [tariffs[i] for i in meters["tariff_id"].unique()]
    versions = [version for tariff in used for version in tariff.versions]
    aggregated = _aggregate(
        intervals,
        meters,
        steps,
        classes,
        t0,
        n_steps,
        needs_power=any(version.demand for version in versions),
        export_priced=any(version.export.mode != "none" for version in versions),
    )
    return _bills(
        aggregated,
        intervals,
        meters,
        tariffs,
        classes,
        steps,
        segments,
        t0,
        n_steps,
        prior_kwh,
        carry_in,
    )


def bill_range(periods: Sequence[str]) -> tuple[dt.datetime, dt.datetime]:
    """UTC instants that hold every bill of ``periods`` for any billing day and zone.

    Generous on purpose: the earliest bill starts on the 1st, the latest ends on the 29th at the
    latest, in zones from UTC+14 to UTC-12; the class tables place each interval exactly.
    """
    labels = sorted({_label(p) for p in periods})
    first = dt.date(*_parse_period(labels[0]), 1)
    after = add_months(dt.date(*_parse_period(labels[-1]), 1), 1)
    t0 = dt.datetime.combine(first, dt.time(), tzinfo=dt.UTC) - dt.timedelta(hours=14)
    t1 = dt.datetime.combine(after, dt.time(), tzinfo=dt.UTC) + dt.timedelta(days=28, hours=12)
    return t0, t1


def prior_windows(meters: pl.DataFrame, tariffs: Mapping[str, Tariff], period: str) -> pl.DataFrame:
    """For each meter, the tier window the period starts in and its local start, as
    ``meter_id, window_start, window_start_utc, bill_start_utc``: the import between the two
    instants is the meter's ``prior_kwh`` (empty when the window starts with the bill)."""
    label = _label(period)
    year, month = _parse_period(label)
    rows = []
    combos = _meter_combos(meters, tariffs)
    for combo in (
        combos.select("tariff_id", "billing_day", "ty_month", "ty_day")
        .unique()
        .iter_rows(named=True)
    ):
        tariff = tariffs[combo["tariff_id"]]
        start = dt.date(year, month, combo["billing_day"])
        version = tariff.versions[tariff.version_at(start)]
        window = _window_start(version, start, start, combo["ty_month"], combo["ty_day"])
        if window >= start:
            continue
        zone = zoneinfo.ZoneInfo(tariff.timezone)
        rows.append(
            {
                **combo,
                "window_start": window,
                "window_start_utc": _local_midnight(window, zone),
                "bill_start_utc": _local_midnight(start, zone),
            }
        )
    keys = ["tariff_id", "billing_day", "ty_month", "ty_day"]
    schema = pl.Schema(
        {
            "tariff_id": pl.String(),
            "billing_day": pl.Int64(),
            "ty_month": pl.Int64(),
            "ty_day": pl.Int64(),
            "window_start": pl.Date(),
            "window_start_utc": pl.Datetime("us", "UTC"),
            "bill_start_utc": pl.Datetime("us", "UTC"),
        }
    )
    windows = pl.DataFrame(rows, schema=schema)
    return combos.join(windows, on=keys).select(
        "meter_id", "window_start", "window_start_utc", "bill_start_utc"
    )


# --- periods, combos and the class tables --------------------------------------------------------


def _parse_period(period: str) -> tuple[int, int]:
    try:
        year, month = (int(x) for x in period.split("-"))
        dt.date(year, month, 1)
    except (ValueError, TypeError) as exc:
        raise BillingError(f"bill period {period!r}: use YYYY-MM, e.g. 2026-10") from exc
    if len(period) != 7:
        raise BillingError(f"bill period {period!r}: use YYYY-MM, e.g. 2026-10")
    return year, month


def _label(period: str) -> str:
    year, month = _parse_period(period)
    return f"{year:04d}-{month:02d}"


def _meter_combos(meters: pl.DataFrame, tariffs: Mapping[str, Tariff]) -> pl.DataFrame:
    """``meters`` with integer ``meter_idx`` and ``combo`` and the parsed billing parameters."""
    frame = meters.select(
        pl.col("meter_id").cast(pl.String),
        pl.col("tariff_id").cast(pl.String),
        (pl.col("billing_day") if "billing_day" in meters.columns else pl.lit(None))
        .cast(pl.Int64)
        .fill_null(1)
        .alias("billing_day"),
        (pl.col("tier_year_start") if "tier_year_start" in meters.columns else pl.lit(None))
        .cast(pl.String)
        .alias("tier_year_start"),
    )
    if frame["meter_id"].is_duplicated().any():
        dupes = frame.filter(pl.col("meter_id").is_duplicated())["meter_id"].unique().sort()
        raise BillingError(f"meters listed twice: {dupes.head(5).to_list()}")
    unknown = sorted(set(frame["tariff_id"].drop_nulls().unique()) - set(tariffs))
    if unknown or frame["tariff_id"].null_count():
        raise BillingError(
            f"meters name tariffs that are not loaded: {unknown or ['(none)']}; "
            f"loaded: {sorted(tariffs)}"
        )
    bad_day = frame.filter(~pl.col("billing_day").is_between(1, 28))
    if bad_day.height:
        raise BillingError(
            f"billing_day must be 1-28; meter {bad_day['meter_id'][0]} "
            f"has {bad_day['billing_day'][0]}"
        )
    start = pl.col("tier_year_start")
    given = frame.filter(start.is_not_null())
    valid = given.filter(
        start.str.contains(r"^\d{2}-\d{2}$")
        & pl.concat_str(pl.lit("2023-"), start).str.to_date(strict=False).is_not_null()
    )
    if valid.height < given.height:
        bad = given.join(valid, on="meter_id", how="anti").row(0, named=True)
        raise BillingError(
            f"meter {bad['meter_id']}: tier_year_start {bad['tier_year_start']!r} is not a day "
            "of the year MM-DD (02-29 is not one: the tier year must start every year)"
        )
    frame = frame.with_columns(
        ty_month=start.str.slice(0, 2).cast(pl.Int64, strict=False).fill_null(0),
        ty_day=start.str.slice(3, 2).cast(pl.Int64, strict=False).fill_null(0),
    )
    combo_keys = ["tariff_id", "billing_day", "ty_month", "ty_day"]
    combos = frame.select(combo_keys).unique().sort(combo_keys).with_row_index("combo")
    return (
        frame.join(combos, on=combo_keys)
        .sort("meter_id")
        .with_row_index("meter_idx")
        .with_columns(pl.col("combo").cast(pl.Int64), pl.col("meter_idx").cast(pl.Int64))
    )


def _window_start(
    version: TariffVersion, day: dt.date, bill_start: dt.date, ty_month: int, ty_day: int
) -> dt.date:
    """The local date the tier counter of ``day`` started (meter's tier year start if given)."""
    energy = version.energy
    if energy.tier_reset == "billing_cycle":
        return bill_start
    if energy.tier_reset == "annual":
        month, mday = (ty_month, ty_day) if ty_month else energy.tier_year_start
        year = day.year if (day.month, day.day) >= (month, mday) else day.year - 1
        return dt.date(year, month, mday)
    return day.replace(day=1)


def _local_midnight(day: dt.date, zone: zoneinfo.ZoneInfo) -> dt.datetime:
    return dt.datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(dt.UTC)


def _class_tables(
    meters: pl.DataFrame, tariffs: Mapping[str, Tariff], labels: list[str]
) -> tuple[pl.DataFrame, pl.Series, pl.DataFrame, dt.datetime, int]:
    """The class of every 5-minute step for every combo.

    Returns the class attributes (``class, combo, tariff_id, period, version, window_start,
    tou, month``), the flat step -> class array (``combo * n_steps + step``), the segments
    (``combo, period, version, days, bill_days, period_start, period_end``), the UTC origin and
    the steps per combo.
    """
    t0, t1 = bill_range(labels)
    n_steps = int((t1 - t0) / dt.timedelta(minutes=STEP_MINUTES))
    combos = meters.select("combo", "tariff_id", "billing_day", "ty_month", "ty_day").unique()
    label_set = set(labels)
    step_tables = []
    for tariff_id in sorted(combos["tariff_id"].unique()):
        tariff = tariffs[tariff_id]
        local = _local_steps(tariff, t0, n_steps)
        for combo in combos.filter(pl.col("tariff_id") == tariff_id).iter_rows(named=True):
            step_tables.append(_combo_steps(local, tariff, combo, label_set))
    steps = pl.concat(step_tables)
    in_bill = steps.filter(pl.col("period").is_not_null())
    keys = ["combo", "period", "version", "window_start", "tou", "dtou", "month"]
    classes = (
        in_bill.select("tariff_id", *keys)
        .unique()
        .sort(keys)
        .with_row_index("class")
        .with_columns(pl.col("class").cast(pl.Int32))
    )
    flat = (
        steps.join(classes.select(*keys, "class"), on=keys, how="left", nulls_equal=True)
        .sort("combo", "step")
        .get_column("class")
        .fill_null(_NO_CLASS)
    )
    day_counts = in_bill.group_by("combo", "period", "version").agg(
        days=pl.col("date").n_unique(), first=pl.col("date").min(), last=pl.col("date").max()
    )
    segments = day_counts.with_columns(
        bill_days=pl.col("days").sum().over("combo", "period"),
        period_start=pl.col("first").min().over("combo", "period"),
        period_end=pl.col("last").max().over("combo", "period") + pl.duration(days=1),
    ).drop("first", "last")
    return classes, flat, segments, t0, n_steps


def _local_steps(tariff: Tariff, t0: dt.datetime, n_steps: int) -> pl.DataFrame:
    """Every step's local date, month, day type, version and TOU period under ``tariff``."""
    utc = pl.lit(t0) + pl.duration(minutes=pl.int_range(n_steps) * STEP_MINUTES)
    frame = pl.select(step=pl.int_range(n_steps, dtype=pl.Int64), utc=utc).with_columns(
        local=pl.col("utc").dt.convert_time_zone(tariff.timezone).dt.replace_time_zone(None)
    )
    holidays = pl.Series(sorted(tariff.holidays), dtype=pl.Date)
    workdays = pl.Series(sorted(tariff.workdays), dtype=pl.Date)
    version_expr: pl.Expr = pl.lit(0, dtype=pl.Int32)
    for index, version in enumerate(tariff.versions):
        if index and version.effective_from is not None:
            version_expr = (
                pl.when(pl.col("date") >= version.effective_from)
                .then(pl.lit(index, dtype=pl.Int32))
                .otherwise(version_expr)
            )
    frame = frame.with_columns(
        date=pl.col("local").dt.date(),
        month=pl.col("local").dt.month().cast(pl.Int32),
        slot=(
            (pl.col("local").dt.hour().cast(pl.Int32) * 60 + pl.col("local").dt.minute())
            // SLOT_MINUTES
        ).cast(pl.Int32),
    ).with_columns(
        day_type=pl.when(pl.col("date").is_in(holidays.to_list()))
        .then(pl.lit("holiday"))
        .when((pl.col("local").dt.weekday() >= 6) & ~pl.col("date").is_in(workdays.to_list()))
        .then(pl.lit("weekend"))
        .otherwise(pl.lit("weekday")),
        version=version_expr,
    )
    return frame.join(_period_lookup(tariff), on=["version", "month", "day_type", "slot"])


def _period_lookup(tariff: Tariff) -> pl.DataFrame:
    """(version, month, day type, slot) -> TOU period, from the tariff's seasons."""
    version_col, month_col, type_col, slot_col, period_col, demand_col = [], [], [], [], [], []
    for index, version in enumerate(tariff.versions):
        for month in range(1, 13):
            season = version.season_of(month)
            demand = season.demand_schedules or season.schedules
            for day_type in DAY_TYPES:
                version_col += [index] * SLOTS_PER_DAY
                month_col += [month] * SLOTS_PER_DAY
                type_col += [day_type] * SLOTS_PER_DAY
                slot_col += list(range(SLOTS_PER_DAY))
                period_col += list(season.schedules[day_type])
                demand_col += list(demand[day_type])
    return pl.DataFrame(
        {
            "version": version_col,
            "month": month_col,
            "day_type": type_col,
            "slot": slot_col,
            "tou": period_col,
            "dtou": demand_col,
        },
        schema={
            "version": pl.Int32,
            "month": pl.Int32,
            "day_type": pl.String,
            "slot": pl.Int32,
            "tou": pl.String,
            "dtou": pl.String,
        },
    )


def _combo_steps(
    local: pl.DataFrame, tariff: Tariff, combo: Mapping[str, int | str], labels: set[str]
) -> pl.DataFrame:
    """The steps of one combo with their bill period (null outside the billed periods) and
    tier window start."""
    billing_day = int(combo["billing_day"])
    date = pl.col("date")
    before = date.dt.day() < billing_day
    label_month = pl.when(before).then(date.dt.offset_by("-1mo")).otherwise(date)
    label = label_month.dt.strftime("%Y-%m")
    bill_start = pl.date(label_month.dt.year(), label_month.dt.month(), billing_day)
    window: pl.Expr = pl.lit(None, dtype=pl.Date)
    for index, version in enumerate(tariff.versions):
        energy = version.energy
        if energy.tier_reset == "billing_cycle":
            this = bill_start
        elif energy.tier_reset == "annual":
            ty_month = int(combo["ty_month"]) or energy.tier_year_start[0]
            ty_day = int(combo["ty_day"]) or energy.tier_year_start[1]
            after = (date.dt.month() > ty_month) | (
                (date.dt.month() == ty_month) & (date.dt.day() >= ty_day)
            )
            year = pl.when(after).then(date.dt.year()).otherwise(date.dt.year() - 1)
            this = pl.date(year, ty_month, ty_day)
        else:
            this = date.dt.month_start()
        window = pl.when(pl.col("version") == index).then(this).otherwise(window)
    return local.select(
        "step",
        "date",
        "month",
        "version",
        "tou",
        "dtou",
        pl.lit(int(combo["combo"]), dtype=pl.Int64).alias("combo"),
        pl.lit(tariff.id).alias("tariff_id"),
        pl.when(label.is_in(sorted(labels))).then(label).alias("period"),
        window.alias("window_start"),
    ).with_columns(
        pl.when(pl.col("period").is_not_null()).then(pl.col("window_start")).alias("window_start")
    )


# --- the one pass over the intervals -------------------------------------------------------------


def _with_class(
    intervals: pl.LazyFrame, meters: pl.DataFrame, steps: pl.Series, t0: dt.datetime, n_steps: int
) -> pl.LazyFrame:
    """``intervals`` of the billed meters in the bill periods with their ``class`` (and
    ``meter_idx`` unless all meters share one combo: then the join waits until after the
    group-by, on far fewer rows)."""
    t1 = t0 + dt.timedelta(minutes=STEP_MINUTES * n_steps)
    step = step_since(t0)
    frame = intervals.filter(pl.col("interval_start").is_between(t0, t1, closed="left"))
    if meters["combo"].n_unique() == 1:
        base = int(meters["combo"][0]) * n_steps
        classed = frame.with_columns(pl.lit(steps).gather(step + base).alias("class"))
    else:
        classed = frame.join(
            meters.lazy().select("meter_id", "meter_idx", "combo"), on="meter_id"
        ).with_columns(pl.lit(steps).gather(pl.col("combo") * n_steps + step).alias("class"))
    return classed.filter(pl.col("class") != _NO_CLASS)


def step_since(t0: dt.datetime) -> pl.Expr:
    """The 5-minute step of each ``interval_start`` since ``t0`` (whole seconds), by integer
    arithmetic on the epoch: cheaper than a duration's total minutes on every row."""
    origin = int(t0.timestamp()) * 1_000_000
    return (pl.col("interval_start").dt.epoch("us") - origin) // (STEP_MINUTES * 60_000_000)


def _aggregate(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    steps: pl.Series,
    classes: pl.DataFrame,
    t0: dt.datetime,
    n_steps: int,
    *,
    needs_power: bool,
    export_priced: bool,
) -> pl.DataFrame:
    """Energy, power and quality per (meter, class): the only pass over every interval.

    The group-by runs only plain sums, maxima and counts (its fast path). Quality counts come
    from the few intervals that are not ``actual``, in a second plan whose filter on ``status``
    Parquet statistics often answer without reading a value. Export too, unless a tariff prices
    it (then the meters are PV sites and export is everywhere): without PV, export is the rare
    interval with any (a meter running backwards), and summing a column of zeros in the main
    group-by cost more than a third plan that reads only that column and keeps its non-zeros.
    """
    imported = pl.col("energy_import_kwh")
    exported = pl.col("energy_export_kwh")
    estimated = pl.col("status") == "estimated"
    classed = _with_class(intervals, meters, steps, t0, n_steps)
    key = "meter_idx" if "meter_idx" in classed.collect_schema().names() else "meter_id"
    sums = [imported.sum().alias("import_kwh"), pl.len().alias("intervals")]
    if export_priced:
        sums.append(exported.sum().alias("export_kwh"))
    if needs_power:  # power only matters to demand charges: without any, it is not computed
        classed = classed.with_columns(kw=imported * 60.0 / pl.col("interval_minutes"))
        sums.append(pl.col("kw").max().alias("max_kw"))
    energy = classed.group_by(key, "class").agg(sums)
    # filtered before the class gather, so the filter reaches the Parquet scan
    unusual = intervals.filter(pl.col("status") != "actual")
    quality = (
        _with_class(unusual, meters, steps, t0, n_steps)
        .select(
            key,
            "class",
            pl.when(estimated).then(imported).otherwise(0.0).alias("estimated_kwh"),
            estimated.cast(pl.Int64).alias("estimated"),
            (pl.col("status") == "missing").cast(pl.Int64).alias("missing"),
        )
        .group_by(key, "class")
        .agg(pl.col("estimated_kwh", "estimated", "missing").sum())
    )
    plans = [energy, quality]
    if not export_priced:  # a sum over the non-zero rows is the sum over all of them
        plans.append(
            _with_class(intervals.filter(exported != 0), meters, steps, t0, n_steps)
            .group_by(key, "class")
            .agg(exported.sum().alias("export_kwh"))
        )
    energy_frame, *sparse = pl.collect_all(plans)
    aggregated = energy_frame
    for frame in sparse:
        aggregated = aggregated.join(frame, on=[key, "class"], how="left")
    aggregated = aggregated.with_columns(
        pl.col("estimated_kwh", "export_kwh").fill_null(0.0),
        pl.col("estimated", "missing").fill_null(0),
    )
    if not needs_power:
        aggregated = aggregated.with_columns(max_kw=pl.lit(0.0))
    if key == "meter_id":  # only the billed meters, by index
        aggregated = aggregated.join(meters.select("meter_id", "meter_idx"), on="meter_id").drop(
            "meter_id"
        )
    return aggregated.join(classes.drop("combo"), on="class")


# --- from aggregates to lines ------------------------------------------------------------------


def _tariff_tables(tariffs: Mapping[str, Tariff], used: Sequence[str]) -> dict[str, pl.DataFrame]:
    """The tariffs' charges as small frames keyed by (tariff_id, version)."""
    tiers, demand, fixed, minimum, levies, taxes, export, money = [], [], [], [], [], [], [], []
    for tariff_id in used:
        tariff = tariffs[tariff_id]
        money.append(
            {
                "tariff_id": tariff_id,
                "currency": tariff.currency,
                "decimals": tariff.decimals,
                "rounding": tariff.rounding,
                "tariff_version": tariff.fingerprint,
            }
        )
        for v, version in enumerate(tariff.versions):
            key = {"tariff_id": tariff_id, "version": v}
            energy = version.energy
            single_period = len(energy.prices) == 1
            for p_order, (tou, prices) in enumerate(energy.prices.items()):
                bounds = (0.0, *energy.tiers_kwh[tou], float("inf"))
                for t, price in enumerate(prices):
                    tiers.append(
                        {
                            **key,
                            "tou": tou,
                            "tier": t + 1,
                            "lo": bounds[t],
                            "hi": bounds[t + 1],
                            "rate": price,
                            "order": p_order * 10 + t,
                            "code": _energy_code(tou, t + 1, single_period, len(prices) > 1),
                            "description": _energy_description(tou, t + 1, len(prices) > 1),
                            "split": energy.tier_split,
                        }
                    )
            for c, charge in enumerate(version.demand):
                bounds = (0.0, *charge.tiers_kw, float("inf"))
                for t, price in enumerate(charge.prices):
                    demand.append(
                        {
                            **key,
                            "charge": c,
                            "name": charge.name,
                            "tier": t + 1,
                            "lo": bounds[t],
                            "hi": bounds[t + 1],
                            "rate": price,
                            "tous": sorted(charge.periods)
                            if charge.periods
                            else _demand_periods(version),
                            "months": sorted(charge.months)
                            if charge.months
                            else list(range(1, 13)),
                            "tiered": len(charge.prices) > 1,
                        }
                    )
            for c, fee in enumerate(version.fixed):
                fixed.append(
                    {**key, "charge": c, "name": fee.name, "rate": fee.amount, "per": fee.per}
                )
            if version.minimum is not None:
                minimum.append({**key, "rate": version.minimum.amount, "per": version.minimum.per})
            for c, levy in enumerate(version.levies):
                levies.append({**key, "charge": c, "name": levy.name, "rate": levy.per_kwh})
            if version.tax is not None:
                taxes.append({**key, "name": version.tax.name, "percent": version.tax.percent})
            rule = version.export
            for tou, price in rule.sell_prices.items():
                export.append({**key, "tou": tou, "rate": price, "mode": rule.mode})
            export.append(
                {
                    **key,
                    "tou": None,
                    "rate": rule.true_up_price,
                    "mode": rule.mode,
                    "true_up_month": rule.true_up_month,
                }
            )
    rate = pl.Decimal(38, RATE_SCALE)
    key_schema = {"tariff_id": pl.String, "version": pl.Int32}
    return {
        "tiers": pl.DataFrame(
            tiers,
            schema={
                **key_schema,
                "tou": pl.String,
                "tier": pl.Int32,
                "lo": pl.Float64,
                "hi": pl.Float64,
                "rate": rate,
                "order": pl.Int32,
                "code": pl.String,
                "description": pl.String,
                "split": pl.String,
            },
        ),
        "demand": pl.DataFrame(
            demand,
            schema={
                **key_schema,
                "charge": pl.Int32,
                "name": pl.String,
                "tier": pl.Int32,
                "lo": pl.Float64,
                "hi": pl.Float64,
                "rate": rate,
                "tous": pl.List(pl.String),
                "months": pl.List(pl.Int32),
                "tiered": pl.Boolean,
            },
        ),
        "fixed": pl.DataFrame(
            fixed,
            schema={
                **key_schema,
                "charge": pl.Int32,
                "name": pl.String,
                "rate": rate,
                "per": pl.String,
            },
        ),
        "minimum": pl.DataFrame(minimum, schema={**key_schema, "rate": rate, "per": pl.String}),
        "levies": pl.DataFrame(
            levies, schema={**key_schema, "charge": pl.Int32, "name": pl.String, "rate": rate}
        ),
        "taxes": pl.DataFrame(taxes, schema={**key_schema, "name": pl.String, "percent": rate}),
        "export": pl.DataFrame(
            export,
            schema={
                **key_schema,
                "tou": pl.String,
                "rate": rate,
                "mode": pl.String,
                "true_up_month": pl.Int32,
            },
        ),
        "money": pl.DataFrame(
            money,
            schema={
                "tariff_id": pl.String,
                "currency": pl.String,
                "decimals": pl.Int32,
                "rounding": pl.String,
                "tariff_version": pl.String,
            },
        ),
    }


def _demand_periods(version: TariffVersion) -> list[str]:
    """Every demand period of a version (those of its demand schedules, else its energy periods)."""
    names = {
        p
        for season in version.seasons
        for schedule in (season.demand_schedules or season.schedules).values()
        for p in schedule
    }
    return sorted(names)


def _energy_code(tou: str, tier: int, single_period: bool, tiered: bool) -> str:
    parts = ["energy"]
    if tiered:
        parts.append(f"tier{tier}")
    if not single_period:
        parts.append(tou)
    return "_".join(parts)


def _energy_description(tou: str, tier: int, tiered: bool) -> str:
    """``energy peak, tier 2``: what an energy line says."""
    return (
        "energy" + (f" {tou}" if tou != ALL_PERIODS else "") + (f", tier {tier}" if tiered else "")
    )


def _bills(
    aggregated: pl.DataFrame,
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    tariffs: Mapping[str, Tariff],
    classes: pl.DataFrame,
    steps: pl.Series,
    segments: pl.DataFrame,
    t0: dt.datetime,
    n_steps: int,
    prior_kwh: pl.DataFrame | None,
    carry_in: pl.DataFrame | None,
) -> BillFrames:
    used = sorted(meters["tariff_id"].unique())
    tables = _tariff_tables(tariffs, used)
    bill_keys = ["meter_idx", "period"]
    # every (meter, period) of the run gets a bill, with or without intervals
    bills = (
        meters.select("meter_idx", "meter_id", "combo", "tariff_id")
        .join(segments.select("combo", "period", "period_start", "period_end").unique(), on="combo")
        .join(
            aggregated.group_by(bill_keys).agg(
                energy_import_kwh=pl.col("import_kwh").sum(),
                energy_export_kwh=pl.col("export_kwh").sum(),
                estimated_kwh=pl.col("estimated_kwh").sum(),
                intervals=pl.col("intervals").sum(),
                intervals_estimated=pl.col("estimated").sum(),
                intervals_missing=pl.col("missing").sum(),
            ),
            on=bill_keys,
            how="left",
        )
        .with_columns(
            pl.col("energy_import_kwh", "energy_export_kwh", "estimated_kwh").fill_null(0.0),
            pl.col("intervals", "intervals_estimated", "intervals_missing")
            .fill_null(0)
            .cast(pl.Int64),
        )
        .join(tables["money"], on="tariff_id")
    )
    last_version = segments.group_by("combo", "period").agg(last_version=pl.col("version").max())
    bills = bills.join(last_version, on=["combo", "period"])
    bills, factors = _net_metering(bills, aggregated, tables["export"], carry_in)
    aggregated = aggregated.join(
        factors.select(*bill_keys, "tou", "billed_factor"), on=[*bill_keys, "tou"]
    ).with_columns(billed_kwh=pl.col("import_kwh") * pl.col("billed_factor"))
    bills = bills.join(
        aggregated.group_by(bill_keys).agg(billed_import_kwh=pl.col("billed_kwh").sum()),
        on=bill_keys,
        how="left",
    ).with_columns(pl.col("billed_import_kwh").fill_null(0.0))
    seg = segments.join(meters.select("meter_idx", "combo", "tariff_id"), on="combo")
    lines = [
        _energy_lines(
            aggregated,
            intervals,
            meters,
            classes,
            steps,
            t0,
            n_steps,
            tables["tiers"],
            prior_kwh,
        ),
        _demand_lines(aggregated, seg, tables["demand"]),
        _fixed_lines(seg, tables["fixed"]),
        _levy_lines(aggregated, tables["levies"]),
        _export_lines(aggregated, bills, tables["export"]),
        _carry_lines(factors, bills),
    ]
    priced = _rounded(pl.concat(lines, how="diagonal_relaxed"), bills)
    priced = pl.concat(
        [priced, _rounded(_minimum_lines(priced, seg, bills, tables["minimum"]), bills)],
        how="diagonal_relaxed",
    )
    priced = pl.concat(
        [priced, _rounded(_tax_lines(priced, tables["taxes"], bills), bills)],
        how="diagonal_relaxed",
    )
    return _finish(priced, bills)


def _net_metering(
    bills: pl.DataFrame,
    aggregated: pl.DataFrame,
    export: pl.DataFrame,
    carry_in: pl.DataFrame | None,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Net metering as NREL SAM does it: each TOU period's import and export are netted over the
    bill; a period's surplus is a kWh credit carried to the same period of the next bills; in
    the true-up month what is left is paid out and the credit restarts at zero.

    Returns the bills with ``export_carry_kwh`` (credit carried out, all periods) and
    ``true_up_kwh``, and per (meter, period, TOU period) the ``billed_factor`` (share of the
    import billed after netting) and ``carry_kwh``.
    """
    rules = export.filter(pl.col("tou").is_null()).select(
        "tariff_id",
        pl.col("version").alias("last_version"),
        "mode",
        "true_up_month",
        pl.col("rate").alias("true_up_rate"),
    )
    bills = bills.join(rules, on=["tariff_id", "last_version"], how="left")
    if not (bills["mode"] == "net_metering").any() and (carry_in is None or carry_in.is_empty()):
        # no bill nets: everything imported is billed, nothing is carried
        factors = aggregated.select("meter_idx", "period", "tou").unique()
        return (
            bills.with_columns(export_carry_kwh=pl.lit(0.0), true_up_kwh=pl.lit(0.0)).drop("mode"),
            factors.with_columns(billed_factor=pl.lit(1.0), carry_kwh=pl.lit(0.0)),
        )
    netting = pl.col("mode") == "net_metering"
    true_up = netting & (pl.col("period").str.slice(5, 2).cast(pl.Int32) == pl.col("true_up_month"))
    keys = ["meter_idx", "period", "tou"]
    carry = (
        carry_in.select("meter_id", "tou", pl.col("export_carry_kwh").alias("carry_start"))
        if carry_in is not None
        else pl.DataFrame(
            schema={"meter_id": pl.String, "tou": pl.String, "carry_start": pl.Float64}
        )
    )
    # every bill of a meter gets a row for every TOU period the meter has energy or credit in,
    # so a credit runs on (and is paid at the true-up) through bills without intervals
    tous = pl.concat(
        [
            aggregated.select("meter_idx", "tou"),
            carry.join(bills.select("meter_id", "meter_idx").unique(), on="meter_id").select(
                "meter_idx", "tou"
            ),
        ]
    ).unique()
    flows = (
        bills.select("meter_idx", "period")
        .join(tous, on="meter_idx")
        .join(
            aggregated.group_by(keys).agg(
                imported=pl.col("import_kwh").sum(), exported=pl.col("export_kwh").sum()
            ),
            on=keys,
            how="left",
        )
        .with_columns(pl.col("imported", "exported").fill_null(0.0))
        .join(
            bills.select("meter_idx", "meter_id", "period", netting.alias("netting"),
                         true_up.fill_null(False).alias("true_up")),
            on=["meter_idx", "period"],
        )
        .join(carry, on=["meter_id", "tou"], how="left")
        .sort("meter_idx", "tou", "period")
    )  # fmt: skip
    # a cycle ends with its true-up month; the first cycle of each meter starts with its carry
    cycle = (
        pl.col("true_up").cast(pl.Int32).cum_sum().shift(1, fill_value=0).over("meter_idx", "tou")
    )
    start = pl.when(pl.col("cycle") == 0).then(pl.col("carry_start").fill_null(0.0)).otherwise(0.0)
    group = ["meter_idx", "tou", "cycle"]
    flows = (
        flows.with_columns(cycle=cycle)
        .with_columns(first=pl.int_range(pl.len()).over(group) == 0)
        .with_columns(
            # the credit follows W = max(W_prev + export - import, 0): a running sum minus its
            # running minimum (Lindley's recursion), restarted at each true-up
            running=(
                pl.when(pl.col("first")).then(start).otherwise(0.0)
                + pl.col("exported")
                - pl.col("imported")
            )
            .cum_sum()
            .over(group)
        )
        .with_columns(
            credit=pl.col("running")
            - pl.min_horizontal(pl.col("running").cum_min(), 0.0).over(group)
        )
        .with_columns(
            credit_in=pl.when(pl.col("first"))
            .then(start)
            .otherwise(pl.col("credit").shift(1).over(group))
        )
    )
    billed = pl.max_horizontal(pl.col("imported") - pl.col("exported") - pl.col("credit_in"), 0.0)
    factors = flows.select(
        *keys,
        billed_factor=pl.when(pl.col("netting") & (pl.col("imported") > _KWH_EPSILON))
        .then(billed / pl.col("imported"))
        .otherwise(1.0),
        carry_kwh=pl.when(pl.col("netting") & ~pl.col("true_up"))
        .then(pl.col("credit"))
        .otherwise(0.0),
        paid_kwh=pl.when(pl.col("true_up")).then(pl.col("credit")).otherwise(0.0),
    )
    totals = factors.group_by("meter_idx", "period").agg(
        export_carry_kwh=pl.col("carry_kwh").sum(), true_up_kwh=pl.col("paid_kwh").sum()
    )
    bills = bills.join(totals, on=["meter_idx", "period"], how="left").with_columns(
        pl.col("export_carry_kwh", "true_up_kwh").fill_null(0.0)
    )
    return bills.drop("mode"), factors.drop("paid_kwh")


def _carry_lines(factors: pl.DataFrame, bills: pl.DataFrame) -> pl.DataFrame:
    """The net-metering credit each TOU period carries out of the bill (amount 0): what the
    next bill starts from."""
    carried = factors.filter(pl.col("carry_kwh") > _KWH_EPSILON)
    if carried.is_empty():
        return pl.DataFrame()
    return carried.join(
        bills.select("meter_idx", "period", pl.col("last_version").alias("version")),
        on=["meter_idx", "period"],
    ).select(
        "meter_idx",
        "period",
        "version",
        pl.lit(_ORDER_CARRY).alias("order"),
        pl.lit("carry").alias("kind"),
        pl.when(pl.col("tou") == ALL_PERIODS)
        .then(pl.lit("export_carry"))
        .otherwise(pl.format("export_carry_{}", "tou"))
        .alias("code"),
        pl.when(pl.col("tou") == ALL_PERIODS)
        .then(pl.lit("export credit carried to the next bill"))
        .otherwise(pl.format("export credit carried to the next bill ({})", "tou"))
        .alias("description"),
        pl.col("carry_kwh").alias("quantity"),
        pl.lit("kWh").alias("unit"),
        pl.lit(Decimal(0), dtype=_DECIMAL).alias("rate"),
    )


def _energy_lines(
    aggregated: pl.DataFrame,
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    classes: pl.DataFrame,
    steps: pl.Series,
    t0: dt.datetime,
    n_steps: int,
    tiers: pl.DataFrame,
    prior_kwh: pl.DataFrame | None,
) -> pl.DataFrame:
    """Energy lines per (bill, version, TOU period, tier): pro rata at the group level, and
    chronologically from the intervals where a tariff asks for it and the group crosses a bound."""
    window_keys = ["meter_idx", "window_start"]
    group_keys = ["meter_idx", "period", "version", "window_start"]
    # the tier counter counts imported kWh (as the lake's earlier import does, ``prior_kwh``);
    # what a bill tiers is its billed import (less than that after net metering), placed there
    groups = aggregated.group_by(*group_keys, "tariff_id").agg(
        total=pl.col("billed_kwh").sum(), imported=pl.col("import_kwh").sum()
    )
    prior = (
        prior_kwh.join(meters.select("meter_id", "meter_idx"), on="meter_id").select(
            *window_keys, pl.col("kwh").alias("prior_outside")
        )
        if prior_kwh is not None
        else pl.DataFrame(
            schema={"meter_idx": pl.Int64, "window_start": pl.Date, "prior_outside": pl.Float64}
        )
    )
    groups = (
        groups.join(prior, on=window_keys, how="left")
        .sort(*window_keys, "period", "version")
        .with_columns(
            prior=pl.col("prior_outside").fill_null(0.0)
            + pl.col("imported").cum_sum().over(window_keys)
            - pl.col("imported")
        )
    )
    per_class = aggregated.select(*group_keys, "tariff_id", "tou", "billed_kwh").join(
        groups.select(*group_keys, "prior", "total"), on=group_keys
    )
    block = pl.min_horizontal(
        pl.max_horizontal(pl.col("prior") + pl.col("total"), "lo"), "hi"
    ) - pl.min_horizontal(pl.max_horizontal("prior", "lo"), "hi")
    # below a microwatt-hour the shares are float noise (and subnormal divisions give inf)
    share = (
        pl.when(pl.col("total") > _KWH_EPSILON)
        .then(pl.col("billed_kwh") / pl.col("total"))
        .otherwise(0.0)
    )
    rated = per_class.join(tiers, on=["tariff_id", "version", "tou"]).with_columns(
        crossing=(pl.col("prior") < pl.col("lo"))
        & (pl.col("prior") + pl.col("total") > pl.col("lo"))
        & (pl.col("lo") > 0)
    )
    chronological = rated.filter(pl.col("split") == "chronological")
    crossing = chronological.group_by(group_keys).agg(pl.col("crossing").any()).filter("crossing")
    pro_rata = (
        rated.join(crossing.select(group_keys), on=group_keys, how="anti")
        if crossing.height
        else rated
    ).with_columns(quantity=share * block)
    # a TOU period of a bill's version is one class unless it spans tier windows, local months
    # or demand periods: then its tier quantities come in several rows, to be added up
    one_class = not classes.select("combo", "period", "version", "tou").is_duplicated().any()
    if crossing.height or not one_class:
        parts = [pro_rata]
        if crossing.height:
            parts.append(
                _chronological(
                    intervals, meters, steps, t0, n_steps, aggregated, groups, crossing, tiers
                )
            )
        # a period's part of a tier may come from several windows or from both ways of splitting
        lines = (
            pl.concat(
                [p.select(*group_keys, "tariff_id", "tou", "tier", "quantity") for p in parts]
            )
            .group_by("meter_idx", "period", "version", "tariff_id", "tou", "tier")
            .agg(pl.col("quantity").sum())
            .join(tiers.drop("lo", "hi", "split"), on=["tariff_id", "version", "tou", "tier"])
        )
    else:  # each (bill, version, TOU period, tier) is one row of pro_rata already
        lines = pro_rata
    # a tier line with nothing in it is noise; a TOU period without any energy keeps its first
    # tier's line (0 kWh), so every period of the tariff shows on the bill
    lines = lines.filter(
        (pl.col("quantity") > _KWH_EPSILON)
        | ((pl.col("tier") == 1) & (pl.col("quantity").max().over(_TOU_KEYS) <= _KWH_EPSILON))
    )
    return lines.select(
        "meter_idx",
        "period",
        "version",
        (pl.lit(_ORDER_ENERGY) + pl.col("order")).alias("order"),
        "code",
        "description",
        "quantity",
        pl.lit("kWh").alias("unit"),
        "rate",
    )


def _chronological(
    intervals: pl.LazyFrame,
    meters: pl.DataFrame,
    steps: pl.Series,
    t0: dt.datetime,
    n_steps: int,
    aggregated: pl.DataFrame,
    groups: pl.DataFrame,
    crossing: pl.DataFrame,
    tiers: pl.DataFrame,
) -> pl.DataFrame:
    """Tier quantities of the groups that cross a bound, filling tiers in time order.

    Only the crossing meters' intervals are read again; everything per row is integer work:
    the class gives the tier window group and the tier bounds by gather, the running total
    decides how much of each interval falls in each tier.
    """
    keys = ["meter_idx", "period", "version", "window_start"]
    classes = aggregated.select("class", *keys[1:], "tou", "tariff_id").unique("class")
    n_classes = int(classes["class"].max()) + 1  # type: ignore[arg-type]
    windows = classes.select(keys[1:]).unique().sort(keys[1:]).with_row_index("window")
    classes = classes.join(windows, on=keys[1:])
    window_of = _dense(classes, "window", n_classes)
    crossing_keys = (
        crossing.select(keys)
        .join(windows, on=keys[1:])
        .select((pl.col("meter_idx") * windows.height + pl.col("window")).alias("key"))["key"]
    )
    prior = groups.join(windows, on=keys[1:]).select(
        (pl.col("meter_idx") * windows.height + pl.col("window")).alias("key"), "prior"
    )
    factors = aggregated.select(
        (pl.col("meter_idx") * n_classes + pl.col("class")).alias("mc"), "billed_factor"
    )
    crossing_meters = meters.join(crossing.select("meter_idx").unique(), on="meter_idx")
    # filtered before the class gather so the predicate reaches the scan, where Parquet
    # statistics skip the row groups of other meters (files are mostly sorted by meter)
    wanted = intervals.filter(pl.col("meter_id").is_in(crossing_meters["meter_id"].implode()))
    classed = _with_class(wanted, crossing_meters, steps, t0, n_steps)
    if "meter_idx" not in classed.collect_schema().names():
        classed = classed.join(
            crossing_meters.lazy().select("meter_id", "meter_idx"), on="meter_id"
        )
    n_days = n_steps * STEP_MINUTES // (24 * 60) + 1
    rows = (
        classed.select(
            "meter_idx",
            "interval_start",
            "class",
            (
                pl.col("meter_idx") * windows.height + pl.lit(window_of).gather(pl.col("class"))
            ).alias("key"),
            pl.col("energy_import_kwh").fill_null(0.0),
        )
        .filter(pl.col("key").is_in(crossing_keys.implode()))
        .with_columns(day=((pl.col("interval_start") - pl.lit(t0)).dt.total_days()).cast(pl.Int64))
        .with_columns(key_day=pl.col("key") * n_days + pl.col("day"))
    )
    if (aggregated["billed_factor"] != 1.0).any():
        rows = (
            rows.with_columns(mc=pl.col("meter_idx") * n_classes + pl.col("class"))
            .join(factors.lazy(), on="mc")
            .with_columns(pl.col("energy_import_kwh") * pl.col("billed_factor"))
        )
    bounds = classes.join(tiers, on=["tariff_id", "version", "tou"])
    n_tiers = int(bounds["tier"].max())  # type: ignore[arg-type]
    tier_bounds = [
        (
            pl.lit(_dense(b, "lo", n_classes, fill=float("inf"))).gather(pl.col("class")),
            pl.lit(_dense(b, "hi", n_classes, fill=float("inf"))).gather(pl.col("class")),
        )
        for b in (bounds.filter(pl.col("tier") == t) for t in range(1, n_tiers + 1))
    ]
    # Days first: a day whose running total passes no bound lies in one tier as a whole and is
    # summed per class; only the day on which a meter crosses a bound is read again and split
    # interval by interval, in time order.
    per_day = (
        rows.group_by("meter_idx", "class", "key", "key_day")
        .agg(pl.col("energy_import_kwh").sum())
        .collect()
    )
    days = (
        per_day.group_by("key", "key_day")
        .agg(kwh=pl.col("energy_import_kwh").sum())
        .join(prior, on="key")
        .sort("key_day")
        .with_columns(day_end=pl.col("prior") + pl.col("kwh").cum_sum().over("key"))
        .with_columns(day_start=pl.col("day_end") - pl.col("kwh"))
    )
    inner = sorted({b for b in bounds["lo"].to_list() if 0 < b < float("inf")})
    crosses = pl.any_horizontal(
        pl.lit(False), *((pl.col("day_start") < b) & (pl.col("day_end") > b) for b in inner)
    )
    days = days.with_columns(crossing_day=crosses)
    whole = per_day.join(
        days.filter(~pl.col("crossing_day")).select("key_day", "day_start"), on="key_day"
    ).select(
        "meter_idx",
        "class",
        *(
            pl.when((pl.col("day_start") >= lo) & (pl.col("day_start") < hi))
            .then(pl.col("energy_import_kwh"))
            .otherwise(0.0)
            .alias(f"q{tier}")
            for tier, (lo, hi) in enumerate(tier_bounds, start=1)
        ),
    )
    split_days = days.filter(pl.col("crossing_day")).select("key_day", "day_start")
    split = (
        rows.filter(pl.col("key_day").is_in(split_days["key_day"].implode()))
        .collect()
        .join(split_days, on="key_day")
        .sort("key_day", "interval_start")
        .with_columns(
            end=pl.col("day_start") + pl.col("energy_import_kwh").cum_sum().over("key_day")
        )
        .with_columns(start=pl.col("end") - pl.col("energy_import_kwh"))
        .select(
            "meter_idx",
            "class",
            *(
                (
                    pl.min_horizontal(pl.max_horizontal("end", lo), hi)
                    - pl.min_horizontal(pl.max_horizontal("start", lo), hi)
                )
                .fill_nan(0.0)
                .alias(f"q{tier}")
                for tier, (lo, hi) in enumerate(tier_bounds, start=1)
            ),
        )
    )
    per_class = (
        pl.concat([whole, split])
        .group_by("meter_idx", "class")
        .agg(pl.col(f"q{tier}").sum() for tier in range(1, n_tiers + 1))
    )
    return (
        per_class.unpivot(index=["meter_idx", "class"], variable_name="tier", value_name="quantity")
        .with_columns(pl.col("tier").str.slice(1).cast(pl.Int32))
        .join(classes.drop("window"), on="class")
        .join(
            tiers.select("tariff_id", "version", "tou", "tier"),
            on=["tariff_id", "version", "tou", "tier"],
        )
        .group_by(*keys, "tariff_id", "tou", "tier")
        .agg(pl.col("quantity").sum())
    )


def _dense(frame: pl.DataFrame, column: str, size: int, fill: float | int = -1) -> pl.Series:
    """``frame[column]`` placed at the positions ``frame["class"]`` of a Series of ``size``."""
    dtype = pl.Float64 if isinstance(fill, float) else pl.Int64
    dense = pl.repeat(fill, size, dtype=dtype, eager=True).alias(column)
    return dense.scatter(frame["class"], frame[column].cast(dtype))


def _demand_lines(
    aggregated: pl.DataFrame, seg: pl.DataFrame, demand: pl.DataFrame
) -> pl.DataFrame:
    """Each demand charge on the highest power of its periods and months, prorated by days."""
    if demand.is_empty():
        return pl.DataFrame()
    windows = (
        demand.select("tariff_id", "version", "charge", "tous", "months")
        .unique(["tariff_id", "version", "charge"])
        .explode("tous")
        .explode("months")
        .rename({"tous": "dtou", "months": "month"})
    )
    peaks = (
        aggregated.join(windows, on=["tariff_id", "version", "dtou", "month"])
        .group_by("meter_idx", "period", "version", "tariff_id", "charge")
        .agg(kw=pl.col("max_kw").max())
    )
    fraction = pl.col("days") / pl.col("bill_days")
    return (
        peaks.join(demand.drop("tous", "months"), on=["tariff_id", "version", "charge"])
        .join(
            seg.select("meter_idx", "period", "version", "days", "bill_days"),
            on=["meter_idx", "period", "version"],
        )
        .with_columns(
            block=pl.min_horizontal(
                pl.max_horizontal(pl.col("kw") - pl.col("lo"), 0.0), pl.col("hi") - pl.col("lo")
            )
        )
        .filter((pl.col("block") > 0) | (pl.col("tier") == 1))
        .select(
            "meter_idx",
            "period",
            "version",
            (pl.lit(_ORDER_DEMAND) + pl.col("charge") * 10 + pl.col("tier")).alias("order"),
            pl.when(pl.col("tiered"))
            .then(pl.format("demand{}_tier{}", pl.col("charge").cast(pl.String), "tier"))
            .otherwise(pl.format("demand{}", pl.col("charge").cast(pl.String)))
            .str.replace("demand0", "demand")
            .alias("code"),
            pl.format(
                "{} ({} kW max{})",
                "name",
                pl.col("kw").round(3),
                pl.when(pl.col("days") != pl.col("bill_days"))
                .then(pl.format(", {} of {} days", "days", "bill_days"))
                .otherwise(pl.lit("")),
            ).alias("description"),
            (pl.col("block") * fraction).alias("quantity"),
            pl.lit("kW").alias("unit"),
            "rate",
        )
    )


def _fixed_lines(seg: pl.DataFrame, fixed: pl.DataFrame) -> pl.DataFrame:
    """Fixed charges per month (prorated by days) or per day of each version's part."""
    if fixed.is_empty():
        return pl.DataFrame()
    # a monthly charge on part of the bill is that many days at amount / days of the bill, so
    # quantity x rate stays exact (days/bill_days would not be)
    whole = (pl.col("per") == "month") & (pl.col("days") == pl.col("bill_days"))
    part = (pl.col("per") == "month") & ~whole
    charged = seg.join(fixed, on=["tariff_id", "version"]).with_columns(
        pl.when(part)
        .then(pl.col("rate") / pl.col("bill_days").cast(pl.Decimal(38, 0)))
        .otherwise(pl.col("rate"))
        .cast(_DECIMAL)
        .alias("rate")
    )
    quantity = pl.when(whole).then(pl.lit(1.0)).otherwise(pl.col("days").cast(pl.Float64))
    unit = pl.when(whole).then(pl.lit("month")).otherwise(pl.lit("day"))
    return _numbered_lines(charged, _ORDER_FIXED, "fixed", quantity, unit)


def _levy_lines(aggregated: pl.DataFrame, levies: pl.DataFrame) -> pl.DataFrame:
    """Each levy on the billed import of each version's part."""
    if levies.is_empty():
        return pl.DataFrame()
    billed = aggregated.group_by("meter_idx", "period", "version", "tariff_id").agg(
        billed=pl.col("billed_kwh").sum()
    )
    charged = billed.join(levies, on=["tariff_id", "version"])
    return _numbered_lines(charged, _ORDER_LEVY, "levy", pl.col("billed"), pl.lit("kWh"))


def _numbered_lines(
    charged: pl.DataFrame, order: int, code: str, quantity: pl.Expr, unit: pl.Expr
) -> pl.DataFrame:
    """Lines of a tariff's list of charges (``charge`` = its index): codes ``fixed``,
    ``fixed1``, ... described by the charge's name."""
    return charged.select(
        "meter_idx",
        "period",
        "version",
        (pl.lit(order) + pl.col("charge")).alias("order"),
        pl.when(pl.col("charge") == 0)
        .then(pl.lit(code))
        .otherwise(pl.format(f"{code}{{}}", "charge"))
        .alias("code"),
        pl.col("name").alias("description"),
        quantity.alias("quantity"),
        unit.alias("unit"),
        "rate",
    )


def _export_lines(
    aggregated: pl.DataFrame, bills: pl.DataFrame, export: pl.DataFrame
) -> pl.DataFrame:
    """Net billing credits per TOU period, and the net-metering true-up payment."""
    sells = export.filter(pl.col("mode") == "net_billing", pl.col("tou").is_not_null())
    parts = []
    if sells.height:
        credited = (
            aggregated.group_by("meter_idx", "period", "version", "tariff_id", "tou")
            .agg(quantity=pl.col("export_kwh").sum())
            .join(sells, on=["tariff_id", "version", "tou"])
            .filter(pl.col("quantity") > 0)
        )
        # a tariff without TOU has the one period "all": its line is plain "export_credit"
        single = pl.col("tou") == ALL_PERIODS
        parts.append(
            credited.select(
                "meter_idx",
                "period",
                "version",
                pl.lit(_ORDER_EXPORT).alias("order"),
                pl.when(single)
                .then(pl.lit("export_credit"))
                .otherwise(pl.format("export_credit_{}", "tou"))
                .alias("code"),
                pl.when(single)
                .then(pl.lit("export credit"))
                .otherwise(pl.format("export credit {}", "tou"))
                .alias("description"),
                "quantity",
                pl.lit("kWh").alias("unit"),
                (-pl.col("rate")).alias("rate"),
            )
        )
    paid = bills.filter(pl.col("true_up_kwh") > 0)
    if paid.height:
        parts.append(
            paid.select(
                "meter_idx",
                "period",
                pl.col("last_version").alias("version"),
                pl.lit(_ORDER_TRUE_UP).alias("order"),
                pl.lit("export_true_up").alias("code"),
                pl.lit("net metering true-up: remaining export credit paid").alias("description"),
                pl.col("true_up_kwh").alias("quantity"),
                pl.lit("kWh").alias("unit"),
                (-pl.col("true_up_rate")).alias("rate"),
            )
        )
    return pl.concat(parts, how="diagonal_relaxed") if parts else pl.DataFrame()


def _rounded(lines: pl.DataFrame, bills: pl.DataFrame) -> pl.DataFrame:
    """``amount = quantity x rate`` rounded to the currency's minor unit (the tariff's mode)."""
    if lines.is_empty():
        return lines.with_columns(amount=pl.lit(None, dtype=_MONEY))
    frame = lines.with_columns(
        pl.col("quantity").round(QUANTITY_DECIMALS), pl.col("rate").cast(_DECIMAL)
    )
    product = pl.col("quantity").cast(pl.Decimal(38, QUANTITY_DECIMALS)) * pl.col("rate")
    rules = bills.select("decimals", "rounding").unique()
    if rules.height == 1:  # one currency rule for all (the usual run): no join needed
        (decimals, rounding) = rules.row(0)
        return frame.with_columns(amount=_round_money(product, decimals, rounding))
    frame = frame.join(
        bills.select("meter_idx", "period", "decimals", "rounding"), on=["meter_idx", "period"]
    )
    amount: pl.Expr = pl.lit(None, dtype=_MONEY)
    for decimals, rounding in rules.iter_rows():
        amount = (
            pl.when((pl.col("decimals") == decimals) & (pl.col("rounding") == rounding))
            .then(_round_money(product, decimals, rounding))
            .otherwise(amount)
        )
    return frame.with_columns(amount=amount).drop("decimals", "rounding")


def _round_money(product: pl.Expr, decimals: int, rounding: str) -> pl.Expr:
    mode: Literal["half_away_from_zero", "half_to_even"] = (
        "half_away_from_zero" if rounding == "half_up" else "half_to_even"
    )
    return product.round(decimals, mode=mode).cast(_MONEY)


def _minimum_lines(
    priced: pl.DataFrame, seg: pl.DataFrame, bills: pl.DataFrame, minimum: pl.DataFrame
) -> pl.DataFrame:
    """The difference up to the minimum charge, when energy + demand + fixed fall below it."""
    if minimum.is_empty():
        return pl.DataFrame()
    prorated = (
        pl.when(pl.col("per") == "month")
        .then(pl.col("rate") * pl.col("days").cast(_DECIMAL) / pl.col("bill_days").cast(_DECIMAL))
        .otherwise(pl.col("rate") * pl.col("days").cast(_DECIMAL))
    )
    floor = (
        seg.join(minimum, on=["tariff_id", "version"])
        .group_by("meter_idx", "period")
        .agg(minimum=prorated.sum())
    )
    # as SAM: energy after export credits + demand + fixed, never below 0; levies, tax and the
    # net-metering true-up come after the minimum
    counted = (pl.col("order") < _ORDER_MINIMUM) | (pl.col("order") == _ORDER_EXPORT)
    charged = (
        priced.filter(counted)
        .group_by("meter_idx", "period")
        .agg(charged=pl.max_horizontal(pl.col("amount").sum(), pl.lit(0, dtype=_MONEY)))
    )
    short = (
        floor.join(charged, on=["meter_idx", "period"], how="left")
        .join(bills.select("meter_idx", "period", "last_version"), on=["meter_idx", "period"])
        .with_columns(gap=pl.col("minimum") - pl.col("charged").fill_null(0).cast(_DECIMAL))
        .filter(pl.col("gap") > 0)
    )
    return short.select(
        "meter_idx",
        "period",
        pl.col("last_version").alias("version"),
        pl.lit(_ORDER_MINIMUM).alias("order"),
        pl.lit("min_adjustment").alias("code"),
        pl.lit("minimum charge adjustment").alias("description"),
        pl.lit(1.0).alias("quantity"),
        pl.lit("bill").alias("unit"),
        pl.col("gap").alias("rate"),
    )


def _tax_lines(priced: pl.DataFrame, taxes: pl.DataFrame, bills: pl.DataFrame) -> pl.DataFrame:
    """A percentage of every other line of each version's part of the bill."""
    if taxes.is_empty():
        return pl.DataFrame()
    subtotal = (
        priced.join(bills.select("meter_idx", "period", "tariff_id"), on=["meter_idx", "period"])
        .group_by("meter_idx", "period", "version", "tariff_id")
        .agg(base=pl.col("amount").sum())
    )
    return subtotal.join(taxes, on=["tariff_id", "version"]).select(
        "meter_idx",
        "period",
        "version",
        pl.lit(_ORDER_TAX).alias("order"),
        pl.lit("tax").alias("code"),
        pl.format("{} {}%", "name", pl.col("percent").cast(pl.Float64)).alias("description"),
        pl.col("base").cast(pl.Float64).alias("quantity"),
        pl.lit("amount").alias("unit"),
        (pl.col("percent").cast(_DECIMAL) * Decimal("0.01")).cast(_DECIMAL).alias("rate"),
    )


def _numbers_in_runs(key: list[str]) -> pl.Expr:
    """1, 2, ... within each run of equal ``key`` of a sorted frame (a forward fill of each
    run's first row number: far cheaper than a window function over the key).

    >>> frame = pl.DataFrame({"k": [1, 1, 2, 2, 2, 3]})
    >>> frame.select(_numbers_in_runs(["k"]))["line_no"].to_list()
    [1, 2, 1, 2, 3, 1]
    """
    row = pl.int_range(pl.len(), dtype=pl.Int32)
    starts = pl.any_horizontal(pl.col(c).ne_missing(pl.col(c).shift(1)) for c in key)
    return (row - pl.when(starts).then(row).forward_fill() + 1).alias("line_no")


def _finish(priced: pl.DataFrame, bills: pl.DataFrame) -> BillFrames:
    key = ["meter_idx", "period"]
    lines = (
        priced.join(bills.select(*key, "meter_id", "currency"), on=key)
        .with_columns(
            (pl.col("kind") if "kind" in priced.columns else pl.lit(None, pl.String))
            .fill_null("charge")
            .alias("kind")
        )
        .sort("meter_idx", "period", "order", "version", "code")
        .with_columns(line_no=_numbers_in_runs(key))
    )
    totals = lines.group_by(key).agg(
        total_amount=pl.col("amount").filter(pl.col("kind") == "charge").sum()
    )
    out_bills = (
        bills.join(totals, on=key, how="left")
        .with_columns(
            pl.col("total_amount").fill_null(Decimal(0)).cast(_MONEY),
            estimated_share=pl.when(pl.col("energy_import_kwh") > 0)
            .then(pl.col("estimated_kwh") / pl.col("energy_import_kwh"))
            .otherwise(0.0),
            # what the bill rests on, as figures: a correction of any interval changes them
            interval_version=pl.format(
                "n{} e{} m{} i{} x{}",
                "intervals",
                "intervals_estimated",
                "intervals_missing",
                pl.col("energy_import_kwh").round(6),
                pl.col("energy_export_kwh").round(6),
            ),
        )
        .sort("meter_id", "period")
        .select(
            "meter_id",
            "period",
            "period_start",
            "period_end",
            "tariff_id",
            "tariff_version",
            "currency",
            "energy_import_kwh",
            "energy_export_kwh",
            "billed_import_kwh",
            "estimated_share",
            "intervals",
            "intervals_estimated",
            "intervals_missing",
            "interval_version",
            "export_carry_kwh",
            "total_amount",
        )
    )
    return BillFrames(
        bills=out_bills,
        # meter_idx numbers the meters in meter_id order: the lines are in bill order already
        lines=lines.select(
            "meter_id",
            "period",
            "line_no",
            "kind",
            "code",
            "description",
            "quantity",
            "unit",
            "rate",
            "amount",
            "currency",
        ),
    )
