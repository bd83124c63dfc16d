"""The gateway's flusher: decode, quarantine, ignore, sink and upstream forwarding."""

from __future__ import annotations

import math
import time
from pathlib import Path

import polars as pl
import pytest

from meterlake.config.schemas import QUARANTINE, READINGS
from meterlake.config.settings import MqttSettings, UpstreamSettings
from meterlake.ingest.forward import UpstreamForwarder, UpstreamUnavailableError
from meterlake.ingest.gateway import (
    MODBUS_CHANNEL,
    decode_envelopes,
    envelope_decoder,
    flush_spool,
    spool_sink,
)
from meterlake.ingest.mqtt import MqttCollector, channel_name
from meterlake.ingest.payloads import FormatOptions, NoReadingsError
from meterlake.ingest.readings import Reading
from meterlake.ingest.spool import Envelope, Spool
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table
from tests.mqtt_broker import Broker

T0 = 1_790_000_000_000_000
CANONICAL = envelope_decoder("canonical", FormatOptions())


def test_messages_without_metering_fields_are_counted_not_quarantined() -> None:
    def no_readings(_envelope: Envelope) -> list[Reading]:
        raise NoReadingsError("a button press")

    decoded = decode_envelopes(
        [Envelope("mqtt:z", "zigbee2mqtt/button", b"{}", T0)], {"mqtt:z": no_readings}
    )
    assert (decoded.readings.height, decoded.quarantine.height, decoded.ignored) == (0, 0, 1)


def test_unsafe_ids_from_a_decoder_are_quarantined_not_written() -> None:
    def sloppy(envelope: Envelope) -> list[Reading]:
        return [Reading("../etc", T0, "power_w", 1.0, (), envelope.topic)]

    decoded = decode_envelopes([Envelope("c", "t", b"x", T0)], {"c": sloppy})
    assert decoded.readings.height == 0
    assert "meter id '../etc' is not allowed" in decoded.quarantine["reason"][0]


def test_unknown_channel_is_quarantined() -> None:
    decoded = decode_envelopes([Envelope("mqtt:gone", "t", b"x", T0)], {})
    assert decoded.quarantine["reason"].to_list() == ["no decoder for channel 'mqtt:gone'"]


def test_modbus_polls_travel_through_the_spool_as_canonical_json(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    sink = spool_sink(spool, MODBUS_CHANNEL, clock=lambda: T0 / 1e6 + 5)
    poll = [
        Reading("sdm-001", T0, "energy_import_kwh", 1234.56, (), "modbus:bus0"),
        Reading("sdm-001", T0, "power_w", math.nan, ("invalid_value",), "modbus:bus0"),
        Reading("sdm-002", T0, "voltage_v", 231.5, ("out_of_range",), "modbus:bus0"),
    ]
    sink(poll)
    spool.seal()
    lake = init_lake(tmp_path / "lake")
    result = flush_spool(spool, {MODBUS_CHANNEL: CANONICAL}, lambda t, f: write_table(lake, t, f))
    assert (result.readings, result.quarantined) == (3, 0)
    got = scan(lake, READINGS).sort("meter_id", "quantity").collect()
    assert got["meter_id"].to_list() == ["sdm-001", "sdm-001", "sdm-002"]
    assert got["quantity"].to_list() == ["energy_import_kwh", "power_w", "voltage_v"]
    assert got["value"][0] == 1234.56 and math.isnan(got["value"][1]) and got["value"][2] == 231.5
    assert got["quality"].to_list() == [[], ["invalid_value"], ["out_of_range"]]
    assert got["ts"].dt.epoch("us").to_list() == [T0] * 3
    assert got["received_at"].dt.epoch("us").to_list() == [T0 + 5_000_000] * 3


@pytest.fixture
def central(tmp_path: Path) -> Broker:
    directory = tmp_path / "central"
    directory.mkdir()
    server = Broker(directory)
    server.start()
    yield server  # type: ignore[misc]
    server.stop()


def test_readings_are_forwarded_upstream_and_kept_until_acknowledged(
    tmp_path: Path, central: Broker
) -> None:
    # the gateway: two segments of readings in its spool
    spool = Spool(tmp_path / "gw-spool")
    sink = spool_sink(spool, MODBUS_CHANNEL, clock=lambda: T0 / 1e6)
    for minute in range(2):
        sink(
            [
                Reading(f"m{i}", T0 + minute * 60_000_000, "energy_import_kwh", i + minute, (), "s")
                for i in range(300)
            ]
        )
        spool.seal()
    gateway_lake = init_lake(tmp_path / "gw-lake")
    decoders = {MODBUS_CHANNEL: CANONICAL}
    write_gateway = lambda t, f: write_table(gateway_lake, t, f)  # noqa: E731

    # upstream is down: the lake gets everything, the spool keeps it for forwarding
    settings = UpstreamSettings(
        port=central.port, topic="central/readings", batch_readings=100, timeout_s=10
    )
    forwarder = UpstreamForwarder(settings)
    central.stop()
    forwarder.start()
    result = flush_spool(spool, decoders, write_gateway, forwarder.forward)
    assert (result.readings, result.forwarded) == (600, 0)
    assert len(spool.stored_segments()) == 2

    # the central collector, and the broker back: the next flush forwards and trims
    central.start()
    central_spool = Spool(tmp_path / "central-spool")
    subscription = MqttSettings(
        name="central", port=central.port, client_id="central", topics=("central/readings",)
    )
    collector = MqttCollector(subscription, central_spool)
    collector.start()
    deadline = time.monotonic() + 20
    while not (forwarder.client.is_connected() and collector.health().connected):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    result = flush_spool(spool, decoders, write_gateway, forwarder.forward)
    assert result.forwarded == 600
    assert spool.stored_segments() == []
    while collector.health().acknowledged < 6:  # 600 readings in batches of 100
        assert time.monotonic() < deadline
        time.sleep(0.05)
    collector.stop()
    forwarder.stop()
    central_lake = init_lake(tmp_path / "central-lake")
    central_spool.seal()
    flush_spool(
        central_spool,
        {channel_name(subscription): CANONICAL},
        lambda t, f: write_table(central_lake, t, f),
    )
    key = ["meter_id", "ts", "quantity", "value"]
    local = scan(gateway_lake, READINGS).select(key).sort(key).collect()
    remote = scan(central_lake, READINGS).select(key).sort(key).collect()
    assert remote.equals(local)
    assert scan(central_lake, QUARANTINE).collect().height == 0


def test_forwarding_refuses_quickly_when_not_connected(central: Broker) -> None:
    forwarder = UpstreamForwarder(UpstreamSettings(port=central.port))
    frame = pl.DataFrame(schema=READINGS.schema)
    forwarder.forward(frame)  # nothing to send: fine even before connecting
    central.stop()
    reading = pl.DataFrame(
        {
            "meter_id": ["m1"],
            "ts": [T0],
            "quantity": ["power_w"],
            "value": [1.0],
            "quality": [[]],
            "source": ["s"],
            "received_at": [T0],
        }
    ).cast(
        {
            "ts": READINGS.schema["ts"],
            "received_at": READINGS.schema["received_at"],
            "quality": READINGS.schema["quality"],
        }
    )
    with pytest.raises(UpstreamUnavailableError, match="not connected"):
        forwarder.forward(reading)
