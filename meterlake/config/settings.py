"""Settings: one TOML file (``meterlake.toml``) parsed once into frozen, validated objects.

Loose outside, frozen inside: :func:`load_settings` reads the file, lets environment variables
override the secrets, and returns a :class:`Settings` or raises one :class:`ConfigError` whose
message names the file, the key, the bad value and what is allowed.

Environment overrides (secrets should not live in a file that is copied around):

``METERLAKE_MQTT_PASSWORD``
    ``password`` of every ``[[mqtt]]`` broker connection
``METERLAKE_API_TOKENS``
    ``[[api.tokens]]`` as comma-separated ``TOKEN:scope+scope`` entries
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Final, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from meterlake.config.collect import ModbusBusSettings, check_modbus_buses
from meterlake.config.errors import ConfigError
from meterlake.config.payload_formats import PayloadFormatSettings
from meterlake.config.schedule import ScheduleSettings
from meterlake.config.timezones import is_timezone
from meterlake.config.vee import VeeSettings

DEFAULT_CONFIG_NAME: Final = "meterlake.toml"
CONFIG_ENV: Final = "METERLAKE_CONFIG"
MQTT_PASSWORD_ENV: Final = "METERLAKE_MQTT_PASSWORD"  # noqa: S105 - a variable name
API_TOKENS_ENV: Final = "METERLAKE_API_TOKENS"

Scope = Literal["bills:read", "usage:read"]
_SECRET_HOLDERS: Final = frozenset({"password", "token", "tokens", "mqtt", "api"})


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class LakeSettings(_Section):
    """Where the lake lives and how it keeps its files."""

    path: Path = Path("lake")
    """Root directory of the lake (relative paths are relative to the config file)."""
    compact_min_files: Annotated[int, Field(ge=2, le=100_000)] = 2
    """A partition with at least this many files is compacted."""
    compact_target_rows: Annotated[int, Field(ge=1_000, le=1_000_000_000)] = 5_000_000
    """Rows per compacted file, at most."""


class SiteSettings(_Section):
    """The site: where local days and tariff calendars are taken from."""

    timezone: str = "Asia/Shanghai"
    """IANA time zone of local days (e.g. ``Asia/Shanghai``, ``Europe/Berlin``)."""

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        if not is_timezone(value):
            raise ValueError("must be an IANA time zone such as Asia/Shanghai")
        return value


class MqttConnection(_Section):
    """How to reach an MQTT broker (shared by subscriptions and the upstream forwarder)."""

    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=1, le=65535)] = 1883
    username: str | None = None
    password: Annotated[str | None, Field(repr=False)] = None
    client_id: Annotated[str, Field(min_length=1, max_length=128)] = "meterlake"
    """Fixed per collector: the broker keeps the persistent session under this id."""
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    keepalive_s: Annotated[int, Field(ge=5, le=3600)] = 30
    tls_ca_file: Path | None = None
    """A CA file turns TLS on (with the system's CAs use ``tls = true``)."""
    tls: bool = False
    tls_certfile: Path | None = None
    tls_keyfile: Path | None = None


class MqttSettings(MqttConnection, PayloadFormatSettings):
    """One MQTT subscription (``[[mqtt]]``; a gateway may have several): the broker, the
    topics and how their payloads are decoded (see :mod:`meterlake.config.payload_formats`)."""

    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,40}$")] = "mqtt"
    """Names this subscription in logs, status and the readings' ``source``."""
    qos: Literal[0, 1] = 1
    topics: tuple[str, ...] = ()
    """Topic filters to subscribe to, e.g. ``tele/+/SENSOR`` or ``$share/group/meters/#``."""


class UpstreamSettings(MqttConnection):
    """Forward every reading to a central broker as canonical JSON batches (QoS 1)."""

    client_id: Annotated[str, Field(min_length=1, max_length=128)] = "meterlake-upstream"
    topic: Annotated[str, Field(min_length=1)] = "meterlake/readings"
    """Topic of the batches; a central ``meterlake collect`` subscribes to it (format canonical)."""
    batch_readings: Annotated[int, Field(ge=1, le=100_000)] = 500
    """Readings per published message."""
    timeout_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    """How long a flush waits for the broker's acknowledgements before it retries later [s]."""


class CollectSettings(_Section):
    """What ``meterlake collect`` needs besides its collectors."""

    profiles_dir: Path | None = None
    """A directory of your own device profiles (``*.toml``), beside the shipped ones."""
    status_file: Path = Path("collect-status.json")
    """Where the running collector writes every device's health (``meterlake status``)."""


class SpoolSettings(_Section):
    """The gateway's on-disk spool between the collectors and the lake."""

    path: Path = Path("spool")
    """Spool directory (relative paths are relative to the config file)."""
    fsync: Literal["always", "batch", "never"] = "batch"
    """``batch``: one fsync per group commit before acknowledging (the default and durable);
    ``always``: one per append; ``never``: leave it to the OS (not crash-safe)."""
    commit_delay_s: Annotated[float, Field(ge=0, le=5)] = 0.0
    """Extra wait before each group commit, to gather more messages per fsync on slow media
    such as SD cards [s]; 0: commit as soon as the previous commit is done."""
    segment_bytes: Annotated[int, Field(ge=1024, le=1 << 30)] = 8 * 1024 * 1024
    """A segment is sealed for flushing at this size [B] ..."""
    segment_age_s: Annotated[float, Field(gt=0, le=3600)] = 10.0
    """... or at this age [s]."""
    flush_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    """How often sealed segments are written to the lake [s]."""


class ApiToken(_Section):
    """A bearer token of the HTTP API, its scopes and optionally the accounts it may read."""

    token: Annotated[str, Field(min_length=16, repr=False)]
    scopes: Annotated[tuple[Scope, ...], Field(min_length=1)]
    accounts: tuple[str, ...] | None = None


class ApiSettings(_Section):
    """The HTTP API (``meterlake serve``). Relative paths are relative to the config file."""

    tokens: tuple[ApiToken, ...] = ()
    tls_cert: Path | None = None
    """A PEM certificate (chain) turns TLS on; ``tls_key`` is its private key."""
    tls_key: Path | None = None
    cursor_key_file: Path | None = None
    """A file of at least 32 random bytes that signs page cursors, so cursors (and the bytes
    of a pull) stay the same across restarts; without it each start draws a new key."""
    public_docs: bool = False
    """Serve ``/docs`` and ``/openapi.json`` without a token (e.g. for a browser)."""
    lake_poll_s: Annotated[float, Field(ge=0, le=3600)] = 1.0
    """How long the server reuses its listing of the lake's files [s]: new bills, alerts and
    meter records are served at most this long after they were written (0: look every time)."""
    cache_periods: Annotated[int, Field(ge=1, le=1000)] = 12
    """Billing periods whose bills and lines are kept in memory (the most recently used)."""

    @model_validator(mode="after")
    def _tls_pair(self) -> ApiSettings:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both, or neither for HTTP")
        return self


class BillSettings(_Section):
    """Bill runs (``meterlake bill``)."""

    tariffs_dir: Path | None = None
    """A directory of the installation's own tariff files (native ``.toml``, URDB ``.json``), in
    addition to the shipped catalogue."""
    high_bill_ratio: Annotated[float, Field(gt=1.0)] = 2.0
    """Hold a bill whose total is more than this many times the meter's reference: its bill of
    the same month last year, else the mean of its last ``high_bill_recent`` bills."""
    high_bill_recent: Annotated[int, Field(ge=1, le=24)] = 3
    hold_estimated_share: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    """Hold a bill when more than this share of its energy is estimated."""
    hold_alert_severities: tuple[Literal["info", "warning", "critical"], ...] = ("critical",)
    """Hold the bill of a meter with an open alert of one of these severities ..."""
    hold_alert_rules: tuple[str, ...] = ()
    """... or of one of these alert rules (by name), whatever its severity."""


_C = TypeVar("_C", bound=MqttConnection)


class Settings(_Section):
    """All settings of one meterlake installation."""

    lake: LakeSettings = LakeSettings()
    site: SiteSettings = SiteSettings()
    mqtt: tuple[MqttSettings, ...] = ()
    modbus: tuple[ModbusBusSettings, ...] = ()
    collect: CollectSettings = CollectSettings()
    spool: SpoolSettings = SpoolSettings()
    upstream: UpstreamSettings | None = None
    api: ApiSettings = ApiSettings()
    vee: VeeSettings = VeeSettings()
    """Validation rules of interval data (``[vee]``, per meter group ``[vee.groups.<name>]``)."""
    bill: BillSettings = BillSettings()
    schedule: ScheduleSettings = ScheduleSettings()
    """The central jobs of ``meterlake run`` (``[schedule]``, per job ``[schedule.<job>]``)."""

    @model_validator(mode="before")
    @classmethod
    def _name_subscriptions(cls, data: Any) -> Any:
        """Unnamed ``[[mqtt]]`` tables are ``mqtt1``, ``mqtt2``, ... (or ``mqtt`` if alone)."""
        subscriptions = data.get("mqtt") if isinstance(data, dict) else None
        if isinstance(subscriptions, list) and len(subscriptions) > 1:
            data = {
                **data,
                "mqtt": [
                    {"name": f"mqtt{i}", **sub} if isinstance(sub, dict) else sub
                    for i, sub in enumerate(subscriptions, start=1)
                ],
            }
        return data

    @model_validator(mode="after")
    def _collectors_fit_together(self) -> Settings:
        check_modbus_buses(self.modbus)
        names = [m.name for m in self.mqtt]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"[[mqtt]] names {dupes} appear more than once; name each one")
        return self


def load_settings(
    path: Path | None = None, environ: Mapping[str, str] | None = None
) -> tuple[Settings, Path | None]:
    """Load settings from ``path`` (or ``$METERLAKE_CONFIG``, or ``./meterlake.toml`` if present).

    Returns the settings and the file they came from (``None``: built-in defaults).
    Relative paths in the file are resolved against the file's directory.

    Raises
    ------
    ConfigError
        The file is missing (when named explicitly), not TOML, or has a bad key or value.
    """
    env = os.environ if environ is None else environ
    if path is None and env.get(CONFIG_ENV):
        path = Path(env[CONFIG_ENV])
    if path is None and Path(DEFAULT_CONFIG_NAME).is_file():
        path = Path(DEFAULT_CONFIG_NAME)
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            with path.open("rb") as fh:
                raw = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError(f"{path}: no such config file") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    raw = _apply_env_overrides(raw, env, path)
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, path)) from None
    if path is not None:
        settings = _resolve_relative_paths(settings, path.parent)
    return settings, path


def _resolve_relative_paths(settings: Settings, base: Path) -> Settings:
    def resolve(p: Path) -> Path:
        return p if p.is_absolute() else base / p

    lake = settings.lake.model_copy(update={"path": resolve(settings.lake.path)})

    def resolve_tls(conn: _C) -> _C:
        keys = ("tls_ca_file", "tls_certfile", "tls_keyfile")
        paths = {k: resolve(v) for k in keys if (v := getattr(conn, k)) is not None}
        return conn.model_copy(update=paths)

    brokers = tuple(resolve_tls(b) for b in settings.mqtt)
    upstream = None if settings.upstream is None else resolve_tls(settings.upstream)
    spool = settings.spool.model_copy(update={"path": resolve(settings.spool.path)})
    collect = settings.collect.model_copy(
        update={
            "status_file": resolve(settings.collect.status_file),
            "profiles_dir": None
            if settings.collect.profiles_dir is None
            else resolve(settings.collect.profiles_dir),
        }
    )
    bill = settings.bill.model_copy(
        update={
            "tariffs_dir": None
            if settings.bill.tariffs_dir is None
            else resolve(settings.bill.tariffs_dir)
        }
    )
    rules = settings.schedule.alerts.rules
    alerts = settings.schedule.alerts.model_copy(
        update={"rules": None if rules is None else resolve(rules)}
    )
    api_keys = ("tls_cert", "tls_key", "cursor_key_file")
    api = settings.api.model_copy(
        update={k: resolve(v) for k in api_keys if (v := getattr(settings.api, k)) is not None}
    )
    return settings.model_copy(
        update={
            "api": api,
            "bill": bill,
            "schedule": settings.schedule.model_copy(update={"alerts": alerts}),
            "lake": lake,
            "mqtt": brokers,
            "spool": spool,
            "upstream": upstream,
            "collect": collect,
        }
    )


def _apply_env_overrides(
    raw: dict[str, Any], env: Mapping[str, str], path: Path | None
) -> dict[str, Any]:
    raw = dict(raw)
    if env.get(MQTT_PASSWORD_ENV):
        brokers = raw.get("mqtt") or []
        if isinstance(brokers, list):
            raw["mqtt"] = [
                {**b, "password": env[MQTT_PASSWORD_ENV]} if isinstance(b, dict) else b
                for b in brokers
            ]
    if env.get(API_TOKENS_ENV):
        tokens = [_parse_token_entry(e) for e in env[API_TOKENS_ENV].split(",") if e]
        api = raw.get("api") or {}
        if isinstance(api, dict):  # otherwise validation reports the malformed [api]
            raw["api"] = {**api, "tokens": tokens}
    return raw


def _parse_token_entry(entry: str) -> dict[str, Any]:
    token, sep, scopes = entry.strip().partition(":")
    if not sep or not token or not scopes:
        raise ConfigError(
            f"${API_TOKENS_ENV}: entry {_redact(entry)!r} is not TOKEN:scope+scope "
            "(e.g. s3cret-token-0123456:bills:read+usage:read)"
        )
    # a scope itself contains ':', so split the scopes on '+', not on ':'
    return {"token": token, "scopes": scopes.split("+")}


def _redact(secret: str) -> str:
    return secret[:2] + "…" if len(secret) > 2 else "…"


def _describe(exc: ValidationError, path: Path | None) -> str:
    where = str(path) if path is not None else "built-in settings"
    problems = []
    for err in exc.errors(include_url=False):
        loc = [str(p) for p in err["loc"]]
        key = _toml_key(loc)
        # a secret, or something that holds secrets (or should have, when it has the wrong shape)
        names = [p for p in loc if not p.isdigit()]
        secret = not names or names[-1] in _SECRET_HOLDERS
        value = "<hidden>" if secret else repr(err.get("input"))
        if not loc:  # a rule about the file as a whole
            problems.append(err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            allowed = ", ".join(_allowed_keys(loc[:-1])) or "none"
            problems.append(f"{key}: unknown key; allowed here: {allowed}")
        elif err["type"] == "missing":
            problems.append(f"{key}: required key is missing")
        else:
            message = err["msg"].removeprefix("Value error, ")
            problems.append(f"{key} = {value}: {message}")
    plural = "s" if len(problems) > 1 else ""
    return f"{where}: {len(problems)} problem{plural}:\n  " + "\n  ".join(problems)


def _toml_key(loc: list[str]) -> str:
    """The TOML spelling of an error location: ``[[mqtt]] #1 port``, ``[site] timezone``."""
    if not loc:
        return "(top level)"
    head, key = loc[:-1], loc[-1]
    if head and head[-1].isdigit():
        return f"[[{'.'.join(head[:-1])}]] #{int(head[-1]) + 1} {key}"
    if key.isdigit():
        return f"[[{'.'.join(head)}]] #{int(key) + 1}"
    return f"[{'.'.join(head)}] {key}" if head else key


def _allowed_keys(section: list[str]) -> list[str]:
    model: type[BaseModel] = Settings
    for part in section:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        annotation = getattr(field, "annotation", None)
        if get_origin(annotation) in (tuple, UnionType):  # [[mqtt]], or an optional table
            annotation = next(a for a in get_args(annotation) if a is not type(None))
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
        else:
            return []
    return list(model.model_fields)
