"""The ``shelly-gen2`` format: Shelly Gen2+ energy meters (Pro 3EM, Pro EM, EM Gen3) over MQTT.

What is read:

- RPC notifications on ``<prefix>/events/rpc``: ``NotifyStatus`` and ``NotifyFullStatus``
  (``params.ts`` is the device's UTC epoch time [s]; a notification may carry only the changed
  fields, and ``null`` for a field that went away);
- component status on ``<prefix>/status/<component>`` ("generic status update over MQTT"; no
  device time, so the receipt time is used, flagged ``clock_invalid``);
- RPC responses (``{"id":..,"result":{..}}``) of ``Shelly.GetStatus`` (time ``sys.unixtime``)
  or of a single component's ``GetStatus``.

Components and fields (per the Shelly Gen2 API component pages):

``em:N`` (Pro 3EM, three-phase)
    ``total_act_power`` [W], ``total_aprt_power`` [VA], ``a_/b_/c_act_power`` [W],
    ``a_/b_/c_voltage`` [V], ``a_/b_/c_current`` [A].
``emdata:N``
    ``total_act`` and ``total_act_ret`` [Wh], converted to kWh.
``em1:N`` (Pro EM, EM Gen3, Pro 3EM "monophase"), ``switch:N`` and ``pm1:N`` (metering switches)
    ``act_power``/``apower`` [W], ``aprt_power`` [VA], ``voltage`` [V], ``current`` [A], ``pf``,
    ``freq`` [Hz]; ``switch``/``pm1`` also ``aenergy.total`` and ``ret_aenergy.total`` [Wh].
``em1data:N``
    ``total_act_energy`` and ``total_act_ret_energy`` [Wh], converted to kWh.

Per-phase energies, apparent power and power factors have no canonical quantity and are not read.
The meter id defaults to ``{topic[0]}`` (the topic prefix, by default the device id). ``em1``,
``em1data``, ``switch`` and ``pm1`` are channels measuring separate circuits: unless the template
places ``{channel}`` itself, their meter id is the template's followed by ``:<channel id>``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from meterlake.config.units import conversion_factor
from meterlake.ingest.payloads._core import (
    MISSING,
    FormatOptions,
    MeterIdRule,
    NoReadingsError,
    PayloadError,
    add_reading,
    checked_meter_id,
    choose_ts,
    describe,
    epoch_to_us,
    load_json,
    number,
)
from meterlake.ingest.readings import US_PER_S, Reading

DEFAULT_METER_ID: Final = MeterIdRule.parse("{topic[0]}")
COMPONENT_KEY: Final = re.compile(r"^(em|emdata|em1|em1data|switch|pm1)(?::(\d{1,9}))?$")
NOTIFICATIONS: Final = frozenset({"NotifyStatus", "NotifyFullStatus"})
CHANNEL_TYPES: Final = frozenset({"em1", "em1data", "switch", "pm1"})

_WH: Final = conversion_factor("Wh", "kWh")
FieldSpec = tuple[tuple[str, ...], str, float]
"""(path inside the component status, quantity, factor to the quantity's unit)."""


def _phase_fields() -> tuple[FieldSpec, ...]:
    fields: list[FieldSpec] = [
        (("total_act_power",), "power_w", 1.0),
        (("total_aprt_power",), "apparent_power_va", 1.0),
    ]
    for phase, prefix in enumerate("abc", start=1):
        fields.append(((f"{prefix}_act_power",), f"power_l{phase}_w", 1.0))
        fields.append(((f"{prefix}_voltage",), f"voltage_l{phase}_v", 1.0))
        fields.append(((f"{prefix}_current",), f"current_l{phase}_a", 1.0))
    return tuple(fields)


_SINGLE_PHASE: Final[tuple[FieldSpec, ...]] = (
    (("voltage",), "voltage_v", 1.0),
    (("current",), "current_a", 1.0),
    (("pf",), "power_factor", 1.0),
    (("freq",), "frequency_hz", 1.0),
)
COMPONENT_FIELDS: Final[dict[str, tuple[FieldSpec, ...]]] = {
    "em": _phase_fields(),
    "emdata": (
        (("total_act",), "energy_import_kwh", _WH),
        (("total_act_ret",), "energy_export_kwh", _WH),
    ),
    "em1": (
        (("act_power",), "power_w", 1.0),
        (("aprt_power",), "apparent_power_va", 1.0),
        *_SINGLE_PHASE,
    ),
    "em1data": (
        (("total_act_energy",), "energy_import_kwh", _WH),
        (("total_act_ret_energy",), "energy_export_kwh", _WH),
    ),
    "switch": (
        (("apower",), "power_w", 1.0),
        *_SINGLE_PHASE,
        (("aenergy", "total"), "energy_import_kwh", _WH),
        (("ret_aenergy", "total"), "energy_export_kwh", _WH),
    ),
}
COMPONENT_FIELDS["pm1"] = COMPONENT_FIELDS["switch"]


def _field_owners() -> dict[str, str]:
    owners: dict[str, str] = {}
    for kind in ("em", "emdata", "em1", "em1data", "switch"):  # em1 owns the shared names
        for path, _, _ in COMPONENT_FIELDS[kind]:
            owners.setdefault(path[0], kind)
    return owners


_FIELD_OWNER: Final = _field_owners()
"""Which component type a status field belongs to (to recognise a bare status object)."""


def decode_shelly(
    payload: bytes, *, topic: str, received_at_us: int, options: FormatOptions
) -> list[Reading]:
    """Readings of a Shelly Gen2 notification, component status or ``GetStatus`` response.

    Parameters
    ----------
    payload
        The message body.
    topic
        ``<prefix>/events/rpc``, ``<prefix>/status/<component>`` or an RPC response topic; the
        readings' ``source``.
    received_at_us
        When the gateway received the message, UTC [us].
    options
        Meter-id template (default ``{topic[0]}``) and clock window.

    Examples
    --------
    >>> body = (b'{"src":"shellypro3em-0cb815fc0000","method":"NotifyStatus","params":'
    ...         b'{"ts":1790813700.0,"emdata:0":{"id":0,"total_act":1234567.8,'
    ...         b'"total_act_ret":12.0}}}')
    >>> rows = decode_shelly(body, topic="shellypro3em-0cb815fc0000/events/rpc",
    ...                      received_at_us=1_790_813_701_000_000, options=FormatOptions())
    >>> [(r.meter_id, r.quantity, round(r.value, 4)) for r in rows]
    ... # doctest: +NORMALIZE_WHITESPACE
    [('shellypro3em-0cb815fc0000', 'energy_import_kwh', 1234.5678),
     ('shellypro3em-0cb815fc0000', 'energy_export_kwh', 0.012)]
    >>> rows[0].ts_us  # params.ts
    1790813700000000
    """
    doc = load_json(payload)
    if type(doc) is bool:  # <prefix>/online
        raise NoReadingsError("a Shelly online/offline message carries no metering fields")
    if type(doc) is not dict:
        raise PayloadError(f"expected a JSON object, got {describe(doc)}")
    components, device_us = _components(doc, topic)
    ts_us, flags = choose_ts(device_us, received_at_us, options.clock_window(received_at_us))
    rule = options.meter_rule(DEFAULT_METER_ID)
    out: list[Reading] = []
    base_id: str | None = None
    for kind, ident, status in components:
        if kind in CHANNEL_TYPES and not rule.uses_channel:
            base_id = base_id or rule.render(topic, doc)
            meter_id = checked_meter_id(f"{base_id}:{ident}", "shelly channel: ")
        elif rule.uses_channel:
            meter_id = rule.render(topic, doc, channel=ident)
        else:
            base_id = base_id or rule.render(topic, doc)
            meter_id = base_id
        where = f"{kind}:{ident}"
        for path, quantity, factor in COMPONENT_FIELDS[kind]:
            value = _field(status, path, where)
            if value is not None:
                add_reading(out, meter_id, ts_us, quantity, value * factor, flags, topic)
    if not out:
        raise NoReadingsError("no metering fields in this Shelly message")
    return out


Component = tuple[str, str, dict[str, Any]]
"""(component type, instance id, status object)."""


def _components(doc: dict[str, Any], topic: str) -> tuple[list[Component], int | None]:
    """The metering components of a message and the device time it carries [us]."""
    if "method" in doc:
        method = doc["method"]
        if type(method) is not str:
            raise PayloadError(f"method must be a string, got {describe(method)}")
        if method not in NOTIFICATIONS:
            raise NoReadingsError(f"Shelly {method[:40]} carries no metering status")
        params = doc.get("params")
        if type(params) is not dict:
            raise PayloadError(f"{method}: params must be an object, got {describe(params)}")
        return _keyed(params), _epoch(params.get("ts"), "params.ts")
    if "result" in doc or "error" in doc:
        result = doc.get("result")
        if type(result) is not dict:
            raise NoReadingsError(
                f"Shelly RPC response without a status result: {describe(result)}"
            )
        return _status_document(result)
    segment = topic.rsplit("/", 1)[-1]
    match = COMPONENT_KEY.fullmatch(segment)
    if match is not None:  # <prefix>/status/em:0
        return [(match[1], match[2] or "0", doc)], None
    return _status_document(doc)


def _status_document(doc: dict[str, Any]) -> tuple[list[Component], int | None]:
    """A full status (components by key) or the bare status of one component."""
    components = _keyed(doc)
    if components:
        sys = doc.get("sys")
        unixtime = sys.get("unixtime") if type(sys) is dict else None
        return components, _epoch(unixtime, "sys.unixtime")
    kinds = {_FIELD_OWNER[key] for key in doc if key in _FIELD_OWNER}
    if not kinds:
        raise NoReadingsError("no Shelly metering component in this message")
    if len(kinds) > 1 and not kinds <= {"switch", "em1"}:  # the two share voltage, current...
        raise PayloadError(
            f"fields of several component types ({', '.join(sorted(kinds))}) in one status object"
        )
    ident = doc.get("id", 0)
    if type(ident) is not int or ident < 0:
        raise PayloadError(f"id must be a component number, got {describe(ident)}")
    kind = "switch" if "switch" in kinds else kinds.pop()
    return [(kind, str(ident), doc)], None


def _keyed(params: dict[str, Any]) -> list[Component]:
    components: list[Component] = []
    for key, status in params.items():
        match = COMPONENT_KEY.fullmatch(key)
        if match is None or status is None:  # sys, wifi, ts ...; null: the component went away
            continue
        if type(status) is not dict:
            raise PayloadError(f"{key}: expected a status object, got {describe(status)}")
        components.append((match[1], match[2] or "0", status))
    return components


def _epoch(value: Any, where: str) -> int | None:
    seconds = number(value, where)
    return None if seconds is None else epoch_to_us(seconds, US_PER_S)


def _field(status: dict[str, Any], path: tuple[str, ...], where: str) -> float | None:
    value: Any = status
    for depth, key in enumerate(path):
        if type(value) is not dict:
            raise PayloadError(
                f"{where}.{'.'.join(path[:depth])}: expected an object, got {describe(value)}"
            )
        value = value.get(key, MISSING)
        if value is MISSING:
            return None
    return number(value, f"{where}.{'.'.join(path)}")
