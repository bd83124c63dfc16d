"""Payload decoders: recorded payloads, units, clocks, meter ids, the config model, and fuzzing.

Recorded payloads live in ``tests/data/payloads/<format>/<name>.json`` (verbatim, as published)
with ``<name>.expected.json`` beside each: the topic, the receipt time, the options and either
the exact readings or the error it must raise.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pydantic
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from meterlake.config.errors import ConfigError, PermanentError
from meterlake.config.ids import validate_meter_id
from meterlake.config.payload_formats import (
    PAYLOAD_FORMATS,
    PayloadFormatSettings,
    PayloadMapping,
    parse_field_path,
    parse_meter_id_template,
)
from meterlake.config.schemas import READINGS, Quality, is_known_quantity
from meterlake.ingest import payloads
from meterlake.ingest.payloads import (
    DECODERS,
    FormatOptions,
    NoReadingsError,
    PayloadError,
    decode_canonical,
    decode_mapping,
    decode_payload,
    decode_shelly,
    decode_tasmota,
    decode_zigbee2mqtt,
    shelly,
    tasmota,
    zigbee2mqtt,
)
from meterlake.ingest.readings import Reading, readings_frame, to_us

DATA = Path(__file__).resolve().parent.parent / "data" / "payloads"
EXPECTED = sorted(DATA.glob("*/*.expected.json"))
QUALITY_FLAGS = frozenset(q.value for q in Quality)
T0 = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
T0_US = to_us(T0)
ENERGY_MAPPING = PayloadMapping.model_validate(
    {
        "fields": [
            {"path": "e", "quantity": "energy_import_kwh", "unit": "Wh"},
            {"path": "p", "quantity": "power_w", "unit": "kW"},
            {"path": "i[0]", "quantity": "current_l1_a", "unit": "mA", "scale": 10},
        ],
        "timestamp": {"path": "t", "format": "epoch_ms"},
    }
)


def us(text: str) -> int:
    return to_us(dt.datetime.fromisoformat(text))


def options_of(raw: dict[str, Any]) -> FormatOptions:
    raw = dict(raw)
    if "mapping" in raw:
        raw["mapping"] = PayloadMapping.model_validate(raw["mapping"])
    return FormatOptions(**raw)


def as_rows(readings: list[Reading]) -> list[tuple[Any, ...]]:
    return sorted(
        (r.meter_id, r.quantity, r.ts_us, r.value, tuple(sorted(r.quality)), r.source)
        for r in readings
    )


def assert_valid(readings: list[Reading], topic: str) -> None:
    """What every decoder promises of the readings it returns."""
    assert readings, "a decoder returns readings or raises"
    for r in readings:
        assert type(r) is Reading
        assert validate_meter_id(r.meter_id) == r.meter_id
        assert is_known_quantity(r.quantity), r.quantity
        assert type(r.ts_us) is int
        assert type(r.value) is float
        assert math.isfinite(r.value) or Quality.INVALID_VALUE.value in r.quality
        assert set(r.quality) <= QUALITY_FLAGS
        assert len(set(r.quality)) == len(r.quality)
        assert r.source == topic


# --- recorded payloads ----------------------------------------------------------------------


def test_every_format_has_recorded_payloads_and_every_payload_an_expectation() -> None:
    formats = {p.name for p in DATA.iterdir() if p.is_dir()}
    assert formats == set(PAYLOAD_FORMATS) == set(DECODERS)
    payload_files = {p for p in DATA.glob("*/*.json") if not p.name.endswith(".expected.json")}
    expected_for = {p.with_name(p.name.replace(".expected.json", ".json")) for p in EXPECTED}
    assert payload_files == expected_for


@pytest.mark.parametrize("case", EXPECTED, ids=lambda p: f"{p.parent.name}/{p.name[:-14]}")
def test_recorded_payload_decodes_to_exactly_the_expected_readings(case: Path) -> None:
    fmt = case.parent.name
    payload = case.with_name(case.name.replace(".expected.json", ".json")).read_bytes()
    expected = json.loads(case.read_text(encoding="utf-8"))
    topic, received = expected["topic"], us(expected["received_at"])
    options = options_of(expected["options"])
    if "error" in expected:
        error = getattr(payloads, expected["error"]["type"])
        with pytest.raises(error, match=expected["error"]["match"]):
            DECODERS[fmt](payload, topic=topic, received_at_us=received, options=options)
        return
    got = DECODERS[fmt](payload, topic=topic, received_at_us=received, options=options)
    assert_valid(got, topic)
    want = [
        (
            e["meter_id"],
            e["quantity"],
            us(e["ts"]),
            float(e["value"]),
            tuple(sorted(e["quality"])),
            topic,
        )
        for e in expected["readings"]
    ]
    got_rows = as_rows(got)
    assert [row[:3] + row[4:] for row in got_rows] == [row[:3] + row[4:] for row in sorted(want)]
    for (*_, value, _, _), (*_, expect, _, _) in zip(got_rows, sorted(want), strict=True):
        assert value == pytest.approx(expect, rel=1e-12, abs=1e-12, nan_ok=True)


def test_recorded_readings_conform_to_the_readings_contract() -> None:
    rows: list[Reading] = []
    for case in EXPECTED:
        expected = json.loads(case.read_text(encoding="utf-8"))
        if "error" in expected:
            continue
        payload = case.with_name(case.name.replace(".expected.json", ".json")).read_bytes()
        rows += decode_payload(
            case.parent.name,
            payload,
            topic=expected["topic"],
            received_at_us=us(expected["received_at"]),
            options=options_of(expected["options"]),
        )
    frame = readings_frame(rows, received_at_us=T0_US)
    assert frame.schema == READINGS.schema
    assert frame.height == len(rows)


# --- canonical --------------------------------------------------------------------------------


def canonical_body(*objects: dict[str, Any]) -> bytes:
    body = objects[0] if len(objects) == 1 else list(objects)
    return json.dumps(body).encode()


def obj(meter: str = "m-1", ts: str = "2026-10-01T00:15:00Z", **readings: Any) -> dict[str, Any]:
    return {"meter_id": meter, "ts": ts, "readings": readings or {"power_w": 1.5}}


RECEIVED_C = T0_US + 16 * 60_000_000  # a minute after the 00:15 readings


def decode_c(body: bytes, **option: Any) -> list[Reading]:
    return decode_canonical(
        body, topic="meters/x", received_at_us=RECEIVED_C, options=FormatOptions(**option)
    )


def test_canonical_batch_is_the_concatenation_of_its_objects() -> None:
    objects = [obj(f"m-{i}", power_w=i, energy_import_kwh=i / 8) for i in range(100)]
    batch = decode_c(canonical_body(*objects))
    one_by_one = [r for o in objects for r in decode_c(canonical_body(o))]
    assert batch == one_by_one
    assert len(batch) == 200
    assert {type(r.value) for r in batch} == {float}


def test_canonical_values_nan_infinity_null_and_power_factor() -> None:
    body = b'{"meter_id":"m-1","ts":"2026-10-01T00:15:00Z","readings":{"power_w":NaN,'
    body += b'"voltage_v":Infinity,"current_a":null,"power_factor":1.25,"frequency_hz":50}}'
    rows = {r.quantity: r for r in decode_c(body)}
    assert math.isnan(rows["power_w"].value)
    assert rows["power_w"].quality == ("invalid_value",)
    assert rows["voltage_v"].value == math.inf
    assert rows["voltage_v"].quality == ("invalid_value",)
    assert math.isnan(rows["current_a"].value)
    assert rows["current_a"].quality == ("invalid_value",)
    assert rows["power_factor"].quality == ("out_of_range",)
    assert rows["frequency_hz"].quality == ()
    forwarded = b'{"meter_id":"m-1","ts":"2026-10-01T00:15:00Z","quality":["invalid_value",'
    forwarded += b'"out_of_range"],"readings":{"power_w":NaN,"power_factor":7}}'
    assert {r.quality for r in decode_c(forwarded)} == {("invalid_value", "out_of_range")}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        (b"", "empty payload"),
        (b"   \n", "empty payload"),
        (b"\xff\xfe\x00garbage", "not JSON"),
        (b'{"meter_id": "m-1",', "not JSON"),
        (b"[]", "empty batch"),
        (b'"just a string"', "expected a JSON object or a list"),
        (b"[1, 2]", "item 0: expected an object"),
        (b'{"meter_id":"m-1","ts":"2026-10-01T00:15:00Z"}', "missing key 'readings'"),
        (canonical_body(obj(meter="../etc")), "is not allowed"),
        (canonical_body(obj(meter=7)), "meter id must be a string"),  # type: ignore[arg-type]
        (canonical_body(obj(ts="2026-10-01 00:15")), "has no zone"),
        (canonical_body(obj(ts="yesterday")), "not an ISO 8601 time"),
        (canonical_body(obj(ts=1790813700)), "ts must be an ISO 8601 string"),  # type: ignore[arg-type]
        (canonical_body(obj(kwh=1.0)), "'kwh' is not a canonical quantity"),
        (canonical_body(obj(power_w="512")), "power_w: expected a number, got a string"),
        (canonical_body(obj(power_w=True)), "power_w: expected a number, got a boolean"),
        (canonical_body(obj(power_w={"v": 1})), "power_w: expected a number, got an object"),
        (canonical_body({**obj(), "reading": {}}), "unknown key 'reading'"),
        (canonical_body({**obj(), "quality": ["made_up"]}), "quality must be a list of flags"),
        (canonical_body({**obj(), "quality": [{}]}), "quality must be a list of flags"),
        (
            canonical_body({"meter_id": "m-1", "ts": "2026-10-01T00:15:00Z", "readings": {}}),
            "non-empty",
        ),
        (b'{"meter_id":"m-1","ts":"2026-10-01T00:15:00Z","readings":{"power_w":1e999999}}', ""),
        (
            b'{"meter_id":"m-1","ts":"2026-10-01T00:15:00Z","readings":{"power_w":'
            + b"9" * 400
            + b"}}",
            "number too large",
        ),
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
)
def test_canonical_refuses_what_it_cannot_decode(body: bytes, reason: str) -> None:
    if reason == "":  # 1e999999 parses as inf: kept and flagged, not refused
        [row] = decode_c(body)
        assert row.value == math.inf
        assert row.quality == ("invalid_value",)
        return
    with pytest.raises(PayloadError, match=reason):
        decode_c(body)


def test_payload_error_is_a_permanent_error_with_a_readable_reason() -> None:
    with pytest.raises(PermanentError) as caught:
        decode_c(canonical_body(obj(), obj(power_w="12 W")))
    assert str(caught.value) == "item 1: power_w: expected a number, got a string ('12 W')"
    assert issubclass(NoReadingsError, PayloadError)


def test_canonical_clock_window() -> None:
    future = (T0 + dt.timedelta(hours=1)).isoformat()
    [row] = decode_c(canonical_body(obj(ts=future)))
    assert (row.ts_us, row.quality) == (RECEIVED_C, ("clock_invalid",))
    [row] = decode_c(canonical_body(obj(ts=future)), max_clock_ahead_s=7200)
    assert (row.ts_us, row.quality) == (us(future), ())
    old = "2026-01-01T00:00:00+00:00"
    [row] = decode_c(canonical_body(obj(ts=old)))  # store-and-forward: old times are kept
    assert (row.ts_us, row.quality) == (us(old), ())
    [row] = decode_c(canonical_body(obj(ts="1970-01-01T00:00:00Z")))  # not absurd ones
    assert (row.ts_us, row.quality) == (RECEIVED_C, ("clock_invalid",))
    [row] = decode_c(canonical_body(obj(ts=old)), max_clock_behind_s=3600)
    assert row.quality == ("clock_invalid",)


# --- units: normalised at the edge, exactly once ---------------------------------------------


def test_mapping_converts_wh_kw_and_ma_once() -> None:
    body = b'{"e": 1234567, "p": 1.5, "i": [250], "t": 1790812799877}'
    options = FormatOptions(meter_id="{topic[1]}", mapping=ENERGY_MAPPING)
    rows = {
        r.quantity: r
        for r in decode_mapping(body, topic="site/m-7", received_at_us=T0_US, options=options)
    }
    assert rows["energy_import_kwh"].value == 1234.567  # Wh -> kWh
    assert rows["power_w"].value == 1500.0  # kW -> W
    assert rows["current_l1_a"].value == 2.5  # 250 x 10 mA -> A
    assert {r.ts_us for r in rows.values()} == {T0_US - 123_000}  # epoch ms


def test_shelly_wh_totals_become_kwh() -> None:
    body = b'{"method":"NotifyStatus","params":{"ts":1790813700,"emdata:0":{"total_act":1000.5}}}'
    [row] = decode_shelly(
        body, topic="dev/events/rpc", received_at_us=T0_US, options=FormatOptions()
    )
    assert (row.quantity, row.value) == ("energy_import_kwh", 1.0005)


def test_tasmota_sml_energy_unit_only_applies_to_sml_fields() -> None:
    body = b'{"Time":"2026-10-01T08:00:00","ENERGY":{"Total":2.5},"SML":{"1_8_0":2500}}'
    with pytest.raises(PayloadError, match="put \\{channel\\} in the meter_id template"):
        decode_tasmota(body, topic="tele/d/SENSOR", received_at_us=T0_US, options=FormatOptions())
    options = FormatOptions(meter_id="{topic[1]}-{channel}", sml_energy_unit="Wh")
    rows = decode_tasmota(body, topic="tele/d/SENSOR", received_at_us=T0_US, options=options)
    assert {(r.meter_id, r.quantity, r.value) for r in rows} == {
        ("d-ENERGY", "energy_import_kwh", 2.5),
        ("d-SML", "energy_import_kwh", 2.5),
    }


# --- clocks -----------------------------------------------------------------------------------


def tasmota_ts(
    time: Any, *, received_at_us: int = T0_US, **option: Any
) -> tuple[int, tuple[str, ...]]:
    doc: dict[str, Any] = {"ENERGY": {"Total": 1.0}}
    if time is not None:
        doc = {"Time": time, **doc} if not isinstance(time, dict) else {**time, **doc}
    [row] = decode_tasmota(
        json.dumps(doc).encode(),
        topic="tele/d/SENSOR",
        received_at_us=received_at_us,
        options=FormatOptions(**option),
    )
    return row.ts_us, row.quality


def test_tasmota_local_time_is_read_in_the_subscription_zone() -> None:
    assert tasmota_ts("2026-10-01T07:59:58") == (T0_US - 2_000_000, ())  # Asia/Shanghai
    assert tasmota_ts("2026-10-01T00:59:58", timezone="Europe/London") == (T0_US - 2_000_000, ())
    assert tasmota_ts("2026-10-01T07:59:58.250") == (T0_US - 1_750_000, ())  # Time 4: ms
    assert tasmota_ts("2026-09-30T23:59:58Z") == (T0_US - 2_000_000, ())  # a zone wins


def test_tasmota_epoch_and_missing_or_implausible_clocks() -> None:
    assert tasmota_ts({"Time": "2020-01-01T00:00:00", "Epoch": T0_US // 10**6 - 3}) == (
        T0_US - 3_000_000,
        (),
    )
    assert tasmota_ts(T0_US / 10**6 - 4) == (T0_US - 4_000_000, ())  # Time 3: epoch in Time
    for bad in ("1970-01-01T00:00:23", "2026-13-45T99:00:00", "", None, math.nan):
        assert tasmota_ts(bad) == (T0_US, ("clock_invalid",)), bad
    with pytest.raises(PayloadError, match="Time: expected a number, got a list"):
        tasmota_ts([2026])


def test_local_time_in_the_repeated_dst_hour_is_the_one_nearer_the_receipt() -> None:
    # Europe/Berlin, 25 Oct 2026: 02:30 happens at 00:30 UTC (CEST) and again at 01:30 UTC (CET).
    early, late = us("2026-10-25T00:30:00Z"), us("2026-10-25T01:30:00Z")
    for received, expected in ((early + 5_000_000, early), (late + 5_000_000, late)):
        ts, quality = tasmota_ts(
            "2026-10-25T02:30:00", received_at_us=received, timezone="Europe/Berlin"
        )
        assert (ts, quality) == (expected, ())


def test_zigbee2mqtt_last_seen_epoch_and_local_iso() -> None:
    def ts_of(last_seen: Any) -> tuple[int, tuple[str, ...]]:
        body = json.dumps({"power": 5, "last_seen": last_seen}).encode()
        [row] = decode_zigbee2mqtt(
            body, topic="zigbee2mqtt/plug", received_at_us=T0_US, options=FormatOptions()
        )
        return row.ts_us, row.quality

    assert ts_of(T0_US // 1000 - 1500) == (T0_US - 1_500_000, ())
    assert ts_of("2026-10-01T07:59:59+08:00") == (T0_US - 1_000_000, ())
    assert ts_of("2026-10-01T07:59:59") == (T0_US - 1_000_000, ())  # ISO_8601_local w/o zone
    assert ts_of("garbage") == (T0_US, ("clock_invalid",))
    with pytest.raises(PayloadError, match="last_seen: expected a number"):
        ts_of({"at": 1})


def test_shelly_notification_time_nan_or_missing_falls_back_to_receipt() -> None:
    def quality_of(ts: Any) -> tuple[str, ...]:
        params = (
            {"em1:0": {"act_power": 3.0}} if ts is None else {"ts": ts, "em1:0": {"act_power": 3}}
        )
        body = json.dumps({"method": "NotifyStatus", "params": params}).encode()
        [row] = decode_shelly(
            body, topic="p/events/rpc", received_at_us=T0_US, options=FormatOptions()
        )
        return row.quality

    assert quality_of(T0_US / 1e6) == ()
    assert quality_of(None) == ("clock_invalid",)
    assert quality_of(math.nan) == ("clock_invalid",)
    assert quality_of(T0_US / 1e6 + 301) == ("clock_invalid",)  # > 300 s ahead
    assert quality_of(T0_US / 1e6 - 8 * 86_400) == ("clock_invalid",)  # > 7 days behind


def test_mapping_timestamp_formats() -> None:
    def ts_of(fmt: str, value: Any, zone: str | None = None) -> tuple[int, tuple[str, ...]]:
        m = PayloadMapping.model_validate(
            {
                "fields": [{"path": "v", "quantity": "power_w"}],
                "timestamp": {"path": "t", "format": fmt, "timezone": zone},
            }
        )
        options = FormatOptions(meter_id="fixed-1", mapping=m, timezone="Europe/Berlin")
        body = json.dumps({"v": 1, "t": value}).encode()
        [row] = decode_mapping(body, topic="x", received_at_us=T0_US, options=options)
        return row.ts_us, row.quality

    assert ts_of("iso8601", "2026-09-30T23:59:00Z") == (T0_US - 60_000_000, ())
    assert ts_of("iso8601", "2026-10-01T01:59:00") == (T0_US - 60_000_000, ())  # Berlin, CEST
    assert ts_of("epoch_s", T0_US // 10**6 - 60) == (T0_US - 60_000_000, ())
    assert ts_of("epoch_s", str(T0_US // 10**6 - 60)) == (T0_US - 60_000_000, ())
    assert ts_of("epoch_us", T0_US - 7) == (T0_US - 7, ())
    assert ts_of("%d.%m.%Y %H:%M", "01.10.2026 07:59", "Asia/Shanghai") == (T0_US - 60_000_000, ())
    assert ts_of("%d.%m.%Y %H:%M", "not a date") == (T0_US, ("clock_invalid",))
    with pytest.raises(PayloadError, match="expected a string"):
        ts_of("iso8601", 17)


# --- meter ids --------------------------------------------------------------------------------


def meter_of(template: str | None, topic: str, body: bytes = b'{"power": 1}') -> str:
    [row] = decode_zigbee2mqtt(
        body, topic=topic, received_at_us=T0_US, options=FormatOptions(meter_id=template)
    )
    return row.meter_id


def test_meter_id_templates() -> None:
    assert meter_of(None, "zigbee2mqtt/plug_7") == "plug_7"
    assert meter_of("{topic[-1]}", "home/zigbee2mqtt/plug_7") == "plug_7"
    assert meter_of("gw1:{topic[0]}-{topic[2]}", "a/b/c") == "gw1:a-c"
    assert meter_of("fixed-001", "zigbee2mqtt/whatever") == "fixed-001"
    body = b'{"power": 1, "device": {"serial": 123456, "name": "x"}}'
    assert meter_of("sn-{field:device.serial}", "z/p", body) == "sn-123456"
    assert meter_of("{field:device.name}", "z/p", body) == "x"


@pytest.mark.parametrize(
    ("template", "topic", "body", "reason"),
    [
        ("{topic[3]}", "zigbee2mqtt/plug", b'{"power": 1}', "has no segment 3"),
        (None, "zigbee2mqtt/living room", b'{"power": 1}', "'living room' is not allowed"),
        (None, "zigbee2mqtt/..", b'{"power": 1}', "is not allowed"),
        ("{field:serial}", "z/p", b'{"power": 1}', "field serial is missing"),
        ("{field:serial}", "z/p", b'{"power": 1, "serial": 1.5}', "must be a string or an integer"),
        ("{field:a.b}", "z/p", b'{"power": 1, "a": [1]}', "a is a list, not an object"),
        ("{channel}", "z/p", b'{"power": 1}', "no channel"),
    ],
)
def test_meter_id_problems_are_payload_errors(
    template: str | None, topic: str, body: bytes, reason: str
) -> None:
    with pytest.raises(PayloadError, match=reason):
        meter_of(template, topic, body)


def test_shelly_channels_get_their_own_meter_ids() -> None:
    body = b'{"method":"NotifyStatus","params":{"ts":1790813700,"em1:1":{"act_power":5}}}'
    topic = "shellyproem50-08f9e0e67204/events/rpc"

    def meter(template: str | None) -> str:
        options = FormatOptions(meter_id=template)
        [row] = decode_shelly(body, topic=topic, received_at_us=T0_US, options=options)
        return row.meter_id

    assert meter(None) == "shellyproem50-08f9e0e67204:1"
    assert meter("{topic[0]}-ch{channel}") == "shellyproem50-08f9e0e67204-ch1"
    assert meter("grid") == "grid:1"


# --- the other formats' rules ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("decoder", "body", "reason"),
    [
        (decode_tasmota, b'{"ENERGY": {"Total": "12.5"}}', "ENERGY.Total: expected a number"),
        (decode_tasmota, b'{"ENERGY": [1, 2]}', "ENERGY must be an object"),
        (decode_tasmota, b'{"ENERGY": {"Power": [1, 2, 3, 4]}}', "a list of 4 values"),
        (decode_tasmota, b'{"ENERGY": {"Power": [1, null]}}', "Power\\[1\\]: expected a number"),
        (decode_tasmota, b'{"ENERGY": {"TotalTariff": 5}}', "expected a list \\[T1, T2\\]"),
        (decode_tasmota, b'{"SML": {"Total_in": 1, "1_8_0": 2}}', "two fields give"),
        (decode_tasmota, b'{"Time": "x", "Switch1": "ON"}', "no metering fields"),
        (decode_tasmota, b"[1]", "expected a JSON object"),
        (
            decode_shelly,
            b'{"method":"NotifyStatus","params":{"em:0":{"total_act_power":"5"}}}',
            "em:0.total_act_power",
        ),
        (decode_shelly, b'{"method":"NotifyStatus","params":[]}', "params must be an object"),
        (
            decode_shelly,
            b'{"method":"NotifyStatus","params":{"em:0":[1]}}',
            "expected a status object",
        ),
        (
            decode_shelly,
            b'{"method":"NotifyEvent","params":{"ts":1,"events":[]}}',
            "carries no metering",
        ),
        (decode_shelly, b'{"id":1,"error":{"code":-105}}', "without a status result"),
        (decode_shelly, b'{"switch:0":{"aenergy":5}}', "switch:0.aenergy: expected an object"),
        (decode_shelly, b'{"wifi":{"rssi":-60}}', "no Shelly metering component"),
        (decode_shelly, b"true", "online/offline message"),
        (decode_shelly, b"[true]", "expected a JSON object"),
        (decode_shelly, b'{"a_current":1,"total_act":2}', "several component types"),
        (decode_zigbee2mqtt, b'{"energy": "1.5"}', "energy: expected a number"),
        (decode_zigbee2mqtt, b'{"state": "ON"}', "no metering fields"),
        (decode_zigbee2mqtt, b"null", "expected a JSON object"),
    ],
)
def test_wrong_types_and_empty_messages(decoder: Any, body: bytes, reason: str) -> None:
    topic = "tele/d/SENSOR" if decoder is decode_tasmota else "dev/status"
    with pytest.raises(PayloadError, match=reason):
        decoder(body, topic=topic, received_at_us=T0_US, options=FormatOptions())


def test_tasmota_obis_import_and_export_power_make_signed_power() -> None:
    def power(sml: dict[str, Any]) -> float:
        body = json.dumps({"SML": sml}).encode()
        rows = decode_tasmota(
            body, topic="tele/m/SENSOR", received_at_us=T0_US, options=FormatOptions()
        )
        return next(r.value for r in rows if r.quantity == "power_w")

    assert power({"1_7_0": 500, "2_7_0": 0}) == 500
    assert power({"1.7.0": 0, "2.7.0": 320}) == -320
    assert power({"1_7_0": 500, "16_7_0": 480}) == 480  # the signed total wins


def test_zigbee2mqtt_three_phase_fields() -> None:
    body = b'{"power":100,"power_phase_b":200,"power_phase_c":300,"voltage":230,"current":0.5}'
    rows = decode_zigbee2mqtt(body, topic="z/din", received_at_us=T0_US, options=FormatOptions())
    assert {r.quantity: r.value for r in rows} == {
        "power_l1_w": 100,
        "power_l2_w": 200,
        "power_l3_w": 300,
        "voltage_l1_v": 230,
        "current_l1_a": 0.5,
    }


def test_mapping_records_and_missing_fields() -> None:
    m = PayloadMapping.model_validate(
        {"fields": [{"path": "kwh", "quantity": "energy_import_kwh"}], "records": "data.meters"}
    )
    options = FormatOptions(meter_id="{field:id}", mapping=m)
    body = b'{"data": {"meters": [{"id": "a", "kwh": 1}, {"id": "b"}, {"id": "c", "kwh": 3}]}}'
    rows = decode_mapping(body, topic="t", received_at_us=T0_US, options=options)
    assert [(r.meter_id, r.value) for r in rows] == [("a", 1.0), ("c", 3.0)]
    with pytest.raises(NoReadingsError, match="none of the mapped fields \\(kwh\\)"):
        decode_mapping(
            b'{"data":{"meters":[{"id":"a"}]}}', topic="t", received_at_us=0, options=options
        )
    with pytest.raises(PayloadError, match=r"records data\.meters: expected a list, got missing"):
        decode_mapping(b"{}", topic="t", received_at_us=0, options=options)
    with pytest.raises(ConfigError, match="needs options with a mapping"):
        decode_mapping(b"{}", topic="t", received_at_us=0, options=FormatOptions())


def test_decode_payload_dispatches_by_name() -> None:
    assert set(DECODERS) == set(PAYLOAD_FORMATS)
    with pytest.raises(ConfigError, match="unknown payload format 'modbus'"):
        decode_payload("modbus", b"{}", topic="t", received_at_us=0, options=FormatOptions())


# --- the config model ---------------------------------------------------------------------------


def test_settings_from_toml_into_options() -> None:
    raw = tomllib.loads(
        """
        [[mqtt]]
        format = "mapping"
        meter_id = "{topic[1]}"
        max_clock_behind_s = 3600
        [mqtt.mapping]
        timestamp = { path = "time", format = "%d.%m.%Y %H:%M:%S" }
        [[mqtt.mapping.fields]]
        path = "data.e_in"
        quantity = "energy_import_kwh"
        unit = "Wh"
        [[mqtt.mapping.fields]]
        path = "data.p[0]"
        quantity = "power_l1_w"
        scale = 0.1
        """
    )
    settings = PayloadFormatSettings.model_validate(raw["mqtt"][0])
    options = FormatOptions.from_settings(settings, site_timezone="Europe/Berlin")
    assert (options.timezone, options.max_clock_behind_s) == ("Europe/Berlin", 3600)
    body = b'{"time": "01.10.2026 02:00:00", "data": {"e_in": 5000, "p": [2301]}}'
    rows = decode_mapping(body, topic="plant/m-3/json", received_at_us=T0_US, options=options)
    assert {(r.meter_id, r.quantity, r.value, r.ts_us) for r in rows} == {
        ("m-3", "energy_import_kwh", 5.0, T0_US),
        ("m-3", "power_l1_w", 230.10000000000002, T0_US),
    }


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        ({"format": "mapping"}, "needs a \\[mqtt.mapping\\] table"),
        (
            {"format": "tasmota", "mapping": {"fields": [{"path": "a", "quantity": "power_w"}]}},
            "only used with",
        ),
        (
            {"format": "mapping", "mapping": {"fields": [{"path": "a", "quantity": "power_w"}]}},
            "needs meter_id",
        ),
        ({"format": "canonical", "meter_id": "{topic[1]}"}, "carry their own meter_id"),
        ({"format": "tasmota", "meter_id": "{topic}"}, "unknown placeholder \\{topic\\}"),
        ({"format": "tasmota", "meter_id": "a}b"}, "unmatched brace"),
        ({"format": "tasmota", "timezone": "Mars/Olympus"}, "not an IANA time zone"),
        ({"format": "modbus"}, "Input should be"),
        ({"format": "tasmota", "meterid": "x"}, "Extra inputs are not permitted"),
        ({"format": "tasmota", "max_clock_ahead_s": -1}, "greater than or equal to 0"),
    ],
)
def test_settings_refuse_incoherent_subscriptions(raw: dict[str, Any], reason: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=reason):
        PayloadFormatSettings.model_validate(raw)


@pytest.mark.parametrize(
    ("field", "reason"),
    [
        ({"path": "a", "quantity": "watts"}, "must be a canonical quantity"),
        ({"path": "a", "quantity": "power_w", "unit": "kWh"}, "cannot be converted to 'W'"),
        ({"path": "a", "quantity": "power_w", "unit": "hp"}, "unknown unit 'hp'"),
        ({"path": "a..b", "quantity": "power_w"}, "malformed at position 2"),
        ({"path": "a", "quantity": "power_w", "scale": 0}, "finite number other than 0"),
    ],
)
def test_field_mappings_are_checked(field: dict[str, Any], reason: str) -> None:
    with pytest.raises(pydantic.ValidationError, match=reason):
        PayloadMapping.model_validate({"fields": [field]})


def test_mapping_checks_quantities_timestamps_and_records() -> None:
    twice = [{"path": "a", "quantity": "power_w"}, {"path": "b", "quantity": "power_w"}]
    with pytest.raises(pydantic.ValidationError, match="two fields map to power_w"):
        PayloadMapping.model_validate({"fields": twice})
    one = [{"path": "a", "quantity": "power_w"}]
    with pytest.raises(pydantic.ValidationError, match="use iso8601, epoch_s"):
        PayloadMapping.model_validate({"fields": one, "timestamp": {"path": "t", "format": "unix"}})
    with pytest.raises(pydantic.ValidationError, match="does not parse what it formats"):
        PayloadMapping.model_validate({"fields": one, "timestamp": {"path": "t", "format": "%Y%"}})
    with pytest.raises(pydantic.ValidationError, match="malformed"):
        PayloadMapping.model_validate({"fields": one, "records": "a."})
    with pytest.raises(pydantic.ValidationError, match="at least 1 item"):
        PayloadMapping.model_validate({"fields": []})


def test_paths_and_templates_parse() -> None:
    assert parse_field_path('data[0]["a.b"][-1].c') == ("data", 0, "a.b", -1, "c")
    assert parse_field_path("em1:0.voltage") == ("em1:0", "voltage")
    for bad in ("", ".a", "a.", "a..b", "a.[0]", "[x]", "a[", 'a["x]'):
        with pytest.raises(ConfigError, match="malformed"):
            parse_field_path(bad)
    assert parse_meter_id_template("m-{topic[-2]}{channel}{field:x[1]}") == (
        ("text", "m-"),
        ("topic", -2),
        ("channel", None),
        ("field", ("x", 1)),
    )
    with pytest.raises(ConfigError, match="empty"):
        parse_meter_id_template("")


def test_options_refuse_bad_values() -> None:
    with pytest.raises(ConfigError, match="IANA"):
        FormatOptions(timezone="Nowhere/Land")
    with pytest.raises(ConfigError, match="unknown placeholder"):
        FormatOptions(meter_id="{device}")
    with pytest.raises(ConfigError, match=">= 0"):
        FormatOptions(max_clock_behind_s=-5)


# --- fuzzing: every decoder returns valid readings or raises PayloadError -------------------

FUZZ = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None
)
VOCABULARY = sorted(
    {
        *tasmota.ENERGY_FIELDS,
        *tasmota.TARIFF_FIELDS,
        "Total_in",
        "1_8_0",
        "1.7.0",
        "2_7_0",
        "16_7_0",
        "Time",
        "Epoch",
        "ENERGY",
        "SML",
        "StatusSNS",
        *zigbee2mqtt.FIELDS,
        *zigbee2mqtt.PHASE_A,
        "last_seen",
        "method",
        "params",
        "result",
        "error",
        "ts",
        "id",
        "sys",
        "unixtime",
        "em:0",
        "emdata:0",
        "em1:1",
        "em1data:0",
        "switch:0",
        "aenergy",
        "total",
        *(key for specs in shelly.COMPONENT_FIELDS.values() for (key, *_), _, _ in specs),
        "meter_id",
        "readings",
        "quality",
        "energy_import_kwh",
        "power_w",
        "power_factor",
        "e",
        "p",
        "i",
        "t",
        "serial",
    }
)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=10**300, max_value=10**310)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
    | st.sampled_from(
        [
            "NotifyStatus",
            "NotifyFullStatus",
            "2026-10-01T00:15:00Z",
            "2026-10-01T08:15:00",
            "1970-01-01T00:00:00",
            "m-1",
            "clock_invalid",
        ]
    )
)
KEYS = st.sampled_from(VOCABULARY) | st.text(max_size=6)
JSON = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(KEYS, children, max_size=6),
    max_leaves=25,
)
TOPICS = st.sampled_from(
    ["tele/plug-1/SENSOR", "zigbee2mqtt/plug", "shellypro3em-1/events/rpc", "dev/status/em:0", "x"]
) | st.text(max_size=20)
FUZZ_OPTIONS = {
    "canonical": FormatOptions(),
    "tasmota": FormatOptions(meter_id="{topic[1]}{channel}"),
    "shelly-gen2": FormatOptions(),
    "zigbee2mqtt": FormatOptions(meter_id="{field:serial}"),
    "mapping": FormatOptions(meter_id="{topic[0]}", mapping=ENERGY_MAPPING),
}


def decode_or_refuse(fmt: str, payload: bytes, topic: str) -> None:
    try:
        readings = DECODERS[fmt](
            payload, topic=topic, received_at_us=T0_US, options=FUZZ_OPTIONS[fmt]
        )
    except PayloadError as exc:
        assert str(exc), "a reason a person can read"
        return
    assert_valid(readings, topic)


@pytest.mark.parametrize("fmt", PAYLOAD_FORMATS)
@FUZZ
@given(payload=st.binary(max_size=200), topic=TOPICS)
def test_fuzz_random_bytes(fmt: str, payload: bytes, topic: str) -> None:
    decode_or_refuse(fmt, payload, topic)


@pytest.mark.parametrize("fmt", PAYLOAD_FORMATS)
@FUZZ
@given(doc=JSON, topic=TOPICS, encoding=st.sampled_from(["utf-8", "utf-16", "utf-32"]))
def test_fuzz_random_json(fmt: str, doc: Any, topic: str, encoding: str) -> None:
    decode_or_refuse(fmt, json.dumps(doc).encode(encoding), topic)


CANONICAL_OBJECT = st.fixed_dictionaries(
    {
        "meter_id": st.sampled_from(["m-1", "sdm-001", "../x", ""]) | SCALARS,
        "ts": st.sampled_from(
            ["2026-10-01T00:15:00Z", "2026-10-01T08:15:00+08:00", "0001-01-01T00:00:00+01:00"]
        )
        | SCALARS,
        "readings": st.dictionaries(
            st.sampled_from(["power_w", "power_factor", "energy_import_t3_kwh", "watts"]),
            JSON,
            max_size=4,
        )
        | JSON,
    },
    optional={"quality": st.lists(st.sampled_from(sorted(QUALITY_FLAGS)) | SCALARS, max_size=3)},
)


@FUZZ
@given(doc=CANONICAL_OBJECT | st.lists(CANONICAL_OBJECT, max_size=4), topic=TOPICS)
def test_fuzz_canonical_shaped_objects(doc: Any, topic: str) -> None:
    decode_or_refuse("canonical", json.dumps(doc).encode(), topic)


def _recorded(fmt: str) -> list[tuple[Any, str]]:
    cases = []
    for case in EXPECTED:
        if case.parent.name == fmt:
            payload = case.with_name(case.name.replace(".expected.json", ".json")).read_bytes()
            cases.append((json.loads(payload), json.loads(case.read_text())["topic"]))
    return cases


def _mutate(doc: Any, draw: Callable[[st.SearchStrategy[Any]], Any]) -> Any:
    """``doc`` with some of its values replaced by random JSON."""
    if isinstance(doc, dict):
        return {
            key: (draw(JSON) if draw(st.integers(0, 7)) == 0 else _mutate(value, draw))
            for key, value in doc.items()
        }
    if isinstance(doc, list):
        return [_mutate(item, draw) for item in doc]
    return draw(JSON) if draw(st.integers(0, 3)) == 0 else doc


@pytest.mark.parametrize("fmt", PAYLOAD_FORMATS)
@FUZZ
@given(data=st.data())
def test_fuzz_mutated_recorded_payloads(fmt: str, data: st.DataObject) -> None:
    doc, topic = data.draw(st.sampled_from(_recorded(fmt)))
    mutated = _mutate(doc, data.draw)
    decode_or_refuse(fmt, json.dumps(mutated).encode(), topic)
