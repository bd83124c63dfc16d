"""OpenEI URDB rates (JSON) -> :class:`~meterlake.tariffs.model.Tariff`, with NREL SAM's semantics.

A URDB file holds one rate object as the OpenEI API (v7/v8, ``detail=full``) returns it, bare or
in the API's envelope ``{"items": [rate]}``; the tariff id is the file name without ``.json``.
As with native tariffs, every problem is collected with its place and reported in one
:class:`~meterlake.tariffs.native.TariffError` (``energyratestructure[1][0].max = 300: ...``).

The mapping follows SAM (ssc ``cmod_utilityrate5``, ``lib_utility_rate_equations``) and NREL's
own converter (PySAM ``UtilityRateTools.URDBv8_to_ElectricityRates``).

Energy
    URDB period ``i`` (0-based) is TOU period ``p<i>``. Every month is a season of its own
    (``jan`` .. ``dec``) whose weekday and weekend schedules are that month's rows of
    ``energyweekdayschedule``/``energyweekendschedule`` (hour ``h`` -> quarter hours
    ``4h .. 4h+3``); holidays follow the weekend schedule (SAM knows no holidays). A tier's
    price is ``rate + adj`` [$/kWh]; its ``max`` is its upper bound [kWh per calendar month]
    (``tier_reset = "monthly"``). A tier without ``max`` must be the last one; a finite ``max``
    on the last tier is read as unbounded, as URDB means it (SAM would leave the kWh above it
    unbilled). Tiers count the month's import of all periods together, so periods in force in
    the same month must have the same bounds: SAM refuses other rates and so does this loader.
    ``tier_split`` is ``pro_rata`` (SAM's monthly netting, ``ur_calc``) unless ``dgrules`` names
    a net-billing rule, under which SAM prices every hour as it comes (``ur_calc_timestep``):
    ``chronological``.
Demand
    ``flatdemandstructure`` period ``i`` applies in the months ``flatdemandmonths`` maps to it:
    one :class:`DemandCharge` per period used, on the month's highest interval power. TOU demand
    (``demandratestructure`` with ``demandweekdayschedule``/``demandweekendschedule``) gives the
    seasons demand schedules with periods ``d<i>`` and one charge per period on that period's own
    peak; flat and TOU charges add up (SAM ``get_demand_charge``). Price = ``rate + adj``
    [$/kW]; ``max`` makes kW blocks (same rules as energy tiers, and TOU demand periods of one
    month must share bounds, as SAM requires). A charge whose prices are all 0 is left out.
Fixed and minimum charges
    ``fixedchargefirstmeter`` in ``$/month`` is charged per month and in ``$/day`` per day of the
    bill -- meterlake bills the actual days (31 in January, 28 in February) where SAM charges
    365/12 days every month; ``$/year`` becomes a twelfth per month (as PySAM; quantized to 8
    decimals). ``mincharge`` in ``$/month`` or ``$/day`` is a minimum per month or day that
    includes the fixed charge; ``$/year`` is refused (SAM settles it in December against the
    year's bills; the model has no annual minimum).
Export (``dgrules``)
    ``Net Metering``: kWh netting with a carried credit, paid out in a true-up month (URDB has
    no field for it: ``"x_net_metering": {"true_up_month": 10, "true_up_sell_rate": 0.035}``;
    default December at $0); tier ``sell`` prices are not used (SAM's option 0 earns kWh, not
    dollars). ``Net Billing Instantaneous``, ``Net Billing Hourly`` and ``Buy All Sell All``:
    net billing, each interval's export credited at its period's ``sell`` (``adj`` is not
    added; the tiers of a period must agree on it) in the month it is exported. SAM nets each
    time step of its input and, for ``Net Billing Hourly``, applies a month's dollar credit to
    the next month's energy charge; meterlake credits the export the meter recorded, so hourly
    netting needs hourly intervals, and ``Buy All Sell All`` needs intervals whose import is all
    the load and whose export is all the generation. No ``dgrules``: export earns nothing
    (PySAM would assume net metering) and tiers split pro rata (SAM's path for that case).
Time and money
    ``currency = "USD"`` with 2 decimals. SAM has no DST: the schedules are read in local
    standard time of the zone in ``"x_timezone"`` (a meterlake key), else the ``timezone``
    argument, else ``"UTC"``; pick a zone without DST (e.g. ``Etc/GMT+8``) for SAM's exact hours.
    One version, in force for every date (SAM bills the rate for any year; ``startdate`` and
    ``enddate`` are not used). ``source`` is the rate's ``uri`` when it has one.

Refused, because they change the bill and the model cannot express them (each named in the
error): tier units ``kWh daily``, ``kWh/kW``, ``kWh/kW daily`` or others on a bounded tier
(meterlake tiers have fixed bounds [kWh] per period; SAM scales them by the month's days or
peak kW); demand units other than kW (``demandrateunit``, ``flatdemandunit``, a tier's ``unit``);
demand ratchets (``lookbackpercent``/``lookbackrange`` above 0); a fixed or minimum charge
without its units (PySAM would drop the fixed charge); non-zero
``fueladjustmentsmonthly`` (SAM ignores it: remove it, or fold it into ``adj``), coincident
demand (``coincidentratestructure``) and ``demandreactivepowercharge``; ``mincharge`` per year;
unknown ``dgrules``, unknown tier keys and unknown ``x_`` keys; a file with more than one rate.

Ignored, because they do not change a bill or SAM does not use them either: ``demandwindow``
(demand is the highest interval's average power at the data's own resolution, as in SAM);
``fixedchargeeaaddl`` (a meter is billed as the first meter); ``demandunits``,
``peakkw*``/``peakkwh*``, voltage and service fields (who may take the rate, not what it costs);
``energyattrs``/``demandattrs``/``fixedattrs`` (free text, kept in the tariff's ``notes``);
metadata (``label``, ``eiaid``, ``sector``, ``description``, ...) and any other key.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Final, Literal

from meterlake.config.datafile import read_document
from meterlake.config.timezones import is_timezone
from meterlake.tariffs.model import (
    MINOR_UNITS,
    SLOT_MINUTES,
    DayType,
    DemandCharge,
    EnergyCharge,
    ExportRule,
    FixedCharge,
    MinimumCharge,
    Per,
    Season,
    Tariff,
    TariffVersion,
    TierSplit,
    source_fingerprint,
)
from meterlake.tariffs.native import TARIFF_ID_PATTERN, TariffError, _decimal

CURRENCY: Final = "USD"
DEFAULT_TIMEZONE: Final = "UTC"
MONTH_NAMES: Final = (
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
)  # fmt: skip
"""Season names: URDB schedules have one row per month."""
DG_RULES: Final[Mapping[str, TierSplit]] = {
    "Net Metering": "pro_rata",
    "Net Billing Instantaneous": "chronological",
    "Net Billing Hourly": "chronological",
    "Buy All Sell All": "chronological",
}
"""``dgrules`` -> how SAM splits tiers over TOU periods (``ur_calc`` / ``ur_calc_timestep``)."""
EXTENSION_KEYS: Final = frozenset({"x_timezone", "x_net_metering"})
"""meterlake's own keys in a URDB rate (URDB has no time zone and no true-up terms)."""
FIXED_PER_YEAR_QUANTUM: Final = Decimal("0.00000001")

_ID_RE: Final = re.compile(TARIFF_ID_PATTERN)
_SLOTS_PER_HOUR: Final = 60 // SLOT_MINUTES
_ENERGY_TIER_KEYS: Final = frozenset({"max", "unit", "rate", "adj", "sell"})
_DEMAND_TIER_KEYS: Final = frozenset({"max", "unit", "rate", "adj"})
_SCALED_UNITS: Final = {
    "kwh daily": "a bound per day (SAM multiplies it by the days of the month)",
    "kwh/kw": "a bound per kW of the month's peak demand (SAM multiplies it by the peak)",
    "kwh/kw daily": "a bound per kW of peak demand and per day (SAM multiplies by both)",
}
_SAME_BOUNDS: Final = {
    "energyratestructure": (
        "kWh",
        "tiers count the month's total of all periods, so periods of one month need the same "
        "bounds (SAM refuses this rate too)",
    ),
    "demandratestructure": (
        "kW",
        "SAM requires the demand periods of one month to have the same blocks and refuses this "
        "rate",
    ),
}
"""Unit and reason of the one-set-of-bounds-per-month rule, by structure."""
_NOT_MODELLED: Final = (
    ("fueladjustmentsmonthly", "monthly fuel adjustments [$/kWh] are not modelled (SAM ignores "
     "them too): remove the field, or add the adjustment to the tiers' adj"),
    ("demandreactivepowercharge", "reactive power charges [$/kVAR] are not modelled: meterlake "
     "has no reactive energy"),
)  # fmt: skip

Kind = Literal["energy", "demand"]


@dataclass(frozen=True)
class _Period:
    """One URDB period: its tiers' upper bounds (all but the last), prices and sell prices."""

    bounds: tuple[float, ...]
    prices: tuple[Decimal, ...]
    sells: tuple[Decimal, ...]


def load_urdb(path: Path) -> Tariff:
    """Read one URDB rate (bare, or ``{"items": [rate]}``); its id is the file name without
    ``.json``.

    Raises
    ------
    TariffError
        The file cannot be read, holds no rate or several, or the rate is inconsistent or uses
        what meterlake cannot bill (every problem listed with its place).
    """
    document = read_document(path, "the URDB rate", TariffError)
    return parse_urdb(_one_rate(document, path), tariff_id=path.stem, source=str(path))


def _one_rate(document: Any, path: Path) -> Mapping[str, Any]:
    if not isinstance(document, dict):
        raise TariffError(f'{path}: a URDB rate is a JSON object (or {{"items": [rate]}})')
    if "items" not in document:
        return document
    items = document["items"]
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        raise TariffError(f"{path}: items: a list with one URDB rate object")
    if len(items) > 1:
        labels = ", ".join(str(i.get("label", f"#{n}")) for n, i in enumerate(items))
        raise TariffError(
            f"{path}: items holds {len(items)} rates ({labels}); a tariff file holds one rate: "
            "split the file into one file per rate, each named after its tariff id"
        )
    rate: dict[str, Any] = items[0]
    return rate


def parse_urdb(
    data: Mapping[str, Any], *, tariff_id: str, source: str, timezone: str | None = None
) -> Tariff:
    """Check one URDB rate object and freeze it into a :class:`Tariff` with SAM's semantics.

    Parameters
    ----------
    data
        The rate object (one element of the API's ``items``).
    tariff_id
        The tariff's id (a file's name without ``.json``).
    source
        Where the rate came from (a file path); names it in errors, and is the tariff's
        ``source`` unless the rate has a ``uri``.
    timezone
        The zone of the rate's hours when the rate has no ``x_timezone`` (default ``UTC``).

    Raises
    ------
    TariffError
        Listing every problem found, each with its place in the rate.

    Examples
    --------
    >>> rate = {"name": "Flat", "utility": "Example Co", "fixedchargefirstmeter": 8,
    ...         "fixedchargeunits": "$/month",
    ...         "energyratestructure": [[{"rate": 0.1, "adj": 0.02}]],
    ...         "energyweekdayschedule": [[0] * 24] * 12,
    ...         "energyweekendschedule": [[0] * 24] * 12}
    >>> tariff = parse_urdb(rate, tariff_id="example-flat", source="<doc>")
    >>> tariff.name, tariff.currency, tariff.timezone
    ('Flat (Example Co)', 'USD', 'UTC')
    >>> tariff.versions[0].energy.prices
    {'p0': (Decimal('0.12'),)}
    >>> tariff.versions[0].fixed
    (FixedCharge(name='fixed charge', amount=Decimal('8'), per='month'),)
    """
    problems: list[str] = []
    if not isinstance(data, Mapping):
        raise TariffError(f"{source}: a URDB rate is a JSON object")
    if not _ID_RE.match(tariff_id):
        problems.append(
            f"tariff id {tariff_id!r} (the file name): use lowercase letters, digits, '.', '_' "
            "and '-' (at most 80)"
        )
    for key in sorted(k for k in data if str(k).startswith("x_") and k not in EXTENSION_KEYS):
        problems.append(f"{key}: unknown meterlake key; known: {', '.join(sorted(EXTENSION_KEYS))}")
    zone = _timezone(data, timezone, problems)
    split, export = _export(data, problems)
    energy_periods = _structure(data, "energyratestructure", "energy", problems, required=True)
    weekday = _schedule(
        data, "energyweekdayschedule", energy_periods, "energyratestructure", problems
    )
    weekend = _schedule(
        data, "energyweekendschedule", energy_periods, "energyratestructure", problems
    )
    if energy_periods is not None and weekday is not None and weekend is not None:
        _same_bounds_per_month(energy_periods, weekday, weekend, "energyratestructure", problems)
    demand_schedules, tou_demand = _tou_demand(data, problems)
    demand = (*_flat_demand(data, problems), *tou_demand)
    fixed = _fixed(data, problems)
    minimum = _minimum(data, problems)
    _not_modelled(data, problems)
    if energy_periods is not None:
        export = _sell_prices(export, energy_periods, problems)
    if problems or energy_periods is None or weekday is None or weekend is None or split is None:
        plural = "s" if len(problems) > 1 else ""
        raise TariffError(f"{source}: {len(problems)} problem{plural}:\n  " + "\n  ".join(problems))
    names = [f"p{i}" for i in range(len(energy_periods))]
    version = TariffVersion(
        effective_from=None,
        energy=EnergyCharge(
            prices={n: p.prices for n, p in zip(names, energy_periods, strict=True)},
            tiers_kwh={n: p.bounds for n, p in zip(names, energy_periods, strict=True)},
            tier_reset="monthly",
            tier_split=split,
        ),
        seasons=tuple(
            Season(
                name=MONTH_NAMES[m],
                months=frozenset({m + 1}),
                schedules=_day_schedules(weekday[m], weekend[m], "p"),
                demand_schedules=(
                    _day_schedules(demand_schedules[0][m], demand_schedules[1][m], "d")
                    if demand_schedules is not None
                    else None
                ),
            )
            for m in range(12)
        ),
        fixed=fixed,
        minimum=minimum,
        demand=demand,
        export=export,
    )
    uri = data.get("uri")
    return Tariff(
        id=tariff_id,
        name=_name(data, tariff_id),
        currency=CURRENCY,
        timezone=zone,
        source=uri if isinstance(uri, str) and uri.strip() else source,
        versions=(version,),
        fingerprint=source_fingerprint(data),
        decimals=MINOR_UNITS[CURRENCY],
        notes=_notes(data),
    )


# --- rate structures and schedules -----------------------------------------------------------


def _structure(
    data: Mapping[str, Any], key: str, kind: Kind, problems: list[str], required: bool = False
) -> list[_Period] | None:
    """A URDB ``list[period] of list[tier]`` with prices ``rate + adj`` and bounds from ``max``."""
    if key not in data:
        if required:
            problems.append(f"{key}: required, a list of periods, each a list of tiers")
        return None
    value = data[key]
    if not isinstance(value, list) or not value:
        problems.append(f"{key}: a list of periods, each a non-empty list of tiers")
        return None
    periods: list[_Period] = []
    before = len(problems)
    for i, tiers in enumerate(value):
        if not isinstance(tiers, list) or not tiers:
            problems.append(f"{key}[{i}]: a non-empty list of tiers ({{rate, adj, max, ...}})")
            continue
        periods.append(_period(tiers, f"{key}[{i}]", kind, problems))
    return periods if len(problems) == before else None


def _period(tiers: list[Any], place: str, kind: Kind, problems: list[str]) -> _Period:
    bounds: list[float] = []
    prices: list[Decimal] = []
    sells: list[Decimal] = []
    allowed = _ENERGY_TIER_KEYS if kind == "energy" else _DEMAND_TIER_KEYS
    unit = "$/kWh" if kind == "energy" else "$/kW"
    for j, tier in enumerate(tiers):
        where = f"{place}[{j}]"
        if not isinstance(tier, dict):
            problems.append(f'{where}: a tier object such as {{"rate": 0.1, "max": 500}}')
            continue
        for key in sorted(set(tier) - allowed):
            problems.append(f"{where}.{key}: unknown tier key; known: {', '.join(sorted(allowed))}")
        last = j == len(tiers) - 1
        if "rate" not in tier:
            problems.append(f"{where}.rate: required, a number [{unit}]")
        rate = _decimal(tier.get("rate", 0), f"{where}.rate", problems)
        adj = _decimal(tier.get("adj", 0), f"{where}.adj", problems)
        if rate is not None and adj is not None:
            if rate + adj < 0:
                problems.append(f"{where}: rate + adj = {rate + adj}: a price cannot be negative")
            prices.append(rate + adj)
        if kind == "energy":
            sell = _decimal(tier.get("sell", 0), f"{where}.sell", problems, non_negative=True)
            sells.append(sell if sell is not None else Decimal(0))
        bounded = _bound(tier, where, last, bounds, kind, problems)
        if bounded and kind == "energy":
            given = tier.get("unit", "kWh")
            text = given.lower() if isinstance(given, str) else ""
            if text in _SCALED_UNITS:
                problems.append(
                    f"{where}.unit = {given!r}: {_SCALED_UNITS[text]} cannot be expressed: "
                    "meterlake tiers have fixed bounds [kWh per month] per period; give the "
                    "bound in 'kWh'"
                )
            elif text != "kwh":
                problems.append(f"{where}.unit = {given!r}: tier bounds are in 'kWh'")
        if kind == "demand" and "unit" in tier:
            given = tier["unit"]
            if not isinstance(given, str) or given.lower() != "kw":
                problems.append(
                    f"{where}.unit = {given!r}: demand is billed per kW only (meterlake "
                    "measures kW, not kVA or hp)"
                )
    return _Period(tuple(bounds), tuple(prices), tuple(sells))


def _bound(
    tier: Mapping[str, Any],
    where: str,
    last: bool,
    bounds: list[float],
    kind: Kind,
    problems: list[str],
) -> bool:
    """Append the tier's ``max`` to ``bounds`` unless it is the last tier; whether it did."""
    size = "kWh per month" if kind == "energy" else "kW"
    if "max" not in tier:
        if not last:
            problems.append(
                f"{where}.max: required on every tier but the last (its upper bound [{size}])"
            )
        return False
    value = tier["max"]
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"{where}.max = {value!r}: a number [{size}]")
        return False
    if value <= 0:
        problems.append(f"{where}.max = {value!r}: a tier bound must be above 0")
        return False
    if last:
        return False  # URDB's last tier is unbounded; a max there is read as no bound
    if bounds and value <= bounds[-1]:
        problems.append(
            f"{where}.max = {value!r}: tier bounds must increase (the tier before ends at "
            f"{bounds[-1]:g})"
        )
        return False
    bounds.append(float(value))
    return True


def _schedule(
    data: Mapping[str, Any],
    key: str,
    periods: Sequence[_Period] | None,
    structure: str,
    problems: list[str],
) -> list[list[int]] | None:
    """A 12 x 24 schedule of 0-based period indices of ``structure``."""
    value = data.get(key)
    if not (
        isinstance(value, list)
        and len(value) == 12
        and all(isinstance(row, list) and len(row) == 24 for row in value)
    ):
        problems.append(f"{key}: required, 12 rows (months) of 24 period indices (hours)")
        return None
    count = len(periods) if periods is not None else None
    bad = [
        (m, h, v)
        for m, row in enumerate(value)
        for h, v in enumerate(row)
        if isinstance(v, bool)
        or not isinstance(v, int)
        or v < 0
        or (count is not None and v >= count)
    ]
    if bad:
        m, h, v = bad[0]
        known = f"periods 0-{count - 1}" if count else "0-based period indices"
        more = f" (and {len(bad) - 1} more hours)" if len(bad) > 1 else ""
        problems.append(f"{key}[{m}][{h}] = {v!r}: not a period of {structure} ({known}){more}")
        return None
    return value


def _same_bounds_per_month(
    periods: Sequence[_Period],
    weekday: list[list[int]],
    weekend: list[list[int]],
    key: str,
    problems: list[str],
) -> None:
    """Periods in force in the same month must have the same tier bounds, as SAM requires
    (energy tiers count the month's total of all periods; TOU demand blocks are checked the same
    way)."""
    unit, why = _SAME_BOUNDS[key]
    clashes: dict[tuple[int, int], list[str]] = {}
    for m in range(12):
        used = sorted(set(weekday[m]) | set(weekend[m]))
        first = used[0]
        for other in used[1:]:
            if not _same(periods[first].bounds, periods[other].bounds):
                clashes.setdefault((first, other), []).append(MONTH_NAMES[m])
    for (first, other), months in clashes.items():
        a, b = periods[first].bounds, periods[other].bounds
        shared = f"period {first}, in force in the same months ({', '.join(months)})"
        if len(a) != len(b):
            problems.append(
                f"{key}[{other}]: {len(b) + 1} tier(s) but {shared}, has {len(a) + 1}; {why}"
            )
            continue
        j = next(j for j, (x, y) in enumerate(zip(a, b, strict=True)) if not _same((x,), (y,)))
        problems.append(
            f"{key}[{other}][{j}].max = {b[j]:g}: {shared}, ends tier {j} at {a[j]:g} {unit}; {why}"
        )


def _same(a: Sequence[float], b: Sequence[float]) -> bool:
    return len(a) == len(b) and all(
        math.isclose(x, y, rel_tol=1e-7) for x, y in zip(a, b, strict=True)
    )


def _day_schedules(
    weekday: Sequence[int], weekend: Sequence[int], prefix: str
) -> dict[DayType, tuple[str, ...]]:
    """One month's hourly rows -> period names per quarter hour; holidays as weekends."""

    def slots(row: Sequence[int]) -> tuple[str, ...]:
        return tuple(f"{prefix}{p}" for p in row for _ in range(_SLOTS_PER_HOUR))

    weekend_slots = slots(weekend)
    return {"weekday": slots(weekday), "weekend": weekend_slots, "holiday": weekend_slots}


# --- demand -------------------------------------------------------------------------------------


def _demand_units(data: Mapping[str, Any], keys: Sequence[str], problems: list[str]) -> None:
    for key in keys:
        given = data.get(key)
        if given is not None and (not isinstance(given, str) or given.lower() != "kw"):
            problems.append(
                f"{key} = {given!r}: demand is billed per kW of the highest interval only "
                "(meterlake measures kW; kVA, hp and daily demand cannot be billed)"
            )


def _flat_demand(data: Mapping[str, Any], problems: list[str]) -> list[DemandCharge]:
    """One charge per ``flatdemandstructure`` period, in the months ``flatdemandmonths`` gives."""
    has_structure, has_months = "flatdemandstructure" in data, "flatdemandmonths" in data
    if not has_structure and not has_months:
        return []
    _demand_units(data, ("flatdemandunit",), problems)
    if has_structure != has_months:
        given, missing = (
            ("flatdemandstructure", "flatdemandmonths")
            if has_structure
            else ("flatdemandmonths", "flatdemandstructure")
        )
        problems.append(f"{missing}: required with {given} (flat demand needs both)")
        return []
    periods = _structure(data, "flatdemandstructure", "demand", problems)
    months = data["flatdemandmonths"]
    if not (
        isinstance(months, list)
        and len(months) == 12
        and all(isinstance(i, int) and not isinstance(i, bool) for i in months)
    ):
        problems.append(
            "flatdemandmonths: 12 period indices of flatdemandstructure (one per month)"
        )
        return []
    if periods is None:
        return []
    bad = [(m, i) for m, i in enumerate(months) if not 0 <= i < len(periods)]
    for m, i in bad:
        problems.append(
            f"flatdemandmonths[{m}] = {i}: not a period of flatdemandstructure "
            f"(periods 0-{len(periods) - 1})"
        )
    if bad:
        return []
    charges = []
    for i, period in enumerate(periods):
        in_months = frozenset(m + 1 for m, p in enumerate(months) if p == i)
        if in_months and any(period.prices):
            name = "flat demand" if len(periods) == 1 else f"flat demand {i}"
            charges.append(
                DemandCharge(name, period.prices, period.bounds, periods=None, months=in_months)
            )
    return charges


def _tou_demand(
    data: Mapping[str, Any], problems: list[str]
) -> tuple[tuple[list[list[int]], list[list[int]]] | None, list[DemandCharge]]:
    """TOU demand: the weekday and weekend demand schedules and one charge per period."""
    keys = ("demandratestructure", "demandweekdayschedule", "demandweekendschedule")
    if not any(k in data for k in keys):
        return None, []
    _demand_units(data, ("demandrateunit",), problems)
    periods = _structure(data, "demandratestructure", "demand", problems, required=True)
    weekday = _schedule(data, keys[1], periods, keys[0], problems)
    weekend = _schedule(data, keys[2], periods, keys[0], problems)
    if periods is None or weekday is None or weekend is None:
        return None, []
    _same_bounds_per_month(periods, weekday, weekend, keys[0], problems)
    charges = [
        DemandCharge(f"TOU demand d{i}", p.prices, p.bounds, periods=frozenset({f"d{i}"}))
        for i, p in enumerate(periods)
        if any(p.prices)
    ]
    return (weekday, weekend), charges


# --- fixed and minimum charges, export --------------------------------------------------------


def _fixed(data: Mapping[str, Any], problems: list[str]) -> tuple[FixedCharge, ...]:
    if "fixedchargefirstmeter" not in data:
        return ()
    amount = _decimal(
        data["fixedchargefirstmeter"], "fixedchargefirstmeter", problems, non_negative=True
    )
    units = data.get("fixedchargeunits")
    per: Per = "month"
    if units == "$/day":
        per = "day"
    elif units == "$/year" and amount is not None:
        amount = (amount / 12).quantize(FIXED_PER_YEAR_QUANTUM, rounding=ROUND_HALF_UP)
    elif units not in ("$/month", "$/year"):
        problems.append(
            f"fixedchargeunits = {units!r}: one of '$/month', '$/day', '$/year' "
            "(required with fixedchargefirstmeter)"
        )
        return ()
    if amount is None or amount == 0:
        return ()
    return (FixedCharge("fixed charge", amount, per),)


def _minimum(data: Mapping[str, Any], problems: list[str]) -> MinimumCharge | None:
    if "mincharge" not in data:
        return None
    amount = _decimal(data["mincharge"], "mincharge", problems, non_negative=True)
    units = data.get("minchargeunits")
    per: Per
    if units == "$/month":
        per = "month"
    elif units == "$/day":
        per = "day"
    elif units == "$/year":
        if amount:
            problems.append(
                "minchargeunits = '$/year': an annual minimum cannot be expressed (SAM settles "
                "it in December against the year's bills; meterlake minimums are per month or "
                "per day): give mincharge per month"
            )
        return None
    else:
        problems.append(
            f"minchargeunits = {units!r}: one of '$/month', '$/day' (required with mincharge)"
        )
        return None
    if amount is None or amount == 0:
        return None
    return MinimumCharge(amount, per)


def _export(data: Mapping[str, Any], problems: list[str]) -> tuple[TierSplit | None, ExportRule]:
    """The tier split and the export rule ``dgrules`` stands for (sell prices come later)."""
    rules = data.get("dgrules")
    extra = data.get("x_net_metering")
    if rules is not None and rules not in DG_RULES:
        problems.append(f"dgrules = {rules!r}: one of {', '.join(map(repr, DG_RULES))}")
        return None, ExportRule()
    if rules != "Net Metering":
        if extra is not None:
            problems.append("x_net_metering: belongs to dgrules = 'Net Metering'")
        if rules is None:
            return "pro_rata", ExportRule()
        return DG_RULES[rules], ExportRule(mode="net_billing")
    month, price = 12, Decimal(0)
    if extra is not None:
        if not isinstance(extra, dict):
            problems.append(
                'x_net_metering: an object such as {"true_up_month": 10, '
                '"true_up_sell_rate": 0.035}'
            )
            extra = {}
        for key in sorted(set(extra) - {"true_up_month", "true_up_sell_rate"}):
            problems.append(
                f"x_net_metering.{key}: unknown key; known: true_up_month, true_up_sell_rate"
            )
        given = extra.get("true_up_month", 12)
        if isinstance(given, bool) or not isinstance(given, int) or not 1 <= given <= 12:
            problems.append(
                f"x_net_metering.true_up_month = {given!r}: the month (1-12) the remaining "
                "credit is paid"
            )
        else:
            month = given
        rate = _decimal(
            extra.get("true_up_sell_rate", 0),
            "x_net_metering.true_up_sell_rate",
            problems,
            non_negative=True,
        )
        price = rate if rate is not None else price
    return "pro_rata", ExportRule(mode="net_metering", true_up_month=month, true_up_price=price)


def _sell_prices(rule: ExportRule, periods: Sequence[_Period], problems: list[str]) -> ExportRule:
    """Net billing: each period's ``sell`` [$/kWh], which its tiers must agree on."""
    if rule.mode != "net_billing":
        return rule
    sells: dict[str, Decimal] = {}
    for i, period in enumerate(periods):
        distinct = sorted(set(period.sells))
        if len(distinct) > 1:
            problems.append(
                f"energyratestructure[{i}]: tiers sell at {', '.join(map(str, period.sells))} "
                "$/kWh; meterlake credits export at one price per period: give every tier of "
                "the period the same sell"
            )
        sells[f"p{i}"] = distinct[0] if distinct else Decimal(0)
    return ExportRule(mode="net_billing", sell_prices=sells)


# --- what is refused outright, and the small things ---------------------------------------------


def _not_modelled(data: Mapping[str, Any], problems: list[str]) -> None:
    for key, why in _NOT_MODELLED:
        if _has_money(data.get(key)):
            problems.append(f"{key}: {why}")
    if "coincidentratestructure" in data and _has_money(data["coincidentratestructure"]):
        problems.append(
            "coincidentratestructure: coincident peak demand charges are not modelled (they need "
            "the system's peak hours); SAM does not bill them either"
        )
    for key in ("lookbackpercent", "lookbackrange"):
        value = data.get(key)
        if _has_money(value):
            problems.append(
                f"{key} = {value!r}: demand ratchets (billing demand from earlier months' peaks) "
                "are not modelled"
            )


def _has_money(value: Any) -> bool:
    """Whether a URDB value holds any non-zero number (in lists and tier objects too)."""
    if isinstance(value, bool) or value is None:
        return False
    if isinstance(value, int | float):
        return value != 0
    if isinstance(value, Mapping):
        return any(_has_money(v) for k, v in value.items() if k not in ("max", "unit"))
    if isinstance(value, list):
        return any(_has_money(v) for v in value)
    return isinstance(value, str) and bool(value.strip())


def _timezone(data: Mapping[str, Any], given: str | None, problems: list[str]) -> str:
    zone = data.get("x_timezone", given)
    place = "x_timezone" if "x_timezone" in data else "timezone"
    if zone is None:
        return DEFAULT_TIMEZONE
    if not isinstance(zone, str) or not is_timezone(zone):
        problems.append(f"{place} = {zone!r}: not an IANA time zone (e.g. 'America/Denver')")
        return DEFAULT_TIMEZONE
    return zone


def _name(data: Mapping[str, Any], tariff_id: str) -> str:
    name, utility = data.get("name"), data.get("utility")
    name = name.strip() if isinstance(name, str) else ""
    utility = utility.strip() if isinstance(utility, str) else ""
    if name and utility:
        return f"{name} ({utility})"
    return name or utility or tariff_id


def _notes(data: Mapping[str, Any]) -> str:
    """The rate's label and free-text attributes, which meterlake does not interpret."""
    lines = []
    if isinstance(data.get("label"), str):
        lines.append(f"URDB label {data['label']}")
    for key in ("energyattrs", "demandattrs", "fixedattrs"):
        value = data.get(key)
        if value:
            lines.append(f"{key} (not interpreted): {json.dumps(value, ensure_ascii=False)}")
    start = data.get("startdate")
    if isinstance(start, int | float) and not isinstance(start, bool):
        day = dt.datetime.fromtimestamp(start, dt.UTC).date()
        lines.append(f"URDB startdate {day} (not used: the rate applies to every date)")
    return "\n".join(lines)
