"""A bill run over the lake: every meter's bill for one period, versioned, into ``bills`` and
``bill_lines``.

What a run reads: the meters' current master data (``meters``: tariff, billing day, tier-year
start), the current intervals of the period, the meters' import earlier in their tier windows
(annual and monthly tiers), the net-metering credit carried out of the previous period's bills,
and the bills already issued for the period. What it writes:

- nothing for a bill whose lines and figures are what the lake already holds (re-running with the
  same inputs writes nothing);
- version 1 of a bill the period did not have;
- a new version of a bill whose lines or figures changed (corrected or late intervals, a new
  tariff version): ``supersedes`` names the previous version, ``adjustment_amount`` is the
  difference of the totals, and ``adjustment`` lines give the difference per line code.

Meters without a tariff, or naming one that is not loaded, are reported as skipped, not billed.
``bill_id`` is a hash of meter, period, tariff id and version, the interval data version and the
bill version; ``line_id`` is the bill id and the line number.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Final

import polars as pl

from meterlake.config.ids import stable_ids
from meterlake.config.months import add_months_to_label
from meterlake.config.schemas import ALERTS, BILL_LINES, BILL_REVIEWS, BILLS, empty_frame
from meterlake.config.settings import BillSettings
from meterlake.storage.layout import list_partitions, partition_files
from meterlake.storage.scan import (
    open_alerts,
    scan,
    scan_current_intervals,
    scan_current_meters,
    scan_files,
)
from meterlake.storage.writer import write_table
from meterlake.tariffs.bill_checks import STATUS_HELD, STATUS_RELEASED, hold_reasons
from meterlake.tariffs.engine import (
    BillFrames,
    BillingError,
    bill_range,
    compute_bills,
    month_periods,
    prior_windows,
)
from meterlake.tariffs.model import Tariff

_COMPARED_BILL: Final = (
    "tariff_id",
    "energy_import_kwh",
    "energy_export_kwh",
    "billed_import_kwh",
    "export_carry_kwh",
    "estimated_share",
    "intervals",
    "intervals_estimated",
    "intervals_missing",
    "total_amount",
)
_COMPARED_LINE: Final = ("code", "description", "quantity", "unit", "rate", "amount")
_KWH_TOLERANCE: Final = 1e-6


@dataclass(frozen=True)
class BillRunResult:
    """What a bill run did: ``bills`` and ``lines`` it wrote (empty when nothing changed),
    how many meters it billed, how many bills were already current, and the meters it
    ``skipped`` (``meter_id, reason``)."""

    run_id: str
    period: str
    billed: int
    unchanged: int
    bills: pl.DataFrame
    lines: pl.DataFrame
    skipped: pl.DataFrame


def run_billing(
    root: Path,
    tariffs: Mapping[str, Tariff],
    period: str,
    *,
    run_id: str,
    now: dt.datetime,
    settings: BillSettings | None = None,
) -> BillRunResult:
    """Bill every meter of the lake with a known tariff for ``period`` (``YYYY-MM``); each bill
    written is ``released`` or ``held`` by the checks of :mod:`~meterlake.tariffs.bill_checks`
    (thresholds from ``settings``)."""
    (label,) = month_periods(period, period)
    meters = scan_current_meters(root).collect()
    known = pl.col("tariff_id").is_in(list(tariffs))
    skipped = meters.filter(~known | pl.col("tariff_id").is_null()).select(
        "meter_id",
        pl.when(pl.col("tariff_id").is_null())
        .then(pl.lit("no tariff_id in meters"))
        .otherwise(pl.format("tariff {} is not loaded", "tariff_id"))
        .alias("reason"),
    )
    billable = meters.filter(known)
    if billable.is_empty():
        no_bills, no_lines = empty_frame(BILLS), empty_frame(BILL_LINES)
        return BillRunResult(run_id, label, 0, 0, no_bills, no_lines, skipped)
    start, end = bill_range([label])
    intervals = scan_current_intervals(root, start, end)
    computed = compute_bills(
        intervals,
        billable,
        tariffs,
        [label],
        prior_kwh=_prior_kwh(root, billable, tariffs, label),
        carry_in=_carry_in(root, label),
    )
    stored_bills, stored_lines = current_bills(root, label)
    changed = _changed(computed, stored_bills, stored_lines)
    bills, lines = _issue(computed, changed, stored_bills, stored_lines, billable, run_id, now)
    bills = _checked(root, bills, settings or BillSettings())
    # lines first: a bill row is what makes its lines visible, so a crash in between leaves
    # orphan lines that the re-run writes again under the same ids (removed by dedup)
    write_table(root, BILL_LINES, lines)
    write_table(root, BILLS, bills)
    return BillRunResult(
        run_id,
        label,
        computed.bills.height,
        computed.bills.height - changed.height,
        bills,
        lines,
        skipped,
    )


def _checked(root: Path, bills: pl.DataFrame, settings: BillSettings) -> pl.DataFrame:
    """``bills`` with ``status`` and ``hold_reasons`` from the pre-release checks."""
    if bills.is_empty():
        return bills
    (label,) = bills["period"].unique().to_list()
    # the recent bills and the same month last year: one month may be both (recent >= 12)
    earlier = sorted(
        {add_months_to_label(label, -k) for k in (*range(1, settings.high_bill_recent + 1), 12)}
    )
    history = pl.concat(
        [current_bills(root, p)[0].select("meter_id", "period", "total_amount") for p in earlier]
    )
    still_open = (
        open_alerts(scan(root, ALERTS)).select("meter_id", "rule", "severity", "message").collect()
    )
    reasons = hold_reasons(bills, history, still_open, settings)
    return (
        bills.drop("status", "hold_reasons", strict=False)
        .join(reasons, on="meter_id", how="left")
        .with_columns(
            status=pl.when(pl.col("hold_reasons").list.len() > 0)
            .then(pl.lit(STATUS_HELD))
            .otherwise(pl.lit(STATUS_RELEASED))
        )
        .select(list(BILLS.schema))
    )


def _prior_kwh(
    root: Path, meters: pl.DataFrame, tariffs: Mapping[str, Tariff], period: str
) -> pl.DataFrame | None:
    """Each meter's import in its tier window before the period starts [kWh]."""
    windows = prior_windows(meters, tariffs, period)
    if windows.is_empty():
        return None
    lo = windows["window_start_utc"].min()
    hi = windows["bill_start_utc"].max()
    assert isinstance(lo, dt.datetime) and isinstance(hi, dt.datetime)
    return (
        scan_current_intervals(root, lo, hi)
        .join(windows.lazy(), on="meter_id")
        .filter(
            pl.col("interval_start") >= pl.col("window_start_utc"),
            pl.col("interval_start") < pl.col("bill_start_utc"),
        )
        .group_by("meter_id", "window_start")
        .agg(kwh=pl.col("energy_import_kwh").sum())
        .collect()
    )


def _carry_in(root: Path, period: str) -> pl.DataFrame:
    """The net-metering credit per TOU period that each meter's current bill of the previous
    period carried out (its ``carry`` lines)."""
    bills, lines = current_bills(root, add_months_to_label(period, -1))
    return (
        lines.filter(pl.col("kind") == "carry")
        .join(bills.select("bill_id", "meter_id"), on="bill_id")
        .select(
            "meter_id",
            pl.col("code")
            .str.strip_prefix("export_carry")
            .str.strip_prefix("_")
            .replace("", "all")
            .alias("tou"),
            pl.col("quantity").alias("export_carry_kwh"),
        )
    )


def current_bills(root: Path, period: str) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The highest version of each meter's bill of ``period`` and its lines."""
    if period not in list_partitions(root, BILLS):
        return empty_frame(BILLS), empty_frame(BILL_LINES)
    bills = (
        scan_files(partition_files(root, BILLS, period), BILLS)
        .unique("bill_id")
        .sort("version")
        .group_by("meter_id", maintain_order=True)
        .last()
        .collect()
    )
    lines = (
        scan_files(partition_files(root, BILL_LINES, period), BILL_LINES)
        .unique("line_id")
        .join(bills.lazy().select("bill_id"), on="bill_id")
        .collect()
    )
    return bills, lines


def _changed(
    computed: BillFrames, stored_bills: pl.DataFrame, stored_lines: pl.DataFrame
) -> pl.DataFrame:
    """``meter_id`` of the computed bills that are new or differ from the stored current ones."""
    new = computed.bills.join(stored_bills.select("meter_id"), on="meter_id", how="anti")
    old_bills = stored_bills.select("meter_id", *_COMPARED_BILL)
    both = computed.bills.select("meter_id", *_COMPARED_BILL).join(
        old_bills, on="meter_id", suffix="__old"
    )
    figures = pl.any_horizontal(
        *(_differs(c, both.schema[c]) for c in _COMPARED_BILL),
    )
    bill_changed = both.filter(figures).select("meter_id")
    old_lines = stored_lines.filter(pl.col("kind") != "adjustment").join(
        stored_bills.select("bill_id", "meter_id"), on="bill_id"
    )
    computed_lines = computed.lines.join(stored_bills.select("meter_id"), on="meter_id")
    paired = computed_lines.select("meter_id", "line_no", *_COMPARED_LINE).join(
        old_lines.select("meter_id", "line_no", *_COMPARED_LINE),
        on=["meter_id", "line_no"],
        how="full",
        coalesce=True,
        suffix="__old",
    )
    line_changed = paired.filter(
        pl.any_horizontal(
            pl.col("code").is_null() | pl.col("code__old").is_null(),
            *(_differs(c, paired.schema[c]) for c in _COMPARED_LINE),
        )
    ).select("meter_id")
    return pl.concat([new.select("meter_id"), bill_changed, line_changed]).unique()


def _differs(column: str, dtype: pl.DataType) -> pl.Expr:
    new, old = pl.col(column), pl.col(f"{column}__old")
    if dtype == pl.Float64:
        return (new - old).abs().fill_null(1.0) > _KWH_TOLERANCE
    if isinstance(dtype, pl.Decimal):
        return new.cast(pl.Decimal(38, 8)).ne_missing(old.cast(pl.Decimal(38, 8)))
    return new.ne_missing(old)


def _issue(
    computed: BillFrames,
    changed: pl.DataFrame,
    stored_bills: pl.DataFrame,
    stored_lines: pl.DataFrame,
    meters: pl.DataFrame,
    run_id: str,
    now: dt.datetime,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The rows of the bills to issue: ids, versions, adjustments."""
    previous = stored_bills.select(
        "meter_id",
        pl.col("bill_id").alias("supersedes"),
        pl.col("version").alias("previous_version"),
        pl.col("total_amount").alias("previous_total"),
    )
    bills = (
        computed.bills.join(changed, on="meter_id")
        .join(previous, on="meter_id", how="left")
        .join(meters.select("meter_id", "account"), on="meter_id", how="left")
        .with_columns(
            version=(pl.col("previous_version").fill_null(0) + 1).cast(pl.Int32),
            adjustment_amount=pl.when(pl.col("supersedes").is_null())
            .then(pl.lit(Decimal(0)))
            .otherwise(pl.col("total_amount") - pl.col("previous_total").cast(pl.Decimal(38, 4))),
            run_id=pl.lit(run_id),
            issued_at=pl.lit(now.astimezone(dt.UTC)),
        )
    )
    bills = bills.with_columns(
        bill_id=stable_ids(
            bills,
            ["meter_id", "period", "tariff_id", "tariff_version", "interval_version", "version"],
            "b-",
        )
    )
    charges = computed.lines.join(bills.select("meter_id", "bill_id"), on="meter_id")
    adjustments = _adjustment_lines(charges, bills, stored_lines)
    lines = pl.concat([charges, adjustments], how="diagonal_relaxed").with_columns(
        line_id=pl.format("{}-{}", "bill_id", "line_no")
    )
    bills = bills.with_columns(
        status=pl.lit(STATUS_RELEASED), hold_reasons=pl.lit([], dtype=pl.List(pl.String))
    )
    return bills.select(list(BILLS.schema)), lines.select(list(BILL_LINES.schema))


def _adjustment_lines(
    charges: pl.DataFrame, bills: pl.DataFrame, stored_lines: pl.DataFrame
) -> pl.DataFrame:
    """Per code, the new amount minus the superseded one (codes that vanished count as 0)."""
    superseding = bills.filter(pl.col("supersedes").is_not_null()).select(
        "bill_id", "supersedes", "meter_id", "period", "currency"
    )
    if superseding.is_empty():
        return pl.DataFrame()
    money = pl.Decimal(38, 4)
    new = (
        charges.filter(pl.col("kind") == "charge")
        .join(superseding.select("bill_id"), on="bill_id")
        .group_by("bill_id", "code")
        .agg(new_amount=pl.col("amount").sum().cast(money), new_desc=pl.col("description").first())
    )
    old = (
        stored_lines.filter(pl.col("kind") == "charge")
        .join(superseding.select("bill_id", "supersedes"), left_on="bill_id", right_on="supersedes")
        .group_by("bill_id_right", "code")
        .agg(old_amount=pl.col("amount").sum().cast(money), old_desc=pl.col("description").first())
        .rename({"bill_id_right": "bill_id"})
    )
    last_line = charges.group_by("bill_id").agg(last=pl.col("line_no").max())
    zero = pl.lit(Decimal(0), dtype=money)
    return (
        new.join(old, on=["bill_id", "code"], how="full", coalesce=True)
        .with_columns(
            delta=pl.col("new_amount").fill_null(zero) - pl.col("old_amount").fill_null(zero)
        )
        .filter(pl.col("delta") != 0)
        .join(superseding, on="bill_id")
        .join(last_line, on="bill_id")
        .sort("bill_id", "code")
        .select(
            "bill_id",
            "meter_id",
            "period",
            (pl.col("last") + pl.int_range(1, pl.len() + 1).over("bill_id"))
            .cast(pl.Int32)
            .alias("line_no"),
            pl.lit("adjustment").alias("kind"),
            "code",
            pl.format("correction of {}", pl.coalesce("new_desc", "old_desc")).alias("description"),
            pl.lit(1.0).alias("quantity"),
            pl.lit("bill").alias("unit"),
            pl.col("delta").cast(pl.Decimal(38, 8)).alias("rate"),
            pl.col("delta").alias("amount"),
            "currency",
        )
    )


def release_bill(
    root: Path, bill_id: str, *, reviewer: str, note: str | None, now: dt.datetime
) -> bool:
    """Release a held bill: append its ``bill_reviews`` row. False when it was released
    already (nothing written).

    Raises
    ------
    BillingError
        No bill has that id, or a later version supersedes it (release that one).
    """
    found = scan(root, BILLS).filter(pl.col("bill_id") == bill_id).collect()
    if found.is_empty():
        raise BillingError(f"no bill {bill_id!r} in the lake")
    bill = found.row(0, named=True)
    current, _ = current_bills(root, bill["period"])
    latest = current.filter(pl.col("meter_id") == bill["meter_id"])
    if latest["bill_id"][0] != bill_id:
        raise BillingError(
            f"bill {bill_id} (version {bill['version']}) is superseded by "
            f"{latest['bill_id'][0]} (version {latest['version'][0]}); review that one"
        )
    reviews = scan(root, BILL_REVIEWS).filter(
        (pl.col("bill_id") == bill_id) & (pl.col("action") == STATUS_RELEASED)
    )
    if bill["status"] != STATUS_HELD or reviews.select(pl.len()).collect().item():
        return False
    row = pl.DataFrame(
        {
            "bill_id": [bill_id],
            "period": [bill["period"]],
            "action": [STATUS_RELEASED],
            "note": [note],
            "reviewer": [reviewer],
            "reviewed_at": [now.astimezone(dt.UTC)],
        },
        schema=BILL_REVIEWS.schema,
    )
    write_table(root, BILL_REVIEWS, row)
    return True
