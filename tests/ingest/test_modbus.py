"""The Modbus collector against real pymodbus servers (the simulator) on free ports.

No part of pymodbus is mocked: the simulator is a pymodbus server, the collector a pymodbus
client. Schedules are checked with a fake clock (the network and its timeouts stay real).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import importlib.util
import logging
import math
import time
import tomllib
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, ClassVar, TypeVar

import pytest

from meterlake.config.collect import ModbusBusSettings, check_modbus_buses, parse_duration
from meterlake.config.errors import ConfigError
from meterlake.config.schemas import Quality
from meterlake.ingest.modbus import (
    DeviceTimeoutError,
    ModbusCollector,
    PymodbusConnection,
    aligned_trigger,
    next_fire,
)
from meterlake.ingest.modbus_sim import ModbusSimulator, SimMeter, free_tcp_port, meters_for
from meterlake.ingest.profiles import ProfileRegistry, load_registry
from meterlake.ingest.readings import Reading, to_us

T = TypeVar("T")
UTC = dt.UTC
TIMEOUT_S = 0.3
MARGIN_S = 0.15
"""Scheduling slack allowed on top of a timeout (a loaded CI machine)."""

# A user profile with integer registers: a u32 import counter in 10 Wh steps with its words
# swapped (CDAB), an i16 power in 0.1 W, a u16 voltage in 0.1 V.
INT_PROFILE = """
name = "acme_int"
manufacturer = "ACME"
model = "INT-1"
phases = 1

[defaults]
function = 3

[registers.energy_import_kwh]
address = 0x10
type = "u32"
word_order = "little"
unit = "Wh"
scale = 10
width_bits = 32

[registers.energy_export_kwh]
address = 0x12
type = "u32"
word_order = "little"
unit = "Wh"
scale = 10
width_bits = 32

[registers.power_w]
address = 0x00
type = "i16"
unit = "W"
divisor = 10

[registers.voltage_v]
address = 0x01
type = "u16"
unit = "V"
divisor = 10
"""


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> ProfileRegistry:
    directory = tmp_path_factory.mktemp("profiles")
    (directory / "acme_int.toml").write_text(INT_PROFILE, encoding="utf-8")
    return load_registry(directory)


def make_bus(port: int, units: dict[int, str], **settings: Any) -> ModbusBusSettings:
    """A bus on localhost with meter ``m<unit>`` per unit id and profile."""
    devices = [
        {"meter_id": f"m{unit}", "unit": unit, "profile": profile}
        for unit, profile in units.items()
    ]
    return ModbusBusSettings.model_validate(
        {
            "name": "bus0",
            "host": "127.0.0.1",
            "port": port,
            "timeout": TIMEOUT_S,
            "retries": 0,
            **settings,
            "devices": devices,
        }
    )


class Recorder:
    """A sink that keeps every reading and when (monotonic) each device's poll arrived."""

    def __init__(self) -> None:
        self.readings: list[Reading] = []
        self.arrivals: list[tuple[str, float]] = []

    def __call__(self, readings: Sequence[Reading]) -> None:
        self.readings.extend(readings)
        self.arrivals.append((readings[0].meter_id, time.monotonic()))

    def of(self, meter_id: str) -> dict[str, Reading]:
        return {r.quantity: r for r in self.readings if r.meter_id == meter_id}


class FakeClock:
    """Wall time that moves only when the collector sleeps; ``call_at`` runs an action when
    time passes it; at ``stop_at`` the collector is parked and ``stopped`` is set."""

    def __init__(self, start: dt.datetime) -> None:
        self.t = start
        self.stop_at: dt.datetime | None = None
        self.stopped = asyncio.Event()
        self.events: list[tuple[dt.datetime, Callable[[], None]]] = []

    def now(self) -> dt.datetime:
        return self.t

    def call_at(self, when: dt.datetime, action: Callable[[], None]) -> None:
        self.events = sorted([*self.events, (when, action)], key=lambda e: e[0])

    async def sleep(self, seconds: float) -> None:
        target = self.t + dt.timedelta(seconds=seconds)
        while self.events and self.events[0][0] <= target:
            when, action = self.events.pop(0)
            self.t = max(self.t, when)
            action()
        if self.stop_at is not None and target > self.stop_at:
            self.t = self.stop_at
            self.stopped.set()
            await asyncio.Event().wait()
        self.t = target
        await asyncio.sleep(0)


async def run_until(collector: ModbusCollector, clock: FakeClock, stop_at: dt.datetime) -> None:
    clock.stop_at = stop_at
    task = asyncio.create_task(collector.run())
    try:
        await asyncio.wait_for(clock.stopped.wait(), 20)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def assert_values_match(recorder: Recorder, sim: ModbusSimulator, unit: int) -> None:
    """The readings of ``m<unit>`` equal what the simulator holds, in canonical units."""
    got = recorder.of(f"m{unit}")
    held = sim.values(unit)
    assert set(got) == set(held)
    profile = sim.meters[unit].profile
    for quantity, value in held.items():
        reg = profile.register(quantity)
        if reg.data_type in ("f32", "f64"):
            assert got[quantity].value == pytest.approx(value, rel=1e-6, abs=1e-6), quantity
        else:  # integer registers hold the value to one step
            step = reg.multiplier / reg.divisor
            assert got[quantity].value == pytest.approx(value, abs=step / 2 + 1e-9), quantity
        assert got[quantity].quality == (), quantity


# --- polling -------------------------------------------------------------------------------


def test_tcp_polling_of_three_devices_gives_the_values_the_server_holds(
    registry: ProfileRegistry,
) -> None:
    units = {1: "eastron_sdm630", 2: "chint_dtsu666", 7: "acme_int"}

    async def scenario() -> tuple[Recorder, ModbusCollector, ModbusSimulator]:
        port = 0  # the simulator picks a free port
        meters = [SimMeter(u, registry[p], mean_power_w=400.0) for u, p in units.items()]
        async with ModbusSimulator(meters, port=port, update_interval=None, seed=3) as sim:
            port = sim.port
            recorder = Recorder()
            collector = ModbusCollector([make_bus(port, units)], registry, recorder)
            await collector.poll_once()
            collector.close()
            return recorder, collector, sim

    recorder, collector, sim = run(scenario())
    for unit in units:
        assert_values_match(recorder, sim, unit)
    assert recorder.of("m2")["voltage_l1_v"].value == pytest.approx(230, abs=15)  # 0.1 V units
    assert {r.source for r in recorder.readings if r.meter_id == "m1"} == {
        "modbus:bus0/eastron_sdm630@1"
    }
    health = {h.meter_id: h for h in collector.health()}
    plans = collector.buses[0].plans
    for unit, profile in units.items():
        h = health[f"m{unit}"]
        assert (h.reads, h.errors, h.offline, h.profile) == (1, 0, False, profile)
        assert h.requests == len(plans[f"m{unit}"].blocks)
        assert h.registers == plans[f"m{unit}"].registers
        assert h.readings == len(registry[profile].registers)
        assert h.last_success is not None


def test_rtu_framing_over_tcp(registry: ProfileRegistry) -> None:
    units = {3: "chint_ddsu666", 4: "eastron_sdm120"}

    async def scenario() -> tuple[Recorder, ModbusSimulator]:
        port = 0  # the simulator picks a free port
        meters = [SimMeter(u, registry[p]) for u, p in units.items()]
        async with ModbusSimulator(meters, port=port, framer="rtu", update_interval=None) as sim:
            port = sim.port
            recorder = Recorder()
            bus = make_bus(port, units, framer="rtu-over-tcp")
            async with ModbusCollector([bus], registry, recorder) as collector:
                await collector.poll_once()
            return recorder, sim

    recorder, sim = run(scenario())
    for unit in units:
        assert_values_match(recorder, sim, unit)


def test_block_reads_and_single_reads_on_a_meter_that_refuses_long_reads(
    registry: ProfileRegistry,
) -> None:
    async def scenario(single: bool) -> tuple[Recorder, ModbusCollector]:
        port = 0  # the simulator picks a free port
        meters = [SimMeter(5, registry["eastron_sdm630"], refuse_long_reads=True)]
        async with ModbusSimulator(meters, port=port, update_interval=None) as sim:
            port = sim.port
            recorder = Recorder()
            bus = make_bus(port, {5: "eastron_sdm630"})
            if single:
                device = bus.devices[0].model_copy(update={"single_reads": True})
                bus = bus.model_copy(update={"devices": (device,)})
            collector = ModbusCollector([bus], registry, recorder)
            await collector.poll_once()
            collector.close()
            return recorder, collector

    recorder, collector = run(scenario(single=False))
    (health,) = collector.health()
    assert recorder.readings == []
    assert health.errors == 1 and health.consecutive_failures == 1
    assert "exception 2 (illegal data address)" in str(health.last_error)
    assert "single_reads = true" in str(health.last_error)

    recorder, collector = run(scenario(single=True))
    (health,) = collector.health()
    assert health.requests == len(registry["eastron_sdm630"].registers) == 19
    assert health.registers == 38 and health.errors == 0
    assert len(recorder.readings) == 19


def test_a_dead_device_delays_the_others_by_at_most_its_timeout(
    registry: ProfileRegistry,
) -> None:
    units = {1: "eastron_sdm120", 2: "eastron_sdm120", 3: "chint_ddsu666"}

    async def scenario() -> tuple[list[float], list[float], Recorder, ModbusCollector]:
        port = 0  # the simulator picks a free port
        meters = [SimMeter(u, registry[p]) for u, p in units.items()]
        async with ModbusSimulator(meters, port=port, update_interval=None) as sim:
            port = sim.port
            sim.silence(1)  # the first device of the bus is dead
            recorder = Recorder()
            collector = ModbusCollector([make_bus(port, units)], registry, recorder)
            rounds = []
            for _ in range(2):
                recorder.arrivals.clear()
                began = time.monotonic()
                await collector.poll_once()
                rounds.append([t - began for _, t in recorder.arrivals])
            collector.close()
            return rounds[0], rounds[1], recorder, collector

    first, second, recorder, collector = run(scenario())
    # round 1: the dead device is polled first and holds the bus for one timeout, no more
    assert len(first) == 2
    assert max(first) < TIMEOUT_S + MARGIN_S
    assert min(first) >= TIMEOUT_S * 0.9  # it really waited for the dead one
    # round 2: a failing device goes last, the others do not wait for it at all
    assert len(second) == 2
    assert max(second) < MARGIN_S
    health = {h.meter_id: h for h in collector.health()}
    assert health["m1"].consecutive_failures == 2 and health["m1"].reads == 0
    assert health["m2"].reads == health["m3"].reads == 2
    assert {r.meter_id for r in recorder.readings} == {"m2", "m3"}


class CountingConnection(PymodbusConnection):
    """The real connection, counting resets (drops) and failing chosen reads once."""

    resets: ClassVar[int] = 0
    reads: ClassVar[int] = 0
    fail_once: ClassVar[set[int]] = set()

    def reset(self) -> None:
        if self._client is not None:
            CountingConnection.resets += 1
        super().reset()

    async def read(
        self, function: int, address: int, count: int, unit: int, timeout: float
    ) -> list[int]:
        CountingConnection.reads += 1
        if unit in CountingConnection.fail_once:
            CountingConnection.fail_once.discard(unit)
            raise DeviceTimeoutError(f"unit {unit}: injected timeout")
        return await super().read(function, address, count, unit, timeout)


def test_a_late_answer_is_never_taken_for_the_next_one(registry: ProfileRegistry) -> None:
    # RTU framing has no transaction id: after a timeout the connection is dropped, so the
    # slow meter's late answer cannot be read as the answer to the next request
    units = {1: "eastron_sdm120", 2: "eastron_sdm120", 3: "eastron_sdm120"}

    async def scenario() -> tuple[Recorder, ModbusSimulator, ModbusCollector]:
        port = 0  # the simulator picks a free port
        meters = [SimMeter(u, registry[p]) for u, p in units.items()]
        async with ModbusSimulator(meters, port=port, framer="rtu", update_interval=None) as sim:
            port = sim.port
            sim.slow_down(2, TIMEOUT_S + 0.2)
            recorder = Recorder()
            bus = make_bus(port, units, framer="rtu-over-tcp")
            collector = ModbusCollector(
                [bus], registry, recorder, connection_factory=CountingConnection
            )
            CountingConnection.resets = 0
            await collector.poll_once()
            await asyncio.sleep(0.3)  # the late answer arrives (on the dropped connection)
            await collector.poll_once()
            collector.close()
            return recorder, sim, collector

    recorder, sim, collector = run(scenario())
    assert CountingConnection.resets == 2  # one drop per timeout
    assert_values_match(recorder, sim, 3)
    assert_values_match(recorder, sim, 1)
    assert {h.meter_id: h.reads for h in collector.health()} == {"m1": 2, "m2": 0, "m3": 2}


def test_nan_is_kept_and_flagged(registry: ProfileRegistry) -> None:
    async def scenario() -> Recorder:
        port = 0  # the simulator picks a free port
        async with ModbusSimulator(
            [SimMeter(1, registry["chint_dtsu666"])], port=port, update_interval=None
        ) as sim:
            port = sim.port
            sim.inject_nan(1, "power_w")
            await sim.update()
            recorder = Recorder()
            async with ModbusCollector(
                [make_bus(port, {1: "chint_dtsu666"})], registry, recorder
            ) as collector:
                await collector.poll_once()
            return recorder

    readings = run(scenario()).of("m1")
    assert math.isnan(readings["power_w"].value)
    assert readings["power_w"].quality == (Quality.INVALID_VALUE.value,)
    assert readings["power_l1_w"].quality == ()
    assert readings["energy_import_kwh"].value > 0


def test_counter_rollover_and_meter_reset_reach_the_collector(registry: ProfileRegistry) -> None:
    t0 = dt.datetime(2026, 10, 1, 10, 0, tzinfo=UTC)

    async def scenario() -> list[tuple[float, float]]:
        port = 0  # the simulator picks a free port
        meter = SimMeter(7, registry["acme_int"], mean_power_w=800.0)
        async with ModbusSimulator(
            [meter], port=port, update_interval=None, clock=lambda: t0
        ) as sim:
            port = sim.port
            seen: list[Sequence[Reading]] = []
            collector = ModbusCollector([make_bus(port, {7: "acme_int"})], registry, seen.append)
            wrap = sim.inject_rollover(7, below_kwh=0.05)
            steps = [t0, t0 + dt.timedelta(hours=2)]  # two hours of load roll it over
            out = []
            for moment in steps:
                await sim.update(moment)
                await collector.poll_once()
                out.append((_energy(seen[-1]), wrap))
            sim.reset_meter(7)
            await sim.update(t0 + dt.timedelta(hours=2, minutes=1))
            await collector.poll_once()
            out.append((_energy(seen[-1]), sim.values(7)["energy_import_kwh"]))
            collector.close()
            return out

    (before, wrap), (after, _), (reset, held) = run(scenario())
    assert wrap == pytest.approx(2**32 * 0.01)  # u32 in 10 Wh steps
    assert before == pytest.approx(wrap - 0.05, abs=0.01)
    assert 0.0 <= after < 5.0  # wrapped through zero, not a huge jump
    assert reset == pytest.approx(held, abs=0.01) and reset < 0.1


def _energy(readings: Sequence[Reading]) -> float:
    return next(r.value for r in readings if r.quantity == "energy_import_kwh")


def test_a_failing_sink_is_counted_and_the_bus_goes_on(
    registry: ProfileRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def sink(readings: Sequence[Reading]) -> None:
        raise OSError("disk full")

    async def scenario() -> ModbusCollector:
        port = 0  # the simulator picks a free port
        async with ModbusSimulator(
            [SimMeter(1, registry["eastron_sdm120"])], port=port, update_interval=None
        ) as sim:
            port = sim.port
            collector = ModbusCollector([make_bus(port, {1: "eastron_sdm120"})], registry, sink)
            await collector.poll_once()
            await collector.poll_once()
            collector.close()
            return collector

    with caplog.at_level(logging.ERROR, logger="meterlake.ingest.modbus"):
        (health,) = run(scenario()).health()
    assert (health.reads, health.sink_errors, health.consecutive_failures) == (2, 2, 0)
    assert "the sink refused 11 readings" in caplog.text


# --- schedule, retries, offline ------------------------------------------------------------


def test_polls_are_aligned_to_the_wall_clock(registry: ProfileRegistry) -> None:
    start = dt.datetime(2026, 10, 1, 9, 59, 7, 300_000, tzinfo=UTC)
    units = {1: "eastron_sdm120", 2: "chint_ddsu666"}

    async def scenario() -> tuple[Recorder, ModbusCollector]:
        port = 0  # the simulator picks a free port
        meters = [SimMeter(u, registry[p]) for u, p in units.items()]
        async with ModbusSimulator(meters, port=port, update_interval=None) as sim:
            port = sim.port
            clock = FakeClock(start)
            bus = make_bus(port, units, interval="60s")
            slow = bus.devices[1].model_copy(update={"interval": 900.0})
            bus = bus.model_copy(update={"devices": (bus.devices[0], slow)})
            recorder = Recorder()
            collector = ModbusCollector([bus], registry, recorder, clock=clock)
            await run_until(collector, clock, dt.datetime(2026, 10, 1, 10, 16, 30, tzinfo=UTC))
            return recorder, collector

    recorder, collector = run(scenario())
    minute = [dt.datetime(2026, 10, 1, 10, m, tzinfo=UTC) for m in range(17)]
    assert sorted({r.ts_us for r in recorder.readings if r.meter_id == "m1"}) == [
        to_us(t) for t in minute
    ]
    assert sorted({r.ts_us for r in recorder.readings if r.meter_id == "m2"}) == [
        to_us(minute[0]),
        to_us(minute[15]),
    ]
    next_polls = {h.meter_id: h.next_poll for h in collector.health()}
    assert next_polls == {
        "m1": dt.datetime(2026, 10, 1, 10, 17, tzinfo=UTC),
        "m2": dt.datetime(2026, 10, 1, 10, 30, tzinfo=UTC),
    }


def test_offline_after_n_failures_and_back_online_when_it_answers(
    registry: ProfileRegistry, caplog: pytest.LogCaptureFixture
) -> None:
    def at(hh: int, mm: int, ss: int = 0) -> dt.datetime:
        return dt.datetime(2026, 10, 1, hh, mm, ss, tzinfo=UTC)

    units = {1: "eastron_sdm120", 2: "eastron_sdm120"}
    snapshots = {}

    async def scenario() -> tuple[Recorder, ModbusCollector]:
        port = 0  # the simulator picks a free port
        meters = [SimMeter(u, registry[p]) for u, p in units.items()]
        async with ModbusSimulator(meters, port=port, update_interval=None) as sim:
            port = sim.port
            sim.silence(1)
            clock = FakeClock(at(10, 0, 30))
            bus = make_bus(
                port,
                units,
                timeout=0.2,
                offline_after=2,
                offline_retry="2m",
                offline_retry_max="5m",
            )
            recorder = Recorder()
            collector = ModbusCollector([bus], registry, recorder, clock=clock)
            clock.call_at(at(10, 9), lambda: snapshots.update(offline=collector.health()[0]))
            clock.call_at(at(10, 9, 1), lambda: sim.silence(1, silent=False))
            await run_until(collector, clock, at(10, 15, 30))
            return recorder, collector

    with caplog.at_level(logging.INFO, logger="meterlake.ingest.modbus"):
        recorder, collector = run(scenario())
    # polls failed at 10:01 and 10:02 (offline), probes failed at 10:04 (+2 min) and 10:08
    # (+4 min); the next probe waits the cap, 5 min: 10:13, and that one answers
    offline = snapshots["offline"]
    assert offline.offline and offline.consecutive_failures == 4 and offline.errors == 4
    assert offline.next_poll == at(10, 13)
    assert offline.reads == 0
    back = collector.health()[0]
    assert not back.offline and back.consecutive_failures == 0
    assert back.reads == 3 and back.errors == 4
    assert sorted({r.ts_us for r in recorder.readings if r.meter_id == "m1"}) == [
        to_us(at(10, 13)),
        to_us(at(10, 14)),
        to_us(at(10, 15)),
    ]
    # the healthy neighbour was polled every minute all along
    assert collector.health()[1].reads == 15
    assert "m1 (unit 1): offline after 2 failed polls" in caplog.text
    assert "m1 (unit 1): back online after 4 failed polls" in caplog.text


def test_a_failed_poll_is_reread_after_a_backoff(registry: ProfileRegistry) -> None:
    start = dt.datetime(2026, 10, 1, 10, 0, 30, tzinfo=UTC)

    async def scenario() -> tuple[Recorder, ModbusCollector]:
        port = 0  # the simulator picks a free port
        async with ModbusSimulator(
            [SimMeter(1, registry["eastron_sdm120"])], port=port, update_interval=None
        ) as sim:
            port = sim.port
            clock = FakeClock(start)
            bus = make_bus(port, {1: "eastron_sdm120"}, retries=2, retry_delay="500ms")
            recorder = Recorder()
            collector = ModbusCollector(
                [bus], registry, recorder, clock=clock, connection_factory=CountingConnection
            )
            CountingConnection.fail_once = {1}
            await run_until(collector, clock, dt.datetime(2026, 10, 1, 10, 1, 30, tzinfo=UTC))
            return recorder, collector

    recorder, collector = run(scenario())
    (health,) = collector.health()
    assert (health.reads, health.errors, health.consecutive_failures) == (1, 1, 0)
    # the 10:01 poll failed, its re-read half a second later gave the readings
    assert {r.ts_us for r in recorder.readings} == {
        to_us(dt.datetime(2026, 10, 1, 10, 1, 0, 500_000, tzinfo=UTC))
    }


def test_next_fire_is_strictly_after_and_aligned() -> None:
    trigger = aligned_trigger(900.0)
    on = dt.datetime(2026, 10, 1, 10, 15, tzinfo=UTC)
    assert next_fire(trigger, on) == dt.datetime(2026, 10, 1, 10, 30, tzinfo=UTC)
    assert next_fire(trigger, on - dt.timedelta(microseconds=1)) == on


def test_start_and_stop_on_a_thread(registry: ProfileRegistry) -> None:
    loop = asyncio.new_event_loop()
    sim = ModbusSimulator([SimMeter(1, registry["eastron_sdm120"])], port=0)
    loop.run_until_complete(sim.start())
    try:
        collector = ModbusCollector(
            [make_bus(sim.port, {1: "eastron_sdm120"}, interval="200ms")], registry, Recorder()
        )
        collector.start()
        deadline = time.monotonic() + 5
        while collector.health()[0].reads < 2 and time.monotonic() < deadline:
            loop.run_until_complete(asyncio.sleep(0.05))  # the server answers on this loop
        collector.stop(timeout_s=5)
        reads = collector.health()[0].reads
        loop.run_until_complete(asyncio.sleep(0.5))
        assert reads >= 2
        assert collector.health()[0].reads == reads  # nothing polls after stop()
    finally:
        loop.run_until_complete(sim.stop())
        loop.close()


# --- configuration -------------------------------------------------------------------------

EXAMPLE = """
[[modbus]]
name = "bus0"
host = "127.0.0.1"        # or: serial = "/dev/ttyUSB0", baudrate = 9600
port = 5020
framer = "socket"         # socket | rtu | rtu-over-tcp
interval = "60s"
[[modbus.devices]]
meter_id = "sdm-001"
unit = 1
profile = "eastron_sdm630"
"""


def test_the_issue_example_parses() -> None:
    (bus,) = (ModbusBusSettings.model_validate(b) for b in tomllib.loads(EXAMPLE)["modbus"])
    assert (bus.name, bus.endpoint, bus.framer, bus.interval) == (
        "bus0",
        "127.0.0.1:5020",
        "socket",
        60.0,
    )
    assert bus.devices[0].meter_id == "sdm-001" and bus.devices[0].single_reads is None
    serial = ModbusBusSettings.model_validate(
        {
            "name": "line1",
            "serial": "/dev/ttyUSB0",
            "parity": "E",
            "devices": [{"meter_id": "d-1", "unit": 3, "profile": "chint_dtsu666"}],
        }
    )
    assert (serial.framer, serial.endpoint, serial.baudrate) == ("rtu", "/dev/ttyUSB0", 9600)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"serial": "/dev/ttyUSB0"}, "either host .* or serial"),
        ({"framer": "rtu"}, "'rtu-over-tcp'"),
        ({"interval": "5 fortnights"}, "duration such as '60s'"),
        ({"interval": "0s"}, "greater than or equal to 0.1"),
        ({"timeout": "2m"}, "less than or equal to 60"),
        ({"retries": 9}, "less than or equal to 5"),
        ({"max_block": 126}, "less than or equal to 125"),
        ({"devices": [{"meter_id": "a/b", "unit": 1, "profile": "x"}]}, "is not allowed"),
        (
            {
                "devices": [
                    {"meter_id": "a", "unit": 1, "profile": "x"},
                    {"meter_id": "b", "unit": 1, "profile": "x"},
                ]
            },
            r"unit ids \[1\] appear more than once",
        ),
        (
            {"framer": "rtu-over-tcp", "devices": [{"meter_id": "a", "unit": 0, "profile": "x"}]},
            "cannot be used with RTU framing",
        ),
        ({"speed": 9600}, "Extra inputs are not permitted"),
    ],
)
def test_wrong_bus_settings_are_refused(change: dict[str, Any], message: str) -> None:
    raw: dict[str, Any] = {
        "name": "b",
        "host": "127.0.0.1",
        "devices": [{"meter_id": "a", "unit": 1, "profile": "eastron_sdm630"}],
        **change,
    }
    with pytest.raises(ValueError, match=message):
        ModbusBusSettings.model_validate(raw)


def test_durations() -> None:
    assert [parse_duration(v) for v in ("60s", "15m", "1h", "250ms", "1.5", 2, "3min")] == [
        60.0,
        900.0,
        3600.0,
        0.25,
        1.5,
        2.0,
        180.0,
    ]
    for bad in ("-1s", "1d", True, "", None):
        with pytest.raises(ValueError, match="duration"):
            parse_duration(bad)


def test_unknown_profile_and_repeated_meter_ids_are_refused(registry: ProfileRegistry) -> None:
    bus = make_bus(5020, {1: "eastron_sdm999"})
    with pytest.raises(ConfigError, match=r"bus0, device m1 \(unit 1\): unknown device profile"):
        ModbusCollector([bus], registry, Recorder())
    same = make_bus(5020, {1: "eastron_sdm630"})
    other = same.model_copy(update={"name": "bus1"})
    with pytest.raises(ConfigError, match="meter id 'm1' is on bus 'bus0' and on bus 'bus1'"):
        ModbusCollector([same, other], registry, Recorder())
    with pytest.raises(ValueError, match="bus names"):
        check_modbus_buses((same, same))


def test_a_serial_line(registry: ProfileRegistry) -> None:
    port = free_tcp_port()
    # pyserial opens "socket://" URLs like a serial device: RTU frames over a socket
    bus = ModbusBusSettings.model_validate(
        {
            "name": "line",
            "serial": f"socket://127.0.0.1:{port}",
            "timeout": TIMEOUT_S,
            "devices": [{"meter_id": "m4", "unit": 4, "profile": "eastron_sdm120"}],
        }
    )
    if importlib.util.find_spec("serial") is None:
        with pytest.raises(ConfigError, match="needs pyserial"):
            ModbusCollector([bus], registry, Recorder())
        return

    async def scenario() -> tuple[Recorder, ModbusSimulator]:
        meters = [SimMeter(4, registry["eastron_sdm120"])]
        async with ModbusSimulator(meters, port=port, framer="rtu", update_interval=None) as sim:
            recorder = Recorder()
            async with ModbusCollector([bus], registry, recorder) as collector:
                await collector.poll_once()
            return recorder, sim

    recorder, sim = run(scenario())
    assert_values_match(recorder, sim, 4)


def test_simulated_fleet_helper(registry: ProfileRegistry) -> None:
    meters = meters_for([registry["eastron_sdm120"], registry["chint_dtsu666"]], 5)
    assert [m.unit for m in meters] == [1, 2, 3, 4, 5]
    assert [m.pv_peak_w > 0 for m in meters] == [False, False, False, False, True]
    with pytest.raises(ConfigError, match="unit ids"):
        ModbusSimulator([meters[0], meters[0]], port=1)


def test_a_dead_gateway_fails_the_round_fast(registry: ProfileRegistry) -> None:
    units = {1: "eastron_sdm120", 2: "eastron_sdm120", 3: "eastron_sdm120"}

    async def scenario() -> tuple[float, ModbusCollector]:
        collector = ModbusCollector(
            [make_bus(free_tcp_port(), units)],
            registry,
            Recorder(),
            connection_factory=CountingConnection,
        )
        CountingConnection.reads = 0
        began = time.monotonic()
        await collector.poll_once()  # nothing listens on that port
        collector.close()
        return time.monotonic() - began, collector

    took, collector = run(scenario())
    assert took < TIMEOUT_S + MARGIN_S
    assert CountingConnection.reads == 1  # one connect attempt for the round, not one each
    assert all(h.consecutive_failures == 1 for h in collector.health())
    assert all("cannot connect" in str(h.last_error) for h in collector.health())
