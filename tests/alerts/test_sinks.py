"""Sinks against real peers: Mosquitto (QoS 1) and a local HTTP server; a sink that is down
loses nothing, and nothing is delivered twice."""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
import polars as pl
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterlake.alerts.job import AlertRunResult, run_alerts
from meterlake.alerts.rules import AlertRules, WebhookSink
from meterlake.alerts.sinks import AlertEvent, SendOutcome, WebhookDestination, events_of
from meterlake.config.schemas import ALERT_DELIVERIES, ALERTS, METERS
from meterlake.storage.scan import scan
from tests.alerts.helpers import HOUR, NOW, RecordingSink, put, rules_of
from tests.mqtt_broker import Broker, free_port

OFFLINE = {"name": "offline", "kind": "meter_offline", "severity": "critical"}


def offline_meters(lake: Path, *meter_ids: str) -> None:
    """Meters in the master data without any reading: each one is offline."""
    put(lake, METERS, [{"meter_id": m, "updated_at": NOW - 24 * HOUR} for m in meter_ids])


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.02)


def delivered_rows(lake: Path) -> pl.DataFrame:
    return scan(lake, ALERT_DELIVERIES).collect().sort("sink", "alert_id")


# --- MQTT ----------------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    server = Broker(tmp_path)
    server.start()
    yield server
    server.stop()


class Subscriber:
    """A QoS 1 subscriber of ``meterlake/alerts/#`` that keeps (topic, payload, qos)."""

    def __init__(self, port: int) -> None:
        self.messages: list[tuple[str, dict[str, Any], int]] = []
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="test-subscriber")
        subscribed = threading.Event()
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            (m.topic, json.loads(m.payload), m.qos)
        )
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe("meterlake/alerts/#", qos=1)
        assert subscribed.wait(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_rules(port: int) -> AlertRules:
    sink = {"name": "app", "type": "mqtt", "port": port, "timeout": "2s", "client_id": "alerts-t"}
    return rules_of(OFFLINE, sinks=[sink])


def test_mqtt_sink_publishes_qos1_and_records_the_delivery(lake: Path, broker: Broker) -> None:
    offline_meters(lake, "m1", "m2")
    subscriber = Subscriber(broker.port)
    try:
        result = run_alerts(lake, mqtt_rules(broker.port), NOW)
        assert (result.delivered, result.pending, result.errors) == ({"app": 2}, {"app": 0}, {})
        wait_for(lambda: len(subscriber.messages) == 2)
    finally:
        subscriber.close()
    topic, payload, qos = sorted(subscriber.messages, key=lambda m: m[0])[0]
    assert (topic, qos) == ("meterlake/alerts/critical/m1", 1)
    event = result.events.filter(pl.col("meter_id") == "m1").row(0, named=True)
    assert payload == {
        "alert_id": event["alert_id"],
        "rule": "offline",
        "severity": "critical",
        "meter_id": "m1",
        "ts": "2026-10-10T12:00:00Z",
        "state": "raised",
        "message": "no reading in the last 7d (offline after 1 h (4 x 15 min))",
        "values": {"last_reading": None, "silent_minutes": None, "limit_minutes": 60},
    }
    rows = delivered_rows(lake)
    assert rows.select("alert_id", "state", "ts", "sink").rows() == [
        (e["alert_id"], "raised", NOW, "app")
        for e in result.events.sort("alert_id").iter_rows(named=True)
    ]


def test_a_broker_outage_loses_nothing_and_delivers_once(lake: Path, broker: Broker) -> None:
    offline_meters(lake, "m1")
    rules = mqtt_rules(broker.port)
    broker.stop()
    down = run_alerts(lake, rules, NOW)
    assert (down.delivered, down.pending) == ({"app": 0}, {"app": 1})
    assert "cannot connect" in down.errors["app"]
    assert scan(lake, ALERTS).collect().height == 1  # the lake has the event all the same
    assert delivered_rows(lake).height == 0

    broker.start()
    subscriber = Subscriber(broker.port)
    try:
        back = run_alerts(lake, rules, NOW + HOUR)  # within the cooldown: no new event
        assert back.events.height == 0
        assert (back.delivered, back.pending) == ({"app": 1}, {"app": 0})
        again = run_alerts(lake, rules, NOW + HOUR)
        assert (again.delivered, again.pending) == ({"app": 0}, {"app": 0})
        wait_for(lambda: len(subscriber.messages) >= 1)
        time.sleep(0.2)  # a duplicate would arrive now
    finally:
        subscriber.close()
    assert [m[1]["ts"] for m in subscriber.messages] == ["2026-10-10T12:00:00Z"]
    assert delivered_rows(lake).height == 1


# --- webhook -------------------------------------------------------------------------------------


class Hook:
    """A local HTTP server (in a thread) that answers POSTs with scripted statuses, then 200."""

    def __init__(self, port: int | None = None) -> None:
        self.port = port or free_port()
        self.statuses: list[int] = []
        self.requests = 0
        self.accepted: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.server: ThreadingHTTPServer | None = None
        self.thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    def start(self) -> Hook:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["content-length"]))
                hook.requests += 1
                status = hook.statuses.pop(0) if hook.statuses else 200
                if status == 200:
                    hook.accepted.append(json.loads(body))
                    hook.headers.append(dict(self.headers))
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()
        return self

    def stop(self) -> None:
        if self.server is not None and self.thread is not None:
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()
        self.server = None


@pytest.fixture
def hook() -> Iterator[Hook]:
    server = Hook()
    yield server
    server.stop()


def webhook_rules(hook: Hook, **extra: Any) -> AlertRules:
    sink = {
        "name": "crm",
        "type": "webhook",
        "url": hook.url,
        "retries": 2,
        "backoff": "10ms",
        "timeout": "2s",
        "headers": {"Authorization": "Bearer t0ken"},
        **extra,
    }
    return rules_of(OFFLINE, sinks=[sink, {"name": "log", "type": "log"}])


def test_webhook_retries_on_503(lake: Path, hook: Hook) -> None:
    offline_meters(lake, "m1")
    hook.start().statuses = [503, 503]
    result = run_alerts(lake, webhook_rules(hook), NOW)
    assert (result.delivered, result.pending) == ({"crm": 1, "log": 1}, {"crm": 0, "log": 0})
    assert hook.requests == 3
    (body,) = hook.accepted
    assert (body["meter_id"], body["state"], body["rule"]) == ("m1", "raised", "offline")
    assert hook.headers[0]["Authorization"] == "Bearer t0ken"
    assert hook.headers[0]["content-type"] == "application/json"


def test_webhook_backoff_doubles(hook: Hook) -> None:
    hook.start().statuses = [503, 503, 503]
    spec = WebhookSink(name="crm", type="webhook", url=hook.url, retries=3, backoff="0.5s")
    waits: list[float] = []
    sink = WebhookDestination(spec, sleep=waits.append)
    outcome = sink.send([event("a1")])
    assert outcome == SendOutcome((0,))
    assert waits == [0.5, 1.0, 2.0]


def event(alert_id: str) -> AlertEvent:
    return AlertEvent(alert_id, "r", "info", "m1", NOW, "raised", "text", '{"x": 1}')


def test_webhook_4xx_keeps_the_event_pending_and_goes_on(
    lake: Path, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    offline_meters(lake, "m1", "m2")
    hook.start().statuses = [422]
    with caplog.at_level(logging.ERROR, logger="meterlake.alerts"):
        first = run_alerts(lake, webhook_rules(hook), NOW)
    assert (first.delivered["crm"], first.pending["crm"]) == (1, 1)
    assert hook.requests == 2  # a 4xx is not retried, and the next event is still sent
    assert "HTTP 422 Unprocessable Entity (not retried" in first.errors["crm"]
    assert any("HTTP 422" in r.getMessage() for r in caplog.records)
    second = run_alerts(lake, webhook_rules(hook), NOW)
    assert (second.delivered["crm"], second.pending["crm"]) == (1, 0)
    assert sorted(b["meter_id"] for b in hook.accepted) == ["m1", "m2"]


def test_a_webhook_outage_loses_nothing_and_stops_no_other_sink(lake: Path, hook: Hook) -> None:
    offline_meters(lake, "m1", "m2")
    rules = webhook_rules(hook)
    down = run_alerts(lake, rules, NOW)  # nothing listens on the port
    assert (down.delivered, down.pending) == ({"crm": 0, "log": 2}, {"crm": 2, "log": 0})
    assert "ConnectError" in down.errors["crm"]
    hook.start()
    back = run_alerts(lake, rules, NOW + HOUR)
    assert (back.delivered, back.pending) == ({"crm": 2, "log": 0}, {"crm": 0, "log": 0})
    again = run_alerts(lake, rules, NOW + HOUR)
    assert again.delivered == {"crm": 0, "log": 0}
    assert hook.requests == 2
    assert sorted(b["meter_id"] for b in hook.accepted) == ["m1", "m2"]
    assert delivered_rows(lake).group_by("sink").len().sort("sink").rows() == [
        ("crm", 2),
        ("log", 2),
    ]


# --- delivery bookkeeping ------------------------------------------------------------------------


class BrokenSink(RecordingSink):
    def send(self, events: Sequence[AlertEvent]) -> SendOutcome:
        raise RuntimeError("a bug in the sink")


def test_a_failing_sink_does_not_stop_the_others(lake: Path) -> None:
    offline_meters(lake, "m1")
    rules = rules_of(OFFLINE, sinks=[{"name": "a", "type": "log"}, {"name": "b", "type": "log"}])
    good = RecordingSink("b")
    result = run_alerts(lake, rules, NOW, sinks={"a": BrokenSink("a"), "b": good})
    assert (result.delivered, result.pending) == ({"a": 0, "b": 1}, {"a": 1, "b": 0})
    assert result.errors == {"a": "sink a failed: RuntimeError: a bug in the sink"}
    assert len(good.received) == 1


def test_routing_and_the_bound_per_run(lake: Path) -> None:
    offline_meters(lake, "m1", "m2", "m3")
    rules = rules_of(
        OFFLINE,
        {"name": "quiet", "kind": "meter_offline", "intervals": 2, "sinks": ["b"]},
        sinks=[{"name": "a", "type": "log"}, {"name": "b", "type": "log"}],
    )
    rules = AlertRules(
        rules.rules,
        rules.sinks,
        rules.delivery.model_copy(update={"max_per_run": 4}),
        rules.source,
    )
    a, b = RecordingSink("a"), RecordingSink("b")
    first = run_alerts(lake, rules, NOW, sinks={"a": a, "b": b})
    assert first.events.height == 6
    assert (first.delivered, first.pending) == ({"a": 3, "b": 4}, {"a": 0, "b": 2})
    assert {e.rule for e in a.received} == {"offline"}
    second = run_alerts(lake, rules, NOW, sinks={"a": a, "b": b})
    assert (second.delivered, second.pending) == ({"a": 0, "b": 2}, {"a": 0, "b": 0})
    assert len({(e.alert_id, e.state) for e in b.received}) == len(b.received) == 6


def test_events_older_than_max_age_are_not_sent(lake: Path) -> None:
    offline_meters(lake, "m1")
    rules = rules_of(OFFLINE, sinks=[{"name": "a", "type": "log"}])
    down = RecordingSink("a", down=True)
    assert run_alerts(lake, rules, NOW, sinks={"a": down}).pending == {"a": 1}
    late = run_alerts(lake, rules, NOW + dt.timedelta(days=8), sinks={"a": RecordingSink("a")})
    # the old raise is no longer sent; the renotification of the still-open alert is
    assert late.events["state"].to_list() == ["renotified"]
    assert (late.delivered, late.pending) == ({"a": 1}, {"a": 0})


def test_log_sink_levels(lake: Path, caplog: pytest.LogCaptureFixture) -> None:
    offline_meters(lake, "m1")
    rules = rules_of(
        OFFLINE,
        {"name": "info", "kind": "meter_offline", "severity": "info"},
        sinks=[{"name": "log", "type": "log"}],
    )
    with caplog.at_level(logging.INFO, logger="meterlake.alerts"):
        result: AlertRunResult = run_alerts(lake, rules, NOW)
    assert result.delivered == {"log": 2}
    lines = sorted((r.levelname, r.getMessage()) for r in caplog.records)
    assert lines == [
        (
            "ERROR",
            "raised offline m1 [critical]: no reading in the last 7d (offline after 1 h "
            "(4 x 15 min))",
        ),
        (
            "INFO",
            "raised info m1 [info]: no reading in the last 7d (offline after 1 h (4 x 15 min))",
        ),
    ]


def test_events_of_a_frame() -> None:
    frame = pl.DataFrame(
        [("a1", "r", "info", "m1", NOW, "raised", "text", "{}")],
        schema=ALERTS.schema,
        orient="row",
    )
    (only,) = events_of(frame)
    assert only.payload()["values"] == {}
    assert only.ts == NOW
