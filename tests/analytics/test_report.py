"""The monthly customer report: gathered from lake tables, rendered to one offline HTML page."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest

from meterlake.analytics.report import (
    LANGUAGES,
    Observation,
    ReportData,
    ReportError,
    gather_report,
    observation_text,
    observations,
    render_report,
    report_words,
    shift_saving,
    tou_split,
    write_report,
)
from meterlake.config.errors import UnsafeIdentifierError
from meterlake.config.schemas import (
    ALERTS,
    BILL_LINES,
    BILL_REVIEWS,
    BILLS,
    DAILY_USAGE,
    LOAD_PROFILES,
    METERS,
    TIER_PROGRESS,
    TableSpec,
)
from meterlake.storage.scan import current_bill_versions
from meterlake.storage.writer import write_table
from tests.cli_runner import run_cli

UTC = dt.UTC
METER = "m-0001"
SHORT = "m-0002"
GROUP = "residential-sh"
PERIOD = "2026-10"
FIRST_DAY = dt.date(2024, 11, 1)
LAST_DAY = dt.date(2026, 10, 31)
SLOTS = 96
PEAK_SLOTS = slice(32, 88)  # 08:00-22:00 in quarter-hours
PEAK_RATE, VALLEY_RATE = Decimal("0.56800000"), Decimal("0.28800000")
THRESHOLD = 2760.0
CJK = re.compile(r"[\u4e00-\u9fff]")


# --- builders ----------------------------------------------------------------------------------


def _curve(day: dt.date, rng: np.random.Generator, base_kw: float) -> np.ndarray[Any, Any]:
    """A household day [kW per quarter-hour]: base load, morning and evening peaks, seasons."""
    hours = np.arange(SLOTS) / 4
    season = 1.0 + 0.6 * np.cos((day.timetuple().tm_yday - 200) / 365 * 2 * np.pi) ** 2
    weekend = 1.25 if day.weekday() >= 5 else 1.0
    morning = 0.3 * np.exp(-(((hours - 7.5) / 1.2) ** 2))
    evening = 0.6 * np.exp(-(((hours - 20.0) / 2.0) ** 2))
    midday = 0.25 * weekend * np.exp(-(((hours - 13.0) / 2.5) ** 2))
    noise = rng.gamma(4.0, 0.01, SLOTS)
    return base_kw + season * weekend * (morning + evening) + midday + noise


def daily_rows(
    meter: str,
    days: list[dt.date],
    *,
    base_kw: float = 0.11,
    seed: int = 1,
    curves: bool = True,
    run_id: str = "ana-1",
    computed_at: dt.datetime = dt.datetime(2026, 11, 1, 2, tzinfo=UTC),
) -> pl.DataFrame:
    """``daily_usage`` rows of ``meter`` for ``days``, figures computed from synthetic curves."""
    rng = np.random.default_rng(seed)
    rows: dict[str, list[Any]] = {c: [] for c in DAILY_USAGE.schema}
    for day in days:
        curve = _curve(day, rng, base_kw)
        kwh = curve / 4
        peak = float(kwh[PEAK_SLOTS].sum())
        total = float(kwh.sum())
        values = {
            "meter_id": meter,
            "day": day,
            "timezone": "Asia/Shanghai",
            "interval_minutes": 15,
            "energy_kwh": total,
            "export_kwh": 0.0,
            "peak_kw": float(curve.max()),
            "min_kw": float(curve.min()),
            "mean_kw": float(curve.mean()),
            "load_factor": float(curve.mean() / curve.max()),
            "peak_valley_diff_kw": float(curve.max() - curve.min()),
            "peak_valley_ratio": float((curve.max() - curve.min()) / curve.max()),
            "base_load_kw": float(np.percentile(curve, 5)),
            "energy_peak_kwh": peak,
            "energy_flat_kwh": None,
            "energy_valley_kwh": total - peak,
            "energy_critical_kwh": None,
            "intervals": SLOTS,
            "intervals_estimated": 0,
            "intervals_missing": 0,
            "actual_share": 1.0,
            "curve_kw": [float(v) for v in curve] if curves else None,
            "profile": 1 if day.weekday() >= 5 else 0,
            "run_id": run_id,
            "computed_at": computed_at,
        }
        for column, value in values.items():
            rows[column].append(value)
    return pl.DataFrame(rows, schema=DAILY_USAGE.schema)


def _days(first: dt.date, last: dt.date) -> list[dt.date]:
    return [first + dt.timedelta(days=i) for i in range((last - first).days + 1)]


def meter_rows(*specs: tuple[str, str | None, str | None]) -> pl.DataFrame:
    """``meters`` rows from (meter_id, account, meter_group)."""
    n = len(specs)
    return pl.DataFrame(
        {
            "meter_id": [s[0] for s in specs],
            "account": [s[1] for s in specs],
            "meter_group": [s[2] for s in specs],
            "timezone": ["Asia/Shanghai"] * n,
            "import_only": [True] * n,
            "max_power_kw": [11.0] * n,
            "wrap_kwh": [None] * n,
            "tariff_id": ["cn-zj-residential-tou"] * n,
            "billing_day": [1] * n,
            "tier_year_start": ["01-01"] * n,
            "pv": [False] * n,
            "prepaid": [False] * n,
            "vacant": [False] * n,
            "feeder": ["f-12"] * n,
            "updated_at": [dt.datetime(2026, 1, 1, tzinfo=UTC)] * n,
        },
        schema=METERS.schema,
    )


def write_bill(
    lake: Path,
    meter: str,
    *,
    peak_kwh: float,
    valley_kwh: float,
    version: int = 1,
    status: str = "released",
    hold_reasons: list[str] | None = None,
    bill_id: str | None = None,
) -> tuple[str, Decimal]:
    """A bill of ``PERIOD`` with a peak, a valley and a fixed line; return its id and total."""
    bill_id = bill_id or f"b-{meter}-v{version}"
    amounts = [
        (Decimal(str(round(peak_kwh, 6))) * PEAK_RATE).quantize(Decimal("0.01")),
        (Decimal(str(round(valley_kwh, 6))) * VALLEY_RATE).quantize(Decimal("0.01")),
        Decimal("5.00"),
    ]
    total = sum(amounts, Decimal(0))
    bill = {
        "bill_id": bill_id,
        "meter_id": meter,
        "account": "acc-1001",
        "period": PERIOD,
        "period_start": dt.date(2026, 10, 1),
        "period_end": dt.date(2026, 11, 1),
        "tariff_id": "cn-zj-residential-tou",
        "tariff_version": "1",
        "interval_version": "v1",
        "energy_import_kwh": peak_kwh + valley_kwh,
        "energy_export_kwh": 0.0,
        "billed_import_kwh": peak_kwh + valley_kwh,
        "export_carry_kwh": 0.0,
        "estimated_share": 0.0,
        "intervals": 2976,
        "intervals_estimated": 0,
        "intervals_missing": 0,
        "total_amount": total,
        "adjustment_amount": Decimal(0),
        "currency": "CNY",
        "version": version,
        "supersedes": None if version == 1 else f"b-{meter}-v{version - 1}",
        "status": status,
        "hold_reasons": hold_reasons or [],
        "run_id": "bill-1",
        "issued_at": dt.datetime(2026, 11, 2, version, tzinfo=UTC),
    }
    write_table(lake, BILLS, pl.DataFrame([bill], schema=BILLS.schema))
    lines = pl.DataFrame(
        {
            "line_id": [f"{bill_id}-{i}" for i in (1, 2, 3)],
            "bill_id": [bill_id] * 3,
            "period": [PERIOD] * 3,
            "line_no": [1, 2, 3],
            "kind": ["charge"] * 3,
            "code": ["energy_tier1_peak", "energy_tier1_valley", "fixed"],
            "description": ["第一档 峰时电量", "第一档 谷时电量", "基本费"],
            "quantity": [peak_kwh, valley_kwh, 1.0],
            "unit": ["kWh", "kWh", "month"],
            "rate": [PEAK_RATE, VALLEY_RATE, Decimal(5)],
            "amount": amounts,
            "currency": ["CNY"] * 3,
        },
        schema=BILL_LINES.schema,
    )
    write_table(lake, BILL_LINES, lines)
    return bill_id, total


def build_year_lake(lake: Path) -> dict[str, Any]:
    """Two years of one household, a group of similar homes, profiles, tiers, a bill, alerts;
    and a meter with two days of data. Returns the figures the page must show."""
    write_table(
        lake,
        METERS,
        meter_rows(
            (METER, "acc-1001", GROUP),
            (SHORT, "acc-1002", GROUP),
            *((f"peer-{i}", f"acc-2{i:03d}", GROUP) for i in range(8)),
        ),
    )
    history = daily_rows(METER, _days(FIRST_DAY, LAST_DAY))
    write_table(lake, DAILY_USAGE, history)
    october = _days(dt.date(2026, 10, 1), LAST_DAY)
    for i in range(8):
        peers = daily_rows(f"peer-{i}", october, base_kw=0.05 + 0.03 * i, seed=10 + i, curves=False)
        write_table(lake, DAILY_USAGE, peers)
    write_table(lake, DAILY_USAGE, daily_rows(SHORT, october[-2:], seed=99))

    month = history.filter(pl.col("day") >= dt.date(2026, 10, 1))
    centroids = []
    for cluster in (0, 1):
        curves = np.array(month.filter(pl.col("profile") == cluster)["curve_kw"].to_list())
        mean = curves.mean(axis=0)
        centroids.append([float(v) for v in mean / mean.mean()])
    profiles = pl.DataFrame(
        {
            "scope": ["portfolio", METER, METER],
            "cluster": [0, 0, 1],
            "days": [9000, 22, 9],
            "share": [0.6, 0.71, 0.29],
            "weekday_days": [6000, 22, 0],
            "weekend_days": [3000, 0, 9],
            "mean_energy_kwh": [8.0, None, None],
            "centroid": [centroids[0], centroids[0], centroids[1]],
            "silhouette": [0.4, None, None],
            "range_start": [dt.date(2026, 10, 1)] * 3,
            "range_end": [dt.date(2026, 11, 1)] * 3,
            "run_id": ["ana-1"] * 3,
            "computed_at": [dt.datetime(2026, 11, 1, 3, tzinfo=UTC)] * 3,
        },
        schema=LOAD_PROFILES.schema,
    )
    write_table(lake, LOAD_PROFILES, profiles)

    year = history.filter(pl.col("day") >= dt.date(2026, 1, 1))
    used = float(year["energy_kwh"].sum())
    daily_kwh = float(month["energy_kwh"].mean())  # type: ignore[arg-type]
    crossing = LAST_DAY + dt.timedelta(days=int(np.ceil((THRESHOLD - used) / daily_kwh)))
    tier = {
        "meter_id": METER,
        "as_of": LAST_DAY,
        "tariff_id": "cn-zj-residential-tou",
        "tier_reset": "annual",
        "window_start": dt.date(2026, 1, 1),
        "window_end": dt.date(2027, 1, 1),
        "energy_kwh": used,
        "tier": 1,
        "next_threshold_kwh": THRESHOLD,
        "threshold_share": used / THRESHOLD,
        "daily_kwh": daily_kwh,
        "projected_crossing": crossing,
        "days_to_crossing": (crossing - LAST_DAY).days,
        "run_id": "ana-1",
        "computed_at": dt.datetime(2026, 11, 1, 3, tzinfo=UTC),
    }
    older = dict(tier, as_of=dt.date(2026, 10, 30), threshold_share=0.01, run_id="ana-0")
    write_table(lake, TIER_PROGRESS, pl.DataFrame([older, tier], schema=TIER_PROGRESS.schema))

    peak = float(month["energy_peak_kwh"].sum())
    valley = float(month["energy_valley_kwh"].sum())
    _, total = write_bill(lake, METER, peak_kwh=peak, valley_kwh=valley)

    t = dt.datetime(2026, 10, 12, 12, tzinfo=UTC)
    alerts = pl.DataFrame(
        {
            "alert_id": ["a-jump", "a-jump", "a-night", "a-night", "a-other", "a-feeder"],
            "rule": ["usage_jump", "usage_jump", "night_use", "night_use", "usage_jump", "outage"],
            "severity": ["warning", "warning", "info", "info", "critical", "critical"],
            "meter_id": [METER, METER, METER, METER, "peer-1", "feeder:f-12"],
            "ts": [
                t,
                t + dt.timedelta(days=3),
                t,
                t + dt.timedelta(hours=6),
                t,
                t + dt.timedelta(days=8),
            ],
            "state": ["raised", "renotified", "raised", "resolved", "raised", "raised"],
            "message": [
                "Usage 2.3x your usual for a Monday",
                "Usage 2.3x your usual for a Monday",
                "Night use above your usual",
                None,
                "Another meter's alert",
                "No supply on feeder f-12",
            ],
            "values_json": ["{}"] * 6,
        },
        schema=ALERTS.schema,
    )
    write_table(lake, ALERTS, alerts)
    return {
        "total": total,
        "tier_share": used / THRESHOLD,
        "crossing": crossing,
        "month_kwh": float(month["energy_kwh"].sum()),
        "peak_share": peak / (peak + valley),
    }


@pytest.fixture(scope="module")
def year_lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    from meterlake.storage.layout import init_lake

    lake = init_lake(tmp_path_factory.mktemp("report") / "lake")
    return lake, build_year_lake(lake)


def _text(page: str) -> str:
    """The visible text of a page (scripts and tags removed, whitespace collapsed)."""
    body = re.sub(r"<script.*?</script>", " ", page, flags=re.DOTALL)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", body))


# --- a year of data ----------------------------------------------------------------------------


def test_year_report_shows_every_section_with_the_data(
    year_lake: tuple[Path, dict[str, Any]],
) -> None:
    lake, figures = year_lake
    data = gather_report(lake, METER, PERIOD)
    page = render_report(data, lang="zh")
    text = _text(page)

    for section in ("summary", "observations", "monthly", "daily", "curve", "tou", "tier", "bill"):
        assert f'id="{section}"' in page
    for chart in ("monthly", "daily", "curve", "tou", "tier"):
        assert f'"chart-{chart}"' in page
    assert "2026年10月" in text and METER in text and "acc-1001" in text
    assert f"¥{figures['total']:,.2f}" in text
    assert f"{100 * figures['tier_share']:.0f}%" in text
    assert f"{figures['month_kwh']:,.1f} 度" in text
    assert "峰" in text and "谷" in text and "阶梯" in text and "账单" in text
    assert "第 1 档 峰时段电量" in text and "第 1 档 谷时段电量" in text and "基本费" in text
    # the chosen day is the month's highest-use day, and the page says so
    top = data.daily.sort("energy_kwh", descending=True)["day"][0]
    assert data.day == top and data.day_is_default
    assert f"{top.month}月{top.day}日是本月用电最多的一天" in text
    assert data.typical_source == "profile"
    assert data.typical.height == 96
    # the typical day is the centroid scaled to the month's mean power
    mean_kw = float(data.daily["energy_kwh"].mean()) / 24  # type: ignore[arg-type]
    assert data.typical["power_kw"].mean() == pytest.approx(mean_kw, rel=1e-9)
    # 12 months with the same months last year beside them
    assert data.monthly.height == 12
    assert data.monthly["month"].to_list()[0] == "2025-11"
    assert data.monthly["last_year_kwh"].null_count() == 0
    # open alerts of this meter and its feeder, newest first; not the resolved one, not another
    # meter's
    assert data.alerts["alert_id"].to_list() == ["a-feeder", "a-jump"]
    assert "No supply on feeder f-12" in text and "紧急" in text
    assert "Usage 2.3x your usual for a Monday" in text
    assert "Night use" not in text
    # the latest tier progress as of the month's end
    assert data.tier["run_id"].to_list() == ["ana-1"]
    assert 3 <= len(observations(data)) <= 5
    assert "第 2 档" in text


def test_year_report_in_english(year_lake: tuple[Path, dict[str, Any]]) -> None:
    lake, figures = year_lake
    page = render_report(gather_report(lake, METER, PERIOD), lang="en")
    text = _text(page)
    assert '<html lang="en">' in page
    assert "October 2026" in text and "Your bill" in text and "Peak" in text
    assert f"¥{figures['total']:,.2f}" in text
    # every label is translated, energy lines too: the only Chinese left is the tariff's own
    # name of its fixed charge
    assert CJK.findall(text) == ["基", "本", "费"]
    assert "Peak energy, tier 1" in text and "Valley energy, tier 1" in text


def test_every_language_has_every_word() -> None:
    zh = report_words("zh")
    for lang in LANGUAGES:
        words = report_words(lang)
        assert set(words.labels) == set(zh.labels)
        assert set(words.sentences) == set(zh.sentences)
        assert set(words.units) == set(zh.units)


def test_the_page_is_self_contained(year_lake: tuple[Path, dict[str, Any]]) -> None:
    lake, _ = year_lake
    page = render_report(gather_report(lake, METER, PERIOD))
    # no script, style sheet, image or font is loaded from elsewhere: every script tag is
    # inline, and outside the scripts no attribute or CSS names a URL
    assert set(re.findall(r"<script\b[^>]*>", page)) == {"<script>"}
    markup = re.sub(r"<script>.*?</script>", "", page, flags=re.DOTALL)
    assert not re.search(r"<link\b", markup)
    assert not re.search(r"(https?:)?//[a-z]", markup)
    assert "@import" not in markup and "url(" not in markup
    # plotly.js inline exactly once; every chart uses it
    assert page.count("plotly.js v") == 1
    assert page.count('class="chart"') == 5
    assert page.count("Plotly.newPlot(") == 1
    assert 3_000_000 < len(page.encode()) < 7_000_000


def test_observations_of_the_year(year_lake: tuple[Path, dict[str, Any]]) -> None:
    lake, figures = year_lake
    data = gather_report(lake, METER, PERIOD)
    found = {o.kind: o.values for o in observations(data, limit=10)}
    assert set(found) >= {"yoy", "peers_usage", "base_load", "peak_share", "tier_crossing"}
    assert found["peak_share"]["pct"] == pytest.approx(100 * figures["peak_share"])
    saving = 31 * float(PEAK_RATE - VALLEY_RATE)
    assert found["peak_share"]["saving"] == pytest.approx(saving)
    assert found["tier_crossing"]["date"] == figures["crossing"]
    assert found["base_load"]["homes"] == 8


# --- little data -------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["zh", "en"])
def test_two_days_of_data_say_so_instead_of_charting(
    year_lake: tuple[Path, dict[str, Any]], lang: str
) -> None:
    lake, _ = year_lake
    data = gather_report(lake, SHORT, PERIOD)
    page = render_report(data, lang=lang)  # type: ignore[arg-type]
    text = _text(page)
    t = report_words(lang).labels  # type: ignore[arg-type]
    assert t["no_monthly"] in text
    assert t["no_daily"].format(days=2) in text
    assert t["no_typical"] in text
    assert t["no_tier"] in text
    assert "No supply on feeder f-12" in text  # its feeder's alert; its own has none
    assert ("的账单尚未出具" if lang == "zh" else "No bill for October 2026 yet") in text
    assert '"chart-monthly"' not in page and '"chart-tier"' not in page
    assert '"chart-curve"' in page  # the day itself has a curve
    assert {o.kind for o in observations(data)} <= {"peak_share"}


def test_a_meter_with_master_data_only(lake: Path) -> None:
    write_table(lake, METERS, meter_rows(("m-9", None, None)))
    page = render_report(gather_report(lake, "m-9", PERIOD), lang="en")
    text = _text(page)
    t = report_words("en").labels
    assert t["no_curve_month"] in text
    assert t["no_observations"] in text
    assert t["no_tou"] in text
    assert t["no_alerts"] in text
    assert "Plotly.newPlot(" not in page and "plotly.js v" not in page


# --- observations on hand-made figures ----------------------------------------------------------


def _data(**changes: Any) -> ReportData:
    """A ReportData with empty frames, for observation tests."""
    empty_daily = daily_rows(METER, []).drop("meter_id")
    base: dict[str, Any] = {
        "meter_id": METER,
        "period": PERIOD,
        "period_start": dt.date(2026, 10, 1),
        "period_end": dt.date(2026, 11, 1),
        "account": None,
        "meter_group": GROUP,
        "timezone": "Asia/Shanghai",
        "monthly": pl.DataFrame(
            {
                "month": [PERIOD],
                "energy_kwh": [None],
                "days": [None],
                "last_year_kwh": [None],
                "last_year_days": [None],
            },
            schema={
                "month": pl.String(),
                "energy_kwh": pl.Float64(),
                "days": pl.UInt32(),
                "last_year_kwh": pl.Float64(),
                "last_year_days": pl.UInt32(),
            },
        ),
        "daily": empty_daily,
        "day": None,
        "day_is_default": True,
        "curve": pl.DataFrame(schema={"hour": pl.Float64(), "power_kw": pl.Float64()}),
        "typical": pl.DataFrame(schema={"hour": pl.Float64(), "power_kw": pl.Float64()}),
        "typical_source": None,
        "peers": pl.DataFrame(
            schema={
                "meter_id": pl.String(),
                "days": pl.UInt32(),
                "energy_kwh_per_day": pl.Float64(),
                "base_load_kw": pl.Float64(),
            }
        ),
        "tier": pl.DataFrame(schema=TIER_PROGRESS.schema),
        "bill": pl.DataFrame(schema=BILLS.schema),
        "bill_lines": pl.DataFrame(schema=BILL_LINES.schema),
        "alerts": pl.DataFrame(schema=ALERTS.schema),
    }
    base.update(changes)
    return ReportData(**base)


def _peers(base_loads: list[float], energy: list[float], days: int = 31) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "meter_id": [METER, *(f"p{i}" for i in range(len(base_loads) - 1))],
            "days": [days] * len(base_loads),
            "energy_kwh_per_day": energy,
            "base_load_kw": base_loads,
        },
        schema={
            "meter_id": pl.String(),
            "days": pl.UInt32(),
            "energy_kwh_per_day": pl.Float64(),
            "base_load_kw": pl.Float64(),
        },
    )


def test_base_load_rank_among_the_group() -> None:
    # mine 0.18 kW; others 0.10, 0.12, 0.15, 0.20, 0.30: 3 of 5 lower, 2 higher
    peers = _peers([0.18, 0.10, 0.12, 0.15, 0.20, 0.30], [9.0, 5.0, 6.0, 7.0, 8.0, 12.0])
    found = {o.kind: o for o in observations(_data(peers=peers))}
    base = found["base_load"].values
    assert base == {"watts": pytest.approx(180.0), "below_pct": 60.0, "above_pct": 40.0, "homes": 5}
    assert observation_text(found["base_load"], "en") == (
        "Your always-on (base) load is about 180 W, higher than 60% of similar homes."
    )
    assert observation_text(found["base_load"], "zh") == (
        "家中持续在用的基础负荷约 180 瓦，高于 60% 的同类家庭。"
    )
    usage = found["peers_usage"].values
    assert usage["median_kwh_per_day"] == 7.0
    assert usage["change_pct"] == pytest.approx(100 * 2 / 7)
    # a high base load gets a hint of what to check; a low one is said the other way round;
    # the extremes by name
    others = [0.1, 0.12, 0.15, 0.2, 0.3]
    expected = {
        0.25: "about 250 W, higher than 80% of similar homes. Standby devices, an old fridge",
        0.5: "about 500 W, the highest of 5 similar homes. Standby devices",
        0.13: "about 130 W, lower than 60% of similar homes.",
        0.05: "about 50 W, the lowest of 5 similar homes.",
    }
    for mine, sentence in expected.items():
        peers = _peers([mine, *others], [9.0] * 6)
        (text,) = [
            observation_text(o, "en")
            for o in observations(_data(peers=peers))
            if o.kind == "base_load"
        ]
        assert sentence in text


def test_no_rank_with_too_few_homes_or_days() -> None:
    few = _peers([0.18, 0.1, 0.12, 0.15, 0.2], [9.0] * 5)
    assert not [o for o in observations(_data(peers=few)) if o.kind == "base_load"]
    short = _peers([0.18, 0.1, 0.12, 0.15, 0.2, 0.3], [9.0] * 6, days=3)
    assert observations(_data(peers=short)) == ()


def test_year_on_year_compares_daily_averages() -> None:
    monthly = _data().monthly.with_columns(
        energy_kwh=pl.lit(310.0),
        days=pl.lit(31, pl.UInt32),
        last_year_kwh=pl.lit(250.0),
        last_year_days=pl.lit(25, pl.UInt32),
    )
    (yoy,) = observations(_data(monthly=monthly))
    assert yoy.kind == "yoy"
    assert yoy.values["change_pct"] == pytest.approx(0.0)  # 10 kWh a day both times
    assert "about the same as in October 2025" in observation_text(yoy, "en")
    monthly = monthly.with_columns(last_year_kwh=pl.lit(200.0))
    (yoy,) = observations(_data(monthly=monthly))
    assert yoy.values["change_pct"] == pytest.approx(25.0)
    assert observation_text(yoy, "zh") == (
        "本月日均用电 10.0 度，比去年同月（2025年10月，日均 8.0 度）多 25%。"
    )


def test_peak_share_and_the_saving_of_shifting_to_the_valley() -> None:
    daily = daily_rows(METER, _days(dt.date(2026, 10, 1), dt.date(2026, 10, 10)))
    lines = pl.DataFrame(
        {
            "line_id": ["1", "2", "3", "4"],
            "bill_id": ["b"] * 4,
            "period": [PERIOD] * 4,
            "line_no": [1, 2, 3, 4],
            "kind": ["charge"] * 4,
            "code": [
                "energy_tier1_peak",
                "energy_tier1_valley",
                "energy_tier2_peak",
                "energy_tier2_valley",
            ],
            "description": [None] * 4,
            "quantity": [10.0, 5.0, 1.0, 1.0],
            "unit": ["kWh"] * 4,
            "rate": [Decimal("0.568"), Decimal("0.288"), Decimal("0.618"), Decimal("0.338")],
            "amount": [Decimal(1)] * 4,
            "currency": ["CNY"] * 4,
        },
        schema=BILL_LINES.schema,
    )
    assert shift_saving(lines) == (0.618, 0.338)  # the highest tier billed: the marginal rates
    bill = pl.DataFrame([{"currency": "CNY"}], schema={"currency": pl.String()})
    data = _data(daily=daily, bill_lines=lines, bill=bill)
    (share,) = [o for o in observations(data) if o.kind == "peak_share"]
    split = tou_split(daily)
    assert share.values["pct"] == pytest.approx(100 * split["peak"] / sum(split.values()))
    assert share.values["saving"] == pytest.approx(31 * 0.28)
    assert "saves about ¥8.68 a month" in observation_text(share, "en")
    # no rates on the bill: the share only
    (share,) = [o for o in observations(_data(daily=daily)) if o.kind == "peak_share"]
    assert "saving" not in share.values
    # a flat tariff: no split, no observation
    flat = daily.with_columns(
        energy_flat_kwh=pl.col("energy_kwh"), energy_peak_kwh=None, energy_valley_kwh=None
    )
    assert tou_split(flat) == {}
    assert not [o for o in observations(_data(daily=flat)) if o.kind == "peak_share"]


@pytest.mark.parametrize(
    ("code", "description", "zh", "en"),
    [
        (
            "energy_tier2_valley",
            "energy valley, tier 2",
            "第 2 档 谷时段电量",
            "Valley energy, tier 2",
        ),
        ("energy_critical_peak", "energy critical_peak", "尖峰时段电量", "Critical peak energy"),
        ("energy_tier3", "energy, tier 3", "第 3 档电量", "Energy, tier 3"),
        ("energy", "energy", "电量电费", "Energy"),
        ("energy_summer_on_peak", "energy summer_on_peak", "energy summer_on_peak", None),
        ("fixed", "基本电费", "基本电费", None),
    ],
)
def test_bill_line_names(code: str, description: str, zh: str, en: str | None) -> None:
    from meterlake.analytics.report import _line_label

    assert _line_label(code, description, "zh") == zh
    assert _line_label(code, description, "en") == (en or zh)


def test_observation_sentences_exist_in_both_languages() -> None:
    examples = [
        Observation("estimated", {"pct": 23.0}),
        Observation("tier_top", {"tier": 3}),
        Observation("tier_safe", {"tier": 1, "next_tier": 2, "threshold_kwh": 2760.0}),
        Observation("top_day", {"date": dt.date(2026, 10, 3), "kwh": 21.25, "ratio": 2.4}),
    ]
    for observation in examples:
        assert CJK.search(observation_text(observation, "zh"))
        assert not CJK.search(observation_text(observation, "en"))
    assert observation_text(examples[1], "en") == "You are in the highest tier (tier 3)."
    with pytest.raises(ValueError, match="unknown observation"):
        observation_text(Observation("nonsense"), "en")


# --- lake semantics ----------------------------------------------------------------------------


def test_latest_figures_bill_versions_and_reviews(lake: Path) -> None:
    write_table(lake, METERS, meter_rows((METER, "acc-1001", None)))
    days = _days(dt.date(2026, 10, 1), dt.date(2026, 10, 5))
    write_table(lake, DAILY_USAGE, daily_rows(METER, days, seed=1))
    later = daily_rows(
        METER, days[:1], seed=2, run_id="ana-2", computed_at=dt.datetime(2026, 11, 5, tzinfo=UTC)
    ).with_columns(energy_kwh=pl.lit(99.0))
    write_table(lake, DAILY_USAGE, later)
    write_bill(lake, METER, peak_kwh=10.0, valley_kwh=5.0)
    bill_id, total = write_bill(
        lake,
        METER,
        peak_kwh=12.0,
        valley_kwh=5.0,
        version=2,
        status="held",
        hold_reasons=["total 2.4x the same month last year", "new tariff"],
    )
    data = gather_report(lake, METER, PERIOD)
    assert data.daily.filter(pl.col("day") == days[0])["energy_kwh"].to_list() == [99.0]
    assert data.day == days[0]
    assert data.bill["bill_id"].to_list() == [bill_id]
    assert data.bill_lines["line_no"].to_list() == [1, 2, 3]
    text = _text(render_report(data, lang="zh"))
    assert "账单审核中：total 2.4x the same month last year；new tariff" in text
    assert f"¥{total:,.2f}" in text
    # a review releases it
    review = pl.DataFrame(
        [
            {
                "bill_id": bill_id,
                "period": PERIOD,
                "action": "released",
                "note": None,
                "reviewer": "li.wei",
                "reviewed_at": dt.datetime(2026, 11, 3, tzinfo=UTC),
            }
        ],
        schema=BILL_REVIEWS.schema,
    )
    write_table(lake, BILL_REVIEWS, review)
    data = gather_report(lake, METER, PERIOD)
    assert data.bill["status"].to_list() == ["released"]
    text = _text(render_report(data, lang="en"))
    assert "Held for review" not in text and "released after review" in text


def test_current_bill_versions_match_the_catalogue_view(
    lake: Path, table_sample: Callable[[TableSpec], pl.DataFrame]
) -> None:
    from meterlake.storage.catalog import connect_catalog

    sample_frame = table_sample
    write_table(lake, BILLS, sample_frame(BILLS))
    write_table(lake, BILL_REVIEWS, sample_frame(BILL_REVIEWS))
    ours = (
        current_bill_versions(
            pl.scan_parquet(str(lake / "bills" / "**" / "*.parquet"), hive_partitioning=False),
            pl.scan_parquet(
                str(lake / "bill_reviews" / "**" / "*.parquet"), hive_partitioning=False
            ),
        )
        .select("bill_id", "status")
        .sort("bill_id")
        .collect()
        .rows()
    )
    with connect_catalog(lake) as con:
        view = con.execute("SELECT bill_id, status FROM bills_current ORDER BY bill_id").fetchall()
    assert ours == view


def test_a_chosen_day(year_lake: tuple[Path, dict[str, Any]]) -> None:
    lake, _ = year_lake
    data = gather_report(lake, METER, PERIOD, day=dt.date(2026, 10, 3))
    assert data.day == dt.date(2026, 10, 3) and not data.day_is_default
    assert data.curve.height == 96
    assert "3 Oct 2026: " in _text(render_report(data, lang="en"))


def test_bad_input_is_refused_clearly(year_lake: tuple[Path, dict[str, Any]]) -> None:
    lake, _ = year_lake
    with pytest.raises(ReportError, match="unknown to this lake"):
        gather_report(lake, "m-nope", PERIOD)
    with pytest.raises(ReportError, match=r"'2026-13' is not a month YYYY-MM"):
        gather_report(lake, METER, "2026-13")
    with pytest.raises(ReportError, match="not in period 2026-10"):
        gather_report(lake, METER, PERIOD, day=dt.date(2026, 11, 1))
    with pytest.raises(UnsafeIdentifierError):
        gather_report(lake, "../etc", PERIOD)
    with pytest.raises(ReportError, match="language 'fr'"):
        write_report(lake, METER, PERIOD, lake / "x.html", lang="fr")  # type: ignore[arg-type]


# --- the command -------------------------------------------------------------------------------


def test_cli_writes_the_page(year_lake: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    lake, figures = year_lake
    out = tmp_path / "reports" / "m-0001-2026-10.html"
    result = run_cli(
        "report",
        "--lake",
        lake,
        "--meter",
        METER,
        "--period",
        PERIOD,
        "--out",
        out,
        "--lang",
        "en",
        "--day",
        "2026-10-03",
    )
    assert result.returncode == 0, result.stderr
    assert str(out) in result.stdout
    text = _text(out.read_text(encoding="utf-8"))
    assert "3 Oct 2026" in text and f"¥{figures['total']:,.2f}" in text

    unknown = run_cli("report", "--lake", lake, "--meter", "m-x", "--period", PERIOD, "--out", out)
    assert unknown.returncode == 2
    assert "m-x" in unknown.stderr and "unknown to this lake" in unknown.stderr
