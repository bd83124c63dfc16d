"""Checks a bill passes before it is released to the billing system, as utilities run them.

A bill is **held** for review (status ``held``, with its reasons) when

- its total is negative;
- its total is more than ``high_bill_ratio`` times the meter's reference: its current bill of
  the same month last year or, without one, the mean of its last ``high_bill_recent`` bills;
- more than ``hold_estimated_share`` of its energy is estimated (every bill says how much is
  estimated in ``estimated_share``; this one is mostly guessed);
- its meter has an open alert of a severity in ``hold_alert_severities`` or of a rule in
  ``hold_alert_rules`` (a tamper or anomaly alert, a meter offline ...).

Other bills are ``released``. A held bill is released by a person (``meterlake bill --release
ID``): a ``bill_reviews`` row, the bill itself is never rewritten.
"""

from __future__ import annotations

from typing import Final

import polars as pl

from meterlake.config.settings import BillSettings

STATUS_RELEASED: Final = "released"
STATUS_HELD: Final = "held"


def hold_reasons(
    bills: pl.DataFrame,
    history: pl.DataFrame,
    open_alerts: pl.DataFrame,
    settings: BillSettings,
) -> pl.DataFrame:
    """Why each bill is held: ``meter_id, hold_reasons`` (an empty list: release it).

    Parameters
    ----------
    bills
        ``meter_id, period, total_amount, currency, estimated_share``: the bills to issue.
    history
        ``meter_id, period, total_amount``: the meters' current bills of earlier periods.
    open_alerts
        ``meter_id, rule, severity, message``: alerts raised and not resolved.
    settings
        The thresholds (``[bill]``).

    >>> from decimal import Decimal
    >>> bills = pl.DataFrame({"meter_id": ["m1", "m2"], "period": ["2026-10"] * 2,
    ...     "total_amount": [Decimal("412.30"), Decimal("-5.00")], "currency": ["CNY"] * 2,
    ...     "estimated_share": [0.0, 0.0]})
    >>> history = pl.DataFrame({"meter_id": ["m1"], "period": ["2025-10"],
    ...     "total_amount": [Decimal("158.20")]})
    >>> no_alerts = pl.DataFrame(schema={"meter_id": pl.String, "rule": pl.String,
    ...     "severity": pl.String, "message": pl.String})
    >>> held = hold_reasons(bills, history, no_alerts, BillSettings())
    >>> for row in held.sort("meter_id").iter_rows():
    ...     print(row)
    ('m1', ['total CNY 412.30 is 2.6x the same month last year (CNY 158.20)'])
    ('m2', ['negative total (CNY -5.00)'])
    """
    total = pl.col("total_amount").cast(pl.Float64)
    year_before = (pl.col("period").str.slice(0, 4).cast(pl.Int32) - 1).cast(pl.String) + pl.col(
        "period"
    ).str.slice(4)
    earlier = history.select(
        "meter_id", "period", pl.col("total_amount").cast(pl.Float64).alias("before")
    )
    last_year = bills.select("meter_id", year_before.alias("period")).join(
        earlier, on=["meter_id", "period"]
    )
    recent = (
        bills.select("meter_id", pl.col("period").alias("billed"))
        .join(earlier, on="meter_id")
        .filter(pl.col("period") < pl.col("billed"))
        .sort("period")
        .group_by("meter_id")
        .agg(pl.col("before").tail(settings.high_bill_recent).mean().alias("recent_mean"))
    )
    flagged_alerts = (
        open_alerts.filter(
            pl.col("severity").is_in(list(settings.hold_alert_severities))
            | pl.col("rule").is_in(list(settings.hold_alert_rules))
        )
        .group_by("meter_id")
        .agg(
            pl.format("open {} alert '{}': {}", "severity", "rule", "message")
            .sort()
            .alias("alert_reasons")
        )
    )
    frame = (
        bills.join(
            last_year.select("meter_id", pl.col("before").alias("last_year")),
            on="meter_id",
            how="left",
        )
        .join(recent, on="meter_id", how="left")
        .join(flagged_alerts, on="meter_id", how="left")
    )
    ratio = settings.high_bill_ratio
    reasons = [
        pl.when(total < 0).then(pl.format("negative total ({})", _money_text(total))),
        pl.when((pl.col("last_year") > 0) & (total > ratio * pl.col("last_year"))).then(
            pl.format(
                "total {} is {}x the same month last year ({})",
                _money_text(total),
                (total / pl.col("last_year")).round(1),
                _money_text(pl.col("last_year")),
            )
        ),
        pl.when(
            pl.col("last_year").is_null()
            & (pl.col("recent_mean") > 0)
            & (total > ratio * pl.col("recent_mean"))
        ).then(
            pl.format(
                "total {} is {}x the mean of the meter's last bills ({})",
                _money_text(total),
                (total / pl.col("recent_mean")).round(1),
                _money_text(pl.col("recent_mean")),
            )
        ),
        pl.when(pl.col("estimated_share") > settings.hold_estimated_share).then(
            pl.format(
                "{}% of the energy is estimated",
                (pl.col("estimated_share") * 100).round(0).cast(pl.Int64),
            )
        ),
    ]
    return frame.select(
        "meter_id",
        pl.concat_list(
            pl.concat_list(reasons).list.drop_nulls(),
            pl.col("alert_reasons").fill_null(pl.lit([], dtype=pl.List(pl.String))),
        ).alias("hold_reasons"),
    )


def _money_text(amount: pl.Expr) -> pl.Expr:
    """``CNY 412.30``: the bill's currency and the amount with two decimals."""
    return pl.format("{} {}", pl.col("currency"), amount.cast(pl.Decimal(18, 2)).cast(pl.String))
