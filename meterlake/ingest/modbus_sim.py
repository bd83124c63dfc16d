"""Simulated Modbus meters: a pymodbus server whose unit ids are meters of the shipped profiles.

Each simulated meter exposes its profile's registers, encoded as the profile says (so the
collector reads them exactly as it reads a real meter), with values that follow a residential or
commercial daily load (the shapes of :mod:`meterlake.ingest.simulator`), optional rooftop PV,
and cumulative energy registers that integrate that load. Everything is seeded: the same meters,
seed and update times give the same registers.

The model advances when :meth:`ModbusSimulator.update` is called: every ``update_interval``
seconds while running, or only on demand (``update_interval=None``) so a test knows exactly what
the registers hold (:meth:`ModbusSimulator.values`).

Faults
------
``silence(unit)``         the unit id stops answering (requests are read, no response is sent)
``inject_rollover(unit)`` an energy counter is set just below where it wraps to 0
``reset_meter(unit)``     a meter replacement/reset: every energy register restarts at 0
``inject_nan(unit, q)``   a float register reads NaN
``slow_down(unit, s)``    the unit answers every read ``s`` seconds late
``refuse_long_reads``     (per meter, at construction) any read of more than one value gets
                          exception 2, like meters that need one read per quantity

Run it in-process for tests (``async with ModbusSimulator(...)``) or as its own process for
demos and benchmarks (:func:`serve`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import math
import socket
import zoneinfo
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

import numpy as np
import numpy.typing as npt
from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from meterlake.config.errors import ConfigError
from meterlake.ingest.profiles import DeviceProfile
from meterlake.ingest.registers import encode_value
from meterlake.ingest.simulator import business_shape, household_shape, shape_means

Floats = npt.NDArray[np.float64]
SimFramer = Literal["socket", "rtu"]

NOMINAL_V: Final = 230.0
NOMINAL_HZ: Final = 50.0
_FILL_GAP: Final = 64
"""Unmapped registers up to this many between two mapped ones read as 0; longer gaps are holes
that answer exception 2 (illegal data address), as on a strict meter."""
_PHASE_SHARE: Final = np.array([0.4, 0.35, 0.25])


@dataclass(frozen=True)
class SimMeter:
    """One simulated meter.

    Parameters
    ----------
    unit
        Its Modbus unit id (1-247).
    profile
        Its register map.
    business
        A small business's load shape instead of a household's.
    mean_power_w
        Mean weekday load [W]; None: drawn from the seed (lognormal, household about 300 W).
    pv_peak_w
        Rooftop PV at clear-sky noon [W] (0: none); exported when it exceeds the load.
    import_kwh, export_kwh
        Energy registers at the start [kWh]; None: drawn from the seed.
    refuse_long_reads
        Answer exception 2 to any read longer than one value.
    """

    unit: int
    profile: DeviceProfile
    business: bool = False
    mean_power_w: float | None = None
    pv_peak_w: float = 0.0
    import_kwh: float | None = None
    export_kwh: float | None = None
    refuse_long_reads: bool = False


@dataclass
class _Faults:
    silent: bool = False
    delay_s: float = 0.0
    nan: set[str] = field(default_factory=set)
    offsets: dict[str, float] = field(default_factory=dict)
    """Per energy quantity: subtracted from the physical total before it is shown [kWh]."""
    wraps: dict[str, float] = field(default_factory=dict)
    """Per energy quantity: the register shows the total modulo this [kWh]."""


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free now (another process may take it before it is used: prefer
    ``ModbusSimulator(port=0)``)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ModbusSimulator:
    """A pymodbus TCP server holding simulated meters, one per unit id.

    Parameters
    ----------
    meters
        The meters (unit ids must differ).
    port
        TCP port to listen on; 0: a free one, chosen by the system (then read :attr:`port`
        after :meth:`start`).
    host
        Address to listen on.
    framer
        ``socket`` (Modbus TCP) or ``rtu`` (RTU frames over TCP, like a serial-to-Ethernet
        converter).
    seed
        Seeds sizes, start readings and noise.
    timezone
        IANA zone in which the load shapes live their days.
    clock
        Time source of the model (default: the system clock, UTC).
    update_interval
        Advance the model and rewrite the registers every this many seconds while running;
        None: only when :meth:`update` is called.
    """

    def __init__(
        self,
        meters: Sequence[SimMeter],
        *,
        port: int,
        host: str = "127.0.0.1",
        framer: SimFramer = "socket",
        seed: int = 0,
        timezone: str = "Asia/Shanghai",
        clock: Callable[[], dt.datetime] | None = None,
        update_interval: float | None = 1.0,
    ) -> None:
        units = [m.unit for m in meters]
        if not meters or len(set(units)) != len(units) or not all(1 <= u <= 247 for u in units):
            raise ConfigError(f"simulated meters need distinct unit ids 1-247, got {units}")
        self.meters = {m.unit: m for m in meters}
        self.host, self.port, self.framer = host, port, framer
        self.tz = zoneinfo.ZoneInfo(timezone)
        self.clock = clock or (lambda: dt.datetime.now(dt.UTC))
        self.update_interval = update_interval
        self._index = {u: i for i, u in enumerate(units)}
        self._faults = {u: _Faults() for u in units}
        rng = np.random.default_rng(seed)
        n = len(meters)
        business = np.array([m.business for m in meters])
        drawn_mean = np.where(business, 2000.0, 300.0) * rng.lognormal(0.0, 0.4, n)
        self._business = business
        self._mean_w = np.array(
            [
                m.mean_power_w if m.mean_power_w is not None else w
                for m, w in zip(meters, drawn_mean, strict=True)
            ]
        )
        self._pv_w = np.array([m.pv_peak_w for m in meters], dtype=np.float64)
        self._shift_h = rng.normal(0.0, 0.5, n)
        self._v_offset = rng.normal(0.0, 2.0, n)
        start_import = rng.uniform(100.0, 20_000.0, n)
        start_export = np.where(self._pv_w > 0, rng.uniform(0.0, 3_000.0, n), 0.0)
        self._totals: dict[str, Floats] = {
            "energy_import_kwh": np.array(
                [
                    m.import_kwh if m.import_kwh is not None else s
                    for m, s in zip(meters, start_import, strict=True)
                ]
            ),
            "energy_export_kwh": np.array(
                [
                    m.export_kwh if m.export_kwh is not None else s
                    for m, s in zip(meters, start_export, strict=True)
                ]
            ),
            "energy_reactive_import_kvarh": start_import * 0.3,
            "energy_reactive_export_kvarh": start_export * 0.05,
        }
        self._noise = np.random.default_rng(rng.integers(2**63))
        self.shape_means = shape_means()
        self._at: dt.datetime | None = None
        self._now_values: dict[str, Floats] = {}
        self._server: ModbusTcpServer | None = None
        self._updater: asyncio.Task[None] | None = None
        self._advance(self.clock())

    # --- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Listen on the port (and keep the model moving if ``update_interval`` is set)."""
        devices = [
            SimDevice(
                id=unit,
                simdata=_simdata(meter.profile),
                action=functools.partial(self._gate, unit),
            )
            for unit, meter in self.meters.items()
        ]
        self._server = ModbusTcpServer(
            devices,
            framer=FramerType.SOCKET if self.framer == "socket" else FramerType.RTU,
            address=(self.host, self.port),
            trace_packet=self._trace_packet,
        )
        await self._server.serve_forever(background=True)
        if self.port == 0:  # the system chose a free port: learn which
            listener: object = self._server.transport
            if isinstance(listener, asyncio.Server) and listener.sockets:
                self.port = int(listener.sockets[0].getsockname()[1])
        await self._write_registers()
        if self.update_interval is not None:
            self._updater = asyncio.create_task(self._keep_updating(self.update_interval))

    async def stop(self) -> None:
        """Stop listening and close every connection."""
        if self._updater is not None:
            self._updater.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._updater
            self._updater = None
        if self._server is not None:
            await self._server.shutdown()  # type: ignore[no-untyped-call]
            self._server = None

    async def __aenter__(self) -> ModbusSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def update(self, now: dt.datetime | None = None) -> None:
        """Advance the model to ``now`` (default: the clock) and rewrite every register."""
        self._advance(now or self.clock())
        await self._write_registers()

    # --- what the meters show ---------------------------------------------------------------

    def values(self, unit: int) -> dict[str, float]:
        """What meter ``unit``'s registers hold, per quantity of its profile [canonical unit]."""
        i, faults = self._index[unit], self._faults[unit]
        out = {}
        for reg in self.meters[unit].profile.registers:
            q = reg.quantity
            if q in faults.nan:
                out[q] = math.nan
            elif q in self._totals:
                shown = float(self._totals[q][i]) - faults.offsets.get(q, 0.0)
                wrap = faults.wraps.get(q)
                out[q] = shown % wrap if wrap is not None else shown
            else:
                out[q] = float(self._now_values[q][i]) if q in self._now_values else 0.0
        return out

    # --- faults -----------------------------------------------------------------------------

    def silence(self, unit: int, *, silent: bool = True) -> None:
        """Make ``unit`` stop answering (``silent=False``: answer again)."""
        self._faults[unit].silent = silent

    def slow_down(self, unit: int, delay_s: float) -> None:
        """Make ``unit`` answer every read ``delay_s`` [s] late (0: on time again)."""
        self._faults[unit].delay_s = delay_s

    def inject_nan(self, unit: int, quantity: str) -> None:
        """Make ``quantity`` of ``unit`` read NaN (float registers only); :meth:`clear_faults`
        undoes it."""
        if self.meters[unit].profile.register(quantity).data_type not in ("f32", "f64"):
            raise ConfigError(f"{quantity} of unit {unit} is an integer register: it has no NaN")
        self._faults[unit].nan.add(quantity)

    def inject_rollover(
        self,
        unit: int,
        quantity: str = "energy_import_kwh",
        *,
        below_kwh: float = 0.05,
        wraps_at_kwh: float | None = None,
    ) -> float:
        """Set ``quantity`` of ``unit`` to ``below_kwh`` under the point where it wraps to 0, so
        the next energy it counts rolls it over. Returns the wrap point [kWh].

        ``wraps_at_kwh`` is needed when the profile does not say where the register wraps
        (``width_bits`` or ``wraps_at``)."""
        reg = self.meters[unit].profile.register(quantity)
        wrap = wraps_at_kwh if wraps_at_kwh is not None else reg.rollover
        if wrap is None or not reg.is_counter:
            raise ConfigError(
                f"{quantity} of unit {unit} has no known wrap point: pass wraps_at_kwh"
            )
        faults, i = self._faults[unit], self._index[unit]
        faults.wraps[quantity] = wrap
        faults.offsets[quantity] = float(self._totals[quantity][i]) - (wrap - below_kwh)
        return wrap

    def reset_meter(self, unit: int) -> None:
        """A meter reset or replacement: every energy register of ``unit`` restarts at 0."""
        faults, i = self._faults[unit], self._index[unit]
        for q, totals in self._totals.items():
            faults.offsets[q] = float(totals[i])
            faults.wraps.pop(q, None)

    def clear_faults(self, unit: int) -> None:
        """Answer again, on time, without NaNs (counter offsets of a reset or rollover stay)."""
        faults = self._faults[unit]
        faults.silent = False
        faults.delay_s = 0.0
        faults.nan.clear()

    # --- internals --------------------------------------------------------------------------

    def _advance(self, now: dt.datetime) -> None:
        """Move the model to ``now``: instantaneous values, and energy integrated since the
        previous update (all meters at once)."""
        local = now.astimezone(self.tz)
        hour = local.hour + local.minute / 60 + local.second / 3600
        hours = (hour + self._shift_h) % 24.0
        weekday = local.isoweekday()
        household_mean, business_mean = self.shape_means
        shape = np.where(
            self._business,
            business_shape(hours, np.full(hours.size, weekday)) / business_mean,
            household_shape(hours, np.full(hours.size, weekday >= 6)) / household_mean,
        )
        noise = np.exp(0.15 * self._noise.standard_normal(hours.size))
        load = self._mean_w * shape * noise
        sun = max(0.0, math.sin(math.pi * (hour - 6.0) / 12.0)) if 6.0 < hour < 18.0 else 0.0
        power = load - self._pv_w * sun  # net active power [W], import positive
        pf = np.clip(0.93 + 0.04 * self._noise.standard_normal(hours.size), 0.5, 1.0)
        reactive = np.abs(power) * np.tan(np.arccos(pf))
        volts = (
            NOMINAL_V
            + self._v_offset
            - 1.5e-3 * power
            + 0.5 * self._noise.standard_normal((3, hours.size))
        )
        phase_power = _PHASE_SHARE[:, None] * power[None, :]
        amps = np.abs(phase_power) / volts / pf[None, :]
        if self._at is not None:
            hours_passed = max(0.0, (now - self._at).total_seconds()) / 3600.0
            self._totals["energy_import_kwh"] += np.maximum(power, 0.0) * hours_passed / 1000.0
            self._totals["energy_export_kwh"] += np.maximum(-power, 0.0) * hours_passed / 1000.0
            self._totals["energy_reactive_import_kvarh"] += reactive * hours_passed / 1000.0
        self._at = now
        single_phase_amps = np.abs(power) / volts[0] / pf
        self._now_values = {
            "power_w": power,
            "power_l1_w": phase_power[0],
            "power_l2_w": phase_power[1],
            "power_l3_w": phase_power[2],
            "reactive_power_var": reactive,
            "apparent_power_va": np.abs(power) / pf,
            "voltage_v": volts.mean(axis=0),
            "voltage_l1_v": volts[0],
            "voltage_l2_v": volts[1],
            "voltage_l3_v": volts[2],
            "current_a": single_phase_amps,
            "current_l1_a": amps[0],
            "current_l2_a": amps[1],
            "current_l3_a": amps[2],
            "frequency_hz": NOMINAL_HZ + 0.01 * self._noise.standard_normal(hours.size),
            "power_factor": pf,
        }

    async def _write_registers(self) -> None:
        if self._server is None:
            return
        for unit, meter in self.meters.items():
            values = self.values(unit)
            for function, start, words in _runs(meter.profile):
                block = list(words)
                for reg in meter.profile.registers:
                    if reg.function == function and start <= reg.address < start + len(block):
                        offset = reg.address - start
                        block[offset : offset + reg.words] = encode_value(reg, values[reg.quantity])
                await self._server.async_setValues(unit, function, start, block)

    async def _keep_updating(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            await self.update()

    async def _gate(
        self,
        unit: int,
        function_code: int,
        _start_address: int,
        _address: int,
        count: int,
        _registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        """Refuse reads the meter would refuse (longer than its ``max_block``, or than one value
        when it needs single reads), after the delay of a slow meter."""
        if set_values is not None or function_code not in (3, 4):
            return None
        if delay := self._faults[unit].delay_s:
            await asyncio.sleep(delay)
        meter = self.meters[unit]
        if count > meter.profile.max_block:
            return ExcCodes.ILLEGAL_VALUE
        longest = max((r.words for r in meter.profile.registers), default=1)
        if meter.refuse_long_reads and count > longest:
            return ExcCodes.ILLEGAL_ADDRESS
        return None

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        """Drop the responses of silenced units (the request was read; nothing comes back)."""
        if not sending or not data:
            return data
        unit = data[6] if self.framer == "socket" else data[0]
        faults = self._faults.get(unit)
        return b"" if faults is not None and faults.silent else data


def _runs(profile: DeviceProfile) -> list[tuple[int, int, list[int]]]:
    """Per function code, runs of registers to keep in the server: ``(function, start, zeros)``;
    mapped registers closer than :data:`_FILL_GAP` share a run."""
    runs: list[tuple[int, int, int]] = []
    for reg in profile.registers:  # sorted by function code and address
        if runs and runs[-1][0] == reg.function and reg.address - runs[-1][2] <= _FILL_GAP:
            function, start, end = runs[-1]
            runs[-1] = (function, start, max(end, reg.end))
        else:
            runs.append((reg.function, reg.address, reg.end))
    return [(f, start, [0] * (end - start)) for f, start, end in runs]


def _simdata(
    profile: DeviceProfile,
) -> tuple[list[SimData], list[SimData], list[SimData], list[SimData]]:
    """The server's register blocks: (coils, discrete inputs, holding, input registers)."""
    blocks: dict[int, list[SimData]] = {3: [], 4: []}
    for function, start, zeros in _runs(profile):
        blocks[function].append(SimData(start, values=zeros, datatype=DataType.REGISTERS))
    for function in (3, 4):
        if not blocks[function]:  # pymodbus wants every table non-empty; nothing maps here
            blocks[function].append(SimData(0xFFFF, values=0, datatype=DataType.REGISTERS))
    bits = [SimData(0, count=16, values=False, datatype=DataType.BITS)]
    return bits, list(bits), blocks[3], blocks[4]


def meters_for(
    profiles: Sequence[DeviceProfile], count: int, *, first_unit: int = 1, pv_every: int = 5
) -> list[SimMeter]:
    """``count`` simulated meters cycling through ``profiles`` (every ``pv_every``-th with PV).

    >>> from meterlake.ingest.profiles import shipped_profiles
    >>> [m.profile.name for m in meters_for([shipped_profiles()["eastron_sdm120"]], 2)]
    ['eastron_sdm120', 'eastron_sdm120']
    """
    if count > 247 - first_unit + 1:
        raise ConfigError(f"{count} meters from unit {first_unit} do not fit unit ids 1-247")
    return [
        SimMeter(
            unit=first_unit + i,
            profile=profiles[i % len(profiles)],
            pv_peak_w=3000.0 if pv_every and i % pv_every == pv_every - 1 else 0.0,
        )
        for i in range(count)
    ]


async def serve(
    meters: Sequence[SimMeter],
    *,
    port: int,
    host: str = "127.0.0.1",
    framer: SimFramer = "socket",
    seed: int = 0,
    ready: Callable[[ModbusSimulator], None] | None = None,
) -> None:
    """Run a simulator until cancelled (e.g. ``asyncio.run(serve(...))`` in its own process)."""
    async with ModbusSimulator(meters, port=port, host=host, framer=framer, seed=seed) as sim:
        if ready is not None:
            ready(sim)
        await asyncio.Event().wait()
