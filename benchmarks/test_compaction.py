"""Compaction of a day that arrived as many small files, and what it buys DuckDB queries.

A gateway fleet delivers a day of readings in ``scale.compact_files`` small files (full: 2,400).
The benchmark times ``compaction.compact_partition`` of that day (rows/s, best of
``scale.repeats``, each round on a fresh copy of the small files), and two queries through the
DuckDB catalogue before and after: daily energy per meter from ``readings_current`` and a plain
count of ``readings``. The energy result must be identical before and after; the count drops by
exactly the exact duplicates that compaction removed.
"""

from __future__ import annotations

import datetime as dt
import itertools
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import pytest

from meterlake.config.schemas import READINGS
from meterlake.ingest.simulator import FleetSpec, simulate_readings
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.compaction import CompactionResult, compact_partition
from meterlake.storage.layout import init_lake, partition_dir, partition_files
from meterlake.storage.writer import write_table

if TYPE_CHECKING:
    from conftest import Scale

DAY: Final = dt.date(2026, 3, 3)
DAILY_ENERGY: Final = f"""
SELECT meter_id,
       count(*) AS readings,
       arg_min(value, ts) AS first_kwh,
       arg_max(value, ts) AS last_kwh,
       arg_max(value, ts) - arg_min(value, ts) AS energy_kwh
FROM readings_current
WHERE quantity = 'energy_import_kwh' AND date = DATE '{DAY}'
GROUP BY meter_id
ORDER BY meter_id
"""
COUNT: Final = "SELECT count(*) FROM readings"
Timer = Callable[[Callable[[], object]], float]


@pytest.fixture(scope="module")
def small_files_lake(scale: Scale, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A lake whose one day of readings is spread over ``scale.compact_files`` files, in the
    order they arrived (every file a slice of the time-ordered stream, as a gateway sends it)."""
    spec = FleetSpec(
        meters=scale.compact_meters,
        start=dt.datetime.combine(DAY, dt.time(), tzinfo=dt.UTC),
        days=1,
        seed=20260303,
    )
    readings = simulate_readings(spec)
    root = init_lake(tmp_path_factory.mktemp("template") / "lake")
    cuts = [readings.height * i // scale.compact_files for i in range(scale.compact_files + 1)]
    for lo, hi in itertools.pairwise(cuts):
        write_table(root, READINGS, readings.slice(lo, hi - lo))
    assert len(partition_files(root, READINGS, str(DAY))) == scale.compact_files
    return root


def copy_lake(template: Path, target: Path) -> Path:
    shutil.copytree(template, target, ignore=shutil.ignore_patterns("catalog.duckdb*"))
    return target


def run_queries(root: Path, repeats: int, timer: Timer) -> tuple[dict[str, float], list[Any], int]:
    """Best-of-``repeats`` seconds of each query, the energy rows and the count."""
    refresh_catalog(root)
    con = connect_catalog(root)
    try:
        energy: list[Any] = []
        count: list[Any] = []
        seconds = {
            "daily energy per meter": min(
                timer(lambda: energy.append(con.execute(DAILY_ENERGY).fetchall()))
                for _ in range(repeats)
            ),
            "count(*) readings": min(
                timer(lambda: count.append(con.execute(COUNT).fetchall())) for _ in range(repeats)
            ),
        }
    finally:
        con.close()
    assert all(rows == energy[0] for rows in energy)
    return seconds, energy[0], count[0][0][0]


def test_compaction_and_query_speed(
    benchmark: Any,
    scale: Scale,
    small_files_lake: Path,
    tmp_path: Path,
    timer: Timer,
    table_printer: Callable[[str, tuple[str, ...], list[tuple[str, ...]]], None],
) -> None:
    # Queries over the small files (their own copy, so the template stays untouched).
    before_lake = copy_lake(small_files_lake, tmp_path / "before")
    query_before, energy_before, count_before = run_queries(before_lake, scale.repeats, timer)
    shutil.rmtree(before_lake)

    seconds: list[float] = []
    lakes: list[Path] = []

    def fresh_copy() -> tuple[tuple[Path], dict[str, object]]:
        for lake in lakes:
            shutil.rmtree(lake)
        lakes.clear()
        lakes.append(copy_lake(small_files_lake, tmp_path / f"round-{len(seconds)}"))
        return (lakes[-1],), {}

    def compact(root: Path) -> CompactionResult | None:
        results: list[CompactionResult | None] = []
        seconds.append(timer(lambda: results.append(compact_partition(root, READINGS, str(DAY)))))
        return results[0]

    result = benchmark.pedantic(compact, setup=fresh_copy, rounds=scale.repeats)

    assert result is not None
    assert result.files_in == scale.compact_files
    assert result.files_out == 1
    compacted = lakes[-1]
    assert len(partition_files(compacted, READINGS, str(DAY))) == 1
    assert partition_dir(compacted, READINGS, str(DAY)).is_dir()
    query_after, energy_after, count_after = run_queries(compacted, scale.repeats, timer)

    assert energy_after == energy_before
    assert len(energy_after) == scale.compact_meters
    assert (count_before, count_after) == (result.rows_in, result.rows_out)

    compaction_s = min(seconds)
    rows_per_s = result.rows_in / compaction_s
    table_printer(
        f"compaction: {result.rows_in:,} readings of one day in {result.files_in:,} files -> "
        f"{result.rows_out:,} in {result.files_out} (best of {scale.repeats}, scale {scale.name})",
        ("step", "before s", "after s", "speedup"),
        [
            ("compact_partition", "", f"{compaction_s:.3f}", f"{rows_per_s:,.0f} rows/s"),
            *(
                (
                    name,
                    f"{query_before[name]:.4f}",
                    f"{query_after[name]:.4f}",
                    f"{query_before[name] / query_after[name]:.1f}x",
                )
                for name in query_before
            ),
        ],
    )
    benchmark.extra_info.update(
        {
            "files_in": result.files_in,
            "rows_in": result.rows_in,
            "rows_out": result.rows_out,
            "conflicts": result.conflicts,
            "compaction_seconds": compaction_s,
            "compaction_rows_per_s": rows_per_s,
            "query_seconds_before": query_before,
            "query_seconds_after": query_after,
            "query_speedup": {n: query_before[n] / query_after[n] for n in query_before},
        }
    )
