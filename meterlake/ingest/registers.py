"""Register reads, sans I/O: which blocks to read for a profile, and the readings they give.

:func:`plan_reads` turns a :class:`~meterlake.ingest.profiles.DeviceProfile` into the Modbus
requests of one poll: registers of one function code that are contiguous (or at most ``gap``
unused registers apart) are read together, at most ``max_block`` registers per request; or one
request per quantity for meters that refuse long reads. :func:`decode_poll` turns the register
words the device returned into :class:`~meterlake.ingest.readings.Reading` records in canonical
units. Bytes are never re-packed by hand: pymodbus'
``ModbusClientMixin.convert_from_registers`` / ``convert_to_registers`` do the conversion.

A NaN or infinite value is kept and flagged ``invalid_value``; a value outside what its quantity
can be (see :data:`~meterlake.ingest.profiles.DEFAULT_LIMITS`) is kept and flagged
``out_of_range``. Neither is ever turned into 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from pymodbus.client.mixin import ModbusClientMixin

from meterlake.config.collect import MAX_BLOCK_REGISTERS
from meterlake.config.errors import ConfigError, RetryableError
from meterlake.config.schemas import Quality
from meterlake.ingest.profiles import DataType, DeviceProfile, RegisterMap
from meterlake.ingest.readings import Reading

_CONVERT: Final = ModbusClientMixin.convert_from_registers
_ENCODE: Final = ModbusClientMixin.convert_to_registers
_DATATYPE: Final[dict[DataType, ModbusClientMixin.DATATYPE]] = {
    "u16": ModbusClientMixin.DATATYPE.UINT16,
    "i16": ModbusClientMixin.DATATYPE.INT16,
    "u32": ModbusClientMixin.DATATYPE.UINT32,
    "i32": ModbusClientMixin.DATATYPE.INT32,
    "u64": ModbusClientMixin.DATATYPE.UINT64,
    "i64": ModbusClientMixin.DATATYPE.INT64,
    "f32": ModbusClientMixin.DATATYPE.FLOAT32,
    "f64": ModbusClientMixin.DATATYPE.FLOAT64,
}
_INTEGER_RANGE: Final[dict[DataType, tuple[int, int]]] = {
    "u16": (0, 2**16 - 1),
    "i16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1),
    "i64": (-(2**63), 2**63 - 1),
}
_TOLERANCE: Final = 1e-6
"""Relative slack at the limits, so float32 rounding of e.g. a power factor of 1 is no fault."""
_INVALID: Final = (Quality.INVALID_VALUE.value,)
_OUT_OF_RANGE: Final = (Quality.OUT_OF_RANGE.value,)


class ResponseShapeError(RetryableError):
    """A device returned another number of blocks or registers than were asked for."""


@dataclass(frozen=True)
class BlockRead:
    """One Modbus request: ``count`` registers from ``address`` with function ``function``."""

    function: int
    address: int
    count: int
    registers: tuple[RegisterMap, ...]
    """The quantities inside the block, by address."""

    @property
    def end(self) -> int:
        """One past the last register read."""
        return self.address + self.count


@dataclass(frozen=True)
class ReadPlan:
    """The requests of one poll of one device, in the order they are sent."""

    profile: str
    blocks: tuple[BlockRead, ...]

    @property
    def registers(self) -> int:
        """Registers read per poll [registers]."""
        return sum(b.count for b in self.blocks)

    @property
    def quantities(self) -> tuple[str, ...]:
        """Quantities the plan reads."""
        return tuple(r.quantity for b in self.blocks for r in b.registers)


def plan_reads(
    profile: DeviceProfile,
    *,
    single_reads: bool | None = None,
    max_block: int | None = None,
    gap: int = 0,
) -> ReadPlan:
    """The block reads of one poll of a device with ``profile``.

    Parameters
    ----------
    profile
        The device's register map.
    single_reads
        One request per quantity; None: the profile's default.
    max_block
        Most registers per request [registers]; None: the profile's limit. Never above it.
    gap
        Unused registers a block may span to join its neighbour [registers]; 0 joins only
        registers that touch.

    >>> from meterlake.ingest.profiles import shipped_profiles
    >>> plan = plan_reads(shipped_profiles()["eastron_sdm120"])
    >>> [(b.address, b.count) for b in plan.blocks]
    [(0, 2), (6, 2), (12, 2), (18, 2), (24, 2), (30, 2), (70, 10)]
    >>> len(plan_reads(shipped_profiles()["eastron_sdm120"], gap=6).blocks)
    2

    Raises
    ------
    ConfigError
        ``max_block`` or ``gap`` is out of range, or a register does not fit ``max_block``.
    """
    limit = profile.max_block if max_block is None else min(max_block, profile.max_block)
    if not 1 <= limit <= MAX_BLOCK_REGISTERS:
        raise ConfigError(f"max_block = {max_block}: use 1 to {MAX_BLOCK_REGISTERS}")
    if not 0 <= gap <= MAX_BLOCK_REGISTERS:
        raise ConfigError(f"gap = {gap}: use 0 to {MAX_BLOCK_REGISTERS} registers")
    if too_wide := [r.quantity for r in profile.registers if r.words > limit]:
        raise ConfigError(f"max_block = {limit} is narrower than the registers of {too_wide}")
    single = profile.single_reads if single_reads is None else single_reads
    groups: list[list[RegisterMap]] = []
    for reg in profile.registers:  # sorted by function code and address
        if groups and not single:
            last = groups[-1]
            start, end = last[0].address, max(r.end for r in last)
            if (
                reg.function == last[0].function
                and reg.address - end <= gap
                and max(end, reg.end) - start <= limit
            ):
                last.append(reg)
                continue
        groups.append([reg])
    blocks = tuple(
        BlockRead(
            function=g[0].function,
            address=g[0].address,
            count=max(r.end for r in g) - g[0].address,
            registers=tuple(g),
        )
        for g in groups
    )
    return ReadPlan(profile=profile.name, blocks=blocks)


def decode_value(reg: RegisterMap, words: Sequence[int]) -> float:
    """The value of ``reg`` in its canonical unit, from its register words.

    >>> from meterlake.ingest.profiles import shipped_profiles
    >>> volts = shipped_profiles()["chint_dtsu666"].register("voltage_l1_v")
    >>> decode_value(volts, [0x450F, 0xD000])  # 2301.0 as float32: 0.1 V units
    230.1
    """
    raw = _CONVERT(list(words), _DATATYPE[reg.data_type], word_order=reg.word_order)
    if not isinstance(raw, int | float):  # only for a wrong number of words
        raise ResponseShapeError(
            f"{reg.quantity}: {len(words)} registers do not hold one {reg.data_type}"
        )
    return float(raw) * reg.multiplier / reg.divisor


def quality_of(reg: RegisterMap, value: float) -> tuple[str, ...]:
    """The quality flags of a decoded value: ``invalid_value``, ``out_of_range`` or none.

    >>> from meterlake.ingest.profiles import shipped_profiles
    >>> pf = shipped_profiles()["eastron_sdm630"].register("power_factor")
    >>> quality_of(pf, float("nan")), quality_of(pf, 1.5), quality_of(pf, 0.98)
    (('invalid_value',), ('out_of_range',), ())
    """
    if not math.isfinite(value):
        return _INVALID
    slack_low = _TOLERANCE * max(1.0, abs(reg.minimum)) if math.isfinite(reg.minimum) else 0.0
    slack_high = _TOLERANCE * max(1.0, abs(reg.maximum)) if math.isfinite(reg.maximum) else 0.0
    if value < reg.minimum - slack_low or value > reg.maximum + slack_high:
        return _OUT_OF_RANGE
    return ()


def decode_block(
    block: BlockRead, words: Sequence[int]
) -> list[tuple[str, float, tuple[str, ...]]]:
    """``(quantity, value, quality)`` of every quantity in ``block`` from the words it returned.

    Raises
    ------
    ResponseShapeError
        ``words`` is not ``block.count`` registers long.
    """
    if len(words) != block.count:
        raise ResponseShapeError(
            f"asked for {block.count} registers at {block.address:#06x} (function "
            f"{block.function}), got {len(words)}"
        )
    out = []
    for reg in block.registers:
        offset = reg.address - block.address
        value = decode_value(reg, words[offset : offset + reg.words])
        out.append((reg.quantity, value, quality_of(reg, value)))
    return out


def decode_poll(
    plan: ReadPlan,
    responses: Sequence[Sequence[int]],
    *,
    meter_id: str,
    ts_us: int,
    source: str,
) -> list[Reading]:
    """The readings of one poll: ``responses[i]`` are the words returned for ``plan.blocks[i]``.

    Parameters
    ----------
    plan
        The requests that were sent.
    responses
        Register words per block, in the order of ``plan.blocks``.
    meter_id
        The meter the device is.
    ts_us
        When the device was read, UTC microseconds since the epoch.
    source
        Which bus and device, e.g. ``modbus:bus0/eastron_sdm630@1``.

    Raises
    ------
    ResponseShapeError
        A block is missing or has the wrong length.
    """
    if len(responses) != len(plan.blocks):
        raise ResponseShapeError(
            f"a poll of {plan.profile} has {len(plan.blocks)} blocks, got {len(responses)}"
        )
    return [
        Reading(meter_id, ts_us, quantity, value, quality, source)
        for block, words in zip(plan.blocks, responses, strict=True)
        for quantity, value, quality in decode_block(block, words)
    ]


def encode_value(reg: RegisterMap, value: float) -> list[int]:
    """The register words that hold ``value`` [canonical unit] in ``reg``: the inverse of
    :func:`decode_value` (integer registers round to the nearest step; integer energy
    counters wrap at ``2**width_bits``).

    >>> from meterlake.ingest.profiles import shipped_profiles
    >>> volts = shipped_profiles()["eastron_sdm630"].register("voltage_l1_v")
    >>> [hex(w) for w in encode_value(volts, 230.2)]
    ['0x4366', '0x3333']

    Raises
    ------
    ValueError
        An integer register cannot hold ``value`` (NaN, infinite, or beyond its range).
    """
    raw = value * reg.divisor / reg.multiplier
    datatype = _DATATYPE[reg.data_type]
    if reg.data_type in ("f32", "f64"):
        return _ENCODE(raw, datatype, word_order=reg.word_order)
    if not math.isfinite(raw):
        raise ValueError(f"{reg.quantity}: {value} cannot be held by a {reg.data_type} register")
    steps = round(raw)
    if reg.width_bits is not None:
        steps %= 2**reg.width_bits
    low, high = _INTEGER_RANGE[reg.data_type]
    if not low <= steps <= high:
        raise ValueError(f"{reg.quantity}: {value} is beyond the range of a {reg.data_type}")
    return _ENCODE(steps, datatype, word_order=reg.word_order)
