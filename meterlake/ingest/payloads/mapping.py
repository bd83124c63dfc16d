"""The ``mapping`` format: any JSON, decoded by a field mapping from the configuration.

Each mapped field (a dot path with list indices) gives one canonical quantity; its raw value is
multiplied by ``scale`` and converted from its ``unit`` with
:func:`meterlake.config.units.conversion_factor`, once. The optional timestamp field is ISO 8601,
epoch seconds/milliseconds/microseconds or a ``strptime`` pattern; times without a zone are in
the mapping's or the subscription's zone. ``meter_id`` is required: a topic segment, a field or a
fixed id. A payload may hold several records (a JSON list, or a list at ``records``); each is
decoded like a whole payload, and ``{field:...}`` in the meter-id template refers to the record.

Missing fields are skipped (devices often publish partial updates); a field of the wrong type
makes the whole payload undecodable.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Final

from meterlake.config.errors import ConfigError
from meterlake.ingest.payloads._core import (
    MISSING,
    CompiledMapping,
    FormatOptions,
    NoReadingsError,
    PayloadError,
    add_reading,
    choose_ts,
    datetime_to_us,
    describe,
    epoch_to_us,
    format_path,
    get_path,
    iso_to_us,
    load_json,
    number,
)
from meterlake.ingest.readings import Reading

EPOCH_UNITS_US: Final = {"epoch_s": 1_000_000, "epoch_ms": 1_000, "epoch_us": 1}
_DECIMAL: Final = re.compile(r"-?\d{1,20}(\.\d{1,9})?")


def decode_mapping(
    payload: bytes, *, topic: str, received_at_us: int, options: FormatOptions
) -> list[Reading]:
    """Readings of a payload decoded by ``options.mapping``.

    Parameters
    ----------
    payload
        The message body (JSON).
    topic
        The MQTT topic; the readings' ``source``.
    received_at_us
        When the gateway received the message, UTC [us].
    options
        ``mapping`` (required), ``meter_id`` (required), zone and clock window.

    Raises
    ------
    ConfigError
        ``options`` has no mapping or no meter id (a configuration mistake, not a bad payload).

    Examples
    --------
    >>> from meterlake.config.payload_formats import PayloadMapping
    >>> mapping = PayloadMapping.model_validate({
    ...     "fields": [{"path": "e", "quantity": "energy_import_kwh", "unit": "Wh"}],
    ...     "timestamp": {"path": "t", "format": "epoch_s"}})
    >>> options = FormatOptions(meter_id="{topic[1]}", mapping=mapping)
    >>> [r] = decode_mapping(b'{"e": 1234567, "t": 1790813700}', topic="site/m7/data",
    ...                      received_at_us=1_790_813_701_000_000, options=options)
    >>> r.meter_id, r.quantity, r.value, r.ts_us, r.quality
    ('m7', 'energy_import_kwh', 1234.567, 1790813700000000, ())
    """
    compiled = options.compiled
    if compiled is None or options.rule is None:
        raise ConfigError('format "mapping" needs options with a mapping and a meter_id')
    rule = options.rule
    doc = load_json(payload)
    records = _records(doc, compiled)
    window = options.clock_window(received_at_us)
    out: list[Reading] = []
    for record in records:
        values: list[tuple[str, float]] = []
        for path, quantity, factor in compiled.fields:
            raw = get_path(record, path)
            if raw is MISSING:
                continue
            value = number(raw, format_path(path))
            if value is not None:
                values.append((quantity, value * factor))
        if not values:
            continue
        device_us = _timestamp(record, compiled, options, received_at_us)
        ts_us, flags = choose_ts(device_us, received_at_us, window)
        meter_id = rule.render(topic, record)
        for quantity, value in values:
            add_reading(out, meter_id, ts_us, quantity, value, flags, topic)
    if not out:
        raise NoReadingsError(
            "none of the mapped fields ("
            + ", ".join(format_path(path) for path, _, _ in compiled.fields)
            + ") is in this payload"
        )
    return out


def _records(doc: Any, compiled: CompiledMapping) -> list[Any]:
    if type(doc) is list:
        return doc
    if compiled.records is None:
        return [doc]
    records = get_path(doc, compiled.records)
    if type(records) is not list:
        what = "missing" if records is MISSING else describe(records)
        raise PayloadError(f"records {format_path(compiled.records)}: expected a list, got {what}")
    return records


def _timestamp(
    record: Any, compiled: CompiledMapping, options: FormatOptions, received_at_us: int
) -> int | None:
    if compiled.timestamp is None:
        return None
    path, fmt, zone = compiled.timestamp
    raw = get_path(record, path)
    if raw is MISSING or raw is None:
        return None
    where = f"timestamp {format_path(path)}"
    zone = zone or options.zone
    if fmt in EPOCH_UNITS_US:
        if type(raw) is str and _DECIMAL.fullmatch(raw):
            raw = float(raw)
        value = number(raw, where)
        return None if value is None else epoch_to_us(value, EPOCH_UNITS_US[fmt])
    if type(raw) is not str:
        raise PayloadError(f"{where}: expected a string, got {describe(raw)}")
    if fmt == "iso8601":
        return iso_to_us(raw, zone, received_at_us)
    try:
        moment = dt.datetime.strptime(raw, fmt)
    except ValueError:
        return None
    return datetime_to_us(moment, zone, received_at_us)
