"""Payload decoding throughput: readings/s of every decoder, single-threaded, next to json.loads.

The canonical decoder is the hot path (a central collector takes ~150k readings/s, mostly as
100-reading batches forwarded by gateways): at full scale its 100-reading batches must decode at
>= 300k readings/s. The other formats carry one device's message each; their rates are reported.
Each row also shows the bare ``json.loads`` of the same payloads, timed in the same round, so the
decoder's own share is visible on any machine.

Canonical messages are seeded and realistic: single-reading messages each carry their own time
(no cache hit across messages), a batch holds 100 meters at one time. Device formats decode
their recorded payloads from ``tests/data/payloads``.
"""

from __future__ import annotations

import datetime as dt
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from meterlake.config.payload_formats import PayloadMapping
from meterlake.ingest.payloads import DECODERS, FormatOptions
from meterlake.ingest.readings import to_us

if TYPE_CHECKING:
    from conftest import Scale

DATA: Final = Path(__file__).resolve().parent.parent / "tests" / "data" / "payloads"
MESSAGES: Final = {"smoke": 300, "full": 30_000}
"""Messages decoded per round and case (batches: a hundredth as many)."""
CANONICAL_BATCH_TARGET: Final = 300_000
"""Canonical 100-reading batches: readings/s at least (full scale)."""
RECORDED: Final = {
    "tasmota ENERGY (plug)": "tasmota/plug_loaded",
    "tasmota SML": "tasmota/sml_hichi",
    "shelly-gen2 NotifyStatus em:0": "shelly-gen2/pro3em_notify_em",
    "shelly-gen2 GetStatus (em + emdata)": "shelly-gen2/pro3em_getstatus_response",
    "zigbee2mqtt plug": "zigbee2mqtt/ts0121_plug",
    "mapping (8 fields)": "mapping/graylogic_modbus_state",
}


@dataclass(frozen=True)
class Case:
    """Messages of one format, decoded one after another."""

    fmt: str
    messages: list[bytes]
    topic: str
    received_at_us: int
    options: FormatOptions

    def decode_all(self) -> int:
        decode = DECODERS[self.fmt]
        readings = 0
        for payload in self.messages:
            readings += len(
                decode(
                    payload,
                    topic=self.topic,
                    received_at_us=self.received_at_us,
                    options=self.options,
                )
            )
        return readings

    def parse_all(self) -> None:
        for payload in self.messages:
            json.loads(payload)


def canonical_messages(count: int, per_message: int, seed: int = 20261001) -> Case:
    """``count`` seeded canonical messages of ``per_message`` readings (one meter each)."""
    rng = random.Random(seed)
    start = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
    messages = []
    for n in range(count):
        ts = (start + dt.timedelta(seconds=n)).isoformat().replace("+00:00", "Z")
        items = [
            {
                "meter_id": f"m-{(n * per_message + i) % 50_000:05d}",
                "ts": ts,
                "readings": {"energy_import_kwh": round(rng.uniform(0, 50_000), 3)},
            }
            for i in range(per_message)
        ]
        messages.append(json.dumps(items[0] if per_message == 1 else items).encode())
    received = to_us(start + dt.timedelta(seconds=count // 2))
    options = FormatOptions(max_clock_ahead_s=count)  # every message's time is trusted
    return Case("canonical", messages, "gateways/gw1/readings", received, options)


def recorded_case(name: str, count: int) -> Case:
    """``count`` copies of a recorded payload with its topic, receipt time and options."""
    expected = json.loads((DATA / f"{name}.expected.json").read_text(encoding="utf-8"))
    options: dict[str, Any] = dict(expected["options"])
    if "mapping" in options:
        options["mapping"] = PayloadMapping.model_validate(options["mapping"])
    received = to_us(dt.datetime.fromisoformat(expected["received_at"]))
    payload = (DATA / f"{name}.json").read_bytes()
    fmt = name.split("/", maxsplit=1)[0]
    return Case(fmt, [payload] * count, expected["topic"], received, FormatOptions(**options))


def test_payload_decode_throughput(
    benchmark: Any,
    scale: Scale,
    timer: Callable[[Callable[[], object]], float],
    table_printer: Callable[[str, tuple[str, ...], list[tuple[str, ...]]], None],
) -> None:
    count = MESSAGES[scale.name]
    cases = {
        "canonical, 1 reading/message": canonical_messages(count, 1),
        "canonical, 100-reading batches": canonical_messages(count // 100, 100),
        **{label: recorded_case(name, count) for label, name in RECORDED.items()},
    }
    readings = {label: case.decode_all() for label, case in cases.items()}  # warm up, count
    decode_s: dict[str, list[float]] = {label: [] for label in cases}
    parse_s: dict[str, list[float]] = {label: [] for label in cases}

    def one_round() -> None:
        for label, case in cases.items():
            parse_s[label].append(timer(case.parse_all))
            decode_s[label].append(timer(case.decode_all))

    benchmark.pedantic(one_round, rounds=scale.repeats)

    rate = {label: readings[label] / min(decode_s[label]) for label in cases}
    table_printer(
        f"payload decoding, single-threaded (best of {scale.repeats}, scale {scale.name})",
        ("case", "messages", "readings", "readings/s", "messages/s", "x json.loads"),
        [
            (
                label,
                f"{len(case.messages):,}",
                f"{readings[label]:,}",
                f"{rate[label]:,.0f}",
                f"{len(case.messages) / min(decode_s[label]):,.0f}",
                f"{min(decode_s[label]) / min(parse_s[label]):.2f}",
            )
            for label, case in cases.items()
        ],
    )
    benchmark.extra_info.update({"readings_per_s": rate})
    assert readings["canonical, 100-reading batches"] == 100 * (count // 100)
    if scale.strict:
        batches = rate["canonical, 100-reading batches"]
        assert batches >= CANONICAL_BATCH_TARGET, (
            f"canonical 100-reading batches decode at {batches:,.0f} readings/s "
            f"(target {CANONICAL_BATCH_TARGET:,})"
        )
