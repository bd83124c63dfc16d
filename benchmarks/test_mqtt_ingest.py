"""MQTT -> spool -> lake: sustained readings/s at QoS 1, against a bare paho subscriber.

Both run in the same test against the same local Mosquitto (started here, on a free port). A
publisher in a separate process sends ``messages`` QoS 1 messages as fast as the broker takes
them; the baseline subscriber only counts them (paho acknowledges at once); the collector spools
each message durably (group commit, the shipped fsync policy) before acknowledging it, and the
gateway flusher decodes the spool into Parquet. The collector's rate counts until the last
reading is in the lake, not only acknowledged.

Goals (issue 3): single-reading messages at >= half the bare subscriber's rate; 100-reading
batches at >= 150k readings/s.
"""

from __future__ import annotations

import resource
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import paho.mqtt.client as paho
import polars as pl
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterlake.config.schemas import READINGS
from meterlake.config.settings import MqttSettings
from meterlake.ingest.gateway import envelope_decoder, flush_spool
from meterlake.ingest.mqtt import MqttCollector, channel_name
from meterlake.ingest.payloads import FormatOptions
from meterlake.ingest.spool import Spool
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table
from tests.mqtt_broker import Broker

if TYPE_CHECKING:
    from conftest import Scale

MESSAGES: Final = {"smoke": {1: 300, 100: 30}, "full": {1: 20_000, 100: 6_000}}
"""Messages per run, by readings per message."""
TOPIC: Final = "bench/readings"

PUBLISHER = r"""
import json, sys, time
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
port, count, per_message = map(int, sys.argv[1:4])
client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-publisher")
client.max_inflight_messages_set(1000)
client.max_queued_messages_set(0)
client.connect("127.0.0.1", port)
client.loop_start()
base = 1_790_000_000
payloads = []
for n in range(count):
    items = []
    for i in range(per_message):
        k = n * per_message + i
        ts = time.gmtime(base + k // 500 * 900)
        items.append({"meter_id": f"m-{k % 500:05d}",
                      "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", ts),
                      "readings": {"energy_import_kwh": k * 0.001}})
    payloads.append(json.dumps(items if per_message > 1 else items[0]).encode())
print("ready", flush=True)
sys.stdin.readline()
infos = [client.publish("bench/readings", p, qos=1) for p in payloads]
for info in infos:
    info.wait_for_publish(120)
client.disconnect()
client.loop_stop()
"""


def run_publisher(broker: Broker, count: int, per_message: int) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(broker.port), str(count), str(per_message)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def go(proc: subprocess.Popen[str]) -> None:
    assert proc.stdin is not None
    proc.stdin.write("go\n")
    proc.stdin.flush()


def bare_subscriber_rate(broker: Broker, count: int, per_message: int) -> float:
    """Messages/s of a paho subscriber that only counts (QoS 1, acknowledged by paho at once)."""
    done = threading.Event()
    seen = [0]
    first: list[float] = []

    def on_message(_c: paho.Client, _u: object, _m: paho.MQTTMessage) -> None:
        if not first:
            first.append(time.perf_counter())
        seen[0] += 1
        if seen[0] == count:
            done.set()

    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="bench-bare", clean_session=False)
    client.on_message = on_message
    client.connect("127.0.0.1", broker.port)
    client.subscribe(TOPIC, qos=1)
    client.loop_start()
    time.sleep(0.5)
    with run_publisher(broker, count, per_message) as proc:
        go(proc)
        assert done.wait(300), f"bare subscriber saw {seen[0]} of {count}"
        elapsed = time.perf_counter() - first[0]
        proc.wait(60)
    client.disconnect()
    client.loop_stop()
    return count / elapsed


def collector_rate(
    broker: Broker, tmp: Path, count: int, per_message: int
) -> tuple[float, int, float]:
    """Messages/s from first message until the last reading is in the lake; lake rows; and the
    collector process's CPU seconds over that time (collector + flusher + Parquet writes)."""
    lake = init_lake(tmp / "lake")
    spool = Spool(tmp / "spool", segment_age_s=0.5)
    settings = MqttSettings.model_validate(
        {"name": "bench", "port": broker.port, "client_id": "bench-collector", "topics": [TOPIC]}
    )
    decoders = {channel_name(settings): envelope_decoder("canonical", FormatOptions())}
    collector = MqttCollector(settings, spool)
    collector.start()
    deadline = time.monotonic() + 10
    while not collector.health().connected and time.monotonic() < deadline:
        time.sleep(0.05)
    rows = 0
    with run_publisher(broker, count, per_message) as proc:
        go(proc)
        began: float | None = None
        cpu_began = 0.0
        while rows < count * per_message:
            health = collector.health()
            if began is None and health.messages:
                began = time.perf_counter()
                cpu_began = time.process_time()
            result = flush_spool(spool, decoders, lambda t, f: write_table(lake, t, f))
            rows += result.readings
            if not result.segments:
                time.sleep(0.2)
            assert time.monotonic() < deadline + 300, f"collector stuck at {rows} readings"
        assert began is not None
        elapsed = time.perf_counter() - began
        cpu = time.process_time() - cpu_began
        proc.wait(60)
    collector.stop()
    lake_rows = scan(lake, READINGS).select(pl.len()).collect().item()
    return count / elapsed, lake_rows, cpu


@pytest.mark.parametrize("per_message", [1, 100])
def test_mqtt_ingest_rate(
    tmp_path: Path, scale: Scale, table_printer: Any, per_message: int
) -> None:
    count = MESSAGES[scale.name][per_message]
    broker_dir = tmp_path / "broker"
    broker_dir.mkdir()
    broker = Broker(broker_dir)
    broker.start()
    try:
        bare = bare_subscriber_rate(broker, count, per_message)
        mine, lake_rows, cpu = collector_rate(broker, tmp_path, count, per_message)
    finally:
        broker.stop()
    assert lake_rows == count * per_message  # every reading landed (no duplicates in a clean run)
    peak_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table_printer(
        f"MQTT QoS 1, {count:,} messages of {per_message} reading(s) (scale {scale.name}); "
        f"collector CPU {cpu:.2f} s = {cpu * mine / count:.0%} of a core; "
        f"peak RSS of the process {peak_rss_mb:.0f} MB",
        ("subscriber", "messages/s", "readings/s", "x bare"),
        [
            ("bare paho, counts only", f"{bare:,.0f}", f"{bare * per_message:,.0f}", "1.00"),
            (
                "meterlake collector -> spool -> lake",
                f"{mine:,.0f}",
                f"{mine * per_message:,.0f}",
                f"{mine / bare:.2f}",
            ),
        ],
    )
    if scale.strict:
        if per_message == 1:
            assert mine >= 0.5 * bare
        else:
            assert mine * per_message >= 150_000
