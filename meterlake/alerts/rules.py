"""Alert rules and sinks as data: a TOML file (``docs/alerts.md``) -> frozen, validated objects.

Loose outside, frozen inside: :func:`load_alert_rules` reads the file once and returns
:class:`AlertRules`, or raises one :class:`AlertRulesError` that lists every problem with its
place, the bad value and what would be valid::

    alerts.toml: 2 problems:
      [[rules]] #2 (night-surge) min_score = 1.5: Input should be less than or equal to 1
      [[rules]] #3 (prepaid) sinks = ['sms']: no sink named 'sms'; defined: log, phone

A rule is one ``[[rules]]`` table: ``name``, ``kind``, ``severity``, ``cooldown``, ``sinks`` and
the parameters of its kind (:data:`RULE_KINDS`). A sink is one ``[[sinks]]`` table (``log``,
``mqtt`` or ``webhook``); ``[delivery]`` bounds the work of one run.
"""

from __future__ import annotations

import datetime as dt
import re
import string
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeAlias

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)

from meterlake.config.collect import parse_duration
from meterlake.config.datafile import read_document
from meterlake.config.errors import ConfigError

NAME_PATTERN: Final = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
"""Rule and sink names: 1-64 letters, digits, ``_``, ``.`` or ``-``."""
TOPIC_FIELDS: Final = ("alert_id", "rule", "severity", "meter_id", "state")
"""The fields an MQTT topic template may use, e.g. ``meterlake/alerts/{severity}/{meter_id}``."""
AnomalyKind = Literal[
    "surge",
    "drop",
    "sustained_drop",
    "zero_with_voltage",
    "reverse_energy",
    "flat_line",
    "vacant_use",
    "isolation",
]
"""The kinds ``anomaly_scores.kinds`` may hold (see ``meterlake.config.schemas.ANOMALY_SCORES``)."""

_DAY_RE: Final = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*d\s*$")
_SECRET_KEYS: Final = frozenset({"password", "headers"})
_TOP_KEYS: Final = ("rules", "sinks", "delivery")
_TIMEDELTA_REPR: Final = re.compile(r"datetime\.timedelta\(([^)]*)\)")

Severity = Literal["info", "warning", "critical"]


class AlertRulesError(ConfigError):
    """An alert rules file that cannot be used (the message lists every problem with its place)."""


def parse_timedelta(value: object) -> dt.timedelta:
    """A duration written as text with a unit (``"30m"``, ``"6h"``, ``"1d"``, ``"90s"``) or a
    number of seconds.

    >>> parse_timedelta("6h"), parse_timedelta("1.5d"), parse_timedelta(90)
    (datetime.timedelta(seconds=21600), datetime.timedelta(days=1, seconds=43200), \
datetime.timedelta(seconds=90))

    Raises
    ------
    ValueError
        ``value`` is not a non-negative duration.
    """
    if isinstance(value, dt.timedelta):
        return value
    try:
        if isinstance(value, str) and (match := _DAY_RE.fullmatch(value)):
            return dt.timedelta(days=float(match.group(1)))
        return dt.timedelta(seconds=parse_duration(value))
    except (ValueError, OverflowError):
        raise ValueError(
            "must be a duration such as '30m', '6h', '1d' or a number of seconds"
        ) from None


def format_timedelta(value: dt.timedelta) -> str:
    """A duration as the rules file writes it.

    >>> format_timedelta(dt.timedelta(hours=6)), format_timedelta(dt.timedelta(seconds=90))
    ('6h', '90s')
    """
    seconds = value.total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[dt.timedelta, BeforeValidator(parse_timedelta)]
"""A duration, written ``"30m"``, ``"6h"``, ``"1d"`` or as a number of seconds."""
Share = Annotated[float, Field(strict=True, gt=0, le=1)]
Count = Annotated[int, Field(strict=True, ge=1, le=1_000_000)]
Name = Annotated[str, Field(pattern=NAME_PATTERN)]


class _Spec(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


# --- rules ----------------------------------------------------------------------------------


class _Rule(_Spec):
    """What every rule has."""

    name: Name
    """Unique in the file; the ``rule`` column of the alerts."""
    severity: Severity = "warning"
    cooldown: Annotated[Duration, Field(ge=dt.timedelta(minutes=1))] = dt.timedelta(hours=6)
    """An alert that is still true is notified again once its last notification is this old."""
    sinks: tuple[Name, ...] | None = None
    """The sinks that get this rule's alerts (default: every sink of the file)."""


class TierThresholdRule(_Rule):
    """A meter near the next threshold of its block tariff (阶梯电价), from the latest
    ``tier_progress`` row: its share of the threshold used is at least ``at_share``, or the
    projected crossing is at most ``within_days`` away (either one is enough)."""

    kind: Literal["tier_threshold"]
    at_share: Share | None = None
    """Share of the next tier threshold used [1], e.g. 0.9."""
    within_days: Annotated[int, Field(strict=True, ge=0, le=366)] | None = None
    """Projected to cross the threshold within this many days [d]."""
    lookback: Annotated[Duration, Field(ge=dt.timedelta(days=1))] = dt.timedelta(days=3)
    """Only ``tier_progress`` rows this recent (``as_of``) count: a meter that is no longer
    computed does not keep its alert forever."""

    @model_validator(mode="after")
    def _some_threshold(self) -> TierThresholdRule:
        if self.at_share is None and self.within_days is None:
            raise ValueError("give at_share (e.g. 0.9), within_days (e.g. 30) or both")
        return self


class SurgeRule(_Rule):
    """The meter's most recent scored day (``anomaly_scores``, each day's latest run) has kind
    ``surge`` with a score of at least ``min_score``."""

    kind: Literal["surge"]
    min_score: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.0
    """Lowest anomaly score that counts [0-1]."""
    lookback: Annotated[Duration, Field(ge=dt.timedelta(days=1))] = dt.timedelta(days=2)
    """Only days this recent count as the meter's most recent day."""


class AnomalyRule(_Rule):
    """Tamper or theft suspicion: a day in the last ``lookback`` with a score of at least
    ``min_score`` and, if ``kinds`` is given, one of those kinds."""

    kind: Literal["anomaly"]
    min_score: Annotated[float, Field(strict=True, ge=0, le=1)] = 0.8
    """Lowest anomaly score that counts [0-1]."""
    kinds: tuple[AnomalyKind, ...] | None = None
    """Anomaly kinds that count (default: any)."""
    lookback: Annotated[Duration, Field(ge=dt.timedelta(days=1))] = dt.timedelta(days=7)


class MeterOfflineRule(_Rule):
    """No reading of any quantity for ``intervals`` x ``interval_minutes`` before now. The
    meters judged: the current master data plus every meter with a reading in ``lookback``."""

    kind: Literal["meter_offline"]
    intervals: Count = 4
    """Missed intervals before a meter is offline."""
    interval_minutes: Annotated[int, Field(strict=True, ge=1, le=1440)] = 15
    """The meters' reading interval [min]."""
    lookback: Annotated[Duration, Field(ge=dt.timedelta(hours=1))] = dt.timedelta(days=7)
    """How far back readings are read [d]; a meter silent for longer is still reported
    when it is in the master data."""

    @property
    def silence(self) -> dt.timedelta:
        """The silence that makes a meter offline."""
        return dt.timedelta(minutes=self.intervals * self.interval_minutes)

    @model_validator(mode="after")
    def _lookback_covers_silence(self) -> MeterOfflineRule:
        if self.lookback <= self.silence:
            raise ValueError(
                f"lookback ({format_timedelta(self.lookback)}) must be longer than "
                f"intervals x interval_minutes ({format_timedelta(self.silence)})"
            )
        return self


class OutageRule(_Rule):
    """A feeder (``meters.feeder``) with at least ``min_meters`` and at least ``share`` of its
    meters silent for the last ``minutes`` or reporting a voltage below ``voltage_below``; one
    alert per feeder, ``meter_id`` = ``feeder:<name>``."""

    kind: Literal["outage"]
    minutes: Annotated[int, Field(strict=True, ge=1, le=1440)] = 15
    """The window [min]: silent = no reading in it; voltage = its latest in it."""
    min_meters: Count = 3
    share: Share = 0.5
    """Share of the feeder's meters down at once [1]."""
    voltage_below: Annotated[float, Field(strict=True, ge=0, le=100_000)] | None = None
    """A meter whose latest ``voltage_v`` (or phase voltage) is below this is down [V]
    (default: only silence counts)."""


class PrepaidLowRule(_Rule):
    """A prepaid meter (``meters.prepaid``) whose latest ``balance`` reading is below ``below``."""

    kind: Literal["prepaid_low"]
    below: Annotated[float, Field(strict=True, ge=-1e12, le=1e12)]
    """Balance alert level [currency units of the meter's balance register]."""
    lookback: Annotated[Duration, Field(ge=dt.timedelta(hours=1))] = dt.timedelta(days=7)
    """How far back the latest balance is looked for."""


class DataQualityRule(_Rule):
    """The share of ``actual`` intervals (current versions) in the last ``days`` is below
    ``min_actual_share``."""

    kind: Literal["data_quality"]
    days: Annotated[int, Field(strict=True, ge=1, le=366)] = 7
    min_actual_share: Share = 0.95
    """Share of the meter's intervals in the window that must be actual readings [1]."""


AlertRule: TypeAlias = (
    TierThresholdRule
    | SurgeRule
    | AnomalyRule
    | MeterOfflineRule
    | OutageRule
    | PrepaidLowRule
    | DataQualityRule
)
RULE_KINDS: Final[dict[str, type[_Rule]]] = {
    "tier_threshold": TierThresholdRule,
    "surge": SurgeRule,
    "anomaly": AnomalyRule,
    "meter_offline": MeterOfflineRule,
    "outage": OutageRule,
    "prepaid_low": PrepaidLowRule,
    "data_quality": DataQualityRule,
}

# --- sinks ----------------------------------------------------------------------------------


class LogSink(_Spec):
    """Each event as one line of the ``meterlake.alerts`` logger (level by severity)."""

    name: Name
    type: Literal["log"]


class MqttSink(_Spec):
    """Each event as a JSON message, QoS 1; counted delivered once the broker's PUBACK is in."""

    name: Name
    type: Literal["mqtt"]
    host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    port: Annotated[int, Field(strict=True, ge=1, le=65535)] = 1883
    topic: str = "meterlake/alerts/{severity}/{meter_id}"
    """Topic template; fields: alert_id, rule, severity, meter_id, state."""
    client_id: Annotated[str, Field(min_length=1, max_length=128)] = "meterlake-alerts"
    username: str | None = None
    password: Annotated[str | None, Field(repr=False)] = None
    timeout: Annotated[Duration, Field(gt=dt.timedelta(0), le=dt.timedelta(minutes=10))] = (
        dt.timedelta(seconds=10)
    )
    """How long a run waits to connect and for the acknowledgements."""

    @field_validator("topic")
    @classmethod
    def _topic_template(cls, value: str) -> str:
        try:
            fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
        except ValueError as exc:
            raise ValueError(f"not a topic template ({exc})") from None
        unknown = [f for f in fields if f not in TOPIC_FIELDS]
        if unknown:
            raise ValueError(
                f"unknown field(s) {', '.join(map(repr, unknown))}; use {', '.join(TOPIC_FIELDS)}"
            )
        if not value or any(c in value for c in "+#\x00"):
            raise ValueError("a topic to publish to: not empty, no '+', '#' or NUL")
        return value


class WebhookSink(_Spec):
    """Each event as a JSON ``POST``; 5xx and connection errors are retried with exponential
    back-off, a 4xx keeps the event pending and is logged."""

    name: Name
    type: Literal["webhook"]
    url: str
    timeout: Annotated[Duration, Field(gt=dt.timedelta(0), le=dt.timedelta(minutes=5))] = (
        dt.timedelta(seconds=10)
    )
    retries: Annotated[int, Field(strict=True, ge=0, le=10)] = 3
    """Retries of a request after a 5xx or a connection error."""
    backoff: Annotated[Duration, Field(ge=dt.timedelta(0), le=dt.timedelta(minutes=5))] = (
        dt.timedelta(seconds=0.5)
    )
    """Wait before the first retry; doubled for each further retry."""
    headers: Annotated[dict[str, str], Field(repr=False)] = Field(default_factory=dict)

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str) -> str:
        if not re.match(r"^https?://[^/\s?#]+", value) or any(c.isspace() for c in value):
            raise ValueError("an http:// or https:// URL, e.g. 'https://crm.example/alerts'")
        return value


SinkSpec: TypeAlias = LogSink | MqttSink | WebhookSink
SINK_TYPES: Final[dict[str, type[_Spec]]] = {
    "log": LogSink,
    "mqtt": MqttSink,
    "webhook": WebhookSink,
}


class DeliverySettings(_Spec):
    """``[delivery]``: how much one run sends."""

    max_age: Annotated[Duration, Field(ge=dt.timedelta(hours=1), le=dt.timedelta(days=366))] = (
        dt.timedelta(days=7)
    )
    """Events older than this are no longer sent (a week-old alert is news to nobody)."""
    max_per_run: Annotated[int, Field(strict=True, ge=1, le=1_000_000)] = 1000
    """Events sent per sink and run at most (oldest first); the rest wait for the next run."""


_RULE_ADAPTER: Final[TypeAdapter[AlertRule]] = TypeAdapter(
    Annotated[AlertRule, Field(discriminator="kind")]
)
_SINK_ADAPTER: Final[TypeAdapter[SinkSpec]] = TypeAdapter(
    Annotated[SinkSpec, Field(discriminator="type")]
)


@dataclass(frozen=True)
class AlertRules:
    """A checked rules file: its rules and sinks in file order, and ``[delivery]``."""

    rules: tuple[AlertRule, ...]
    sinks: tuple[SinkSpec, ...] = ()
    delivery: DeliverySettings = field(default_factory=DeliverySettings)
    source: str = "<rules>"

    def sink_names(self, rule: AlertRule) -> tuple[str, ...]:
        """The sinks that get ``rule``'s alerts."""
        every = tuple(s.name for s in self.sinks)
        return every if rule.sinks is None else rule.sinks


def load_alert_rules(path: Path) -> AlertRules:
    """Read and check an alert rules file.

    Raises
    ------
    AlertRulesError
        The file cannot be read, is not TOML, or has problems (all listed, with their place).
    """
    data = read_document(path, "the alert rules", AlertRulesError)
    return parse_alert_rules(data, source=str(path))


def parse_alert_rules(data: Mapping[str, Any], *, source: str = "<rules>") -> AlertRules:
    """Check the parsed TOML of a rules file and freeze it into :class:`AlertRules`.

    Raises
    ------
    AlertRulesError
        Listing every problem found, each with its place in the file.
    """
    problems: list[str] = []
    for key in data:
        if key not in _TOP_KEYS:
            problems.append(f"{key}: unknown top-level key; allowed: {', '.join(_TOP_KEYS)}")
    sinks = _tables(data, "sinks", "type", _SINK_ADAPTER, SINK_TYPES, problems)
    rules = _tables(data, "rules", "kind", _RULE_ADAPTER, RULE_KINDS, problems)
    if "rules" not in data:
        problems.append("[[rules]]: none given; add at least one rule")
    delivery = DeliverySettings()
    raw_delivery = data.get("delivery", {})
    try:
        delivery = DeliverySettings.model_validate(raw_delivery)
    except ValidationError as exc:
        problems += _describe(exc, "[delivery]", DeliverySettings)
    _unique_names(data, "rules", problems)
    _unique_names(data, "sinks", problems)
    raw_sinks = data.get("sinks")
    defined = list(
        dict.fromkeys(
            t["name"]
            for t in (raw_sinks if isinstance(raw_sinks, list) else [])
            if isinstance(t, dict) and isinstance(t.get("name"), str)
        )
    )
    raw_rules = data.get("rules")
    for number, rule in enumerate(raw_rules if isinstance(raw_rules, list) else [], start=1):
        named = rule.get("sinks") if isinstance(rule, dict) else None
        if isinstance(named, list) and (missing := [n for n in named if n not in defined]):
            problems.append(
                f"{_place('rules', number, rule)} sinks = {named!r}: no sink named "
                f"{', '.join(map(repr, missing))}; defined: {', '.join(defined) or 'none'}"
            )
    if problems:
        plural = "s" if len(problems) > 1 else ""
        listed = "\n  ".join(problems)
        raise AlertRulesError(f"{source}: {len(problems)} problem{plural}:\n  {listed}")
    return AlertRules(tuple(rules), tuple(sinks), delivery, source)


def _tables(
    data: Mapping[str, Any],
    key: str,
    tag: str,
    adapter: TypeAdapter[Any],
    kinds: Mapping[str, type[BaseModel]],
    problems: list[str],
) -> list[Any]:
    """Every ``[[key]]`` table validated (its problems appended), in file order."""
    raw = data.get(key, [])
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        problems.append(f"[[{key}]]: must be tables ([[{key}]] headers)")
        return []
    out = []
    for number, table in enumerate(raw, start=1):
        place = _place(key, number, table)
        given = table.get(tag)
        model = kinds.get(given, BaseModel) if isinstance(given, str) else BaseModel
        try:
            out.append(adapter.validate_python(table))
        except ValidationError as exc:
            problems += _describe(exc, place, model, tag, kinds)
    return out


def _place(key: str, number: int, table: object) -> str:
    """``[[rules]] #2 (night-surge)``: a table's place in the file, with its name if it has one."""
    name = table.get("name") if isinstance(table, dict) else None
    return f"[[{key}]] #{number}" + (f" ({name})" if isinstance(name, str) else "")


def _unique_names(data: Mapping[str, Any], key: str, problems: list[str]) -> None:
    raw = data.get(key)
    if not isinstance(raw, list):
        return
    first: dict[str, int] = {}
    for number, table in enumerate(raw, start=1):
        name = table.get("name") if isinstance(table, dict) else None
        if not isinstance(name, str):
            continue
        if name in first:
            problems.append(
                f"{_place(key, number, table)} name = {name!r}: already used by "
                f"[[{key}]] #{first[name]}; names must be unique"
            )
        else:
            first[name] = number


def _shown_timedelta(match: re.Match[str]) -> str:
    """``datetime.timedelta(seconds=3600)`` in a pydantic message, as the file writes it: 1h."""
    parts = (p.split("=") for p in match.group(1).split(", ") if "=" in p)
    return format_timedelta(dt.timedelta(**{k: float(v) for k, v in parts}))


def _describe(
    exc: ValidationError,
    place: str,
    model: type[BaseModel],
    tag: str = "",
    kinds: Mapping[str, type[BaseModel]] | None = None,
) -> list[str]:
    """One line per pydantic error: place, key, bad value and what is valid."""
    lines = []
    for error in exc.errors(include_url=False):
        loc = [str(p) for p in error["loc"]]
        if kinds is not None and loc and loc[0] in kinds:
            loc = loc[1:]  # the discriminated union's tag, not a key of the file
        key = ".".join(loc)
        value = error.get("input")
        shown = "<hidden>" if loc and loc[0] in _SECRET_KEYS else repr(value)
        message = error["msg"].removeprefix("Value error, ")
        message = _TIMEDELTA_REPR.sub(_shown_timedelta, message)
        if error["type"] in ("union_tag_invalid", "union_tag_not_found"):
            allowed = ", ".join(kinds or {})
            given = value.get(tag) if isinstance(value, dict) else None
            lines.append(
                f"{place} {tag}: required, one of {allowed}"
                if given is None
                else f"{place} {tag} = {given!r}: one of {allowed}"
            )
        elif error["type"] == "extra_forbidden":
            allowed = ", ".join(model.model_fields)
            lines.append(f"{place} {key}: unknown key; allowed here: {allowed}")
        elif error["type"] == "missing":
            lines.append(f"{place} {key}: required key is missing")
        elif not key:  # a check of the table as a whole
            lines.append(f"{place}: {message}")
        else:
            lines.append(f"{place} {key} = {shown}: {message}")
    return lines
