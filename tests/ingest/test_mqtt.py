"""The MQTT collector against a real Mosquitto: at-least-once from broker to lake."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import polars as pl
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterlake.config.schemas import READINGS
from meterlake.config.settings import MqttSettings
from meterlake.ingest.gateway import Gateway, flush_spool
from meterlake.ingest.mqtt import MqttCollector, channel_name
from meterlake.ingest.readings import Reading
from meterlake.ingest.spool import Envelope, Spool
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table
from tests.mqtt_broker import Broker


def counter_decoder(envelope: Envelope) -> list[Reading]:
    """Test payloads are ``{"n": N}``: reading N of meter m1 at N seconds."""
    n = json.loads(envelope.payload)["n"]
    return [Reading("m1", n * 1_000_000, "energy_import_kwh", float(n), (), envelope.topic)]


def settings_for(broker: Broker, **overrides: object) -> MqttSettings:
    values: dict[str, object] = {
        "name": "test",
        "port": broker.port,
        "client_id": "collector-under-test",
        "topics": ("meters/#",),
    }
    values.update(overrides)
    return MqttSettings.model_validate(values)


def publish(broker: Broker, numbers: range, *, topic: str = "meters/m1") -> None:
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id="publisher")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    try:
        infos = [client.publish(topic, json.dumps({"n": n}), qos=1) for n in numbers]
        for info in infos:
            info.wait_for_publish(timeout=30)
    finally:
        client.disconnect()
        client.loop_stop()


def wait_for(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    return init_lake(tmp_path / "lake")


@pytest.fixture
def spool(tmp_path: Path) -> Spool:
    return Spool(tmp_path / "spool", segment_age_s=0.2)


@pytest.fixture
def collector(broker: Broker, spool: Spool) -> Iterator[MqttCollector]:
    c = MqttCollector(settings_for(broker), spool)
    c.start()
    wait_for(lambda: c.health().connected)
    yield c
    c.stop()


def lake_numbers(lake: Path) -> list[int]:
    values = scan(lake, READINGS).select("value").collect()["value"]
    return sorted(int(v) for v in values)


def drain(spool: Spool, lake: Path) -> None:
    spool.seal()
    flush_spool(spool, {"mqtt:test": counter_decoder}, lambda t, f: write_table(lake, t, f))


def test_every_message_reaches_the_lake(
    broker: Broker, collector: MqttCollector, spool: Spool, lake: Path
) -> None:
    publish(broker, range(1000))
    wait_for(lambda: collector.health().acknowledged == 1000)
    drain(spool, lake)
    assert lake_numbers(lake) == list(range(1000))
    health = collector.health()
    assert (health.messages, health.pending, health.spool_full) == (1000, 0, False)


def test_messages_are_acknowledged_only_once_spooled(
    broker: Broker, spool: Spool, lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While the spool's disk is full nothing is acknowledged, and nothing is lost."""
    real_write = os.write
    full = threading.Event()
    full.set()

    def write(fd: int, data: bytes) -> int:
        if full.is_set():
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    c = MqttCollector(settings_for(broker), spool)
    c.start()
    try:
        wait_for(lambda: c.health().connected)
        publish(broker, range(200))
        wait_for(lambda: c.health().spool_full)
        time.sleep(0.5)
        assert c.health().acknowledged == 0
        full.clear()  # space returns
        wait_for(lambda: c.health().acknowledged == 200)
    finally:
        c.stop()
    drain(spool, lake)
    assert lake_numbers(lake) == list(range(200))


def test_collection_resumes_after_a_broker_restart(
    broker: Broker, collector: MqttCollector, spool: Spool, lake: Path
) -> None:
    publish(broker, range(100))
    wait_for(lambda: collector.health().acknowledged == 100)
    broker.restart()  # without persistence: the broker forgets the session and subscription
    began = time.monotonic()
    wait_for(lambda: collector.health().connects >= 2)
    # the collector subscribed again by itself: new messages arrive without restarting it
    publish(broker, range(100, 200))
    wait_for(lambda: collector.health().acknowledged == 200, timeout_s=20)
    assert time.monotonic() - began < 15
    drain(spool, lake)
    assert lake_numbers(lake) == list(range(200))


def test_a_stopped_collector_gets_what_was_published_meanwhile(
    broker: Broker, spool: Spool, lake: Path
) -> None:
    """Persistent session: QoS 1 messages published while the collector is away are kept."""
    first = MqttCollector(settings_for(broker), spool)
    first.start()
    wait_for(lambda: first.health().connected)
    first.stop()
    publish(broker, range(300))
    second = MqttCollector(settings_for(broker), spool)
    second.start()
    try:
        wait_for(lambda: second.health().acknowledged == 300)
    finally:
        second.stop()
    drain(spool, lake)
    assert lake_numbers(lake) == list(range(300))


def test_the_gateway_flushes_and_quarantines_what_it_cannot_decode(
    broker: Broker, spool: Spool, lake: Path, tmp_path: Path
) -> None:
    settings = settings_for(broker)
    gateway = Gateway(
        spool,
        {channel_name(settings): counter_decoder},
        lambda t, f: write_table(lake, t, f),
        [MqttCollector(settings, spool)],
        flush_interval_s=0.2,
        status_path=tmp_path / "status.json",
    )
    runner = threading.Thread(target=gateway.run, kwargs={"duration_s": 30})
    runner.start()
    try:
        time.sleep(1.0)
        publish(broker, range(50))
        client = paho.Client(CallbackAPIVersion.VERSION2)
        client.connect("127.0.0.1", broker.port)
        client.publish("meters/broken", b"\xff not json", qos=1).wait_for_publish(10)
        client.disconnect()
        wait_for(lambda: gateway.flushed.readings == 50 and gateway.flushed.quarantined == 1)
    finally:
        gateway.request_stop()
        runner.join(30)
    assert lake_numbers(lake) == list(range(50))
    quarantined = scan_quarantine(lake)
    assert quarantined["source"].to_list() == ["mqtt:test:meters/broken"]
    assert quarantined["payload"].to_list() == [b"\xff not json"]
    assert quarantined["reason"][0].startswith("decoder failed: UnicodeDecodeError")
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["collectors"][0]["acknowledged"] == 51


def scan_quarantine(lake: Path) -> pl.DataFrame:
    from meterlake.config.schemas import QUARANTINE

    return scan(lake, QUARANTINE).collect()


def test_tls_and_password(tmp_path: Path, spool: Spool, lake: Path) -> None:
    directory = tmp_path / "secure-broker"
    directory.mkdir()
    secure = Broker(directory, tls=True, users={"gateway": "s3cret-password", "meter": "m"})
    secure.start()
    try:
        good = settings_for(
            secure, username="gateway", password="s3cret-password", tls_ca_file=secure.ca_file
        )
        wrong = settings_for(
            secure,
            username="gateway",
            password="wrong",
            tls_ca_file=secure.ca_file,
            client_id="intruder",
        )
        refused = MqttCollector(wrong, Spool(tmp_path / "other-spool"))
        refused.start()
        c = MqttCollector(good, spool)
        c.start()
        try:
            wait_for(lambda: c.health().connected)
            publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="meter")
            publisher.username_pw_set("meter", "m")
            publisher.tls_set(ca_certs=str(secure.ca_file))
            publisher.connect("127.0.0.1", secure.port)
            publisher.loop_start()
            for n in range(20):
                publisher.publish("meters/m1", json.dumps({"n": n}), qos=1).wait_for_publish(10)
            publisher.disconnect()
            publisher.loop_stop()
            wait_for(lambda: c.health().acknowledged == 20)
            assert not refused.health().connected
            assert refused.health().messages == 0
        finally:
            c.stop()
            refused.stop()
    finally:
        secure.stop()
    drain(spool, lake)
    assert lake_numbers(lake) == list(range(20))


def test_a_shared_subscription_splits_one_stream_between_collectors(
    broker: Broker, tmp_path: Path, lake: Path
) -> None:
    spools = [Spool(tmp_path / f"spool-{i}") for i in range(2)]
    collectors = [
        MqttCollector(
            settings_for(broker, client_id=f"gw-{i}", topics=("$share/gateways/meters/#",)),
            spools[i],
        )
        for i in range(2)
    ]
    for c in collectors:
        c.start()
    try:
        for c in collectors:
            wait_for(lambda c=c: c.health().connected)
        time.sleep(0.3)  # both subscriptions are in place
        publish(broker, range(400))
        wait_for(lambda: sum(c.health().acknowledged for c in collectors) == 400)
        shares = [c.health().acknowledged for c in collectors]
    finally:
        for c in collectors:
            c.stop()
    assert all(share > 0 for share in shares)  # each took part of the stream
    for s in spools:
        drain(s, lake)
    assert lake_numbers(lake) == list(range(400))  # together: every message, once
