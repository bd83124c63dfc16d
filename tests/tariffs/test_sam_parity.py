"""Recorded parity with NREL SAM: a year of hourly load billed under URDB rates by PySAM and by
meterlake, month by month.

``tests/data/sam/parity_fixture.json`` comes from ``scripts/sam_parity_fixture.py`` (run it with
NREL-PySAM to regenerate): the URDB rates, the load's formula (its values are rebuilt here and
checked against the recorded SHA-256) and SAM's monthly charges. SAM rounds nothing and meterlake
rounds each line to the cent, so a charge is compared before rounding (the sum of its lines'
quantity x rate) and must be within half a cent of SAM's (SAM's float sums such as
2.7 + 8.325 = 11.024999... rule out comparing rounded cents); the minimum is what meterlake's
minimum line would be on those unrounded charges.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest

from meterlake.tariffs.urdb import parse_urdb
from tests.tariffs.test_urdb import bill, intervals, total, unrounded

REPO = Path(__file__).resolve().parents[2]
FIXTURE = REPO / "tests" / "data" / "sam" / "parity_fixture.json"
GENERATOR = REPO / "scripts" / "sam_parity_fixture.py"
PERIODS = [f"2018-{m:02d}" for m in range(1, 13)]
"""2018 starts on a Monday and has 365 days, like SAM's year; the rates' hours are UTC."""
HALF_CENT = Decimal("0.005")
MONTHS = ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")


def _fixture() -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(FIXTURE.read_text(encoding="utf-8")))


def _generator() -> Any:
    """The fixture script as a module, for its load formula (it imports PySAM only to run)."""
    spec = importlib.util.spec_from_file_location("sam_parity_fixture", GENERATOR)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def load_kwh() -> list[float]:
    """The recorded load [kWh per hour], rebuilt from its formula and checked."""
    fixture, generator = _fixture(), _generator()
    load_kw = cast(Callable[[dict[str, Any]], list[float]], generator.load_kw)
    load = load_kw(fixture["load"])
    assert len(load) == 8760
    assert generator.load_digest(load) == fixture["load"]["sha256"]
    return load


@pytest.mark.parametrize("case", _fixture()["cases"], ids=lambda c: str(c["name"]))
def test_monthly_charges_equal_sams_to_the_cent(
    case: dict[str, Any], load_kwh: list[float]
) -> None:
    tariff = parse_urdb(case["urdb"], tariff_id=case["name"].replace("_", "-"), source=str(FIXTURE))
    frames = bill(tariff, intervals(load_kwh), PERIODS)
    sam = case["expected_monthly"]
    mismatches = []
    for m, period in enumerate(PERIODS):
        charged = {
            "energy": unrounded(frames, period, "energy"),
            "demand": unrounded(frames, period, "demand"),
            "fixed": unrounded(frames, period, "fixed"),
        }
        # meterlake's minimum tops up the rounded lines; on unrounded charges it would be
        # min_adjustment + (rounded - unrounded) of the lines it tops up
        rounded = sum((total(frames, period, p) for p in charged), Decimal(0))
        minimum = total(frames, period, "min_adjustment")
        if minimum:
            minimum += rounded - sum(charged.values(), Decimal(0))
        ours = {**charged, "minimum": minimum}
        theirs = {
            "energy": sam["energy"][m],
            "demand": sam["dc_flat"][m] + sam["dc_tou"][m],
            "fixed": sam["fixed"][m],
            "minimum": sam["minimum"][m],
        }
        mismatches += [
            f"{MONTHS[m]} {what}: meterlake {ours[what]:.4f}, SAM {theirs[what]:.4f}"
            for what in theirs
            if abs(ours[what] - Decimal(repr(theirs[what]))) >= HALF_CENT
        ]
    assert mismatches == []
