"""URDB rates -> the tariff model (SAM's semantics), each refusal with its message, and bills of
the hand-made examples of NREL SAM's rules checked against hand-computed / PySAM monthly numbers.

The examples are those of the SAM research notes (section 8); "PySAM" is nrel-pysam 7.1.1.post1
(ssc 306) through NREL's converter ``URDBv8_to_ElectricityRates``. SAM bills a 365-day year that
starts on a Monday, in local standard time: 2018 in UTC is such a year.
"""

from __future__ import annotations

import copy
import datetime as dt
import json
from collections.abc import Callable, Sequence
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from meterlake.tariffs.engine import BillFrames, compute_bills
from meterlake.tariffs.model import (
    DemandCharge,
    ExportRule,
    FixedCharge,
    MinimumCharge,
    Per,
    Tariff,
    source_fingerprint,
)
from meterlake.tariffs.native import TariffError
from meterlake.tariffs.registry import load_tariff_file
from meterlake.tariffs.urdb import load_urdb, parse_urdb

YEAR_START = dt.datetime(2018, 1, 1, tzinfo=dt.UTC)
"""1 January 2018 is a Monday and 2018 has 365 days: SAM's year, in UTC (no DST)."""
MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
CENT = Decimal("0.01")

HourRule = Callable[[int, int], int]


# --- building rates, loads and bills -------------------------------------------------------------


def rows(by_hour: HourRule) -> list[list[int]]:
    """A URDB 12 x 24 schedule: ``by_hour(month0, hour) -> 0-based period``."""
    return [[by_hour(m, h) for h in range(24)] for m in range(12)]


def evening(month: int, hour: int) -> int:
    """Period 1 from 16:00 to 20:59 every day (example a)."""
    return 1 if 16 <= hour <= 20 else 0


def weekday_afternoon(month: int, hour: int) -> int:
    """Demand period 1 from 12:00 to 17:59 (example b, weekdays)."""
    return 1 if 12 <= hour <= 17 else 0


def midday(month: int, hour: int) -> int:
    """Period 1 from 10:00 to 13:59 (example c2)."""
    return 1 if 10 <= hour <= 13 else 0


def all_zero(month: int, hour: int) -> int:
    return 0


def flat_rate(**fields: Any) -> dict[str, Any]:
    """A one-period rate at 0.10 $/kWh, with ``fields`` added or replaced."""
    rate: dict[str, Any] = {
        "label": "0123456789abcdef01234567",
        "name": "Test rate",
        "utility": "Test Utility Co",
        "energyratestructure": [[{"rate": 0.1, "unit": "kWh"}]],
        "energyweekdayschedule": rows(all_zero),
        "energyweekendschedule": rows(all_zero),
    }
    rate.update(fields)
    return rate


def example_a() -> dict[str, Any]:
    """(a) 2 TOU periods x 2 monthly tiers with adj, fixed $10/month, net metering."""
    return flat_rate(
        name="Example A: 2 TOU periods x 2 monthly tiers with adj",
        energyratestructure=[
            [
                {"max": 500, "unit": "kWh", "rate": 0.1, "adj": 0.01},
                {"unit": "kWh", "rate": 0.15, "adj": 0.01},
            ],
            [
                {"max": 500, "unit": "kWh", "rate": 0.2, "adj": 0.02},
                {"unit": "kWh", "rate": 0.3, "adj": 0.02},
            ],
        ],
        energyweekdayschedule=rows(evening),
        energyweekendschedule=rows(evening),
        fixedchargefirstmeter=10.0,
        fixedchargeunits="$/month",
        dgrules="Net Metering",
    )


def example_b() -> dict[str, Any]:
    """(b) flat + TOU demand with blocks and flatdemandmonths, fixed $1/day, minimum $50/month."""
    return flat_rate(
        name="Example B: flat + TOU demand with tiers, fixed $/day, min $/month",
        energyratestructure=[[{"unit": "kWh", "rate": 0.05}]],
        flatdemandunit="kW",
        flatdemandstructure=[[{"max": 50, "rate": 5.0}, {"rate": 4.0}], [{"rate": 7.0}]],
        flatdemandmonths=[0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0],
        demandrateunit="kW",
        demandratestructure=[
            [{"max": 20, "rate": 2.0}, {"rate": 2.0}],
            [{"max": 20, "rate": 10.0, "adj": 1.0}, {"rate": 8.0}],
        ],
        demandweekdayschedule=rows(weekday_afternoon),
        demandweekendschedule=rows(all_zero),
        fixedchargefirstmeter=1.0,
        fixedchargeunits="$/day",
        mincharge=50.0,
        minchargeunits="$/month",
        dgrules="Net Metering",
    )


def example_c(**fields: Any) -> dict[str, Any]:
    """(c) net metering on a flat 0.12 $/kWh, fixed $5/month."""
    rate = flat_rate(
        name="Example C: net metering, kWh credit carried, true-up",
        energyratestructure=[[{"unit": "kWh", "rate": 0.12}]],
        fixedchargefirstmeter=5.0,
        fixedchargeunits="$/month",
        dgrules="Net Metering",
    )
    rate.update(fields)
    return rate


def example_c2(**fields: Any) -> dict[str, Any]:
    """(c2) two TOU periods with sell prices (midday 10:00-13:59 is period 1)."""
    rate = flat_rate(
        energyratestructure=[[{"rate": 0.1, "sell": 0.04}], [{"rate": 0.2, "sell": 0.05}]],
        energyweekdayschedule=rows(midday),
        energyweekendschedule=rows(midday),
        dgrules="Net Metering",
    )
    rate.update(fields)
    return rate


def parse(data: dict[str, Any], **kwargs: Any) -> Tariff:
    return parse_urdb(
        data, tariff_id=kwargs.pop("tariff_id", "test-rate"), source="t.json", **kwargs
    )


def problems_of(data: dict[str, Any]) -> str:
    with pytest.raises(TariffError) as caught:
        parse(data)
    return str(caught.value)


def sam_year(kw: Callable[[int, int, int], float]) -> list[float]:
    """8760 hourly values ``kw(month0, day0, hour)`` of SAM's (and 2018's) year."""
    return [
        kw(m, d, h) for m, days in enumerate(MONTH_DAYS) for d in range(days) for h in range(24)
    ]


def intervals(
    imports: Sequence[float],
    exports: Sequence[float] | None = None,
    *,
    minutes: int = 60,
    meter_id: str = "m1",
) -> pl.LazyFrame:
    """Consecutive intervals from 2018-01-01 00:00 UTC (all ``actual``)."""
    n = len(imports)
    start = pl.datetime_range(
        YEAR_START,
        YEAR_START + dt.timedelta(minutes=minutes * (n - 1)),
        interval=f"{minutes}m",
        time_unit="us",
        time_zone="UTC",
        eager=True,
    )
    return pl.DataFrame(
        {
            "meter_id": [meter_id] * n,
            "interval_start": start,
            "interval_minutes": pl.Series([minutes] * n, dtype=pl.Int16),
            "energy_import_kwh": pl.Series(imports, dtype=pl.Float64),
            "energy_export_kwh": pl.Series(exports or [0.0] * n, dtype=pl.Float64),
            "status": ["actual"] * n,
        }
    ).lazy()


def bill(tariff: Tariff, frame: pl.LazyFrame, periods: Sequence[str]) -> BillFrames:
    meters = pl.DataFrame({"meter_id": ["m1"], "tariff_id": [tariff.id]})
    return compute_bills(frame, meters, {tariff.id: tariff}, periods)


def amounts(frames: BillFrames, period: str) -> dict[str, Decimal]:
    """A bill's line amounts by code (its charges; carry lines hold no money)."""
    lines = frames.lines.filter(pl.col("period") == period, pl.col("kind") == "charge")
    return dict(zip(lines["code"].to_list(), lines["amount"].to_list(), strict=True))


def total(frames: BillFrames, period: str, prefix: str) -> Decimal:
    """The sum of a bill's lines whose code starts with ``prefix``."""
    return sum(
        (a for code, a in amounts(frames, period).items() if code.startswith(prefix)), Decimal(0)
    )


def unrounded(frames: BillFrames, period: str, prefix: str) -> Decimal:
    """Sum of quantity x rate of the lines whose code starts with ``prefix``, before rounding
    (SAM rounds nothing; meterlake rounds each line)."""
    lines = frames.lines.filter(pl.col("period") == period, pl.col("code").str.starts_with(prefix))
    return sum(
        (
            Decimal(str(q)) * r
            for q, r in zip(lines["quantity"].to_list(), lines["rate"].to_list(), strict=True)
        ),
        Decimal(0),
    )


def cents(value: float | Decimal) -> Decimal:
    return Decimal(str(value)).quantize(CENT, rounding=ROUND_HALF_UP)


# --- the mapping ---------------------------------------------------------------------------------


def test_energy_periods_tiers_and_prices_follow_sam() -> None:
    energy = parse(example_a()).versions[0].energy
    assert energy.prices == {
        "p0": (Decimal("0.11"), Decimal("0.16")),
        "p1": (Decimal("0.22"), Decimal("0.32")),
    }
    assert energy.tiers_kwh == {"p0": (500.0,), "p1": (500.0,)}
    assert energy.tier_reset == "monthly"
    assert energy.tier_split == "pro_rata"


def test_every_month_is_a_season_with_the_hours_of_its_schedule_rows() -> None:
    data = example_a()
    data["energyweekendschedule"] = rows(lambda m, h: 1 if m == 6 else 0)
    version = parse(data).versions[0]
    assert [s.name for s in version.seasons] == [
        "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
    ]  # fmt: skip
    assert [sorted(s.months) for s in version.seasons] == [[m] for m in range(1, 13)]
    january = version.season_of(1)
    weekday = january.schedules["weekday"]
    assert len(weekday) == 96
    assert weekday[63] == "p0" and set(weekday[64:84]) == {"p1"} and weekday[84] == "p0"
    assert set(january.schedules["weekend"]) == {"p0"}
    assert set(version.season_of(7).schedules["weekend"]) == {"p1"}
    for season in version.seasons:  # SAM has no holidays: holidays are weekends
        assert season.schedules["holiday"] == season.schedules["weekend"]
        assert season.demand_schedules is None


def test_a_missing_max_or_a_finite_max_on_the_last_tier_means_unbounded() -> None:
    data = flat_rate(energyratestructure=[[{"max": 300, "rate": 0.1}, {"max": 1000, "rate": 0.2}]])
    energy = parse(data).versions[0].energy
    assert energy.tiers_kwh == {"p0": (300.0,)}
    assert energy.prices == {"p0": (Decimal("0.1"), Decimal("0.2"))}


def test_periods_of_different_months_may_have_their_own_bounds() -> None:
    data = example_a()
    data["energyratestructure"].append(
        [
            {"max": 300, "rate": 0.05},
            {"rate": 0.07},
        ]
    )
    for key in ("energyweekdayschedule", "energyweekendschedule"):
        data[key] = rows(lambda m, h: 2 if 5 <= m <= 8 else evening(m, h))
    energy = parse(data).versions[0].energy
    assert energy.tiers_kwh == {"p0": (500.0,), "p1": (500.0,), "p2": (300.0,)}


def test_periods_of_different_months_may_have_different_tier_counts() -> None:
    data = flat_rate(
        energyratestructure=[[{"rate": 0.1}], [{"max": 300, "rate": 0.05}, {"rate": 0.07}]],
        energyweekdayschedule=rows(lambda m, h: 1 if 5 <= m <= 8 else 0),
        energyweekendschedule=rows(lambda m, h: 1 if 5 <= m <= 8 else 0),
    )
    assert parse(data).versions[0].energy.tiers_kwh == {"p0": (), "p1": (300.0,)}


@pytest.mark.parametrize(
    ("rules", "split", "mode"),
    [
        ("Net Metering", "pro_rata", "net_metering"),
        ("Net Billing Instantaneous", "chronological", "net_billing"),
        ("Net Billing Hourly", "chronological", "net_billing"),
        ("Buy All Sell All", "chronological", "net_billing"),
        (None, "pro_rata", "none"),
    ],
)
def test_dgrules_choose_the_tier_split_and_the_export_rule(
    rules: str | None, split: str, mode: str
) -> None:
    data = example_a()
    data.pop("dgrules")
    if rules is not None:
        data["dgrules"] = rules
    version = parse(data).versions[0]
    assert version.energy.tier_split == split
    assert version.export.mode == mode


def test_net_metering_true_up_defaults_to_december_at_nothing() -> None:
    assert parse(example_c()).versions[0].export == ExportRule(
        mode="net_metering", true_up_month=12, true_up_price=Decimal(0)
    )
    terms = {"true_up_month": 10, "true_up_sell_rate": 0.035}
    assert parse(example_c(x_net_metering=terms)).versions[0].export == ExportRule(
        mode="net_metering", true_up_month=10, true_up_price=Decimal("0.035")
    )


def test_net_billing_sells_at_each_periods_sell_without_adj() -> None:
    data = example_c2(dgrules="Net Billing Instantaneous")
    data["energyratestructure"][1] = [
        {"max": 100, "rate": 0.2, "adj": 0.01, "sell": 0.05},
        {"rate": 0.3, "adj": 0.01, "sell": 0.05},
    ]
    data["energyratestructure"][0] = [{"max": 100, "rate": 0.1}, {"rate": 0.1}]
    version = parse(data).versions[0]
    assert version.export == ExportRule(
        mode="net_billing", sell_prices={"p0": Decimal(0), "p1": Decimal("0.05")}
    )
    assert version.energy.prices["p1"] == (Decimal("0.21"), Decimal("0.31"))


def test_net_metering_ignores_sell_prices() -> None:
    assert parse(example_c2()).versions[0].export.sell_prices == {}


def test_flat_demand_is_one_charge_per_structure_period_in_its_months() -> None:
    demand = parse(example_b()).versions[0].demand
    assert demand[:2] == (
        DemandCharge(
            "flat demand 0",
            (Decimal("5.0"), Decimal("4.0")),
            (50.0,),
            periods=None,
            months=frozenset({1, 2, 3, 4, 5, 10, 11, 12}),
        ),
        DemandCharge(
            "flat demand 1", (Decimal("7.0"),), (), periods=None, months=frozenset({6, 7, 8, 9})
        ),
    )


def test_tou_demand_has_its_own_schedule_and_a_charge_per_period() -> None:
    version = parse(example_b()).versions[0]
    assert version.demand[2:] == (
        DemandCharge("TOU demand d0", (Decimal("2.0"), Decimal("2.0")), (20.0,), frozenset({"d0"})),
        DemandCharge(
            "TOU demand d1", (Decimal("11.0"), Decimal("8.0")), (20.0,), frozenset({"d1"})
        ),
    )
    for season in version.seasons:
        assert season.demand_schedules is not None
        weekday = season.demand_schedules["weekday"]
        assert set(weekday[48:72]) == {"d1"} and set(weekday[:48] + weekday[72:]) == {"d0"}
        assert set(season.demand_schedules["weekend"]) == {"d0"}
        assert season.demand_schedules["holiday"] == season.demand_schedules["weekend"]
        assert set(season.schedules["weekday"]) == {"p0"}


def test_charges_that_are_all_zero_are_left_out() -> None:
    data = example_b()
    data["demandratestructure"][0] = [{"max": 20, "rate": 0}, {"rate": 0}]
    data["fixedchargefirstmeter"] = 0
    data["mincharge"] = 0
    version = parse(data).versions[0]
    assert [c.name for c in version.demand] == ["flat demand 0", "flat demand 1", "TOU demand d1"]
    assert version.fixed == ()
    assert version.minimum is None


@pytest.mark.parametrize(
    ("units", "expected"),
    [
        ("$/month", FixedCharge("fixed charge", Decimal("9.5"), "month")),
        ("$/day", FixedCharge("fixed charge", Decimal("9.5"), "day")),
        ("$/year", FixedCharge("fixed charge", Decimal("0.79166667"), "month")),
    ],
)
def test_fixed_charge_units(units: str, expected: FixedCharge) -> None:
    data = flat_rate(fixedchargefirstmeter=9.5, fixedchargeunits=units)
    assert parse(data).versions[0].fixed == (expected,)


@pytest.mark.parametrize(("units", "per"), [("$/month", "month"), ("$/day", "day")])
def test_minimum_charge_units(units: str, per: Per) -> None:
    data = flat_rate(mincharge=2.5, minchargeunits=units)
    assert parse(data).versions[0].minimum == MinimumCharge(Decimal("2.5"), per)


def test_tariff_identity_money_and_time() -> None:
    data = example_a()
    tariff = parse(data, tariff_id="example-a")
    assert tariff.id == "example-a"
    assert tariff.name == "Example A: 2 TOU periods x 2 monthly tiers with adj (Test Utility Co)"
    assert (tariff.currency, tariff.decimals, tariff.rounding) == ("USD", 2, "half_up")
    assert tariff.timezone == "UTC"
    assert tariff.source == "t.json"
    assert tariff.fingerprint == source_fingerprint(data)
    assert len(tariff.versions) == 1 and tariff.versions[0].effective_from is None
    assert tariff.holidays == frozenset()
    assert "URDB label 0123456789abcdef01234567" in tariff.notes


def test_the_fingerprint_changes_with_any_field() -> None:
    data = example_a()
    before = parse(data).fingerprint
    data["description"] = "a new note"
    assert parse(data).fingerprint != before


def test_time_zone_from_x_timezone_then_the_argument_then_utc() -> None:
    assert parse(flat_rate(), timezone="America/Denver").timezone == "America/Denver"
    data = flat_rate(x_timezone="Etc/GMT+8")
    assert parse(data, timezone="America/Denver").timezone == "Etc/GMT+8"


def test_source_is_the_rate_uri_when_it_has_one_and_attributes_go_to_notes() -> None:
    data = flat_rate(
        uri="https://apps.openei.org/IURDB/rate/view/0123456789abcdef01234567",
        energyattrs=[{"Power Cost Adjustment": "0.01 $/kWh"}],
        startdate=1514764800,
    )
    tariff = parse(data)
    assert tariff.source == data["uri"]
    assert 'energyattrs (not interpreted): [{"Power Cost Adjustment": "0.01 $/kWh"}]' in (
        tariff.notes
    )
    assert "URDB startdate 2018-01-01 (not used" in tariff.notes


def test_what_does_not_change_a_bill_is_accepted() -> None:
    data = example_b()
    data.update(
        demandwindow=15,
        demandunits="kVA",
        fixedchargeeaaddl=3.0,
        peakkwcapacitymin=0,
        fueladjustmentsmonthly=[0.0] * 12,
        lookbackpercent=0,
        lookbackrange=0,
        lookbackmonths=[False] * 12,
        sector="Commercial",
        eiaid=12345,
        enddate=1600000000,
    )
    # accepted, and billed exactly as the rate without those keys
    assert parse(data).versions == parse(example_b()).versions


# --- refusals: every problem with its place ------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """An edit of a rate: ``key[0][1].max`` = value (``del`` removes the key)."""

    def edit(data: dict[str, Any]) -> None:
        parts = path.replace("]", "").replace("[", ".").split(".")
        target: Any = data
        for part in parts[:-1]:
            target = target[int(part)] if part.isdigit() else target[part]
        last: Any = int(parts[-1]) if parts[-1].isdigit() else parts[-1]
        if value == "del":
            del target[last]
        else:
            target[last] = value

    return edit


REFUSALS: list[tuple[str, Callable[[], dict[str, Any]], Callable[[dict[str, Any]], None], str]] = [
    (
        "bounds differ in a month",
        example_a,
        _set("energyratestructure[1][0].max", 300),
        "energyratestructure[1][0].max = 300: period 0, in force in the same months (jan, feb, "
        "mar, apr, may, jun, jul, aug, sep, oct, nov, dec), ends tier 0 at 500 kWh; tiers count "
        "the month's total of all periods, so periods of one month need the same bounds",
    ),
    (
        "tier counts differ in a month",
        example_a,
        _set("energyratestructure[1]", [{"rate": 0.2}]),
        "energyratestructure[1]: 1 tier(s) but period 0, in force in the same months (jan,",
    ),
    (
        "kWh daily",
        example_a,
        _set("energyratestructure[0][0].unit", "kWh daily"),
        "energyratestructure[0][0].unit = 'kWh daily': a bound per day (SAM multiplies it by the "
        "days of the month) cannot be expressed: meterlake tiers have fixed bounds [kWh per "
        "month] per period",
    ),
    (
        "kWh/kW",
        example_a,
        _set("energyratestructure[1][0].unit", "kWh/kW"),
        "energyratestructure[1][0].unit = 'kWh/kW': a bound per kW of the month's peak demand",
    ),
    (
        "kWh/kW daily",
        example_a,
        _set("energyratestructure[1][0].unit", "kWh/kW daily"),
        "energyratestructure[1][0].unit = 'kWh/kW daily': a bound per kW of peak demand and per "
        "day",
    ),
    (
        "unknown unit",
        example_a,
        _set("energyratestructure[0][0].unit", "kWh/hp"),
        "energyratestructure[0][0].unit = 'kWh/hp': tier bounds are in 'kWh'",
    ),
    (
        "max missing before the last tier",
        example_a,
        _set("energyratestructure[0][0].max", "del"),
        "energyratestructure[0][0].max: required on every tier but the last",
    ),
    (
        "bounds do not increase",
        lambda: flat_rate(
            energyratestructure=[
                [{"max": 500, "rate": 0.1}, {"max": 400, "rate": 0.2}, {"rate": 0.3}]
            ]
        ),
        lambda d: None,
        "energyratestructure[0][1].max = 400: tier bounds must increase (the tier before ends at "
        "500)",
    ),
    (
        "bound not above 0",
        example_a,
        _set("energyratestructure[0][0].max", 0),
        "energyratestructure[0][0].max = 0: a tier bound must be above 0",
    ),
    (
        "bound not a number",
        example_a,
        _set("energyratestructure[0][0].max", "500"),
        "energyratestructure[0][0].max = '500': a number [kWh per month]",
    ),
    (
        "rate missing",
        example_a,
        _set("energyratestructure[0][1].rate", "del"),
        "energyratestructure[0][1].rate: required, a number [$/kWh]",
    ),
    (
        "negative price",
        example_a,
        _set("energyratestructure[0][1].adj", -0.2),
        "energyratestructure[0][1]: rate + adj = -0.05: a price cannot be negative",
    ),
    (
        "too many decimals",
        example_a,
        _set("energyratestructure[0][1].rate", 0.123456789),
        "energyratestructure[0][1].rate = 0.123456789: at most 8 decimals",
    ),
    (
        "unknown tier key",
        example_a,
        _set("energyratestructure[0][1].ratio", 2),
        "energyratestructure[0][1].ratio: unknown tier key; known: adj, max, rate, sell, unit",
    ),
    (
        "no energy structure",
        example_a,
        _set("energyratestructure", "del"),
        "energyratestructure: required, a list of periods, each a list of tiers",
    ),
    (
        "empty period",
        example_a,
        _set("energyratestructure[1]", []),
        "energyratestructure[1]: a non-empty list of tiers",
    ),
    (
        "schedule names a missing period",
        example_a,
        _set("energyweekdayschedule[0][16]", 2),
        "energyweekdayschedule[0][16] = 2: not a period of energyratestructure (periods 0-1)",
    ),
    (
        "schedule of the wrong shape",
        example_a,
        _set("energyweekendschedule[3]", [0] * 23),
        "energyweekendschedule: required, 12 rows (months) of 24 period indices (hours)",
    ),
    (
        "schedule missing",
        example_a,
        _set("energyweekendschedule", "del"),
        "energyweekendschedule: required, 12 rows (months) of 24 period indices (hours)",
    ),
    (
        "TOU demand in kVA",
        example_b,
        _set("demandrateunit", "kVA"),
        "demandrateunit = 'kVA': demand is billed per kW of the highest interval only",
    ),
    (
        "flat demand in hp",
        example_b,
        _set("flatdemandunit", "hp"),
        "flatdemandunit = 'hp': demand is billed per kW of the highest interval only",
    ),
    (
        "daily demand",
        example_b,
        _set("flatdemandunit", "kW daily"),
        "flatdemandunit = 'kW daily': demand is billed per kW",
    ),
    (
        "demand tier unit",
        example_b,
        _set("demandratestructure[1][0].unit", "kVA"),
        "demandratestructure[1][0].unit = 'kVA': demand is billed per kW only",
    ),
    (
        "TOU demand bounds differ in a month",
        example_b,
        _set("demandratestructure[1][0].max", 10),
        "demandratestructure[1][0].max = 10: period 0, in force in the same months (jan, feb,",
    ),
    (
        "TOU demand blocks differ in a month: SAM's reason",
        example_b,
        _set("demandratestructure[1][0].max", 10),
        "dec), ends tier 0 at 20 kW; SAM requires the demand periods of one month to have the same "
        "blocks and refuses this rate",
    ),
    (
        "TOU demand without schedules",
        example_b,
        _set("demandweekendschedule", "del"),
        "demandweekendschedule: required, 12 rows (months) of 24 period indices (hours)",
    ),
    (
        "flat demand without months",
        example_b,
        _set("flatdemandmonths", "del"),
        "flatdemandmonths: required with flatdemandstructure (flat demand needs both)",
    ),
    (
        "flat demand month names a missing period",
        example_b,
        _set("flatdemandmonths[6]", 2),
        "flatdemandmonths[6] = 2: not a period of flatdemandstructure (periods 0-1)",
    ),
    (
        "demand max missing",
        example_b,
        _set("flatdemandstructure[0][0].max", "del"),
        "flatdemandstructure[0][0].max: required on every tier but the last (its upper bound [kW])",
    ),
    (
        "negative demand price",
        example_b,
        _set("flatdemandstructure[1][0].adj", -8),
        "flatdemandstructure[1][0]: rate + adj = -1.0: a price cannot be negative",
    ),
    (
        "fixed charge without units",
        example_a,
        _set("fixedchargeunits", "del"),
        "fixedchargeunits = None: one of '$/month', '$/day', '$/year' (required with "
        "fixedchargefirstmeter)",
    ),
    (
        "fixed charge negative",
        example_a,
        _set("fixedchargefirstmeter", -1),
        "fixedchargefirstmeter = -1: cannot be negative",
    ),
    (
        "annual minimum",
        example_b,
        _set("minchargeunits", "$/year"),
        "minchargeunits = '$/year': an annual minimum cannot be expressed (SAM settles it in "
        "December against the year's bills; meterlake minimums are per month or per day)",
    ),
    (
        "minimum without units",
        example_b,
        _set("minchargeunits", "del"),
        "minchargeunits = None: one of '$/month', '$/day' (required with mincharge)",
    ),
    (
        "unknown dgrules",
        example_a,
        _set("dgrules", "Net Metering with $ credits"),
        "dgrules = 'Net Metering with $ credits': one of 'Net Metering', 'Net Billing "
        "Instantaneous', 'Net Billing Hourly', 'Buy All Sell All'",
    ),
    (
        "true-up terms without net metering",
        lambda: example_c(dgrules="Net Billing Hourly", x_net_metering={"true_up_month": 3}),
        lambda d: None,
        "x_net_metering: belongs to dgrules = 'Net Metering'",
    ),
    (
        "true-up month out of range",
        lambda: example_c(x_net_metering={"true_up_month": 13}),
        lambda d: None,
        "x_net_metering.true_up_month = 13: the month (1-12) the remaining credit is paid",
    ),
    (
        "true-up unknown key",
        lambda: example_c(x_net_metering={"true_up_price": 0.03}),
        lambda d: None,
        "x_net_metering.true_up_price: unknown key; known: true_up_month, true_up_sell_rate",
    ),
    (
        "true-up negative price",
        lambda: example_c(x_net_metering={"true_up_sell_rate": -0.03}),
        lambda d: None,
        "x_net_metering.true_up_sell_rate = -0.03: cannot be negative",
    ),
    (
        "net billing sells differ between tiers",
        lambda: example_c2(
            dgrules="Net Billing Instantaneous",
            energyratestructure=[
                [{"rate": 0.1, "sell": 0.04}],
                [{"max": 100, "rate": 0.2, "sell": 0.05}, {"rate": 0.2, "sell": 0.06}],
            ],
        ),
        lambda d: None,
        "energyratestructure[1]: tiers sell at 0.05, 0.06 $/kWh; meterlake credits export at one "
        "price per period",
    ),
    (
        "fuel adjustments",
        example_a,
        _set("fueladjustmentsmonthly", [0.0] * 11 + [0.01]),
        "fueladjustmentsmonthly: monthly fuel adjustments [$/kWh] are not modelled (SAM ignores "
        "them too): remove the field, or add the adjustment to the tiers' adj",
    ),
    (
        "coincident demand",
        example_a,
        _set("coincidentratestructure", [[{"rate": 3.0}]]),
        "coincidentratestructure: coincident peak demand charges are not modelled",
    ),
    (
        "reactive power",
        example_a,
        _set("demandreactivepowercharge", 0.5),
        "demandreactivepowercharge: reactive power charges [$/kVAR] are not modelled",
    ),
    (
        "ratchet percent",
        example_b,
        _set("lookbackpercent", 0.8),
        "lookbackpercent = 0.8: demand ratchets (billing demand from earlier months' peaks) are "
        "not modelled",
    ),
    (
        "ratchet range",
        example_b,
        _set("lookbackrange", 11),
        "lookbackrange = 11: demand ratchets",
    ),
    (
        "unknown meterlake key",
        example_a,
        _set("x_timezon", "UTC"),
        "x_timezon: unknown meterlake key; known: x_net_metering, x_timezone",
    ),
    (
        "bad time zone",
        example_a,
        _set("x_timezone", "Mountain Time"),
        "x_timezone = 'Mountain Time': not an IANA time zone",
    ),
]


@pytest.mark.parametrize(
    ("make", "edit", "message"),
    [pytest.param(make, edit, message, id=name) for name, make, edit, message in REFUSALS],
)
def test_refusals_name_the_place_and_the_reason(
    make: Callable[[], dict[str, Any]], edit: Callable[[dict[str, Any]], None], message: str
) -> None:
    data = make()
    edit(data)
    assert message in problems_of(data)


def test_every_problem_is_reported_at_once_with_the_source() -> None:
    data = example_b()
    data["energyratestructure"][0][0]["unit"] = "kWh daily"
    data["energyratestructure"][0].insert(0, {"max": 10, "unit": "kWh daily", "rate": 0.04})
    data["minchargeunits"] = "$/year"
    data["dgrules"] = "Gross Metering"
    message = problems_of(data)
    assert message.startswith("t.json: 3 problems:\n  ")
    assert "energyratestructure[0][0].unit = 'kWh daily'" in message
    assert "minchargeunits = '$/year'" in message
    assert "dgrules = 'Gross Metering'" in message


def test_a_tariff_id_that_cannot_name_a_tariff_is_refused() -> None:
    with pytest.raises(TariffError, match=r"tariff id 'Rate A' \(the file name\): use lowercase"):
        parse(flat_rate(), tariff_id="Rate A")


# --- files ---------------------------------------------------------------------------------------


def test_a_file_holds_a_bare_rate_or_the_api_envelope(tmp_path: Path) -> None:
    bare, wrapped = tmp_path / "us-example-a.json", tmp_path / "us-example-a2.json"
    bare.write_text(json.dumps(example_a()), encoding="utf-8")
    wrapped.write_text(json.dumps({"items": [example_a()]}), encoding="utf-8")
    first, second = load_urdb(bare), load_urdb(wrapped)
    assert (first.id, second.id) == ("us-example-a", "us-example-a2")
    assert first.source == str(bare)
    assert first.versions == second.versions
    assert first.fingerprint == second.fingerprint


def test_the_registry_loads_json_files_as_urdb(tmp_path: Path) -> None:
    path = tmp_path / "us-example-b.json"
    path.write_text(json.dumps({"items": [example_b()]}), encoding="utf-8")
    assert load_tariff_file(path) == load_urdb(path)


def test_a_file_with_several_rates_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "two.json"
    second = example_a()
    second["label"] = "fedcba9876543210fedcba98"
    path.write_text(json.dumps({"items": [example_a(), second]}), encoding="utf-8")
    with pytest.raises(TariffError) as caught:
        load_urdb(path)
    assert str(caught.value) == (
        f"{path}: items holds 2 rates (0123456789abcdef01234567, fedcba9876543210fedcba98); a "
        "tariff file holds one rate: split the file into one file per rate, each named after its "
        "tariff id"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"items": []}', "items: a list with one URDB rate object"),
        ("[1, 2]", 'a URDB rate is a JSON object (or {"items": [rate]})'),
        ("{not json", "not valid JSON"),
    ],
)
def test_files_that_are_not_one_rate_are_refused(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(TariffError) as caught:
        load_urdb(path)
    assert str(caught.value).startswith(f"{path}: {message}")


def test_problems_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "us-bad.json"
    data = example_a()
    data["energyratestructure"][1][0]["max"] = 300
    path.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(TariffError) as caught:
        load_urdb(path)
    assert str(caught.value).startswith(f"{path}: 1 problem:\n  energyratestructure[1][0].max")


# --- bills of the hand-made examples (SAM research notes, section 8) -----------------------------


def test_example_a_pro_rata_tiers_over_tou_periods() -> None:
    """Load 1 kW every hour. January: T = 744 kWh, off-peak 589, peak 155, bound 500: each period
    gets its share of each tier (SAM ``ur_calc``). PySAM: Jan 113.6317, Feb 99.7117, Apr 108.9917
    (+ fixed 10.00)."""
    frames = bill(parse(example_a()), intervals([1.0] * 8760), ["2018-01", "2018-02", "2018-04"])
    assert amounts(frames, "2018-01") == {
        "energy_tier1_p0": Decimal("43.54"),  # 589/744 x 500 = 395.8333 kWh x 0.11
        "energy_tier2_p0": Decimal("30.91"),  # 589/744 x 244 = 193.1667 kWh x 0.16
        "energy_tier1_p1": Decimal("22.92"),  # 155/744 x 500 = 104.1667 kWh x 0.22
        "energy_tier2_p1": Decimal("16.27"),  # 155/744 x 244 = 50.8333 kWh x 0.32
        "fixed": Decimal("10.00"),
    }
    lines = frames.lines.filter(pl.col("period") == "2018-01").sort("code")
    assert lines["quantity"].to_list() == pytest.approx(
        [395.833333, 104.166667, 193.166667, 50.833333, 1.0], abs=1e-6
    )
    for period, sam_energy in (("2018-01", 113.6317), ("2018-02", 99.7117), ("2018-04", 108.9917)):
        assert cents(unrounded(frames, period, "energy")) == cents(sam_energy)
        assert total(frames, period, "fixed") == Decimal("10.00")
    assert amounts(frames, "2018-02")["energy_tier2_p0"] == Decimal("21.79")  # 136.1667 x 0.16
    assert amounts(frames, "2018-04")["energy_tier2_p1"] == Decimal("14.67")  # 45.8333 x 0.32


def test_example_a_under_net_billing_fills_tiers_in_time_order() -> None:
    """SAM's ``ur_calc_timestep`` (net billing): the first 500 kWh of the month in time order are
    tier 1 whatever their period: 20 days + 20 hours = 396 off-peak + 104 peak kWh. PySAM (T3):
    Jan 113.64."""
    data = example_a()
    data["dgrules"] = "Net Billing Instantaneous"
    frames = bill(parse(data), intervals([1.0] * 8760), ["2018-01", "2018-02"])
    assert amounts(frames, "2018-01") == {
        "energy_tier1_p0": Decimal("43.56"),  # 396 kWh x 0.11
        "energy_tier2_p0": Decimal("30.88"),  # 193 kWh x 0.16
        "energy_tier1_p1": Decimal("22.88"),  # 104 kWh x 0.22
        "energy_tier2_p1": Decimal("16.32"),  # 51 kWh x 0.32
        "fixed": Decimal("10.00"),
    }
    assert total(frames, "2018-01", "energy") == Decimal("113.64")


def test_example_a_billed_for_january_alone() -> None:
    """A run of one period, January, gives January's bill (as in a run of several)."""
    frames = bill(parse(example_a()), intervals([1.0] * 744), ["2018-01"])
    assert cents(unrounded(frames, "2018-01", "energy")) == Decimal("113.63")
    assert frames.bills["total_amount"].to_list() == [Decimal("123.64")]


def example_b_load(month: int, day: int, hour: int) -> float:
    """10 kW, none in April; 30 kW on Tuesday 2 January 14:00 (on-peak), 60 kW on Saturday
    6 January 03:00 (weekend: off-peak)."""
    if (month, day, hour) == (0, 1, 14):
        return 30.0
    if (month, day, hour) == (0, 5, 3):
        return 60.0
    return 0.0 if month == 3 else 10.0


def test_example_b_flat_and_tou_demand_fixed_per_day_and_minimum() -> None:
    """PySAM: Jan energy 375.50, flat demand 290.00, TOU demand 420.00; Feb 336.00 / 50.00 /
    130.00; Apr all 0; Jul 372.00 / 70.00 / 130.00. The fixed charge is $1/day: meterlake bills
    the days (31, 28, 30, 31) where SAM charges 365/12 = 30.4167 every month, so April's minimum
    is 50 - 30 = 20.00 here and 19.5833 in SAM (the bill is 50.00 in both)."""
    periods = ["2018-01", "2018-02", "2018-04", "2018-07"]
    frames = bill(parse(example_b()), intervals(sam_year(example_b_load)), periods)
    assert amounts(frames, "2018-01") == {
        "energy": Decimal("375.50"),  # (7440 + 20 + 50) kWh x 0.05
        "demand_tier1": Decimal("250.00"),  # flat, winter: 50 kW x 5
        "demand_tier2": Decimal("40.00"),  # + 10 kW x 4
        "demand2_tier1": Decimal("40.00"),  # off-peak peak 60 kW: 20 x 2
        "demand2_tier2": Decimal("80.00"),  # + 40 x 2
        "demand3_tier1": Decimal("220.00"),  # on-peak peak 30 kW: 20 x 11 (rate 10 + adj 1)
        "demand3_tier2": Decimal("80.00"),  # + 10 x 8
        "fixed": Decimal("31.00"),
    }
    expected = {
        # period: energy, flat demand, TOU demand, fixed, minimum (SAM: fixed 30.4167)
        "2018-01": ("375.50", "290.00", "420.00", "31.00", "0"),
        "2018-02": ("336.00", "50.00", "130.00", "28.00", "0"),
        "2018-04": ("0", "0", "0", "30.00", "20.00"),
        "2018-07": ("372.00", "70.00", "130.00", "31.00", "0"),
    }
    for period, (energy, flat, tou, fixed, minimum) in expected.items():
        lines = amounts(frames, period)
        flat_codes = {"demand", "demand_tier1", "demand_tier2", "demand1"}
        assert total(frames, period, "energy") == Decimal(energy), period
        assert sum((a for c, a in lines.items() if c in flat_codes), Decimal(0)) == Decimal(flat)
        assert sum(
            (a for c, a in lines.items() if c.startswith(("demand2", "demand3"))), Decimal(0)
        ) == Decimal(tou)
        assert total(frames, period, "fixed") == Decimal(fixed), period
        assert total(frames, period, "min_adjustment") == Decimal(minimum), period
    assert frames.bills.filter(pl.col("period") == "2018-04")["total_amount"].to_list() == [
        Decimal("50.00")
    ]


def test_example_b_demand_on_quarter_hours_is_the_highest_quarter_hours_kw() -> None:
    """15-minute data, 10 kW, one quarter hour of 50 kW (12.5 kWh) on Tuesday 2 January 14:30.
    PySAM (T4): energy 372.50, flat demand 250.00, TOU demand 480.00 (on-peak 20 x 11 + 30 x 8,
    off-peak 10 x 2)."""
    quarter_hours = [10.0 * 0.25] * (4 * 24 * (31 + 28))
    quarter_hours[4 * (24 + 14) + 2] = 12.5
    frames = bill(parse(example_b()), intervals(quarter_hours, minutes=15), ["2018-01", "2018-02"])
    lines = amounts(frames, "2018-01")
    assert lines["energy"] == Decimal("372.50")
    assert lines["demand_tier1"] == Decimal("250.00")
    assert lines["demand2_tier1"] + lines["demand3_tier1"] + lines["demand3_tier2"] == Decimal(
        "480.00"
    )


def example_c_intervals() -> pl.LazyFrame:
    """Load 1 kW every hour; generation 2 kW in January, 0.5 kW in February, none after: the
    meter sees 1 kWh export per hour in January and 0.5 kWh import per hour in February."""
    generation = sam_year(lambda m, d, h: 2.0 if m == 0 else (0.5 if m == 1 else 0.0))
    return intervals([max(1 - g, 0.0) for g in generation], [max(g - 1, 0.0) for g in generation])


def test_example_c_net_metering_carries_kwh_and_pays_the_true_up() -> None:
    """True-up in February at 0.03 $/kWh. PySAM: Jan 5.00 (744 kWh carried), Feb energy 0 and
    true-up 408 kWh x 0.03 = 12.24 -> -7.24, Mar 94.28, Apr 91.40."""
    terms = {"true_up_month": 2, "true_up_sell_rate": 0.03}
    periods = ["2018-01", "2018-02", "2018-03", "2018-04"]
    frames = bill(parse(example_c(x_net_metering=terms)), example_c_intervals(), periods)
    assert amounts(frames, "2018-01") == {"energy": Decimal(0), "fixed": Decimal("5.00")}
    assert amounts(frames, "2018-02") == {
        "energy": Decimal(0),
        "fixed": Decimal("5.00"),
        "export_true_up": Decimal("-12.24"),
    }
    assert amounts(frames, "2018-03") == {"energy": Decimal("89.28"), "fixed": Decimal("5.00")}
    bills = frames.bills.sort("period")
    assert bills["total_amount"].to_list() == [
        Decimal("5.00"),
        Decimal("-7.24"),
        Decimal("94.28"),
        Decimal("91.40"),
    ]
    assert bills["export_carry_kwh"].to_list() == [744.0, 0.0, 0.0, 0.0]


def test_example_c_default_true_up_carries_the_credit_into_march() -> None:
    """True-up in December (default): PySAM Jan 5.00, Feb 5.00, Mar (744 - 408) x 0.12 + 5 =
    45.32."""
    periods = ["2018-01", "2018-02", "2018-03"]
    frames = bill(parse(example_c()), example_c_intervals(), periods)
    assert frames.bills.sort("period")["total_amount"].to_list() == [
        Decimal("5.00"),
        Decimal("5.00"),
        Decimal("45.32"),
    ]


def example_c2_intervals() -> pl.LazyFrame:
    """Load 1 kW; generation 3 kW at 10:00-13:59 in January only."""
    generation = sam_year(lambda m, d, h: 3.0 if m == 0 and 10 <= h <= 13 else 0.0)
    return intervals([max(1 - g, 0.0) for g in generation], [max(g - 1, 0.0) for g in generation])


def test_example_c2_net_billing_credits_each_hours_export_at_its_periods_sell() -> None:
    """PySAM (T9): Jan import 620 kWh x 0.10 = 62.00, export 248 kWh x 0.05 = 12.40."""
    data = example_c2(dgrules="Net Billing Instantaneous")
    frames = bill(parse(data), example_c2_intervals(), ["2018-01", "2018-02"])
    assert amounts(frames, "2018-01") == {
        "energy_p0": Decimal("62.00"),
        "energy_p1": Decimal(0),
        "export_credit_p1": Decimal("-12.40"),
    }
    assert amounts(frames, "2018-02") == {
        "energy_p0": Decimal("56.00"),
        "energy_p1": Decimal("22.40"),
    }


def test_example_c2_net_metering_nets_each_tou_period_on_its_own() -> None:
    """SAM nets per TOU period and carries a period's surplus to the same clock hours of the next
    month (``transfer_surplus``); a surplus never offsets another period's import. PySAM (T8):
    Jan 62.00 (midday surplus 248 kWh carried), Feb 56.00 (midday 112 - 248: surplus 136),
    Mar 62.00 (124 - 136: surplus 12), Apr 60.00 + (120 - 12) x 0.20 = 81.60."""
    periods = ["2018-01", "2018-02", "2018-03", "2018-04"]
    frames = bill(parse(example_c2()), example_c2_intervals(), periods)
    energy = [total(frames, p, "energy") for p in periods]
    assert energy == [Decimal("62.00"), Decimal("56.00"), Decimal("62.00"), Decimal("81.60")]


def test_example_c2_net_billing_minimum_counts_the_export_credit() -> None:
    """SAM's minimum compares the month's energy charge after net-billing credits (option 2
    subtracts them from ``monthly_ec_charges``) plus demand and fixed charges. PySAM, mincharge
    $60/month: Jan energy 62.00 - 12.40 = 49.60, minimum 10.40, bill 60.00."""
    data = example_c2(dgrules="Net Billing Instantaneous", mincharge=60.0, minchargeunits="$/month")
    frames = bill(parse(data), example_c2_intervals(), ["2018-01", "2018-02"])
    assert total(frames, "2018-01", "min_adjustment") == Decimal("10.40")
    assert frames.bills.sort("period")["total_amount"].to_list() == [
        Decimal("60.00"),
        Decimal("78.40"),
    ]


def test_examples_are_not_mutated_by_parsing() -> None:
    data = example_b()
    kept = copy.deepcopy(data)
    parse(data)
    assert data == kept
