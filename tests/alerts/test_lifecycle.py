"""The life cycle with an injected clock: raised once, renotified only after the cooldown,
resolved when the condition clears, and a new alert when it comes back."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import polars as pl
import pytest

from meterlake.alerts.conditions import CONDITION_SCHEMA
from meterlake.alerts.job import run_alerts
from meterlake.alerts.lifecycle import alert_events, rule_policies
from meterlake.config.schemas import ALERTS, METERS
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.scan import open_alerts, scan
from tests.alerts.helpers import (
    HOUR,
    MIN,
    NOW,
    RecordingSink,
    frame,
    put,
    put_reads,
    reads,
    rules_of,
)
from tests.conftest import sample_frame

RULES = rules_of(
    {"name": "offline", "kind": "meter_offline", "severity": "critical", "cooldown": "6h"},
    {"name": "prepaid", "kind": "prepaid_low", "below": 10, "cooldown": "1d"},
)
POLICIES = rule_policies(RULES.rules)


def holding(*pairs: tuple[str, str]) -> pl.LazyFrame:
    return pl.LazyFrame(
        {
            "rule": [r for r, _ in pairs],
            "meter_id": [m for _, m in pairs],
            "message": [f"{r} {m}" for r, m in pairs],
            "values_json": ["{}"] * len(pairs),
        },
        schema=CONDITION_SCHEMA,
    )


class Store:
    """An in-memory alerts table: the life cycle's events appended, as the job writes them."""

    def __init__(self) -> None:
        self.rows = pl.DataFrame(schema=ALERTS.schema)

    def step(self, conditions: pl.LazyFrame, now: dt.datetime) -> pl.DataFrame:
        events = alert_events(open_alerts(self.rows.lazy()), conditions, POLICIES, now)
        self.rows = pl.concat([self.rows, events])
        return events


def test_raise_once_renotify_after_cooldown_resolve_and_raise_again() -> None:
    store = Store()
    both = holding(("offline", "m1"), ("prepaid", "m1"))
    first = store.step(both, NOW)
    assert first.select("rule", "meter_id", "state", "severity").rows() == [
        ("offline", "m1", "raised", "critical"),
        ("prepaid", "m1", "raised", "warning"),
    ]
    assert first["ts"].to_list() == [NOW, NOW]
    assert first["alert_id"].str.starts_with("al-").all()
    assert first["alert_id"].n_unique() == 2
    # the same state and clock: nothing new; within the cooldown: nothing new
    assert store.step(both, NOW).height == 0
    assert store.step(both, NOW + 6 * HOUR - MIN).height == 0
    renotified = store.step(both, NOW + 6 * HOUR)
    assert renotified.select("alert_id", "rule", "state").rows() == [
        (first["alert_id"][0], "offline", "renotified")
    ]
    # the cooldown starts again at the last notice
    assert store.step(both, NOW + 11 * HOUR).height == 0
    resolved = store.step(holding(("prepaid", "m1")), NOW + 12 * HOUR)
    assert resolved.select("alert_id", "state").rows() == [(first["alert_id"][0], "resolved")]
    assert resolved["message"].item() == "cleared (raised 2026-10-10 12:00 UTC): offline m1"
    assert resolved["severity"].item() == "critical"
    assert store.step(holding(("prepaid", "m1")), NOW + 13 * HOUR).height == 0
    again = store.step(both, NOW + 14 * HOUR)
    assert again.select("rule", "state").rows() == [("offline", "raised")]
    assert again["alert_id"].item() not in set(first["alert_id"])
    assert open_alerts(store.rows.lazy()).collect().height == 2


def test_alert_id_is_a_stable_hash_of_rule_meter_and_raise_time() -> None:
    one = alert_events(
        open_alerts(pl.LazyFrame(schema=ALERTS.schema)), holding(("offline", "m1")), POLICIES, NOW
    )
    two = alert_events(
        open_alerts(pl.LazyFrame(schema=ALERTS.schema)), holding(("offline", "m1")), POLICIES, NOW
    )
    later = alert_events(
        open_alerts(pl.LazyFrame(schema=ALERTS.schema)),
        holding(("offline", "m1")),
        POLICIES,
        NOW + MIN,
    )
    assert one["alert_id"].item() == two["alert_id"].item() != later["alert_id"].item()
    assert len(one["alert_id"].item()) == len("al-") + 24


def test_alerts_of_rules_not_evaluated_are_left_alone() -> None:
    store = Store()
    store.step(holding(("offline", "m1")), NOW)
    only_prepaid = rule_policies([r for r in RULES.rules if r.name == "prepaid"])
    events = alert_events(open_alerts(store.rows.lazy()), holding(), only_prepaid, NOW + HOUR)
    assert events.height == 0


def test_open_alerts_matches_the_catalogue_view(lake: Path) -> None:
    rows = sample_frame(ALERTS)
    same_instant = rows.filter(pl.col("alert_id") == "a-2").with_columns(
        pl.lit("resolved").alias("state")
    )
    renotified = rows.filter(pl.col("alert_id") == "a-2").with_columns(
        pl.lit("renotified").alias("state"), pl.col("ts") - dt.timedelta(hours=1)
    )
    extra = frame(
        ALERTS,
        [
            {"alert_id": "a-3", "rule": "r", "meter_id": "m-3", "ts": NOW, "state": "raised"},
            {
                "alert_id": "a-3",
                "rule": "r",
                "meter_id": "m-3",
                "ts": NOW + HOUR,
                "state": "renotified",
            },
        ],
    )
    put(lake, ALERTS, pl.concat([rows, same_instant, renotified, extra]).to_dicts())
    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        view = con.sql(
            "SELECT alert_id, state, ts, raised_at FROM alerts_open ORDER BY alert_id"
        ).pl()
    finally:
        con.close()
    ours = (
        open_alerts(scan(lake, ALERTS))
        .select("alert_id", "state", "ts", "raised_at")
        .sort("alert_id")
        .collect()
    )
    assert ours.rows() == view.rows()
    assert ours.rows() == [("a-3", "renotified", NOW + HOUR, NOW)]


def test_a_run_on_the_lake_with_an_injected_clock(lake: Path) -> None:
    put(lake, METERS, [{"meter_id": "m1", "updated_at": NOW - 30 * 24 * HOUR}])
    put_reads(lake, reads("m1", [NOW - 3 * HOUR]))
    rules = rules_of(
        {"name": "offline", "kind": "meter_offline", "cooldown": "6h"},
        sinks=[{"name": "rec", "type": "log"}],
    )
    sink = RecordingSink("rec")

    def run(now: dt.datetime) -> pl.DataFrame:
        return run_alerts(lake, rules, now, sinks={"rec": sink}).events

    assert run(NOW)["state"].to_list() == ["raised"]
    assert run(NOW).height == 0
    assert run(NOW + HOUR).height == 0
    assert run(NOW + 6 * HOUR)["state"].to_list() == ["renotified"]
    put_reads(lake, reads("m1", [NOW + 6 * HOUR + 30 * MIN]))
    assert run(NOW + 7 * HOUR)["state"].to_list() == ["resolved"]
    assert run(NOW + 7 * HOUR).height == 0
    stored = scan(lake, ALERTS).collect().sort("ts")
    assert stored["state"].to_list() == ["raised", "renotified", "resolved"]
    assert stored["alert_id"].n_unique() == 1
    # every event reached the sink exactly once
    assert [e.state for e in sink.received] == ["raised", "renotified", "resolved"]


def test_now_must_be_aware(lake: Path) -> None:
    with pytest.raises(ValueError, match="naive"):
        run_alerts(lake, RULES, NOW.replace(tzinfo=None), sinks={})


def test_a_feeder_name_that_cannot_be_a_meter_id_is_reported_not_stored(lake: Path) -> None:
    put(
        lake,
        METERS,
        [{"meter_id": f"m{i}", "feeder": "North 1", "updated_at": NOW - HOUR} for i in range(3)],
    )
    rules = rules_of({"name": "outage", "kind": "outage", "min_meters": 3})
    result = run_alerts(lake, rules, NOW, sinks={})
    assert result.events.height == 0
    assert result.unsafe["meter_id"].to_list() == ["feeder:North 1"]
