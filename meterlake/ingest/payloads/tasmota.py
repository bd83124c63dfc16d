"""The ``tasmota`` format: ``tele/<device>/SENSOR`` telemetry (and ``STATUS8``/``STATUS10``).

Two kinds of object are read from a message:

``ENERGY``
    Tasmota's energy driver (``xdrv_03_energy``): ``Total`` [kWh], ``ExportActive`` [kWh],
    ``TotalTariff``/``ExportTariff`` ([T1, T2] kWh; T1 is Tasmota's off-peak tariff), ``Power``
    [W], ``ApparentPower`` [VA], ``ReactivePower`` [var], ``Factor``, ``Frequency`` [Hz],
    ``Voltage`` [V], ``Current`` [A]. On multi-phase (or multi-channel) devices a field is a
    list, one value per phase: ``Power``, ``Voltage`` and ``Current`` become ``power_l1_w`` ...
    ``current_l3_a`` and ``Power`` also ``power_w`` (the sum, as Tasmota sums ``Total``);
    ``Total``/``ExportActive``/``ApparentPower``/``ReactivePower`` are summed; per-phase
    ``Factor`` and ``Frequency`` have no canonical quantity and are not read. ``Today``,
    ``Yesterday`` and ``Period`` (energy of a day or a tele period) are not meter registers.
Smart-meter (SML) script objects
    Any other object (its name is the script's ``jsonPrefix``, e.g. ``SML``) is searched for
    the names scripts commonly give, case-insensitive: OBIS-style ``1_8_0`` (or ``1.8.0``),
    ``1_8_1`` ... ``2_8_0`` ..., ``3_8_0``/``4_8_0`` (reactive), ``16_7_0`` (signed power),
    ``1_7_0``/``2_7_0`` (import/export power), ``36_7_0``/``56_7_0``/``76_7_0`` (phase power),
    ``32_7_0``... (phase voltage), ``31_7_0``... (phase current), ``14_7_0`` (frequency),
    ``13_7_0`` (power factor), and ``Total_in``, ``Total_out``, ``Power_curr``, ``power_l1``,
    ``voltage_l1``, ``current_l1`` ... (the names evcc documents). The JSON carries no units:
    energy is taken as ``sml_energy_unit`` (kWh unless configured), power as W. Objects with
    none of these names (temperature sensors ...) are ignored.

``Time`` is local time without a zone (Tasmota's ``Timezone`` setting), read in the
subscription's ``timezone``; ``Epoch`` (``Time 2``/``Time 3``) is used when present. The answer
to ``Status 8``/``Status 10`` is read inside its ``StatusSNS`` object (so are ``{field:...}``
paths of the meter-id template).
The meter id defaults to ``{topic[1]}``; a message with several metering objects (two meters on
one reader) needs ``{channel}`` (the object name) in the template.
"""

from __future__ import annotations

from typing import Any, Final, Literal

from meterlake.config.units import conversion_factor
from meterlake.ingest.payloads._core import (
    MISSING,
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
from meterlake.ingest.readings import US_PER_S, Reading

DEFAULT_METER_ID: Final = MeterIdRule.parse("{topic[1]}")
MAX_PHASES: Final = 3

ArrayRule = Literal["sum", "phases", "ignore"]
ENERGY_FIELDS: Final[dict[str, tuple[str, str | None, ArrayRule]]] = {
    # name: (quantity of a single value, per-phase quantity pattern, what a list means)
    "Total": ("energy_import_kwh", None, "sum"),
    "ExportActive": ("energy_export_kwh", None, "sum"),
    "Power": ("power_w", "power_l{}_w", "sum"),
    "ApparentPower": ("apparent_power_va", None, "sum"),
    "ReactivePower": ("reactive_power_var", None, "sum"),
    "Factor": ("power_factor", None, "ignore"),
    "Frequency": ("frequency_hz", None, "ignore"),
    "Voltage": ("voltage_v", "voltage_l{}_v", "phases"),
    "Current": ("current_a", "current_l{}_a", "phases"),
}
TARIFF_FIELDS: Final = {
    "TotalTariff": "energy_import_t{}_kwh",
    "ExportTariff": "energy_export_t{}_kwh",
}

SmlKind = Literal["energy", "plain", "import_power", "export_power"]


def _sml_fields() -> dict[str, tuple[str, SmlKind]]:
    fields: dict[str, tuple[str, SmlKind]] = {
        "1_8_0": ("energy_import_kwh", "energy"),
        "2_8_0": ("energy_export_kwh", "energy"),
        "3_8_0": ("energy_reactive_import_kvarh", "energy"),
        "4_8_0": ("energy_reactive_export_kvarh", "energy"),
        "16_7_0": ("power_w", "plain"),
        "1_7_0": ("power_w", "import_power"),
        "2_7_0": ("power_w", "export_power"),
        "14_7_0": ("frequency_hz", "plain"),
        "13_7_0": ("power_factor", "plain"),
        "total_in": ("energy_import_kwh", "energy"),
        "total_out": ("energy_export_kwh", "energy"),
        "power_curr": ("power_w", "plain"),
    }
    for tariff in range(1, 10):
        fields[f"1_8_{tariff}"] = (f"energy_import_t{tariff}_kwh", "energy")
        fields[f"2_8_{tariff}"] = (f"energy_export_t{tariff}_kwh", "energy")
    for phase, (power, voltage, current) in enumerate(
        (("36", "32", "31"), ("56", "52", "51"), ("76", "72", "71")), start=1
    ):
        fields[f"{power}_7_0"] = (f"power_l{phase}_w", "plain")
        fields[f"{voltage}_7_0"] = (f"voltage_l{phase}_v", "plain")
        fields[f"{current}_7_0"] = (f"current_l{phase}_a", "plain")
        fields[f"power_l{phase}"] = (f"power_l{phase}_w", "plain")
        fields[f"voltage_l{phase}"] = (f"voltage_l{phase}_v", "plain")
        fields[f"current_l{phase}"] = (f"current_l{phase}_a", "plain")
    return fields


SML_FIELDS: Final = _sml_fields()
"""Lower-case smart-meter script variable names (``.`` written as ``_``) and their quantities."""


def decode_tasmota(
    payload: bytes, *, topic: str, received_at_us: int, options: FormatOptions
) -> list[Reading]:
    """Readings of a Tasmota ``SENSOR`` message.

    Parameters
    ----------
    payload
        The message body.
    topic
        The MQTT topic (``tele/<device>/SENSOR``); the reading's ``source``.
    received_at_us
        When the gateway received the message, UTC [us].
    options
        Meter-id template (default ``{topic[1]}``), time zone of ``Time``, clock window and
        ``sml_energy_unit``.

    Examples
    --------
    >>> body = (b'{"Time":"2026-10-01T08:15:00","ENERGY":{"TotalStartTime":"2026-01-01T00:00:00",'
    ...         b'"Total":12.5,"Yesterday":1.1,"Today":0.2,"Power":230}}')
    >>> rows = decode_tasmota(body, topic="tele/plug-1/SENSOR",
    ...                       received_at_us=1_790_813_705_000_000, options=FormatOptions())
    >>> [(r.meter_id, r.quantity, r.value, r.quality) for r in rows]
    [('plug-1', 'energy_import_kwh', 12.5, ()), ('plug-1', 'power_w', 230.0, ())]
    >>> rows[0].ts_us  # 08:15 in Asia/Shanghai is 00:15 UTC
    1790813700000000
    """
    doc = load_json(payload)
    if type(doc) is not dict:
        raise PayloadError(f"expected a JSON object, got {describe(doc)}")
    status = doc.get("StatusSNS")
    if type(status) is dict:  # the answer to "Status 8" / "Status 10"
        doc = status
    device_us = _device_time(doc, options, received_at_us)
    ts_us, flags = choose_ts(device_us, received_at_us, options.clock_window(received_at_us))
    energy_factor = conversion_factor(options.sml_energy_unit, "kWh")
    groups: list[tuple[str, dict[str, float]]] = []
    for name, obj in doc.items():
        if name == "ENERGY" and type(obj) is not dict:
            raise PayloadError(f"ENERGY must be an object, got {describe(obj)}")
        if type(obj) is not dict:
            continue
        values: dict[str, float] = {}
        if name == "ENERGY":
            _energy_values(obj, values)
        _sml_values(name, obj, energy_factor, values)
        if values:
            groups.append((name, values))
    if not groups:
        raise NoReadingsError("no metering fields: no ENERGY object and no smart-meter fields")
    rule = options.meter_rule(DEFAULT_METER_ID)
    if len(groups) > 1 and not rule.uses_channel:
        names = ", ".join(name[:40] for name, _ in groups)
        raise PayloadError(
            f"{len(groups)} metering objects ({names}) in one message: put {{channel}} in the "
            f"meter_id template (e.g. {rule.template}-{{channel}}) to keep their meters apart"
        )
    out: list[Reading] = []
    for name, values in groups:
        meter_id = rule.render(topic, doc, channel=name)
        for quantity, value in values.items():
            add_reading(out, meter_id, ts_us, quantity, value, flags, topic)
    return out


def _device_time(doc: dict[str, Any], options: FormatOptions, received_at_us: int) -> int | None:
    epoch = doc.get("Epoch", MISSING)
    if epoch is not MISSING:
        seconds = number(epoch, "Epoch")
        return None if seconds is None else epoch_to_us(seconds, US_PER_S)
    time = doc.get("Time")
    if time is None:
        return None
    if type(time) is str:
        return iso_to_us(time, options.zone, received_at_us)
    seconds = number(time, "Time")  # "Time 3": epoch seconds
    return None if seconds is None else epoch_to_us(seconds, US_PER_S)


def _energy_values(energy: dict[str, Any], values: dict[str, float]) -> None:
    for name, (quantity, per_phase, rule) in ENERGY_FIELDS.items():
        raw = energy.get(name)
        if raw is None:
            continue
        where = f"ENERGY.{name}"
        if type(raw) is not list:
            put_value(values, quantity, number(raw, where), where)
            continue
        phases = _phase_values(raw, where)
        if rule == "ignore":
            continue
        if rule == "sum":
            put_value(values, quantity, sum(phases), where)
        if per_phase is not None and len(phases) > 1:
            for phase, value in enumerate(phases, start=1):
                put_value(values, per_phase.format(phase), value, where)
    for name, pattern in TARIFF_FIELDS.items():
        raw = energy.get(name)
        if raw is None:
            continue
        where = f"ENERGY.{name}"
        if type(raw) is not list:
            raise PayloadError(f"{where}: expected a list [T1, T2], got {describe(raw)}")
        for tariff, value in enumerate(_phase_values(raw, where, limit=9), start=1):
            put_value(values, pattern.format(tariff), value, where)


def _phase_values(raw: list[Any], where: str, limit: int = MAX_PHASES) -> list[float]:
    if not 1 <= len(raw) <= limit:
        raise PayloadError(
            f"{where}: a list of {len(raw)} values; 1 to {limit} are understood "
            "(use the mapping format for other devices)"
        )
    phases: list[float] = []
    for index, item in enumerate(raw):
        value = number(item, f"{where}[{index}]")
        if value is None:
            raise PayloadError(f"{where}[{index}]: expected a number, got null")
        phases.append(value)
    return phases


def _sml_values(
    name: str, obj: dict[str, Any], energy_factor: float, values: dict[str, float]
) -> None:
    imported: float | None = None
    exported: float | None = None
    for key, raw in obj.items():
        field = SML_FIELDS.get(key.lower().replace(".", "_"))
        if field is None:
            continue
        quantity, kind = field
        where = f"{name[:40]}.{key}"
        value = number(raw, where)
        if value is None:
            continue
        if kind == "energy":
            put_value(values, quantity, value * energy_factor, where)
        elif kind == "import_power":
            imported = value
        elif kind == "export_power":
            exported = value
        else:
            put_value(values, quantity, value, where)
    # OBIS 1.7.0 / 2.7.0 are import and export power, each >= 0: power_w is their difference,
    # unless the script also gives the signed total (16.7.0 or Power_curr).
    if (imported is not None or exported is not None) and values.get("power_w") is None:
        values["power_w"] = (imported or 0.0) - (exported or 0.0)
