"""Device profiles: every shipped profile against its maker's documentation, and wrong profiles
refused with a message that names the file and the key."""

from __future__ import annotations

import doctest
import math
import re
import struct
from pathlib import Path
from typing import Any

import pytest
from pymodbus.framer import FramerRTU
from pymodbus.pdu import DecodePDU
from pymodbus.pdu.register_message import ReadHoldingRegistersRequest, ReadInputRegistersRequest

from meterlake.config.errors import ConfigError
from meterlake.ingest import profiles
from meterlake.ingest.profiles import (
    SHIPPED_DIR,
    DeviceProfile,
    load_profile,
    load_registry,
    parse_profile,
    shipped_profiles,
)
from meterlake.ingest.registers import decode_value, plan_reads

SHIPPED = ("chint_ddsu666", "chint_dtsu666", "eastron_sdm120", "eastron_sdm630")

# The example exchange of Eastron's "SDM630 Modbus Protocol" (reproduced in B+G e-tech's
# SDM630Register.pdf): reading phase 1 line to neutral volts of meter 1 -- request
# 01 04 00 00 00 02 71 CB, response 01 04 04 43 66 33 34 1B 38, "IEEE 754 float" = 230.2 V.
# Tasmota's DDSU666 driver (xnrg_11_ddsu666.ino) records the very same response bytes from a
# DDSU666 ("01 04 04 43 66 33 34 1B 38 = 230.2 Volt").
VOLTAGE_REQUEST = bytes.fromhex("01 04 00 00 00 02 71 CB")
VOLTAGE_RESPONSE = bytes.fromhex("01 04 04 43 66 33 34 1B 38")


def f32_words(value: float) -> list[int]:
    """Two big-endian registers of an IEEE 754 float (independent of pymodbus, on purpose)."""
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


def frame_registers(frame: bytes) -> list[int]:
    """The registers of a recorded RTU response frame (pymodbus checks the CRC)."""
    used, pdu = FramerRTU(DecodePDU(False)).handleFrame(frame, 1, 0)
    assert used == len(frame) and pdu is not None, "the recorded frame does not parse"
    return list(pdu.registers)


def decoded(profile: str, quantity: str, words: list[int]) -> float:
    return decode_value(shipped_profiles()[profile].register(quantity), words)


# --- shipped profiles ----------------------------------------------------------------------


def test_every_shipped_file_loads_into_a_registry_by_name() -> None:
    files = sorted(p.stem for p in SHIPPED_DIR.glob("*.toml"))
    registry = load_registry()
    assert files == list(SHIPPED)
    assert sorted(registry) == list(SHIPPED)
    for name, profile in registry.items():
        assert profile.name == name
        assert Path(profile.source) == SHIPPED_DIR / f"{name}.toml"


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_profiles_map_the_billing_quantities(name: str) -> None:
    profile = shipped_profiles()[name]
    for quantity in ("energy_import_kwh", "energy_export_kwh", "power_w"):
        assert quantity in profile.quantities
    assert profile.register("energy_import_kwh").is_counter
    assert not profile.register("power_w").is_counter
    assert profile.phases == (3 if name in ("chint_dtsu666", "eastron_sdm630") else 1)
    # every shipped profile can be read in blocks the meter accepts
    plan = plan_reads(profile, gap=125)
    assert all(b.count <= profile.max_block for b in plan.blocks)


def test_sdm630_decodes_the_documented_exchange() -> None:
    profile = shipped_profiles()["eastron_sdm630"]
    volts = profile.register("voltage_l1_v")
    # the documented request is exactly what the profile makes us send for L1 voltage
    request = ReadInputRegistersRequest(address=volts.address, count=volts.words, dev_id=1)
    assert volts.function == 4
    assert FramerRTU(DecodePDU(False)).buildFrame(request) == VOLTAGE_REQUEST
    assert decode_value(volts, frame_registers(VOLTAGE_RESPONSE)) == pytest.approx(230.2, abs=1e-4)


def test_sdm630_register_table() -> None:
    # Eastron SDM630 Modbus Protocol: input registers (30001 = address 0), float, high word first
    table = {
        "voltage_l1_v": 0x0000,
        "voltage_l3_v": 0x0004,
        "current_l2_a": 0x0008,
        "power_l1_w": 0x000C,
        "power_w": 0x0034,
        "power_factor": 0x003E,
        "frequency_hz": 0x0046,
        "energy_import_kwh": 0x0048,
        "energy_export_kwh": 0x004A,
    }
    profile = shipped_profiles()["eastron_sdm630"]
    for quantity, address in table.items():
        reg = profile.register(quantity)
        assert (reg.function, reg.address, reg.data_type, reg.word_order) == (
            4,
            address,
            "f32",
            "big",
        )
    assert profile.max_block == 80  # "restricted to 40 parameters or less"
    assert decoded("eastron_sdm630", "energy_import_kwh", f32_words(12345.5)) == 12345.5
    assert decoded("eastron_sdm630", "power_w", f32_words(-1500.25)) == -1500.25


def test_sdm120_decodes_the_documented_values() -> None:
    # Eastron SDM120 Modbus protocol: the same exchange for "line to neutral volts" (30001),
    # import/export kWh at 30073/30075 (addresses 0x48/0x4A), active power at 30013 (0x0C)
    profile = shipped_profiles()["eastron_sdm120"]
    volts = profile.register("voltage_v")
    request = ReadInputRegistersRequest(address=volts.address, count=volts.words, dev_id=1)
    assert FramerRTU(DecodePDU(False)).buildFrame(request) == VOLTAGE_REQUEST
    assert decode_value(volts, frame_registers(VOLTAGE_RESPONSE)) == pytest.approx(230.2, abs=1e-4)
    assert profile.register("energy_import_kwh").address == 30073 - 30001
    assert profile.register("energy_export_kwh").address == 30075 - 30001
    assert profile.register("power_w").address == 30013 - 30001
    assert decoded("eastron_sdm120", "energy_export_kwh", f32_words(0.75)) == 0.75


def test_dtsu666_divides_the_documented_units() -> None:
    # CHINT DTSU666 user manual, ModBus address table (read command 03H, float): Ua at 2006H in
    # 0.1 V, Ia at 200CH in 0.001 A, Pt at 2012H in 0.1 W, PFt at 202AH in 0.001, Freq at
    # 2044H in 0.01 Hz, ImpEp at 101EH and ExpEp at 1028H in kWh
    profile = shipped_profiles()["chint_dtsu666"]
    assert {r.function for r in profile.registers} == {3}
    assert profile.register("voltage_l1_v").address == 0x2006
    assert profile.register("energy_import_kwh").address == 0x101E
    assert profile.register("energy_export_kwh").address == 0x1028
    assert decoded("chint_dtsu666", "voltage_l1_v", f32_words(2301.0)) == 230.1
    assert decoded("chint_dtsu666", "voltage_l3_v", f32_words(2288.0)) == 228.8
    assert decoded("chint_dtsu666", "current_l1_a", f32_words(5123.0)) == pytest.approx(5.123)
    assert decoded("chint_dtsu666", "power_w", f32_words(11820.0)) == 1182.0
    assert decoded("chint_dtsu666", "power_l2_w", f32_words(-4005.0)) == -400.5
    assert decoded("chint_dtsu666", "power_factor", f32_words(998.0)) == 0.998
    assert decoded("chint_dtsu666", "frequency_hz", f32_words(5001.0)) == 50.01
    assert decoded("chint_dtsu666", "energy_import_kwh", f32_words(1234.5)) == 1234.5


def test_ddsu666_decodes_tasmotas_recorded_values() -> None:
    # CHINT DDSU666 manual (03H, float, engineering units) and Tasmota's xnrg_11_ddsu666.ino,
    # which lists what it read from a DDSU666: 230.2 V, 1.260 A, -196.3 W (the register holds
    # kW), power factor 0.91, 50.0 Hz, import 478.492 kWh, export 6.216 kWh
    profile = shipped_profiles()["chint_ddsu666"]
    volts = profile.register("voltage_v")
    request = ReadHoldingRegistersRequest(address=volts.address, count=volts.words, dev_id=1)
    assert FramerRTU(DecodePDU(False)).buildFrame(request)[:6] == bytes.fromhex("01 03 20 00 00 02")
    assert decode_value(volts, frame_registers(VOLTAGE_RESPONSE)) == pytest.approx(230.2, abs=1e-4)
    assert decoded("chint_ddsu666", "current_a", f32_words(1.260)) == pytest.approx(1.26)
    assert decoded("chint_ddsu666", "power_w", f32_words(-0.1963)) == pytest.approx(-196.3)
    assert decoded("chint_ddsu666", "power_factor", f32_words(0.91)) == pytest.approx(0.91)
    assert decoded("chint_ddsu666", "frequency_hz", f32_words(50.0)) == 50.0
    assert decoded("chint_ddsu666", "energy_import_kwh", f32_words(478.492)) == pytest.approx(
        478.492, rel=1e-7
    )
    assert decoded("chint_ddsu666", "energy_export_kwh", f32_words(6.216)) == pytest.approx(
        6.216, rel=1e-7
    )
    assert profile.register("energy_import_kwh").address == 0x4000
    assert profile.register("energy_export_kwh").address == 0x400A


# --- user profiles -------------------------------------------------------------------------

GOOD = """
name = "acme_x1"
manufacturer = "ACME"
model = "X1"
phases = 1
max_block = 40

[defaults]
function = 3
word_order = "CDAB"

[registers.energy_import_kwh]
address = 100
type = "u32"
unit = "Wh"
scale = 10
width_bits = 32

[registers.energy_export_kwh]
address = 102
type = "u32"
unit = "kWh"
divisor = 100
width_bits = 24

[registers.power_w]
address = 0
type = "i16"
unit = "kW"
divisor = 1000

[registers.energy_import_t1_kwh]
address = 104
type = "f32"
word_order = "big"
unit = "kWh"
wraps_at = 99999.99
"""


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / f"{name}.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_user_profile_from_a_directory(tmp_path: Path) -> None:
    write(tmp_path, "acme_x1", GOOD)
    registry = load_registry(tmp_path)
    assert set(registry) == {*SHIPPED, "acme_x1"}
    profile = registry.get_profile("acme_x1")
    imp = profile.register("energy_import_kwh")
    # raw * 10 Wh -> kWh; the counter wraps at 2**32 raw steps
    assert (imp.function, imp.data_type, imp.word_order) == (3, "u32", "little")
    assert imp.multiplier == pytest.approx(0.01)
    assert imp.rollover == pytest.approx(2**32 * 0.01)
    assert profile.register("energy_export_kwh").rollover == pytest.approx(2**24 / 100)
    assert profile.register("energy_import_t1_kwh").rollover == 99999.99
    assert profile.register("power_w").multiplier == 1000.0  # kW -> W
    assert profile.register("power_w").rollover is None
    assert profile.quantities == (
        "power_w",
        "energy_import_kwh",
        "energy_export_kwh",
        "energy_import_t1_kwh",
    )
    assert profile.max_block == 40


def test_unknown_profile_names_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown device profile 'sdm630'.*eastron_sdm630"):
        load_registry().get_profile("sdm630")


def test_a_user_profile_may_not_shadow_a_shipped_one(tmp_path: Path) -> None:
    text = GOOD.replace('name = "acme_x1"', 'name = "eastron_sdm630"')
    write(tmp_path, "eastron_sdm630", text)
    with pytest.raises(ConfigError, match="is shipped with meterlake"):
        load_registry(tmp_path)


def test_a_missing_profiles_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="profiles directory does not exist"):
        load_registry(tmp_path / "nope")


BROKEN: dict[str, tuple[tuple[str, str], str]] = {
    "overlapping registers": (
        ("address = 102\n", "address = 101\n"),
        r"\[registers\.energy_export_kwh\] address = 0x0065 overlaps "
        r"\[registers\.energy_import_kwh\]",
    ),
    "unknown type": (('type = "i16"', 'type = "int16"'), r"\[registers\.power_w\] type = 'int16'"),
    "missing unit": (('unit = "kW"\n', ""), r"\[registers\.power_w\] unit is missing"),
    "unit that does not fit": (
        ('unit = "kW"', 'unit = "kWh"'),
        r"\[registers\.power_w\] unit = 'kWh' does not fit power_w \(measured in W\)",
    ),
    "unknown unit": (('unit = "kW"', 'unit = "PS"'), r"unit = 'PS': unknown unit"),
    "unknown quantity": (
        ("[registers.power_w]", "[registers.power_kw]"),
        r"\[registers\.power_kw\]: 'power_kw' is not a canonical quantity",
    ),
    "block above 125": (("max_block = 40", "max_block = 126"), r"max_block = 126: use 1 to 125"),
    "function code": (("function = 3", "function = 6"), r"function = 6: use 3 .* or 4"),
    "word order": (('word_order = "CDAB"', 'word_order = "BADC"'), r"word_order = 'BADC'"),
    "counter without width": (("width_bits = 24\n", ""), r"width_bits is missing"),
    "width wider than the type": (("width_bits = 24", "width_bits = 48"), r"width_bits = 48"),
    "scale and divisor": (("divisor = 1000", "divisor = 1000\nscale = 2"), r"not both"),
    "zero divisor": (("divisor = 100\n", "divisor = 0\n"), r"divisor = 0: use a finite, non-zero"),
    "unknown key": (("phases = 1", "phases = 1\nendianness = 1"), r"endianness: unknown key"),
    "name of another file": (('name = "acme_x1"', 'name = "acme_x2"'), r"must match the file"),
    "address out of range": (("address = 0\n", "address = 70000\n"), r"address = 70000"),
    "wraps_at on an integer": (("width_bits = 24", "wraps_at = 5.0"), r"wraps_at = 5\.0"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_a_wrong_profile_is_refused_naming_file_and_key(tmp_path: Path, case: str) -> None:
    (old, new), message = BROKEN[case]
    assert old in GOOD, f"test case {case!r} does not apply"
    path = write(tmp_path, "acme_x1", GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_profile(path)
    text = str(info.value)
    assert text.startswith(str(path)), text
    assert re.search(message, text), text
    with pytest.raises(ConfigError):  # the registry refuses it too, at start-up
        load_registry(tmp_path)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    text = GOOD.replace('type = "i16"', 'type = "int16"').replace('unit = "Wh"\n', "")
    with pytest.raises(ConfigError, match="2 problems") as info:
        load_profile(write(tmp_path, "acme_x1", text))
    assert "power_w] type" in str(info.value) and "energy_import_kwh] unit" in str(info.value)


def test_a_profile_must_map_import_energy() -> None:
    data: dict[str, Any] = {
        "name": "p",
        "manufacturer": "m",
        "model": "x",
        "phases": 1,
        "registers": {
            "power_w": {"function": 4, "address": 0, "type": "f32", "unit": "W"},
        },
    }
    with pytest.raises(ConfigError, match="energy_import_kwh] is missing"):
        parse_profile(data, source="inline")


def test_not_toml_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_profile(write(tmp_path, "bad", "name = "))


def test_profiles_are_frozen() -> None:
    profile: DeviceProfile = shipped_profiles()["eastron_sdm120"]
    with pytest.raises(AttributeError):
        profile.name = "x"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        profile.registers[0].address = 1  # type: ignore[misc]


def test_default_limits_are_physical() -> None:
    reg = shipped_profiles()["eastron_sdm630"].register("energy_import_kwh")
    assert reg.minimum == 0.0 and math.isinf(reg.maximum)
    assert shipped_profiles()["eastron_sdm630"].register("power_factor").maximum == 1.0


def test_doctests() -> None:
    assert doctest.testmod(profiles, raise_on_error=False).failed == 0
