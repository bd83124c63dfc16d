"""What every payload decoder shares: the error, the options, JSON, numbers, clocks and meter ids.

Nothing here does I/O; all of it runs once per MQTT message (or once per record of a batch), so
the helpers avoid building objects that are not needed.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final, Literal, Protocol

from meterlake.config.errors import ConfigError, PermanentError, UnsafeIdentifierError
from meterlake.config.ids import METER_ID_MAX_LEN, validate_meter_id
from meterlake.config.payload_formats import (
    FieldPath,
    PayloadFormatSettings,
    PayloadMapping,
    TemplatePart,
    parse_field_path,
    parse_meter_id_template,
)
from meterlake.config.schemas import Quality
from meterlake.config.settings import SiteSettings
from meterlake.config.timezones import check_timezone
from meterlake.ingest.readings import (
    DEFAULT_MAX_FUTURE_S,
    DEFAULT_MAX_PAST_S,
    US_PER_S,
    Reading,
    to_us,
)

DEFAULT_TIMEZONE: Final = SiteSettings().timezone
"""Zone of device times without one when neither the subscription nor the site names one."""

CLOCK_INVALID: Final = Quality.CLOCK_INVALID.value
INVALID_VALUE: Final = Quality.INVALID_VALUE.value
OUT_OF_RANGE: Final = Quality.OUT_OF_RANGE.value
NO_FLAGS: Final[tuple[str, ...]] = ()
CLOCK_FLAGS: Final[tuple[str, ...]] = (CLOCK_INVALID,)

new_reading: Final[
    Callable[[type[Reading], tuple[str, int, str, float, tuple[str, ...], str]], Reading]
] = tuple.__new__
"""``Reading(...)`` without the Python-level ``__new__`` of a NamedTuple (twice as fast)."""

_MAX_CACHE: Final = 65_536
_SAFE_IDS: set[str] = set()
"""Meter ids already validated (bounded: cleared when it grows past ``_MAX_CACHE``)."""


class PayloadError(PermanentError):
    """A payload that cannot be decoded; the message says why, for the quarantine table."""


class NoReadingsError(PayloadError):
    """A well-formed payload that carries no metering fields (e.g. a Shelly ``NotifyEvent``)."""


class Missing:
    """The type of :data:`MISSING`."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Final = Missing()
"""What :func:`get_path` returns for a field that is not there."""


# --- options -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeterIdRule:
    """A parsed meter-id template (see :mod:`meterlake.config.payload_formats`)."""

    template: str
    parts: tuple[TemplatePart, ...]

    @classmethod
    def parse(cls, template: str) -> MeterIdRule:
        """Parse ``template``; raises :class:`ConfigError` when it is malformed."""
        return cls(template, parse_meter_id_template(template))

    @property
    def uses_channel(self) -> bool:
        """True if the template has a ``{channel}`` placeholder."""
        return any(kind == "channel" for kind, _ in self.parts)

    def render(self, topic: str, doc: Any = None, channel: str | None = None) -> str:
        """The safe meter id of a message; raises :class:`PayloadError` when there is none.

        >>> MeterIdRule.parse("gw1-{topic[1]}").render("tele/plug-7/SENSOR")
        'gw1-plug-7'
        """
        pieces: list[str] = []
        for kind, arg in self.parts:
            if isinstance(arg, str):  # text
                pieces.append(arg)
            elif isinstance(arg, int):  # topic segment
                segments = topic.split("/")
                try:
                    pieces.append(segments[arg])
                except IndexError:
                    raise PayloadError(
                        f"meter_id {self.template!r}: topic {_clip(repr(topic), 120)} "
                        f"has no segment {arg}"
                    ) from None
            elif isinstance(arg, tuple):  # field path
                pieces.append(self._field(doc, arg))
            elif channel is None:
                raise PayloadError(f"meter_id {self.template!r}: this message has no {kind}")
            else:
                pieces.append(channel)
        return checked_meter_id("".join(pieces), f"meter_id {self.template!r}: ")

    def _field(self, doc: Any, path: FieldPath) -> str:
        value = get_path(doc, path)
        if type(value) is str:
            return value
        if type(value) is int:
            return str(value)
        what = "is missing" if value is MISSING else f"is {describe(value)}"
        raise PayloadError(
            f"meter_id {self.template!r}: field {format_path(path)} {what}; "
            "it must be a string or an integer"
        )


@dataclass(frozen=True)
class CompiledMapping:
    """A :class:`PayloadMapping` with its paths parsed and unit factors worked out."""

    fields: tuple[tuple[FieldPath, str, float], ...]
    """(path, quantity, factor to the quantity's unit)."""
    timestamp: tuple[FieldPath, str, zoneinfo.ZoneInfo | None] | None
    """(path, format, zone of naive times or ``None`` for the subscription's)."""
    records: FieldPath | None

    @classmethod
    def of(cls, mapping: PayloadMapping, zone: zoneinfo.ZoneInfo) -> CompiledMapping:
        """Compile ``mapping`` (already validated by its model)."""
        fields = tuple((parse_field_path(f.path), f.quantity, f.factor()) for f in mapping.fields)
        ts = mapping.timestamp
        timestamp = None
        if ts is not None:
            ts_zone = None if ts.timezone is None else zoneinfo.ZoneInfo(ts.timezone)
            timestamp = (parse_field_path(ts.path), ts.format, ts_zone)
        records = None if mapping.records is None else parse_field_path(mapping.records)
        return cls(fields, timestamp, records)


@dataclass(frozen=True)
class FormatOptions:
    """The per-subscription options every decoder takes.

    Parameters
    ----------
    meter_id
        Meter-id template (``{topic[1]}``, ``{field:serial}``, ``{channel}``, fixed text);
        ``None``: the format's default.
    timezone
        IANA zone of device times written without a zone (Tasmota ``Time``, some mappings).
    max_clock_ahead_s
        A device time further ahead of the receipt time is not trusted [s].
    max_clock_behind_s
        A device time further behind the receipt time is not trusted [s]; ``None``: the
        format's default (7 days; 10 years for ``canonical``).
    sml_energy_unit
        Unit of Tasmota smart-meter script energy counters (their JSON carries none).
    mapping
        The field mapping of the ``mapping`` format.
    """

    meter_id: str | None = None
    timezone: str = DEFAULT_TIMEZONE
    max_clock_ahead_s: float = DEFAULT_MAX_FUTURE_S
    max_clock_behind_s: float | None = None
    sml_energy_unit: Literal["kWh", "Wh"] = "kWh"
    mapping: PayloadMapping | None = None
    rule: MeterIdRule | None = field(init=False, repr=False, compare=False)
    zone: zoneinfo.ZoneInfo = field(init=False, repr=False, compare=False)
    compiled: CompiledMapping | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        rule = None if self.meter_id is None else MeterIdRule.parse(self.meter_id)
        object.__setattr__(self, "rule", rule)
        object.__setattr__(self, "zone", zoneinfo.ZoneInfo(check_timezone(self.timezone)))
        compiled = None if self.mapping is None else CompiledMapping.of(self.mapping, self.zone)
        object.__setattr__(self, "compiled", compiled)
        if self.max_clock_ahead_s < 0 or (self.max_clock_behind_s or 0) < 0:
            raise ConfigError("max_clock_ahead_s and max_clock_behind_s must be >= 0")

    @classmethod
    def from_settings(cls, settings: PayloadFormatSettings, *, site_timezone: str) -> FormatOptions:
        """The options of a subscription; its ``timezone`` defaults to the site's.

        >>> from meterlake.config.payload_formats import PayloadFormatSettings
        >>> s = PayloadFormatSettings(format="tasmota", meter_id="{topic[1]}")
        >>> FormatOptions.from_settings(s, site_timezone="Europe/Berlin").timezone
        'Europe/Berlin'
        """
        return cls(
            meter_id=settings.meter_id,
            timezone=settings.timezone or site_timezone,
            max_clock_ahead_s=settings.max_clock_ahead_s,
            max_clock_behind_s=settings.max_clock_behind_s,
            sml_energy_unit=settings.sml_energy_unit,
            mapping=settings.mapping,
        )

    def meter_rule(self, default: MeterIdRule) -> MeterIdRule:
        """The subscription's meter-id rule, or the format's ``default``."""
        return default if self.rule is None else self.rule

    def clock_window(
        self, received_at_us: int, default_behind_s: float = DEFAULT_MAX_PAST_S
    ) -> tuple[float, float]:
        """The device times trusted for a message received at ``received_at_us`` [us]."""
        behind = default_behind_s if self.max_clock_behind_s is None else self.max_clock_behind_s
        return (
            received_at_us - behind * US_PER_S,
            received_at_us + self.max_clock_ahead_s * US_PER_S,
        )


class Decoder(Protocol):
    """A payload decoder: bytes of one message in, readings out, or :class:`PayloadError`."""

    def __call__(
        self, payload: bytes, *, topic: str, received_at_us: int, options: FormatOptions
    ) -> list[Reading]: ...


# --- JSON, values and paths -----------------------------------------------------------------


def load_json(payload: bytes) -> Any:
    """The JSON document in ``payload`` (UTF-8, -16 or -32); NaN and Infinity are accepted.

    >>> load_json(b'{"power": NaN}')
    {'power': nan}
    """
    try:
        return json.loads(payload)
    except RecursionError:
        raise PayloadError("not usable JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, too many int digits
        if not payload.strip():
            raise PayloadError("empty payload: expected JSON") from None
        raise PayloadError(f"not JSON: {_clip(str(exc))}") from None


def describe(value: Any) -> str:
    """A short description of a JSON value for error messages: ``a string ('12 W')``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"a boolean ({'true' if value else 'false'})"
    if isinstance(value, str):
        return f"a string ({_clip(repr(value), 40)})"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return f"a number ({value!r})"


def _clip(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def number(value: Any, where: str) -> float | None:
    """A JSON number as ``float``; ``None`` for null; :class:`PayloadError` for anything else.

    >>> number(12, "Power"), number(None, "Power")
    (12.0, None)
    """
    kind = type(value)
    if kind is float:
        return value  # type: ignore[no-any-return]
    if kind is int:
        try:
            return float(value)
        except OverflowError:
            raise PayloadError(f"{where}: number too large ({str(value)[:20]}…)") from None
    if value is None:
        return None
    raise PayloadError(f"{where}: expected a number, got {describe(value)}")


def get_path(doc: Any, path: FieldPath) -> Any:
    """The value at ``path`` in ``doc``, or :data:`MISSING`; a step into a scalar is an error.

    >>> get_path({"data": [{"v": 1}]}, ("data", 0, "v")), get_path({}, ("x",))
    (1, MISSING)
    """
    value = doc
    for depth, step in enumerate(path):
        if isinstance(step, str):
            if type(value) is not dict:
                raise PayloadError(_not_container(path, depth, value, "an object"))
            value = value.get(step, MISSING)
        else:
            if type(value) is not list:
                raise PayloadError(_not_container(path, depth, value, "a list"))
            try:
                value = value[step]
            except IndexError:
                return MISSING
        if value is MISSING:
            return MISSING
    return value


def _not_container(path: FieldPath, depth: int, value: Any, expected: str) -> str:
    where = format_path(path[:depth]) or "the payload"
    return f"field {format_path(path)}: {where} is {describe(value)}, not {expected}"


def format_path(path: FieldPath) -> str:
    """A field path written as in the config: ``data[0].value``."""
    text = ""
    for step in path:
        if type(step) is int:
            text += f"[{step}]"
        elif "." in str(step) or "[" in str(step) or "]" in str(step):
            text += f"[{json.dumps(step)}]"
        else:
            text += f".{step}" if text else str(step)
    return text


def add_reading(
    out: list[Reading],
    meter_id: str,
    ts_us: int,
    quantity: str,
    value: float,
    flags: tuple[str, ...],
    source: str,
) -> None:
    """Append one reading; NaN/inf is kept and flagged, a power factor beyond +-1 is flagged."""
    if value - value != 0.0:  # NaN or infinite
        if INVALID_VALUE not in flags:
            flags = (*flags, INVALID_VALUE)
    elif quantity == "power_factor" and not -1.0 <= value <= 1.0 and OUT_OF_RANGE not in flags:
        flags = (*flags, OUT_OF_RANGE)
    out.append(new_reading(Reading, (meter_id, ts_us, quantity, value, flags, source)))


def put_value(values: dict[str, float], quantity: str, value: float | None, where: str) -> None:
    """Collect ``value`` as ``quantity``; two different values of one quantity are an error.

    >>> values = {}
    >>> put_value(values, "power_w", 5.0, "Power"); put_value(values, "power_w", None, "P")
    >>> values
    {'power_w': 5.0}
    """
    if value is None:
        return
    old = values.get(quantity)
    if old is not None and old != value and not (math.isnan(old) and math.isnan(value)):
        raise PayloadError(f"{where}: two fields give {quantity} ({old!r} and {value!r})")
    values[quantity] = value


def checked_meter_id(meter_id: Any, where: str = "") -> str:
    """``meter_id`` if it is a safe meter id, else :class:`PayloadError`."""
    if type(meter_id) is str and meter_id in _SAFE_IDS:
        return meter_id
    if type(meter_id) is not str:
        raise PayloadError(f"{where}meter id must be a string, got {describe(meter_id)}")
    try:
        validate_meter_id(meter_id[: METER_ID_MAX_LEN + 1])  # a longer one is refused anyway
        validate_meter_id(meter_id)
    except UnsafeIdentifierError as exc:
        raise PayloadError(f"{where}{exc}") from None
    if len(_SAFE_IDS) >= _MAX_CACHE:
        _SAFE_IDS.clear()
    _SAFE_IDS.add(meter_id)
    return meter_id


# --- clocks ---------------------------------------------------------------------------------


def choose_ts(
    device_us: int | None, received_at_us: int, window: tuple[float, float]
) -> tuple[int, tuple[str, ...]]:
    """The device time when it lies in ``window``, else the receipt time flagged ``clock_invalid``.

    The same rule as :func:`meterlake.ingest.readings.choose_timestamp`, with the window computed
    once per message.
    """
    if device_us is not None and window[0] <= device_us <= window[1]:
        return device_us, NO_FLAGS
    return received_at_us, CLOCK_FLAGS


def local_to_us(naive: dt.datetime, zone: dt.tzinfo, received_at_us: int) -> int | None:
    """UTC microseconds of a wall-clock time in ``zone``.

    A time that occurs twice (the hour after a DST change back) or not at all (the hour skipped
    forward) has two readings; the one nearer the receipt time is taken, which is right whenever
    the message took less than half the DST shift to arrive.

    >>> import zoneinfo
    >>> berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    >>> received = to_us(dt.datetime(2026, 10, 25, 0, 40, tzinfo=dt.UTC))  # 02:40 CEST
    >>> local_to_us(dt.datetime(2026, 10, 25, 2, 30), berlin, received) == received - 600_000_000
    True
    """
    try:
        first = to_us(naive.replace(tzinfo=zone, fold=0))
        second = to_us(naive.replace(tzinfo=zone, fold=1))
    except (OverflowError, ValueError):
        return None
    if first == second:
        return first
    return first if abs(first - received_at_us) <= abs(second - received_at_us) else second


def datetime_to_us(moment: dt.datetime, zone: dt.tzinfo, received_at_us: int) -> int | None:
    """UTC microseconds of ``moment``; a naive one is wall-clock time in ``zone``."""
    if moment.tzinfo is None:
        return local_to_us(moment, zone, received_at_us)
    try:
        return to_us(moment)
    except (OverflowError, ValueError):
        return None


def iso_to_us(text: str, zone: dt.tzinfo, received_at_us: int) -> int | None:
    """UTC microseconds of an ISO 8601 time (naive: wall-clock in ``zone``); ``None`` if invalid.

    >>> iso_to_us("1970-01-01T00:00:01Z", dt.UTC, 0)
    1000000
    """
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        return None
    return datetime_to_us(moment, zone, received_at_us)


def epoch_to_us(value: float, unit_us: int) -> int | None:
    """UTC microseconds of an epoch number in units of ``unit_us`` microseconds; ``None`` if not
    finite.

    >>> epoch_to_us(1757059829.08, 1_000_000)
    1757059829080000
    """
    scaled = value * unit_us
    if scaled - scaled != 0.0:
        return None
    return round(scaled)
