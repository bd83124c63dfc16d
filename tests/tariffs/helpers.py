"""Helpers the tariff tests share: test tariff files and money rounded as bills round it."""

from __future__ import annotations

import textwrap
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from meterlake.tariffs.model import Tariff
from meterlake.tariffs.registry import load_tariff_file

CENT = Decimal("0.01")


def cents(amount: Decimal) -> Decimal:
    """Round once to the cent, half up (the tariffs' default)."""
    return amount.quantize(CENT, rounding=ROUND_HALF_UP)


def write_tariff(
    directory: Path, tariff_id: str, body: str, timezone: str = "Asia/Shanghai"
) -> Tariff:
    """A native TOML tariff file ``<directory>/<tariff_id>.toml`` (the header made up, ``body``
    the charges), loaded."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{tariff_id}.toml"
    header = f"""
        id = "{tariff_id}"
        name = "test tariff {tariff_id}"
        currency = "{"EUR" if timezone.startswith("Europe") else "CNY"}"
        timezone = "{timezone}"
        source = "tests/tariffs"
    """
    path.write_text(textwrap.dedent(header) + textwrap.dedent(body), encoding="utf-8")
    return load_tariff_file(path)


def money(value: float) -> Decimal:
    """A JSON amount (float) back as Decimal cents."""
    return Decimal(str(value)).quantize(CENT)


RATE = Decimal("0.5283")
FIXED = Decimal("10.00")
FLAT = f"""
    [energy]
    prices = {{ all = {RATE} }}

    [[fixed]]
    name = "service charge"
    amount = {FIXED}
    per = "month"
"""
"""A flat test tariff's charges: ``RATE`` per kWh and ``FIXED`` a month (a header is added by
:func:`write_tariff`)."""
