"""Helpers of the alert tests: table rows by hand, rules from dicts, a fixed clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import polars as pl

from meterlake.alerts.conditions import evaluate
from meterlake.alerts.rules import AlertRules, parse_alert_rules
from meterlake.alerts.sinks import AlertEvent, SendOutcome
from meterlake.config.schemas import READINGS, TableSpec
from meterlake.storage.writer import write_table

UTC = dt.UTC
NOW = dt.datetime(2026, 10, 10, 12, tzinfo=UTC)
"""The evaluation time of most tests: 2026-10-10 12:00 UTC."""
TODAY = NOW.date()
MIN = dt.timedelta(minutes=1)
HOUR = dt.timedelta(hours=1)
DAY = dt.timedelta(days=1)


def frame(table: TableSpec, rows: Iterable[Mapping[str, Any]]) -> pl.DataFrame:
    """Rows of ``table``; columns a row does not give are null."""
    listed = list(rows)
    return pl.DataFrame({c: [r.get(c) for r in listed] for c in table.schema}, schema=table.schema)


def put(lake: Path, table: TableSpec, rows: Iterable[Mapping[str, Any]]) -> None:
    """Write rows into ``table`` of the lake (the atomic writer, as every job does)."""
    write_table(lake, table, frame(table, rows))


def reads(
    meter_id: str,
    times: Sequence[dt.datetime],
    quantity: str = "energy_import_kwh",
    values: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """Readings rows of one meter and quantity."""
    given = values if values is not None else [float(i) for i in range(len(times))]
    return [
        {
            "meter_id": meter_id,
            "ts": ts,
            "quantity": quantity,
            "value": value,
            "quality": [],
            "source": "test",
            "received_at": ts,
        }
        for ts, value in zip(times, given, strict=True)
    ]


def put_reads(lake: Path, *rows: list[dict[str, Any]]) -> None:
    put(lake, READINGS, [r for part in rows for r in part])


def rules_of(*rules: Mapping[str, Any], sinks: Sequence[Mapping[str, Any]] = ()) -> AlertRules:
    """Checked rules from dicts (as TOML would give them)."""
    data: dict[str, Any] = {"rules": [dict(r) for r in rules]}
    if sinks:
        data["sinks"] = [dict(s) for s in sinks]
    return parse_alert_rules(data, source="test.toml")


def conditions(lake: Path, rule: Mapping[str, Any], now: dt.datetime = NOW) -> pl.DataFrame:
    """The conditions one rule finds in the lake at ``now``, by meter_id."""
    (checked,) = rules_of(rule).rules
    return evaluate(lake, checked, now).collect().sort("meter_id")


class RecordingSink:
    """A sink that accepts everything (or nothing, when ``down``) and keeps what it got."""

    def __init__(self, name: str = "rec", *, down: bool = False) -> None:
        self._name = name
        self.down = down
        self.received: list[AlertEvent] = []

    @property
    def name(self) -> str:
        return self._name

    def send(self, events: Sequence[AlertEvent]) -> SendOutcome:
        if self.down:
            return SendOutcome((), "down")
        self.received.extend(events)
        return SendOutcome(tuple(range(len(events))))
