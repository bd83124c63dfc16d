"""Each rule kind on hand-made lake data: what holds at ``now``, and the message it says."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import polars as pl

from meterlake.alerts.conditions import CONDITION_SCHEMA, evaluate_rules
from meterlake.config.schemas import (
    ANOMALY_SCORES,
    INTERVALS,
    METERS,
    TIER_PROGRESS,
)
from tests.alerts.helpers import (
    DAY,
    HOUR,
    MIN,
    NOW,
    TODAY,
    conditions,
    put,
    put_reads,
    reads,
    rules_of,
)


def messages(found: pl.DataFrame) -> dict[str, str]:
    return dict(zip(found["meter_id"], found["message"], strict=True))


def values(found: pl.DataFrame, meter_id: str) -> dict[str, Any]:
    row = found.filter(pl.col("meter_id") == meter_id)
    return dict(json.loads(row["values_json"].item()))


def meters(lake: Path, *rows: dict[str, Any]) -> None:
    put(lake, METERS, [{"updated_at": NOW - 30 * DAY, **r} for r in rows])


# --- tier_threshold ------------------------------------------------------------------------------


def progress(meter_id: str, **row: Any) -> dict[str, Any]:
    base = {
        "meter_id": meter_id,
        "as_of": TODAY - dt.timedelta(days=1),
        "tariff_id": "cn-zj-residential-tiered",
        "tier_reset": "annual",
        "window_start": dt.date(2026, 1, 1),
        "window_end": dt.date(2027, 1, 1),
        "energy_kwh": 1000.0,
        "tier": 1,
        "next_threshold_kwh": 2760.0,
        "threshold_share": 1000 / 2760,
        "daily_kwh": 5.0,
        "projected_crossing": None,
        "days_to_crossing": None,
        "run_id": "ana-1",
        "computed_at": NOW - 12 * HOUR,
    }
    return base | row


def test_tier_threshold(lake: Path) -> None:
    put(
        lake,
        TIER_PROGRESS,
        [
            progress(
                "m-near",
                energy_kwh=2500.5,
                threshold_share=0.906,
                daily_kwh=8.1,
                projected_crossing=dt.date(2026, 12, 2),
                days_to_crossing=53,
            ),
            progress("m-soon", days_to_crossing=20, projected_crossing=dt.date(2026, 10, 29)),
            # the latest as_of counts: it was near, it no longer is (a corrected run)
            progress("m-was", as_of=TODAY - dt.timedelta(days=2), threshold_share=0.95),
            progress("m-was", threshold_share=0.5),
            # two runs of one day: the later computed_at counts
            progress("m-rerun", threshold_share=0.5),
            progress("m-rerun", threshold_share=0.97, run_id="ana-2", computed_at=NOW - HOUR),
            progress("m-last-tier", tier=3, next_threshold_kwh=None, threshold_share=None),
            progress("m-stale", as_of=TODAY - dt.timedelta(days=9), threshold_share=0.99),
            # a monthly window, share computed from the energy when not given
            progress(
                "m-month",
                tier_reset="monthly",
                window_start=dt.date(2026, 10, 1),
                window_end=dt.date(2026, 11, 1),
                energy_kwh=190.0,
                next_threshold_kwh=200.0,
                threshold_share=None,
                daily_kwh=None,
            ),
        ],
    )
    share = conditions(lake, {"name": "tier", "kind": "tier_threshold", "at_share": 0.9})
    assert messages(share) == {
        "m-month": "used 95% of the 200 kWh tier-1 allowance for 2026-10",
        "m-near": "used 91% of the 2760 kWh tier-1 allowance for 2026; at 8.1 kWh/day it "
        "crosses on 2026-12-02",
        "m-rerun": "used 97% of the 2760 kWh tier-1 allowance for 2026; at 5 kWh/day it does "
        "not cross this window",
    }
    assert values(share, "m-near") == {
        "as_of": "2026-10-09",
        "tariff_id": "cn-zj-residential-tiered",
        "tier": 1,
        "energy_kwh": 2500.5,
        "next_threshold_kwh": 2760.0,
        "threshold_share": 0.906,
        "daily_kwh": 8.1,
        "projected_crossing": "2026-12-02",
        "days_to_crossing": 53,
        "window_start": "2026-01-01",
        "window_end": "2027-01-01",
    }
    soon = conditions(lake, {"name": "tier", "kind": "tier_threshold", "within_days": 30})
    assert soon["meter_id"].to_list() == ["m-soon"]
    either = conditions(
        lake, {"name": "tier", "kind": "tier_threshold", "at_share": 0.9, "within_days": 30}
    )
    assert either["meter_id"].to_list() == ["m-month", "m-near", "m-rerun", "m-soon"]
    assert either.schema == CONDITION_SCHEMA


# --- surge and anomaly ---------------------------------------------------------------------------


def score(
    meter_id: str, days_ago: int, kinds: list[str], value: float, **row: Any
) -> dict[str, Any]:
    base = {
        "meter_id": meter_id,
        "day": TODAY - dt.timedelta(days=days_ago),
        "score": value,
        "kinds": kinds,
        "reasons": [f"{k} seen" for k in kinds],
        "energy_kwh": 21.7,
        "baseline_kwh": 7.0,
        "robust_z": 9.4,
        "isolation": 0.5,
        "run_id": "ana-1",
        "computed_at": NOW - 6 * HOUR,
    }
    return base | row


def test_surge_is_the_most_recent_day(lake: Path) -> None:
    put(
        lake,
        ANOMALY_SCORES,
        [
            score("m-surge", 1, ["surge", "isolation"], 0.9),
            score("m-surge", 2, [], 0.1),
            score("m-past", 2, ["surge"], 0.9),
            score("m-past", 1, [], 0.1),  # a newer day without a surge clears it
            score("m-rerun", 1, ["surge"], 0.9),
            score("m-rerun", 1, [], 0.2, run_id="ana-2", computed_at=NOW - HOUR),
            score("m-weak", 1, ["surge"], 0.3),
            score("m-nobase", 1, ["surge"], 0.8, baseline_kwh=None),
            score("m-old", 5, ["surge"], 0.9),  # not within the lookback (2 days)
        ],
    )
    found = conditions(lake, {"name": "surge", "kind": "surge", "min_score": 0.5})
    assert messages(found) == {
        "m-nobase": "usage surge on 2026-10-09: 21.7 kWh (anomaly score 0.8)",
        "m-surge": "usage surge on 2026-10-09: 21.7 kWh, 3.1x the usual 7 kWh (anomaly score 0.9)",
    }
    assert values(found, "m-surge")["kinds"] == ["surge", "isolation"]
    assert conditions(lake, {"name": "surge", "kind": "surge"})["meter_id"].to_list() == [
        "m-nobase",
        "m-surge",
        "m-weak",
    ]


def test_anomaly_kinds_score_and_lookback(lake: Path) -> None:
    put(
        lake,
        ANOMALY_SCORES,
        [
            score("m-theft", 3, ["sustained_drop"], 0.9, reasons=["use fell to 20% for 5 days"]),
            score("m-theft", 1, ["drop"], 0.95),
            score("m-old", 10, ["flat_line"], 0.99),
            score("m-low", 1, ["vacant_use"], 0.5),
        ],
    )
    rule = {"name": "tamper", "kind": "anomaly", "kinds": ["sustained_drop", "flat_line"]}
    found = conditions(lake, rule)
    assert messages(found) == {
        "m-theft": "suspicious use on 2026-10-07: sustained_drop (anomaly score 0.9; 1 flagged "
        "day(s) in the last 7 days): use fell to 20% for 5 days"
    }
    any_kind = conditions(lake, {"name": "tamper", "kind": "anomaly", "lookback": "1d"})
    assert messages(any_kind) == {
        "m-theft": "suspicious use on 2026-10-09: drop (anomaly score 0.95; 1 flagged day(s) "
        "in the last day): drop seen"
    }
    low = conditions(lake, {"name": "tamper", "kind": "anomaly", "min_score": 0.4})
    assert low["meter_id"].to_list() == ["m-low", "m-theft"]
    assert values(low, "m-theft")["flagged_days"] == 2


# --- meter_offline -------------------------------------------------------------------------------


def test_meter_offline(lake: Path) -> None:
    meters(lake, {"meter_id": "m-ok"}, {"meter_id": "m-quiet"}, {"meter_id": "m-never"})
    put_reads(
        lake,
        reads("m-ok", [NOW - 3 * HOUR, NOW - 30 * MIN]),
        reads("m-quiet", [NOW - 5 * HOUR, NOW - 3 * HOUR], quantity="power_w"),
        reads("m-unlisted", [NOW - 2 * DAY - 90 * MIN]),  # not in the master data, but seen
        reads("m-future", [NOW - 2 * HOUR, NOW + HOUR]),  # a reading after now does not count
        reads("m-gone", [NOW - 10 * DAY]),  # outside the lookback and not in the master data
    )
    found = conditions(lake, {"name": "offline", "kind": "meter_offline", "intervals": 4})
    assert messages(found) == {
        "m-future": "no reading for 2 h (last at 2026-10-10 10:00 UTC); offline after 1 h "
        "(4 x 15 min)",
        "m-never": "no reading in the last 7d (offline after 1 h (4 x 15 min))",
        "m-quiet": "no reading for 3 h (last at 2026-10-10 09:00 UTC); offline after 1 h "
        "(4 x 15 min)",
        "m-unlisted": "no reading for 2 d 1 h (last at 2026-10-08 10:30 UTC); offline after 1 h "
        "(4 x 15 min)",
    }
    assert values(found, "m-quiet") == {
        "last_reading": "2026-10-10T09:00:00+00:00",
        "silent_minutes": 180,
        "limit_minutes": 60,
    }
    patient = {"name": "offline", "kind": "meter_offline", "intervals": 16}
    assert conditions(lake, patient)["meter_id"].to_list() == ["m-never", "m-unlisted"]


# --- outage --------------------------------------------------------------------------------------


def test_outage_per_feeder(lake: Path) -> None:
    meters(
        lake,
        *({"meter_id": f"a{i}", "feeder": "f1"} for i in range(4)),
        *({"meter_id": f"b{i}", "feeder": "f2"} for i in range(4)),
        {"meter_id": "loose"},  # no feeder: not part of any outage
    )
    recent = [NOW - 10 * MIN, NOW - 5 * MIN]
    put_reads(
        lake,
        # f1: a0, a1 silent (last reads before the window), a2 low voltage, a3 fine
        reads("a0", [NOW - 40 * MIN]),
        reads("a2", recent, "voltage_v", [231.0, 120.0]),
        reads("a3", recent, "voltage_v", [100.0, 229.0]),  # recovered: its latest counts
        # f2: one silent meter only
        *(reads(f"b{i}", recent, "voltage_l1_v", [230.0, 230.0]) for i in range(1, 4)),
    )
    rule = {
        "name": "outage",
        "kind": "outage",
        "minutes": 15,
        "min_meters": 3,
        "share": 0.5,
        "voltage_below": 180,
    }
    found = conditions(lake, rule)
    assert messages(found) == {
        "feeder:f1": "feeder f1: 3 of 4 meters (75%) down at once: 2 silent for the last "
        "15 min, 1 below 180 V"
    }
    assert values(found, "feeder:f1") == {
        "feeder": "f1",
        "meters": 4,
        "down": 3,
        "silent": 2,
        "low_voltage": 1,
        "share": 0.75,
    }
    silent_only = {"name": "outage", "kind": "outage", "min_meters": 2, "share": 0.5}
    assert messages(conditions(lake, silent_only)) == {
        "feeder:f1": "feeder f1: 2 of 4 meters (50%) down at once: silent for the last 15 min"
    }
    strict = {**rule, "min_meters": 4}
    assert conditions(lake, strict).height == 0


# --- prepaid_low ---------------------------------------------------------------------------------


def test_prepaid_low_uses_the_latest_balance_of_prepaid_meters(lake: Path) -> None:
    meters(
        lake,
        {"meter_id": "p-low", "prepaid": True},
        {"meter_id": "p-topped-up", "prepaid": True},
        {"meter_id": "postpaid", "prepaid": False},
        {"meter_id": "p-new", "prepaid": False},
    )
    put(lake, METERS, [{"meter_id": "p-new", "prepaid": True, "updated_at": NOW - DAY}])
    times = [NOW - 3 * HOUR, NOW - HOUR]
    put_reads(
        lake,
        reads("p-low", times, "balance", [50.0, 8.5]),
        reads("p-topped-up", times, "balance", [5.0, 50.0]),
        reads("postpaid", times, "balance", [1.0, 1.0]),
        reads("p-new", times, "balance", [3.0, 2.0]),
        reads("p-low", [NOW + HOUR], "balance", [100.0]),  # after now: not yet
    )
    found = conditions(lake, {"name": "prepaid", "kind": "prepaid_low", "below": 10})
    assert messages(found) == {
        "p-low": "prepaid balance 8.50 is below the alert level 10.00 (read 2026-10-10 11:00 UTC)",
        "p-new": "prepaid balance 2.00 is below the alert level 10.00 (read 2026-10-10 11:00 UTC)",
    }
    assert values(found, "p-low") == {
        "balance": 8.5,
        "below": 10.0,
        "read_at": "2026-10-10T11:00:00+00:00",
    }


# --- data_quality --------------------------------------------------------------------------------


def intervals(
    meter_id: str, start: dt.datetime, statuses: list[str], version: int = 1
) -> list[dict[str, Any]]:
    return [
        {
            "meter_id": meter_id,
            "interval_start": start + i * 15 * MIN,
            "interval_minutes": 15,
            "energy_import_kwh": 0.1,
            "energy_export_kwh": 0.0,
            "status": status,
            "flags": [],
            "version": version,
            "run_id": f"vee-{version}",
        }
        for i, status in enumerate(statuses)
    ]


def test_data_quality_counts_current_versions_in_the_window(lake: Path) -> None:
    start = NOW - DAY
    put(
        lake,
        INTERVALS,
        [
            *intervals("m-poor", start, ["actual"] * 86 + ["estimated"] * 6 + ["missing"] * 4),
            *intervals("m-fixed", start, ["estimated"] * 10 + ["actual"] * 86),
            # late reads replaced the estimates: version 2 is actual
            *intervals("m-fixed", start, ["actual"] * 10, version=2),
            # a bad week before the window does not count
            *intervals("m-fine", start - 3 * DAY, ["missing"] * 96),
            *intervals("m-fine", start, ["actual"] * 96),
        ],
    )
    found = conditions(lake, {"name": "dq", "kind": "data_quality", "days": 1})
    assert messages(found) == {
        "m-poor": "only 90% of 96 intervals of the last day are actual readings "
        "(at least 95% expected); 6 estimated, 4 missing"
    }
    assert values(found, "m-poor") == {
        "intervals": 96,
        "actual": 86,
        "estimated": 6,
        "edited": 0,
        "missing": 4,
        "suspect": 0,
        "actual_share": 86 / 96,
    }
    week = conditions(lake, {"name": "dq", "kind": "data_quality", "days": 7})
    assert week["meter_id"].to_list() == ["m-fine", "m-poor"]


def test_every_rule_on_an_empty_lake(lake: Path) -> None:
    rules = rules_of(
        {"name": "a", "kind": "tier_threshold", "at_share": 0.9},
        {"name": "b", "kind": "surge"},
        {"name": "c", "kind": "anomaly"},
        {"name": "d", "kind": "meter_offline"},
        {"name": "e", "kind": "outage"},
        {"name": "f", "kind": "prepaid_low", "below": 1},
        {"name": "g", "kind": "data_quality"},
    )
    found = evaluate_rules(lake, rules.rules, NOW)
    assert found.height == 0
    assert found.schema == CONDITION_SCHEMA
