"""Regenerate ``tests/data/sam/parity_fixture.json``: NREL SAM's monthly bills for URDB rates.

Dev-only. It needs NREL-PySAM (``pip install nrel-pysam``, which meterlake does not depend on)
and nothing of meterlake, so it runs in a separate environment::

    python3 -m venv /tmp/pysam-venv && /tmp/pysam-venv/bin/pip install nrel-pysam
    /tmp/pysam-venv/bin/python scripts/sam_parity_fixture.py            # rewrite the fixture
    /tmp/pysam-venv/bin/python scripts/sam_parity_fixture.py --out -    # print it instead

For each case, the URDB rate goes through NREL's own converter
(``PySAM.UtilityRateTools.URDBv8_to_ElectricityRates``) into ``Utilityrate5``, which bills one
simulated year of the formula load (:func:`load_kw`: 8760 hourly kW values, 365 days, 1 January
a Monday, no DST, no holidays). The fixture keeps the rate, the SAM inputs the converter made,
the load's formula parameters with a SHA-256 of the values, and SAM's monthly charges without a
system (``charge_wo_sys_*_ym``, year 1). ``tests/tariffs/test_sam_parity.py`` bills the same load
under the same rate with meterlake (2018 in UTC: a year that starts on a Monday) and compares.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)
LOAD = {
    "formula": (
        "kw[i] = round(MF[month] * (1 + ramp * ((i * 7) % 13) / 12"
        " + (evening_kw if evening[0] <= hour <= evening[1] else 0)), 6);"
        " i = hour of the year 0..8759, 365 days, 1 January a Monday"
    ),
    "MF": [1.2, 1.1, 1.0, 0.5, 0.3, 0.9, 1.3, 1.4, 1.0, 0.6, 0.9, 1.2],
    "ramp": 0.5,
    "evening_kw": 1.5,
    "evening": [17, 20],
}
"""The load: a monthly factor times a 13-hour saw tooth plus an evening bump [kW]."""
OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "sam" / "parity_fixture.json"
SAM_OUTPUTS = {
    "energy": "charge_wo_sys_ec_ym",
    "dc_flat": "charge_wo_sys_dc_fixed_ym",
    "dc_tou": "charge_wo_sys_dc_tou_ym",
    "fixed": "charge_wo_sys_fixed_ym",
    "minimum": "charge_wo_sys_minimum_ym",
    "bill": "utility_bill_wo_sys_ym",
}


def load_kw(params: dict[str, Any]) -> list[float]:
    """The 8760 hourly loads [kW] (= kWh per hour) of the formula in ``params``."""
    out: list[float] = []
    first, last = params["evening"]
    for month, days in enumerate(MONTH_DAYS):
        for _day in range(days):
            for hour in range(24):
                i = len(out)
                bump = params["evening_kw"] if first <= hour <= last else 0.0
                kw = params["MF"][month] * (1.0 + params["ramp"] * ((i * 7) % 13) / 12 + bump)
                out.append(round(kw, 6))
    return out


def load_digest(load: Sequence[float]) -> str:
    """SHA-256 of the loads written as JSON (Python's shortest float repr)."""
    return hashlib.sha256(json.dumps(list(load)).encode()).hexdigest()


def _rows(by_hour: Any) -> list[list[int]]:
    """A 12 x 24 schedule from ``by_hour(month0, hour) -> period``."""
    return [[by_hour(m, h) for h in range(24)] for m in range(12)]


def cases() -> list[dict[str, Any]]:
    """The URDB rates billed (rate objects as in the API's ``items``)."""
    evening = _rows(lambda m, h: 1 if 16 <= h <= 20 else 0)
    nm = {
        "label": "meterlake-parity-nm",
        "name": "Parity: 2 TOU periods x 2 monthly tiers (+adj), flat demand blocks, min",
        "utility": "meterlake test",
        "energyratestructure": [
            [{"max": 500, "unit": "kWh", "rate": 0.10, "adj": 0.01}, {"rate": 0.15, "adj": 0.01}],
            [{"max": 500, "unit": "kWh", "rate": 0.20, "adj": 0.02}, {"rate": 0.30, "adj": 0.02}],
        ],
        "energyweekdayschedule": evening,
        "energyweekendschedule": copy.deepcopy(evening),
        "flatdemandstructure": [[{"max": 3, "rate": 6.0}, {"rate": 4.0}]],
        "flatdemandmonths": [0] * 12,
        "flatdemandunit": "kW",
        "fixedchargefirstmeter": 10.0,
        "fixedchargeunits": "$/month",
        "mincharge": 150.0,
        "minchargeunits": "$/month",
        "dgrules": "Net Metering",
    }
    summer = range(5, 9)  # June-September, 0-based months
    energy_weekday = _rows(lambda m, h: 2 if m in summer else (1 if 17 <= h <= 20 else 0))
    energy_weekend = _rows(lambda m, h: 2 if m in summer else 0)
    demand_weekday = _rows(lambda m, h: 1 if 12 <= h <= 18 else 0)
    nb = {
        "label": "meterlake-parity-nb",
        "name": "Parity: net billing, chronological tiers, seasonal bounds, TOU + flat demand",
        "utility": "meterlake test",
        "energyratestructure": [
            [{"max": 600, "rate": 0.09, "adj": 0.005, "sell": 0.03}, {"rate": 0.13, "sell": 0.03}],
            [{"max": 600, "rate": 0.21, "sell": 0.05}, {"rate": 0.27, "adj": -0.01, "sell": 0.05}],
            [{"max": 900, "rate": 0.12, "sell": 0.04}, {"rate": 0.18, "sell": 0.04}],
        ],
        "energyweekdayschedule": energy_weekday,
        "energyweekendschedule": energy_weekend,
        "demandratestructure": [
            [{"max": 2, "rate": 1.0}, {"rate": 1.5}],
            [{"max": 2, "rate": 8.0, "adj": 0.25}, {"rate": 6.0}],
        ],
        "demandweekdayschedule": demand_weekday,
        "demandweekendschedule": _rows(lambda m, h: 0),
        "demandrateunit": "kW",
        "flatdemandstructure": [[{"rate": 3.0}], [{"max": 2, "rate": 4.0}, {"rate": 5.0}]],
        "flatdemandmonths": [1 if m in summer else 0 for m in range(12)],
        "flatdemandunit": "kW",
        "fixedchargefirstmeter": 12.5,
        "fixedchargeunits": "$/month",
        "mincharge": 120.0,
        "minchargeunits": "$/month",
        "dgrules": "Net Billing Instantaneous",
    }
    return [{"name": "nm_tou_tiers_flat_demand", "urdb": nm}, {"name": "nb_seasonal", "urdb": nb}]


def bill(urdb: dict[str, Any], load: list[float]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """SAM's inputs for ``urdb`` and its year-1 monthly charges without a system."""
    from PySAM import Utilityrate5  # type: ignore[import-not-found]  # noqa: PLC0415
    from PySAM.UtilityRateTools import (  # type: ignore[import-not-found]  # noqa: PLC0415
        URDBv8_to_ElectricityRates,
    )

    # the converter adds 1 to the schedules in place: give it a copy
    rates = URDBv8_to_ElectricityRates(copy.deepcopy(urdb))
    model = Utilityrate5.new()
    model.Lifetime.analysis_period = 1
    model.Lifetime.system_use_lifetime_output = 0
    model.Lifetime.inflation_rate = 0
    model.SystemOutput.degradation = [0]
    model.SystemOutput.gen = [0.0] * len(load)
    model.Load.load = load
    model.Load.load_escalation = [0]
    model.ElectricityRates.rate_escalation = [0]
    model.ElectricityRates.assign(rates)
    model.execute(0)
    monthly = {k: list(getattr(model.Outputs, v)[1]) for k, v in SAM_OUTPUTS.items()}
    return rates, monthly


def build() -> dict[str, Any]:
    """The whole fixture."""
    from importlib.metadata import version  # noqa: PLC0415

    from PySAM.PySSC import PySSC  # type: ignore[import-not-found]  # noqa: PLC0415

    load = load_kw(LOAD)
    out_cases = []
    for case in cases():
        rates, monthly = bill(case["urdb"], load)
        out_cases.append({**case, "sam_inputs": rates, "expected_monthly": monthly})
    return {
        "generator": "scripts/sam_parity_fixture.py",
        "pysam": f"nrel-pysam {version('nrel-pysam')} (ssc {PySSC().version()})",
        "year": "SAM: 8760 hours, 365 days, 1 January a Monday, no DST, no holidays",
        "load": {**LOAD, "sha256": load_digest(load), "total_kwh": round(sum(load), 6)},
        "cases": out_cases,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(OUT), help="file to write, or - for stdout")
    args = parser.parse_args(argv)
    fixture = build()
    text = json.dumps(fixture, indent=1) + "\n"
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(text, encoding="utf-8")
        for case in fixture["cases"]:
            bills = case["expected_monthly"]["bill"]
            sys.stderr.write(f"{case['name']}: annual bill {sum(bills):.4f}\n")
        sys.stderr.write(f"wrote {args.out}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
