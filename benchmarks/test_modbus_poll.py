"""Modbus polling throughput: 50 simulated meters on one Modbus TCP gateway, block reads against
one read per quantity.

The simulator (a pymodbus server holding 50 meters of the four shipped profiles) runs in a
process of its own, so the CPU time measured here is the collector's alone: pymodbus client,
read planning, decoding and the sink. One sweep polls every meter once, one after another, as
the collector does on a bus. Reported per mode, best of the sweeps: meters polled/s, Modbus
reads (requests)/s, registers/s, CPU seconds per sweep (``resource.getrusage``: user + system of
this process), and the peak of Python allocations during a sweep (``tracemalloc``, taken in a
sweep of its own, untimed) next to the process' peak resident size.
"""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
import textwrap
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any, Final

import pytest

from meterlake.config.collect import ModbusBusSettings
from meterlake.ingest.modbus import ModbusCollector
from meterlake.ingest.profiles import load_registry
from meterlake.ingest.readings import Reading

if TYPE_CHECKING:
    from conftest import Scale

DEVICES: Final = 50
PROFILES: Final = ("eastron_sdm630", "chint_dtsu666", "chint_ddsu666", "eastron_sdm120")
SWEEPS: Final = {"smoke": 2, "full": 20}
"""Timed sweeps per mode and scale (the best one counts)."""
MODES: Final = {"block reads": False, "single reads": True}
SERVER: Final = """
    import asyncio, sys
    from meterlake.ingest.modbus_sim import meters_for, serve
    from meterlake.ingest.profiles import shipped_profiles

    profiles = shipped_profiles()
    names = sys.argv[2].split(",")
    meters = meters_for([profiles[n] for n in names], int(sys.argv[1]))
    ready = lambda sim: print("ready", sim.port, flush=True)
    asyncio.run(serve(meters, port=0, ready=ready))
"""


@pytest.fixture(scope="module")
def gateway() -> Iterator[int]:
    """A simulated gateway with ``DEVICES`` meters (unit ids 1...) in its own process."""
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVER), str(DEVICES), ",".join(PROFILES)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        ready, _, port = proc.stdout.readline().strip().partition(" ")
        assert ready == "ready", "the simulator did not start"
        yield int(port)
    finally:
        proc.terminate()
        proc.communicate(timeout=10)  # reaps it and closes the pipe


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def test_modbus_poll_throughput(
    benchmark: Any,
    scale: Scale,
    gateway: int,
    table_printer: Callable[[str, tuple[str, ...], list[tuple[str, ...]]], None],
) -> None:
    registry = load_registry()
    received = [0]

    def sink(readings: Sequence[Reading]) -> None:
        received[0] += len(readings)

    def collector(single: bool) -> ModbusCollector:
        bus = ModbusBusSettings.model_validate(
            {
                "name": "gw",
                "host": "127.0.0.1",
                "port": gateway,
                "timeout": "2s",
                "retries": 0,
                "devices": [
                    {
                        "meter_id": f"m-{unit:03d}",
                        "unit": unit,
                        "profile": PROFILES[(unit - 1) % len(PROFILES)],
                        "single_reads": single,
                    }
                    for unit in range(1, DEVICES + 1)
                ],
            }
        )
        return ModbusCollector([bus], registry, sink)

    loop = asyncio.new_event_loop()
    collectors = {mode: collector(single) for mode, single in MODES.items()}
    times: dict[str, list[float]] = {mode: [] for mode in MODES}
    cpu: dict[str, list[float]] = {mode: [] for mode in MODES}

    def sweep(mode: str) -> None:
        began_cpu, began = cpu_seconds(), time.perf_counter()
        loop.run_until_complete(collectors[mode].poll_once())
        times[mode].append(time.perf_counter() - began)
        cpu[mode].append(cpu_seconds() - began_cpu)

    def single_reads_sweep() -> tuple[tuple[()], dict[str, object]]:
        # not timed by pytest-benchmark: interleaved with the block sweeps it is compared with
        sweep("single reads")
        return (), {}

    try:
        for mode in MODES:  # connect and warm up, untimed
            loop.run_until_complete(collectors[mode].poll_once())
        benchmark.pedantic(
            lambda: sweep("block reads"), setup=single_reads_sweep, rounds=SWEEPS[scale.name]
        )
        peak: dict[str, int] = {}
        for mode in MODES:
            tracemalloc.start()
            loop.run_until_complete(collectors[mode].poll_once())
            peak[mode] = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
    finally:
        for c in collectors.values():
            c.close()
        loop.run_until_complete(asyncio.sleep(0.01))  # the transports finish closing
        loop.close()

    rows = []
    stats: dict[str, dict[str, float]] = {}
    for mode, c in collectors.items():
        health = c.health()
        sweeps = len(times[mode]) + 2  # the warm-up and tracemalloc sweeps count too
        assert len(health) == DEVICES
        assert all(h.errors == 0 and h.reads == sweeps for h in health), "a meter failed"
        requests = sum(h.requests for h in health) / sweeps
        registers = sum(h.registers for h in health) / sweeps
        best = min(times[mode])
        stats[mode] = {
            "polls_per_s": DEVICES / best,
            "reads_per_s": requests / best,
            "registers_per_s": registers / best,
            "requests_per_sweep": requests,
            "cpu_s_per_sweep": min(cpu[mode]),
            "peak_alloc_bytes": peak[mode],
        }
        rows.append(
            (
                mode,
                f"{requests:.0f}",
                f"{best * 1000:.1f}",
                f"{DEVICES / best:,.0f}",
                f"{requests / best:,.0f}",
                f"{registers / best:,.0f}",
                f"{min(cpu[mode]) * 1000:.1f}",
                f"{peak[mode] / 1e6:.2f}",
            )
        )
    maxrss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    table_printer(
        f"modbus poll: {DEVICES} meters on one Modbus TCP gateway (best of {SWEEPS[scale.name]} "
        f"sweeps, scale {scale.name}; peak RSS of the process {maxrss_mb:.0f} MB)",
        (
            "mode",
            "reads/sweep",
            "ms/sweep",
            "meters/s",
            "reads/s",
            "registers/s",
            "CPU ms/sweep",
            "peak alloc MB",
        ),
        rows,
    )
    benchmark.extra_info.update({"devices": DEVICES, "modes": stats, "maxrss_mb": maxrss_mb})
    assert received[0] > 0
    block, single = stats["block reads"], stats["single reads"]
    assert block["requests_per_sweep"] < single["requests_per_sweep"]
    if scale.strict:
        assert block["polls_per_s"] > single["polls_per_s"], "block reads should poll faster"
