"""The native TOML tariff loader: the shipped catalogue, a whole example, every refusal, the
fingerprint and the registry."""

from __future__ import annotations

import datetime as dt
import re
import textwrap
import tomllib
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from meterlake.tariffs.model import SLOTS_PER_DAY, Tariff
from meterlake.tariffs.native import CALENDARS_DIR, TariffError, load_tariff, parse_tariff
from meterlake.tariffs.registry import CATALOGUE_DIR, load_tariffs

REPO = Path(__file__).resolve().parents[2]
CATALOGUE = sorted(CATALOGUE_DIR.glob("*.toml"))
CALENDARS = sorted(CALENDARS_DIR.glob("*.toml"))
SOURCE = "tariffs/test-tariff.toml"

HEADER = """
    id = "test-tariff"
    name = "Test tariff"
    currency = "CNY"
    timezone = "Asia/Shanghai"
    source = "tests/tariffs/test_native.py"
"""
FLAT = """
    [energy]
    prices = { all = 0.5 }
"""
PEAK_VALLEY = """
    [energy]
    prices = { peak = 0.8, valley = 0.3 }

    [tou]
    [[tou.seasons]]
    name = "all-year"
    months = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    all = { peak = ["08:00-23:00"], valley = ["23:00-08:00"] }
"""
TIERED = """
    [energy]
    tiers_kwh = [2880, 4800]
    tier_reset = "annual"
"""


def toml(*fragments: str) -> dict[str, Any]:
    """HEADER and the TOML ``fragments`` merged; a later fragment's top-level keys win."""
    data: dict[str, Any] = {}
    for fragment in (HEADER, *fragments):
        data.update(tomllib.loads(textwrap.dedent(fragment)))
    return data


def parse(*fragments: str) -> Tariff:
    return parse_tariff(toml(*fragments), source=SOURCE)


def refusal(*fragments: str) -> str:
    """The message of the error that refuses the tariff."""
    with pytest.raises(TariffError) as info:
        parse(*fragments)
    message = str(info.value)
    assert message.startswith(f"{SOURCE}: ")
    return message


def write(directory: Path, tariff_id: str, *fragments: str) -> Path:
    """A tariff file ``<tariff_id>.toml`` whose id is ``tariff_id``."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{tariff_id}.toml"
    body = "".join(textwrap.dedent(f) for f in (HEADER, *fragments))
    path.write_text(body.replace('"test-tariff"', f'"{tariff_id}"', 1), encoding="utf-8")
    return path


# --- the shipped catalogue ------------------------------------------------------------------


def test_the_catalogue_and_the_calendars_are_not_empty() -> None:
    assert len(CATALOGUE) >= 10
    assert {p.stem for p in CALENDARS} >= {"cn", "us-federal"}


@pytest.mark.parametrize("path", CATALOGUE, ids=[p.stem for p in CATALOGUE])
def test_every_catalogue_tariff_loads(path: Path) -> None:
    tariff = load_tariff(path)

    assert tariff.id == path.stem
    assert tariff.source.strip()
    assert tariff.name.strip()
    for version in tariff.versions:
        scheduled: set[str] = set()
        months: list[int] = []
        for season in version.seasons:
            months.extend(season.months)
            assert set(season.schedules) == {"weekday", "weekend", "holiday"}
            for schedule in season.schedules.values():
                assert len(schedule) == SLOTS_PER_DAY
                scheduled.update(schedule)
        assert sorted(months) == list(range(1, 13))
        assert scheduled == set(version.energy.prices)
        for period, prices in version.energy.prices.items():
            assert prices, period
            assert len(prices) == len(version.energy.tiers_kwh[period]) + 1
            assert all(isinstance(p, Decimal) and p >= 0 for p in prices)


@pytest.mark.parametrize("path", CALENDARS, ids=[p.stem for p in CALENDARS])
def test_every_holiday_calendar_can_be_named(path: Path) -> None:
    calendar = tomllib.loads(path.read_text(encoding="utf-8"))
    tariff = parse(f'holiday_calendar = "{path.stem}"', FLAT)

    assert calendar["source"].strip()
    assert tariff.holidays == frozenset(calendar["dates"])
    assert tariff.workdays == frozenset(calendar.get("makeup_workdays", []))
    assert all(tariff.day_type(d) == "holiday" for d in calendar["dates"])


# --- a whole example ------------------------------------------------------------------------

EXAMPLE = """
    id = "cn-example"
    name = "Example: annual tiers with peak/valley"
    currency = "CNY"
    timezone = "Asia/Shanghai"
    source = "docs/tariffs.md, adapted"
    notes = "three seasons, two later versions"
    rounding = "half_even"
    effective_from = 2023-01-01
    holidays = [2026-03-10, 2026-07-15]
    makeup_workdays = [2026-03-07]
    holiday_calendar = "cn"

    [energy]
    tiers_kwh = [2880, 4800]
    tier_reset = "annual"
    tier_year_start = "04-01"
    tier_split = "chronological"
    tier_adders = [0.0, 0.05, 0.30]
    prices = { peak = 0.5583, valley = 0.3583 }

    [tou]
    [[tou.seasons]]
    name = "summer"
    months = [6, 7, 8]
    weekday = { peak = ["08:00-23:00"], valley = ["23:00-08:00"] }
    weekend = { peak = ["10-20"], valley = ["20:00-24:00", "00:00-10:00"] }

    [[tou.seasons]]
    name = "winter"
    months = [12, 1, 2]
    weekday = { peak = ["08:00-23:00"], valley = ["23:00-08:00"] }
    weekend = { peak = ["18:00-21:00"], valley = ["21:00-18:00"] }
    holiday = { valley = ["00:00-24:00"] }

    [[tou.seasons]]
    name = "shoulder"
    months = [3, 4, 5, 9, 10, 11]
    all = { peak = ["08:00-23:00"], valley = ["23:00-08:00"] }

    [[fixed]]
    name = "service charge"
    amount = 1.5
    per = "month"

    [minimum]
    amount = 5
    per = "day"

    [[demand]]
    name = "summer peak demand"
    periods = ["peak"]
    months = [6, 7, 8]
    tiers_kw = [10]
    prices = [20, 30.5]

    [[demand]]
    name = "facility demand"
    price = 4.25

    [[levies]]
    name = "renewable energy surcharge"
    per_kwh = 0.019

    [tax]
    name = "VAT"
    percent = 13

    [export]
    mode = "net_billing"
    sell_price = 0.3598

    [[versions]]
    effective_from = 2026-07-01
    [versions.energy]
    tiers_kwh = [2880, 4800]
    tier_reset = "annual"
    prices = { peak = 0.5683, valley = 0.3683 }
    tier_adders = [0.0, 0.05, 0.30]

    [[versions]]
    effective_from = 2027-01-01
    [versions.tou]
    [[versions.tou.seasons]]
    name = "all-year"
    months = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
    all = { peak = ["07:00-22:00"], valley = ["22:00-07:00"] }
"""


def decimals(*values: str) -> tuple[Decimal, ...]:
    return tuple(Decimal(v) for v in values)


@pytest.fixture
def example(tmp_path: Path) -> Tariff:
    path = tmp_path / "cn-example.toml"
    path.write_text(textwrap.dedent(EXAMPLE), encoding="utf-8")
    return load_tariff(path)


def test_example_header(example: Tariff) -> None:
    assert example.id == "cn-example"
    assert example.name == "Example: annual tiers with peak/valley"
    assert (example.currency, example.decimals, example.rounding) == ("CNY", 2, "half_even")
    assert example.timezone == "Asia/Shanghai"
    assert example.source == "docs/tariffs.md, adapted"
    assert example.notes == "three seasons, two later versions"
    assert re.fullmatch(r"[0-9a-f]{16}", example.fingerprint)


def test_example_energy_has_tier_prices_with_adders(example: Tariff) -> None:
    energy = example.versions[0].energy

    assert example.versions[0].periods == ("peak", "valley")
    assert energy.prices == {
        "peak": decimals("0.5583", "0.6083", "0.8583"),
        "valley": decimals("0.3583", "0.4083", "0.6583"),
    }
    assert all(isinstance(p, Decimal) for ps in energy.prices.values() for p in ps)
    assert energy.tiers_kwh == {"peak": (2880.0, 4800.0), "valley": (2880.0, 4800.0)}
    assert (energy.tiered, energy.tier_count) == (True, 3)
    assert energy.tier_reset == "annual"
    assert energy.tier_year_start == (4, 1)
    assert energy.tier_split == "chronological"


def test_example_seasons_by_month(example: Tariff) -> None:
    version = example.versions[0]

    assert [s.name for s in version.seasons] == ["summer", "winter", "shoulder"]
    assert [version.season_of(m).name for m in range(1, 13)] == [
        "winter", "winter", "shoulder", "shoulder", "shoulder", "summer",
        "summer", "summer", "shoulder", "shoulder", "shoulder", "winter",
    ]  # fmt: skip


def test_example_holiday_schedule_falls_back_to_weekend(example: Tariff) -> None:
    summer, winter, shoulder = example.versions[0].seasons

    assert summer.schedules["holiday"] == summer.schedules["weekend"]
    assert summer.schedules["weekday"] != summer.schedules["weekend"]
    assert winter.schedules["holiday"] == ("valley",) * SLOTS_PER_DAY
    assert len({shoulder.schedules[d] for d in ("weekday", "weekend", "holiday")}) == 1


@pytest.mark.parametrize(
    ("day", "day_type"),
    [
        pytest.param(dt.date(2026, 3, 9), "weekday", id="monday"),
        pytest.param(dt.date(2026, 3, 8), "weekend", id="sunday"),
        pytest.param(dt.date(2026, 3, 10), "holiday", id="tariff-holiday"),
        pytest.param(dt.date(2026, 3, 7), "weekday", id="tariff-makeup-saturday"),
        pytest.param(dt.date(2026, 10, 1), "holiday", id="calendar-holiday"),
        pytest.param(dt.date(2026, 10, 3), "holiday", id="calendar-holiday-on-saturday"),
        pytest.param(dt.date(2026, 2, 14), "weekday", id="calendar-makeup-saturday"),
        pytest.param(dt.date(2026, 1, 4), "weekday", id="calendar-makeup-sunday"),
        pytest.param(dt.date(2026, 2, 7), "weekend", id="plain-saturday"),
    ],
)
def test_example_day_types(example: Tariff, day: dt.date, day_type: str) -> None:
    assert example.day_type(day) == day_type


def test_example_holidays_come_from_the_tariff_and_the_calendar(example: Tariff) -> None:
    calendar = tomllib.loads((CALENDARS_DIR / "cn.toml").read_text(encoding="utf-8"))

    assert example.holidays == {dt.date(2026, 3, 10), dt.date(2026, 7, 15), *calendar["dates"]}
    assert example.workdays == {dt.date(2026, 3, 7), *calendar["makeup_workdays"]}


@pytest.mark.parametrize(
    ("moment", "period"),
    [
        pytest.param(dt.datetime(2026, 3, 9, 7, 59), "valley", id="weekday-07:59"),
        pytest.param(dt.datetime(2026, 3, 9, 8, 0), "peak", id="weekday-08:00"),
        pytest.param(dt.datetime(2026, 3, 9, 22, 59), "peak", id="weekday-22:59"),
        pytest.param(dt.datetime(2026, 3, 9, 23, 0), "valley", id="weekday-23:00"),
        pytest.param(dt.datetime(2026, 3, 9, 0, 0), "valley", id="weekday-wraps-midnight"),
        pytest.param(dt.datetime(2026, 7, 18, 9, 45), "valley", id="summer-saturday-09:45"),
        pytest.param(dt.datetime(2026, 7, 18, 10, 0), "peak", id="summer-saturday-HH-HH"),
        pytest.param(dt.datetime(2026, 7, 18, 23, 45), "valley", id="summer-saturday-24:00"),
        pytest.param(dt.datetime(2026, 7, 14, 9, 0), "peak", id="summer-tuesday"),
        pytest.param(dt.datetime(2026, 7, 15, 9, 0), "valley", id="summer-holiday-as-weekend"),
        pytest.param(dt.datetime(2026, 7, 15, 12, 0), "peak", id="summer-holiday-noon"),
        pytest.param(dt.datetime(2026, 1, 3, 19, 0), "valley", id="winter-holiday-own"),
        pytest.param(dt.datetime(2026, 1, 10, 19, 0), "peak", id="winter-saturday"),
        pytest.param(dt.datetime(2026, 2, 14, 9, 0), "peak", id="winter-makeup-saturday"),
        pytest.param(dt.datetime(2026, 12, 31, 22, 30), "peak", id="last-day-before-v3"),
        pytest.param(dt.datetime(2027, 1, 4, 7, 30), "peak", id="v3-07:30"),
        pytest.param(dt.datetime(2027, 1, 4, 22, 30), "valley", id="v3-22:30"),
        pytest.param(dt.datetime(2027, 1, 9, 12, 0), "peak", id="v3-one-schedule-for-all"),
    ],
)
def test_example_period_at(example: Tariff, moment: dt.datetime, period: str) -> None:
    assert example.period_at(moment) == period


@pytest.mark.parametrize(
    ("day", "index"),
    [
        (dt.date(2022, 12, 31), 0),
        (dt.date(2023, 1, 1), 0),
        (dt.date(2026, 6, 30), 0),
        (dt.date(2026, 7, 1), 1),
        (dt.date(2026, 12, 31), 1),
        (dt.date(2027, 1, 1), 2),
        (dt.date(2030, 1, 1), 2),
    ],
)
def test_example_version_at(example: Tariff, day: dt.date, index: int) -> None:
    assert example.version_at(day) == index


def test_a_version_replaces_only_the_tables_it_names(example: Tariff) -> None:
    first, second, third = example.versions

    assert [v.effective_from for v in example.versions] == [
        dt.date(2023, 1, 1), dt.date(2026, 7, 1), dt.date(2027, 1, 1),
    ]  # fmt: skip
    # the second names [energy], whole: what it leaves out takes the defaults, not the first's
    assert second.energy.prices == {
        "peak": decimals("0.5683", "0.6183", "0.8683"),
        "valley": decimals("0.3683", "0.4183", "0.6683"),
    }
    assert second.energy.tier_year_start == (1, 1)
    assert second.energy.tier_split == "pro_rata"
    assert second.seasons == first.seasons
    # the third names [tou] and keeps the energy in force before it
    assert third.energy == second.energy
    assert [s.name for s in third.seasons] == ["all-year"]
    for version in (second, third):
        assert version.fixed == first.fixed
        assert version.minimum == first.minimum
        assert version.demand == first.demand
        assert version.levies == first.levies
        assert version.tax == first.tax
        assert version.export == first.export


def test_example_other_charges(example: Tariff) -> None:
    version = example.versions[0]

    assert [(f.name, f.amount, f.per) for f in version.fixed] == [
        ("service charge", Decimal("1.5"), "month")
    ]
    assert version.minimum is not None
    assert (version.minimum.amount, version.minimum.per) == (Decimal(5), "day")
    summer_demand, facility = version.demand
    assert summer_demand.prices == decimals("20", "30.5")
    assert summer_demand.tiers_kw == (10.0,)
    assert summer_demand.periods == {"peak"}
    assert summer_demand.months == {6, 7, 8}
    assert facility.prices == decimals("4.25")
    assert (facility.tiers_kw, facility.periods, facility.months) == ((), None, None)
    assert [(lv.name, lv.per_kwh) for lv in version.levies] == [
        ("renewable energy surcharge", Decimal("0.019"))
    ]
    assert version.tax is not None
    assert (version.tax.name, version.tax.percent) == ("VAT", Decimal(13))
    assert version.export.mode == "net_billing"
    assert version.export.sell_prices == {"peak": Decimal("0.3598"), "valley": Decimal("0.3598")}


def test_the_example_in_the_docs_loads(tmp_path: Path) -> None:
    docs = (REPO / "docs" / "tariffs.md").read_text(encoding="utf-8")
    block = re.search(r"## A whole example\s+```toml\n(.*?)```", docs, re.DOTALL)
    assert block is not None
    data = tomllib.loads(block[1])
    path = tmp_path / f"{data['id']}.toml"
    path.write_text(block[1], encoding="utf-8")

    tariff = load_tariff(path)

    assert tariff.versions[0].energy.prices["peak"] == decimals("0.5583", "0.6083", "0.8583")
    assert tariff.versions[1].energy.prices["peak"] == decimals("0.5683", "0.6183", "0.8683")
    assert tariff.version_at(dt.date(2026, 6, 30)) == 0
    assert tariff.version_at(dt.date(2026, 7, 1)) == 1
    assert tariff.period_at(dt.datetime(2026, 7, 1, 22, 59)) == "peak"
    assert tariff.period_at(dt.datetime(2026, 7, 1, 23, 0)) == "valley"
    assert tariff.day_type(dt.date(2026, 2, 17)) == "holiday"


def test_a_flat_tariff_has_the_one_period_all() -> None:
    tariff = parse(FLAT)
    (version,) = tariff.versions

    assert version.periods == ("all",)
    assert version.energy.prices == {"all": decimals("0.5")}
    assert version.energy.tiers_kwh == {"all": ()}
    assert not version.energy.tiered
    assert [s.months for s in version.seasons] == [frozenset(range(1, 13))]
    assert tariff.period_at(dt.datetime(2026, 7, 4, 12, 0)) == "all"
    assert version.export.mode == "none"
    assert (version.effective_from, tariff.holidays, tariff.workdays) == (None, set(), set())


def test_tier_prices_may_be_lists_and_currencies_their_decimals() -> None:
    tariff = parse(
        'currency = "XAF"\ndecimals = 0',
        TIERED + "prices = { all = [80, 95, 110] }",
    )

    assert tariff.decimals == 0
    assert tariff.versions[0].energy.prices == {"all": decimals("80", "95", "110")}
    assert parse('currency = "JPY"', FLAT).decimals == 0


@pytest.mark.parametrize(
    ("ranges", "slots"),
    [
        pytest.param('["22:00-06:00"]', (6 * 4, 22 * 4), id="wraps-midnight"),
        pytest.param('["22-24", "00:00-06:00"]', (6 * 4, 22 * 4), id="24:00-ends-the-day"),
        pytest.param('["22:45-06:15"]', (6 * 4 + 1, 22 * 4 + 3), id="quarter-hours"),
    ],
)
def test_clock_ranges(ranges: str, slots: tuple[int, int]) -> None:
    """``slots``: the first and the last+1 quarter hour of the day period."""
    start, end = slots
    day = f'["{start // 4:02d}:{start % 4 * 15:02d}-{end // 4:02d}:{end % 4 * 15:02d}"]'
    tariff = parse(
        """
        [energy]
        prices = { day = 0.8, night = 0.3 }
        """,
        f"""
        [tou]
        [[tou.seasons]]
        name = "all-year"
        months = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        all = {{ day = {day}, night = {ranges} }}
        """,
    )
    schedule = tariff.versions[0].seasons[0].schedules["weekday"]

    assert schedule == ("night",) * start + ("day",) * (end - start) + ("night",) * (96 - end)


# --- refusals -------------------------------------------------------------------------------


def tou(weekday: str, weekend: str = 'flat = ["00:00-24:00"]') -> str:
    """A one-season [tou] ("summer") with these weekday and weekend schedules, priced
    peak/flat/valley."""
    return f"""
        [energy]
        prices = {{ peak = 0.8, flat = 0.5, valley = 0.3 }}

        [tou]
        [[tou.seasons]]
        name = "summer"
        months = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
        weekday = {{ {weekday} }}
        weekend = {{ {weekend} }}
    """


TWO_SEASONS = """
    [energy]
    prices = { peak = 0.8, valley = 0.3 }

    [tou]
    [[tou.seasons]]
    name = "summer"
    months = [6, 7, 8, 9]
    all = { peak = ["08:00-23:00"], valley = ["23:00-08:00"] }

    [[tou.seasons]]
    name = "winter"
    months = [%s]
    all = { peak = ["08:00-23:00"], valley = ["23:00-08:00"] }
"""
LATER = """
    [[versions]]
    effective_from = 2026-07-01
    [versions.energy]
    prices = { all = 0.6 }
"""

REFUSALS = [
    # [tou]
    pytest.param(
        (tou('peak = ["10:00-12:00"], flat = ["00:00-10:00", "10:00-11:00", "12:00-24:00"]'),),
        ("[tou.seasons] #1 (summer) weekday: 10:00-11:00 is in both peak and flat",),
        id="overlapping-periods",
    ),
    pytest.param(
        (tou('valley = ["23:00-07:00"], flat = ["06:00-23:30"]'),),
        ("weekday: 06:00-07:00, 23:00-23:30 is in both valley and flat",),
        id="overlap-across-midnight",
    ),
    pytest.param(
        (tou('peak = ["08:00-22:00"], valley = ["23:00-07:00"]'),),
        ("[tou.seasons] #1 (summer) weekday: 07:00-08:00, 22:00-23:00 is in no period",),
        id="hours-not-covered",
    ),
    pytest.param(
        (tou('peak = ["08:10-23:00"], valley = ["23:00-08:10"]'),),
        ("weekday peak: '08:10-23:00' is not a range 'HH:MM-HH:MM' on quarter hours",),
        id="not-on-quarter-hours",
    ),
    pytest.param(
        (tou('peak = ["8am-11pm"], valley = ["23:00-25:00"]'),),
        ("weekday peak: '8am-11pm' is not a range", "weekday valley: '23:00-25:00' is not a range"),
        id="not-clock-ranges",
    ),
    pytest.param(
        (tou('peak = ["08:00-08:00"]'),),
        ("weekday peak: '08:00-08:00' is not a range",),
        id="empty-range",
    ),
    pytest.param(
        (tou('flat = ["00:00-24:00"]') + 'weekdays = { flat = ["00:00-24:00"] }',),
        ("[tou.seasons] #1 (summer) weekdays: unknown key; allowed here:",),
        id="unknown-day-type",
    ),
    pytest.param(
        (tou('flat = ["00:00-24:00"]') + 'all = { flat = ["00:00-24:00"] }',),
        ("[tou.seasons] #1 (summer): 'all' stands for every day type",),
        id="all-with-weekday",
    ),
    pytest.param(
        (tou('flat = ["00:00-24:00"]').replace("weekend = ", "holiday = "),),
        ("[tou.seasons] #1 (summer): needs 'all', or 'weekday' and 'weekend'",),
        id="no-weekend",
    ),
    pytest.param(
        (TWO_SEASONS % "1, 2, 3, 4, 5, 6, 10, 11, 12",),
        ("[tou.seasons] #2 (winter) months: month 6 is also in summer",),
        id="month-in-two-seasons",
    ),
    pytest.param(
        (TWO_SEASONS % "1, 2, 3, 4, 5",),
        ("[tou.seasons]: months [10, 11, 12] are in no season",),
        id="months-in-no-season",
    ),
    pytest.param(
        (TWO_SEASONS % "1, 2, 3, 4, 5, 10, 11, 13",),
        ("[tou.seasons] #2 (winter) months: a list of months 1-12",),
        id="month-13",
    ),
    pytest.param(
        (PEAK_VALLEY.replace("valley = 0.3", "valley = 0.3, shoulder = 0.5"),),
        ("[energy] prices.shoulder: no such period in [tou]",),
        id="price-without-period",
    ),
    pytest.param(
        (PEAK_VALLEY.replace(", valley = 0.3", ""),),
        ("[energy] prices: period 'valley' of [tou] has no price",),
        id="period-without-price",
    ),
    pytest.param(
        ("[energy]\nprices = { peak = 0.8, valley = 0.3 }",),
        ("[energy] prices: without [tou] the one period is 'all'", "got peak, valley"),
        id="no-tou-but-periods",
    ),
    # [energy]
    pytest.param(
        ("[energy]\nprices = { all = -0.1 }",),
        ("[energy] prices.all = -0.1: cannot be negative",),
        id="negative-price",
    ),
    pytest.param(
        (TIERED + "prices = { all = [0.5, -0.1, 0.7] }",),
        ("[energy] prices.all: prices cannot be negative",),
        id="negative-tier-price",
    ),
    pytest.param(
        (TIERED.replace("2880, 4800", "4800, 2880") + "prices = { all = [0.5, 0.6, 0.7] }",),
        ("[energy] tiers_kwh = [4800.0, 2880.0]: tier bounds must increase",),
        id="tiers-out-of-order",
    ),
    pytest.param(
        (TIERED.replace("2880", "0") + "prices = { all = [0.5, 0.6, 0.7] }",),
        ("[energy] tiers_kwh = [0, 4800]: bounds must be above 0",),
        id="tier-bound-zero",
    ),
    pytest.param(
        (TIERED + "prices = { all = [0.5, 0.6] }",),
        ("[energy] prices.all: 2 prices for 3 tiers",),
        id="wrong-number-of-tier-prices",
    ),
    pytest.param(
        (TIERED + "tier_adders = [0, 0.05]\nprices = { all = 0.5 }",),
        ("[energy] tier_adders: 2 values for 3 tiers",),
        id="wrong-number-of-adders",
    ),
    pytest.param(
        (TIERED + "tier_adders = [0, 0.05, 0.3]\nprices = { all = [0.5, 0.6, 0.7] }",),
        ("[energy] prices.all: tier_adders apply to a single price, not a list",),
        id="adders-with-list-prices",
    ),
    pytest.param(
        ("[energy]\ntiers_kwh = [100]\nprices = { all = 0.5 }",),
        ("[energy] tier_reset: required with tiers",),
        id="tiers-without-reset",
    ),
    pytest.param(
        (TIERED.replace("annual", "yearly") + "prices = { all = 0.5 }",),
        ("[energy] tier_reset = 'yearly': one of monthly, billing_cycle, annual",),
        id="bad-tier-reset",
    ),
    pytest.param(
        (TIERED + 'tier_year_start = "02-29"\nprices = { all = 0.5 }',),
        ("[energy] tier_year_start = '02-29': a month and day 'MM-DD'",),
        id="tier-year-start-02-29",
    ),
    pytest.param(
        (
            TIERED.replace("annual", "monthly")
            + "prices = { all = 0.5 }\ntier_year_start = '04-01'",
        ),
        ("[energy] tier_year_start: only with tier_reset = 'annual'",),
        id="tier-year-start-not-annual",
    ),
    pytest.param(
        ("[energy]\nprices = { all = 0.5 }\ntier_splitt = 'pro_rata'",),
        ("[energy] tier_splitt: unknown key",),
        id="unknown-energy-key",
    ),
    pytest.param(("notes = 'no energy'",), ("[energy]: required",), id="no-energy"),
    # the top level
    pytest.param(
        ('tarif_type = "residential"', FLAT),
        ("tarif_type: unknown key; allowed here:",),
        id="unknown-top-level-key",
    ),
    pytest.param(
        ('currency = "yuan"', FLAT),
        ("currency = 'yuan': an ISO 4217 code",),
        id="bad-currency",
    ),
    pytest.param(
        ('currency = "XAF"', FLAT),
        ("decimals: required for currency 'XAF'",),
        id="unknown-currency-without-decimals",
    ),
    pytest.param(
        ('currency = "XAF"\ndecimals = 7', FLAT),
        ("decimals = 7: an integer from 0 to 4",),
        id="bad-decimals",
    ),
    pytest.param(
        ('timezone = "Asia/Beijing"', FLAT),
        ("timezone = 'Asia/Beijing': not an IANA time zone",),
        id="bad-timezone",
    ),
    pytest.param(
        ('rounding = "half_down"', FLAT),
        ("rounding = 'half_down': one of half_up, half_even",),
        id="bad-rounding",
    ),
    pytest.param(
        ('id = "Test Tariff"', FLAT),
        ("id = 'Test Tariff': use lowercase letters",),
        id="bad-id",
    ),
    pytest.param(('source = " "', FLAT), ("source: required, text",), id="empty-source"),
    pytest.param(
        ("holidays = ['2026-01-01']", FLAT),
        ("holidays: a list of dates",),
        id="holidays-as-text",
    ),
    pytest.param(
        ('holiday_calendar = "mars"', FLAT),
        ("holiday_calendar = 'mars': no such calendar; known: ['cn', 'us-federal']",),
        id="unknown-holiday-calendar",
    ),
    pytest.param(
        ('holiday_calendar = "../calendars/cn"', FLAT),
        ("holiday_calendar = '../calendars/cn': no such calendar",),
        id="holiday-calendar-path",
    ),
    # other charges
    pytest.param(
        (FLAT, "[[fixed]]\nname = 'service'\namount = -1\nper = 'month'"),
        ("[[fixed]] #1 amount = -1: cannot be negative",),
        id="negative-fixed-charge",
    ),
    pytest.param(
        (FLAT, "[[fixed]]\nname = 'service'\namount = 1\nper = 'week'"),
        ("[[fixed]] #1 per = 'week': one of month, day",),
        id="bad-per",
    ),
    pytest.param(
        (FLAT, "[tax]\nname = 'VAT'\npercent = 150"),
        ("[tax] percent = 150: at most 100",),
        id="tax-above-100",
    ),
    pytest.param(
        (FLAT, "[[demand]]\nname = 'demand'\nprice = 5\ntiers_kw = [10]\nprices = [5, 6]"),
        ("[[demand]] #1: give either price, or tiers_kw and prices",),
        id="demand-price-and-prices",
    ),
    pytest.param(
        (FLAT, "[[demand]]\nname = 'demand'"),
        ("[[demand]] #1: give either price, or tiers_kw and prices",),
        id="demand-without-price",
    ),
    pytest.param(
        (FLAT, "[[demand]]\nname = 'demand'\ntiers_kw = [10]\nprices = [5]"),
        ("[[demand]] #1 prices: 1 prices for 2 tiers",),
        id="demand-tier-prices",
    ),
    pytest.param(
        (PEAK_VALLEY, "[[demand]]\nname = 'demand'\nperiods = ['critical']\nprice = 5"),
        ("[[demand]] #1 periods: 'critical' is not a period of the tariff",),
        id="demand-unknown-period",
    ),
    # [export]
    pytest.param(
        (PEAK_VALLEY, "[export]\nmode = 'net_billing'"),
        ("[export] sell_price: required with net_billing",),
        id="net-billing-without-sell-price",
    ),
    pytest.param(
        (
            PEAK_VALLEY,
            "[export]\nmode = 'net_billing'\nsell_price = { peak = 0.1, critical = 0.2 }",
        ),
        (
            "[export] sell_price.critical: no such period in the tariff",
            "[export] sell_price: period 'valley' has no sell price",
        ),
        id="sell-price-unknown-period",
    ),
    pytest.param(
        (PEAK_VALLEY, "[export]\nmode = 'net_metering'\ntrue_up_month = 13\ntrue_up_price = 0.03"),
        ("[export] true_up_month = 13: the month (1-12) of the true-up",),
        id="net-metering-bad-true-up-month",
    ),
    pytest.param(
        (
            PEAK_VALLEY,
            "[export]\nmode = 'net_billing'\nsell_price = 0.1\ntrue_up_month = 4\n"
            "true_up_price = 0.03",
        ),
        ("[export]: true_up_month and true_up_price belong to net_metering",),
        id="true-up-under-net-billing",
    ),
    pytest.param(
        (
            PEAK_VALLEY,
            "[export]\nmode = 'net_metering'\ntrue_up_month = 4\ntrue_up_price = 0.03\n"
            "sell_price = 0.1",
        ),
        ("[export] sell_price: belongs to mode = 'net_billing'",),
        id="sell-price-under-net-metering",
    ),
    pytest.param(
        (PEAK_VALLEY, "[export]\nmode = 'feed_in'"),
        ("[export] mode = 'feed_in': one of none, net_billing, net_metering",),
        id="bad-export-mode",
    ),
    # versions
    pytest.param(
        (FLAT, "[[versions]]\n[versions.energy]\nprices = { all = 0.6 }"),
        ("[[versions]] #1 effective_from: required, a date",),
        id="version-without-date",
    ),
    pytest.param(
        ("effective_from = 2026-07-01", FLAT, LATER),
        ("[[versions]] #1 effective_from = 2026-07-01: must be after the previous version's",),
        id="version-not-after-first",
    ),
    pytest.param(
        (
            FLAT,
            LATER + "[[versions]]\neffective_from = 2026-01-01\n[versions.tax]\nname = 'VAT'\n"
            "percent = 6",
        ),
        (
            "[[versions]] #2 effective_from = 2026-01-01: must be after the previous version's "
            "2026-07-01",
        ),
        id="versions-not-increasing",
    ),
    pytest.param(
        (FLAT, LATER.replace("0.6", "-0.6")),
        (
            "[versions.energy] prices.all = -0.6: cannot be negative "
            "(in the version from 2026-07-01)",
        ),
        id="problem-inside-a-version",
    ),
    pytest.param(
        (FLAT, LATER + "[versions.tarif]\nx = 1"),
        ("[[versions]] #1 tarif: unknown key",),
        id="unknown-version-table",
    ),
]


@pytest.mark.parametrize(("fragments", "expected"), REFUSALS)
def test_refusals_name_the_place(fragments: tuple[str, ...], expected: tuple[str, ...]) -> None:
    message = refusal(*fragments)

    for part in expected:
        assert part in message


def test_several_problems_are_reported_together() -> None:
    message = refusal(
        """
        currency = "yuan"
        timezone = "Asia/Beijing"
        rounding = "up"
        colour = "green"
        """,
        FLAT,
        "[tax]\nname = 'VAT'\npercent = 150",
    )
    problems = message.splitlines()[1:]

    assert message.startswith(f"{SOURCE}: 5 problems:\n")
    assert len(problems) == 5
    assert all(line.startswith("  ") for line in problems)
    for part in ("currency = 'yuan'", "timezone = ", "rounding = 'up'", "colour:", "percent"):
        assert sum(part in line for line in problems) == 1, part


def test_one_problem_is_singular() -> None:
    assert refusal(FLAT, "[tax]\nname = 'VAT'\npercent = 150").startswith(f"{SOURCE}: 1 problem:\n")


def test_a_mistake_in_tou_is_one_problem() -> None:
    message = refusal(
        tou('peak = ["10:00-12:00"], flat = ["00:00-10:00", "10:00-11:00", "12:00-24:00"]')
    )

    assert "in both peak and flat" in message
    assert "1 problem:" in message


def test_a_clash_names_the_period_each_hour_is_in() -> None:
    message = refusal(
        tou('valley = ["22:00-06:00"], peak = ["06:00-08:00"], flat = ["23:00-22:00"]')
    )

    assert "06:00-08:00 is in both peak and flat" in message
    assert "00:00-06:00, 23:00-24:00 is in both valley and flat" in message


def test_a_mistake_in_an_inherited_table_is_reported_once_at_its_place() -> None:
    message = refusal(FLAT, "[tax]\nname = 'VAT'\npercent = 150", LATER)

    assert "[tax] percent = 150: at most 100" in message
    assert "[versions.tax]" not in message
    assert "1 problem:" in message


def test_the_id_must_be_the_file_name(tmp_path: Path) -> None:
    path = write(tmp_path, "test-tariff", FLAT).rename(tmp_path / "other-name.toml")

    with pytest.raises(TariffError) as info:
        load_tariff(path)

    assert str(info.value).startswith(f"{path}: 1 problem:")
    assert "id = 'test-tariff': must be the file name without .toml ('other-name')" in str(
        info.value
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("id = ", "not valid TOML", id="not-toml"),
        pytest.param(None, "cannot read the tariff", id="missing"),
    ],
)
def test_unreadable_files(tmp_path: Path, text: str | None, expected: str) -> None:
    path = tmp_path / "test-tariff.toml"
    if text is not None:
        path.write_text(text, encoding="utf-8")

    with pytest.raises(TariffError, match=re.escape(f"{path}: {expected}")):
        load_tariff(path)


# --- the fingerprint ------------------------------------------------------------------------


def test_the_fingerprint_follows_the_data() -> None:
    data = toml(PEAK_VALLEY)
    same = toml(PEAK_VALLEY)
    reordered = dict(reversed(list(toml(PEAK_VALLEY).items())))
    dearer = toml(PEAK_VALLEY.replace("peak = 0.8", "peak = 0.81"))

    fingerprint = parse_tariff(data).fingerprint
    assert parse_tariff(same, source="elsewhere.toml").fingerprint == fingerprint
    assert parse_tariff(reordered).fingerprint == fingerprint
    assert parse_tariff(dearer).fingerprint != fingerprint
    assert parse(PEAK_VALLEY, 'notes = "a note"').fingerprint != fingerprint


# --- the registry ---------------------------------------------------------------------------


def test_load_tariffs_holds_the_catalogue() -> None:
    tariffs = load_tariffs()

    assert set(tariffs) == {p.stem for p in CATALOGUE}
    assert all(tariffs[i].id == i for i in tariffs)


def test_a_user_directory_adds_tariffs(tmp_path: Path) -> None:
    write(tmp_path / "mine", "my-flat", FLAT)
    write(tmp_path / "mine", "my-tou", PEAK_VALLEY)
    (tmp_path / "mine" / "README.txt").write_text("not a tariff", encoding="utf-8")
    single = write(tmp_path / "single", "my-single", FLAT)

    tariffs = load_tariffs(dirs=[tmp_path / "mine"], files=[single])

    assert set(tariffs) == {p.stem for p in CATALOGUE} | {"my-flat", "my-tou", "my-single"}
    assert tariffs["my-tou"].versions[0].periods == ("peak", "valley")


def test_the_same_id_twice_is_refused_naming_both_files(tmp_path: Path) -> None:
    first = write(tmp_path / "a", "my-flat", FLAT)
    second = write(tmp_path / "b", "my-flat", PEAK_VALLEY)

    with pytest.raises(TariffError) as info:
        load_tariffs(dirs=[tmp_path / "a", tmp_path / "b"])

    assert "'my-flat' is given twice" in str(info.value)
    assert str(first) in str(info.value)
    assert str(second) in str(info.value)


def test_a_user_tariff_cannot_shadow_the_catalogue(tmp_path: Path) -> None:
    shipped = CATALOGUE[0]
    mine = write(tmp_path, shipped.stem, FLAT)

    with pytest.raises(TariffError) as info:
        load_tariffs(dirs=[tmp_path])

    assert f"{shipped.stem!r} is given twice: {shipped} and {mine}" in str(info.value)


def test_a_missing_user_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(TariffError, match="not a directory of tariff files"):
        load_tariffs(dirs=[tmp_path / "nowhere"])
