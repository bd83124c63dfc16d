"""The tariff model: frozen objects every loader (native TOML, URDB JSON) produces and the bill
engine reads.

A :class:`Tariff` has one or more :class:`TariffVersion` s, each in force from its
``effective_from`` local date until the next one. A version holds the charges: energy prices per
time-of-use period and tier, the TOU calendar (seasons x day types x quarter hours), fixed,
minimum, demand, levy and tax charges and the export rule. Money is :class:`~decimal.Decimal`;
energy thresholds are kWh floats.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Final, Literal

TierReset = Literal["monthly", "billing_cycle", "annual"]
TierSplit = Literal["pro_rata", "chronological"]
DayType = Literal["weekday", "weekend", "holiday"]
Per = Literal["month", "day"]
ExportMode = Literal["none", "net_billing", "net_metering"]
Rounding = Literal["half_up", "half_even"]

DAY_TYPES: Final[tuple[DayType, ...]] = ("weekday", "weekend", "holiday")
SLOT_MINUTES: Final = 15
"""The TOU calendar's resolution: a day has 96 slots of 15 minutes [min]."""
SLOTS_PER_DAY: Final = 24 * 60 // SLOT_MINUTES
ALL_PERIODS: Final = "all"
"""The one period of a tariff without time of use."""

MINOR_UNITS: Final[Mapping[str, int]] = {
    "CNY": 2, "USD": 2, "EUR": 2, "GBP": 2, "HKD": 2, "TWD": 2, "AUD": 2, "CAD": 2, "CHF": 2,
    "INR": 2, "SGD": 2, "KRW": 0, "JPY": 0,
}  # fmt: skip
"""Decimals of the currencies meterlake knows; a tariff in another currency says ``decimals``."""


@dataclass(frozen=True)
class EnergyCharge:
    """Energy prices per TOU period and tier.

    ``prices[period]`` has one price per tier [currency/kWh]; ``tiers_kwh[period]`` the upper
    bounds of all tiers but the last [kWh] (so one fewer than prices). Periods may have their own
    bounds (URDB rates do); native tariffs share one list.
    """

    prices: Mapping[str, tuple[Decimal, ...]]
    tiers_kwh: Mapping[str, tuple[float, ...]]
    tier_reset: TierReset = "monthly"
    tier_year_start: tuple[int, int] = (1, 1)
    tier_split: TierSplit = "pro_rata"

    @property
    def tiered(self) -> bool:
        """Whether any period has more than one tier."""
        return any(len(p) > 1 for p in self.prices.values())

    @property
    def tier_count(self) -> int:
        """The most tiers any period has."""
        return max(len(p) for p in self.prices.values())


@dataclass(frozen=True)
class Season:
    """Months that share a TOU schedule; ``schedules[day_type]`` names the period of each of
    the day's 96 quarter hours (local clock time)."""

    name: str
    months: frozenset[int]
    schedules: Mapping[DayType, tuple[str, ...]]
    demand_schedules: Mapping[DayType, tuple[str, ...]] | None = None
    """Demand periods of each quarter hour where they differ from the energy periods (URDB rates
    have their own demand schedule); ``None``: demand charges name energy periods."""


@dataclass(frozen=True)
class FixedCharge:
    name: str
    amount: Decimal
    per: Per


@dataclass(frozen=True)
class MinimumCharge:
    amount: Decimal
    per: Per


@dataclass(frozen=True)
class DemandCharge:
    """A charge on the highest interval power [kW] of the bill period within ``periods`` (demand
    periods of the seasons, which are the energy periods unless a season has its own demand
    schedule; ``None``: all periods, a flat demand charge) in ``months`` (``None``: every month),
    priced in kW blocks: ``tiers_kw`` are the upper bounds of all blocks but the last."""

    name: str
    prices: tuple[Decimal, ...]
    tiers_kw: tuple[float, ...] = ()
    periods: frozenset[str] | None = None
    months: frozenset[int] | None = None


@dataclass(frozen=True)
class Levy:
    name: str
    per_kwh: Decimal


@dataclass(frozen=True)
class Tax:
    name: str
    percent: Decimal


@dataclass(frozen=True)
class ExportRule:
    """What exported energy earns: ``net_billing`` credits every interval's export at
    ``sell_prices[period]``; ``net_metering`` nets import and export per bill, carries surplus
    kWh on and pays what is left in ``true_up_month`` at ``true_up_price``."""

    mode: ExportMode = "none"
    sell_prices: Mapping[str, Decimal] = field(default_factory=dict)
    true_up_month: int | None = None
    true_up_price: Decimal = Decimal(0)


@dataclass(frozen=True)
class TariffVersion:
    """The charges in force from ``effective_from`` (local date; ``None``: always before the next
    version)."""

    effective_from: dt.date | None
    energy: EnergyCharge
    seasons: tuple[Season, ...]
    fixed: tuple[FixedCharge, ...] = ()
    minimum: MinimumCharge | None = None
    demand: tuple[DemandCharge, ...] = ()
    levies: tuple[Levy, ...] = ()
    tax: Tax | None = None
    export: ExportRule = field(default_factory=ExportRule)

    @property
    def periods(self) -> tuple[str, ...]:
        """The TOU period names, in the order the prices give them."""
        return tuple(self.energy.prices)

    def season_of(self, month: int) -> Season:
        """The season a local month [1-12] belongs to."""
        return next(s for s in self.seasons if month in s.months)


@dataclass(frozen=True)
class Tariff:
    """A tariff: who it is (``id``), its money (``currency``, ``decimals``, ``rounding``), its local
    time (``timezone``, ``holidays``) and its versions, oldest first. ``fingerprint`` changes
    whenever anything in the source changes; bills name it as their tariff version."""

    id: str
    name: str
    currency: str
    timezone: str
    source: str
    versions: tuple[TariffVersion, ...]
    fingerprint: str
    decimals: int = 2
    rounding: Rounding = "half_up"
    holidays: frozenset[dt.date] = frozenset()
    workdays: frozenset[dt.date] = frozenset()
    """Weekend dates that are working days (China's 调休上班): day type ``weekday``."""
    notes: str = ""

    def day_type(self, day: dt.date) -> DayType:
        """``holiday`` for a listed holiday, ``weekend`` on Saturday and Sunday unless listed
        as a working day, else ``weekday``."""
        if day in self.holidays:
            return "holiday"
        return "weekend" if day.weekday() >= 5 and day not in self.workdays else "weekday"

    def version_at(self, day: dt.date) -> int:
        """Index of the version in force on local date ``day``."""
        index = 0
        for i, version in enumerate(self.versions):
            if version.effective_from is None or version.effective_from <= day:
                index = i
        return index

    def period_at(self, moment: dt.datetime) -> str:
        """The TOU period of a local (naive) moment, under the version in force then."""
        version = self.versions[self.version_at(moment.date())]
        season = version.season_of(moment.month)
        slot = (moment.hour * 60 + moment.minute) // SLOT_MINUTES
        return season.schedules[self.day_type(moment.date())][slot]


def source_fingerprint(data: object) -> str:
    """A short, stable hash of a tariff's source data (dates and Decimals as text)."""
    text = json.dumps(data, sort_keys=True, ensure_ascii=False, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
