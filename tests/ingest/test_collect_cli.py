"""``meterlake collect`` as a gateway runs it: a real process, a real broker, kill -9 included."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import polars as pl
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterlake.config.schemas import QUARANTINE, READINGS
from meterlake.ingest.spool import read_segment
from meterlake.storage.scan import scan
from tests.mqtt_broker import Broker

TOTAL = 10_000


def write_config(tmp_path: Path, broker: Broker, *, flush_interval_s: float, name: str) -> Path:
    config = tmp_path / name
    config.write_text(
        f"""
[lake]
path = "lake"
[spool]
path = "spool"
flush_interval_s = {flush_interval_s}
segment_age_s = 0.3
[collect]
status_file = "status.json"
[[mqtt]]
name = "meters"
port = {broker.port}
client_id = "gw-under-test"
topics = ["meters/#"]
format = "canonical"
"""
    )
    return config


def start_collector(config: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "meterlake", "collect", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_connected(status: Path, after: float, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            report = json.loads(status.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            report = None
        if report and report["written_at"] > after and report["collectors"][0]["connected"]:
            return
        time.sleep(0.1)
    raise AssertionError("the collector did not connect")


def payload(n: int) -> bytes:
    minute, meter = divmod(n, 100)
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1_790_000_000 + minute * 60))
    reading = {"meter_id": f"m-{meter:03d}", "ts": ts, "readings": {"energy_import_kwh": n}}
    return json.dumps(reading).encode()


class Publisher(threading.Thread):
    """Publishes ``TOTAL`` QoS 1 readings, paced, and waits until the broker has them all."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            client = paho.Client(CallbackAPIVersion.VERSION2, client_id="meter-publisher")
            client.max_inflight_messages_set(100)
            client.connect("127.0.0.1", self.port)
            client.loop_start()
            infos = []
            for n in range(TOTAL):
                infos.append(client.publish("meters/readings", payload(n), qos=1))
                self.sent = n + 1
                if n % 500 == 499:
                    time.sleep(0.1)
            for info in infos:
                info.wait_for_publish(60)
            client.disconnect()
            client.loop_stop()
        except BaseException as exc:  # reported by the test
            self.error = exc


@pytest.fixture
def collector_procs() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def lake_keys(lake: Path) -> pl.DataFrame:
    return scan(lake, READINGS).select("meter_id", "ts", "value").collect()


def test_kill_9_mid_stream_loses_nothing(
    tmp_path: Path, broker: Broker, collector_procs: list[subprocess.Popen[str]]
) -> None:
    # the first run never flushes on its own: what it acknowledged is only in the spool
    slow = write_config(tmp_path, broker, flush_interval_s=600, name="slow.toml")
    config = write_config(tmp_path, broker, flush_interval_s=0.3, name="gateway.toml")
    status = tmp_path / "status.json"
    first = start_collector(slow)
    collector_procs.append(first)
    wait_connected(status, after=0)

    publisher = Publisher(broker.port)
    publisher.start()
    while publisher.sent < TOTAL // 3:
        time.sleep(0.01)
    time.sleep(0.2)
    first.send_signal(signal.SIGKILL)  # no chance to flush, commit or say goodbye
    first.wait(30)
    spooled = sum(len(read_segment(p).envelopes) for p in (tmp_path / "spool").iterdir())
    assert spooled > 0, "the kill should leave acknowledged messages in the spool"
    assert lake_keys(tmp_path / "lake").height == 0

    restarted_at = time.time()
    second = start_collector(config)
    collector_procs.append(second)
    wait_connected(status, after=restarted_at)
    publisher.join(120)
    assert publisher.error is None, publisher.error

    lake = tmp_path / "lake"
    deadline = time.monotonic() + 60
    while lake_keys(lake).unique(["meter_id", "ts"]).height < TOTAL:
        assert time.monotonic() < deadline, "not every reading arrived"
        time.sleep(0.3)
    second.send_signal(signal.SIGTERM)  # a clean stop: commit, flush, exit 0
    _out, err = second.communicate(timeout=60)
    assert second.returncode == 0, err

    rows = lake_keys(lake)
    distinct = rows.unique(["meter_id", "ts"])
    assert distinct.height == TOTAL  # every reading, once after dedup
    assert rows.unique(["meter_id", "ts", "value"]).height == TOTAL  # and no value disagrees
    expected = sorted(range(TOTAL))
    assert sorted(int(v) for v in distinct["value"]) == expected
    assert scan(lake, QUARANTINE).collect().height == 0


def test_the_example_gateway_config_runs(tmp_path: Path, broker: Broker) -> None:
    """examples/gateway.toml (the issue's example) parses as written and collects from both."""
    import asyncio

    from meterlake.config.settings import load_settings
    from meterlake.ingest.modbus_sim import ModbusSimulator, SimMeter, free_tcp_port
    from meterlake.ingest.profiles import load_registry

    example = Path(__file__).resolve().parents[2] / "examples" / "gateway.toml"
    settings, _ = load_settings(example)
    assert [d.profile for d in settings.modbus[0].devices] == ["eastron_sdm630"]

    modbus_port = free_tcp_port()
    text = (
        example.read_text()
        .replace("port = 5020", f"port = {modbus_port}")
        .replace("port = 1883", f"port = {broker.port}")
        .replace('interval = "60s"', 'interval = "1s"')  # a poll every second, not a minute
    )
    config = tmp_path / "gateway.toml"
    config.write_text(text)

    loop = asyncio.new_event_loop()
    sdm630 = SimMeter(1, load_registry()["eastron_sdm630"], mean_power_w=800.0)
    simulator = ModbusSimulator([sdm630], port=modbus_port, update_interval=None, seed=5)
    loop.run_until_complete(simulator.start())
    server = threading.Thread(target=loop.run_forever, daemon=True)
    server.start()
    try:
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tasmota-plug")
        client.connect("127.0.0.1", broker.port)
        client.loop_start()
        tele = {
            "Time": "2026-11-27T18:00:00",
            "ENERGY": {"Total": 12.345, "Power": 100, "Voltage": 231, "Current": 0.45},
        }
        info = client.publish("tele/plug-7/SENSOR", json.dumps(tele), qos=1, retain=True)
        info.wait_for_publish(10)
        client.disconnect()
        client.loop_stop()
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "meterlake",
                "collect",
                "--config",
                str(config),
                "--duration",
                "4",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
    finally:
        loop.call_soon_threadsafe(loop.stop)
        server.join(10)
        loop.run_until_complete(simulator.stop())
        loop.close()
    assert done.returncode == 0, done.stderr
    rows = scan(tmp_path / "lake", READINGS).collect()
    by_meter = {m: set(g["quantity"]) for (m,), g in rows.group_by("meter_id")}
    assert {"energy_import_kwh", "energy_export_kwh", "power_w"} <= by_meter["sdm-001"]
    assert by_meter["plug-7"] == {"energy_import_kwh", "power_w", "voltage_v", "current_a"}
    plug = rows.filter(pl.col("meter_id") == "plug-7", pl.col("quantity") == "energy_import_kwh")
    assert plug["value"].to_list()[0] == pytest.approx(12.345)
