"""The benchmark suite's sizes and shared helpers.

``METERLAKE_BENCH_SCALE=smoke`` runs every benchmark on tiny, seeded data in a few seconds (``make
bench-smoke``, part of ``make test``, so the suite never rots); the default, ``full``, runs them at
the sizes they are about (``make bench``).

Timings that are compared with each other are taken in the same run, interleaved, as the best of
``repeats`` rounds (``time.perf_counter``): on a small, shared machine the minimum is the
measurement least disturbed by other work.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import pytest

SCALE_ENV: Final = "METERLAKE_BENCH_SCALE"


@dataclass(frozen=True)
class Scale:
    """The sizes of one benchmark scale."""

    name: str
    write_rows: int
    """Readings written in the lake-write benchmark."""
    write_days: int
    """Days (UTC partitions) those readings span."""
    compact_meters: int
    """Meters whose day of readings is compacted."""
    compact_files: int
    """Small files that day arrives in."""
    repeats: int
    """Rounds of every timed comparison (the best one counts)."""
    strict: bool
    """Assert the performance targets (only meaningful at full size)."""


SCALES: Final = {
    "smoke": Scale("smoke", 30_000, 2, 30, 24, repeats=1, strict=False),
    "full": Scale("full", 10_000_000, 3, 2_000, 2_400, repeats=3, strict=True),
}


@pytest.fixture(scope="session")
def scale() -> Scale:
    """The scale chosen by ``$METERLAKE_BENCH_SCALE`` (``smoke`` or ``full``, the default)."""
    name = os.environ.get(SCALE_ENV, "full")
    if name not in SCALES:
        raise pytest.UsageError(f"{SCALE_ENV}={name!r}: use one of {', '.join(SCALES)}")
    return SCALES[name]


def timed(run: Callable[[], object]) -> float:
    """Seconds ``run`` took."""
    began = time.perf_counter()
    run()
    return time.perf_counter() - began


def print_table(title: str, header: tuple[str, ...], rows: list[tuple[str, ...]]) -> None:
    """Print a small aligned table (shown with ``pytest -s``)."""
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    print(f"\n{title}")
    for row in [header, *rows]:
        cells = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        print("  " + "  ".join(cells))


@pytest.fixture(scope="session")
def timer() -> Callable[[Callable[[], object]], float]:
    """:func:`timed`, as a fixture."""
    return timed


@pytest.fixture(scope="session")
def table_printer() -> Callable[[str, tuple[str, ...], list[tuple[str, ...]]], None]:
    """:func:`print_table`, as a fixture."""
    return print_table


GIB: Final = 1 << 30
FLOOR_HEADER: Final = ("step", "seconds", "reads/s", "x floor", "peak RSS GiB")
"""Columns of a report that sets steps against a floor (:func:`floor_rows`)."""


def floor_rows(
    reads: int, seconds: dict[str, float], floor: str, peaks: dict[str, int]
) -> list[tuple[str, ...]]:
    """One report row per step: its time, reads/s, ratio to step ``floor`` and peak memory."""
    return [
        (
            name,
            f"{seconds[name]:.2f}",
            f"{reads / seconds[name]:,.0f}",
            f"{seconds[name] / seconds[floor]:.1f}x",
            f"{peaks[name] / GIB:.2f}",
        )
        for name in seconds
    ]


def verdict(ratio: float, peak: int, goal_ratio: float, goal_peak: int) -> str:
    """Whether a measured ratio to the floor and peak memory [bytes] meet their goals."""
    ratio_ok = "met" if ratio <= goal_ratio else "missed"
    peak_ok = "met" if peak < goal_peak else "missed"
    return (
        f"goal {goal_ratio:.0f}x the floor: {ratio_ok} ({ratio:.1f}x); goal peak < "
        f"{goal_peak / GIB:.0f} GiB: {peak_ok} ({peak / GIB:.2f} GiB)"
    )


@pytest.fixture(scope="session")
def floor_table() -> Callable[..., None]:
    """Print a report of steps against the step named ``floor`` (:func:`floor_rows`), its
    title ending in the :func:`verdict` on the goals at full scale."""

    def show(
        title: str,
        reads: int,
        seconds: dict[str, float],
        peaks: dict[str, int],
        *,
        goal_ratio: float,
        goal_peak: int,
        ratio: float,
        peak: int,
        strict: bool,
    ) -> None:
        goals = (
            verdict(ratio, peak, goal_ratio, goal_peak)
            if strict
            else "the goals apply at full scale"
        )
        print_table(f"{title}; {goals}", FLOOR_HEADER, floor_rows(reads, seconds, "floor", peaks))

    return show
