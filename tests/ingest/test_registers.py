"""Register reads, sans I/O: block coalescing, single reads, and decoding with quality flags."""

from __future__ import annotations

import doctest
import math
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymodbus.client.mixin import ModbusClientMixin

from meterlake.config.errors import ConfigError
from meterlake.config.schemas import Quality
from meterlake.ingest import registers
from meterlake.ingest.profiles import WORDS, DeviceProfile, parse_profile, shipped_profiles
from meterlake.ingest.readings import Reading
from meterlake.ingest.registers import (
    ResponseShapeError,
    decode_block,
    decode_poll,
    decode_value,
    encode_value,
    plan_reads,
    quality_of,
)

DT = ModbusClientMixin.DATATYPE
PYMODBUS_TYPE = {
    "u16": DT.UINT16,
    "i16": DT.INT16,
    "u32": DT.UINT32,
    "i32": DT.INT32,
    "u64": DT.UINT64,
    "i64": DT.INT64,
    "f32": DT.FLOAT32,
    "f64": DT.FLOAT64,
}
INT_RANGE = {
    "u16": (0, 2**16 - 1),
    "i16": (-(2**15), 2**15 - 1),
    "u32": (0, 2**32 - 1),
    "i32": (-(2**31), 2**31 - 1),
    "u64": (0, 2**64 - 1),
    "i64": (-(2**63), 2**63 - 1),
}
# quantities that take any unit-W value, so a random layout needs no per-quantity units
POWER_QUANTITIES = (
    "power_w",
    "power_l1_w",
    "power_l2_w",
    "power_l3_w",
    "reactive_power_var",
    "apparent_power_va",
)
UNITS = {"power_w": "W", "reactive_power_var": "var", "apparent_power_va": "VA"}


def one_register_profile(**spec: Any) -> DeviceProfile:
    """A profile with ``power_w`` as given (and an import register far away)."""
    return parse_profile(
        {
            "name": "t",
            "manufacturer": "t",
            "model": "t",
            "phases": 1,
            "registers": {
                "power_w": {"function": 4, "address": 0, "unit": "W", **spec},
                "energy_import_kwh": {
                    "function": 3,
                    "address": 9000,
                    "type": "f64",
                    "unit": "kWh",
                },
            },
        }
    )


@st.composite
def layouts(draw: st.DrawFn) -> DeviceProfile:
    """Random, valid profiles: registers of random types at random gaps on both tables."""
    count = draw(st.integers(1, len(POWER_QUANTITIES)))
    regs: dict[str, Any] = {}
    address = {3: draw(st.integers(0, 50)), 4: draw(st.integers(0, 50))}
    for quantity in POWER_QUANTITIES[:count]:
        function = draw(st.sampled_from([3, 4]))
        data_type = draw(st.sampled_from(sorted(WORDS)))
        regs[quantity] = {
            "function": function,
            "address": address[function],
            "type": data_type,
            "unit": UNITS.get(quantity, "W"),
        }
        address[function] += WORDS[data_type] + draw(st.integers(0, 6))
    function = draw(st.sampled_from([3, 4]))
    regs["energy_import_kwh"] = {
        "function": function,
        "address": address[function],
        "type": "f32",
        "unit": "kWh",
    }
    return parse_profile(
        {
            "name": "random",
            "manufacturer": "t",
            "model": "t",
            "phases": 1,
            "max_block": draw(st.integers(4, 125)),
            "registers": regs,
        }
    )


# --- planning ------------------------------------------------------------------------------


def test_sdm630_blocks_join_touching_registers_only() -> None:
    plan = plan_reads(shipped_profiles()["eastron_sdm630"])
    assert [(b.function, b.address, b.count) for b in plan.blocks] == [
        (4, 0x00, 18),  # 3 voltages, 3 currents, 3 powers: contiguous
        (4, 0x2A, 2),
        (4, 0x34, 2),
        (4, 0x38, 2),
        (4, 0x3C, 4),  # var + power factor
        (4, 0x46, 10),  # frequency + four energies
    ]
    assert plan.registers == 38
    assert set(plan.quantities) == set(shipped_profiles()["eastron_sdm630"].quantities)


def test_gap_tolerance_joins_neighbours_up_to_the_meters_limit() -> None:
    profile = shipped_profiles()["eastron_sdm630"]
    assert len(plan_reads(profile, gap=2).blocks) == 4  # 0x34, 0x38 and 0x3C join
    whole = plan_reads(profile, gap=125)
    assert [(b.address, b.count) for b in whole.blocks] == [(0, 80)]  # max_block = 80
    narrow = plan_reads(profile, gap=125, max_block=20)
    assert all(b.count <= 20 for b in narrow.blocks)
    assert len(narrow.blocks) > 1


def test_function_codes_are_never_mixed_and_far_registers_stay_apart() -> None:
    plan = plan_reads(shipped_profiles()["chint_dtsu666"], gap=125)
    assert [(b.function, b.address, b.count) for b in plan.blocks] == [
        (3, 0x101E, 12),  # import and export energy, 8 unused registers between
        (3, 0x2006, 64),  # 0x2006 .. 0x2045
    ]


def test_single_reads_read_one_quantity_per_request() -> None:
    profile = shipped_profiles()["eastron_sdm630"]
    plan = plan_reads(profile, single_reads=True, gap=125)
    assert len(plan.blocks) == len(profile.registers)
    assert all(len(b.registers) == 1 and b.count == 2 for b in plan.blocks)
    # the profile's default applies when the device does not say
    single = one_register_profile(type="f32")
    assert len(plan_reads(single).blocks) == 2


def test_bad_plan_settings_are_refused() -> None:
    profile = shipped_profiles()["eastron_sdm630"]
    with pytest.raises(ConfigError, match="gap = -1"):
        plan_reads(profile, gap=-1)
    with pytest.raises(ConfigError, match="max_block = 0"):
        plan_reads(profile, max_block=0)
    with pytest.raises(ConfigError, match="narrower than the registers"):
        plan_reads(one_register_profile(type="f64"), max_block=2)


@settings(max_examples=150, deadline=None)
@given(profile=layouts(), gap=st.integers(0, 10), max_block=st.integers(4, 125))
def test_block_plan_properties(profile: DeviceProfile, gap: int, max_block: int) -> None:
    plan = plan_reads(profile, gap=gap, max_block=max_block)
    limit = min(max_block, profile.max_block)
    covered = [r for b in plan.blocks for r in b.registers]
    # every register is read exactly once
    assert sorted(covered, key=lambda r: (r.function, r.address)) == list(profile.registers)
    for block in plan.blocks:
        assert block.count <= limit
        assert {r.function for r in block.registers} == {block.function}
        assert block.address == block.registers[0].address
        assert block.end == max(r.end for r in block.registers)
        for before, after in zip(block.registers, block.registers[1:], strict=False):
            assert after.address - before.end <= gap  # no larger holes inside a block
    # greedy and maximal: a block ends only when the next register may not join it
    for before, after in zip(plan.blocks, plan.blocks[1:], strict=False):
        first = after.registers[0]
        assert (
            first.function != before.function
            or first.address - before.end > gap
            or first.end - before.address > limit
        )


# --- decoding ------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    data_type=st.sampled_from(sorted(WORDS)),
    word_order=st.sampled_from(["big", "little"]),
    scaling=st.sampled_from([{}, {"scale": 0.1}, {"scale": 10}, {"divisor": 1000}]),
    data=st.data(),
)
def test_decode_round_trips_pymodbus_encoding(
    data_type: str, word_order: str, scaling: dict[str, float], data: st.DataObject
) -> None:
    profile = one_register_profile(type=data_type, word_order=word_order, **scaling)
    reg = profile.register("power_w")
    if data_type in INT_RANGE:
        raw: float = data.draw(st.integers(*INT_RANGE[data_type]))
    else:
        raw = data.draw(st.floats(allow_nan=False, width=32 if data_type == "f32" else 64))
    words = ModbusClientMixin.convert_to_registers(raw, PYMODBUS_TYPE[data_type], word_order)
    expected = float(raw) * scaling.get("scale", 1.0) / scaling.get("divisor", 1.0)
    assert decode_value(reg, words) == expected
    # and our own encoder is the inverse of the decoder
    if math.isfinite(expected) and abs(raw) < 2**53:  # exactly representable as a float
        assert decode_value(reg, encode_value(reg, expected)) == pytest.approx(expected, rel=1e-12)


def test_word_order_little_swaps_registers_not_bytes() -> None:
    big = one_register_profile(type="u32", word_order="ABCD").register("power_w")
    little = one_register_profile(type="u32", word_order="CDAB").register("power_w")
    assert decode_value(big, [0x0001, 0x0002]) == 0x00010002
    assert decode_value(little, [0x0002, 0x0001]) == 0x00010002


def test_integer_counters_wrap_at_their_width() -> None:
    reg = parse_profile(
        {
            "name": "c",
            "manufacturer": "c",
            "model": "c",
            "phases": 1,
            "registers": {
                "energy_import_kwh": {
                    "function": 3,
                    "address": 0,
                    "type": "u32",
                    "unit": "kWh",
                    "divisor": 100,
                    "width_bits": 24,
                }
            },
        }
    ).register("energy_import_kwh")
    assert reg.rollover == pytest.approx(2**24 / 100)
    just_over = reg.rollover + 1.5  # type: ignore[operator]
    assert decode_value(reg, encode_value(reg, just_over)) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="cannot be held"):
        encode_value(reg, math.nan)


def sdm120_words(**values: float) -> list[list[int]]:
    """The words of every block of an SDM120 poll, f32 big-endian (NaN for unset ones)."""
    plan = plan_reads(shipped_profiles()["eastron_sdm120"])
    out = []
    for block in plan.blocks:
        words = [0] * block.count
        for reg in block.registers:
            value = values.get(reg.quantity, 1.0)
            high, low = struct.unpack(">HH", struct.pack(">f", value))
            words[reg.address - block.address : reg.end - block.address] = [high, low]
        out.append(words)
    return out


def test_decode_poll_gives_readings_in_canonical_units() -> None:
    plan = plan_reads(shipped_profiles()["eastron_sdm120"])
    readings = decode_poll(
        plan,
        sdm120_words(power_w=512.5, energy_import_kwh=1234.5),
        meter_id="m-1",
        ts_us=1_000_000,
        source="modbus:b/eastron_sdm120@1",
    )
    assert len(readings) == 11
    by_quantity = {r.quantity: r for r in readings}
    assert by_quantity["power_w"] == Reading(
        "m-1", 1_000_000, "power_w", 512.5, (), "modbus:b/eastron_sdm120@1"
    )
    assert by_quantity["energy_import_kwh"].value == 1234.5


@pytest.mark.parametrize(
    ("quantity", "value", "flag"),
    [
        ("power_w", math.nan, Quality.INVALID_VALUE),
        ("power_w", math.inf, Quality.INVALID_VALUE),
        ("energy_import_kwh", -math.inf, Quality.INVALID_VALUE),
        ("energy_import_kwh", -5.0, Quality.OUT_OF_RANGE),
        ("power_factor", 1.5, Quality.OUT_OF_RANGE),
        ("frequency_hz", -50.0, Quality.OUT_OF_RANGE),
        ("voltage_v", 2e6, Quality.OUT_OF_RANGE),
    ],
)
def test_bad_values_are_kept_and_flagged_never_zeroed(
    quantity: str, value: float, flag: Quality
) -> None:
    plan = plan_reads(shipped_profiles()["eastron_sdm120"])
    readings = decode_poll(
        plan, sdm120_words(**{quantity: value}), meter_id="m", ts_us=0, source="s"
    )
    bad = [r for r in readings if r.quantity == quantity]
    assert len(bad) == 1
    assert bad[0].quality == (flag.value,)
    assert bad[0].value != 0.0
    if math.isnan(value):
        assert math.isnan(bad[0].value)
    else:
        assert bad[0].value == value
    assert all(r.quality == () for r in readings if r.quantity != quantity)


def test_float32_rounding_at_a_limit_is_no_fault() -> None:
    pf = shipped_profiles()["eastron_sdm630"].register("power_factor")
    assert quality_of(pf, 1.0000001) == ()
    assert quality_of(pf, -1.0000001) == ()
    assert quality_of(pf, 1.001) == (Quality.OUT_OF_RANGE.value,)


def test_wrong_response_shapes_are_errors() -> None:
    plan = plan_reads(shipped_profiles()["eastron_sdm120"])
    words = sdm120_words()
    with pytest.raises(ResponseShapeError, match="has 7 blocks, got 6"):
        decode_poll(plan, words[:-1], meter_id="m", ts_us=0, source="s")
    with pytest.raises(ResponseShapeError, match="asked for 10 registers at 0x0046"):
        decode_block(plan.blocks[-1], words[-1][:-1])


def test_readings_are_plain_records_for_the_sink() -> None:
    plan = plan_reads(shipped_profiles()["eastron_sdm120"])
    readings = decode_poll(plan, sdm120_words(), meter_id="m", ts_us=7, source="s")
    assert all(isinstance(r, Reading) and r.ts_us == 7 and r.meter_id == "m" for r in readings)


def test_doctests() -> None:
    assert doctest.testmod(registers, raise_on_error=False).failed == 0
