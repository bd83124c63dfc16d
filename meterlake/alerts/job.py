"""An alerts run on a lake: evaluate the rules, write the events, deliver them to the sinks.

1. Every rule is evaluated as of ``now`` (:mod:`meterlake.alerts.conditions`).
2. The open alerts (``alerts_open``) and the conditions give the new events
   (:mod:`meterlake.alerts.lifecycle`), written to ``alerts`` first, always.
3. For each sink, the events of the last ``[delivery] max_age`` routed to it (its rules name it,
   or name no sinks at all) that have no ``alert_deliveries`` row for it are pending; at most
   ``max_per_run`` of them, oldest first, are sent, and each one the sink accepted gets its row.
   A sink that fails does not stop the others, and what it did not accept is sent next run.

At-least-once: an event a sink accepted but whose delivery row was not written (a crash in
between) is sent again by the next run. Run one alerts job per lake at a time (a cron job).
Events of rules that are not in the rules file are not routed anywhere.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import polars as pl

from meterlake.alerts.conditions import evaluate_rules
from meterlake.alerts.lifecycle import alert_events, rule_policies
from meterlake.alerts.rules import AlertRules
from meterlake.alerts.sinks import SendOutcome, Sink, build_sinks, events_of
from meterlake.config.ids import meter_id_is_safe
from meterlake.config.schemas import ALERT_DELIVERIES, ALERTS
from meterlake.storage.scan import open_alerts, scan
from meterlake.storage.writer import write_table

logger: Final = logging.getLogger("meterlake.alerts")
DELIVERY_KEY: Final = ("alert_id", "state", "ts", "sink")
_INSTANT: Final = dt.timedelta(microseconds=1)


@dataclass(frozen=True)
class AlertRunResult:
    """What a run did.

    ``conditions`` are the conditions true at ``now`` (``rule, meter_id, message,
    values_json``); ``events`` the alert events written; per sink name, ``delivered`` events
    accepted in this run, ``pending`` events still to deliver and ``errors`` (what went wrong,
    if anything). ``unsafe`` holds conditions whose ``meter_id`` cannot be stored (e.g. a
    feeder name with a space), which raised no alert.
    """

    now: dt.datetime
    conditions: pl.DataFrame
    events: pl.DataFrame
    delivered: dict[str, int]
    pending: dict[str, int]
    errors: dict[str, str]
    unsafe: pl.DataFrame

    def counts(self) -> pl.DataFrame:
        """Events per rule: ``rule, raised, renotified, resolved``."""
        wide = (
            self.events.group_by("rule", "state")
            .len()
            .pivot("state", index="rule", values="len")
            .fill_null(0)
        )
        for state in ("raised", "renotified", "resolved"):
            if state not in wide.columns:
                wide = wide.with_columns(pl.lit(0, pl.UInt32).alias(state))
        return wide.select("rule", "raised", "renotified", "resolved").sort("rule")


def run_alerts(
    root: Path,
    rules: AlertRules,
    now: dt.datetime,
    *,
    sinks: Mapping[str, Sink] | None = None,
    clock: Callable[[], dt.datetime] | None = None,
) -> AlertRunResult:
    """Evaluate ``rules`` on the lake at ``root`` as of ``now``, write the events, deliver.

    Parameters
    ----------
    root, rules
        The lake and the checked rules file.
    now
        The evaluation time (aware; stored in UTC): conditions are judged as of it and the
        events carry it.
    sinks
        The sinks by name (default: built from ``rules.sinks``). A sink of the file missing
        here is not sent to; its events stay pending.
    clock
        The wall clock for ``delivered_at`` (default: ``now``).
    """
    if now.tzinfo is None:
        raise ValueError(f"now = {now} is naive; give it in UTC or with a time zone")
    now = now.astimezone(dt.UTC)
    found = evaluate_rules(root, rules.rules, now)
    safe = meter_id_is_safe()
    unsafe = found.filter(~safe)
    if unsafe.height:
        logger.warning(
            "%d condition(s) with a meter_id that cannot be stored, e.g. %r: skipped",
            unsafe.height,
            unsafe["meter_id"][0],
        )
    conditions = found.filter(safe)
    events = alert_events(
        open_alerts(scan(root, ALERTS)), conditions.lazy(), rule_policies(rules.rules), now
    )
    write_table(root, ALERTS, events)
    delivered, pending, errors = deliver(
        root,
        rules,
        now,
        build_sinks(rules.sinks) if sinks is None else sinks,
        clock or (lambda: now),
    )
    return AlertRunResult(now, conditions, events, delivered, pending, errors, unsafe)


def routes(rules: AlertRules) -> pl.DataFrame:
    """``rule, sink``: which sink gets which rule's events."""
    pairs = [(r.name, s) for r in rules.rules for s in rules.sink_names(r)]
    return pl.DataFrame(pairs, schema={"rule": pl.String, "sink": pl.String}, orient="row")


def pending_deliveries(
    events: pl.LazyFrame, deliveries: pl.LazyFrame, routed: pl.DataFrame
) -> pl.LazyFrame:
    """The (event, sink) pairs still to deliver: each event once per sink its rule routes it
    to, minus those with an ``alert_deliveries`` row; oldest first."""
    return (
        events.join(routed.lazy(), on="rule", how="inner")
        .join(deliveries.select(DELIVERY_KEY), on=list(DELIVERY_KEY), how="anti")
        .sort("ts", "state", "alert_id", "sink")
    )


def deliver(
    root: Path,
    rules: AlertRules,
    now: dt.datetime,
    sinks: Mapping[str, Sink],
    clock: Callable[[], dt.datetime],
) -> tuple[dict[str, int], dict[str, int], dict[str, str]]:
    """Send every sink its pending events (see the module docstring); return delivered,
    pending and errors per sink name."""
    start = now - rules.delivery.max_age
    events = scan(root, ALERTS, start, now + _INSTANT)
    # a delivery is written after its event; the slack covers a clock behind the events' ts
    done = scan(root, ALERT_DELIVERIES, start - rules.delivery.max_age)
    todo = pending_deliveries(events, done, routes(rules)).collect()
    delivered: dict[str, int] = {}
    pending: dict[str, int] = {}
    errors: dict[str, str] = {}
    for spec in rules.sinks:
        name = spec.name
        mine = todo.filter(pl.col("sink") == name)
        batch = mine.head(rules.delivery.max_per_run)
        outcome = SendOutcome(())
        if name in sinks and batch.height:
            outcome = _send(sinks[name], batch)
        accepted = batch[list(outcome.accepted)] if outcome.accepted else batch.clear()
        if accepted.height:
            write_table(
                root,
                ALERT_DELIVERIES,
                accepted.select(
                    *DELIVERY_KEY,
                    pl.lit(clock().astimezone(dt.UTC)).alias("delivered_at"),
                ),
            )
        delivered[name] = accepted.height
        pending[name] = mine.height - accepted.height
        if outcome.error:
            errors[name] = outcome.error
    return delivered, pending, errors


def _send(sink: Sink, batch: pl.DataFrame) -> SendOutcome:
    """``sink.send``, with any unexpected failure of the sink contained: it must not stop the
    others, and its events stay pending."""
    try:
        return sink.send(events_of(batch))
    except Exception as exc:  # a sink's bug or an error its library did not wrap
        logger.exception("sink %s failed", sink.name)
        return SendOutcome((), f"sink {sink.name} failed: {type(exc).__name__}: {exc}")
