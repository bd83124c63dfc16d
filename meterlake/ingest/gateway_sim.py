"""Simulate the meters a gateway config expects: what ``meterlake simulate-gateway`` runs.

:func:`simulate_gateway` reads the collectors of a :class:`Settings` and plans, for each

``[[modbus]]`` bus
    a :class:`~meterlake.ingest.modbus_sim.ModbusSimulator` listening on the bus's ``host`` and
    ``port`` (framer ``socket``, or ``rtu`` frames for ``rtu-over-tcp``), with one simulated
    meter per ``[[modbus.devices]]`` entry at its unit id, of its profile (shipped or from
    ``[collect] profiles_dir``); serial lines cannot be simulated;
``[[mqtt]]`` subscription
    ``meters_per_subscription`` simulated meters (:mod:`meterlake.ingest.mqtt_sim`) publishing
    to the subscription's broker in its ``format``, each on a topic made from the first topic
    filter (``$share/<group>/`` removed, every ``+`` and ``#`` replaced by the device name
    ``sim-<subscription>-NN``), with the ``{field:...}`` parts of its ``meter_id`` template
    filled in. Which meter id the collector will give each device is found by decoding a
    simulated payload with the subscription's own decoder and options, so a config whose
    template cannot tell the devices apart (e.g. ``{topic[0]}`` on ``shellies/+/events/rpc``)
    is refused here, as it would mix up real devices.

The returned :class:`GatewaySimulation` is only a plan until :meth:`GatewaySimulation.start`:
then the Modbus servers run on an event loop in a thread of their own and every subscription's
publisher on its own thread, one reading every ``interval_s`` seconds of wall-clock time, until
:meth:`GatewaySimulation.stop`.

Faults (``faults=True``; positions drawn from the seed, onsets 5 to 10 readings after start)
-------------------------------------------------------------------------------------------

MQTT (:func:`~meterlake.ingest.mqtt_sim.plan_faults` over all simulated MQTT meters): every
meter sends 20 % garbage payloads; one stops sending, one's register rolls over, one is reset,
one's clock drifts beyond its subscription's ``max_clock_ahead_s``.
Modbus (over all configured devices): one stops answering for five readings, one's import
register rolls over, one is reset to 0. With fewer meters, the first kinds only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import threading
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar

import numpy as np
import paho.mqtt.client as paho

from meterlake.config.collect import ModbusBusSettings
from meterlake.config.errors import ConfigError, PermanentError
from meterlake.config.settings import MqttSettings, Settings
from meterlake.ingest.modbus_sim import ModbusSimulator, SimFramer, SimMeter
from meterlake.ingest.mqtt_sim import (
    NO_FAULTS,
    SIM_MAPPING,
    EncodeOptions,
    MeterFaults,
    MqttMeter,
    MqttMeterFleet,
    MqttPublisher,
    PublisherStats,
    plan_faults,
)
from meterlake.ingest.payloads import DECODERS, FormatOptions
from meterlake.ingest.profiles import ProfileRegistry, load_registry
from meterlake.ingest.readings import to_us
from meterlake.ingest.simulator import REGISTER_WRAP_KWH

log = logging.getLogger(__name__)

_T = TypeVar("_T")
FaultKind = Literal["silence", "stop", "garbage", "rollover", "reset", "clock_drift"]
GARBAGE_RATE: Final = 0.2
"""Share of every simulated MQTT meter's messages that is garbage when faults are on."""
FAULT_TICKS: Final = (5, 10)
"""First and last reading at which a fault may start."""
SILENT_TICKS: Final = 5
"""Readings a silenced Modbus device misses before it answers again."""
_BUSINESS_EVERY: Final = 4
"""Every fourth simulated meter has a small business's load."""
_LOOP_TIMEOUT_S: Final = 30.0
_REFERENCE: Final = dt.datetime(2026, 1, 5, 12, 0, tzinfo=dt.UTC)
"""When the payloads that find each device's meter id are said to be measured."""


@dataclass(frozen=True)
class SimulatedModbusDevice:
    """One simulated Modbus meter."""

    meter_id: str
    unit: int
    profile: str


@dataclass(frozen=True)
class SimulatedBus:
    """A Modbus TCP server standing in for one ``[[modbus]]`` bus."""

    name: str
    host: str
    port: int
    framer: SimFramer
    devices: tuple[SimulatedModbusDevice, ...]


@dataclass(frozen=True)
class SimulatedMqttMeter:
    """One simulated MQTT meter: its device name, topic and the meter id the collector gives
    its readings."""

    device: str
    topic: str
    meter_id: str


@dataclass(frozen=True)
class SimulatedSubscription:
    """The publishers standing in for the devices of one ``[[mqtt]]`` subscription."""

    name: str
    format: str
    broker: str
    """``host:port``."""
    topic_filter: str
    meters: tuple[SimulatedMqttMeter, ...]


@dataclass(frozen=True)
class SimulatedFault:
    """A fault the simulation injects."""

    meter_id: str
    kind: FaultKind
    at_s: float | None
    """Seconds after start when it begins; ``None``: all along."""
    detail: str


def topic_for(topic_filter: str, device: str) -> str:
    """The topic a device publishes on to reach a subscription to ``topic_filter``:
    ``$share/<group>/`` removed, each ``+`` and ``#`` replaced by ``device``.

    >>> topic_for("$share/gw/tele/+/SENSOR", "plug-7")
    'tele/plug-7/SENSOR'
    >>> topic_for("meters/#", "m-1")
    'meters/m-1'

    Raises
    ------
    ConfigError
        The filter is empty or malformed (no topic matching it can be made).
    """
    plain = topic_filter
    if plain.startswith("$share/"):
        parts = plain.split("/", 2)
        plain = parts[2] if len(parts) == 3 else ""
    topic = "/".join(device if level in ("+", "#") else level for level in plain.split("/"))
    if not plain or not paho.topic_matches_sub(plain, topic):
        raise ConfigError(f"topic filter {topic_filter!r}: no simulated topic matches it")
    return topic


def simulate_gateway(
    settings: Settings,
    *,
    meters_per_subscription: int,
    seed: int,
    interval_s: float,
    faults: bool,
) -> GatewaySimulation:
    """Plan simulated meters for every collector of ``settings`` (see the module docstring).

    Parameters
    ----------
    settings
        A gateway config (its ``[[modbus]]`` buses and ``[[mqtt]]`` subscriptions).
    meters_per_subscription
        Simulated meters publishing to each subscription (1 to 999).
    seed
        The same seed gives the same meters, values and faults.
    interval_s
        Wall-clock time between two MQTT readings of a meter and between two updates of the
        Modbus registers [s].
    faults
        Inject the faults of the module docstring.

    Returns
    -------
    GatewaySimulation
        Not yet started: call :meth:`GatewaySimulation.start` (or use it in a ``with``).

    Raises
    ------
    ConfigError
        Nothing to simulate, a serial bus, an unknown profile, a subscription without topics,
        or one whose payloads cannot be decoded back or whose meter ids collide.
    """
    if not 1 <= meters_per_subscription <= 999:
        raise ConfigError(f"meters_per_subscription={meters_per_subscription}: use 1 to 999")
    if not (math.isfinite(interval_s) and interval_s > 0):
        raise ConfigError(f"interval_s={interval_s!r}: use a positive number of seconds")
    if seed < 0:
        raise ConfigError(f"seed={seed!r}: use a non-negative integer")
    if not settings.modbus and not settings.mqtt:
        raise ConfigError("nothing to simulate: the config has no [[modbus]] or [[mqtt]] tables")
    buses: tuple[_Bus, ...] = ()
    if settings.modbus:
        registry = load_registry(settings.collect.profiles_dir)
        buses = tuple(_plan_bus(bus, registry) for bus in settings.modbus)
    subscriptions: list[_Subscription] = []
    for sub in settings.mqtt:
        subscriptions.append(_plan_subscription(sub, settings, meters_per_subscription))
    _check_distinct_ids([b.plan for b in buses], subscriptions)
    modbus_faults = _plan_modbus_faults([b.plan for b in buses], seed, interval_s) if faults else ()
    mqtt_faults: dict[str, MeterFaults] = {}
    if faults and subscriptions:
        windows = {m.device: s.settings.max_clock_ahead_s for s in subscriptions for m in s.meters}
        first, last = FAULT_TICKS
        mqtt_faults = plan_faults(
            list(windows),
            seed=seed,
            garbage_rate=GARBAGE_RATE,
            first_tick=first,
            last_tick=last,
            clock_window_s=windows,
        )
    return GatewaySimulation(
        settings,
        buses=buses,
        subscriptions=tuple(subscriptions),
        modbus_faults=modbus_faults,
        mqtt_faults=mqtt_faults,
        seed=seed,
        interval_s=interval_s,
    )


@dataclass(frozen=True)
class _Subscription:
    settings: MqttSettings
    plan: SimulatedSubscription
    options: EncodeOptions

    @property
    def meters(self) -> tuple[SimulatedMqttMeter, ...]:
        return self.plan.meters


@dataclass(frozen=True)
class _Bus:
    plan: SimulatedBus
    meters: tuple[SimMeter, ...]


@dataclass(frozen=True)
class _ModbusFault:
    bus: int
    unit: int
    fault: SimulatedFault


class GatewaySimulation:
    """Simulated meters of a gateway: Modbus servers and MQTT publishers (see
    :func:`simulate_gateway`, which makes it). Not thread-safe: start and stop it from one
    thread."""

    def __init__(
        self,
        settings: Settings,
        *,
        buses: tuple[_Bus, ...],
        subscriptions: tuple[_Subscription, ...],
        modbus_faults: tuple[_ModbusFault, ...],
        mqtt_faults: dict[str, MeterFaults],
        seed: int,
        interval_s: float,
    ) -> None:
        self.settings = settings
        self.buses = tuple(b.plan for b in buses)
        """The simulated Modbus buses."""
        self.subscriptions = tuple(s.plan for s in subscriptions)
        """The simulated MQTT devices, per subscription."""
        self.seed = seed
        self.interval_s = interval_s
        self._buses = buses
        self._subs = subscriptions
        self._modbus_faults = modbus_faults
        self._mqtt_faults = mqtt_faults
        self._servers: list[ModbusSimulator] = []
        self._publishers: list[MqttPublisher] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._fault_task: asyncio.Task[None] | None = None

    @property
    def meter_ids(self) -> tuple[str, ...]:
        """Every simulated meter's id, as the collector will store it."""
        modbus = [d.meter_id for bus in self.buses for d in bus.devices]
        return (*modbus, *(m.meter_id for s in self.subscriptions for m in s.meters))

    @property
    def faults(self) -> tuple[SimulatedFault, ...]:
        """Every injected fault (empty without ``faults``)."""
        ids = {m.device: m.meter_id for s in self.subscriptions for m in s.meters}
        windows = {m.device: s.settings.max_clock_ahead_s for s in self._subs for m in s.meters}
        mqtt = [
            fault
            for device, spec in self._mqtt_faults.items()
            for fault in _mqtt_fault_records(ids[device], spec, self.interval_s, windows[device])
        ]
        return (*(f.fault for f in self._modbus_faults), *mqtt)

    @property
    def running(self) -> bool:
        """True between :meth:`start` and :meth:`stop`."""
        return self._loop is not None or bool(self._publishers)

    def start(self) -> None:
        """Start the Modbus servers, then connect and start the MQTT publishers.

        Raises
        ------
        OSError
            A Modbus port cannot be listened on.
        ConnectionError
            A broker did not accept the connection.
        """
        if self.running:
            raise RuntimeError("the gateway simulation is already running")
        try:
            if self.buses:
                self._start_modbus()
            self._start_mqtt()
        except BaseException:
            self.stop()
            raise

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop publishing (waiting up to ``timeout_s`` [s] per publisher for the broker's
        acknowledgements) and close the Modbus servers."""
        for publisher in self._publishers:
            publisher.stop(timeout_s)
        self._publishers.clear()
        loop, self._loop = self._loop, None
        if loop is None:
            return
        task, self._fault_task = self._fault_task, None
        if task is not None:
            with contextlib.suppress(Exception):
                _run_in(loop, _cancel(task))
        for server in self._servers:
            with contextlib.suppress(Exception):
                _run_in(loop, server.stop())
        self._servers.clear()
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        loop.close()

    def __enter__(self) -> GatewaySimulation:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> dict[str, PublisherStats]:
        """What each subscription's publisher has sent so far, by subscription name."""
        return {
            sub.name: publisher.stats()
            for sub, publisher in zip(self.subscriptions, self._publishers, strict=False)
        }

    def summary(self) -> str:
        """What is served and published, and the faults, for a person to read."""
        lines = [
            f"simulated gateway: seed {self.seed}, a reading every {self.interval_s:g} s, "
            f"{len(self.meter_ids)} meters"
        ]
        for bus in self.buses:
            devices = ", ".join(f"{d.meter_id} (unit {d.unit}, {d.profile})" for d in bus.devices)
            lines.append(f"modbus {bus.name} on {bus.host}:{bus.port} ({bus.framer}): {devices}")
        for sub in self.subscriptions:
            lines.append(
                f"mqtt {sub.name}: {sub.format} payloads to {sub.broker}, for {sub.topic_filter}"
            )
            lines.extend(f"  {m.meter_id} on {m.topic}" for m in sub.meters)
        faults = self.faults
        lines.append("faults: " + ("none" if not faults else f"{len(faults)}"))
        for fault in faults:
            when = "" if fault.at_s is None else f" from {fault.at_s:g} s"
            lines.append(f"  {fault.meter_id}: {fault.kind}{when}: {fault.detail}")
        return "\n".join(lines)

    # --- internals ------------------------------------------------------------------------

    def _start_modbus(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._thread = threading.Thread(target=loop.run_forever, name="modbus-sim", daemon=True)
        self._thread.start()
        for index, bus in enumerate(self._buses):
            server = ModbusSimulator(
                bus.meters,
                port=bus.plan.port,
                host=bus.plan.host,
                framer=bus.plan.framer,
                seed=_derived_seed(self.seed, 1, index),
                timezone=self.settings.site.timezone,
                update_interval=self.interval_s,
            )
            _run_in(loop, server.start())
            self._servers.append(server)
        if self._modbus_faults:
            self._fault_task = _run_in(loop, _spawn(self._inject_modbus_faults()))

    async def _inject_modbus_faults(self) -> None:
        loop = asyncio.get_running_loop()
        began = loop.time()
        events: list[tuple[float, int, _ModbusFault, bool]] = []
        for order, item in enumerate(self._modbus_faults):
            at = item.fault.at_s or 0.0
            events.append((at, order, item, True))
            if item.fault.kind == "silence":
                events.append((at + SILENT_TICKS * self.interval_s, order, item, False))
        for at, _, item, begins in sorted(events, key=lambda e: (e[0], e[1])):
            await asyncio.sleep(max(0.0, began + at - loop.time()))
            server = self._servers[item.bus]
            if item.fault.kind == "silence":
                server.silence(item.unit, silent=begins)
            elif item.fault.kind == "reset":
                server.reset_meter(item.unit)
            else:
                register = server.meters[item.unit].profile.register("energy_import_kwh")
                server.inject_rollover(
                    item.unit,
                    below_kwh=self.interval_s / 3600.0 * 0.5,  # ~2 readings at 250 W
                    wraps_at_kwh=None if register.rollover else REGISTER_WRAP_KWH,
                )
            log.info("simulated fault: %s %s", item.fault.meter_id, item.fault.kind)

    def _start_mqtt(self) -> None:
        start = dt.datetime.now(dt.UTC).replace(microsecond=0)
        site_zone = self.settings.site.timezone
        for index, sub in enumerate(self._subs):
            meters = [
                MqttMeter(
                    m.device,
                    business=position % _BUSINESS_EVERY == _BUSINESS_EVERY - 1,
                    faults=self._mqtt_faults.get(m.device, NO_FAULTS),
                )
                for position, m in enumerate(sub.meters)
            ]
            fleet = MqttMeterFleet(
                meters,
                sub.settings.format,
                start=start,
                interval_s=self.interval_s,
                seed=_derived_seed(self.seed, 2, index),
                timezone=site_zone,
                options=sub.options,
                topics={m.device: m.topic for m in sub.meters},
            )
            publisher = MqttPublisher(
                fleet, sub.settings, client_id=f"meterlake-sim-{sub.settings.name}"
            )
            publisher.start()
            self._publishers.append(publisher)


# --- planning -----------------------------------------------------------------------------


def _plan_bus(bus: ModbusBusSettings, registry: ProfileRegistry) -> _Bus:
    if bus.host is None:
        raise ConfigError(
            f"[[modbus]] {bus.name}: a serial line ({bus.serial}) cannot be simulated; "
            "simulate it over TCP (host, port, framer = 'rtu-over-tcp')"
        )
    framer: SimFramer = "socket" if bus.framer == "socket" else "rtu"
    devices = tuple(SimulatedModbusDevice(d.meter_id, d.unit, d.profile) for d in bus.devices)
    if bad := [d.unit for d in devices if not 1 <= d.unit <= 247]:
        raise ConfigError(f"[[modbus]] {bus.name}: unit ids {bad} cannot be simulated: use 1-247")
    meters = tuple(
        SimMeter(
            unit=device.unit,
            profile=registry.get_profile(device.profile),
            business=position % _BUSINESS_EVERY == _BUSINESS_EVERY - 1,
        )
        for position, device in enumerate(devices)
    )
    return _Bus(SimulatedBus(bus.name, bus.host, bus.port, framer, devices), meters)


def _plan_subscription(sub: MqttSettings, settings: Settings, count: int) -> _Subscription:
    where = f"[[mqtt]] {sub.name}"
    if not sub.topics:
        raise ConfigError(f"{where} has no topics: there is nothing to publish on")
    site_zone = settings.site.timezone
    options = EncodeOptions(
        timezone=sub.timezone or site_zone,
        meter_id=sub.meter_id,
        mapping=sub.mapping or SIM_MAPPING,
    )
    devices = [f"sim-{sub.name}-{i:02d}" for i in range(1, count + 1)]
    topics = {d: topic_for(sub.topics[0], d) for d in devices}
    fleet = MqttMeterFleet(
        [MqttMeter(d) for d in devices],
        sub.format,
        start=_REFERENCE,
        options=options,
        topics=topics,
        timezone=site_zone,
    )
    decode = DECODERS[sub.format]
    decode_options = FormatOptions.from_settings(sub, site_timezone=site_zone)
    meters = []
    for publication in fleet.step():
        message = publication.message
        try:
            readings = decode(
                message.payload,
                topic=message.topic,
                received_at_us=to_us(publication.state.ts),
                options=decode_options,
            )
        except PermanentError as exc:
            raise ConfigError(
                f"{where}: simulated {sub.format} payloads on {message.topic} do not decode with "
                f"this subscription's settings: {exc}"
            ) from None
        ids = sorted({r.meter_id for r in readings})
        if len(ids) != 1:
            raise ConfigError(f"{where}: one simulated device gives meter ids {ids}")
        meters.append(SimulatedMqttMeter(publication.state.device, message.topic, ids[0]))
    ids = [m.meter_id for m in meters]
    if len(set(ids)) < len(ids):
        raise ConfigError(
            f"{where}: meter_id {sub.meter_id or '(the format default)'} gives several devices "
            f"the same meter id ({', '.join(sorted(set(ids)))}) on topics like "
            f"{meters[0].topic}; real devices would be mixed up too: take the id from a "
            "topic segment the filter leaves open (+) or from a payload field"
        )
    plan = SimulatedSubscription(
        name=sub.name,
        format=sub.format,
        broker=f"{sub.host}:{sub.port}",
        topic_filter=sub.topics[0],
        meters=tuple(meters),
    )
    return _Subscription(sub, plan, options)


def _check_distinct_ids(buses: Sequence[SimulatedBus], subs: Sequence[_Subscription]) -> None:
    seen: dict[str, str] = {d.meter_id: f"bus {b.name}" for b in buses for d in b.devices}
    for sub in subs:
        for meter in sub.meters:
            if meter.meter_id in seen:
                raise ConfigError(
                    f"simulated meter id {meter.meter_id!r} of [[mqtt]] {sub.plan.name} is "
                    f"also on {seen[meter.meter_id]}"
                )
            seen[meter.meter_id] = f"[[mqtt]] {sub.plan.name}"


def _plan_modbus_faults(
    buses: Sequence[SimulatedBus], seed: int, interval_s: float
) -> tuple[_ModbusFault, ...]:
    devices = [(b, d) for b, bus in enumerate(buses) for d in bus.devices]
    rng = np.random.default_rng([seed, 5, len(devices)])
    order = rng.permutation(len(devices)).tolist()
    first, last = FAULT_TICKS
    ticks = rng.integers(first, last + 1, 3).tolist()
    silent_s = SILENT_TICKS * interval_s
    details = {
        "silence": f"stops answering for {SILENT_TICKS} readings ({silent_s:g} s)",
        "rollover": "import register rolls over to 0",
        "reset": "energy registers reset to 0",
    }
    kinds: tuple[FaultKind, ...] = ("silence", "rollover", "reset")
    out = []
    for kind, index, tick in zip(kinds, order, ticks, strict=False):
        bus, device = devices[index]
        fault = SimulatedFault(device.meter_id, kind, tick * interval_s, details[kind])
        out.append(_ModbusFault(bus, device.unit, fault))
    return tuple(out)


def _mqtt_fault_records(
    meter_id: str, spec: MeterFaults, interval_s: float, window_s: float
) -> list[SimulatedFault]:
    out = []
    if spec.garbage_rate:
        out.append(SimulatedFault(meter_id, "garbage", None, f"{spec.garbage_rate:.0%} garbage"))
    if spec.stop_at is not None:
        out.append(SimulatedFault(meter_id, "stop", spec.stop_at * interval_s, "stops sending"))
    if spec.rollover_at is not None:
        at = spec.rollover_at * interval_s
        detail = f"register passes {spec.wraps_at_kwh:g} kWh and restarts near 0"
        out.append(SimulatedFault(meter_id, "rollover", at, detail))
    if spec.reset_at is not None:
        at = spec.reset_at * interval_s
        out.append(SimulatedFault(meter_id, "reset", at, "register reset to 0"))
    if spec.clock_drift_s:
        detail = (
            f"device clock gains {spec.clock_drift_s:g} s per reading; more than "
            f"{window_s:g} s ahead (max_clock_ahead_s) from here on, so its readings get the "
            "receipt time, flagged clock_invalid"
        )
        leaves = math.floor(window_s / abs(spec.clock_drift_s)) + 1
        out.append(SimulatedFault(meter_id, "clock_drift", leaves * interval_s, detail))
    return out


def _derived_seed(seed: int, *keys: int) -> int:
    return int(np.random.SeedSequence([seed, *keys]).generate_state(1)[0])


async def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    return asyncio.create_task(coro)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def _run_in(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, _T]) -> _T:
    return asyncio.run_coroutine_threadsafe(coro, loop).result(_LOOP_TIMEOUT_S)
