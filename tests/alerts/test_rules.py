"""The alert rules file: every problem is reported together, with its file, place, value and
what is valid; the shipped example loads."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from meterlake.alerts.rules import (
    AlertRulesError,
    MeterOfflineRule,
    MqttSink,
    TierThresholdRule,
    WebhookSink,
    load_alert_rules,
    parse_alert_rules,
    parse_timedelta,
)
from tests.conftest import REPO

OFFLINE = {"name": "offline", "kind": "meter_offline"}


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(AlertRulesError) as caught:
        parse_alert_rules(data, source="alerts.toml")
    head, *lines = str(caught.value).split("\n")
    assert head.startswith("alerts.toml: ")
    assert head.endswith(f"{len(lines)} problem{'s' if len(lines) > 1 else ''}:")
    return [line.strip() for line in lines]


def test_the_shipped_example_loads() -> None:
    rules = load_alert_rules(REPO / "examples" / "alerts.toml")
    kinds = {r.kind for r in rules.rules}
    assert kinds == {
        "tier_threshold",
        "surge",
        "anomaly",
        "meter_offline",
        "outage",
        "prepaid_low",
        "data_quality",
    }
    assert [s.type for s in rules.sinks] == ["log", "mqtt", "webhook"]
    offline = next(r for r in rules.rules if isinstance(r, MeterOfflineRule))
    assert rules.sink_names(offline) == ("log", "app", "crm")
    assert offline.silence == dt.timedelta(hours=2)


def test_defaults_and_durations() -> None:
    rules = parse_alert_rules(
        {"rules": [{"name": "tier", "kind": "tier_threshold", "within_days": 30}]}
    )
    (rule,) = rules.rules
    assert isinstance(rule, TierThresholdRule)
    assert (rule.severity, rule.cooldown, rule.sinks) == ("warning", dt.timedelta(hours=6), None)
    assert rules.sinks == ()
    assert rules.delivery.max_age == dt.timedelta(days=7)
    assert [parse_timedelta(v) for v in ("30m", "6h", "1d", "90s", 90, "1.5d")] == [
        dt.timedelta(minutes=30),
        dt.timedelta(hours=6),
        dt.timedelta(days=1),
        dt.timedelta(seconds=90),
        dt.timedelta(seconds=90),
        dt.timedelta(hours=36),
    ]


def test_sinks_are_typed_and_secrets_not_shown() -> None:
    rules = parse_alert_rules(
        {
            "rules": [OFFLINE],
            "sinks": [
                {"name": "phone", "type": "mqtt", "port": 1884, "password": "s3cret"},
                {
                    "name": "crm",
                    "type": "webhook",
                    "url": "https://crm.example/hook",
                    "headers": {"Authorization": "Bearer t0ken"},
                },
            ],
        }
    )
    mqtt, hook = rules.sinks
    assert isinstance(mqtt, MqttSink)
    assert isinstance(hook, WebhookSink)
    assert (mqtt.topic, mqtt.port, hook.retries) == (
        "meterlake/alerts/{severity}/{meter_id}",
        1884,
        3,
    )
    assert "s3cret" not in repr(rules)
    assert "t0ken" not in repr(rules)


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        (
            {"kind": "tier_threshold"},
            "[[rules]] #1 (r): give at_share (e.g. 0.9), within_days (e.g. 30) or both",
        ),
        (
            {"kind": "tier_threshold", "at_share": 1.5},
            "[[rules]] #1 (r) at_share = 1.5: Input should be less than or equal to 1",
        ),
        (
            {"kind": "surge", "min_score": "high"},
            "[[rules]] #1 (r) min_score = 'high': Input should be a valid number",
        ),
        (
            {"kind": "anomaly", "kinds": ["theft"]},
            "[[rules]] #1 (r) kinds.0 = 'theft': Input should be 'surge', 'drop', "
            "'sustained_drop', 'zero_with_voltage', 'reverse_energy', 'flat_line', "
            "'vacant_use' or 'isolation'",
        ),
        (
            {"kind": "meter_offline", "cooldown": "6 hours"},
            "[[rules]] #1 (r) cooldown = '6 hours': must be a duration such as '30m', '6h', "
            "'1d' or a number of seconds",
        ),
        (
            {"kind": "meter_offline", "cooldown": "10s"},
            "[[rules]] #1 (r) cooldown = '10s': Input should be greater than or equal to 1m",
        ),
        (
            {"kind": "meter_offline", "intervals": 200, "lookback": "1d"},
            "[[rules]] #1 (r): lookback (1d) must be longer than intervals x interval_minutes "
            "(50h)",
        ),
        (
            {"kind": "outage", "share": 0},
            "[[rules]] #1 (r) share = 0: Input should be greater than 0",
        ),
        (
            {"kind": "prepaid_low"},
            "[[rules]] #1 (r) below: required key is missing",
        ),
        (
            {"kind": "data_quality", "days": 0},
            "[[rules]] #1 (r) days = 0: Input should be greater than or equal to 1",
        ),
        (
            {"kind": "surge", "severity": "urgent"},
            "[[rules]] #1 (r) severity = 'urgent': Input should be 'info', 'warning' or 'critical'",
        ),
        (
            {"kind": "surge", "min_socre": 0.5},
            "[[rules]] #1 (r) min_socre: unknown key; allowed here: name, severity, cooldown, "
            "sinks, kind, min_score, lookback",
        ),
        (
            {"kind": "theft"},
            "[[rules]] #1 (r) kind = 'theft': one of tier_threshold, surge, anomaly, "
            "meter_offline, outage, prepaid_low, data_quality",
        ),
        (
            {},
            "[[rules]] #1 (r) kind: required, one of tier_threshold, surge, anomaly, "
            "meter_offline, outage, prepaid_low, data_quality",
        ),
        (
            {"kind": "surge", "sinks": ["sms"]},
            "[[rules]] #1 (r) sinks = ['sms']: no sink named 'sms'; defined: none",
        ),
    ],
)
def test_each_rule_problem_is_named(rule: dict[str, Any], expected: str) -> None:
    assert problems({"rules": [{"name": "r", **rule}]}) == [expected]


@pytest.mark.parametrize(
    ("sink", "expected"),
    [
        (
            {"type": "mqtt", "topic": "alerts/{customer}"},
            "[[sinks]] #1 (s) topic = 'alerts/{customer}': unknown field(s) 'customer'; use "
            "alert_id, rule, severity, meter_id, state",
        ),
        (
            {"type": "mqtt", "topic": "alerts/#"},
            "[[sinks]] #1 (s) topic = 'alerts/#': a topic to publish to: not empty, no '+', "
            "'#' or NUL",
        ),
        (
            {"type": "mqtt", "port": 70000},
            "[[sinks]] #1 (s) port = 70000: Input should be less than or equal to 65535",
        ),
        (
            {"type": "mqtt", "password": 1234},
            "[[sinks]] #1 (s) password = <hidden>: Input should be a valid string",
        ),
        (
            {"type": "webhook", "url": "ftp://crm.example"},
            "[[sinks]] #1 (s) url = 'ftp://crm.example': an http:// or https:// URL, e.g. "
            "'https://crm.example/alerts'",
        ),
        (
            {"type": "webhook", "url": "http://x", "retries": 99},
            "[[sinks]] #1 (s) retries = 99: Input should be less than or equal to 10",
        ),
        (
            {"type": "sms"},
            "[[sinks]] #1 (s) type = 'sms': one of log, mqtt, webhook",
        ),
    ],
)
def test_each_sink_problem_is_named(sink: dict[str, Any], expected: str) -> None:
    assert problems({"rules": [OFFLINE], "sinks": [{"name": "s", **sink}]}) == [expected]


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "rules": [
                {"name": "a", "kind": "surge", "sinks": ["log", "pager"]},
                {"name": "a", "kind": "outage", "min_meters": 0},
                {"name": "bad name!", "kind": "surge"},
            ],
            "sinks": [{"name": "log", "type": "log"}, {"name": "log", "type": "log"}],
            "delivery": {"max_per_run": 0},
            "rule": [],
        }
    )
    assert found == [
        "rule: unknown top-level key; allowed: rules, sinks, delivery",
        "[[rules]] #2 (a) min_meters = 0: Input should be greater than or equal to 1",
        "[[rules]] #3 (bad name!) name = 'bad name!': String should match pattern "
        "'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$'",
        "[delivery] max_per_run = 0: Input should be greater than or equal to 1",
        "[[rules]] #2 (a) name = 'a': already used by [[rules]] #1; names must be unique",
        "[[sinks]] #2 (log) name = 'log': already used by [[sinks]] #1; names must be unique",
        "[[rules]] #1 (a) sinks = ['log', 'pager']: no sink named 'pager'; defined: log",
    ]


def test_a_file_without_rules_or_of_the_wrong_shape() -> None:
    assert problems({}) == ["[[rules]]: none given; add at least one rule"]
    assert problems({"rules": {"name": "x"}}) == ["[[rules]]: must be tables ([[rules]] headers)"]


def test_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(AlertRulesError, match=r"nope\.toml: cannot read the alert rules"):
        load_alert_rules(missing)
    broken = tmp_path / "broken.toml"
    broken.write_text("[[rules]\nname = 1\n")
    with pytest.raises(AlertRulesError, match=r"broken\.toml: not valid TOML"):
        load_alert_rules(broken)
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nname = "x"\nkind = "surge"\nmin_score = 2\n')
    with pytest.raises(AlertRulesError) as caught:
        load_alert_rules(bad)
    assert str(caught.value) == (
        f"{bad}: 1 problem:\n  [[rules]] #1 (x) min_score = 2: Input should be less than or "
        "equal to 1"
    )
