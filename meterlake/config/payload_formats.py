"""Payload formats of MQTT subscriptions: which decoder, where the meter id comes from, the clock
policy, and the generic field ``mapping`` -- parsed once into frozen, validated objects.

A subscription (``[[mqtt]]``) names its payload ``format``; everything else is optional::

    [[mqtt]]
    topics = ["tele/+/SENSOR"]
    format = "tasmota"
    meter_id = "{topic[1]}"         # the second topic segment
    timezone = "Europe/Berlin"      # Tasmota's "Time" is local time; default: [site] timezone

    [[mqtt]]
    topics = ["plant/+/meter"]
    format = "mapping"
    meter_id = "{field:serial}"
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

Meter-id templates are text with placeholders: ``{topic[N]}`` (the N-th segment of the message's
topic, from 0; negative counts from the end), ``{field:PATH}`` (a string or integer field of the
payload) and ``{channel}`` (the sub-meter a format reports: the Tasmota sensor object, the Shelly
``em1``/``switch`` channel). A template without placeholders is a fixed id.

Field paths are dot paths with list indices: ``ENERGY.Total``, ``data[0].value``, ``em1:0.voltage``;
a key containing a dot is written in brackets and quotes: ``["a.b"].c``.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import re
from collections.abc import Callable
from typing import Annotated, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from meterlake.config.errors import ConfigError, PermanentError
from meterlake.config.schemas import canonical_unit, is_known_quantity
from meterlake.config.timezones import check_timezone
from meterlake.config.units import conversion_factor

PayloadFormatName = Literal["canonical", "tasmota", "shelly-gen2", "zigbee2mqtt", "mapping"]
PAYLOAD_FORMATS: Final[tuple[PayloadFormatName, ...]] = (
    "canonical",
    "tasmota",
    "shelly-gen2",
    "zigbee2mqtt",
    "mapping",
)
TIMESTAMP_FORMATS: Final = ("iso8601", "epoch_s", "epoch_ms", "epoch_us")
"""Named timestamp formats; any other format is a ``strptime`` pattern (it contains ``%``)."""

PathStep = str | int
"""One step of a field path: a key of an object, or an index of a list."""
FieldPath = tuple[PathStep, ...]

TemplatePart = (
    tuple[Literal["text"], str]
    | tuple[Literal["topic"], int]
    | tuple[Literal["field"], FieldPath]
    | tuple[Literal["channel"], None]
)
"""One piece of a meter-id template: literal text, a topic segment, a payload field, the channel."""

_PATH_TOKEN: Final = re.compile(
    r"""(?P<name>[^.\[\]"]+)|\[(?P<index>-?\d+)\]|\[(?P<quoted>"(?:[^"\\]|\\.)*")\]|(?P<dot>\.)"""
)
_PLACEHOLDER: Final = re.compile(r"\{([^{}]*)\}")
_TOPIC_PLACEHOLDER: Final = re.compile(r"topic\[(-?\d+)\]")


def parse_field_path(path: str) -> FieldPath:
    """The steps of a field path: keys (``str``) and list indices (``int``).

    >>> parse_field_path('data[0].value')
    ('data', 0, 'value')
    >>> parse_field_path('["a.b"].c')
    ('a.b', 'c')

    Raises
    ------
    ConfigError
        The path is empty or malformed.
    """
    steps: list[PathStep] = []
    expect_key = True  # at the start or right after a dot
    pos = 0
    while pos < len(path):
        match = _PATH_TOKEN.match(path, pos)
        if match is None:
            raise ConfigError(_path_problem(path, pos))
        pos = match.end()
        if match["dot"] is not None:
            if expect_key:
                raise ConfigError(_path_problem(path, match.start()))
            expect_key = True
        elif match["name"] is not None:
            if not expect_key:
                raise ConfigError(_path_problem(path, match.start()))
            steps.append(match["name"])
            expect_key = False
        else:
            if expect_key and steps:  # "a.[0]" -- an index must follow a key directly
                raise ConfigError(_path_problem(path, match.start()))
            steps.append(
                int(match["index"]) if match["index"] is not None else json.loads(match["quoted"])
            )
            expect_key = False
    if not steps or expect_key:
        raise ConfigError(_path_problem(path, len(path)))
    return tuple(steps)


def _path_problem(path: str, pos: int) -> str:
    return (
        f"field path {path!r} is malformed at position {pos}: use keys separated by dots and "
        'list indices in brackets, e.g. data[0].value or ["key.with.dot"].value'
    )


def parse_meter_id_template(template: str) -> tuple[TemplatePart, ...]:
    """The parts of a meter-id template.

    >>> parse_meter_id_template("gw1-{topic[1]}")
    (('text', 'gw1-'), ('topic', 1))

    Raises
    ------
    ConfigError
        Unknown placeholder, stray brace or a malformed field path.
    """
    parts: list[TemplatePart] = []
    pos = 0
    for match in _PLACEHOLDER.finditer(template):
        if match.start() > pos:
            parts.append(("text", _literal(template, template[pos : match.start()])))
        parts.append(_placeholder(template, match[1]))
        pos = match.end()
    if pos < len(template):
        parts.append(("text", _literal(template, template[pos:])))
    if not parts:
        raise ConfigError("meter_id template is empty: give a fixed id or e.g. {topic[1]}")
    return tuple(parts)


def _literal(template: str, text: str) -> str:
    if "{" in text or "}" in text:
        raise ConfigError(f"meter_id template {template!r} has an unmatched brace")
    return text


def _placeholder(template: str, inner: str) -> TemplatePart:
    if inner == "channel":
        return ("channel", None)
    topic = _TOPIC_PLACEHOLDER.fullmatch(inner)
    if topic is not None:
        return ("topic", int(topic[1]))
    if inner.startswith("field:"):
        return ("field", parse_field_path(inner.removeprefix("field:")))
    raise ConfigError(
        f"meter_id template {template!r}: unknown placeholder {{{inner}}}; "
        "use {topic[N]}, {field:PATH} or {channel}"
    )


def check_timestamp_format(fmt: str) -> str:
    """``fmt`` if it is a named timestamp format or a usable ``strptime`` pattern.

    >>> check_timestamp_format("%d.%m.%Y %H:%M:%S")
    '%d.%m.%Y %H:%M:%S'

    Raises
    ------
    ConfigError
        Neither a known name nor a pattern that round-trips a date and time.
    """
    if fmt in TIMESTAMP_FORMATS:
        return fmt
    if "%" not in fmt:
        raise ConfigError(
            f"timestamp format {fmt!r}: use {', '.join(TIMESTAMP_FORMATS)} "
            "or a strptime pattern such as %Y-%m-%d %H:%M:%S"
        )
    probe = dt.datetime(2026, 10, 1, 13, 45, 30)
    try:
        dt.datetime.strptime(probe.strftime(fmt), fmt)
    except ValueError as exc:
        raise ConfigError(
            f"timestamp format {fmt!r} does not parse what it formats: {exc}"
        ) from None
    return fmt


def _as_value_error(check: Callable[[str], object], value: str) -> str:
    """Run a config check inside a pydantic validator (pydantic reports ``ValueError``)."""
    try:
        check(value)
    except ConfigError as exc:
        raise ValueError(str(exc)) from None
    return value


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class FieldMapping(_Model):
    """One payload field that holds one canonical quantity (``[[mqtt.mapping.fields]]``)."""

    path: str
    """Where the value is, e.g. ``data.e_in`` or ``values[2]``."""
    quantity: str
    """The canonical quantity, e.g. ``energy_import_kwh``."""
    unit: str | None = None
    """The unit the device reports (``Wh``, ``kW``, ``mA`` ...); default: the quantity's own."""
    scale: float = 1.0
    """Multiplies the raw value before the unit is converted (e.g. ``0.1`` for 0.1 V steps)."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _as_value_error(parse_field_path, value)

    @field_validator("quantity")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not is_known_quantity(value):
            raise ValueError(
                "must be a canonical quantity such as energy_import_kwh, power_w, voltage_l1_v"
            )
        return value

    @field_validator("scale")
    @classmethod
    def _scale(cls, value: float) -> float:
        if not math.isfinite(value) or value == 0:
            raise ValueError("must be a finite number other than 0")
        return value

    @model_validator(mode="after")
    def _unit(self) -> FieldMapping:
        if self.unit is not None:
            try:
                conversion_factor(self.unit, canonical_unit(self.quantity))
            except PermanentError as exc:
                raise ValueError(f"unit of {self.quantity}: {exc}") from None
        return self

    def factor(self) -> float:
        """What a raw value is multiplied by to be in the quantity's unit (scale x unit)."""
        unit = self.unit or canonical_unit(self.quantity)
        return self.scale * conversion_factor(unit, canonical_unit(self.quantity))


class TimestampMapping(_Model):
    """Where a payload carries the measurement time, and how it is written."""

    path: str
    format: str = "iso8601"
    """``iso8601``, ``epoch_s``, ``epoch_ms``, ``epoch_us`` or a strptime pattern."""
    timezone: str | None = None
    """Zone of times without one; default: the subscription's ``timezone``."""

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _as_value_error(parse_field_path, value)

    @field_validator("format")
    @classmethod
    def _format(cls, value: str) -> str:
        return _as_value_error(check_timestamp_format, value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _as_value_error(check_timezone, value)


class PayloadMapping(_Model):
    """The generic ``mapping`` format: JSON fields to canonical quantities (``[mqtt.mapping]``)."""

    fields: Annotated[tuple[FieldMapping, ...], Field(min_length=1)]
    timestamp: TimestampMapping | None = None
    """Without it every reading gets the receipt time, flagged ``clock_invalid``."""
    records: str | None = None
    """A path to a list of records, each decoded like a whole payload (a payload that is a JSON
    list is such a list by itself)."""

    @field_validator("records")
    @classmethod
    def _records(cls, value: str | None) -> str | None:
        return None if value is None else _as_value_error(parse_field_path, value)

    @model_validator(mode="after")
    def _distinct(self) -> PayloadMapping:
        seen: set[str] = set()
        for field in self.fields:
            if field.quantity in seen:
                raise ValueError(f"two fields map to {field.quantity}: map each quantity once")
            seen.add(field.quantity)
        return self


class PayloadFormatSettings(_Model):
    """How the payloads of one subscription are decoded (keys of an ``[[mqtt]]`` table)."""

    format: PayloadFormatName = "canonical"
    """``canonical``, ``tasmota``, ``shelly-gen2``, ``zigbee2mqtt`` or ``mapping``."""
    meter_id: str | None = None
    """Meter-id template, e.g. ``{topic[1]}``; default per format (``canonical`` payloads carry
    their own ids; ``tasmota`` and ``zigbee2mqtt``: ``{topic[1]}``; ``shelly-gen2``:
    ``{topic[0]}``; ``mapping``: required)."""
    timezone: str | None = None
    """Zone of device times written without one (Tasmota ``Time``); default: ``[site] timezone``."""
    max_clock_ahead_s: Annotated[float, Field(ge=0, le=86_400 * 366)] = 300.0
    """A device time further ahead of the receipt time is not trusted [s]."""
    max_clock_behind_s: Annotated[float | None, Field(ge=0)] = None
    """A device time further behind the receipt time is not trusted [s]; default: 7 days, and
    10 years for ``canonical`` (its times were checked where they were first received, and a
    gateway may forward what it stored during a long outage)."""
    sml_energy_unit: Literal["kWh", "Wh"] = "kWh"
    """Unit of the energy counters of Tasmota smart-meter (SML) scripts: their JSON carries none."""
    mapping: PayloadMapping | None = None
    """The field mapping; required by, and only allowed with, ``format = "mapping"``."""

    @field_validator("meter_id")
    @classmethod
    def _template(cls, value: str | None) -> str | None:
        return None if value is None else _as_value_error(parse_meter_id_template, value)

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        return None if value is None else _as_value_error(check_timezone, value)

    @model_validator(mode="after")
    def _coherent(self) -> PayloadFormatSettings:
        if self.format == "mapping" and self.mapping is None:
            raise ValueError('format = "mapping" needs a [mqtt.mapping] table with its fields')
        if self.format != "mapping" and self.mapping is not None:
            raise ValueError(f'a mapping is only used with format = "mapping", not {self.format!r}')
        if self.format == "mapping" and self.meter_id is None:
            raise ValueError(
                'format = "mapping" needs meter_id, e.g. "{topic[1]}" or "{field:serial}"'
            )
        if self.format == "canonical" and self.meter_id is not None:
            raise ValueError("canonical payloads carry their own meter_id: remove meter_id")
        return self
