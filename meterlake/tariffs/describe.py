"""A tariff as text a person checks it by: a summary and the hour x day-type price grid.

>>> from meterlake.tariffs.registry import shipped_tariffs
>>> text = describe_tariff(shipped_tariffs()["cn-zj-residential-tou"])
>>> "hour" in text and "weekday" in text
True
"""

from __future__ import annotations

from meterlake.tariffs.model import (
    DAY_TYPES,
    SLOTS_PER_DAY,
    Season,
    Tariff,
    TariffVersion,
)

_SLOTS_PER_HOUR = SLOTS_PER_DAY // 24


def describe_tariff(tariff: Tariff) -> str:
    """Summary lines, then for each version and season the price of the first tier of the
    period in force at each hour (``*``: the period changes within the hour)."""
    lines = [
        f"{tariff.id}: {tariff.name}",
        f"  currency {tariff.currency} ({tariff.decimals} decimals, {tariff.rounding}), "
        f"local time {tariff.timezone}, fingerprint {tariff.fingerprint}",
        f"  source: {tariff.source.strip().splitlines()[0]}",
    ]
    if tariff.holidays:
        lines.append(
            f"  holidays: {len(tariff.holidays)} dates, "
            f"{min(tariff.holidays)} .. {max(tariff.holidays)}"
        )
    for index, version in enumerate(tariff.versions):
        lines.append("")
        lines.extend(_version_lines(index, version))
    return "\n".join(lines)


def _version_lines(index: int, version: TariffVersion) -> list[str]:
    start = version.effective_from.isoformat() if version.effective_from else "the beginning"
    energy = version.energy
    out = [f"version {index + 1}, from {start}:"]
    if energy.tiered:
        bounds = next(iter(energy.tiers_kwh.values()))
        out.append(
            f"  tiers (kWh, reset {energy.tier_reset}, split {energy.tier_split}): "
            + ", ".join(f"{b:g}" for b in bounds)
            + (
                f"; tier year from {energy.tier_year_start[0]:02d}-{energy.tier_year_start[1]:02d}"
                if energy.tier_reset == "annual"
                else ""
            )
        )
    for period, prices in energy.prices.items():
        out.append(f"  energy {period}: " + " / ".join(str(p) for p in prices) + " per kWh")
    for fee in version.fixed:
        out.append(f"  fixed {fee.name}: {fee.amount} per {fee.per}")
    if version.minimum is not None:
        out.append(f"  minimum: {version.minimum.amount} per {version.minimum.per}")
    for charge in version.demand:
        where = ", ".join(sorted(charge.periods)) if charge.periods else "all hours"
        months = f", months {sorted(charge.months)}" if charge.months else ""
        tiers = (
            f" (blocks up to {', '.join(f'{b:g}' for b in charge.tiers_kw)} kW)"
            if (charge.tiers_kw)
            else ""
        )
        rates = " / ".join(str(p) for p in charge.prices)
        out.append(f"  demand {charge.name}: {rates} per kW in {where}{months}{tiers}")
    for levy in version.levies:
        out.append(f"  levy {levy.name}: {levy.per_kwh} per kWh")
    if version.tax is not None:
        out.append(f"  tax {version.tax.name}: {version.tax.percent}%")
    if version.export.mode != "none":
        rule = version.export
        detail = (
            ", ".join(f"{p} {v}" for p, v in rule.sell_prices.items())
            if rule.mode == "net_billing"
            else f"true-up in month {rule.true_up_month} at {rule.true_up_price}"
        )
        out.append(f"  export: {rule.mode} ({detail})")
    for season in version.seasons:
        out.extend(_grid(season, version))
    return out


def _grid(season: Season, version: TariffVersion) -> list[str]:
    months = ",".join(str(m) for m in sorted(season.months))
    width = 22
    out = [
        f"  season {season.name} (months {months}):",
        "    hour  " + "".join(f"{d:<{width}}" for d in DAY_TYPES),
    ]
    for hour in range(24):
        cells = []
        for day_type in DAY_TYPES:
            slots = season.schedules[day_type][
                hour * _SLOTS_PER_HOUR : (hour + 1) * _SLOTS_PER_HOUR
            ]
            period = slots[0]
            mark = "*" if len(set(slots)) > 1 else ""
            cells.append(f"{period} {version.energy.prices[period][0]}{mark}"[: width - 1])
        out.append(f"    {hour:02d}    " + "".join(f"{c:<{width}}" for c in cells))
    return out
