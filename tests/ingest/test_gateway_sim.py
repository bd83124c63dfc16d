"""Simulating a gateway's meters from its config, and `meterlake collect` reading them."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from meterlake.config.errors import ConfigError
from meterlake.config.schemas import QUARANTINE, READINGS
from meterlake.config.settings import Settings, load_settings
from meterlake.ingest.gateway_sim import simulate_gateway, topic_for
from meterlake.ingest.modbus_sim import free_tcp_port
from meterlake.storage.scan import scan
from tests.mqtt_broker import Broker


def settings_of(toml: str, tmp_path: Path) -> Settings:
    path = tmp_path / "gateway.toml"
    path.write_text(toml)
    return load_settings(path)[0]


def test_topics_are_made_from_the_first_filter() -> None:
    assert topic_for("tele/+/SENSOR", "sim-1") == "tele/sim-1/SENSOR"
    assert topic_for("$share/gw/+/events/rpc", "sim-1") == "sim-1/events/rpc"
    assert topic_for("site/#", "sim-1") == "site/sim-1"
    assert topic_for("#", "sim-1") == "sim-1"
    assert topic_for("meters/all", "sim-1") == "meters/all"
    with pytest.raises(ConfigError, match="no simulated topic"):
        topic_for("$share/gw", "sim-1")


def test_meter_ids_are_the_ones_the_subscription_recovers(tmp_path: Path) -> None:
    settings = settings_of(
        """
[[mqtt]]
topics = ["$share/g/tele/+/SENSOR"]
format = "tasmota"
meter_id = "gw1-{topic[1]}"
[[mqtt]]
topics = ["plant/+/data"]
format = "mapping"
meter_id = "plant-{field:meta.serial}"
[mqtt.mapping]
timestamp = { path = "at", format = "epoch_s" }
fields = [{ path = "vals[1]", quantity = "energy_import_kwh", unit = "Wh" }]
[[mqtt]]
topics = ["meters/readings"]
format = "canonical"
""",
        tmp_path,
    )
    sim = simulate_gateway(settings, meters_per_subscription=2, seed=1, interval_s=1, faults=False)
    [tasmota, mapping, canonical] = sim.subscriptions
    assert [(m.topic, m.meter_id) for m in tasmota.meters] == [
        ("tele/sim-mqtt1-01/SENSOR", "gw1-sim-mqtt1-01"),
        ("tele/sim-mqtt1-02/SENSOR", "gw1-sim-mqtt1-02"),
    ]
    assert [m.meter_id for m in mapping.meters] == ["plant-sim-mqtt2-01", "plant-sim-mqtt2-02"]
    assert {m.topic for m in canonical.meters} == {"meters/readings"}  # ids are in the payload
    assert [m.meter_id for m in canonical.meters] == ["sim-mqtt3-01", "sim-mqtt3-02"]
    assert sim.faults == ()
    assert not sim.running


@pytest.mark.parametrize(
    ("toml", "problem"),
    [
        (  # {topic[0]} is "shellies" for every device
            '[[mqtt]]\ntopics = ["shellies/+/events/rpc"]\nformat = "shelly-gen2"\n',
            "same meter id",
        ),
        ('[[mqtt]]\nformat = "zigbee2mqtt"\n', "no topics"),
        (
            '[[modbus]]\nname = "rs485"\nserial = "/dev/ttyUSB0"\n'
            '[[modbus.devices]]\nmeter_id = "m1"\nunit = 1\nprofile = "eastron_sdm120"\n',
            "serial line",
        ),
        (
            '[[modbus]]\nname = "b"\nhost = "127.0.0.1"\n'
            '[[modbus.devices]]\nmeter_id = "m1"\nunit = 1\nprofile = "no_such_meter"\n',
            "unknown device profile",
        ),
        ("[lake]\n", "nothing to simulate"),
    ],
)
def test_configs_that_cannot_be_simulated_are_refused(
    toml: str, problem: str, tmp_path: Path
) -> None:
    settings = settings_of(toml, tmp_path)
    with pytest.raises(ConfigError, match=problem):
        simulate_gateway(settings, meters_per_subscription=2, seed=1, interval_s=1, faults=True)


def test_faults_are_planned_from_the_seed(tmp_path: Path) -> None:
    settings = settings_of(
        """
[[modbus]]
name = "bus0"
host = "127.0.0.1"
[[modbus.devices]]
meter_id = "a"
unit = 1
profile = "eastron_sdm630"
[[modbus.devices]]
meter_id = "b"
unit = 2
profile = "chint_dtsu666"
[[mqtt]]
topics = ["zigbee2mqtt/+"]
format = "zigbee2mqtt"
""",
        tmp_path,
    )

    def plan(seed: int) -> list[tuple[str, str, float | None]]:
        sim = simulate_gateway(
            settings, meters_per_subscription=4, seed=seed, interval_s=2, faults=True
        )
        return [(f.meter_id, f.kind, f.at_s) for f in sim.faults]

    faults = plan(3)
    assert faults == plan(3)
    assert faults != plan(4)
    kinds = sorted(kind for _, kind, _ in faults)
    assert kinds == sorted(
        ["silence", "rollover", *["garbage"] * 4, "stop", "rollover", "reset", "clock_drift"]
    )
    for _, kind, at in faults:  # garbage all along, the others from reading 5 to 10 (2 s each)
        assert at is None if kind == "garbage" else at in range(10, 21, 2)


def test_collect_reads_every_simulated_meter(tmp_path: Path, broker: Broker) -> None:
    """A gateway config as in examples/gateway.toml, simulated, collected for 5 s: every meter
    lands in the lake and the garbage in the quarantine."""
    config = tmp_path / "gateway.toml"
    config.write_text(
        f"""
[lake]
path = "lake"
[spool]
path = "spool"
segment_age_s = 0.5
flush_interval_s = 0.5
[collect]
status_file = "status.json"
[[modbus]]
name = "bus0"
host = "127.0.0.1"
port = {free_tcp_port()}
framer = "socket"
interval = "1s"
[[modbus.devices]]
meter_id = "sdm-001"
unit = 1
profile = "eastron_sdm630"
[[modbus.devices]]
meter_id = "dtsu-002"
unit = 2
profile = "chint_dtsu666"
[[mqtt]]
name = "plugs"
port = {broker.port}
client_id = "gw-plugs"
topics = ["tele/+/SENSOR"]
format = "tasmota"
meter_id = "{{topic[1]}}"
[[mqtt]]
name = "shellies"
port = {broker.port}
client_id = "gw-shellies"
topics = ["$share/gw/shellies/+/events/rpc"]
format = "shelly-gen2"
meter_id = "{{topic[1]}}"
"""
    )
    settings, _ = load_settings(config)
    sim = simulate_gateway(settings, meters_per_subscription=2, seed=1, interval_s=1.0, faults=True)
    assert len(sim.meter_ids) == 6
    starts = {f.kind: f.at_s for f in sim.faults}
    assert starts["stop"] == 10 and starts["silence"] == 6  # after the collector has started
    with sim:
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "meterlake",
                "collect",
                "--config",
                str(config),
                "--duration",
                "5",
            ],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        stats = sim.stats()
    assert done.returncode == 0, done.stderr
    assert stats["plugs"].messages > 0 and stats["shellies"].messages > 0

    rows = scan(tmp_path / "lake", READINGS).collect()
    by_meter = {m: set(g["quantity"]) for (m,), g in rows.group_by("meter_id")}
    assert set(by_meter) == set(sim.meter_ids)
    assert {"energy_import_kwh", "power_w"} <= by_meter["sdm-001"]
    assert {"energy_import_kwh", "power_w"} <= by_meter["dtsu-002"]
    assert by_meter["sim-plugs-01"] == {"energy_import_kwh", "power_w", "voltage_v", "current_a"}
    assert {"energy_import_kwh", "power_l1_w", "voltage_l3_v"} <= by_meter["sim-shellies-02"]
    energy = rows.filter(pl.col("quantity") == "energy_import_kwh", pl.col("value") > 0)
    assert energy["meter_id"].n_unique() == 6

    quarantine = scan(tmp_path / "lake", QUARANTINE).collect()
    assert quarantine.height > 0
    assert set(quarantine["source"].str.extract(r"^mqtt:([a-z]+):", 1)) <= {"plugs", "shellies"}
    assert all("JSON" in reason for reason in quarantine["reason"])
