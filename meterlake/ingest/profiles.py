"""Device profiles: a meter's register map as data, checked into frozen objects at start-up.

A profile is a TOML file named after the profile (``eastron_sdm630.toml``). Profiles for common
meters ship in ``meterlake/ingest/profiles/``; users add their own in a directory of their choice
(the same format, no code). A wrong profile is refused when it is loaded, with one
:class:`~meterlake.config.errors.ConfigError` that names the file, the key and what is allowed.

The format::

    name = "eastron_sdm630"          # = the file name without .toml
    manufacturer = "Eastron"
    model = "SDM630"
    phases = 3                       # 1, 2 or 3
    max_block = 80                   # optional: most registers per read the meter takes (<= 125)
    single_reads = false             # optional: one read per quantity by default

    [defaults]                       # optional: keys every register below inherits
    function = 4                     # 3: holding registers, 4: input registers
    type = "f32"                     # u16 i16 u32 i32 u64 i64 f32 f64
    word_order = "big"               # big (ABCD: high word first) or little (CDAB)

    [registers.energy_import_kwh]    # a canonical quantity (meterlake.config.schemas)
    address = 0x0048                 # 0-based protocol address, see below
    unit = "kWh"                     # unit of the value after scale/divisor
    wraps_at = 99999.99              # optional (float registers): the counter restarts at 0 here
    # width_bits = 32                # integer energy registers: width of the counter [bit]
    # scale = 0.01 | divisor = 100   # optional, one of them: value = raw * scale or raw / divisor
    # min = 0, max = 1e6             # optional: plausible range, in ``unit``

Addresses are the 0-based *protocol* addresses, the number that goes on the wire. Manuals that
count registers from 1 with a table prefix (input register ``30001``, holding register
``40001``) mean address 0: subtract 30001 or 40001. Hexadecimal columns (``0x0048``, ``2006H``)
usually are protocol addresses already.

A value is converted once, here, to the canonical unit of its quantity (``kW`` -> ``W``,
``Wh`` -> ``kWh``), so ``power_w`` given in ``kW`` with ``unit = "kW"`` ends up in W.
"""

from __future__ import annotations

import functools
import itertools
import math
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal, cast, get_args

from meterlake.config.collect import MAX_BLOCK_REGISTERS
from meterlake.config.errors import ConfigError, PermanentError
from meterlake.config.schemas import QUANTITIES, canonical_unit, is_known_quantity
from meterlake.config.units import UNITS, conversion_factor

DataType = Literal["u16", "i16", "u32", "i32", "u64", "i64", "f32", "f64"]
WordOrder = Literal["big", "little"]
FunctionCode = Literal[3, 4]

DATA_TYPES: Final[tuple[DataType, ...]] = get_args(DataType)
WORDS: Final[dict[DataType, int]] = {
    "u16": 1,
    "i16": 1,
    "u32": 2,
    "i32": 2,
    "u64": 4,
    "i64": 4,
    "f32": 2,
    "f64": 4,
}
"""Registers (16-bit words) one value of each type takes."""
SHIPPED_DIR: Final = Path(__file__).with_name("profiles")
"""Where the profiles that come with meterlake live."""
_WORD_ORDERS: Final[dict[str, WordOrder]] = {
    "big": "big",
    "abcd": "big",
    "little": "little",
    "cdab": "little",
}
_NAME_RE: Final = re.compile(r"^[a-z0-9][a-z0-9_]{0,62}$")
_TOP_KEYS: Final = frozenset(
    {"name", "manufacturer", "model", "phases", "max_block", "single_reads", "defaults"}
    | {"registers"}
)
_DEFAULT_KEYS: Final = frozenset({"function", "type", "word_order"})
_REGISTER_KEYS: Final = _DEFAULT_KEYS | {
    "address",
    "unit",
    "scale",
    "divisor",
    "width_bits",
    "wraps_at",
    "min",
    "max",
}
_COUNTER_UNITS: Final = frozenset({"kWh", "kvarh"})
# What a quantity can physically be, in its canonical unit: outside, a value is kept and flagged
# ``out_of_range``. Wide on purpose (CT/PT meters report primary values); a profile may narrow it.
DEFAULT_LIMITS: Final[dict[str, tuple[float, float]]] = {
    "kWh": (0.0, math.inf),
    "kvarh": (0.0, math.inf),
    "W": (-1e9, 1e9),
    "var": (-1e9, 1e9),
    "VA": (0.0, 1e9),
    "V": (0.0, 1e6),
    "A": (-1e6, 1e6),
    "Hz": (0.0, 1000.0),
    "1": (-1.0, 1.0),
    "currency": (-math.inf, math.inf),
}


@dataclass(frozen=True)
class RegisterMap:
    """Where and how one quantity is read.

    ``value [canonical unit] = raw * multiplier / divisor``, where ``raw`` is the register
    content decoded as ``data_type`` in ``word_order``.
    """

    quantity: str
    """Canonical quantity name (its canonical unit is the suffix, e.g. ``power_w`` in W)."""
    function: FunctionCode
    address: int
    """0-based protocol address of the first register."""
    data_type: DataType
    word_order: WordOrder
    unit: str
    """Unit of ``raw * scale / divisor`` as the profile states it."""
    multiplier: float
    """``scale`` times the factor from ``unit`` to the canonical unit."""
    divisor: float
    minimum: float
    """Lowest plausible value [canonical unit]."""
    maximum: float
    """Highest plausible value [canonical unit]."""
    width_bits: int | None = None
    """Width of an integer energy counter [bit] (it wraps at ``2**width_bits`` raw units)."""
    wraps_at: float | None = None
    """Value at which a float energy counter restarts from 0 [``unit``], when known."""

    @property
    def words(self) -> int:
        """Registers the value takes."""
        return WORDS[self.data_type]

    @property
    def end(self) -> int:
        """One past the last register (``address + words``)."""
        return self.address + self.words

    @property
    def canonical_unit(self) -> str:
        """The unit of the decoded value, e.g. ``kWh``."""
        return _canonical_unit(self.quantity)

    @property
    def is_counter(self) -> bool:
        """True for cumulative energy registers."""
        return self.canonical_unit in _COUNTER_UNITS

    @property
    def rollover(self) -> float | None:
        """Where the counter wraps to 0 [canonical unit]; None when unknown or not a counter."""
        if self.width_bits is not None:
            return float(2**self.width_bits) * self.multiplier / self.divisor
        if self.wraps_at is not None:
            return self.wraps_at * conversion_factor(self.unit, self.canonical_unit)
        return None


@dataclass(frozen=True)
class DeviceProfile:
    """A meter model's register map: what to read, where, and how to decode it."""

    name: str
    manufacturer: str
    model: str
    phases: int
    registers: tuple[RegisterMap, ...]
    """Sorted by function code and address."""
    max_block: int = MAX_BLOCK_REGISTERS
    """Most registers the meter returns for one read."""
    single_reads: bool = False
    """Read one quantity per request unless the device settings say otherwise."""
    source: str = ""
    """The file the profile came from."""

    @property
    def quantities(self) -> tuple[str, ...]:
        """The quantities the profile maps, in register order."""
        return tuple(r.quantity for r in self.registers)

    def register(self, quantity: str) -> RegisterMap:
        """The register of ``quantity``; :class:`KeyError` if the profile has none."""
        for reg in self.registers:
            if reg.quantity == quantity:
                return reg
        raise KeyError(f"profile {self.name!r} maps no {quantity!r}")


class ProfileRegistry(Mapping[str, DeviceProfile]):
    """Profiles by name (shipped and user profiles), read-only."""

    __slots__ = ("_profiles",)

    def __init__(self, profiles: Mapping[str, DeviceProfile]) -> None:
        self._profiles: Mapping[str, DeviceProfile] = MappingProxyType(dict(profiles))

    def __getitem__(self, name: str) -> DeviceProfile:
        return self._profiles[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._profiles)

    def __len__(self) -> int:
        return len(self._profiles)

    def get_profile(self, name: str) -> DeviceProfile:
        """The profile ``name``, or a :class:`ConfigError` listing the known ones."""
        try:
            return self._profiles[name]
        except KeyError:
            known = ", ".join(sorted(self._profiles)) or "none"
            raise ConfigError(
                f"unknown device profile {name!r}; known profiles: {known} "
                "(add your own as <name>.toml in the profiles directory)"
            ) from None


def load_registry(user_dir: Path | None = None) -> ProfileRegistry:
    """The shipped profiles plus every ``*.toml`` profile in ``user_dir``.

    Raises
    ------
    ConfigError
        A profile is wrong, ``user_dir`` is not a directory, or a user profile reuses the
        name of a shipped one (give it a new name instead of shadowing it).
    """
    profiles = dict(shipped_profiles())
    if user_dir is not None:
        if not user_dir.is_dir():
            raise ConfigError(f"{user_dir}: profiles directory does not exist")
        for path in sorted(user_dir.glob("*.toml")):
            profile = load_profile(path)
            if profile.name in profiles:
                raise ConfigError(
                    f"{path}: profile {profile.name!r} is shipped with meterlake "
                    f"({profiles[profile.name].source}); give yours another name"
                )
            profiles[profile.name] = profile
    return ProfileRegistry(profiles)


@functools.cache
def shipped_profiles() -> Mapping[str, DeviceProfile]:
    """The profiles that come with meterlake, by name (loaded once)."""
    return MappingProxyType(
        {p.name: p for p in (load_profile(f) for f in sorted(SHIPPED_DIR.glob("*.toml")))}
    )


def load_profile(path: Path) -> DeviceProfile:
    """Read and check one profile file.

    Raises
    ------
    ConfigError
        The file is unreadable, not TOML, or the profile is wrong; the message names the file,
        every bad key and what would be valid.
    """
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read profile: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    profile = parse_profile(data, source=str(path))
    if profile.name != path.stem:
        raise ConfigError(
            f"{path}: name = {profile.name!r} must match the file name ({path.stem!r})"
        )
    return profile


def parse_profile(data: Mapping[str, Any], *, source: str = "<profile>") -> DeviceProfile:
    """Check a profile given as parsed TOML and build it (pure: no I/O).

    >>> f32 = {"function": 4, "type": "f32"}
    >>> p = parse_profile({
    ...     "name": "demo", "manufacturer": "X", "model": "Y", "phases": 1,
    ...     "registers": {
    ...         "energy_import_kwh": {**f32, "address": 0, "unit": "Wh"},
    ...         "power_w": {**f32, "address": 2, "unit": "kW"}}})
    >>> p.register("power_w").multiplier, p.register("energy_import_kwh").multiplier
    (1000.0, 0.001)

    Raises
    ------
    ConfigError
        With every problem found, each naming its key.
    """
    problems: list[str] = []
    _unknown_keys(data, _TOP_KEYS, "", problems)
    name = _text(data, "name", problems)
    if name is not None and not _NAME_RE.fullmatch(name):
        problems.append(f"name = {name!r}: use lower-case letters, digits and '_' (e.g. acme_x1)")
    manufacturer = _text(data, "manufacturer", problems)
    model = _text(data, "model", problems)
    phases = _integer(data, "phases", problems, low=1, high=3, required=True)
    max_block = _integer(
        data, "max_block", problems, low=1, high=MAX_BLOCK_REGISTERS, required=False
    )
    single_reads = data.get("single_reads", False)
    if not isinstance(single_reads, bool):
        problems.append(f"single_reads = {single_reads!r}: use true or false")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, Mapping):
        problems.append("[defaults] must be a table")
        defaults = {}
    _unknown_keys(defaults, _DEFAULT_KEYS, "[defaults] ", problems)
    tables = data.get("registers")
    if not isinstance(tables, Mapping) or not tables:
        problems.append("[registers] is missing: map at least energy_import_kwh")
        tables = {}
    registers: list[RegisterMap] = []
    for quantity, table in tables.items():
        where = f"[registers.{quantity}]"
        if not is_known_quantity(quantity):
            problems.append(
                f"{where}: {quantity!r} is not a canonical quantity; use one of "
                f"{', '.join(QUANTITIES)} or energy_import_t<N>_kwh / energy_export_t<N>_kwh"
            )
            continue
        if not isinstance(table, Mapping):
            problems.append(f"{where} must be a table with address, unit, ...")
            continue
        reg = _register(quantity, {**defaults, **table}, where, problems)
        if reg is not None:
            registers.append(reg)
    if tables and "energy_import_kwh" not in tables:
        problems.append("[registers.energy_import_kwh] is missing: every profile maps it")
    registers.sort(key=lambda r: (r.function, r.address))
    problems += _overlaps(registers)
    largest = max((r.words for r in registers), default=1)
    if max_block is not None and max_block < largest:
        problems.append(f"max_block = {max_block}: a register of this profile takes {largest}")
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise ConfigError(
            f"{source}: device profile refused, {len(problems)} problem{plural}:\n  "
            + "\n  ".join(problems)
        )
    return DeviceProfile(
        name=cast(str, name),
        manufacturer=cast(str, manufacturer),
        model=cast(str, model),
        phases=cast(int, phases),
        registers=tuple(registers),
        max_block=MAX_BLOCK_REGISTERS if max_block is None else max_block,
        single_reads=bool(single_reads),
        source=source,
    )


def _register(
    quantity: str, spec: Mapping[str, Any], where: str, problems: list[str]
) -> RegisterMap | None:
    before = len(problems)
    _unknown_keys(spec, _REGISTER_KEYS, f"{where} ", problems)
    function, data_type, word_order, address = _location(spec, where, problems)
    unit, factor = _unit(quantity, spec, where, problems)
    scale, divisor = _scaling(spec, where, problems)
    width_bits, wraps_at = _counter(quantity, data_type, spec, where, problems)
    low, high = _limits(quantity, spec, unit, factor, where, problems)
    if len(problems) > before:
        return None
    return RegisterMap(
        quantity=quantity,
        function=cast(FunctionCode, function),
        address=cast(int, address),
        data_type=cast(DataType, data_type),
        word_order=cast(WordOrder, word_order),
        unit=unit,
        multiplier=scale * factor,
        divisor=divisor,
        minimum=low,
        maximum=high,
        width_bits=width_bits,
        wraps_at=wraps_at,
    )


def _location(
    spec: Mapping[str, Any], where: str, problems: list[str]
) -> tuple[object, object, WordOrder | None, object]:
    """Function code, data type, word order and address, each checked."""
    function = spec.get("function")
    if function not in (3, 4) or isinstance(function, bool):
        problems.append(
            f"{where} function = {function!r}: use 3 (holding registers) or 4 (input registers)"
        )
    data_type = spec.get("type")
    if data_type not in DATA_TYPES:
        problems.append(f"{where} type = {data_type!r}: unknown type; use {', '.join(DATA_TYPES)}")
    order = spec.get("word_order", "big")
    word_order = _WORD_ORDERS.get(order.lower()) if isinstance(order, str) else None
    if word_order is None:
        problems.append(f"{where} word_order = {order!r}: use big (ABCD) or little (CDAB)")
    address = spec.get("address")
    if not isinstance(address, int) or isinstance(address, bool) or not 0 <= address <= 0xFFFF:
        problems.append(f"{where} address = {address!r}: use a protocol address 0 to 65535")
    elif data_type in DATA_TYPES and address + WORDS[cast(DataType, data_type)] > 0x10000:
        problems.append(f"{where} address = {address}: the value runs past register 65535")
    return function, data_type, word_order, address


def _unit(
    quantity: str, spec: Mapping[str, Any], where: str, problems: list[str]
) -> tuple[str, float]:
    """The stated unit and its factor to the quantity's canonical unit."""
    canonical = _canonical_unit(quantity)
    unit = spec.get("unit")
    if unit is None:
        problems.append(
            f"{where} unit is missing: give the unit of the scaled value, e.g. {canonical!r}"
        )
    elif not isinstance(unit, str) or unit not in UNITS:
        problems.append(f"{where} unit = {unit!r}: unknown unit; use one of {', '.join(UNITS)}")
    else:
        try:
            return unit, conversion_factor(unit, canonical)
        except PermanentError:
            problems.append(
                f"{where} unit = {unit!r} does not fit {quantity} (measured in {canonical})"
            )
    return str(unit), 1.0


def _counter(
    quantity: str, data_type: object, spec: Mapping[str, Any], where: str, problems: list[str]
) -> tuple[int | None, float | None]:
    """``width_bits`` (integer energy counters) and ``wraps_at`` (float ones), each checked."""
    counter = _canonical_unit(quantity) in _COUNTER_UNITS
    width_bits, wraps_at = spec.get("width_bits"), spec.get("wraps_at")
    is_float = data_type in ("f32", "f64")
    if counter and data_type in DATA_TYPES and not is_float:
        bits = 16 * WORDS[data_type]
        if not isinstance(width_bits, int) or isinstance(width_bits, bool):
            problems.append(
                f"{where} width_bits is missing: give the width of this integer energy counter "
                f"[bit], at most {bits} (it is where the counter rolls over)"
            )
        elif not 8 <= width_bits <= bits:
            problems.append(f"{where} width_bits = {width_bits}: use 8 to {bits} for {data_type}")
    elif width_bits is not None:
        problems.append(
            f"{where} width_bits: only integer energy registers have a counter width"
            + (" (a float counter may give wraps_at)" if is_float else "")
        )
    if wraps_at is not None and not (
        counter and is_float and _is_number(wraps_at) and math.isfinite(wraps_at) and wraps_at > 0
    ):
        problems.append(
            f"{where} wraps_at = {wraps_at!r}: only float energy registers take it, a positive "
            "value in the register's unit"
        )
        wraps_at = None
    return cast(int | None, width_bits), (None if wraps_at is None else float(wraps_at))


def _limits(
    quantity: str,
    spec: Mapping[str, Any],
    unit: str,
    factor: float,
    where: str,
    problems: list[str],
) -> tuple[float, float]:
    """The plausible range [canonical unit]: the quantity's default, narrowed by min/max."""
    low, high = DEFAULT_LIMITS.get(_canonical_unit(quantity), (-math.inf, math.inf))
    for key in ("min", "max"):
        bound = spec.get(key)
        if bound is None:
            continue
        if not _is_number(bound):
            problems.append(f"{where} {key} = {bound!r}: use a number in {unit}")
        elif key == "min":
            low = float(bound) * factor
        else:
            high = float(bound) * factor
    if low > high:
        problems.append(f"{where} min is above max")
    return low, high


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scaling(spec: Mapping[str, Any], where: str, problems: list[str]) -> tuple[float, float]:
    scale, divisor = spec.get("scale"), spec.get("divisor")
    if scale is not None and divisor is not None:
        problems.append(f"{where}: give scale or divisor, not both")
        return 1.0, 1.0
    for key, value in (("scale", scale), ("divisor", divisor)):
        if value is None:
            continue
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not math.isfinite(value)
            or value == 0
        ):
            problems.append(f"{where} {key} = {value!r}: use a finite, non-zero number")
            return 1.0, 1.0
    return (1.0 if scale is None else float(scale)), (1.0 if divisor is None else float(divisor))


def _overlaps(registers: list[RegisterMap]) -> list[str]:
    """Registers of one function code that share a word (``registers`` sorted by address)."""
    problems = []
    for before, after in itertools.pairwise(registers):
        if before.function == after.function and after.address < before.end:
            problems.append(
                f"[registers.{after.quantity}] address = {after.address:#06x} overlaps "
                f"[registers.{before.quantity}] ({before.address:#06x}-{before.end - 1:#06x}, "
                f"function {before.function})"
            )
    return problems


def _canonical_unit(quantity: str) -> str:
    # unknown quantities are reported by the caller; checking goes on as if it were energy
    return canonical_unit(quantity) if is_known_quantity(quantity) else "kWh"


def _unknown_keys(
    table: Mapping[str, Any], allowed: frozenset[str], where: str, problems: list[str]
) -> None:
    for key in table:
        if key not in allowed:
            problems.append(
                f"{where}{key}: unknown key; allowed here: {', '.join(sorted(allowed))}"
            )


def _text(data: Mapping[str, Any], key: str, problems: list[str]) -> str | None:
    value = data.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(
            f"{key} is missing: give it as text"
            if value is None
            else f"{key} = {value!r}: use text"
        )
        return None
    return value


def _integer(
    data: Mapping[str, Any],
    key: str,
    problems: list[str],
    *,
    low: int,
    high: int,
    required: bool,
) -> int | None:
    value = data.get(key)
    if value is None:
        if required:
            problems.append(f"{key} is missing: use {low} to {high}")
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        problems.append(f"{key} = {value!r}: use {low} to {high}")
        return None
    return value
