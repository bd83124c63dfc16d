"""The ``zigbee2mqtt`` format: the state a Zigbee2MQTT bridge publishes on ``zigbee2mqtt/<name>``.

The metering properties are the ones zigbee-herdsman-converters exposes with units: ``energy``
[kWh] (consumed), ``produced_energy`` or ``energy_produced`` [kWh], ``energy_tier_N`` and
``produced_energy_tier_N`` [kWh], ``power`` [W], ``power_apparent`` [VA], ``power_reactive``
[var], ``voltage`` [V], ``current`` [A], ``power_factor`` (a fraction: the ZCL converter divides
the cluster's percent by 100), ``ac_frequency`` [Hz], and per phase ``power_phase_b``,
``voltage_phase_c``, ... . As in the ZCL electrical-measurement cluster, when phase B/C fields
are present, ``power``/``voltage``/``current`` are those of phase A (``power_l1_w`` ...).

Battery devices publish a ``voltage`` in mV: a ``voltage`` without any energy, power or current
field is not taken for a metering value. ``last_seen`` (if the bridge's ``last_seen`` option is
on: ISO 8601 or epoch milliseconds) is the time of the reading; without it the receipt time is
used, flagged ``clock_invalid``. The meter id defaults to ``{topic[1]}`` (the friendly name).
"""

from __future__ import annotations

from typing import Any, Final

from meterlake.ingest.payloads._core import (
    FormatOptions,
    MeterIdRule,
    NoReadingsError,
    PayloadError,
    add_reading,
    choose_ts,
    describe,
    epoch_to_us,
    iso_to_us,
    load_json,
    number,
    put_value,
)
from meterlake.ingest.readings import Reading

DEFAULT_METER_ID: Final = MeterIdRule.parse("{topic[1]}")
_US_PER_MS: Final = 1000


def _fields() -> dict[str, str]:
    fields = {
        "energy": "energy_import_kwh",
        "produced_energy": "energy_export_kwh",
        "energy_produced": "energy_export_kwh",
        "power_apparent": "apparent_power_va",
        "power_reactive": "reactive_power_var",
        "power_factor": "power_factor",
        "ac_frequency": "frequency_hz",
    }
    for tier in range(1, 7):
        fields[f"energy_tier_{tier}"] = f"energy_import_t{tier}_kwh"
        fields[f"produced_energy_tier_{tier}"] = f"energy_export_t{tier}_kwh"
    for phase, letter in ((2, "b"), (3, "c")):
        fields[f"power_phase_{letter}"] = f"power_l{phase}_w"
        fields[f"voltage_phase_{letter}"] = f"voltage_l{phase}_v"
        fields[f"current_phase_{letter}"] = f"current_l{phase}_a"
    return fields


FIELDS: Final = _fields()
"""Properties with one meaning, whatever else the payload holds."""
PHASE_A: Final = {
    "power": ("power_w", "power_l1_w"),
    "voltage": ("voltage_v", "voltage_l1_v"),
    "current": ("current_a", "current_l1_a"),
}
"""Properties that are phase A's when phase B/C properties are present: (single, phase A)."""
_PHASE_BC: Final = tuple(name for name in FIELDS if "_phase_" in name)
_NOT_METERING: Final = frozenset({"voltage_v", "voltage_l1_v", "voltage_l2_v", "voltage_l3_v"})


def decode_zigbee2mqtt(
    payload: bytes, *, topic: str, received_at_us: int, options: FormatOptions
) -> list[Reading]:
    """Readings of a Zigbee2MQTT device state message.

    Parameters
    ----------
    payload
        The message body (a JSON object).
    topic
        ``zigbee2mqtt/<friendly_name>``; the readings' ``source``.
    received_at_us
        When the gateway received the message, UTC [us].
    options
        Meter-id template (default ``{topic[1]}``), zone of a local ``last_seen`` and clock window.

    Examples
    --------
    >>> body = b'{"energy":1.63,"power":46.5,"state":"ON","linkquality":120}'
    >>> rows = decode_zigbee2mqtt(body, topic="zigbee2mqtt/fridge_plug",
    ...                           received_at_us=1_790_813_700_000_000, options=FormatOptions())
    >>> [(r.meter_id, r.quantity, r.value, r.quality) for r in rows]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('fridge_plug', 'energy_import_kwh', 1.63, ('clock_invalid',)),
     ('fridge_plug', 'power_w', 46.5, ('clock_invalid',))]
    """
    doc = load_json(payload)
    if type(doc) is not dict:
        raise PayloadError(f"expected a JSON object, got {describe(doc)}")
    values: dict[str, float] = {}
    for name, quantity in FIELDS.items():
        raw = doc.get(name)
        if raw is not None:
            put_value(values, quantity, number(raw, name), name)
    three_phase = any(doc.get(name) is not None for name in _PHASE_BC)
    for name, (single, phase_a) in PHASE_A.items():
        raw = doc.get(name)
        if raw is not None:
            put_value(values, phase_a if three_phase else single, number(raw, name), name)
    if not values.keys() - _NOT_METERING:
        raise NoReadingsError(
            "no metering fields (energy, power, current ...); a lone voltage is a battery's [mV]"
        )
    device_us = _last_seen(doc.get("last_seen"), options, received_at_us)
    ts_us, flags = choose_ts(device_us, received_at_us, options.clock_window(received_at_us))
    meter_id = options.meter_rule(DEFAULT_METER_ID).render(topic, doc)
    out: list[Reading] = []
    for quantity, value in values.items():
        add_reading(out, meter_id, ts_us, quantity, value, flags, topic)
    return out


def _last_seen(value: Any, options: FormatOptions, received_at_us: int) -> int | None:
    if value is None:
        return None
    if type(value) is str:
        return iso_to_us(value, options.zone, received_at_us)
    millis = number(value, "last_seen")
    return None if millis is None else epoch_to_us(millis, _US_PER_MS)
