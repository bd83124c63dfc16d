"""Upstream forwarding: a gateway's readings, as canonical JSON batches, to a central broker.

The forwarder publishes with QoS 1 and waits for every acknowledgement; the gateway trims a
spool segment only after that (see :mod:`meterlake.ingest.gateway`), so an upstream outage
only delays forwarding. A central ``meterlake collect`` subscribes to the topic (format
``canonical``, typically with a shared subscription ``$share/<group>/<topic>``) and writes the
central lake.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import polars as pl

from meterlake.config.errors import RetryableError
from meterlake.config.settings import UpstreamSettings
from meterlake.ingest.mqtt import connect_in_background, make_client


class UpstreamUnavailableError(RetryableError):
    """The central broker is not connected or did not acknowledge in time."""


def canonical_batches(readings: pl.DataFrame, batch_readings: int) -> Iterator[bytes]:
    """Canonical JSON batches of a ``READINGS`` frame, about ``batch_readings`` readings each.

    One object per (meter, ts, quality flags) with its quantities; the flags travel in the
    object's optional ``quality`` list; NaN is written as ``NaN`` (Python's JSON reads it).
    """
    grouped = readings.group_by(["meter_id", "ts", "quality"], maintain_order=True).agg(
        "quantity", "value"
    )
    batch: list[dict[str, Any]] = []
    size = 0
    for meter_id, ts, quality, quantities, values in grouped.iter_rows():
        item: dict[str, Any] = {
            "meter_id": meter_id,
            "ts": ts.isoformat().replace("+00:00", "Z"),
            "readings": dict(zip(quantities, values, strict=True)),
        }
        if quality:
            item["quality"] = quality
        batch.append(item)
        size += len(quantities)
        if size >= batch_readings:
            yield _dumps(batch)
            batch, size = [], 0
    if batch:
        yield _dumps(batch)


def _dumps(batch: list[dict[str, Any]]) -> bytes:
    return json.dumps(batch, separators=(",", ":"), allow_nan=True).encode()


class UpstreamForwarder:
    """Publishes readings to the central broker and waits for its acknowledgements."""

    def __init__(self, settings: UpstreamSettings) -> None:
        self.settings = settings
        self.client = make_client(settings, manual_ack=False)
        self.forwarded = 0

    def start(self) -> None:
        connect_in_background(self.client, self.settings)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def forward(self, readings: pl.DataFrame) -> None:
        """Publish ``readings`` (QoS 1) and return once the broker acknowledged all of them.

        Raises
        ------
        UpstreamUnavailableError
            Not connected, or not acknowledged within ``timeout_s``: retry later.
        """
        if readings.height == 0:
            return
        if not self.client.is_connected():
            raise UpstreamUnavailableError(
                f"upstream {self.settings.host}:{self.settings.port} is not connected"
            )
        deadline = time.monotonic() + self.settings.timeout_s
        infos: list[paho.MQTTMessageInfo] = [
            self.client.publish(self.settings.topic, payload, qos=1)
            for payload in canonical_batches(readings, self.settings.batch_readings)
        ]
        for info in infos:
            remaining = deadline - time.monotonic()
            try:
                info.wait_for_publish(timeout=max(remaining, 0.001))
            except (RuntimeError, ValueError) as exc:
                raise UpstreamUnavailableError(f"upstream publish failed: {exc}") from None
            if not info.is_published():
                raise UpstreamUnavailableError(
                    f"upstream did not acknowledge within {self.settings.timeout_s:g} s"
                )
        self.forwarded += readings.height
