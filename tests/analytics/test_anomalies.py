"""Anomaly scores: each rule on hand-made days, then on a simulated fleet with injected anomalies
(simulator -> lake -> VEE -> analysis), where every injected kind must be found on its days and
hardly any ordinary day flagged."""

from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import polars as pl
import pytest

from meterlake.analytics.analysis_job import run_analysis
from meterlake.analytics.anomalies import (
    SIGNALS_SCHEMA,
    AnomalyRules,
    score_anomalies,
    zero_day_candidates,
)
from meterlake.analytics.vee_job import run_vee
from meterlake.config.schemas import METERS, READINGS
from meterlake.config.settings import Settings
from meterlake.ingest.simulator import (
    FleetSpec,
    simulate_anomalies,
    simulate_meter_records,
    simulate_readings,
)
from meterlake.storage.layout import init_lake
from meterlake.storage.writer import write_table

D0 = dt.date(2026, 9, 1)  # a Tuesday


def days(
    meter: str, energies: list[float], *, curve: list[float] | None = None, **extra: Any
) -> pl.DataFrame:
    """Whole 15-minute days of ``meter`` from D0 with the given energies [kWh]."""
    n = len(energies)
    flat = [[e * 4 / 96] * 96 if curve is None else curve for e in energies]
    # a realistic, non-flat curve with the day's energy unless one is given
    shape = np.linspace(0.5, 1.5, 96)
    curves = flat if curve is not None else [(shape * e * 4 / 96).tolist() for e in energies]
    frame = pl.DataFrame(
        {
            "meter_id": [meter] * n,
            "day": [D0 + dt.timedelta(days=i) for i in range(n)],
            "interval_minutes": [15] * n,
            "intervals": [96] * n,
            "intervals_missing": [0] * n,
            "energy_kwh": energies,
            "export_kwh": [0.0] * n,
            "curve_kw": curves,
            "actual_share": [1.0] * n,
        },
        schema_overrides={"intervals": pl.Int32, "intervals_missing": pl.Int32},
    )
    frame = frame.with_columns(
        mean_kw=pl.col("curve_kw").list.mean(),
        peak_kw=pl.col("curve_kw").list.max(),
        base_load_kw=pl.col("curve_kw").list.min(),
    ).with_columns(load_factor=pl.col("mean_kw") / pl.col("peak_kw"))
    return frame.with_columns(**{k: pl.lit(v) for k, v in extra.items()})


def steady(n: int = 28, level: float = 10.0, seed: int = 1) -> list[float]:
    rng = np.random.default_rng(seed)
    return (level * rng.uniform(0.9, 1.1, n)).round(2).tolist()


def meters_of(*ids: str, **flags: bool) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "meter_id": list(ids),
            "import_only": [flags.get("import_only", False)] * len(ids),
            "vacant": [flags.get("vacant", False)] * len(ids),
        }
    )


def day_row(scores: pl.DataFrame, meter: str, index: int) -> dict[str, Any]:
    return scores.filter(
        pl.col("meter_id") == meter, pl.col("day") == D0 + dt.timedelta(days=index)
    ).row(0, named=True)


def test_ordinary_days_score_low_and_carry_no_reason() -> None:
    scores = score_anomalies(days("m1", steady()), meters_of("m1"))
    assert scores.height == 28
    assert scores["kinds"].list.len().sum() == 0
    assert scores["reasons"].list.len().sum() == 0
    assert scores["score"].max() < 0.5


def test_a_surge_against_like_days_is_scored_and_explained() -> None:
    energies = steady()
    energies[21] = 40.0  # a Tuesday, against the Tuesdays to Fridays before it
    scores = score_anomalies(days("m1", energies), meters_of("m1"))
    row = day_row(scores, "m1", 21)
    assert row["kinds"][0] == "surge"  # (the isolation forest may agree: a small fleet)
    assert row["baseline_kwh"] == pytest.approx(10.0, rel=0.1)
    assert row["robust_z"] > 4
    assert row["score"] > 0.8
    assert row["reasons"][0].startswith("used 40.0 kWh, 4.")
    assert row["reasons"][0].endswith("for a weekday")


def test_a_single_low_day_is_a_drop_but_a_partial_day_is_not() -> None:
    energies = steady()
    energies[15] = 1.0
    energies[22] = 1.0
    frame = days("m1", energies).with_columns(
        intervals_missing=pl.when(pl.col("day") == D0 + dt.timedelta(days=22))
        .then(pl.lit(60, dtype=pl.Int32))
        .otherwise(pl.col("intervals_missing"))
    )
    scores = score_anomalies(frame, meters_of("m1"))
    assert day_row(scores, "m1", 15)["kinds"][0] == "drop"
    assert "drop" not in day_row(scores, "m1", 22)["kinds"]


def test_a_partial_day_of_an_ordinary_meter_has_no_z_and_scores_low() -> None:
    # day 22 lost 60 of its 96 intervals and holds only the energy of the other 36: no z (so
    # no surge, drop or z term in the score), at most the isolation forest's capped score
    energies = steady()
    energies[22] = round(energies[22] * 36 / 96, 2)
    frame = days("m1", energies).with_columns(
        intervals_missing=pl.when(pl.col("day") == D0 + dt.timedelta(days=22))
        .then(pl.lit(60, dtype=pl.Int32))
        .otherwise(pl.col("intervals_missing"))
    )
    rules = AnomalyRules()
    scores = score_anomalies(frame, meters_of("m1"), rules=rules)
    partial = day_row(scores, "m1", 22)
    assert partial["robust_z"] is None
    assert partial["baseline_kwh"] == pytest.approx(10.0, rel=0.1)
    assert not {"surge", "drop"} & set(partial["kinds"])
    assert partial["score"] < rules.isolation_weight
    assert partial["score"] == pytest.approx(partial["isolation"] * rules.isolation_weight)


@pytest.mark.parametrize(
    "rules",
    [AnomalyRules(), AnomalyRules(reference_days=45), AnomalyRules(like_days=12)],
    ids=["default", "longer-reference", "more-like-days"],
)
def test_history_days_is_all_the_history_the_rules_see(rules: AnomalyRules) -> None:
    # use rising for 72 days, then a sustained drop from two days before the first scored day
    # (a Saturday: the like days reach furthest back from a weekend day, the reference window
    # from a drop's third day): with exactly history_days of history the scored days get the
    # baselines and reference levels they get with all of it, and one day less changes them
    first = 74
    assert (D0 + dt.timedelta(days=first)).weekday() == 5
    noise = np.random.default_rng(3).uniform(0.9, 1.1, first - 2)
    rising = np.linspace(10.0, 30.0, first - 2) * noise
    daily = days("m1", [*rising.round(2).tolist(), *[3.0] * 9])
    scored = pl.col("day") >= D0 + dt.timedelta(days=first)

    def rules_see(history_days: int) -> pl.DataFrame:
        cut = daily.filter(pl.col("day") >= D0 + dt.timedelta(days=first - history_days))
        return (
            score_anomalies(cut, meters_of("m1"), rules=rules)
            .filter(scored)
            .select(
                "baseline_kwh",
                "robust_z",
                # the sustained drop's reason names the reference level (not the isolation's)
                pl.col("reasons").list.eval(pl.element().filter(pl.element().str.contains("fell"))),
            )
        )

    full = rules_see(first)
    assert full["reasons"].list.len().sum() >= 4
    assert rules_see(rules.history_days).equals(full)
    assert not rules_see(rules.history_days - 1).equals(full)


def test_a_sustained_drop_is_flagged_from_when_it_has_lasted() -> None:
    energies = steady(36)
    energies[24:] = [e * 0.25 for e in energies[24:]]
    scores = score_anomalies(days("m1", energies), meters_of("m1"))
    flagged = [i for i in range(36) if "sustained_drop" in day_row(scores, "m1", i)["kinds"]]
    # the recent median (5 days) crosses half the reference on the drop's third day
    assert flagged == list(range(26, 36))
    reason = next(r for r in day_row(scores, "m1", 30)["reasons"] if r.startswith("use fell to"))
    assert reason.startswith("use fell to 2") and reason.endswith("and stayed there")


def test_zero_energy_with_voltage_and_power_present_is_tamper_but_an_outage_is_not() -> None:
    energies = steady()
    energies[20] = energies[21] = 0.0
    daily = days("m1", energies)
    candidates = zero_day_candidates(daily)
    assert candidates["day"].to_list() == [D0 + dt.timedelta(days=20), D0 + dt.timedelta(days=21)]
    signals = pl.DataFrame(
        {
            "meter_id": ["m1", "m1"],
            "day": candidates["day"],
            "voltage_v": [221.0, 0.0],  # day 21: the supply was off
            "max_power_w": [1800.0, 0.0],
        },
        schema=SIGNALS_SCHEMA,
    )
    scores = score_anomalies(daily, meters_of("m1"), signals)
    tamper = day_row(scores, "m1", 20)
    assert "zero_with_voltage" in tamper["kinds"]
    assert tamper["score"] >= 0.95
    assert "(221 V)" in " ".join(tamper["reasons"])
    assert "zero_with_voltage" not in day_row(scores, "m1", 21)["kinds"]


def test_export_on_an_import_only_meter_is_reverse_energy() -> None:
    energies = steady()
    daily = pl.concat(
        [
            days("m1", energies).with_columns(
                export_kwh=pl.when(pl.col("day") >= D0 + dt.timedelta(days=25))
                .then(6.5)
                .otherwise(0.0)
            ),
            days("pv", energies, export_kwh=6.5),
        ]
    )
    meters = pl.concat([meters_of("m1", import_only=True), meters_of("pv")])
    scores = score_anomalies(daily, meters)
    assert "reverse_energy" in day_row(scores, "m1", 25)["kinds"]
    assert "reverse_energy" not in day_row(scores, "m1", 24)["kinds"]
    assert not any(
        "reverse_energy" in k for k in scores.filter(pl.col("meter_id") == "pv")["kinds"]
    )


def test_a_flat_lined_day_is_a_stuck_register_unless_it_was_estimated() -> None:
    energies = steady()
    daily = days("m1", energies)
    stuck = [0.4] * 96
    daily = daily.with_columns(
        curve_kw=pl.when(pl.col("day") >= D0 + dt.timedelta(days=24))
        .then(pl.lit(stuck))
        .otherwise(pl.col("curve_kw")),
        actual_share=pl.when(pl.col("day") == D0 + dt.timedelta(days=27))
        .then(0.0)
        .otherwise(pl.col("actual_share")),
    )
    scores = score_anomalies(daily, meters_of("m1"))
    assert "flat_line" in day_row(scores, "m1", 24)["kinds"]
    assert "flat_line" not in day_row(scores, "m1", 23)["kinds"]
    assert "flat_line" not in day_row(scores, "m1", 27)["kinds"]  # VEE's estimate, not the meter


def test_use_on_a_vacant_meter() -> None:
    daily = pl.concat([days("v1", steady(level=5.0)), days("v2", [0.2] * 28)])
    scores = score_anomalies(daily, meters_of("v1", "v2", vacant=True))
    assert all("vacant_use" in k for k in scores.filter(pl.col("meter_id") == "v1")["kinds"])
    assert scores.filter(pl.col("meter_id") == "v2")["kinds"].list.len().sum() == 0


def test_isolation_is_seeded_and_bounded() -> None:
    daily = pl.concat([days(f"m{i}", steady(seed=i)) for i in range(20)])
    first = score_anomalies(daily, meters_of(*[f"m{i}" for i in range(20)]))
    second = score_anomalies(daily, meters_of(*[f"m{i}" for i in range(20)]))
    assert first["isolation"].to_list() == second["isolation"].to_list()
    assert first["isolation"].is_between(0.0, 1.0).all()
    other = score_anomalies(
        daily, meters_of(*[f"m{i}" for i in range(20)]), rules=AnomalyRules(seed=7)
    )
    assert other["isolation"].to_list() != first["isolation"].to_list()


# --- a simulated fleet with injected anomalies --------------------------------------------------

FLEET = FleetSpec(
    meters=60,
    start=dt.datetime(2026, 9, 1, tzinfo=dt.UTC),
    days=28,
    seed=11,
    anomaly_share=0.2,
)


@pytest.fixture(scope="module")
def fleet_scores(tmp_path_factory: pytest.TempPathFactory) -> pl.DataFrame:
    root = init_lake(tmp_path_factory.mktemp("anomalies") / "lake")
    write_table(root, READINGS, simulate_readings(FLEET))
    write_table(root, METERS, simulate_meter_records(FLEET, dt.datetime(2026, 8, 1, tzinfo=dt.UTC)))
    now = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    run_vee(root, Settings(), run_id="vee-1", now=now)
    result = run_analysis(root, dt.date(2026, 9, 1), dt.date(2026, 9, 30), run_id="ana-1", now=now)
    return result.scores


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind",
    ["surge", "sustained_drop", "zero_with_voltage", "reverse_energy", "flat_line", "vacant_use"],
)
def test_every_injected_kind_is_found_on_its_days(fleet_scores: pl.DataFrame, kind: str) -> None:
    truth = simulate_anomalies(FLEET).filter(pl.col("kind") == kind)
    assert truth.height >= 1
    on_days = fleet_scores.join(truth.select("meter_id", "first_day", "last_day"), on="meter_id")
    inside = on_days.filter(pl.col("day").is_between("first_day", "last_day"))
    # the last local day is partial: the simulation starts at midnight UTC
    whole = inside.filter(pl.col("day") < dt.date(2026, 9, 29))
    # a sustained drop is a drop on its first days and sustained from its third on
    names = ["drop", kind] if kind == "sustained_drop" else [kind]
    found = whole.filter(pl.col("kinds").list.eval(pl.element().is_in(names)).list.any())
    assert found.height / whole.height >= 0.9, (kind, found.height, whole.height)
    if kind == "sustained_drop":
        third_day_on = whole.filter(pl.col("day") >= pl.col("first_day") + dt.timedelta(days=2))
        assert third_day_on["kinds"].list.contains(kind).all()
    assert found["score"].min() >= 0.6


@pytest.mark.slow
def test_ordinary_meter_days_are_hardly_ever_flagged(fleet_scores: pl.DataFrame) -> None:
    anomalous = simulate_anomalies(FLEET)["meter_id"]
    ordinary = fleet_scores.filter(~pl.col("meter_id").is_in(anomalous.to_list()))
    flagged = ordinary.filter(pl.col("kinds").list.len() > 0)
    assert flagged.height / ordinary.height < 0.02, flagged.select("meter_id", "day", "reasons")
