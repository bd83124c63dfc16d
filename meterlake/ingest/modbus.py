"""The Modbus collector: poll meters on Modbus TCP, RTU lines and RTU-over-TCP into a sink.

A bus is one connection with several meters (unit ids) that are polled one after another, each
at its own interval aligned to the wall clock (``60s``: at :00 of every minute; the fire times
come from an apscheduler ``IntervalTrigger`` started at the Unix epoch, driven by an asyncio
loop with an injectable clock). A poll reads the device's blocks (see
:mod:`meterlake.ingest.registers`), decodes them and hands the readings to the caller's sink.

A dead device must not stall the others:

- every request waits at most the device's ``timeout``; the first block that times out ends
  the poll, so a silent device holds the bus for at most one timeout per poll;
- in each round the devices that answered last time are polled first, a failing one last;
- a failed poll is re-read ``retries`` times after a back-off (``retry_delay``, then doubled)
  *between* rounds, never delaying the next round;
- after ``offline_after`` failed polls in a row a device is offline: it is only probed, after
  ``offline_retry`` and then twice as long each time up to ``offline_retry_max``; the first
  probe that answers brings it back online and onto its aligned schedule;
- after a timeout or a garbled response the connection is dropped and opened anew before the
  next request, so a late answer is never read as the answer to the next request.

Errors (all :class:`~meterlake.config.errors.RetryableError`)::

    ModbusError               a device or bus did not give what was asked
    ├── DeviceTimeoutError    no (complete) response within the device's timeout
    ├── DeviceExceptionError  the device answered with a Modbus exception code
    ├── ConnectionLostError   the connection dropped during a request
    └── BusConnectError       the TCP connection or the serial line cannot be opened

``ts`` of a reading is the gateway's clock when the poll began: a Modbus register holds the
meter's present value, so the read time is the measurement time (no ``clock_invalid`` flag).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from apscheduler.triggers.interval import IntervalTrigger
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException
from pymodbus.framer import FramerType

from meterlake.config.collect import ModbusBusSettings, ModbusDeviceSettings, check_modbus_buses
from meterlake.config.errors import ConfigError, RetryableError
from meterlake.ingest.profiles import DeviceProfile, ProfileRegistry
from meterlake.ingest.readings import Reading, to_us
from meterlake.ingest.registers import ReadPlan, ResponseShapeError, decode_poll, plan_reads

log = logging.getLogger(__name__)

Sink = Callable[[Sequence[Reading]], None]
"""Takes the readings of one poll of one device (the composition root wires it to the spool)."""
EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
EXCEPTION_NAMES: Final[dict[int, str]] = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "device failure",
    5: "acknowledge",
    6: "device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusError(RetryableError):
    """A device or bus did not give what was asked; a later poll may."""


class DeviceTimeoutError(ModbusError):
    """No complete response within the device's timeout."""


class DeviceExceptionError(ModbusError):
    """The device answered with a Modbus exception code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


class ConnectionLostError(ModbusError):
    """The connection dropped during a request (the next request connects anew)."""


class BusConnectError(ModbusError):
    """The TCP connection or the serial line cannot be opened."""


class Clock(Protocol):
    """Where the collector takes the time from and how it waits (a test passes a fake one)."""

    def now(self) -> dt.datetime:
        """The present moment, time-zone aware (UTC)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` [s]."""
        ...


class SystemClock:
    """The machine's clock."""

    def now(self) -> dt.datetime:
        """The present moment in UTC."""
        return dt.datetime.now(dt.UTC)

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` [s] on the event loop."""
        await asyncio.sleep(max(0.0, seconds))


class ModbusConnection(Protocol):
    """One bus connection: the seam between the collector and pymodbus."""

    async def read(
        self, function: int, address: int, count: int, unit: int, timeout: float
    ) -> list[int]:
        """``count`` registers from ``address`` (function 3 or 4) of device ``unit``.

        Connects first when not connected. Raises a :class:`ModbusError`.
        """
        ...

    def reset(self) -> None:
        """Drop the connection: the next read opens a new one (resynchronises the stream)."""
        ...

    def close(self) -> None:
        """Close for good."""
        ...


ConnectionFactory = Callable[[ModbusBusSettings], ModbusConnection]


class PymodbusConnection:
    """A :class:`ModbusConnection` over pymodbus' asyncio clients.

    ``socket``: :class:`AsyncModbusTcpClient` with the Modbus TCP framer; ``rtu-over-tcp``: the
    same client with the RTU framer; ``rtu``: :class:`AsyncModbusSerialClient` (needs pyserial).
    pymodbus' own retries and automatic reconnects are off: the collector decides both.
    """

    def __init__(self, bus: ModbusBusSettings, *, response_timeout: float | None = None) -> None:
        if bus.framer == "rtu" and importlib.util.find_spec("serial") is None:
            raise ConfigError(
                f"[[modbus]] {bus.name}: serial = {bus.serial!r} needs pyserial; install "
                "meterlake with pymodbus[serial] (or pip install pyserial)"
            )
        self.bus = bus
        # pymodbus' own response timeout is only a backstop: each read is bounded by the
        # device's timeout with asyncio.timeout
        self.response_timeout = max(bus.timeout, response_timeout or 0.0) + 1.0
        self._client: AsyncModbusTcpClient | AsyncModbusSerialClient | None = None

    def _make_client(self) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        bus = self.bus
        if bus.framer == "rtu":
            return AsyncModbusSerialClient(
                str(bus.serial),
                framer=FramerType.RTU,
                baudrate=bus.baudrate,
                bytesize=bus.bytesize,
                parity=bus.parity,
                stopbits=bus.stopbits,
                timeout=self.response_timeout,
                retries=0,
                reconnect_delay=0,
                name=bus.name,
            )
        return AsyncModbusTcpClient(
            str(bus.host),
            port=bus.port,
            framer=FramerType.SOCKET if bus.framer == "socket" else FramerType.RTU,
            timeout=self.response_timeout,
            retries=0,
            reconnect_delay=0,
            name=bus.name,
        )

    async def _connected(self, timeout: float) -> AsyncModbusTcpClient | AsyncModbusSerialClient:
        if self._client is not None and self._client.connected:
            return self._client
        self.reset()
        client = self._make_client()
        try:
            async with asyncio.timeout(max(timeout, self.bus.timeout)):
                ok = await client.connect()
        except (TimeoutError, OSError) as exc:
            client.close()
            raise BusConnectError(f"cannot connect to {self.bus.endpoint}: {exc!r}") from None
        if not ok:
            client.close()
            raise BusConnectError(f"cannot connect to {self.bus.endpoint}")
        self._client = client
        return client

    async def read(
        self, function: int, address: int, count: int, unit: int, timeout: float
    ) -> list[int]:
        """``count`` registers from ``address`` of ``unit``; see :class:`ModbusConnection`."""
        client = await self._connected(timeout)
        request = client.read_holding_registers if function == 3 else client.read_input_registers
        where = f"unit {unit} {address:#06x}+{count} (function {function})"
        try:
            async with asyncio.timeout(timeout):
                response = await request(address, count=count, device_id=unit)
        except TimeoutError:
            raise DeviceTimeoutError(f"{where}: no response within {timeout:g} s") from None
        except ConnectionException as exc:
            raise ConnectionLostError(f"{where}: connection lost: {exc}") from None
        except ModbusException as exc:
            raise DeviceTimeoutError(f"{where}: {exc}") from None
        if response.isError():
            code = int(getattr(response, "exception_code", 0))
            name = EXCEPTION_NAMES.get(code, "unknown exception")
            hint = (
                " (a meter that refuses long reads needs single_reads = true)" if code == 2 else ""
            )
            raise DeviceExceptionError(f"{where}: exception {code} ({name}){hint}", code)
        return list(response.registers)

    def reset(self) -> None:
        """Close the present connection, if any; the next read connects anew."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def close(self) -> None:
        """Close the connection."""
        self.reset()


@dataclass(frozen=True)
class DeviceHealth:
    """What one device's polls have given so far (a snapshot)."""

    bus: str
    meter_id: str
    unit: int
    profile: str
    reads: int = 0
    """Polls that gave readings."""
    requests: int = 0
    """Modbus requests answered."""
    registers: int = 0
    """Registers read [registers]."""
    readings: int = 0
    """Readings handed to the sink."""
    errors: int = 0
    """Requests that failed (every retry counts)."""
    consecutive_failures: int = 0
    """Failed polls in a row (0 after a poll that gave readings)."""
    offline: bool = False
    last_success: dt.datetime | None = None
    last_error: str | None = None
    next_poll: dt.datetime | None = None
    sink_errors: int = 0
    """Polls whose readings the sink refused (logged; the next poll reads the registers anew)."""


@dataclass
class _Device:
    """The mutable poll state of one device (private to its bus)."""

    settings: ModbusDeviceSettings
    profile: DeviceProfile
    plan: ReadPlan
    order: int
    interval: float
    timeout: float
    retries: int
    offline_after: int
    trigger: IntervalTrigger
    source: str
    health: DeviceHealth
    due: dt.datetime = EPOCH
    retry: int = 0
    probe_delay: float = 0.0

    @property
    def label(self) -> str:
        return f"{self.health.bus}/{self.settings.meter_id} (unit {self.settings.unit})"


def next_fire(trigger: IntervalTrigger, after: dt.datetime) -> dt.datetime:
    """The first fire time of ``trigger`` strictly after ``after`` (aligned to the epoch)."""
    fire: dt.datetime = trigger.get_next_fire_time(None, after)
    if fire <= after:
        fire = fire + trigger.interval
    return fire.astimezone(dt.UTC)


def aligned_trigger(interval: float) -> IntervalTrigger:
    """An apscheduler trigger firing every ``interval`` [s] at multiples of it since the epoch
    (``60`` fires at :00 of every minute, ``900`` at :00, :15, :30 and :45)."""
    return IntervalTrigger(seconds=interval, start_date=EPOCH, timezone=dt.UTC)


class ModbusBus:
    """One connection and the devices on it, polled one after another.

    Parameters
    ----------
    settings
        The bus and its devices.
    profiles
        Where the devices' profiles are looked up by name.
    sink
        Takes the readings of every successful poll.
    clock
        Time source and sleep (injectable).
    connection_factory
        Makes the bus connection (default: :class:`PymodbusConnection`).

    Raises
    ------
    ConfigError
        A device names an unknown profile or a read plan cannot be made.
    """

    def __init__(
        self,
        settings: ModbusBusSettings,
        profiles: ProfileRegistry,
        sink: Sink,
        *,
        clock: Clock | None = None,
        connection_factory: ConnectionFactory = PymodbusConnection,
    ) -> None:
        self.settings = settings
        self.sink = sink
        self.clock: Clock = clock or SystemClock()
        self._lock = threading.Lock()
        self._devices = [self._device(i, d, profiles) for i, d in enumerate(settings.devices)]
        self._connection = connection_factory(settings)

    def _device(self, order: int, dev: ModbusDeviceSettings, profiles: ProfileRegistry) -> _Device:
        bus = self.settings
        where = f"[[modbus]] {bus.name}, device {dev.meter_id} (unit {dev.unit})"
        try:
            profile = profiles.get_profile(dev.profile)
            plan = plan_reads(
                profile,
                single_reads=dev.single_reads,
                max_block=dev.max_block if dev.max_block is not None else bus.max_block,
                gap=dev.gap if dev.gap is not None else bus.gap,
            )
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        interval = dev.interval if dev.interval is not None else bus.interval
        return _Device(
            settings=dev,
            profile=profile,
            plan=plan,
            order=order,
            interval=interval,
            timeout=dev.timeout if dev.timeout is not None else bus.timeout,
            retries=dev.retries if dev.retries is not None else bus.retries,
            offline_after=dev.offline_after if dev.offline_after is not None else bus.offline_after,
            trigger=aligned_trigger(interval),
            source=f"modbus:{bus.name}/{profile.name}@{dev.unit}",
            health=DeviceHealth(
                bus=bus.name, meter_id=dev.meter_id, unit=dev.unit, profile=profile.name
            ),
        )

    @property
    def plans(self) -> dict[str, ReadPlan]:
        """The read plan of each device, by meter id."""
        return {d.settings.meter_id: d.plan for d in self._devices}

    def health(self) -> tuple[DeviceHealth, ...]:
        """A snapshot of every device's health, in configuration order."""
        with self._lock:
            return tuple(d.health for d in self._devices)

    async def run(self) -> None:
        """Poll every device at its aligned interval until cancelled; then close the bus."""
        now = self.clock.now()
        for device in self._devices:
            device.due = device.trigger.get_next_fire_time(None, now).astimezone(dt.UTC)
            self._update(device, next_poll=device.due)
        try:
            while True:
                now = self.clock.now()
                if not await self._round(now, only_due=True):
                    wake = min(d.due for d in self._devices)
                    await self.clock.sleep((wake - now).total_seconds())
        finally:
            self._connection.close()

    async def poll_once(self) -> None:
        """Poll every device now, once, in round order (schedule and back-offs are ignored)."""
        await self._round(self.clock.now(), only_due=False)

    def close(self) -> None:
        """Close the bus connection (the next poll would open it again)."""
        self._connection.close()

    async def _round(self, now: dt.datetime, *, only_due: bool) -> bool:
        """Poll the devices due at ``now`` (all with ``only_due=False``), healthy ones first."""
        due = [d for d in self._devices if not only_due or d.due <= now]
        due.sort(key=lambda d: (d.health.consecutive_failures > 0 or d.retry > 0, d.due, d.order))
        bus_down: ModbusError | None = None
        for device in due:
            if bus_down is not None:  # no new connect per device while the bus is down
                self._failed(device, bus_down, self.clock.now(), requests_failed=0)
                continue
            try:
                await self._poll(device)
            except BusConnectError as exc:
                bus_down = exc
        return bool(due)

    async def _poll(self, device: _Device) -> None:
        started = self.clock.now()
        dev = device.settings
        responses: list[list[int]] = []
        try:
            for block in device.plan.blocks:
                responses.append(
                    await self._connection.read(
                        block.function, block.address, block.count, dev.unit, device.timeout
                    )
                )
            readings = decode_poll(
                device.plan,
                responses,
                meter_id=dev.meter_id,
                ts_us=to_us(started),
                source=device.source,
            )
        except (DeviceTimeoutError, ConnectionLostError, ResponseShapeError) as exc:
            # a late or partial answer may still arrive: never read it as the next answer
            self._connection.reset()
            self._count_requests(device, responses)
            self._failed(device, exc, self.clock.now())
            return
        except ModbusError as exc:
            self._count_requests(device, responses)
            self._failed(device, exc, self.clock.now())
            if isinstance(exc, BusConnectError):
                raise
            return
        self._count_requests(device, responses)
        self._succeeded(device, readings, started)

    def _count_requests(self, device: _Device, responses: list[list[int]]) -> None:
        h = device.health
        self._update(
            device,
            requests=h.requests + len(responses),
            registers=h.registers + sum(len(r) for r in responses),
        )

    def _succeeded(self, device: _Device, readings: list[Reading], started: dt.datetime) -> None:
        h = device.health
        sink_errors = h.sink_errors
        try:
            self.sink(readings)
        except Exception:  # the sink's failure must not stop the bus; the next poll reads anew
            sink_errors += 1
            log.exception("%s: the sink refused %d readings", device.label, len(readings))
        if h.offline:
            log.info("%s: back online after %d failed polls", device.label, h.consecutive_failures)
        elif h.consecutive_failures:
            log.info(
                "%s: answering again after %d failed polls", device.label, h.consecutive_failures
            )
        device.retry = 0
        device.due = next_fire(device.trigger, self.clock.now())
        self._update(
            device,
            reads=h.reads + 1,
            readings=h.readings + len(readings),
            consecutive_failures=0,
            offline=False,
            last_success=started,
            next_poll=device.due,
            sink_errors=sink_errors,
        )

    def _failed(
        self, device: _Device, exc: RetryableError, now: dt.datetime, *, requests_failed: int = 1
    ) -> None:
        h = device.health
        errors = h.errors + requests_failed
        aligned = next_fire(device.trigger, now)
        if not h.offline and device.retry < device.retries:
            retry_at = now + dt.timedelta(seconds=self.settings.retry_delay * 2**device.retry)
            # a re-read must be over before the next round, or it would delay it
            if retry_at + dt.timedelta(seconds=device.timeout) < aligned:
                device.retry += 1
                device.due = retry_at
                log.debug("%s: %s; re-read %d at %s", device.label, exc, device.retry, retry_at)
                self._update(device, errors=errors, last_error=str(exc), next_poll=retry_at)
                return
        device.retry = 0
        failures = h.consecutive_failures + 1
        offline = h.offline
        if offline:
            device.probe_delay = min(2 * device.probe_delay, self.settings.offline_retry_max)
            device.due = now + dt.timedelta(seconds=device.probe_delay)
        elif failures >= device.offline_after:
            offline = True
            device.probe_delay = self.settings.offline_retry
            device.due = now + dt.timedelta(seconds=device.probe_delay)
            log.warning(
                "%s: offline after %d failed polls (%s); next probe in %g s",
                device.label,
                failures,
                exc,
                device.probe_delay,
            )
        else:
            device.due = aligned
            if failures == 1:
                log.warning("%s: poll failed: %s", device.label, exc)
        self._update(
            device,
            errors=errors,
            consecutive_failures=failures,
            offline=offline,
            last_error=str(exc),
            next_poll=device.due,
        )

    def _update(self, device: _Device, **changes: object) -> None:
        with self._lock:
            device.health = dataclasses.replace(device.health, **changes)  # type: ignore[arg-type]


class ModbusCollector:
    """Every ``[[modbus]]`` bus of a gateway, polled concurrently (devices on one bus in turn).

    Parameters
    ----------
    buses
        The buses and their devices.
    profiles
        Device profiles by name (shipped plus the user's).
    sink
        Takes the readings of every successful poll, ``Callable[[Sequence[Reading]], None]``.
    clock
        Time source and sleep (injectable; default the system clock).
    connection_factory
        Makes one connection per bus (injectable; default :class:`PymodbusConnection`).

    Raises
    ------
    ConfigError
        Unknown profile, bad read plan, a meter id on two buses, or pyserial missing.

    Use ``await collector.run()`` inside an event loop, or ``start()``/``stop()``, which run it
    on a thread of its own (the gateway's collector interface). For one-off polls:
    ``async with ModbusCollector(...) as c: await c.poll_once()``.
    """

    def __init__(
        self,
        buses: Sequence[ModbusBusSettings],
        profiles: ProfileRegistry,
        sink: Sink,
        *,
        clock: Clock | None = None,
        connection_factory: ConnectionFactory = PymodbusConnection,
    ) -> None:
        try:
            check_modbus_buses(tuple(buses))
        except ValueError as exc:
            raise ConfigError(f"[[modbus]]: {exc}") from None
        self.buses = tuple(
            ModbusBus(b, profiles, sink, clock=clock, connection_factory=connection_factory)
            for b in buses
        )
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._main: asyncio.Task[None] | None = None
        self._started = threading.Event()

    def health(self) -> tuple[DeviceHealth, ...]:
        """A snapshot of every device's health, bus by bus."""
        return tuple(h for bus in self.buses for h in bus.health())

    async def run(self) -> None:
        """Poll all buses until cancelled."""
        async with asyncio.TaskGroup() as group:
            for bus in self.buses:
                group.create_task(bus.run(), name=f"modbus-{bus.settings.name}")

    async def poll_once(self) -> None:
        """Poll every device of every bus once, now (buses concurrently)."""
        await asyncio.gather(*(bus.poll_once() for bus in self.buses))

    def close(self) -> None:
        """Close every bus connection (after :meth:`poll_once`; :meth:`run` closes its own)."""
        for bus in self.buses:
            bus.close()

    async def __aenter__(self) -> ModbusCollector:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()
        await asyncio.sleep(0)  # let the transports finish closing before the loop may end

    def start(self) -> None:
        """Run :meth:`run` on a thread of its own, with its own event loop."""
        if self._thread is not None:
            raise RuntimeError("the Modbus collector is already running")
        self._thread = threading.Thread(target=self._serve, name="modbus-collector", daemon=True)
        self._thread.start()
        self._started.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop polling (a poll under way is cancelled) and close the buses."""
        loop, main, thread = self._loop, self._main, self._thread
        if loop is not None and main is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(main.cancel)
        if thread is not None:
            thread.join(timeout_s)
        self._thread = None

    def _serve(self) -> None:
        async def main() -> None:
            self._loop = asyncio.get_running_loop()
            self._main = asyncio.current_task()
            self._started.set()
            with contextlib.suppress(asyncio.CancelledError):
                await self.run()

        try:
            asyncio.run(main())
        except Exception:
            log.exception("the Modbus collector stopped")
        finally:
            self._started.set()
