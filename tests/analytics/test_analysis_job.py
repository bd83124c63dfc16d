"""Analysis runs on a simulated lake (20 meters, 10 local days, VEE done): what a run writes,
that its energy is the current intervals' by local day, the split by tariff period with the
catalogue tariffs, the catalogue views after a second run, the default range, and the CLI."""

from __future__ import annotations

import datetime as dt
import re
import shutil
from pathlib import Path

import polars as pl
import pytest

from meterlake.analytics import analysis_job
from meterlake.analytics.analysis_job import (
    AnalysisResult,
    Classifier,
    default_range,
    run_analysis,
)
from meterlake.analytics.anomalies import AnomalyRules
from meterlake.analytics.vee_job import run_vee
from meterlake.config.schemas import (
    ANOMALY_SCORES,
    DAILY_USAGE,
    INTERVALS,
    LOAD_PROFILES,
    METERS,
    READINGS,
    TableSpec,
)
from meterlake.config.settings import Settings
from meterlake.ingest.simulator import FleetSpec, simulate_meter_records, simulate_readings
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import scan, scan_current_intervals, scan_days
from meterlake.storage.writer import write_table
from meterlake.tariffs.model import Tariff
from meterlake.tariffs.registry import load_tariffs
from meterlake.tariffs.usage import with_tou_class
from tests.cli_runner import run_cli

UTC = dt.UTC
ZONE = "Asia/Shanghai"
START = dt.datetime(2026, 10, 4, 16, tzinfo=UTC)  # local midnight of 5 October
SPEC = FleetSpec(meters=20, start=START, days=10, seed=5)
FIRST, END = dt.date(2026, 10, 5), dt.date(2026, 10, 15)
DAYS = [FIRST + dt.timedelta(days=i) for i in range(10)]
NOW = dt.datetime(2026, 10, 20, tzinfo=UTC)


@pytest.fixture(scope="module")
def vee_lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The simulated fleet's readings and meter records, after a VEE run (read-only: tests
    that write work on a copy)."""
    lake = init_lake(tmp_path_factory.mktemp("analysis") / "lake")
    write_table(lake, READINGS, simulate_readings(SPEC))
    write_table(lake, METERS, simulate_meter_records(SPEC, NOW - dt.timedelta(days=30)))
    run_vee(lake, Settings(), run_id="vee-1", now=NOW - dt.timedelta(days=5))
    return lake


@pytest.fixture
def work_lake(vee_lake: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(vee_lake, tmp_path / "work"))


@pytest.fixture(scope="module")
def tariffs() -> dict[str, Tariff]:
    return load_tariffs()


def classifier(tariffs: dict[str, Tariff]) -> Classifier:
    """What ``meterlake analyze`` passes: the catalogue tariffs' TOU class of each interval."""

    def classify(
        intervals: pl.LazyFrame, meters: pl.DataFrame, start: dt.datetime, end: dt.datetime
    ) -> pl.LazyFrame:
        return with_tou_class(intervals, meters, tariffs, start, end)

    return classify


def current_by_local_day(lake: Path) -> pl.DataFrame:
    """Import per meter and local day straight from the current intervals (null: no value)."""
    rows = scan_current_intervals(lake).collect()
    return (
        rows.with_columns(
            day=pl.col("interval_start").dt.convert_time_zone(ZONE).dt.date(),
            local=pl.col("interval_start").dt.convert_time_zone(ZONE),
        )
        .filter(pl.col("day").is_between(FIRST, END, closed="left"))
        .group_by("meter_id", "day")
        .agg(
            pl.when(pl.col("energy_import_kwh").is_not_null().any())
            .then(pl.col("energy_import_kwh").sum())
            .alias("expected_kwh"),
            pl.len().alias("expected_intervals"),
            pl.col("energy_import_kwh")
            .filter(pl.col("local").dt.hour().is_between(8, 21))
            .sum()
            .alias("hours_8_to_22_kwh"),
        )
    )


def meter_days(frame: pl.DataFrame) -> list[tuple[str, dt.date]]:
    return sorted(frame.select("meter_id", "day").iter_rows())


def stored(lake: Path, table_name: str) -> pl.DataFrame:
    table = {t.name: t for t in (DAILY_USAGE, ANOMALY_SCORES, LOAD_PROFILES)}[table_name]
    return scan(lake, table).collect().select(list(table.schema))


def analyse(
    lake: Path,
    run_id: str = "ana-1",
    now: dt.datetime = NOW,
    first: dt.date = FIRST,
    end: dt.date = END,
    classify: Classifier | None = None,
) -> AnalysisResult:
    return run_analysis(lake, first, end, run_id=run_id, now=now, classify=classify)


# --- one run -----------------------------------------------------------------------------------


def test_a_run_writes_its_tables_under_its_run_id(work_lake: Path) -> None:
    result = analyse(work_lake)

    assert (result.run_id, result.first_day, result.end_day) == ("ana-1", FIRST, END)
    every = [(f"m-{i:05d}", day) for i in range(1, 21) for day in DAYS]
    # one row per meter and local day of the range, daily and scores alike
    assert meter_days(result.daily) == every
    assert meter_days(result.scores) == every
    for frame in (result.daily, result.scores, result.profiles):
        assert set(frame["run_id"]) == {"ana-1"}
        assert set(frame["computed_at"]) == {NOW}

    daily = stored(work_lake, "daily_usage")
    assert daily.sort("meter_id", "day").equals(
        result.daily.select(list(DAILY_USAGE.schema)).sort("meter_id", "day")
    )
    scores = stored(work_lake, "anomaly_scores")
    assert scores.sort("meter_id", "day").equals(
        result.scores.select(list(ANOMALY_SCORES.schema)).sort("meter_id", "day")
    )
    profiles = stored(work_lake, "load_profiles")
    assert profiles.height == result.profiles.height > 0
    assert set(profiles["run_id"]) == {"ana-1"}
    portfolio = profiles.filter(pl.col("scope") == "portfolio")
    assert portfolio.height >= 2
    assert portfolio["days"].sum() == result.daily["profile"].count()
    assert set(profiles["range_start"]) == {FIRST}

    # every whole day has a profile, partial ones none (the last local day ends with the last
    # read, so its final interval is missing)
    whole = result.daily.filter(pl.col("intervals") == 96, pl.col("intervals_missing") == 0)
    assert whole["profile"].null_count() == 0
    assert result.daily.filter(pl.col("intervals") < 96)["profile"].null_count() == (
        result.daily.filter(pl.col("intervals") < 96).height
    )
    assert set(result.daily["timezone"]) == {ZONE}
    # no classifier: no split
    assert result.daily["energy_peak_kwh"].null_count() == result.daily.height
    assert scores["score"].is_between(0.0, 1.0).all()


def test_the_energy_is_the_current_intervals_by_local_day(work_lake: Path) -> None:
    # an edit (version 2) of one meter's 7 October: the run must read the current version
    day_start = dt.datetime(2026, 10, 6, 16, tzinfo=UTC)
    edit = (
        scan(work_lake, INTERVALS)
        .filter(
            pl.col("meter_id") == "m-00003",
            pl.col("interval_start").is_between(
                day_start, day_start + dt.timedelta(days=1), closed="left"
            ),
        )
        .collect()
        .with_columns(
            energy_import_kwh=pl.lit(1.0),
            status=pl.lit("edited"),
            method=pl.lit("manual"),
            version=pl.col("version") + 1,
            run_id=pl.lit("edit-1"),
        )
    )
    assert edit.height == 96
    write_table(work_lake, INTERVALS, edit)

    result = analyse(work_lake)
    expected = current_by_local_day(work_lake)
    joined = result.daily.join(expected, on=["meter_id", "day"], how="full", coalesce=True)
    assert joined.height == result.daily.height == expected.height
    assert (joined["intervals"] == joined["expected_intervals"]).all()
    both = joined.filter(pl.col("expected_kwh").is_not_null())
    assert both["energy_kwh"].to_list() == pytest.approx(both["expected_kwh"].to_list())
    assert joined.filter(pl.col("expected_kwh").is_null())["energy_kwh"].null_count() == (
        joined.filter(pl.col("expected_kwh").is_null()).height
    )
    edited = result.daily.filter(
        pl.col("meter_id") == "m-00003", pl.col("day") == dt.date(2026, 10, 7)
    )
    assert edited["energy_kwh"].item() == pytest.approx(96.0)
    assert edited["peak_kw"].item() == pytest.approx(4.0)
    assert edited["actual_share"].item() == 0.0


def test_shards_of_meters_give_the_same_days_as_one_shard(work_lake: Path) -> None:
    whole = run_analysis(work_lake, FIRST, END, run_id="one", now=NOW)
    sharded = run_analysis(work_lake, FIRST, END, run_id="many", now=NOW, shard_meters=3)
    key = ["meter_id", "day"]
    columns = [c for c in whole.daily.columns if c not in ("run_id", "computed_at")]
    assert whole.daily.height == sharded.daily.height
    assert whole.daily.select(columns).sort(key).equals(sharded.daily.select(columns).sort(key))


def test_the_split_by_tariff_period_with_the_catalogue_tariffs(
    work_lake: Path, tariffs: dict[str, Tariff]
) -> None:
    result = analyse(work_lake, classify=classifier(tariffs))
    meters = scan(work_lake, METERS).collect().select("meter_id", "tariff_id")
    daily = result.daily.join(meters, on="meter_id").join(
        current_by_local_day(work_lake), on=["meter_id", "day"]
    )
    assert set(meters["tariff_id"]) == {
        "cn-zj-residential-tiered",
        "cn-zj-residential-tou",
        "cn-hb-industrial-two-part-10kv",
    }
    classes = ["energy_peak_kwh", "energy_flat_kwh", "energy_valley_kwh", "energy_critical_kwh"]
    measured = pl.col("energy_kwh").is_not_null()

    # Zhejiang peak/valley: peak is 08:00-22:00 local, the rest valley, no flat or critical
    zj = daily.filter(pl.col("tariff_id") == "cn-zj-residential-tou", measured)
    assert zj.height > 0
    assert zj["energy_peak_kwh"].to_list() == pytest.approx(zj["hours_8_to_22_kwh"].to_list())
    assert zj["energy_valley_kwh"].to_list() == pytest.approx(
        (zj["energy_kwh"] - zj["hours_8_to_22_kwh"]).to_list()
    )
    assert set(zj["energy_flat_kwh"]) == {0.0} and set(zj["energy_critical_kwh"]) == {0.0}

    # Hubei industrial: all four classes, adding up to the day's import
    hb = daily.filter(pl.col("tariff_id") == "cn-hb-industrial-two-part-10kv", measured)
    assert hb.height > 0
    assert hb.select(pl.sum_horizontal(classes))["energy_peak_kwh"].to_list() == pytest.approx(
        hb["energy_kwh"].to_list()
    )
    assert (hb["energy_critical_kwh"] > 0).all() and (hb["energy_flat_kwh"] > 0).all()

    # the rest of the figures do not depend on the classifier
    plain = analyse(work_lake, run_id="ana-plain")
    key = ["meter_id", "day"]
    same = [c for c in DAILY_USAGE.schema if c not in (*classes, "run_id", "computed_at")]
    assert result.daily.select(same).sort(key).equals(plain.daily.select(same).sort(key))


# --- a second run and the catalogue views ------------------------------------------------------


def test_the_views_show_the_latest_run_after_a_second_one(work_lake: Path) -> None:
    analyse(work_lake, "ana-1", NOW)
    # the second run covers 10-14 October only, after m-00001's 12 October was edited
    day_start = dt.datetime(2026, 10, 11, 16, tzinfo=UTC)
    edit = (
        scan(work_lake, INTERVALS)
        .filter(
            pl.col("meter_id") == "m-00001",
            pl.col("interval_start").is_between(
                day_start, day_start + dt.timedelta(days=1), closed="left"
            ),
        )
        .collect()
        .with_columns(
            energy_import_kwh=pl.lit(0.5),
            status=pl.lit("edited"),
            version=pl.col("version") + 1,
            run_id=pl.lit("edit-1"),
        )
    )
    write_table(work_lake, INTERVALS, edit)
    later = NOW + dt.timedelta(hours=6)
    second = analyse(work_lake, "ana-2", later, first=dt.date(2026, 10, 10))
    assert meter_days(second.daily) == sorted(
        (f"m-{i:05d}", day) for i in range(1, 21) for day in DAYS[5:]
    )

    refresh_catalog(work_lake)
    con = connect_catalog(work_lake)
    try:
        stats = con.sql("SELECT meter_id, day, run_id, energy_kwh FROM daily_stats").pl()
        anomalies = con.sql("SELECT meter_id, day, run_id, score FROM anomalies").pl()
        monthly = con.sql("SELECT * FROM monthly_usage ORDER BY meter_id").pl()
        curves = con.sql(
            "SELECT meter_id, day, slot, power_kw FROM daily_curves ORDER BY meter_id, day, slot"
        ).pl()
        current_profiles = con.sql("SELECT * FROM load_profiles_current").pl()
    finally:
        con.close()

    # one row per meter-day: each day's latest run
    assert stats.height == 20 * 10 == stats.select("meter_id", "day").n_unique()
    runs = stats.group_by("day").agg(pl.col("run_id").unique())
    for day, run_ids in runs.iter_rows():
        assert run_ids == (["ana-2"] if day >= dt.date(2026, 10, 10) else ["ana-1"]), day
    edited = stats.filter(pl.col("meter_id") == "m-00001", pl.col("day") == dt.date(2026, 10, 12))
    assert edited["energy_kwh"].item() == pytest.approx(48.0)

    assert anomalies.height == 200
    assert set(anomalies.filter(pl.col("day") >= dt.date(2026, 10, 10))["run_id"]) == {"ana-2"}
    assert set(anomalies.filter(pl.col("day") < dt.date(2026, 10, 10))["run_id"]) == {"ana-1"}

    # monthly usage sums daily_stats: October of every meter, 10 days each
    totals = stats.group_by("meter_id").agg(pl.col("energy_kwh").sum()).sort("meter_id")
    assert monthly["month"].unique().to_list() == ["2026-10"]
    assert monthly["days"].unique().to_list() == [10]
    assert monthly["meter_id"].to_list() == totals["meter_id"].to_list()
    assert monthly["energy_kwh"].to_list() == pytest.approx(totals["energy_kwh"].to_list())
    assert monthly["last_year_kwh"].null_count() == monthly.height

    # daily curves unnest the latest curves, slot by slot
    expected_curve = (
        second.daily.filter(
            pl.col("meter_id") == "m-00001", pl.col("day") == dt.date(2026, 10, 12)
        )["curve_kw"]
        .item()
        .to_list()
    )
    got = curves.filter(pl.col("meter_id") == "m-00001", pl.col("day") == dt.date(2026, 10, 12))
    assert got["slot"].to_list() == list(range(96))
    assert got["power_kw"].to_list() == pytest.approx(expected_curve) == [2.0] * 96

    # the profiles of the latest run only
    assert set(current_profiles["run_id"]) == {"ana-2"}
    assert current_profiles.height == second.profiles.height
    assert set(current_profiles["range_start"]) == {dt.date(2026, 10, 10)}


def test_history_before_the_range_reaches_the_anomaly_baselines(
    work_lake: Path, vee_lake: Path, tmp_path: Path
) -> None:
    # 5-11 October analysed first, then 12-14 October: the second run reads the first's daily
    # figures as history; a lake without them scores 12-14 October without baselines
    analyse(work_lake, "ana-1", NOW, end=dt.date(2026, 10, 12))
    with_history = analyse(
        work_lake, "ana-2", NOW + dt.timedelta(hours=1), first=dt.date(2026, 10, 12)
    )
    fresh = Path(shutil.copytree(vee_lake, tmp_path / "fresh"))
    without = analyse(fresh, "ana-2", NOW + dt.timedelta(hours=1), first=dt.date(2026, 10, 12))

    key = ["meter_id", "day"]
    assert (
        with_history.daily.drop("profile").sort(key).equals(without.daily.drop("profile").sort(key))
    )
    assert with_history.scores["baseline_kwh"].null_count() < with_history.scores.height
    assert without.scores["baseline_kwh"].null_count() == without.scores.height
    # the history is read, not rewritten
    assert set(stored(work_lake, "daily_usage").filter(pl.col("run_id") == "ana-1")["day"]) == set(
        DAYS[:7]
    )


def test_the_history_read_is_the_anomaly_rules_window(
    work_lake: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a longer reference window reads further back (test_anomalies: why that many days)
    reads: list[tuple[str, dt.date, dt.date]] = []

    def spy(root: Path, table: TableSpec, first: dt.date, end: dt.date) -> pl.LazyFrame:
        reads.append((table.name, first, end))
        return scan_days(root, table, first, end)

    monkeypatch.setattr(analysis_job, "scan_days", spy)
    rules = AnomalyRules(reference_days=56)
    run_analysis(work_lake, FIRST, END, run_id="ana-1", now=NOW, anomaly_rules=rules)
    assert reads == [("daily_usage", FIRST - dt.timedelta(days=rules.history_days), FIRST)]
    assert rules.history_days > AnomalyRules().history_days


# --- the range ---------------------------------------------------------------------------------


def test_default_range_ends_with_the_latest_intervals_local_day(vee_lake: Path) -> None:
    latest = scan(vee_lake, INTERVALS).select(pl.col("interval_start").max()).collect().item()
    assert latest == dt.datetime(2026, 10, 14, 15, 30, tzinfo=UTC)  # 23:30 local
    assert default_range(vee_lake, ZONE) == (dt.date(2026, 9, 10), END)
    assert default_range(vee_lake, ZONE, days=10) == (FIRST, END)
    # in UTC+14 the latest interval is already on 15 October
    assert default_range(vee_lake, "Pacific/Kiritimati", days=1) == (
        dt.date(2026, 10, 15),
        dt.date(2026, 10, 16),
    )


def test_default_range_of_an_empty_lake_raises(lake: Path) -> None:
    with pytest.raises(LookupError, match="no intervals"):
        default_range(lake, ZONE)


@pytest.mark.parametrize("end", [FIRST, FIRST - dt.timedelta(days=1)])
def test_an_empty_range_raises_and_writes_nothing(work_lake: Path, end: dt.date) -> None:
    with pytest.raises(ValueError, match="empty range"):
        analyse(work_lake, first=FIRST, end=end)
    assert scan(work_lake, DAILY_USAGE).collect().is_empty()


# --- the command -------------------------------------------------------------------------------

SUMMARY = re.compile(
    r"analysis (?P<first>\S+)\.\.(?P<last>\S+) \((?P<run>ana-\S+)\): (?P<days>\d+) meter-days of "
    r"(?P<meters>\d+) meters; (?P<profiles>\d+) typical profiles; (?P<flagged>\d+) meter-days "
    r"flagged; tier progress of (?P<tiers>\d+) meters"
)


def test_meterlake_analyze_prints_its_summary_and_writes_the_tables(
    work_lake: Path, tmp_path: Path
) -> None:
    done = run_cli("analyze", "--lake", work_lake, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    match = SUMMARY.search(done.stdout)
    assert match, done.stdout
    # the default range: 35 days up to the latest interval's local day; data on 10 of them
    assert (match["first"], match["last"]) == ("2026-09-10", "2026-10-14")
    assert (match["days"], match["meters"]) == ("200", "20")
    households = (
        scan(work_lake, METERS)
        .filter(pl.col("tariff_id").str.starts_with("cn-zj-"))
        .collect()
        .height
    )
    assert int(match["tiers"]) == households > 0

    con = connect_catalog(work_lake)
    try:
        stats = con.sql("SELECT run_id, count(*) FROM daily_stats GROUP BY run_id").fetchall()
        split = con.sql(
            "SELECT count(*) FROM daily_stats d JOIN meters_current m USING (meter_id) "
            "WHERE m.tariff_id = 'cn-zj-residential-tou' AND d.energy_peak_kwh > 0"
        ).fetchall()
        profiles = con.sql(
            "SELECT count(*) FROM load_profiles_current WHERE scope = 'portfolio'"
        ).fetchall()
        tiers = con.sql("SELECT run_id, as_of FROM tier_progress_current").fetchall()
        anomalies = con.sql("SELECT count(*) FROM anomalies").fetchall()
    finally:
        con.close()
    assert stats == [(match["run"], 200)]
    assert split[0][0] > 0  # the CLI classes intervals by tariff period
    assert profiles == [(int(match["profiles"]),)]
    assert anomalies == [(200,)]
    assert len(tiers) == households
    assert set(tiers) == {(match["run"], dt.date(2026, 10, 14))}


def test_meterlake_analyze_a_given_range(work_lake: Path, tmp_path: Path) -> None:
    done = run_cli(
        "analyze", "--lake", work_lake, "--from", "2026-10-10", "--to", "2026-10-12", cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    match = SUMMARY.search(done.stdout)
    assert match, done.stdout
    assert (match["first"], match["last"], match["days"]) == ("2026-10-10", "2026-10-12", "60")
    assert set(stored(work_lake, "daily_usage")["day"]) == {
        dt.date(2026, 10, 10),
        dt.date(2026, 10, 11),
        dt.date(2026, 10, 12),
    }


def test_meterlake_analyze_refuses_a_reversed_range_and_an_empty_lake(
    work_lake: Path, lake: Path, tmp_path: Path
) -> None:
    done = run_cli(
        "analyze", "--lake", work_lake, "--from", "2026-10-12", "--to", "2026-10-10", cwd=tmp_path
    )
    assert done.returncode != 0
    assert "before --from" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr

    done = run_cli("analyze", "--lake", lake, cwd=tmp_path)
    assert done.returncode != 0
    assert "no intervals" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
