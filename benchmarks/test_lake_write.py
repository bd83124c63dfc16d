"""Lake write throughput: ``storage.writer.write_table`` against a bare ``pyarrow`` write.

The writer does more than write Parquet: it checks the frame against the contract, splits it by
day partition, writes each part to a temporary file, fsyncs it and renames it into place. This
benchmark keeps that overhead honest: at full size the writer may take at most 1.5 times as long
as ``pyarrow.parquet.write_table`` of the same rows with the same codec (zstd), timed in the same
run, best of ``scale.repeats`` interleaved rounds. pyarrow's default codec (snappy) is reported too.
"""

from __future__ import annotations

import datetime as dt
import functools
import itertools
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import polars as pl
import pyarrow.parquet as pq
import pytest

from meterlake.config.schemas import READINGS
from meterlake.ingest.simulator import FleetSpec, simulate_readings
from meterlake.storage.layout import init_lake
from meterlake.storage.writer import write_table

if TYPE_CHECKING:
    from conftest import Scale

MAX_RATIO: Final = 1.5
"""The writer's time over the bare pyarrow zstd write's, at most (full scale)."""
BASELINES: Final[dict[str, dict[str, Any]]] = {
    "pyarrow (default: snappy)": {},
    "pyarrow (zstd)": {"compression": "zstd"},
}
WRITER: Final = "meterlake write_table (zstd)"
READINGS_PER_METER_INTERVAL: Final = 3.1  # import, power, voltage; export for the 10 % with PV


@pytest.fixture(scope="module")
def frame(scale: Scale) -> pl.DataFrame:
    """``scale.write_rows`` seeded, simulated readings over ``scale.write_days`` UTC days."""
    per_meter = scale.write_days * 96 * READINGS_PER_METER_INTERVAL
    spec = FleetSpec(
        meters=math.ceil(scale.write_rows / per_meter * 1.02),
        start=dt.datetime(2026, 3, 2, tzinfo=dt.UTC),
        days=scale.write_days,
        seed=20260302,
    )
    readings = simulate_readings(spec)
    assert readings.height >= scale.write_rows
    return readings.head(scale.write_rows)


def test_lake_write_throughput(
    benchmark: Any,
    scale: Scale,
    frame: pl.DataFrame,
    tmp_path: Path,
    timer: Callable[[Callable[[], object]], float],
    table_printer: Callable[[str, tuple[str, ...], list[tuple[str, ...]]], None],
) -> None:
    times: dict[str, list[float]] = {name: [] for name in [WRITER, *BASELINES]}
    sizes: dict[str, int] = {}
    rounds = itertools.count()
    lakes: list[Path] = []

    def bare_write(path: Path, options: dict[str, Any]) -> None:
        pq.write_table(frame.to_arrow(), path, **options)

    def baselines_then_fresh_lake() -> tuple[tuple[Path], dict[str, object]]:
        # pytest-benchmark does not time this: the baselines of the round are timed here, so that
        # they alternate with the writer's rounds and see the same state of the machine.
        i = next(rounds)
        for lake in lakes:
            shutil.rmtree(lake)
        lakes.clear()
        for name, options in BASELINES.items():
            path = tmp_path / f"baseline-{i}.parquet"
            times[name].append(timer(functools.partial(bare_write, path, options)))
            sizes[name] = path.stat().st_size
            path.unlink()
            os.sync()  # let neither write's dirty pages slow down the next one
        lakes.append(init_lake(tmp_path / f"lake-{i}"))
        return (lakes[-1],), {}

    def write(root: Path) -> list[Path]:
        files: list[Path] = []
        times[WRITER].append(timer(lambda: files.extend(write_table(root, READINGS, frame))))
        return files

    files = benchmark.pedantic(write, setup=baselines_then_fresh_lake, rounds=scale.repeats)

    assert len(files) == scale.write_days
    written = pl.scan_parquet(files, schema=READINGS.schema).select(pl.len()).collect().item()
    assert written == frame.height
    sizes[WRITER] = sum(p.stat().st_size for p in files)

    best = {name: min(values) for name, values in times.items()}
    ratio = best[WRITER] / best["pyarrow (zstd)"]
    ratio_default = best[WRITER] / best["pyarrow (default: snappy)"]
    table_printer(
        f"lake write: {frame.height:,} readings over {scale.write_days} days "
        f"(best of {scale.repeats}, scale {scale.name})",
        ("method", "seconds", "rows/s", "MB", "x zstd baseline"),
        [
            (
                name,
                f"{best[name]:.3f}",
                f"{frame.height / best[name]:,.0f}",
                f"{sizes[name] / 1e6:.1f}",
                f"{best[name] / best['pyarrow (zstd)']:.2f}",
            )
            for name in times
        ],
    )
    benchmark.extra_info.update(
        {
            "rows": frame.height,
            "seconds": best,
            "rows_per_s": {name: frame.height / t for name, t in best.items()},
            "bytes": sizes,
            "ratio_vs_zstd": ratio,
            "ratio_vs_default": ratio_default,
        }
    )
    if scale.strict:
        assert ratio <= MAX_RATIO, (
            f"write_table took {ratio:.2f}x the bare pyarrow zstd write (limit {MAX_RATIO}x)"
        )
