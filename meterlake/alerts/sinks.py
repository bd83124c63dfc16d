"""Where alert events go besides the lake: the log, an MQTT broker, a webhook.

A sink takes a batch of :class:`AlertEvent` and says which of them it *accepted*: the broker
acknowledged it (MQTT QoS 1 PUBACK), the server answered 2xx (webhook), or it was logged. Only
accepted events get an ``alert_deliveries`` row; every other event stays pending and is sent
again on a later run, so a sink that is down loses nothing. A sink never raises for a failure
of its own peer: it reports it in :attr:`SendOutcome.error`.

Each event is sent as one JSON object::

    {"alert_id": "al-…", "rule": "meter-offline", "severity": "critical",
     "meter_id": "m-0001", "ts": "2026-10-01T12:00:00Z", "state": "raised",
     "message": "no reading for 2 h 15 min (…)", "values": {…}}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, Final, Protocol

import httpx
import paho.mqtt.client as paho
import polars as pl
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion

from meterlake.alerts.rules import LogSink, MqttSink, SinkSpec, WebhookSink

logger: Final = logging.getLogger("meterlake.alerts")
_LOG_LEVELS: Final = {"info": logging.INFO, "warning": logging.WARNING, "critical": logging.ERROR}
_RETRY_STATUS: Final = frozenset({408, 425, 429})
"""Status codes below 500 that still mean "try again later"."""


@dataclass(frozen=True)
class AlertEvent:
    """One row of the ``alerts`` table, as a sink sends it."""

    alert_id: str
    rule: str
    severity: str
    meter_id: str
    ts: dt.datetime
    """The event time (UTC)."""
    state: str
    message: str
    values_json: str

    def payload(self) -> dict[str, Any]:
        """The JSON object a sink sends (``values`` parsed, ``ts`` ISO 8601 with ``Z``)."""
        return {
            "alert_id": self.alert_id,
            "rule": self.rule,
            "severity": self.severity,
            "meter_id": self.meter_id,
            "ts": self.ts.isoformat().replace("+00:00", "Z"),
            "state": self.state,
            "message": self.message,
            "values": json.loads(self.values_json) if self.values_json else {},
        }

    def body(self) -> bytes:
        return json.dumps(self.payload(), ensure_ascii=False, separators=(",", ":")).encode()


def events_of(frame: pl.DataFrame) -> list[AlertEvent]:
    """The events of an ``alerts`` frame, in its order."""
    columns = [f.name for f in fields(AlertEvent)]
    return [AlertEvent(*row) for row in frame.select(columns).iter_rows()]


@dataclass(frozen=True)
class SendOutcome:
    """What a sink did with a batch: the positions of the events it accepted, and what went
    wrong (None: nothing)."""

    accepted: tuple[int, ...]
    error: str | None = None


class Sink(Protocol):
    """A destination of alert events."""

    @property
    def name(self) -> str: ...

    def send(self, events: Sequence[AlertEvent]) -> SendOutcome:
        """Send ``events``; say which were accepted. Never raises for its peer's failure."""
        ...


class LogDestination:
    """Each event as one line of the ``meterlake.alerts`` logger; severity picks the level
    (``info`` INFO, ``warning`` WARNING, ``critical`` ERROR)."""

    def __init__(self, spec: LogSink, log: logging.Logger = logger) -> None:
        self.spec = spec
        self.log = log

    @property
    def name(self) -> str:
        return self.spec.name

    def send(self, events: Sequence[AlertEvent]) -> SendOutcome:
        for event in events:
            self.log.log(
                _LOG_LEVELS.get(event.severity, logging.WARNING),
                "%s %s %s [%s]: %s",
                event.state,
                event.rule,
                event.meter_id,
                event.severity,
                event.message,
            )
        return SendOutcome(tuple(range(len(events))))


class MqttDestination:
    """Publishes each event (QoS 1) to the topic its template names; an event counts as
    accepted once the broker's PUBACK is in. One connection per run (clean session)."""

    def __init__(self, spec: MqttSink) -> None:
        self.spec = spec

    @property
    def name(self) -> str:
        return self.spec.name

    def topic(self, event: AlertEvent) -> str:
        """The topic of ``event``: the template with the event's fields."""
        return self.spec.topic.format(
            alert_id=event.alert_id,
            rule=event.rule,
            severity=event.severity,
            meter_id=event.meter_id,
            state=event.state,
        )

    def send(self, events: Sequence[AlertEvent]) -> SendOutcome:
        if not events:
            return SendOutcome(())
        spec = self.spec
        where = f"mqtt sink {spec.name} ({spec.host}:{spec.port})"
        timeout = spec.timeout.total_seconds()
        client = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=spec.client_id,
            clean_session=True,
            protocol=MQTTProtocolVersion.MQTTv311,
        )
        if spec.username is not None:
            client.username_pw_set(spec.username, spec.password)
        client.connect_timeout = timeout
        connected = threading.Event()
        refused: list[str] = []

        def on_connect(
            _client: paho.Client, _userdata: Any, _flags: Any, reason: Any, _props: Any
        ) -> None:
            if reason.is_failure:
                refused.append(str(reason))
            connected.set()

        client.on_connect = on_connect
        try:
            client.connect(spec.host, spec.port, keepalive=max(5, int(timeout) * 2))
        except (OSError, ValueError) as exc:
            return SendOutcome((), f"{where}: cannot connect: {exc}")
        client.loop_start()
        try:
            if not connected.wait(timeout) or refused:
                reason = refused[0] if refused else f"no CONNACK within {timeout:g} s"
                return SendOutcome((), f"{where}: connection refused: {reason}")
            return self._publish(client, events, time.monotonic() + timeout, where)
        finally:
            client.disconnect()
            client.loop_stop()

    def _publish(
        self, client: paho.Client, events: Sequence[AlertEvent], deadline: float, where: str
    ) -> SendOutcome:
        infos = [client.publish(self.topic(e), e.body(), qos=1) for e in events]
        accepted: list[int] = []
        for number, info in enumerate(infos):
            # RuntimeError/ValueError: never queued (connection lost); the event stays pending
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=max(deadline - time.monotonic(), 0.001))
            if info.is_published():
                accepted.append(number)
        missing = len(events) - len(accepted)
        error = f"{where}: {missing} event(s) not acknowledged" if missing else None
        return SendOutcome(tuple(accepted), error)


class WebhookDestination:
    """POSTs each event as JSON. 2xx: accepted. 5xx, 408/425/429 and connection errors: retried
    ``retries`` times with back-off ``backoff`` x 2^n; still failing, the sink is taken to be
    down and the run stops sending to it. Any other status (4xx): the event stays pending, the
    error is logged, and the next event is tried.

    ``sleep`` is a seam for tests.
    """

    def __init__(
        self,
        spec: WebhookSink,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.spec = spec
        self.sleep = sleep

    @property
    def name(self) -> str:
        return self.spec.name

    def send(self, events: Sequence[AlertEvent]) -> SendOutcome:
        if not events:
            return SendOutcome(())
        spec = self.spec
        headers = {"content-type": "application/json", **spec.headers}
        accepted: list[int] = []
        errors: list[str] = []
        with httpx.Client(timeout=spec.timeout.total_seconds(), headers=headers) as client:
            for number, event in enumerate(events):
                ok, error, retryable = self._post(client, event)
                if ok:
                    accepted.append(number)
                    continue
                message = f"webhook sink {spec.name}: {event.alert_id} {event.state}: {error}"
                logger.error("%s", message)
                errors.append(message)
                if retryable:
                    break  # the server is down or overloaded: the rest waits for the next run
        return SendOutcome(tuple(accepted), "; ".join(errors[:3]) or None)

    def _post(self, client: httpx.Client, event: AlertEvent) -> tuple[bool, str, bool]:
        """(accepted, what went wrong, whether that is worth retrying)."""
        error = ""
        for attempt in range(self.spec.retries + 1):
            if attempt:
                self.sleep(self.spec.backoff.total_seconds() * 2 ** (attempt - 1))
            try:
                response = client.post(self.spec.url, content=event.body())
            except httpx.TransportError as exc:
                error = f"{type(exc).__name__}: {exc}"
                continue
            if response.is_success:
                return True, "", False
            error = f"HTTP {response.status_code} {response.reason_phrase}"
            if response.status_code < 500 and response.status_code not in _RETRY_STATUS:
                return False, error + " (not retried; fix the request or the server)", False
        return False, f"{error} after {self.spec.retries + 1} attempt(s)", True


def build_sinks(specs: Sequence[SinkSpec]) -> dict[str, Sink]:
    """A sink per ``[[sinks]]`` table, by name."""
    built: dict[str, Sink] = {}
    for spec in specs:
        if isinstance(spec, LogSink):
            built[spec.name] = LogDestination(spec)
        elif isinstance(spec, MqttSink):
            built[spec.name] = MqttDestination(spec)
        else:
            built[spec.name] = WebhookDestination(spec)
    return built
