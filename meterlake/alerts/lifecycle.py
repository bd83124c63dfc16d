"""The life cycle of an alert: raised, renotified after the cooldown, resolved.

::

    condition becomes true ──▶ raised ──(still true, last notice >= cooldown old)──▶ renotified
                                  │                                                   │
                                  └──────────── condition no longer true ◀────────────┘──▶ resolved

:func:`alert_events` is a pure function of the open alerts, the conditions true now, the rules'
policies and ``now``: re-running it with the same inputs after its events were stored yields
nothing new (an open alert is never raised twice, and its cooldown starts at its last notice).
``alert_id`` is a hash of the rule, the meter and the raise time, so one (rule, meter) that
clears and comes back later is a new alert.

Only the rules given are judged: an open alert of a rule that is not among them (another
rules file, a rule since removed) is left as it is.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from typing import Final

import polars as pl

from meterlake.alerts.conditions import UTC_MINUTE
from meterlake.alerts.rules import AlertRule
from meterlake.config.ids import stable_ids
from meterlake.config.schemas import ALERTS

# event states; their alphabetical order is also their order within one instant
RAISED: Final = "raised"
RENOTIFIED: Final = "renotified"
RESOLVED: Final = "resolved"
ALERT_ID_PREFIX: Final = "al-"
POLICY_SCHEMA: Final = pl.Schema(
    {"rule": pl.String(), "severity": pl.String(), "cooldown": pl.Duration("us")}
)


def rule_policies(rules: Sequence[AlertRule]) -> pl.DataFrame:
    """``rule, severity, cooldown`` of ``rules``: what the life cycle needs of them."""
    return pl.DataFrame(
        {
            "rule": [r.name for r in rules],
            "severity": [r.severity for r in rules],
            "cooldown": [r.cooldown for r in rules],
        },
        schema=POLICY_SCHEMA,
    )


def alert_events(
    open_now: pl.LazyFrame,
    conditions: pl.LazyFrame,
    policies: pl.DataFrame,
    now: dt.datetime,
) -> pl.DataFrame:
    """The events that bring the open alerts in line with the conditions true at ``now``.

    Parameters
    ----------
    open_now
        :func:`open_alerts` (``alert_id, rule, severity, meter_id, ts, message, values_json,
        raised_at``).
    conditions
        ``rule, meter_id, message, values_json``: what holds now, one row per (rule, meter_id).
    policies
        :func:`rule_policies` of the rules that were evaluated; other rules' alerts are left
        alone.
    now
        The evaluation time (UTC); every event is stamped with it.

    Returns
    -------
    pl.DataFrame
        Rows of the ``alerts`` table: ``raised`` for a (rule, meter) that holds and has no open
        alert, ``renotified`` for one whose last notification is at least the rule's cooldown
        old, ``resolved`` for an open alert whose condition no longer holds.
    """
    key = ["rule", "meter_id"]
    at = pl.lit(now).dt.convert_time_zone("UTC").alias("ts")
    mine = open_now.join(policies.lazy().select("rule"), on="rule", how="semi")
    holding = conditions.join(policies.lazy(), on="rule", how="inner")
    columns = list(ALERTS.schema)
    new = (
        holding.join(mine, on=key, how="anti")
        .with_columns(at, pl.lit(RAISED).alias("state"))
        .collect()
    )
    raised = new.with_columns(
        stable_ids(
            new.with_columns(pl.col("ts").dt.to_string("%Y-%m-%dT%H:%M:%S%.6fZ")),
            ["rule", "meter_id", "ts"],
            ALERT_ID_PREFIX,
        ).alias("alert_id")
    ).select(columns)
    renotified = (
        holding.join(
            mine.select("alert_id", *key, pl.col("ts").alias("notified_at")), on=key, how="inner"
        )
        .filter(pl.lit(now) - pl.col("notified_at") >= pl.col("cooldown"))
        .with_columns(at, pl.lit(RENOTIFIED).alias("state"))
        .select(columns)
    )
    resolved = (
        mine.join(conditions, on=key, how="anti")
        .with_columns(
            at,
            pl.lit(RESOLVED).alias("state"),
            pl.format(
                "cleared (raised {}): {}",
                pl.col("raised_at").dt.to_string(UTC_MINUTE),
                pl.col("message").fill_null("-"),
            ).alias("message"),
        )
        .select(columns)
    )
    later = pl.concat([renotified, resolved]).collect()
    return pl.concat([raised.cast(ALERTS.schema), later.cast(ALERTS.schema)]).sort(
        "rule", "meter_id", "state"
    )
