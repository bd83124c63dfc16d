"""Shared fixtures: a fresh lake, frame builders for every table and a subprocess runner."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from meterlake.config.schemas import (
    ALERT_DELIVERIES,
    ALERTS,
    ANOMALY_SCORES,
    BILL_LINES,
    BILL_REVIEWS,
    BILLS,
    DAILY_USAGE,
    INTERVALS,
    LOAD_PROFILES,
    METER_EVENTS,
    METERS,
    QUARANTINE,
    READINGS,
    TABLES,
    TIER_PROGRESS,
    VEE_RUNS,
    Quality,
    TableSpec,
)
from meterlake.storage.layout import init_lake

UTC = dt.UTC
T0 = dt.datetime(2026, 10, 1, tzinfo=UTC)
"""A fixed start for test data: 2026-10-01 00:00 UTC."""

REPO = Path(__file__).resolve().parent.parent

ReadingsFactory = Callable[..., pl.DataFrame]


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    """An empty lake made by ``init_lake``."""
    return init_lake(tmp_path / "lake")


def make_readings(
    meters: Sequence[str] = ("m-0001", "m-0002"),
    *,
    days: int = 1,
    start: dt.datetime = T0,
    step: dt.timedelta = dt.timedelta(hours=1),
    quantities: Sequence[str] = ("energy_import_kwh", "power_w"),
    source: str = "modbus:gw1",
    received_delay: dt.timedelta = dt.timedelta(seconds=5),
) -> pl.DataFrame:
    """A valid readings frame: every meter x quantity x time step for ``days`` UTC days.

    Values are deterministic and distinct per row; the cumulative energy grows with time.
    """
    steps = int(dt.timedelta(days=days) / step)
    rows: dict[str, list[Any]] = {c: [] for c in READINGS.schema}
    for m, meter in enumerate(meters):
        for q, quantity in enumerate(quantities):
            for i in range(steps):
                ts = start + i * step
                rows["meter_id"].append(meter)
                rows["ts"].append(ts)
                rows["quantity"].append(quantity)
                rows["value"].append(1000.0 * m + 0.25 * i + q / 7)
                rows["quality"].append([])
                rows["source"].append(source)
                rows["received_at"].append(ts + received_delay)
    return pl.DataFrame(rows, schema=READINGS.schema)


@pytest.fixture(scope="session")
def readings_factory() -> ReadingsFactory:
    """:func:`make_readings`, as a fixture (session-scoped, so hypothesis tests may use it)."""
    return make_readings


def sample_frame(table: TableSpec) -> pl.DataFrame:
    """A small, realistic frame of ``table`` spanning two partitions, with nulls where allowed.

    Rows are unique on the table's dedup key.
    """
    frames: dict[str, dict[str, list[Any]]] = {
        READINGS.name: {
            "meter_id": ["SDM630-0001", "SDM630-0001", "dtsu666:17", "dtsu666:17", "m.3_a"],
            "ts": [
                T0,
                T0 + dt.timedelta(minutes=15),
                T0 + dt.timedelta(hours=23, minutes=59, seconds=59, microseconds=999_999),
                T0 + dt.timedelta(days=1),
                T0 + dt.timedelta(days=1, hours=3),
            ],
            "quantity": [
                "energy_import_kwh",
                "energy_import_t2_kwh",
                "voltage_l1_v",
                "power_w",
                "balance",
            ],
            "value": [12345.678, 0.001, 229.7, float("nan"), None],
            "quality": [
                [],
                [Quality.ESTIMATED.value],
                [Quality.CLOCK_INVALID.value, Quality.OUT_OF_RANGE.value],
                [Quality.INVALID_VALUE.value],
                None,
            ],
            "source": ["modbus:gw1/sdm630@1", "modbus:gw1/sdm630@1", "mqtt:tele/dtsu", None, "x"],
            "received_at": [
                T0 + dt.timedelta(seconds=2),
                T0 + dt.timedelta(minutes=15, seconds=1),
                T0 + dt.timedelta(days=1, seconds=3),
                None,
                T0 + dt.timedelta(days=3),
            ],
        },
        INTERVALS.name: {
            "meter_id": ["m-1", "m-1", "m-2", "m-2"],
            "interval_start": [
                T0 - dt.timedelta(minutes=15),
                T0,
                T0,
                T0 + dt.timedelta(days=40),
            ],
            "interval_minutes": [15, 15, 30, 60],
            "energy_import_kwh": [0.125, 0.25, None, 1.5],
            "energy_export_kwh": [0.0, None, 0.75, 0.0],
            "status": ["actual", "estimated", "missing", "edited"],
            "flags": [[], ["gap_fill_linear"], ["missing_reads", "clock_invalid"], None],
            "method": [None, "linear", None, "manual"],
            "version": [1, 2, 1, 3],
            "run_id": ["run-a", "run-b", "run-a", None],
        },
        BILLS.name: {
            "bill_id": ["b-9f3a", "b-7c21", "b-7c22"],
            "meter_id": ["m-1", "m-2", "m-2"],
            "period": ["2026-09", "2026-10", "2026-10"],
            "period_start": [dt.date(2026, 9, 1), dt.date(2026, 10, 1), dt.date(2026, 10, 1)],
            "period_end": [dt.date(2026, 9, 30), dt.date(2026, 10, 31), dt.date(2026, 10, 31)],
            "tariff_id": ["cn-sh-residential", "flat", "flat"],
            "tariff_version": ["2026.1", "1", "2"],
            "interval_version": ["v3", "v1", "v2"],
            "account": ["acc-7", None, None],
            "energy_import_kwh": [312.5, 88.0, 90.25],
            "energy_export_kwh": [None, 12.5, 12.5],
            "billed_import_kwh": [312.5, 75.5, 77.75],
            "export_carry_kwh": [0.0, 0.0, None],
            "estimated_share": [0.0, 0.125, None],
            "intervals": [2880, 2976, 2976],
            "intervals_estimated": [0, 372, 0],
            "intervals_missing": [0, 0, None],
            "total_amount": [Decimal("193.7500"), Decimal("-0.0100"), Decimal("1234567.8901")],
            "adjustment_amount": [Decimal(0), Decimal(0), Decimal("1234567.9001")],
            "currency": ["CNY", "EUR", "EUR"],
            "version": [1, 1, 2],
            "supersedes": [None, None, "b-7c21"],
            "status": ["released", "released", "held"],
            "hold_reasons": [[], [], ["total 2.4x the same month last year"]],
            "run_id": ["bill-1", "bill-1", None],
            "issued_at": [
                T0 + dt.timedelta(hours=2),
                T0 + dt.timedelta(days=31),
                T0 + dt.timedelta(days=35),
            ],
        },
        BILL_LINES.name: {
            "line_id": ["l-1", "l-2", "l-3"],
            "bill_id": ["b-9f3a", "b-9f3a", "b-7c21"],
            "period": ["2026-09", "2026-09", "2026-10"],
            "line_no": [1, 2, 1],
            "kind": ["charge", "charge", "adjustment"],
            "code": ["energy_tier2_peak", "fixed", "export_credit"],
            "description": ["第二档 峰时电量", "Fixed charge", None],
            "quantity": [120.5, 1.0, -12.5],
            "unit": ["kWh", "month", "kWh"],
            "rate": [Decimal("0.61700000"), Decimal("5.00000000"), Decimal("0.12345678")],
            "amount": [Decimal("74.3485"), Decimal("5.0000"), Decimal("-1.5432")],
            "currency": ["CNY", "CNY", None],
        },
        ALERTS.name: {
            "alert_id": ["a-1", "a-1", "a-2"],
            "rule": ["usage_jump", "usage_jump", "meter_offline"],
            "severity": ["warning", "warning", "critical"],
            "meter_id": ["m-1", "m-1", "m-2"],
            "ts": [T0, T0 + dt.timedelta(hours=5), T0 + dt.timedelta(days=1)],
            "state": ["raised", "resolved", "raised"],
            "message": ["usage 3.2x the usual", None, "no reading for 2 h"],
            "values_json": ['{"ratio": 3.2}', None, "{}"],
        },
        QUARANTINE.name: {
            "received_at": [T0, T0 + dt.timedelta(days=1, minutes=1), T0 + dt.timedelta(days=1)],
            "source": ["mqtt:tele/shelly/1", "mqtt:zigbee2mqtt/plug", "import:readings.csv"],
            "reason": ["not JSON", "unknown field 'enrgy'", "empty payload"],
            "payload": [b"\x00\xff\xfe garbage", b'{"enrgy": 1}', b""],
        },
        METERS.name: {
            "meter_id": ["m-1", "m-2", "m-1"],
            "account": ["acc-7", None, "acc-7"],
            "meter_group": ["residential", None, "residential"],
            "timezone": ["Asia/Shanghai", None, "Europe/Berlin"],
            "import_only": [True, None, False],
            "max_power_kw": [11.0, None, 23.0],
            "wrap_kwh": [99999.99, None, None],
            "tariff_id": ["cn-sh-residential", None, "cn-sh-residential"],
            "billing_day": [1, None, 15],
            "tier_year_start": ["01-01", None, "07-01"],
            "pv": [False, None, True],
            "prepaid": [False, True, None],
            "vacant": [None, False, False],
            "feeder": ["f-12", None, "f-12"],
            "updated_at": [T0, T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=30)],
        },
        METER_EVENTS.name: {
            "meter_id": ["m-1", "m-2"],
            "ts": [T0 + dt.timedelta(hours=3), T0 + dt.timedelta(days=2)],
            "kind": ["replacement", "reset"],
            "note": ["new DDSU666, old one burnt", None],
            "recorded_at": [T0 + dt.timedelta(days=3), None],
        },
        VEE_RUNS.name: {
            "run_id": ["vee-a", "vee-b"],
            "started_at": [T0, T0 + dt.timedelta(days=1)],
            "mode": ["range", "incremental"],
            "range_start": [T0 - dt.timedelta(days=2), None],
            "range_end": [T0, None],
            "meters": [300, 0],
            "read_watermark": [T0, None],
            "rows_written": [28_800, 0],
        },
        ALERT_DELIVERIES.name: {
            "alert_id": ["a-1", "a-1"],
            "state": ["raised", "resolved"],
            "ts": [T0, T0 + dt.timedelta(hours=5)],
            "sink": ["mqtt", "webhook"],
            "delivered_at": [T0 + dt.timedelta(seconds=1), T0 + dt.timedelta(days=1)],
        },
        DAILY_USAGE.name: {
            "meter_id": ["m-1", "m-2"],
            "day": [dt.date(2026, 10, 1), dt.date(2026, 11, 1)],
            "timezone": ["Asia/Shanghai", "Europe/Berlin"],
            "interval_minutes": [15, 60],
            "energy_kwh": [7.25, None],
            "export_kwh": [0.0, 1.5],
            "peak_kw": [2.4, None],
            "min_kw": [0.12, None],
            "mean_kw": [0.302, None],
            "load_factor": [0.126, None],
            "peak_valley_diff_kw": [2.28, None],
            "peak_valley_ratio": [0.95, None],
            "base_load_kw": [0.15, None],
            "energy_peak_kwh": [4.5, None],
            "energy_flat_kwh": [None, None],
            "energy_valley_kwh": [2.75, None],
            "energy_critical_kwh": [None, None],
            "intervals": [96, 25],
            "intervals_estimated": [3, 0],
            "intervals_missing": [0, 25],
            "actual_share": [0.96875, 0.0],
            "curve_kw": [[0.1, 0.2, 2.4], None],
            "profile": [2, None],
            "run_id": ["ana-1", "ana-2"],
            "computed_at": [T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=32)],
        },
        ANOMALY_SCORES.name: {
            "meter_id": ["m-1", "m-2"],
            "day": [dt.date(2026, 10, 1), dt.date(2026, 11, 2)],
            "score": [0.93, 0.02],
            "kinds": [["surge", "isolation"], []],
            "reasons": [["use 3.1x its usual for a Thursday", "unlike the fleet's days"], None],
            "energy_kwh": [21.7, 6.0],
            "baseline_kwh": [7.0, None],
            "robust_z": [9.4, None],
            "isolation": [0.81, 0.4],
            "run_id": ["ana-1", "ana-1"],
            "computed_at": [T0 + dt.timedelta(days=2), T0 + dt.timedelta(days=2)],
        },
        LOAD_PROFILES.name: {
            "scope": ["portfolio", "m-1"],
            "cluster": [0, 0],
            "days": [9000, 30],
            "share": [0.5, 1.0],
            "weekday_days": [6000, 21],
            "weekend_days": [3000, 9],
            "mean_energy_kwh": [7.2, None],
            "centroid": [[0.5, 1.5], [0.4, 1.6]],
            "silhouette": [0.41, None],
            "range_start": [dt.date(2026, 10, 1), None],
            "range_end": [dt.date(2026, 11, 1), None],
            "run_id": ["ana-1", "ana-1"],
            "computed_at": [T0 + dt.timedelta(days=2), T0 + dt.timedelta(days=3)],
        },
        TIER_PROGRESS.name: {
            "meter_id": ["m-1", "m-2"],
            "as_of": [dt.date(2026, 10, 31), dt.date(2026, 11, 1)],
            "tariff_id": ["cn-zj-residential-tiered", None],
            "tier_reset": ["annual", "monthly"],
            "window_start": [dt.date(2026, 1, 1), None],
            "window_end": [dt.date(2027, 1, 1), None],
            "energy_kwh": [2500.5, 0.0],
            "tier": [1, 1],
            "next_threshold_kwh": [2760.0, None],
            "threshold_share": [0.906, None],
            "daily_kwh": [8.1, None],
            "projected_crossing": [dt.date(2026, 12, 2), None],
            "days_to_crossing": [32, None],
            "run_id": ["ana-1", "ana-1"],
            "computed_at": [T0 + dt.timedelta(days=31), T0 + dt.timedelta(days=31)],
        },
        BILL_REVIEWS.name: {
            "bill_id": ["b-7c22", "b-9f3a"],
            "period": ["2026-10", "2026-09"],
            "action": ["released", "released"],
            "note": ["checked with the customer: new heat pump", None],
            "reviewer": ["li.wei", None],
            "reviewed_at": [T0 + dt.timedelta(days=36), T0 + dt.timedelta(days=37)],
        },
    }
    assert set(frames) == set(TABLES), "a table was added: give it a sample frame"
    return pl.DataFrame(frames[table.name], schema=table.schema)


@pytest.fixture(scope="session")
def table_sample() -> Callable[[TableSpec], pl.DataFrame]:
    """:func:`sample_frame`, as a fixture."""
    return sample_frame


def run_python(
    code: str, *args: str, timeout: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (``sys.argv[1:]`` = ``args``); return the result."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"subprocess failed ({result.returncode}):\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def python_runner() -> Callable[..., subprocess.CompletedProcess[str]]:
    """:func:`run_python`, as a fixture."""
    return run_python


def popen_python(code: str, *args: str) -> subprocess.Popen[str]:
    """Start ``code`` in a fresh interpreter without waiting; stdout is a text pipe."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


@pytest.fixture
def python_popen() -> Any:
    """Start subprocesses with :func:`popen_python`; any still running at teardown are killed."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str, *args: str) -> subprocess.Popen[str]:
        proc = popen_python(code, *args)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)
