"""Native TOML tariffs (the format is documented in ``docs/tariffs.md``) -> :class:`Tariff`.

Loose outside, frozen inside: the file is parsed once and every problem found is reported
together in one :class:`TariffError` that names the file and the place
(``[tou.seasons] #1 (summer) weekday: 10:00-11:00 is in both peak and flat``).
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
import re
import tomllib
from collections.abc import Mapping, Sequence
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Final, cast, get_args

from meterlake.config.datafile import read_document
from meterlake.config.errors import ConfigError
from meterlake.config.timezones import is_timezone
from meterlake.tariffs.model import (
    ALL_PERIODS,
    DAY_TYPES,
    MINOR_UNITS,
    SLOT_MINUTES,
    SLOTS_PER_DAY,
    DayType,
    DemandCharge,
    EnergyCharge,
    ExportMode,
    ExportRule,
    FixedCharge,
    Levy,
    MinimumCharge,
    Per,
    Rounding,
    Season,
    Tariff,
    TariffVersion,
    Tax,
    TierReset,
    TierSplit,
    source_fingerprint,
)

CALENDARS_DIR: Final = Path(__file__).parent / "calendars"
"""Shared holiday calendars (``<name>.toml`` with ``dates = [...]``) named by
``holiday_calendar``."""

TARIFF_ID_PATTERN: Final = r"^[a-z0-9][a-z0-9._-]{0,79}$"
_TARIFF_ID_RE: Final = re.compile(TARIFF_ID_PATTERN)
_PERIOD_RE: Final = re.compile(r"^[a-z][a-z0-9_]{0,39}$")
_TIME_RE: Final = re.compile(r"^(\d{1,2})(?::(\d{2}))?$")
_CURRENCY_RE: Final = re.compile(r"^[A-Z]{3}$")

VERSION_TABLES: Final = ("energy", "tou", "fixed", "minimum", "demand", "levies", "tax", "export")
_TOP_KEYS: Final = frozenset(
    {
        "id", "name", "currency", "decimals", "timezone", "source", "notes", "rounding",
        "effective_from", "holidays", "makeup_workdays", "holiday_calendar", "versions",
        *VERSION_TABLES,
    }
)  # fmt: skip


class TariffError(ConfigError):
    """A tariff file that cannot be used: unreadable, or inconsistent (the message lists every
    problem with its place)."""


def load_tariff(path: Path, *, calendars_dir: Path = CALENDARS_DIR) -> Tariff:
    """Read and check a native tariff file; its ``id`` must be the file name without ``.toml``."""
    data = read_document(path, "the tariff", TariffError)
    return parse_tariff(data, source=str(path), expected_id=path.stem, calendars_dir=calendars_dir)


def parse_tariff(
    data: Mapping[str, Any],
    *,
    source: str = "<tariff>",
    expected_id: str | None = None,
    calendars_dir: Path = CALENDARS_DIR,
) -> Tariff:
    """Check the parsed TOML of a tariff and freeze it into a :class:`Tariff`.

    Raises
    ------
    TariffError
        Listing every problem found, each with its place in the file.
    """
    problems: list[str] = []
    _unknown_keys(data, _TOP_KEYS, "(top level)", problems)
    tariff_id = _text(data, "id", "(top level)", problems)
    if tariff_id is not None and not _TARIFF_ID_RE.match(tariff_id):
        problems.append(
            f"id = {tariff_id!r}: use lowercase letters, digits, '.', '_' and '-' (at most 80)"
        )
    elif tariff_id is not None and expected_id is not None and tariff_id != expected_id:
        problems.append(
            f"id = {tariff_id!r}: must be the file name without .toml ({expected_id!r})"
        )
    name = _text(data, "name", "(top level)", problems)
    tariff_source = _text(data, "source", "(top level)", problems)
    currency = _text(data, "currency", "(top level)", problems)
    if currency is not None and not _CURRENCY_RE.match(currency):
        problems.append(f"currency = {currency!r}: an ISO 4217 code such as 'CNY' or 'USD'")
    decimals = _decimals(data, currency, problems)
    timezone = _text(data, "timezone", "(top level)", problems)
    if timezone is not None and not is_timezone(timezone):
        problems.append(f"timezone = {timezone!r}: not an IANA time zone (e.g. 'Asia/Shanghai')")
    rounding = _choice(data, "rounding", get_args(Rounding), "(top level)", problems) or "half_up"
    notes = data.get("notes", "")
    if not isinstance(notes, str):
        problems.append(f"notes = {notes!r}: must be text")
        notes = ""
    holidays, workdays = _calendar(data, calendars_dir, problems)
    versions = _versions(data, problems)
    if problems:
        plural = "s" if len(problems) > 1 else ""
        raise TariffError(f"{source}: {len(problems)} problem{plural}:\n  " + "\n  ".join(problems))
    return Tariff(
        id=cast(str, tariff_id),
        name=cast(str, name),
        currency=cast(str, currency),
        timezone=cast(str, timezone),
        source=cast(str, tariff_source),
        versions=versions,
        fingerprint=source_fingerprint(
            {"tariff": data, "holidays": sorted(holidays), "workdays": sorted(workdays)}
        ),
        decimals=cast(int, decimals),
        rounding=cast(Rounding, rounding),
        holidays=holidays,
        workdays=workdays,
        notes=notes,
    )


def _decimals(data: Mapping[str, Any], currency: str | None, problems: list[str]) -> int | None:
    value = data.get("decimals")
    if value is None:
        if currency is not None and currency in MINOR_UNITS:
            return MINOR_UNITS[currency]
        if currency is not None and _CURRENCY_RE.match(currency):
            problems.append(f"decimals: required for currency {currency!r} (its minor unit, 0-4)")
        return None
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 4:
        problems.append(f"decimals = {value!r}: an integer from 0 to 4")
        return None
    return value


def _calendar(
    data: Mapping[str, Any], calendars_dir: Path, problems: list[str]
) -> tuple[frozenset[dt.date], frozenset[dt.date]]:
    """Holidays and working weekend days: the tariff's own lists plus its shared calendar's."""
    holidays: set[dt.date] = set()
    workdays: set[dt.date] = set()
    sources: list[tuple[str, Mapping[str, Any]]] = [("", data)]
    name = data.get("holiday_calendar")
    if name is not None:
        path = calendars_dir / f"{name}.toml" if isinstance(name, str) else None
        if path is None or not re.match(r"^[a-z0-9_-]+$", str(name)) or not path.is_file():
            known = sorted(p.stem for p in calendars_dir.glob("*.toml"))
            problems.append(f"holiday_calendar = {name!r}: no such calendar; known: {known}")
        else:
            try:
                sources.append((f"{path}: ", tomllib.loads(path.read_text(encoding="utf-8"))))
            except (OSError, tomllib.TOMLDecodeError) as exc:
                problems.append(f"holiday_calendar = {name!r}: {path} cannot be read: {exc}")
    for where, table in sources:
        holiday_key = "dates" if where else "holidays"
        for key, into in ((holiday_key, holidays), ("makeup_workdays", workdays)):
            listed = table.get(key, [])
            if not isinstance(listed, list) or not all(_is_date(d) for d in listed):
                problems.append(f"{where}{key}: a list of dates such as [2026-10-01, 2026-10-02]")
            else:
                into.update(listed)
    return frozenset(holidays), frozenset(workdays)


def _versions(data: Mapping[str, Any], problems: list[str]) -> tuple[TariffVersion, ...]:
    first_from = data.get("effective_from")
    if first_from is not None and not _is_date(first_from):
        problems.append(f"effective_from = {first_from!r}: a date such as 2026-01-01")
        first_from = None
    tables: dict[str, Any] = {k: data[k] for k in VERSION_TABLES if k in data}
    built = [_version(tables, first_from, "", problems)]
    later = data.get("versions", [])
    if not isinstance(later, list) or not all(isinstance(v, dict) for v in later):
        problems.append("versions: use [[versions]] tables")
        return tuple(v for v in built if v is not None)
    previous = first_from
    for number, entry in enumerate(later, start=1):
        where = f"[[versions]] #{number}"
        _unknown_keys(entry, {"effective_from", *VERSION_TABLES}, where, problems)
        start = entry.get("effective_from")
        if not _is_date(start):
            problems.append(f"{where} effective_from: required, a date such as 2026-07-01")
            continue
        if previous is not None and start <= previous:
            problems.append(
                f"{where} effective_from = {start}: must be after the previous version's {previous}"
            )
        previous = start
        tables = {**tables, **{k: entry[k] for k in VERSION_TABLES if k in entry}}
        found: list[str] = []
        built.append(_version(tables, start, "versions.", found))
        named = {k for k in VERSION_TABLES if k in entry}
        if named & {"tou", "energy"}:  # prices, demand windows and sell prices name periods
            named |= {"tou", "energy", "demand", "export"}
        problems.extend(
            f"{p} (in the version from {start})" for p in found if _table_of(p) in named
        )
    return tuple(v for v in built if v is not None)


def _table_of(problem: str) -> str:
    """The version table a problem of a later version is about (``[versions.tax] ...``: tax)."""
    match = re.match(r"^\[{1,2}versions\.(\w+)", problem)
    return match[1] if match else ""


def _version(
    tables: Mapping[str, Any], effective_from: dt.date | None, prefix: str, problems: list[str]
) -> TariffVersion | None:
    before = len(problems)
    tou = tables.get("tou")
    seasons = _seasons(tou, prefix, problems) if tou is not None else None
    # the periods the other tables may name; None when [tou] itself is wrong (its problems are
    # reported, and cross-checks against it would only add invented ones)
    periods: set[str] | None = {ALL_PERIODS}
    if tou is not None:
        periods = (
            {p for s in seasons for sched in s.schedules.values() for p in sched}
            if seasons is not None
            else None
        )
    energy = _energy(tables.get("energy"), periods, tou is not None, prefix, problems)
    fixed = tuple(
        FixedCharge(
            name=_text(t, "name", where, problems) or "",
            amount=_money(t, "amount", where, problems),
            per=cast(Per, _choice(t, "per", ("month", "day"), where, problems, required=True)),
        )
        for where, t in _table_list(tables, "fixed", prefix, {"name", "amount", "per"}, problems)
    )
    minimum = None
    if found := _single_table(tables, "minimum", prefix, {"amount", "per"}, problems):
        where, table = found
        minimum = MinimumCharge(
            amount=_money(table, "amount", where, problems),
            per=cast(Per, _choice(table, "per", ("month", "day"), where, problems, True)),
        )
    demand = tuple(
        _demand(where, t, periods, problems)
        for where, t in _table_list(
            tables, "demand", prefix, {"name", "price", "prices", "tiers_kw", "periods", "months"},
            problems,
        )
    )  # fmt: skip
    levies = tuple(
        Levy(
            name=_text(t, "name", where, problems) or "",
            per_kwh=_money(t, "per_kwh", where, problems),
        )
        for where, t in _table_list(tables, "levies", prefix, {"name", "per_kwh"}, problems)
    )
    tax = None
    if found := _single_table(tables, "tax", prefix, {"name", "percent"}, problems):
        where, table = found
        percent = _money(table, "percent", where, problems)
        if percent > 100:
            problems.append(f"{where} percent = {percent}: at most 100")
        tax = Tax(name=_text(table, "name", where, problems) or "", percent=percent)
    export = _export(tables.get("export"), periods, prefix, problems)
    if len(problems) > before or energy is None:
        return None
    return TariffVersion(
        effective_from=effective_from,
        energy=energy,
        seasons=seasons
        if seasons is not None
        else (
            Season(
                "all-year",
                frozenset(range(1, 13)),
                dict.fromkeys(DAY_TYPES, (ALL_PERIODS,) * SLOTS_PER_DAY),
            ),
        ),
        fixed=fixed,
        minimum=minimum,
        demand=demand,
        levies=levies,
        tax=tax,
        export=export,
    )


def _energy(
    table: Any, periods: set[str] | None, has_tou: bool, prefix: str, problems: list[str]
) -> EnergyCharge | None:
    where = f"[{prefix}energy]"
    if not isinstance(table, dict):
        problems.append(f"{where}: required, a table with prices (e.g. prices = {{ all = 0.5 }})")
        return None
    keys = {"prices", "tiers_kwh", "tier_reset", "tier_year_start", "tier_split", "tier_adders"}
    _unknown_keys(table, keys, where, problems)
    before = len(problems)
    bounds = _increasing(table.get("tiers_kwh", []), f"{where} tiers_kwh", problems)
    prices = _energy_prices(table, len(bounds) + 1, where, problems)
    if prices is not None and periods is not None:
        _check_price_periods(set(prices), periods, has_tou, where, problems)
    reset = _choice(table, "tier_reset", get_args(TierReset), where, problems)
    if bounds and reset is None:
        problems.append(f"{where} tier_reset: required with tiers (monthly, billing_cycle, annual)")
    split = _choice(table, "tier_split", get_args(TierSplit), where, problems) or "pro_rata"
    year_start = (1, 1)
    if "tier_year_start" in table:
        parsed = _month_day(table["tier_year_start"])
        if parsed is None:
            problems.append(
                f"{where} tier_year_start = {table['tier_year_start']!r}: a month and day "
                "'MM-DD' such as '01-01' (not 02-29)"
            )
        else:
            year_start = parsed
        if reset != "annual":
            problems.append(f"{where} tier_year_start: only with tier_reset = 'annual'")
    if len(problems) > before or prices is None:
        return None
    return EnergyCharge(
        prices=prices,
        tiers_kwh=dict.fromkeys(prices, tuple(bounds)),
        tier_reset=cast(TierReset, reset or "monthly"),
        tier_year_start=year_start,
        tier_split=cast(TierSplit, split),
    )


def _energy_prices(
    table: Mapping[str, Any], count: int, where: str, problems: list[str]
) -> dict[str, tuple[Decimal, ...]] | None:
    """``prices`` per period, one per tier: lists as given, single prices plus ``tier_adders``."""
    adders = None
    if "tier_adders" in table:
        adders = _decimals_list(table["tier_adders"], f"{where} tier_adders", problems)
        if adders is not None and len(adders) != count:
            problems.append(f"{where} tier_adders: {len(adders)} values for {count} tiers")
            adders = None
    given = table.get("prices")
    if not isinstance(given, dict) or not given:
        problems.append(f"{where} prices: required, a table period -> price [currency/kWh]")
        return None
    prices: dict[str, tuple[Decimal, ...]] = {}
    for period, value in given.items():
        place = f"{where} prices.{period}"
        if isinstance(value, list):
            values = _decimals_list(value, place, problems)
            if values is not None and len(values) != count:
                problems.append(f"{place}: {len(values)} prices for {count} tiers")
            elif values is not None:
                prices[period] = tuple(values)
            if "tier_adders" in table:
                problems.append(f"{place}: tier_adders apply to a single price, not a list")
        else:
            price = _decimal(value, place, problems, non_negative=True)
            if price is not None:
                prices[period] = tuple(price + a for a in adders) if adders else (price,) * count
        if any(p < 0 for p in prices.get(period, ())):
            problems.append(f"{place}: prices cannot be negative")
    return prices


def _check_price_periods(
    priced: set[str], periods: set[str], has_tou: bool, where: str, problems: list[str]
) -> None:
    if not has_tou and priced != {ALL_PERIODS}:
        problems.append(
            f"{where} prices: without [tou] the one period is 'all' "
            f"(prices = {{ all = ... }}); got {', '.join(sorted(priced))}"
        )
    elif has_tou:
        for period in sorted(priced - periods):
            problems.append(f"{where} prices.{period}: no such period in [tou]")
        for period in sorted(periods - priced):
            problems.append(f"{where} prices: period {period!r} of [tou] has no price")


def _increasing(value: Any, place: str, problems: list[str]) -> list[float]:
    """Tier bounds: positive, strictly increasing numbers."""
    bounds = _numbers(value, place, problems, positive=True)
    if any(b <= a for a, b in itertools.pairwise(bounds)):
        problems.append(f"{place} = {bounds}: tier bounds must increase")
    return bounds


def _seasons(tou: Any, prefix: str, problems: list[str]) -> tuple[Season, ...] | None:
    where = f"[{prefix}tou]"
    if not isinstance(tou, dict) or not isinstance(tou.get("seasons"), list) or not tou["seasons"]:
        problems.append(f"{where}: needs [[tou.seasons]] tables (name, months, day schedules)")
        return None
    _unknown_keys(tou, {"seasons"}, where, problems)
    before = len(problems)
    seasons: list[Season] = []
    month_owner: dict[int, str] = {}
    for number, entry in enumerate(tou["seasons"], start=1):
        if not isinstance(entry, dict):
            problems.append(f"[{prefix}tou.seasons] #{number}: must be a table")
            continue
        name = entry.get("name", f"#{number}")
        place = f"[{prefix}tou.seasons] #{number} ({name})"
        _unknown_keys(entry, {"name", "months", "all", *DAY_TYPES}, place, problems)
        if not isinstance(name, str) or not name:
            problems.append(f"{place} name: required, text")
        months = _months(entry.get("months"), f"{place} months", problems) or []
        for month in months:
            if month in month_owner:
                problems.append(f"{place} months: month {month} is also in {month_owner[month]}")
            month_owner[month] = str(name)
        schedules = _day_schedules(entry, place, problems)
        if schedules is not None:
            seasons.append(Season(str(name), frozenset(months), schedules))
    missing = sorted(set(range(1, 13)) - set(month_owner))
    if missing:
        problems.append(f"[{prefix}tou.seasons]: months {missing} are in no season")
    return tuple(seasons) if len(problems) == before else None


def _day_schedules(
    entry: Mapping[str, Any], place: str, problems: list[str]
) -> dict[DayType, tuple[str, ...]] | None:
    given = {k: entry[k] for k in ("all", *DAY_TYPES) if k in entry}
    if "all" in given and len(given) > 1:
        problems.append(f"{place}: 'all' stands for every day type; do not combine it with others")
        return None
    if "all" not in given and not {"weekday", "weekend"} <= set(given):
        problems.append(f"{place}: needs 'all', or 'weekday' and 'weekend' (and 'holiday')")
        return None
    slots: dict[str, tuple[str, ...]] = {}
    for day_type, schedule in given.items():
        parsed = _schedule(schedule, f"{place} {day_type}", problems)
        if parsed is not None:
            slots[day_type] = parsed
    if len(slots) != len(given):
        return None
    if "all" in slots:
        return dict.fromkeys(DAY_TYPES, slots["all"])
    return {
        "weekday": slots["weekday"],
        "weekend": slots["weekend"],
        "holiday": slots.get("holiday", slots["weekend"]),
    }


def _schedule(schedule: Any, place: str, problems: list[str]) -> tuple[str, ...] | None:
    if not isinstance(schedule, dict) or not schedule:
        problems.append(f"{place}: a table period -> ['HH:MM-HH:MM', ...]")
        return None
    owner: list[str | None] = [None] * SLOTS_PER_DAY
    before = len(problems)
    for period, ranges in schedule.items():
        if not _PERIOD_RE.match(str(period)):
            problems.append(f"{place}: period name {period!r}: lowercase letters, digits and _")
            continue
        if not isinstance(ranges, list) or not ranges:
            problems.append(f"{place} {period}: a list of clock ranges such as ['08:00-22:00']")
            continue
        for text in ranges:
            span = _clock_range(text)
            if span is None:
                problems.append(
                    f"{place} {period}: {text!r} is not a range 'HH:MM-HH:MM' on quarter hours"
                )
                continue
            start, end = span
            slots = (
                range(start, end) if end > start else [*range(start, SLOTS_PER_DAY), *range(end)]
            )
            clashes: dict[str, list[int]] = {}
            for slot in slots:
                if owner[slot] is not None:
                    clashes.setdefault(cast(str, owner[slot]), []).append(slot)
            for other, clash in clashes.items():
                problems.append(f"{place}: {_runs(clash)} is in both {other} and {period}")
            for s in slots:
                owner[s] = owner[s] or str(period)
    uncovered = [s for s, p in enumerate(owner) if p is None]
    if uncovered:
        problems.append(f"{place}: {_runs(uncovered)} is in no period")
    if len(problems) > before:
        return None
    return tuple(cast(str, p) for p in owner)


def _clock_range(text: object) -> tuple[int, int] | None:
    """``'08:00-22:00'`` -> slots (32, 88); the end may be 24:00; None if malformed."""
    if not isinstance(text, str) or text.count("-") != 1:
        return None
    parts = [_TIME_RE.match(p.strip()) for p in text.split("-")]
    slots = []
    for match in parts:
        if match is None:
            return None
        hour, minute = int(match[1]), int(match[2] or 0)
        if hour > 24 or minute >= 60 or minute % SLOT_MINUTES or (hour == 24 and minute):
            return None
        slots.append((hour * 60 + minute) // SLOT_MINUTES)
    start, end = slots
    if start in (SLOTS_PER_DAY, end):
        return None
    return start, end % SLOTS_PER_DAY if end != SLOTS_PER_DAY else SLOTS_PER_DAY


def _runs(slots: Sequence[int]) -> str:
    """Contiguous slot runs as clock ranges: ``'03:00-04:00, 23:00-24:00'``."""
    runs: list[tuple[int, int]] = []
    for s in sorted(slots):
        if runs and runs[-1][1] == s:
            runs[-1] = (runs[-1][0], s + 1)
        else:
            runs.append((s, s + 1))

    def clock(slot: int) -> str:
        minutes = slot * SLOT_MINUTES
        return f"{minutes // 60:02d}:{minutes % 60:02d}"

    return ", ".join(f"{clock(a)}-{clock(b)}" for a, b in runs)


def _demand(
    where: str, table: Mapping[str, Any], periods: set[str] | None, problems: list[str]
) -> DemandCharge:
    name = _text(table, "name", where, problems) or ""
    bounds = _increasing(table.get("tiers_kw", []), f"{where} tiers_kw", problems)
    if ("price" in table) == ("prices" in table):
        problems.append(f"{where}: give either price, or tiers_kw and prices")
        prices: tuple[Decimal, ...] = (Decimal(0),)
    elif "price" in table:
        prices = (_money(table, "price", where, problems),) * (len(bounds) + 1)
    else:
        prices = tuple(_decimals_list(table["prices"], f"{where} prices", problems) or ())
        if len(prices) != len(bounds) + 1:
            problems.append(f"{where} prices: {len(prices)} prices for {len(bounds) + 1} tiers")
        if any(p < 0 for p in prices):
            problems.append(f"{where} prices: demand prices cannot be negative")
    demand_periods = None
    if "periods" in table:
        given = table["periods"]
        if not isinstance(given, list) or not given or not all(isinstance(p, str) for p in given):
            problems.append(f"{where} periods: a list of TOU period names")
        else:
            for period in given:
                if periods is not None and period not in periods:
                    problems.append(f"{where} periods: {period!r} is not a period of the tariff")
            demand_periods = frozenset(given)
    months = None
    if "months" in table:
        given_months = _months(table["months"], f"{where} months", problems)
        months = frozenset(given_months) if given_months is not None else None
    return DemandCharge(name, prices, tuple(bounds), demand_periods, months)


def _export(table: Any, periods: set[str] | None, prefix: str, problems: list[str]) -> ExportRule:
    if table is None:
        return ExportRule()
    where = f"[{prefix}export]"
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table with mode")
        return ExportRule()
    _unknown_keys(table, {"mode", "sell_price", "true_up_month", "true_up_price"}, where, problems)
    mode = cast(
        ExportMode, _choice(table, "mode", get_args(ExportMode), where, problems, True) or "none"
    )
    sell: dict[str, Decimal] = {}
    if mode == "net_billing":
        if "sell_price" not in table:
            problems.append(f"{where} sell_price: required with net_billing [currency/kWh]")
        sell = _sell_prices(table.get("sell_price", 0), periods or set(), where, problems)
    true_up_month = None
    true_up_price = Decimal(0)
    if mode == "net_metering":
        month = table.get("true_up_month")
        if not isinstance(month, int) or isinstance(month, bool) or not 1 <= month <= 12:
            problems.append(f"{where} true_up_month = {month!r}: the month (1-12) of the true-up")
        else:
            true_up_month = month
        true_up_price = _money(table, "true_up_price", where, problems)
    elif "true_up_month" in table or "true_up_price" in table:
        problems.append(f"{where}: true_up_month and true_up_price belong to net_metering")
    if mode != "net_billing" and "sell_price" in table:
        problems.append(f"{where} sell_price: belongs to mode = 'net_billing'")
    return ExportRule(mode, sell, true_up_month, true_up_price)


def _sell_prices(
    given: Any, periods: set[str], where: str, problems: list[str]
) -> dict[str, Decimal]:
    """Net-billing sell prices per period: one number for all periods, or a table."""
    if not isinstance(given, dict):
        price = (
            _decimal(given, f"{where} sell_price", problems, True) if given is not None else None
        )
        return dict.fromkeys(periods, price if price is not None else Decimal(0))
    sell: dict[str, Decimal] = {}
    for period, value in given.items():
        price = _decimal(value, f"{where} sell_price.{period}", problems, True)
        if periods and period not in periods:
            problems.append(f"{where} sell_price.{period}: no such period in the tariff")
        elif price is not None:
            sell[period] = price
    for period in sorted(periods - set(given) if periods else ()):
        problems.append(f"{where} sell_price: period {period!r} has no sell price")
    return sell


# --- small readers: each appends its problem and returns a harmless value -----------------


def _months(value: Any, place: str, problems: list[str]) -> list[int] | None:
    if not isinstance(value, list) or not all(
        isinstance(m, int) and not isinstance(m, bool) and 1 <= m <= 12 for m in value
    ):
        problems.append(f"{place}: a list of months 1-12")
        return None
    return value


def _single_table(
    tables: Mapping[str, Any], key: str, prefix: str, allowed: set[str], problems: list[str]
) -> tuple[str, Mapping[str, Any]] | None:
    """The table ``[key]`` with its place, if given and a table (else its problem)."""
    if key not in tables:
        return None
    where = f"[{prefix}{key}]"
    table = tables[key]
    if not isinstance(table, dict):
        problems.append(f"{where}: must be a table with {' and '.join(sorted(allowed))}")
        return None
    _unknown_keys(table, allowed, where, problems)
    return where, table


def _table_list(
    tables: Mapping[str, Any], key: str, prefix: str, allowed: set[str], problems: list[str]
) -> list[tuple[str, Mapping[str, Any]]]:
    value = tables.get(key, [])
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        problems.append(f"[[{prefix}{key}]]: must be tables")
        return []
    out = []
    for number, table in enumerate(value, start=1):
        where = f"[[{prefix}{key}]] #{number}"
        _unknown_keys(table, allowed, where, problems)
        out.append((where, table))
    return out


def _unknown_keys(
    table: Mapping[str, Any], allowed: set[str] | frozenset[str], where: str, problems: list[str]
) -> None:
    for key in table:
        if key not in allowed:
            problems.append(
                f"{where} {key}: unknown key; allowed here: {', '.join(sorted(allowed))}"
            )


def _text(table: Mapping[str, Any], key: str, where: str, problems: list[str]) -> str | None:
    value = table.get(key)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where} {key}: required, text".replace("(top level) ", ""))
        return None
    return value


def _choice(
    table: Mapping[str, Any],
    key: str,
    allowed: Sequence[str],
    where: str,
    problems: list[str],
    required: bool = False,
) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            problems.append(f"{where} {key}: required, one of {', '.join(allowed)}")
        return None
    if value not in allowed:
        place = f"{where} {key}".replace("(top level) ", "")
        problems.append(f"{place} = {value!r}: one of {', '.join(allowed)}")
        return None
    return str(value)


def _decimal(
    value: Any, place: str, problems: list[str], non_negative: bool = False
) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        problems.append(f"{place} = {value!r}: a number")
        return None
    try:
        number = Decimal(str(value))
    except InvalidOperation:
        problems.append(f"{place} = {value!r}: a number")
        return None
    if not number.is_finite():
        problems.append(f"{place} = {value!r}: a finite number")
        return None
    if number.as_tuple().exponent < -8:  # type: ignore[operator]
        problems.append(f"{place} = {value!r}: at most 8 decimals")
        return None
    if non_negative and number < 0:
        problems.append(f"{place} = {value!r}: cannot be negative")
        return None
    return number


def _money(table: Mapping[str, Any], key: str, where: str, problems: list[str]) -> Decimal:
    if key not in table:
        problems.append(f"{where} {key}: required, a number")
        return Decimal(0)
    value = _decimal(table[key], f"{where} {key}", problems, non_negative=True)
    return value if value is not None else Decimal(0)


def _decimals_list(value: Any, place: str, problems: list[str]) -> list[Decimal] | None:
    if not isinstance(value, list) or not value:
        problems.append(f"{place}: a list of numbers")
        return None
    out = [_decimal(v, f"{place}[{i}]", problems) for i, v in enumerate(value)]
    return None if any(v is None for v in out) else cast(list[Decimal], out)


def _numbers(value: Any, place: str, problems: list[str], positive: bool = False) -> list[float]:
    if not isinstance(value, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value
    ):
        problems.append(f"{place}: a list of numbers")
        return []
    if positive and any(v <= 0 for v in value):
        problems.append(f"{place} = {value}: bounds must be above 0")
    return [float(v) for v in value]


def _is_date(value: object) -> bool:
    return isinstance(value, dt.date) and not isinstance(value, dt.datetime)


def _month_day(value: object) -> tuple[int, int] | None:
    if not isinstance(value, str) or not re.match(r"^\d{2}-\d{2}$", value):
        return None
    month, day = int(value[:2]), int(value[3:])
    try:
        dt.date(2023, month, day)  # a year without 29 February
    except ValueError:
        return None
    return month, day
