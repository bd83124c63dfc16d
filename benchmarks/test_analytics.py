"""Usage analytics and anomaly scores: speed next to a plain group-by, and detection quality on a
simulated fleet with injected anomalies.

(a) curves + load statistics
    :func:`~meterlake.analytics.analysis_job.daily_figures` (``daily_usage`` in shards of 5,000
    meters, as the analysis run computes it) over the lake of ``test_bills`` (full: 20,000
    meters x 30 local days x 96 quarter hours = 57.6M intervals; smoke: 40 x 3): one row per
    meter-day with the day's curve, demand figures, base load and VEE counts. The floor
    is the faster of Polars and DuckDB summing ``energy_import_kwh`` per meter and UTC day over
    the same files. Each step runs in a fresh process (best of ``scale.repeats``; peak memory
    is that process's ``VmHWM``).
(b) anomaly scoring
    :func:`~meterlake.analytics.anomalies.score_anomalies` of the meter-days (a) computed (full:
    620,000: a month's local days touch 31 dates): like-day baselines, the rules and the
    IsolationForest (fit on a 50,000-day sample, scored on all).
(c) detection
    A simulated fleet (full: 2,000 meters x 42 days, 5% with injected anomalies; smoke: 60 x
    28, 20%) through the real pipeline: readings -> VEE -> analysis. Per injected kind: ROC AUC of
    the score on the kind's meter-days against the days of meters without anomalies, recall
    (share of its days flagged with any reason), and the precision of all flags.

Goals (issue 6): (a) within 10x the floor; (b) under 10 s on this machine (reported with the
floor, so the ratio carries across machines); (c) AUC >= 0.9 on sustained drops and surges. The
issue sets no memory goal; the report judges (a)'s peak against half of this 24 GiB machine.

Measured at full scale (2 cores, 2026-11-27, a quiet machine, best of 2): floor 1.58 s (Polars;
DuckDB 3.78 s); (a) 12.6 s, 4.6M intervals/s, 8.0x the floor (goal met), peak 3.5 GiB (8.3 GiB
before the analysis computed in shards of 5,000 meters); (b) 9.32 s for 620,000 meter-days,
5.9x the floor (goal met), peak 1.9 GiB; (c) 2,000 meters x 42 days, 77,732 ordinary
meter-days: ROC AUC 1.000 on surges (recall 0.97) and 0.997 on sustained drops (recall 0.96),
1.000 on every tamper kind; precision of all flags 0.97.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from meterlake.analytics.analysis_job import run_analysis
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

if TYPE_CHECKING:
    from conftest import Scale

GIB: Final = 1 << 30
GOAL_CURVES: Final = 10.0
GOAL_SCORING_S: Final = 10.0
GOAL_AUC: Final = 0.9
GOAL_PEAK_BYTES: Final = 12 * GIB  # half of this 24 GiB machine: the issue sets no memory goal


@dataclass(frozen=True)
class Sizes:
    lake_meters: int
    lake_days: int
    fleet_meters: int
    fleet_days: int
    anomaly_share: float


SIZES: Final = {
    "smoke": Sizes(40, 3, 60, 28, 0.2),
    "full": Sizes(20_000, 30, 2_000, 42, 0.05),
}

STEP: Final = r"""
import datetime as dt, glob, sys, time
from pathlib import Path
import polars as pl
root, step, repeats = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
files = sorted(glob.glob(str(root / "intervals" / "*" / "*.parquet")))
day = pl.col("interval_start").dt.date().alias("day")
if step == "polars":
    def run():
        frame = pl.scan_parquet(files).group_by("meter_id", day)
        return frame.agg(pl.col("energy_import_kwh").sum()).collect()
elif step == "duckdb":
    import duckdb
    def run():
        query = (f"SELECT meter_id, CAST(interval_start AS DATE), sum(energy_import_kwh) "
                 f"FROM read_parquet({files!r}) GROUP BY ALL")
        return duckdb.sql(query).pl()
elif step == "curves":
    from meterlake.analytics.analysis_job import daily_figures
    meters = pl.DataFrame({"meter_id": ["-"], "timezone": ["Asia/Shanghai"]})
    # the UTC range the lake's intervals lie in, as the analysis run knows its range
    span = (dt.datetime(2026, 9, 15, tzinfo=dt.UTC), dt.datetime(2026, 11, 2, tzinfo=dt.UTC))
    def run():
        return daily_figures(pl.scan_parquet(files), meters, span=span)
else:
    from meterlake.analytics.anomalies import score_anomalies
    daily = pl.read_parquet(root / "daily.parquet")
    meters = daily.select("meter_id").unique().with_columns(
        import_only=pl.lit(True), vacant=pl.lit(False))
    def run():
        return score_anomalies(daily, meters)
best = float("inf")
for _ in range(repeats):
    began = time.perf_counter()
    result = run()
    best = min(best, time.perf_counter() - began)
if step == "curves":
    result.write_parquet(root / "daily.parquet")
status = open("/proc/self/status").read().split("VmHWM:")[1]
print(best, int(status.split()[0]) * 1024, result.height)
"""


def run_step(root: Path, step: str, repeats: int) -> tuple[float, int, int]:
    done = subprocess.run(
        [sys.executable, "-c", STEP, str(root), step, str(repeats)],
        check=False,  # the assert below shows the step's stderr
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, f"step {step} failed:\n{done.stderr}"
    seconds, peak, rows = done.stdout.split()[-3:]
    return float(seconds), int(peak), int(rows)


@pytest.fixture(scope="module")
def interval_lake(scale: Scale, tmp_path_factory: pytest.TempPathFactory) -> Path:
    sys.path.insert(0, str(Path(__file__).parent))
    from test_bills import FLEETS, build_lake

    sizes = SIZES[scale.name]
    fleet = FLEETS[scale.name]
    fleet = type(fleet)(sizes=(sizes.lake_meters,), days=sizes.lake_days, build_meters=2_000)
    root = tmp_path_factory.mktemp("analytics") / "lake"
    return build_lake(root, sizes.lake_meters, fleet, "bench-monthly")


@pytest.mark.timeout(4 * 3600)
def test_curves_and_scoring_against_the_floor(
    scale: Scale, interval_lake: Path, floor_table: Any
) -> None:
    steps = ("polars", "duckdb", "curves", "scoring")
    seconds, peaks, rows = {}, {}, {}
    for step in steps:
        seconds[step], peaks[step], rows[step] = run_step(interval_lake, step, scale.repeats)
    sizes = SIZES[scale.name]
    assert rows["curves"] == rows["scoring"]
    assert rows["curves"] >= sizes.lake_meters * sizes.lake_days
    floor = min(seconds["polars"], seconds["duckdb"])
    intervals = pl.scan_parquet(str(interval_lake / "intervals" / "*" / "*.parquet"))
    count = int(intervals.select(pl.len()).collect().item())
    report = {"floor": floor, "(a) curves": seconds["curves"], "(b) scoring": seconds["scoring"]}
    peak_of = {
        "floor": min(peaks["polars"], peaks["duckdb"]),
        "(a) curves": peaks["curves"],
        "(b) scoring": peaks["scoring"],
    }
    ratio = seconds["curves"] / floor
    floor_table(
        f"daily curves + load statistics: {count:,} intervals -> {rows['curves']:,} meter-days "
        f"(floor: polars {seconds['polars']:.2f} s, duckdb {seconds['duckdb']:.2f} s; "
        f"{os.cpu_count()} cores, scale {scale.name}); (a) goal {GOAL_CURVES:.0f}x",
        count,
        report,
        peak_of,
        goal_ratio=GOAL_CURVES,
        goal_peak=GOAL_PEAK_BYTES,
        ratio=ratio,
        peak=peaks["curves"],
        strict=scale.strict,
    )
    verdict = "met" if seconds["scoring"] < GOAL_SCORING_S else "missed"
    print(
        f"(b) anomaly scoring of {rows['scoring']:,} meter-days: {seconds['scoring']:.2f} s "
        f"({seconds['scoring'] / floor:.1f}x the floor; goal < {GOAL_SCORING_S:.0f} s: {verdict})"
    )
    if scale.strict:
        assert seconds["scoring"] < GOAL_SCORING_S, (seconds["scoring"], GOAL_SCORING_S)


@pytest.mark.timeout(4 * 3600)
def test_injected_anomalies_are_found(scale: Scale, tmp_path: Path, table_printer: Any) -> None:
    sizes = SIZES[scale.name]
    spec = FleetSpec(
        meters=sizes.fleet_meters,
        start=dt.datetime(2026, 9, 1, tzinfo=dt.UTC),
        days=sizes.fleet_days,
        seed=5,
        anomaly_share=sizes.anomaly_share,
    )
    root = init_lake(tmp_path / "fleet")
    write_table(root, READINGS, simulate_readings(spec))
    write_table(root, METERS, simulate_meter_records(spec, dt.datetime(2026, 8, 1, tzinfo=dt.UTC)))
    now = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
    run_vee(root, Settings(), run_id="vee", now=now)
    last = dt.date(2026, 9, 1) + dt.timedelta(days=sizes.fleet_days - 1)  # the last whole day
    scores = run_analysis(root, dt.date(2026, 9, 1), last, run_id="ana", now=now).scores
    shutil.rmtree(root)
    truth = simulate_anomalies(spec)
    labelled = scores.join(
        truth.select("meter_id", "kind", "first_day", "last_day"), on="meter_id", how="left"
    ).with_columns(inside=pl.col("day").is_between("first_day", "last_day").fill_null(value=False))
    negatives = labelled.filter(pl.col("kind").is_null())
    flagged = pl.col("kinds").list.len() > 0
    rows, aucs = [], {}
    for kind in sorted(truth["kind"].unique()):
        positives = labelled.filter(pl.col("kind") == kind, pl.col("inside"))
        y = [1] * positives.height + [0] * negatives.height
        score = positives["score"].to_list() + negatives["score"].to_list()
        aucs[kind] = float(roc_auc_score(y, score))
        recall = positives.filter(flagged).height / positives.height
        rows.append((kind, f"{positives.height:,}", f"{aucs[kind]:.3f}", f"{recall:.2f}"))
    all_flags = labelled.filter(flagged)
    true_flags = all_flags.filter(pl.col("inside")).height
    precision = true_flags / max(all_flags.height, 1)
    table_printer(
        f"detection on {sizes.fleet_meters:,} simulated meters x {sizes.fleet_days} days "
        f"({negatives.height:,} ordinary meter-days; precision of all flags {precision:.2f}; "
        f"goal AUC >= {GOAL_AUC} on surges and sustained drops)",
        ("kind", "meter-days", "ROC AUC", "recall"),
        rows,
    )
    if scale.strict:
        assert aucs["surge"] >= GOAL_AUC
        assert aucs["sustained_drop"] >= GOAL_AUC
