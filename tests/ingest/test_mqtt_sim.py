"""Simulated MQTT meters: every encoder against its decoder, the model, the faults, determinism,
and a publisher against a real Mosquitto."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import threading
import time
from collections.abc import Sequence

import numpy as np
import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from meterlake.config.errors import ConfigError
from meterlake.config.payload_formats import PAYLOAD_FORMATS, PayloadFormatName, PayloadMapping
from meterlake.config.settings import MqttConnection
from meterlake.ingest.mqtt_sim import (
    DEFAULT_ENCODE,
    ENCODERS,
    SIM_MAPPING,
    SIM_METER_ID,
    EncodeOptions,
    Message,
    MeterFaults,
    MeterModel,
    MeterState,
    MqttMeter,
    MqttMeterFleet,
    MqttPublisher,
    Publication,
    encode_payload,
    garble,
    plan_faults,
)
from meterlake.ingest.payloads import DECODERS, FormatOptions, NoReadingsError, PayloadError
from meterlake.ingest.readings import Reading, to_us
from meterlake.ingest.simulator import REGISTER_WRAP_KWH
from tests.mqtt_broker import Broker, free_port

START = dt.datetime(2026, 10, 5, 10, 0, tzinfo=dt.UTC)  # a Monday, 18:00 in Shanghai
FORMATS: list[PayloadFormatName] = list(PAYLOAD_FORMATS)
CORE = {"energy_import_kwh", "power_w", "voltage_v", "current_a"}
SHELLY = {
    "energy_import_kwh",
    "energy_export_kwh",
    "power_w",
    "apparent_power_va",
    *(f"power_l{n}_w" for n in (1, 2, 3)),
    *(f"voltage_l{n}_v" for n in (1, 2, 3)),
    *(f"current_l{n}_a" for n in (1, 2, 3)),
}


def decode_options(fmt: str, timezone: str = "Asia/Shanghai") -> FormatOptions:
    if fmt == "mapping":
        return FormatOptions(meter_id=SIM_METER_ID, mapping=SIM_MAPPING, timezone=timezone)
    return FormatOptions(timezone=timezone)


def decode(
    fmt: str, message: Message, received: dt.datetime, timezone: str = "Asia/Shanghai"
) -> list[Reading]:
    return DECODERS[fmt](
        message.payload,
        topic=message.topic,
        received_at_us=to_us(received),
        options=decode_options(fmt, timezone),
    )


def fleet(
    fmt: PayloadFormatName,
    meters: Sequence[MqttMeter] | None = None,
    options: EncodeOptions = DEFAULT_ENCODE,
) -> MqttMeterFleet:
    meters = meters or [MqttMeter("plug-1"), MqttMeter("shop-2", business=True)]
    return MqttMeterFleet(meters, fmt, start=START, interval_s=60.0, seed=11, options=options)


def run(sim: MqttMeterFleet, ticks: int) -> list[Publication]:
    return [p for _ in range(ticks) for p in sim.step()]


def test_encoders_cover_every_decoder() -> None:
    assert tuple(ENCODERS) == tuple(DECODERS) == PAYLOAD_FORMATS


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_decodes_to_what_the_model_holds(fmt: PayloadFormatName) -> None:
    publications = run(fleet(fmt), 4)
    assert len(publications) == 8
    for pub in publications:
        state = pub.state
        rows = decode(fmt, pub.message, state.ts + dt.timedelta(seconds=2))
        assert {r.quantity for r in rows} == (SHELLY if fmt == "shelly-gen2" else CORE)
        for r in rows:
            assert r.meter_id == state.device
            assert r.ts_us == to_us(state.device_ts) == to_us(state.ts)
            assert r.quality == ()
            assert r.source == pub.message.topic
            expected = state.value(r.quantity)
            assert expected is not None
            assert r.value == pytest.approx(expected, rel=1e-12, abs=1e-12), r.quantity


def test_values_are_in_their_units() -> None:
    """Wh on the wire for Shelly and the default mapping, kWh in the readings; kW and mA too."""
    [shelly_pub, *_] = run(fleet("shelly-gen2"), 1)
    body = json.loads(shelly_pub.message.payload)
    state = shelly_pub.state
    assert body["params"]["emdata:0"]["total_act"] == pytest.approx(state.energy_import_kwh * 1000)
    assert body["params"]["ts"] == to_us(state.device_ts) / 1e6
    rows = {r.quantity: r.value for r in decode("shelly-gen2", shelly_pub.message, state.ts)}
    assert rows["energy_import_kwh"] == pytest.approx(state.energy_import_kwh, rel=1e-12)
    phases = [rows[f"power_l{n}_w"] for n in (1, 2, 3)]
    assert sum(phases) == pytest.approx(rows["power_w"]) == pytest.approx(state.power_w)
    amps = [rows[f"current_l{n}_a"] for n in (1, 2, 3)]
    assert sum(amps) == pytest.approx(state.current_a)
    assert rows["voltage_l2_v"] == state.voltage_v

    [mapped, *_] = run(fleet("mapping"), 1)
    data = json.loads(mapped.message.payload)["data"]
    assert data["e_wh"] == pytest.approx(mapped.state.energy_import_kwh * 1000)
    assert data["p_kw"] == pytest.approx(mapped.state.power_w / 1000)
    assert data["u_dv"] == pytest.approx(mapped.state.voltage_v * 10)
    assert data["i_ma"] == pytest.approx(mapped.state.current_a * 1000)


def test_tasmota_time_is_local_without_a_zone() -> None:
    sim = fleet("tasmota", options=EncodeOptions(timezone="Europe/Berlin"))
    pub = sim.step()[0]
    body = json.loads(pub.message.payload)
    assert body["Time"] == "2026-10-05T12:00:00"  # CEST, UTC+2
    [row, *_] = decode("tasmota", pub.message, START, timezone="Europe/Berlin")
    assert row.ts_us == to_us(START)
    [elsewhere, *_] = decode("tasmota", pub.message, START, timezone="Asia/Shanghai")
    assert elsewhere.ts_us == to_us(START) - 6 * 3600 * 1_000_000  # read in the wrong zone


def test_a_custom_mapping_is_written_so_that_it_decodes() -> None:
    mapping = PayloadMapping.model_validate(
        {
            "records": "batch",
            "timestamp": {"path": "at", "format": "%d.%m.%Y %H:%M:%S", "timezone": "Europe/Berlin"},
            "fields": [
                {"path": "vals[2]", "quantity": "energy_import_kwh", "unit": "MWh"},
                {"path": "ph.l1.p", "quantity": "power_l1_w", "scale": 0.1},
                {"path": "ph.l1.i", "quantity": "current_l1_a", "unit": "mA"},
                {"path": "freq", "quantity": "frequency_hz"},  # not simulated: left out
            ],
        }
    )
    template = "site-{field:id.serial}"
    options = EncodeOptions(mapping=mapping, meter_id=template)
    pub = run(fleet("mapping", options=options), 2)[-1]
    body = json.loads(pub.message.payload)
    assert body["batch"][0]["vals"][:2] == [None, None]
    assert "freq" not in body["batch"][0]
    rows = DECODERS["mapping"](
        pub.message.payload,
        topic=pub.message.topic,
        received_at_us=to_us(pub.state.ts),
        options=FormatOptions(meter_id=template, mapping=mapping),
    )
    got = {r.quantity: r for r in rows}
    assert set(got) == {"energy_import_kwh", "power_l1_w", "current_l1_a"}
    assert {r.meter_id for r in rows} == {f"site-{pub.state.device}"}
    assert {r.ts_us for r in rows} == {to_us(pub.state.ts)}
    for quantity, row in got.items():
        assert row.value == pytest.approx(pub.state.value(quantity), rel=1e-12)


def test_a_mapping_without_simulated_quantities_is_refused() -> None:
    mapping = PayloadMapping.model_validate({"fields": [{"path": "f", "quantity": "frequency_hz"}]})
    state = MeterState("m1", 0, START, START, 1.0, 100.0, 230.0, 0.5, 0.9)
    with pytest.raises(ConfigError, match="none of the simulated quantities"):
        encode_payload("mapping", state, options=EncodeOptions(mapping=mapping))


@pytest.mark.parametrize("fmt", FORMATS)
def test_garbage_is_refused_by_the_decoder(fmt: PayloadFormatName) -> None:
    """Garbage must be quarantined (PayloadError), never taken as a message without readings
    (NoReadingsError is counted and dropped)."""
    sim = fleet(fmt, [MqttMeter("plug-1", faults=MeterFaults(garbage_rate=1.0))])
    publications = run(sim, 3)
    assert all(p.garbage for p in publications)
    clean = ENCODERS[fmt](publications[0].state, options=sim.options)
    payloads = [p.message.payload for p in publications]
    payloads += [garble(clean.payload, np.random.default_rng(i)) for i in range(300)]
    kinds = {payload[:1] == b"{" for payload in payloads}
    assert kinds == {True, False}  # both truncated JSON and random bytes
    for payload in payloads:
        with pytest.raises(PayloadError) as caught:
            decode(fmt, Message(clean.topic, payload), START)
        assert not isinstance(caught.value, NoReadingsError), payload


def test_garbage_comes_at_its_rate_and_the_rest_is_intact() -> None:
    sim = fleet(
        "canonical", [MqttMeter(f"m-{i}", faults=MeterFaults(garbage_rate=0.2)) for i in range(3)]
    )
    publications = run(sim, 50)
    for device in ("m-0", "m-1", "m-2"):
        mine = [p for p in publications if p.state.device == device]
        bad = [p.state.tick for p in mine if p.garbage]
        assert len(bad) == 10
        assert all(b - a == 5 for a, b in itertools.pairwise(bad))  # evenly spaced
    for p in publications:
        if not p.garbage:
            decode("canonical", p.message, p.state.ts)


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_drifting_clock_beyond_the_window_gives_the_receipt_time(fmt: PayloadFormatName) -> None:
    sim = fleet(fmt, [MqttMeter("plug-1", faults=MeterFaults(clock_drift_s=100.0))])
    for tick, pub in enumerate(run(sim, 6)):
        ahead_s = 100 * tick
        assert pub.state.device_ts - pub.state.ts == dt.timedelta(seconds=ahead_s)
        received = pub.state.ts + dt.timedelta(seconds=1)
        rows = decode(fmt, pub.message, received)
        if ahead_s <= 300:  # the default max_clock_ahead_s
            assert {(r.ts_us, r.quality) for r in rows} == {(to_us(pub.state.device_ts), ())}
        else:
            assert {(r.ts_us, r.quality) for r in rows} == {(to_us(received), ("clock_invalid",))}


def energies(publications: Sequence[Publication]) -> list[float]:
    """The import register as the canonical decoder reads it."""
    return [
        r.value
        for p in publications
        for r in decode("canonical", p.message, p.state.ts)
        if r.quantity == "energy_import_kwh"
    ]


def test_rollover_and_reset_show_in_the_energy_values() -> None:
    meters = [
        MqttMeter("rolls", faults=MeterFaults(rollover_at=4)),
        MqttMeter("resets", faults=MeterFaults(reset_at=3)),
        MqttMeter("healthy"),
    ]
    publications = run(fleet("canonical", meters), 8)
    by_device = {
        d: [p for p in publications if p.state.device == d] for d in ("rolls", "resets", "healthy")
    }

    rolls = energies(by_device["rolls"])
    assert REGISTER_WRAP_KWH - 1 < rolls[3] < REGISTER_WRAP_KWH  # just below the top ...
    assert 0 < rolls[4] < 1  # ... then through zero
    assert all(b > a for a, b in itertools.pairwise(rolls[:4]))
    assert all(b > a for a, b in itertools.pairwise(rolls[4:]))

    resets = energies(by_device["resets"])
    assert resets[2] > 100
    tick3 = by_device["resets"][3].state
    assert resets[3] == pytest.approx(tick3.power_w * 60 / 3.6e6)  # counted since the reset
    assert all(b > a for a, b in itertools.pairwise(resets[3:]))

    healthy = energies(by_device["healthy"])
    assert all(b > a for a, b in itertools.pairwise(healthy))


def test_the_register_integrates_the_mean_power() -> None:
    sim = fleet("canonical", [MqttMeter("a"), MqttMeter("b", business=True, import_kwh=5.0)])
    publications = run(sim, 30)
    for device in ("a", "b"):
        states = [p.state for p in publications if p.state.device == device]
        for before, after in itertools.pairwise(states):
            step = after.energy_import_kwh - before.energy_import_kwh
            assert step == pytest.approx(after.power_w * 60 / 3.6e6, rel=1e-9)
    assert publications[1].state.energy_import_kwh == 5.0


def test_the_load_follows_the_local_daily_shape() -> None:
    meters = [MqttMeter(f"h-{i}") for i in range(40)]
    midnight = dt.datetime(2026, 10, 5, tzinfo=dt.UTC) - dt.timedelta(hours=8)  # Shanghai 00:00
    model = MeterModel(meters, start=midnight, interval_s=900.0, seed=2)
    power = np.array([[s.power_w for s in model.step()] for _ in range(96)])  # (ticks, meters)
    by_hour = power.reshape(24, 4, -1).mean(axis=(1, 2))
    assert by_hour[20] > 2.5 * by_hour[3]  # the evening peak over the night base
    assert 200 < power.mean() < 500  # households of about 300 W


def test_a_stopped_device_sends_nothing_more() -> None:
    meters = [MqttMeter("dies", faults=MeterFaults(stop_at=3)), MqttMeter("lives")]
    publications = run(fleet("zigbee2mqtt", meters), 6)
    assert [p.state.tick for p in publications if p.state.device == "dies"] == [0, 1, 2]
    assert len([p for p in publications if p.state.device == "lives"]) == 6


def test_same_seed_same_payloads() -> None:
    faults = plan_faults(
        [f"m-{i}" for i in range(5)], seed=4, garbage_rate=0.3, first_tick=2, last_tick=6
    )
    meters = [MqttMeter(d, faults=f) for d, f in faults.items()]

    def payloads(seed: int, fmt: PayloadFormatName) -> list[Message]:
        sim = MqttMeterFleet(meters, fmt, start=START, interval_s=30.0, seed=seed)
        return [p.message for p in run(sim, 12)]

    for fmt in FORMATS:
        first = payloads(7, fmt)
        assert first == payloads(7, fmt)
        assert first != payloads(8, fmt)
    kinds = {tuple(f.describe()) for f in faults.values()}
    assert len(kinds) == 5  # stop, rollover, reset, drift and one with garbage only


def test_plan_faults_drifts_out_of_each_window() -> None:
    faults = plan_faults(
        ["a", "b", "c", "d"], seed=0, clock_window_s={"a": 60, "b": 60, "c": 60, "d": 60}
    )
    [drifting] = [f for f in faults.values() if f.clock_drift_s]
    ticks_out = next(k for k in range(100) if k * drifting.clock_drift_s > 60)
    assert 5 <= ticks_out <= 10
    assert all(f.garbage_rate == 0.2 for f in faults.values())


def test_bad_faults_and_meters_are_refused() -> None:
    with pytest.raises(ConfigError, match="garbage_rate"):
        MeterFaults(garbage_rate=1.5)
    with pytest.raises(ConfigError, match="rollover_at"):
        MeterFaults(rollover_at=0)
    with pytest.raises(ConfigError, match="device name"):
        MqttMeter("a/b")
    with pytest.raises(ConfigError, match="distinct"):
        MeterModel([MqttMeter("a"), MqttMeter("a")], start=START)
    with pytest.raises(ConfigError, match="naive"):
        MeterModel([MqttMeter("a")], start=START.replace(tzinfo=None))


class Subscriber:
    def __init__(self, port: int, topic: str) -> None:
        self.messages: list[Message] = []
        self.ready = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id="sim-listener")
        self.client.on_message = lambda _c, _u, m: self.messages.append(
            Message(m.topic, bytes(m.payload))
        )
        self.client.on_subscribe = lambda *_: self.ready.set()
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(topic, qos=1)
        self.client.loop_start()
        assert self.ready.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_a_publisher_s_messages_arrive(broker: Broker) -> None:
    meters = [MqttMeter("plug-1", faults=MeterFaults(garbage_rate=0.25)), MqttMeter("plug-2")]
    subscriber = Subscriber(broker.port, "tele/#")
    publisher = MqttPublisher(
        fleet("tasmota", meters),
        MqttConnection(port=broker.port),
        client_id="sim-under-test",
        speed=600.0,  # a tick of 60 s every 0.1 s
    )
    try:
        publisher.start()
        deadline = time.monotonic() + 15
        while len(subscriber.messages) < 16 and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        publisher.stop()
        subscriber.close()
    stats = publisher.stats()
    assert publisher.error is None
    assert stats.acknowledged == stats.messages >= 16
    twin = run(fleet("tasmota", meters), stats.ticks)  # the same seed: the same messages
    assert stats.garbage == sum(p.garbage for p in twin) >= 2
    expected = [p.message for p in twin]
    assert len(expected) == stats.messages
    for topic in ("tele/plug-1/SENSOR", "tele/plug-2/SENSOR"):  # QoS 1 keeps each topic's order
        got = [m for m in subscriber.messages if m.topic == topic]
        assert got == [m for m in expected if m.topic == topic][: len(got)]
    assert len(subscriber.messages) >= 16


def test_a_publisher_without_a_broker_says_so() -> None:
    publisher = MqttPublisher(
        fleet("canonical"), MqttConnection(port=free_port()), connect_timeout_s=0.5
    )
    with pytest.raises(ConnectionError, match="no connection to the broker"):
        publisher.start()
    publisher.stop()
