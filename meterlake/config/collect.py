"""Settings of the Modbus collector: ``[[modbus]]`` buses and their ``[[modbus.devices]]``.

A bus is one connection (a TCP gateway or a serial line) with one or more meters on it, each
addressed by its unit id. Durations are written with a unit (``"60s"``, ``"15m"``, ``"500ms"``,
``"1h"``) or as a number of seconds. Values a device does not set are taken from its bus.

::

    [[modbus]]
    name = "bus0"
    host = "127.0.0.1"        # or: serial = "/dev/ttyUSB0", baudrate = 9600, parity = "N"
    port = 5020
    framer = "socket"         # socket | rtu | rtu-over-tcp (serial lines: rtu)
    interval = "60s"          # polls at :00 of every minute (aligned to the wall clock)
    timeout = "1s"            # per request; the most a dead device holds the bus
    retries = 1               # re-reads of a failed poll, after retry_delay, 2 x retry_delay ...
    offline_after = 3         # failed polls in a row before the device is offline
    [[modbus.devices]]
    meter_id = "sdm-001"
    unit = 1
    profile = "eastron_sdm630"
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)

from meterlake.config.ids import validate_meter_id

Framer = Literal["socket", "rtu", "rtu-over-tcp"]
MAX_BLOCK_REGISTERS: Final = 125
"""The most registers one Modbus read (function 3 or 4) may ask for."""
RTU_UNITS: Final = range(1, 248)
"""Unit ids of devices on an RTU line (0 is broadcast, 248-255 reserved)."""
_DURATION_RE: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min|h)?\s*$")
_UNIT_SECONDS: Final = {"ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}


def parse_duration(value: object) -> float:
    """Seconds of a duration given as a number of seconds or text with a unit.

    >>> parse_duration("15m"), parse_duration("500ms"), parse_duration(2)
    (900.0, 0.5, 2.0)

    Raises
    ------
    ValueError
        ``value`` is neither a non-negative number nor text like ``60s``, ``15m``, ``1h``.
    """
    if isinstance(value, bool):
        raise ValueError("must be a duration such as '60s', '15m', '500ms' or a number of seconds")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (match := _DURATION_RE.fullmatch(value)):
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2) or "s"]
    else:
        raise ValueError("must be a duration such as '60s', '15m', '500ms' or a number of seconds")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError("must be a finite, non-negative duration")
    return seconds


Seconds = Annotated[float, BeforeValidator(parse_duration)]
"""A duration [s], written as ``"60s"``, ``"15m"``, ``"500ms"``, ``"1h"`` or a number."""
Interval = Annotated[Seconds, Field(ge=0.1, le=86_400)]
Timeout = Annotated[Seconds, Field(ge=0.01, le=60)]
Backoff = Annotated[Seconds, Field(ge=0, le=86_400)]
Retries = Annotated[int, Field(ge=0, le=5)]
OfflineAfter = Annotated[int, Field(ge=1, le=1000)]
MaxBlock = Annotated[int, Field(ge=1, le=MAX_BLOCK_REGISTERS)]
Gap = Annotated[int, Field(ge=0, le=MAX_BLOCK_REGISTERS)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ModbusDeviceSettings(_Section):
    """One meter on a bus (``[[modbus.devices]]``); unset values come from the bus."""

    meter_id: str
    """The meter's id in the lake (letters, digits, ``._-:``; at most 64)."""
    unit: Annotated[int, Field(ge=0, le=255)]
    """Modbus unit id (slave address); 1-247 on RTU lines."""
    profile: Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_]{0,62}$")]
    """Name of the device profile (register map), e.g. ``eastron_sdm630``."""
    single_reads: bool | None = None
    """One read per quantity instead of block reads (meters that refuse long reads); unset:
    the profile's default."""
    interval: Interval | None = None
    timeout: Timeout | None = None
    retries: Retries | None = None
    offline_after: OfflineAfter | None = None
    max_block: MaxBlock | None = None
    """Most registers per read [registers]; unset: the profile's limit."""
    gap: Gap | None = None
    """Unused registers a block read may span to join two neighbours [registers]."""

    @field_validator("meter_id")
    @classmethod
    def _safe_meter_id(cls, value: str) -> str:
        return validate_meter_id(value)


class ModbusBusSettings(_Section):
    """One Modbus connection (``[[modbus]]``) and the meters polled over it, one after another."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")]
    """Names the bus in logs, health and the readings' ``source``."""
    host: str | None = None
    """TCP gateway or meter (``socket`` or ``rtu-over-tcp`` framing)."""
    port: Annotated[int, Field(ge=1, le=65535)] = 502
    serial: str | None = None
    """Serial device of an RS-485 line, e.g. ``/dev/ttyUSB0`` (``rtu`` framing)."""
    baudrate: Annotated[int, Field(ge=300, le=921_600)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    framer: Framer = "socket"
    """``socket`` (Modbus TCP), ``rtu`` (a serial line) or ``rtu-over-tcp`` (RTU frames through
    a serial-to-Ethernet converter). Defaults to ``rtu`` when ``serial`` is given."""
    interval: Interval = 60.0
    """Poll interval [s], aligned to the wall clock: ``60s`` polls at :00 of every minute."""
    timeout: Timeout = 1.0
    """Wait for one response [s]; the longest a silent device holds the bus."""
    retries: Retries = 1
    """Re-reads of a failed poll, each after a back-off, before the poll counts as failed."""
    retry_delay: Backoff = 0.1
    """Back-off before the first re-read [s]; doubled for each further one."""
    offline_after: OfflineAfter = 3
    """Failed polls in a row after which a device is offline (probed, not polled)."""
    offline_retry: Annotated[Seconds, Field(ge=0.1, le=86_400)] = 60.0
    """First probe of an offline device after [s]; doubled after every failed probe ..."""
    offline_retry_max: Annotated[Seconds, Field(ge=0.1, le=86_400)] = 900.0
    """... up to this [s]."""
    max_block: MaxBlock | None = None
    gap: Gap = 0
    devices: Annotated[tuple[ModbusDeviceSettings, ...], Field(min_length=1)]

    @model_validator(mode="before")
    @classmethod
    def _default_framer(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("serial") is not None and "framer" not in data:
            return {**data, "framer": "rtu"}
        return data

    @model_validator(mode="after")
    def _consistent(self) -> ModbusBusSettings:
        problems = []
        if (self.host is None) == (self.serial is None):
            problems.append("give either host (TCP) or serial (an RS-485 line), not both or none")
        elif self.serial is not None and self.framer != "rtu":
            problems.append(f"framer {self.framer!r} does not work on a serial line: use 'rtu'")
        elif self.host is not None and self.framer == "rtu":
            problems.append(
                "framer 'rtu' over TCP is called 'rtu-over-tcp' (or use 'socket' for Modbus TCP)"
            )
        units = [d.unit for d in self.devices]
        if dupes := sorted({u for u in units if units.count(u) > 1}):
            problems.append(f"unit ids {dupes} appear more than once; each device needs its own")
        ids = [d.meter_id for d in self.devices]
        if dupes_ids := sorted({m for m in ids if ids.count(m) > 1}):
            problems.append(f"meter ids {dupes_ids} appear more than once")
        if self.framer != "socket" and (bad := [u for u in units if u not in RTU_UNITS]):
            problems.append(f"unit ids {bad} cannot be used with RTU framing: use 1 to 247")
        if self.offline_retry_max < self.offline_retry:
            problems.append("offline_retry_max must not be shorter than offline_retry")
        if problems:
            raise ValueError("; ".join(problems))
        return self

    @property
    def endpoint(self) -> str:
        """Where the bus is: ``host:port`` or the serial device."""
        return f"{self.host}:{self.port}" if self.host is not None else str(self.serial)


def check_modbus_buses(buses: tuple[ModbusBusSettings, ...]) -> None:
    """Refuse what only shows across buses: a repeated bus name, a meter id on two buses, two
    buses on one serial line.

    Raises
    ------
    ValueError
        The message names the repeated bus, meter id or serial device.
    """
    names = [b.name for b in buses]
    if dupes := sorted({n for n in names if names.count(n) > 1}):
        raise ValueError(f"bus names {dupes} appear more than once; each [[modbus]] needs its own")
    lines = [b.serial for b in buses if b.serial is not None]
    if dupes := sorted({s for s in lines if lines.count(s) > 1}):
        raise ValueError(
            f"serial lines {dupes} are used by more than one bus; put their devices "
            "under one [[modbus]] (one line carries one bus)"
        )
    seen: dict[str, str] = {}
    for bus in buses:
        for device in bus.devices:
            if device.meter_id in seen:
                raise ValueError(
                    f"meter id {device.meter_id!r} is on bus {seen[device.meter_id]!r} and on "
                    f"bus {bus.name!r}; a meter id names one meter"
                )
            seen[device.meter_id] = bus.name
