"""Simulated MQTT meters: seeded load and energy, published in every payload format we decode.

Three layers, each usable on its own:

model
    :class:`MeterModel`: per meter a household or small-business load in local time (the
    shapes of :mod:`meterlake.ingest.simulator`), a cumulative import register that integrates
    it, supply voltage, power factor and current. Readings come in *ticks*: tick ``k`` is
    measured at ``start + k * interval_s``; its ``power_w`` is the mean power of the interval
    that ends there, so the register advances by ``power_w * interval_s / 3.6e6`` kWh from one
    tick to the next. All meters of a tick are computed at once; noise is drawn per block of
    ticks from the seed, so tick ``k`` is the same whatever was asked before.
encoders
    Pure functions ``MeterState -> Message(topic, payload)``, one per format, registered in
    :data:`ENCODERS` under the names of :data:`meterlake.ingest.payloads.DECODERS`. Values are
    written at full float precision, so a decoder gives back exactly what the model holds
    (up to the unit conversion of Wh and kW).
publisher
    :class:`MqttMeterFleet` turns ticks into messages (with the faults below);
    :class:`MqttPublisher` sends them with paho-mqtt (QoS 1) from its own thread, one tick
    every ``interval_s / speed`` wall seconds.

Payloads (``<device>`` is the meter's device name)
----------------------------------------------------

============  ========================  ==================================================
format        default topic             payload
============  ========================  ==================================================
canonical     ``meters/<device>``       ``{"meter_id", "ts" (UTC, Z), "readings": {...}}``
tasmota       ``tele/<device>/SENSOR``  ``Time`` (local, no zone, whole seconds),
                                        ``ENERGY``: ``Total`` [kWh], ``Power`` [W],
                                        ``Voltage`` [V], ``Current`` [A]
shelly-gen2   ``<device>/events/rpc``   Pro 3EM ``NotifyStatus``: ``params.ts`` [s, epoch],
                                        ``em:0`` phase and total powers [W], voltages [V],
                                        currents [A]; ``emdata:0`` ``total_act`` [Wh]
zigbee2mqtt   ``zigbee2mqtt/<device>``  ``energy`` [kWh], ``power`` [W], ``voltage`` [V],
                                        ``current`` [A], ``last_seen`` (optional)
mapping       ``sim/<device>/state``    any :class:`PayloadMapping`, by default
                                        :data:`SIM_MAPPING` (below)
============  ========================  ==================================================

The Shelly's three phases carry fixed shares (:data:`PHASE_SHARES`) of the meter's power and
current at its one voltage. The default ``mapping`` shape is::

    {"meter": "<device>", "time": 1790813700000,
     "data": {"e_wh": 1234567.8, "p_kw": 0.5123, "u_dv": 2301.0, "i_ma": 2210.0}}

which this subscription decodes (it is :data:`SIM_MAPPING` with :data:`SIM_METER_ID`)::

    [[mqtt]]
    topics = ["sim/+/state"]
    format = "mapping"
    meter_id = "{field:meter}"
    [mqtt.mapping]
    timestamp = { path = "time", format = "epoch_ms" }
    fields = [
      { path = "data.e_wh", quantity = "energy_import_kwh", unit = "Wh" },
      { path = "data.p_kw", quantity = "power_w", unit = "kW" },
      { path = "data.u_dv", quantity = "voltage_v", scale = 0.1 },
      { path = "data.i_ma", quantity = "current_a", unit = "mA" },
    ]

The mapping encoder writes any other mapping too (each field's value divided by its scale and
unit factor, the timestamp in its format), and every encoder writes the device name into the
``{field:...}`` placeholders of :attr:`EncodeOptions.meter_id`, so a subscription's meter-id
template finds what it looks for.

Faults (:class:`MeterFaults`, per meter; :func:`plan_faults` draws a set from a seed)
-------------------------------------------------------------------------------------

``stop_at``        the device sends nothing from this tick on
``garbage_rate``   this share of its messages is garbage: random bytes or the real message
                   cut short (never valid JSON); they come evenly spaced from a seeded phase
                   (one in every ``1 / rate``), so a short run sees them too
``rollover_at``    the import register passes ``wraps_at_kwh`` and restarts near 0 at this
                   tick (its starting reading is chosen so that it does)
``reset_at``       the register restarts at 0 at this tick (a meter reset or replacement)
``clock_drift_s``  the device clock gains this much per tick [s]; once it is further ahead
                   than a decoder's clock window (``max_clock_ahead_s``, 300 s by default),
                   the decoder uses the receipt time and flags ``clock_invalid``
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
import zoneinfo
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt
import paho.mqtt.client as paho
import polars as pl

from meterlake.config.errors import ConfigError, PermanentError
from meterlake.config.ids import validate_meter_id
from meterlake.config.payload_formats import (
    FieldPath,
    PayloadFormatName,
    PayloadMapping,
    parse_field_path,
    parse_meter_id_template,
)
from meterlake.config.schemas import UTC_TS
from meterlake.config.settings import MqttConnection, SiteSettings
from meterlake.config.timezones import check_timezone
from meterlake.ingest.mqtt import connect_in_background, make_client
from meterlake.ingest.readings import to_us
from meterlake.ingest.simulator import (
    NOMINAL_VOLTAGE_V,
    REGISTER_WRAP_KWH,
    business_shape,
    household_shape,
    shape_means,
)

log = logging.getLogger(__name__)

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
LastSeen = Literal["ISO_8601", "ISO_8601_local", "epoch"]
"""How a Zigbee2MQTT bridge writes ``last_seen`` (its ``advanced.last_seen`` setting)."""

DEFAULT_TIMEZONE: Final = SiteSettings().timezone
PHASE_SHARES: Final = (0.4, 0.35, 0.25)
"""Share of a meter's power and current on phases L1, L2, L3 (its three-phase view)."""
SIM_METER_ID: Final = "{field:meter}"
"""The meter-id template of :data:`SIM_MAPPING` payloads."""
SIM_MAPPING: Final = PayloadMapping.model_validate(
    {
        "timestamp": {"path": "time", "format": "epoch_ms"},
        "fields": [
            {"path": "data.e_wh", "quantity": "energy_import_kwh", "unit": "Wh"},
            {"path": "data.p_kw", "quantity": "power_w", "unit": "kW"},
            {"path": "data.u_dv", "quantity": "voltage_v", "scale": 0.1},
            {"path": "data.i_ma", "quantity": "current_a", "unit": "mA"},
        ],
    }
)
"""The documented shape of simulated ``mapping`` payloads (see the module docstring)."""

_TICKS_PER_BLOCK: Final = 256
_STREAM_PARAMS, _STREAM_NOISE, _STREAM_GARBAGE, _STREAM_FAULTS = 1, 2, 3, 4
_KWH_PER_WS: Final = 1.0 / 3.6e6
_US_PER_S: Final = 1_000_000
_PHASES: Final = np.array(PHASE_SHARES)


# --- what a meter is and what it shows -----------------------------------------------------


@dataclass(frozen=True)
class MeterFaults:
    """The faults of one simulated meter (see the module docstring); ticks count from 0.

    Parameters
    ----------
    stop_at
        First tick the device does not send (it stays silent); ``None``: it never stops.
    garbage_rate
        Share of its messages replaced by garbage, 0 to 1.
    rollover_at
        Tick at which the import register wraps through 0 (at least 1).
    wraps_at_kwh
        Where the register wraps to 0 [kWh] (a 5-digit register: 100000 kWh).
    reset_at
        Tick at which the register restarts at 0 (at least 1).
    clock_drift_s
        What the device clock gains per tick [s] (negative: loses).
    """

    stop_at: int | None = None
    garbage_rate: float = 0.0
    rollover_at: int | None = None
    wraps_at_kwh: float = REGISTER_WRAP_KWH
    reset_at: int | None = None
    clock_drift_s: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if self.stop_at is not None and self.stop_at < 0:
            problems.append(f"stop_at={self.stop_at}: use a tick >= 0")
        if not 0.0 <= self.garbage_rate <= 1.0:
            problems.append(f"garbage_rate={self.garbage_rate}: use a share from 0 to 1")
        for name in ("rollover_at", "reset_at"):
            tick = getattr(self, name)
            if tick is not None and tick < 1:
                problems.append(f"{name}={tick}: use a tick >= 1")
        if not (math.isfinite(self.wraps_at_kwh) and self.wraps_at_kwh > 0):
            problems.append(f"wraps_at_kwh={self.wraps_at_kwh}: use a positive number")
        if not math.isfinite(self.clock_drift_s):
            problems.append(f"clock_drift_s={self.clock_drift_s}: use a finite number")
        if problems:
            raise ConfigError("MeterFaults: " + "; ".join(problems))

    def describe(self) -> list[str]:
        """The faults in words, one entry each (empty: a healthy meter)."""
        out = []
        if self.stop_at is not None:
            out.append(f"stops sending at tick {self.stop_at}")
        if self.garbage_rate:
            out.append(f"{self.garbage_rate:.0%} garbage payloads")
        if self.rollover_at is not None:
            out.append(f"register rolls over {self.wraps_at_kwh:g} kWh at tick {self.rollover_at}")
        if self.reset_at is not None:
            out.append(f"register reset to 0 at tick {self.reset_at}")
        if self.clock_drift_s:
            out.append(f"clock drifts {self.clock_drift_s:+g} s per tick")
        return out


NO_FAULTS: Final = MeterFaults()


@dataclass(frozen=True)
class MqttMeter:
    """One simulated MQTT meter.

    Parameters
    ----------
    device
        Its device name: a topic segment, the Shelly ``src``, the canonical ``meter_id``
        (a safe meter id: letters, digits, ``._-:``).
    business
        A small business's load shape instead of a household's.
    mean_power_w
        Mean weekday load [W]; ``None``: drawn from the seed (lognormal; household about
        300 W, business about 2 kW).
    import_kwh
        Import register at tick 0 [kWh]; ``None``: drawn from the seed. A meter with
        ``faults.rollover_at`` starts where it has to for the rollover instead.
    faults
        Its faults.
    """

    device: str
    business: bool = False
    mean_power_w: float | None = None
    import_kwh: float | None = None
    faults: MeterFaults = NO_FAULTS

    def __post_init__(self) -> None:
        try:
            validate_meter_id(self.device)
        except PermanentError as exc:
            raise ConfigError(f"device name: {exc}") from None
        if self.mean_power_w is not None and not self.mean_power_w > 0:
            raise ConfigError(f"{self.device}: mean_power_w={self.mean_power_w}: use > 0 W")


@dataclass(frozen=True)
class MeterState:
    """What one meter shows at one tick (the truth an encoder writes and a decoder reads)."""

    device: str
    tick: int
    ts: dt.datetime
    """When it was measured, UTC."""
    device_ts: dt.datetime
    """What the device's clock says then, UTC (``ts`` plus its drift)."""
    energy_import_kwh: float
    """The import register as shown (after rollover or reset) [kWh]."""
    power_w: float
    """Mean active power of the interval that ends at ``ts`` [W]."""
    voltage_v: float
    """Supply voltage [V]."""
    current_a: float
    """Current [A]."""
    power_factor: float
    """Power factor (0.5 to 1)."""

    def value(self, quantity: str) -> float | None:
        """The value of a canonical ``quantity`` in its unit, or ``None`` if the model has no
        such quantity. Export energy is 0 (no generation); phases follow :data:`PHASE_SHARES`.

        >>> s = MeterState("m1", 0, _EPOCH, _EPOCH, 12.5, 1000.0, 230.0, 4.5, 0.97)
        >>> s.value("energy_import_kwh"), s.value("power_l1_w"), s.value("frequency_hz")
        (12.5, 400.0, None)
        """
        simple = {
            "energy_import_kwh": self.energy_import_kwh,
            "energy_export_kwh": 0.0,
            "power_w": self.power_w,
            "voltage_v": self.voltage_v,
            "current_a": self.current_a,
            "power_factor": self.power_factor,
            "apparent_power_va": self.power_w / self.power_factor,
        }
        if quantity in simple:
            return simple[quantity]
        for phase, share in enumerate(PHASE_SHARES, start=1):
            if quantity == f"power_l{phase}_w":
                return self.power_w * share
            if quantity == f"current_l{phase}_a":
                return self.current_a * share
            if quantity == f"voltage_l{phase}_v":
                return self.voltage_v
        return None


_EPOCH: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


class Message(NamedTuple):
    """One MQTT message: where it goes and its body."""

    topic: str
    payload: bytes


# --- the model -----------------------------------------------------------------------------


def meter_load_w(
    hour: Floats, weekday: Ints, business: npt.NDArray[np.bool_], mean_w: Floats
) -> Floats:
    """Noise-free load [W] at local ``hour`` [h] on ISO ``weekday`` (1 = Monday), for arrays
    that broadcast together: the fleet shapes scaled so that ``mean_w`` is the weekday mean.

    >>> hour, weekday = np.array([3.0, 20.0]), np.array([1, 1])
    >>> load = meter_load_w(hour, weekday, np.array([False, False]), np.array([300.0, 300.0]))
    >>> bool(load[1] > 2 * load[0])  # the evening peak
    True
    """
    household_mean, business_mean = shape_means()
    shape = np.where(
        business,
        business_shape(hour, weekday) / business_mean,
        household_shape(hour, weekday >= 6) / household_mean,
    )
    return np.asarray(mean_w * shape, dtype=np.float64)


def local_hour_weekday(times_us: Ints, timezone: str) -> tuple[Floats, Ints]:
    """Local hour of the day [h] and ISO weekday of UTC times [us] in ``timezone``."""
    local = pl.Series(times_us, dtype=pl.Int64).cast(UTC_TS).dt.convert_time_zone(timezone)
    frame = pl.DataFrame({"t": local}).select(
        hour=pl.col("t").dt.hour() + pl.col("t").dt.minute() / 60 + pl.col("t").dt.second() / 3600,
        weekday=pl.col("t").dt.weekday().cast(pl.Int64),
    )
    return (
        frame["hour"].to_numpy().astype(np.float64),
        frame["weekday"].to_numpy().astype(np.int64),
    )


class MeterModel:
    """Seeded meters that advance one tick at a time (see the module docstring).

    Parameters
    ----------
    meters
        The meters (distinct device names).
    start
        Time of tick 0 (time-zone aware).
    interval_s
        Time between ticks [s].
    seed
        The same seed, meters, start and interval give the same states.
    timezone
        IANA zone in which the load shapes live their days.
    """

    def __init__(
        self,
        meters: Sequence[MqttMeter],
        *,
        start: dt.datetime,
        interval_s: float = 60.0,
        seed: int = 0,
        timezone: str = DEFAULT_TIMEZONE,
    ) -> None:
        devices = [m.device for m in meters]
        if not meters or len(set(devices)) != len(devices):
            raise ConfigError(f"simulated meters need distinct device names, got {devices}")
        if start.tzinfo is None or start.utcoffset() is None:
            raise ConfigError(f"start={start!r} is naive: give it a time zone (UTC)")
        if not (math.isfinite(interval_s) and interval_s > 0):
            raise ConfigError(f"interval_s={interval_s!r}: use a positive number of seconds")
        if seed < 0:
            raise ConfigError(f"seed={seed!r}: use a non-negative integer")
        check_timezone(timezone)
        self.meters = tuple(meters)
        self.start = start.astimezone(dt.UTC)
        self.interval_s = float(interval_s)
        self.seed = seed
        self.timezone = timezone
        self.tick = 0
        """The tick :meth:`step` computes next."""
        n = len(meters)
        rng = np.random.default_rng([seed, _STREAM_PARAMS])
        self._business = np.array([m.business for m in meters], dtype=np.bool_)
        drawn_mean = np.where(self._business, 2000.0, 300.0) * rng.lognormal(0.0, 0.4, n)
        given_mean = np.array([m.mean_power_w or math.nan for m in meters])
        self._mean_w = np.where(np.isnan(given_mean), drawn_mean, given_mean)
        self._shift_h = rng.normal(0.0, 0.5, n)
        self._v_offset = rng.normal(0.0, 2.0, n)
        self.garbage_phase = rng.random(n)
        """Per meter, where in its garbage cycle it starts (see :func:`garbage_ticks`)."""
        drawn_start = rng.uniform(100.0, 20_000.0, n)
        given_start = np.array([math.nan if m.import_kwh is None else m.import_kwh for m in meters])
        self._wrap = np.array([m.faults.wraps_at_kwh for m in meters])
        self._drift_s = np.array([m.faults.clock_drift_s for m in meters])
        self._reset_at = np.array([m.faults.reset_at or -1 for m in meters], dtype=np.int64)
        self._total = np.where(np.isnan(given_start), drawn_start, given_start)
        """What each register has counted [kWh] (before it wraps)."""
        self._blocks: dict[int, Floats] = {}
        self._start_for_rollovers(np.array([m.faults.rollover_at or 0 for m in meters]))

    @property
    def devices(self) -> tuple[str, ...]:
        """The device names, in the order of :meth:`step`'s states."""
        return tuple(m.device for m in self.meters)

    def time_of(self, tick: int) -> dt.datetime:
        """When tick ``tick`` is measured, UTC."""
        return self.start + dt.timedelta(seconds=tick * self.interval_s)

    def step(self) -> list[MeterState]:
        """The states of every meter at tick :attr:`tick`; then move on to the next tick."""
        k = self.tick
        power, volts, pf, amps = self.instantaneous(np.array([k], dtype=np.int64))
        if k > 0:
            counted = np.where(self._reset_at == k, 0.0, self._total)
            self._total = counted + power[0] * self.interval_s * _KWH_PER_WS
        shown = np.mod(self._total, self._wrap)
        ts = self.time_of(k)
        drift = (self._drift_s * k).tolist()
        self.tick = k + 1
        return [
            MeterState(
                device=device,
                tick=k,
                ts=ts,
                device_ts=ts + dt.timedelta(seconds=d),
                energy_import_kwh=e,
                power_w=p,
                voltage_v=v,
                current_a=i,
                power_factor=f,
            )
            for device, d, e, p, v, i, f in zip(
                self.devices,
                drift,
                shown.tolist(),
                power[0].tolist(),
                volts[0].tolist(),
                amps[0].tolist(),
                pf[0].tolist(),
                strict=True,
            )
        ]

    def instantaneous(self, ticks: Ints) -> tuple[Floats, Floats, Floats, Floats]:
        """Power [W], voltage [V], power factor and current [A] of every meter at ``ticks``,
        each shaped ``(ticks, meters)``; power is the mean of the interval ending at the tick,
        taken at its local midpoint. Rounded as a meter shows them (0.1 W, 0.1 V, 0.01, mA).
        """
        mid_s = (ticks.astype(np.float64) - 0.5) * self.interval_s
        times_us = to_us(self.start) + np.round(mid_s * _US_PER_S).astype(np.int64)
        hour, weekday = local_hour_weekday(times_us, self.timezone)
        noise = self._noise(ticks)
        shifted = (hour[:, None] + self._shift_h[None, :]) % 24.0
        load = meter_load_w(shifted, weekday[:, None], self._business, self._mean_w)
        power = np.round(load * np.exp(0.15 * noise[0] - 0.15**2 / 2), 1)
        volts = np.round(NOMINAL_VOLTAGE_V + self._v_offset - 1.5e-3 * power + 0.5 * noise[1], 1)
        pf = np.round(np.clip(0.93 + 0.04 * noise[2], 0.5, 1.0), 2)
        amps = np.round(power / volts / pf, 3)
        return power, volts, pf, amps

    def _noise(self, ticks: Ints) -> Floats:
        """Standard normal noise ``(3, ticks, meters)``; drawn per block of ticks from the seed."""
        blocks, within = np.divmod(ticks, _TICKS_PER_BLOCK)
        out = np.empty((3, ticks.size, len(self.meters)))
        for block in np.unique(blocks).tolist():
            drawn = self._blocks.get(block)
            if drawn is None:
                rng = np.random.default_rng([self.seed, _STREAM_NOISE, block])
                drawn = rng.standard_normal((3, _TICKS_PER_BLOCK, len(self.meters)))
                if len(self._blocks) > 4:  # keep a few: the publisher only moves forward
                    self._blocks.clear()
                self._blocks[block] = drawn
            rows = blocks == block
            out[:, rows, :] = drawn[:, within[rows], :]
        return out

    def _start_for_rollovers(self, rollover_at: Ints) -> None:
        """Start rollover meters so that the register shows ``wrap - e/2`` at the tick before
        ``rollover_at`` and ``e/2`` at it, ``e`` being the energy of that tick's interval."""
        last = int(rollover_at.max())
        if last < 1:
            return
        power = self.instantaneous(np.arange(1, last + 1, dtype=np.int64))[0]
        energy = power * self.interval_s * _KWH_PER_WS  # (ticks 1..last, meters)
        before = np.vstack([np.zeros((1, energy.shape[1])), np.cumsum(energy, axis=0)])
        meters = np.flatnonzero(rollover_at > 0)
        at = rollover_at[meters]
        self._total[meters] = (
            self._wrap[meters] - before[at - 1, meters] - energy[at - 1, meters] / 2.0
        )


def garbage_ticks(tick: int, rate: Floats, phase: Floats) -> npt.NDArray[np.bool_]:
    """Which meters send garbage at ``tick``: evenly spaced, one message in ``1 / rate``,
    starting from each meter's ``phase`` (0 to 1).

    >>> [bool(garbage_ticks(k, np.array([0.25]), np.array([0.5]))[0]) for k in range(8)]
    [False, True, False, False, False, True, False, False]
    """
    return np.asarray(
        np.floor(phase + (tick + 1) * rate) > np.floor(phase + tick * rate), dtype=np.bool_
    )


def garble(payload: bytes, rng: np.random.Generator) -> bytes:
    """Garbage in place of ``payload``: random bytes, or ``payload`` cut short (a JSON object
    cut anywhere is no longer JSON). Random bytes start with a UTF-8 continuation byte, so
    they can neither be JSON nor start with a byte-order mark.

    >>> garble(b'{"a": 1}', np.random.default_rng(1)) != b'{"a": 1}'
    True
    """
    if len(payload) > 1 and rng.random() < 0.5:
        return payload[: int(rng.integers(1, len(payload)))]
    size = int(rng.integers(1, 64))
    head = int(rng.integers(0x80, 0xC0))
    return bytes([head]) + rng.bytes(size)


# --- encoders ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EncodeOptions:
    """How a fleet's payloads are written (the encoder's side of a subscription's options).

    Parameters
    ----------
    timezone
        Zone of device times written without one (Tasmota ``Time``, a mapping's strptime
        timestamp without a zone of its own).
    meter_id
        A meter-id template: the device name is written into each of its ``{field:...}``
        placeholders (``None``: nothing is added, except :data:`SIM_METER_ID` for
        ``mapping``).
    mapping
        The field mapping of ``mapping`` payloads.
    last_seen
        Zigbee2MQTT ``last_seen`` style; ``None``: not sent (the decoder then uses the receipt
        time, flagged ``clock_invalid``).
    """

    timezone: str = DEFAULT_TIMEZONE
    meter_id: str | None = None
    mapping: PayloadMapping = SIM_MAPPING
    last_seen: LastSeen | None = "ISO_8601"
    id_fields: tuple[FieldPath, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = () if self.meter_id is None else parse_meter_id_template(self.meter_id)
        paths = tuple(arg for kind, arg in parts if kind == "field" and isinstance(arg, tuple))
        for path in paths:
            if any(isinstance(step, int) and step < 0 for step in path):
                raise ConfigError(
                    f"meter_id {self.meter_id!r}: a simulator cannot fill negative list indices"
                )
        object.__setattr__(self, "id_fields", paths)
        check_timezone(self.timezone)


DEFAULT_ENCODE: Final = EncodeOptions()


class Encoder(Protocol):
    """A payload encoder: one meter's state in, one message out."""

    def __call__(
        self, state: MeterState, *, topic: str | None = None, options: EncodeOptions = ...
    ) -> Message: ...


def default_topic(fmt: str, device: str) -> str:
    """The topic a device of format ``fmt`` publishes on by default.

    >>> default_topic("tasmota", "plug-7")
    'tele/plug-7/SENSOR'
    """
    patterns = {
        "canonical": "meters/{}",
        "tasmota": "tele/{}/SENSOR",
        "shelly-gen2": "{}/events/rpc",
        "zigbee2mqtt": "zigbee2mqtt/{}",
        "mapping": "sim/{}/state",
    }
    if fmt not in patterns:
        raise ConfigError(f"unknown payload format {fmt!r}: use one of {', '.join(patterns)}")
    return patterns[fmt].format(device)


def encode_canonical(
    state: MeterState, *, topic: str | None = None, options: EncodeOptions = DEFAULT_ENCODE
) -> Message:
    """A canonical JSON object (``meter_id`` is the device name; ``ts`` the device time).

    >>> t = dt.datetime(2026, 10, 1, 0, 15, tzinfo=dt.UTC)
    >>> encode_canonical(MeterState("m1", 0, t, t, 12.5, 512.0, 230.0, 2.3, 0.97)).payload
    ... # doctest: +NORMALIZE_WHITESPACE
    b'{"meter_id": "m1", "ts": "2026-10-01T00:15:00.000000Z", "readings":
      {"energy_import_kwh": 12.5, "power_w": 512.0, "voltage_v": 230.0, "current_a": 2.3}}'
    """
    doc = {
        "meter_id": state.device,
        "ts": _utc_iso(state.device_ts, "microseconds"),
        "readings": {
            "energy_import_kwh": state.energy_import_kwh,
            "power_w": state.power_w,
            "voltage_v": state.voltage_v,
            "current_a": state.current_a,
        },
    }
    return _message(doc, state, topic or default_topic("canonical", state.device), ())


def encode_tasmota(
    state: MeterState, *, topic: str | None = None, options: EncodeOptions = DEFAULT_ENCODE
) -> Message:
    """A Tasmota ``SENSOR`` telemetry message; ``Time`` is the device time in
    ``options.timezone`` without a zone, to the second (as Tasmota writes it).

    >>> t = dt.datetime(2026, 10, 1, 0, 15, tzinfo=dt.UTC)
    >>> encode_tasmota(MeterState("plug", 0, t, t, 12.5, 512.0, 230.0, 2.3, 0.97))
    ... # doctest: +NORMALIZE_WHITESPACE
    Message(topic='tele/plug/SENSOR', payload=b'{"Time": "2026-10-01T08:15:00", "ENERGY":
      {"Total": 12.5, "Power": 512.0, "Voltage": 230.0, "Current": 2.3}}')
    """
    local = state.device_ts.astimezone(zoneinfo.ZoneInfo(options.timezone))
    doc = {
        "Time": local.strftime("%Y-%m-%dT%H:%M:%S"),
        "ENERGY": {
            "Total": state.energy_import_kwh,
            "Power": state.power_w,
            "Voltage": state.voltage_v,
            "Current": state.current_a,
        },
    }
    return _message(doc, state, topic or default_topic("tasmota", state.device), options.id_fields)


def encode_shelly(
    state: MeterState, *, topic: str | None = None, options: EncodeOptions = DEFAULT_ENCODE
) -> Message:
    """A Shelly Pro 3EM ``NotifyStatus`` with ``em:0`` (powers [W], voltages [V], currents
    [A] per phase and in total) and ``emdata:0`` (``total_act``, ``total_act_ret`` [Wh]);
    ``params.ts`` is the device time [s since the epoch], to the hundredth.
    """
    phase: dict[str, float] = {}
    for n, letter in enumerate("abc", start=1):
        phase[f"{letter}_act_power"] = _value(state, f"power_l{n}_w")
        phase[f"{letter}_voltage"] = _value(state, f"voltage_l{n}_v")
        phase[f"{letter}_current"] = _value(state, f"current_l{n}_a")
        phase[f"{letter}_pf"] = state.power_factor
    doc = {
        "src": state.device,
        "dst": "meterlake-sim/events",
        "method": "NotifyStatus",
        "params": {
            "ts": round((state.device_ts - _EPOCH).total_seconds(), 2),
            "em:0": {
                "id": 0,
                **phase,
                "total_current": state.current_a,
                "total_act_power": state.power_w,
                "total_aprt_power": _value(state, "apparent_power_va"),
            },
            "emdata:0": {
                "id": 0,
                "total_act": state.energy_import_kwh * 1000.0,
                "total_act_ret": 0.0,
            },
        },
    }
    where = topic or default_topic("shelly-gen2", state.device)
    return _message(doc, state, where, options.id_fields)


def encode_zigbee2mqtt(
    state: MeterState, *, topic: str | None = None, options: EncodeOptions = DEFAULT_ENCODE
) -> Message:
    """A Zigbee2MQTT smart-plug state: ``energy`` [kWh], ``power`` [W], ``voltage`` [V],
    ``current`` [A], ``state``, ``linkquality`` and ``last_seen`` (the device time, in the
    style of ``options.last_seen``; ISO 8601 in UTC by default)."""
    doc: dict[str, Any] = {
        "current": state.current_a,
        "energy": state.energy_import_kwh,
        "linkquality": 120,
        "power": state.power_w,
        "state": "ON",
        "voltage": state.voltage_v,
    }
    if options.last_seen == "ISO_8601":
        doc["last_seen"] = _utc_iso(state.device_ts, "milliseconds")
    elif options.last_seen == "ISO_8601_local":
        local = state.device_ts.astimezone(zoneinfo.ZoneInfo(options.timezone))
        doc["last_seen"] = local.isoformat(timespec="milliseconds")
    elif options.last_seen == "epoch":
        doc["last_seen"] = round((state.device_ts - _EPOCH).total_seconds() * 1000)
    where = topic or default_topic("zigbee2mqtt", state.device)
    return _message(doc, state, where, options.id_fields)


def encode_mapping(
    state: MeterState, *, topic: str | None = None, options: EncodeOptions = DEFAULT_ENCODE
) -> Message:
    """A payload that ``options.mapping`` decodes back to the state: each mapped quantity the
    model has, at its path, in its unit and scale; the device time in the timestamp's format;
    wrapped in a list at ``records`` if the mapping has one.

    >>> t = dt.datetime(2026, 10, 1, 0, 15, tzinfo=dt.UTC)
    >>> encode_mapping(MeterState("m1", 0, t, t, 12.5, 512.0, 230.0, 2.3, 0.97)).payload
    ... # doctest: +NORMALIZE_WHITESPACE
    b'{"time": 1790813700000, "data": {"e_wh": 12500.0, "p_kw": 0.512, "u_dv": 2300.0,
      "i_ma": 2300.0}, "meter": "m1"}'

    Raises
    ------
    ConfigError
        The mapping maps none of the model's quantities, or its paths cannot be written
        (negative list indices, a path through another field's value).
    """
    mapping = options.mapping
    record: dict[str, Any] = {}
    stamp = mapping.timestamp
    if stamp is not None:
        zone = zoneinfo.ZoneInfo(stamp.timezone or options.timezone)
        _set_path(record, _path(stamp.path), _format_time(state.device_ts, stamp.format, zone))
    written = 0
    for spec in mapping.fields:
        value = state.value(spec.quantity)
        if value is not None:
            _set_path(record, _path(spec.path), value / spec.factor())
            written += 1
    if not written:
        quantities = ", ".join(f.quantity for f in mapping.fields)
        raise ConfigError(f"the mapping maps none of the simulated quantities ({quantities})")
    # without a template of its own, the default shape carries the device as "meter"
    id_fields = options.id_fields if options.meter_id is not None else (_path("meter"),)
    for path in id_fields:
        _set_path(record, path, state.device)
    doc: Any = record
    if mapping.records is not None:
        doc = {}
        _set_path(doc, _path(mapping.records), [record])
    where = topic or default_topic("mapping", state.device)
    return Message(where, json.dumps(doc, allow_nan=False).encode())


ENCODERS: Final[dict[str, Encoder]] = {
    "canonical": encode_canonical,
    "tasmota": encode_tasmota,
    "shelly-gen2": encode_shelly,
    "zigbee2mqtt": encode_zigbee2mqtt,
    "mapping": encode_mapping,
}
"""The encoder of each payload format, by the name its decoder is registered under."""


def encode_payload(
    fmt: str,
    state: MeterState,
    *,
    topic: str | None = None,
    options: EncodeOptions = DEFAULT_ENCODE,
) -> Message:
    """Encode ``state`` with the encoder registered as ``fmt``.

    Raises
    ------
    ConfigError
        ``fmt`` is not a payload format.
    """
    encoder = ENCODERS.get(fmt)
    if encoder is None:
        raise ConfigError(f"unknown payload format {fmt!r}: use one of {', '.join(ENCODERS)}")
    return encoder(state, topic=topic, options=options)


def _value(state: MeterState, quantity: str) -> float:
    value = state.value(quantity)
    assert value is not None, quantity
    return value


def _utc_iso(moment: dt.datetime, timespec: str) -> str:
    return moment.astimezone(dt.UTC).replace(tzinfo=None).isoformat(timespec=timespec) + "Z"


def _message(
    doc: dict[str, Any], state: MeterState, topic: str, id_fields: tuple[FieldPath, ...]
) -> Message:
    for path in id_fields:
        _set_path(doc, path, state.device)
    return Message(topic, json.dumps(doc, allow_nan=False).encode())


def _path(text: str) -> FieldPath:
    return parse_field_path(text)


def _format_time(moment: dt.datetime, fmt: str, zone: dt.tzinfo) -> str | int | float:
    """``moment`` written as a mapping's timestamp format expects it."""
    seconds = (moment - _EPOCH).total_seconds()
    if fmt == "iso8601":
        return _utc_iso(moment, "microseconds")
    if fmt == "epoch_s":
        return round(seconds, 3)
    if fmt == "epoch_ms":
        return round(seconds * 1000)
    if fmt == "epoch_us":
        return round(seconds * _US_PER_S)
    return moment.astimezone(zone).strftime(fmt)


def _set_path(doc: dict[str, Any], path: FieldPath, value: Any) -> None:
    """Write ``value`` at ``path`` in ``doc``, creating objects and lists (padded with null)."""
    node: Any = doc
    for depth, step in enumerate(path):
        last = depth == len(path) - 1
        child: Any = value if last else ({} if isinstance(path[depth + 1], str) else [])
        if isinstance(step, str) and isinstance(node, dict):
            if last or step not in node:
                node[step] = child
        elif isinstance(step, int) and step >= 0 and isinstance(node, list):
            node.extend([None] * (step + 1 - len(node)))
            if last or node[step] is None:
                node[step] = child
        else:
            raise ConfigError(
                f"cannot write field path {path!r} into a simulated payload: it runs through "
                "another field's value or uses a negative list index"
            )
        node = node[step]


# --- faults, fleets and the publisher -------------------------------------------------------


def plan_faults(
    devices: Sequence[str],
    *,
    seed: int,
    garbage_rate: float = 0.2,
    first_tick: int = 5,
    last_tick: int = 10,
    clock_window_s: float | Mapping[str, float] = 300.0,
) -> dict[str, MeterFaults]:
    """A seeded set of faults for ``devices``: every device sends ``garbage_rate`` garbage;
    one stops sending, one rolls its register over, one is reset and one's clock drifts out
    of the clock window (in this order, to distinct devices chosen by the seed; with fewer
    devices the first kinds only), each starting at a tick from ``first_tick`` to
    ``last_tick``.

    ``clock_window_s`` is how far ahead a device clock may be before the decoder stops
    trusting it [s] (``max_clock_ahead_s``), for all devices or per device; the drifting
    clock leaves it between the tick before its start tick and that tick.

    >>> faults = plan_faults(["a", "b"], seed=1, garbage_rate=0.0)
    >>> sorted((d, f.describe()[0].split()[0]) for d, f in faults.items())
    [('a', 'register'), ('b', 'stops')]
    """
    if not 1 <= first_tick <= last_tick:
        raise ConfigError(f"first_tick={first_tick}, last_tick={last_tick}: use 1 <= first <= last")
    rng = np.random.default_rng([seed, _STREAM_FAULTS, len(devices)])
    order = rng.permutation(len(devices)).tolist()
    ticks = rng.integers(first_tick, last_tick + 1, 4).tolist()
    faults = {d: MeterFaults(garbage_rate=garbage_rate) for d in devices}
    kinds = ("stop", "rollover", "reset", "drift")
    for kind, index, tick in zip(kinds, order, ticks, strict=False):
        device = devices[index]
        if kind == "stop":
            fault = MeterFaults(garbage_rate=garbage_rate, stop_at=tick)
        elif kind == "rollover":
            fault = MeterFaults(garbage_rate=garbage_rate, rollover_at=tick)
        elif kind == "reset":
            fault = MeterFaults(garbage_rate=garbage_rate, reset_at=tick)
        else:
            window = (
                clock_window_s
                if isinstance(clock_window_s, int | float)
                else clock_window_s.get(device, 300.0)
            )
            fault = MeterFaults(garbage_rate=garbage_rate, clock_drift_s=window / (tick - 0.5))
        faults[device] = fault
    return faults


@dataclass(frozen=True)
class Publication:
    """What one meter sends at one tick."""

    state: MeterState
    """The model's truth at that tick (also behind a garbage message)."""
    message: Message
    garbage: bool
    """The payload is garbage in place of the encoded state."""


class MqttMeterFleet:
    """Simulated MQTT meters of one payload format: a :class:`MeterModel` and the messages its
    meters send, faults included.

    Parameters
    ----------
    meters
        The meters (their faults included).
    fmt
        The payload format (a name of :data:`ENCODERS`).
    start, interval_s, seed, timezone
        Of the :class:`MeterModel`.
    options
        How payloads are written.
    topics
        Topic per device name; devices not in it use :func:`default_topic`.
    """

    def __init__(
        self,
        meters: Sequence[MqttMeter],
        fmt: PayloadFormatName,
        *,
        start: dt.datetime,
        interval_s: float = 60.0,
        seed: int = 0,
        timezone: str = DEFAULT_TIMEZONE,
        options: EncodeOptions = DEFAULT_ENCODE,
        topics: Mapping[str, str] | None = None,
    ) -> None:
        if fmt not in ENCODERS:
            raise ConfigError(f"unknown payload format {fmt!r}: use one of {', '.join(ENCODERS)}")
        self.model = MeterModel(
            meters, start=start, interval_s=interval_s, seed=seed, timezone=timezone
        )
        self.format = fmt
        self.options = options
        given = topics or {}
        self.topics = {
            m.device: given.get(m.device) or default_topic(fmt, m.device) for m in meters
        }
        self._encode = ENCODERS[fmt]
        self._garbage_rate = np.array([m.faults.garbage_rate for m in meters])
        self._stop_at = np.array(
            [math.inf if m.faults.stop_at is None else m.faults.stop_at for m in meters]
        )

    @property
    def interval_s(self) -> float:
        """Simulated time between ticks [s]."""
        return self.model.interval_s

    def step(self) -> list[Publication]:
        """What the meters send at the next tick (stopped devices send nothing)."""
        tick = self.model.tick
        states = self.model.step()
        garbage = garbage_ticks(tick, self._garbage_rate, self.model.garbage_phase).tolist()
        sending = (tick < self._stop_at).tolist()
        out = []
        for index, (state, bad, alive) in enumerate(zip(states, garbage, sending, strict=True)):
            if not alive:
                continue
            message = self._encode(state, topic=self.topics[state.device], options=self.options)
            if bad:
                rng = np.random.default_rng([self.model.seed, _STREAM_GARBAGE, tick, index])
                message = Message(message.topic, garble(message.payload, rng))
            out.append(Publication(state, message, bad))
        return out


@dataclass(frozen=True)
class PublisherStats:
    """What a publisher has done so far (a snapshot)."""

    connected: bool
    ticks: int
    messages: int
    """Messages handed to the client (garbage included)."""
    garbage: int
    acknowledged: int
    """Messages the broker acknowledged (QoS 1) or that were sent (QoS 0)."""


class MqttPublisher:
    """Publish a fleet's messages to a broker from a thread of its own.

    Tick ``k`` of the fleet is sent ``k * interval_s / speed`` wall seconds after
    :meth:`start` (a publisher that falls behind catches up at once, in order).

    Parameters
    ----------
    fleet
        What to send.
    connection
        The broker (host, port, credentials, TLS, protocol); its ``client_id`` is replaced by
        ``client_id``.
    client_id
        The publisher's MQTT client id (not a collector's: the broker would drop one of them).
    speed
        Simulated seconds per wall second (1: real time; 60: a minute each second). The model
        times run ahead of the wall clock when faster: start the fleet in the past or widen
        the subscription's ``max_clock_ahead_s``, or readings get the receipt time.
    qos
        MQTT QoS of every message.
    connect_timeout_s
        How long :meth:`start` waits for the broker [s].
    clock
        Monotonic wall seconds, for pacing.
    """

    def __init__(
        self,
        fleet: MqttMeterFleet,
        connection: MqttConnection,
        *,
        client_id: str = "meterlake-sim",
        speed: float = 1.0,
        qos: Literal[0, 1] = 1,
        connect_timeout_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not (math.isfinite(speed) and speed > 0):
            raise ConfigError(f"speed={speed!r}: use a positive number of sim-seconds per second")
        self.fleet = fleet
        self.connection = connection.model_copy(update={"client_id": client_id})
        self.speed = speed
        self.qos = qos
        self.connect_timeout_s = connect_timeout_s
        self.error: BaseException | None = None
        """What stopped the publishing thread, if anything did."""
        self._clock = clock
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._lock = threading.Lock()
        self._ticks = self._messages = self._garbage = self._acked = 0
        self._client: paho.Client | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Connect and start publishing.

        Raises
        ------
        ConnectionError
            The broker did not accept the connection within ``connect_timeout_s``.
        """
        if self._client is not None:
            raise RuntimeError("the publisher is already running")
        client = make_client(self.connection, manual_ack=False)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        self._client = client
        connect_in_background(client, self.connection)
        if not self._connected.wait(self.connect_timeout_s):
            client.loop_stop()
            self._client = None
            raise ConnectionError(
                f"simulated meters: no connection to the broker at {self.connection.host}:"
                f"{self.connection.port} within {self.connect_timeout_s:g} s"
            )
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._run, name=f"mqtt-sim-{self.connection.client_id}", daemon=True
        )
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop publishing, wait up to ``timeout_s`` [s] for the broker to acknowledge what
        was sent, and disconnect."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        client, self._client = self._client, None
        if client is None:
            return
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._connected.is_set():
            with self._lock:
                if self._acked >= self._messages:
                    break
            time.sleep(0.01)
        client.disconnect()
        client.loop_stop()

    def stats(self) -> PublisherStats:
        """What has been sent so far."""
        with self._lock:
            return PublisherStats(
                connected=self._connected.is_set(),
                ticks=self._ticks,
                messages=self._messages,
                garbage=self._garbage,
                acknowledged=self._acked,
            )

    def _run(self) -> None:
        period = self.fleet.interval_s / self.speed
        began = self._clock()
        client = self._client
        assert client is not None
        try:
            while True:
                delay = began + self._ticks * period - self._clock()
                if self._stop.wait(max(delay, 0.0)) or self._stop.is_set():
                    return
                publications = self.fleet.step()
                for pub in publications:
                    client.publish(pub.message.topic, pub.message.payload, qos=self.qos)
                with self._lock:
                    self._ticks += 1
                    self._messages += len(publications)
                    self._garbage += sum(p.garbage for p in publications)
                    if self.qos == 0:
                        self._acked = self._messages
        except Exception as exc:  # reported by stats()/error, never lost silently
            log.exception("simulated meters %s stopped", self.connection.client_id)
            self.error = exc

    def _on_connect(
        self,
        _client: paho.Client,
        _userdata: object,
        _flags: object,
        reason: Any,
        _properties: object,
    ) -> None:
        if reason.is_failure:
            log.warning("simulated meters: the broker refused the connection: %s", reason)
        else:
            self._connected.set()

    def _on_disconnect(self, *_args: object) -> None:
        self._connected.clear()

    def _on_publish(self, *_args: object) -> None:
        if self.qos:
            with self._lock:
                self._acked += 1
