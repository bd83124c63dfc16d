"""A seeded simulator of a smart-meter fleet: readings in the lake's long form, with known faults.

The same :class:`FleetSpec` always gives the same fleet, readings and faults; everything is
computed as ``(meters, intervals)`` arrays, never a Python loop per meter or per interval.

The model
---------
meters
    Ids ``m-00001`` ...; about 85 % households and 15 % small businesses, each with a lognormal
    size, its own daily rhythm (a shift of the daily shape by up to about an hour), a sensitivity
    to heat (air conditioning) and to cold, a 220 V supply point of its own, and a gateway
    (``sim:gw-01`` for meters 1-100, ``sim:gw-02`` for 101-200, ...). A ``pv_share`` of the
    meters have rooftop PV.
load
    A daily shape in *local* time: households have a night base, a morning and a large evening
    peak (later and flatter at weekends); businesses draw power from about 08:30 to 18:30 with a
    lunch dip, less on Saturday and little on Sunday. It is scaled per meter, drifts with the
    season and a day-to-day temperature (cooling and heating load), and carries noise and
    short appliance spikes.
quantities (one reading each per meter and interval)
    ``energy_import_kwh``
        Cumulative import register [kWh], starting at a random reading, 0.01 kWh resolution.
    ``energy_export_kwh``
        Cumulative export register [kWh] (PV meters only): grows when generation exceeds load.
    ``power_w``
        Mean net active power [W] of the interval that *ends* at ``ts`` (negative: export), so
        the register advance between two readings is the energy of the interval between them.
    ``voltage_v``
        Supply voltage [V], about 220 V, sagging under load and rising with export.
delivery
    ``received_at`` is ``ts`` plus a small random delay (all quantities of one read share it);
    ``source`` is the meter's gateway.

Faults (``faults=True``)
------------------------
A few meters per kind (one per 100 meters, at least one), each meter with at most one fault, at
positions drawn from the seed. :func:`simulate_faults` lists every one; ``start`` and ``end`` are
the first and last ``ts`` it affects, ``quantity`` is null when it affects all of a meter's
quantities.

``rollover``     the import register starts near 99999.99 kWh and wraps through zero (at ``start``)
``replacement``  the meter is replaced: its registers restart near zero (at ``start``)
``glitch``       one garbage, too low import register read; the next read is back on track
``gap``          no readings for 2-6 hours
``duplicate``    an hour of the meter's readings is delivered twice (identical rows)
``conflict``     a second ``power_w`` reading with the same key and a different value, received
                 later
``dead``         the meter stops reporting for the rest of the period
``nan``          one NaN value, kept, with quality ``['invalid_value']``

The three register faults go to meters without PV where there are such meters (their import
register advances every interval). A fleet with fewer meters than kinds gets the first kinds
only, in the order above.

Anomalies (``anomaly_share``)
-----------------------------
Patterns a theft, tamper or usage analysis should find, drawn from a random stream of their own
(``anomaly_share=0``, the default, leaves every other output as it was). A share of the meters
gets one anomaly each, spread evenly over the kinds (at least one meter per kind; a fleet with
fewer meters than kinds gets the first kinds only), on meters without fault and without PV
where there are enough of them. :func:`simulate_anomalies` lists every one with its local
days and its first and last affected ``ts``. They take whole *local* days: a start day ``d0``
drawn from the second half of the period with at least ten normal days before it (from
``D // 2`` to ``D - 3`` of ``D`` local days, so at least three anomalous days; a period of
fewer than 13 local days gets ``d0`` at about its middle, ``max(D // 2, D - 3)``). The
period's first and last local days may be partial (a ``start`` at UTC midnight is not local
midnight).

``surge``              the load x U(2.5, 4.0) for 1-3 consecutive days (a heater left on)
``sustained_drop``     from ``d0`` on the meter *records* load x U(0.15, 0.4) (a bypass: theft):
                       the register and ``power_w`` show the reduced load, voltage is normal
``zero_with_voltage``  from ``d0`` on the import register stops (a stuck or tampered register)
                       while ``power_w`` shows the real load and voltage is normal
``reverse_energy``     on a meter without PV (import-only), from ``d0`` on the consumption is
                       recorded on the export register (which it then reports), the import
                       register stops and ``power_w`` is negative (reversed wiring)
``flat_line``          from ``d0`` on the import register advances by the same whole
                       hundredths of a kWh every interval (the meter's mean interval energy,
                       at least 0.01 kWh) and ``power_w`` shows that constant power
``vacant_use``         the meter is ``vacant`` in :func:`simulate_meter_records` yet consumes
                       like any household all period

So that ``vacant`` means something, 2 % of the other households (at least one; without fault
and PV where possible) are vacant too and draw 3 % of their load (standby only): they are not
anomalies and not in :func:`simulate_anomalies`.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl

from meterlake.config.errors import ConfigError
from meterlake.config.schemas import METERS, READINGS, UTC_TS, Quality
from meterlake.config.timezones import is_timezone

Floats = npt.NDArray[np.float64]
Ints = npt.NDArray[np.int64]
Bools = npt.NDArray[np.bool_]

REGISTER_WRAP_KWH: Final = 100_000.0
"""A register of width 99999.99 kWh shows ``reading - 100000`` once it passes its top [kWh]."""
NOMINAL_VOLTAGE_V: Final = 220.0
METERS_PER_GATEWAY: Final = 100
SOURCE_PREFIX: Final = "sim:gw-"
QUANTITY_ORDER: Final = ("energy_export_kwh", "energy_import_kwh", "power_w", "voltage_v")
"""The simulated quantities, in the order rows of one meter and ``ts`` appear."""
_EXPORT, _IMPORT, _POWER, _VOLTAGE = range(len(QUANTITY_ORDER))
_INTERVALS_PER_DAY_ALLOWED: Final = tuple(m for m in range(1, 61) if 60 % m == 0)
_US_PER_MINUTE: Final = 60_000_000
_BUSINESS_SHARE: Final = 0.15
_METERS_PER_FAULT: Final = 100
_VACANT_SHARE: Final = 0.02
"""Share of the households that stand vacant when anomalies are injected (not anomalies)."""
_VACANT_LOAD: Final = 0.03
"""A vacant home's load relative to the household it would be (standby only)."""
_BASELINE_DAYS: Final = 10
"""Normal local days an anomaly leaves before it, where the period allows."""


class FaultKind(StrEnum):
    """The faults the simulator injects (see the module docstring)."""

    ROLLOVER = "rollover"
    REPLACEMENT = "replacement"
    GLITCH = "glitch"
    GAP = "gap"
    DUPLICATE = "duplicate"
    CONFLICT = "conflict"
    DEAD = "dead"
    NAN = "nan"


class AnomalyKind(StrEnum):
    """The anomalies the simulator injects (see the module docstring)."""

    SURGE = "surge"
    SUSTAINED_DROP = "sustained_drop"
    ZERO_WITH_VOLTAGE = "zero_with_voltage"
    REVERSE_ENERGY = "reverse_energy"
    FLAT_LINE = "flat_line"
    VACANT_USE = "vacant_use"


FAULTS_SCHEMA: Final = pl.Schema(
    {
        "meter_id": pl.String(),
        "kind": pl.String(),
        "quantity": pl.String(),
        "start": pl.Datetime("us", "UTC"),
        "end": pl.Datetime("us", "UTC"),
    }
)
ANOMALIES_SCHEMA: Final = pl.Schema(
    {
        "meter_id": pl.String(),
        "kind": pl.String(),
        "first_day": pl.Date(),
        "last_day": pl.Date(),
        "start": pl.Datetime("us", "UTC"),
        "end": pl.Datetime("us", "UTC"),
        "factor": pl.Float64(),
    }
)
METERS_SCHEMA: Final = pl.Schema(
    {
        "meter_id": pl.String(),
        "segment": pl.String(),
        "has_pv": pl.Boolean(),
        "pv_capacity_kw": pl.Float64(),
        "source": pl.String(),
    }
)


@dataclass(frozen=True)
class FleetSpec:
    """What to simulate.

    Parameters
    ----------
    meters
        Number of meters (ids ``m-00001`` ...).
    start
        The first reading's ``ts`` (time-zone aware; used as UTC).
    days
        Length of the period [days]; readings every ``interval_minutes`` from ``start`` on.
    interval_minutes
        Reading interval [min]; a divisor of 60.
    timezone
        IANA time zone in which the meters' households and businesses live their days.
    seed
        The same seed gives the same fleet, readings and faults.
    pv_share
        Share of meters with rooftop PV, between 0 and 1.
    faults
        Inject the faults listed in the module docstring.
    anomaly_share
        Share of meters with one of the anomalies listed in the module docstring, between 0
        and 1 (0: none, and no vacant meters).
    """

    meters: int
    start: dt.datetime
    days: int
    interval_minutes: int = 15
    timezone: str = "Asia/Shanghai"
    seed: int = 0
    pv_share: float = 0.1
    faults: bool = True
    anomaly_share: float = 0.0

    def __post_init__(self) -> None:
        problems = []
        if not 1 <= self.meters <= 999_999:
            problems.append(f"meters={self.meters!r}: use 1 to 999999")
        if self.start.tzinfo is None or self.start.utcoffset() is None:
            problems.append(f"start={self.start!r} is naive: give it a time zone (UTC)")
        if self.days < 1:
            problems.append(f"days={self.days!r}: use at least 1")
        if self.interval_minutes not in _INTERVALS_PER_DAY_ALLOWED:
            problems.append(
                f"interval_minutes={self.interval_minutes!r}: use a divisor of 60 "
                f"({', '.join(map(str, _INTERVALS_PER_DAY_ALLOWED))})"
            )
        if not is_timezone(self.timezone):
            problems.append(
                f"timezone={self.timezone!r}: use an IANA time zone such as Asia/Shanghai"
            )
        if self.seed < 0:
            problems.append(f"seed={self.seed!r}: use a non-negative integer")
        if not 0.0 <= self.pv_share <= 1.0:
            problems.append(f"pv_share={self.pv_share!r}: use a share between 0 and 1")
        if not 0.0 <= self.anomaly_share <= 1.0:
            problems.append(f"anomaly_share={self.anomaly_share!r}: use a share between 0 and 1")
        if problems:
            raise ConfigError("FleetSpec: " + "; ".join(problems))

    @property
    def intervals(self) -> int:
        """Readings per meter and quantity in the period (before faults)."""
        return self.days * 24 * 60 // self.interval_minutes

    @property
    def interval(self) -> dt.timedelta:
        """The reading interval."""
        return dt.timedelta(minutes=self.interval_minutes)


def simulate_meters(spec: FleetSpec) -> pl.DataFrame:
    """The simulated meters: ``meter_id``, ``segment`` (household or business), ``has_pv``,
    ``pv_capacity_kw`` [kW] (0 without PV) and ``source`` (their gateway)."""
    fleet = _draw_fleet(spec)
    return pl.DataFrame(
        {
            "meter_id": fleet.ids,
            "segment": np.where(fleet.business, "business", "household"),
            "has_pv": fleet.has_pv,
            "pv_capacity_kw": fleet.pv_kw,
            "source": _gateway_names(int(fleet.gateway.max()) + 1).gather(fleet.gateway),
        },
        schema=METERS_SCHEMA,
    )


SIMULATED_TARIFFS: Final = {
    "household": "cn-zj-residential-tiered",
    "household_tou": "cn-zj-residential-tou",
    "business": "cn-hb-industrial-two-part-10kv",
}
"""Catalogue tariffs the simulated meters bill under: households alternate between Zhejiang's
tiered and peak/valley residential tariffs, businesses take Hubei's two-part industrial one."""


def simulate_meter_records(spec: FleetSpec, updated_at: dt.datetime) -> pl.DataFrame:
    """The simulated meters as master data in the ``meters`` contract: group = segment
    (``household`` / ``business``), PV meters bidirectional, others import-only, the gateway as
    feeder, a catalogue tariff (:data:`SIMULATED_TARIFFS`) billed on calendar months, ``vacant``
    true for the vacant meters (with anomalies only: see the module docstring); everything else
    left to the defaults."""
    meters = simulate_meters(spec)
    records = meters.select(
        pl.col(c) if c == "meter_id" else pl.lit(None, dtype).alias(c)
        for c, dtype in METERS.schema.items()
    ).with_columns(
        pl.format("acc-{}", meters["meter_id"]).alias("account"),
        meters["segment"].alias("meter_group"),
        (~meters["has_pv"]).alias("import_only"),
        meters["has_pv"].alias("pv"),
        meters["source"].alias("feeder"),
        pl.when(meters["segment"] == "business")
        .then(pl.lit(SIMULATED_TARIFFS["business"]))
        .when(pl.int_range(pl.len()) % 2 == 0)
        .then(pl.lit(SIMULATED_TARIFFS["household"]))
        .otherwise(pl.lit(SIMULATED_TARIFFS["household_tou"]))
        .alias("tariff_id"),
        pl.lit(1, dtype=pl.Int8).alias("billing_day"),
        pl.lit(updated_at).dt.convert_time_zone("UTC").alias("updated_at"),
    )
    if spec.anomaly_share == 0.0:
        return records
    vacant = np.zeros(spec.meters, dtype=np.bool_)
    anomalies = _anomaly_plan(spec)[2]
    vacant[anomalies.vacant] = True
    vacant[anomalies.of(AnomalyKind.VACANT_USE)[0]] = True
    return records.with_columns(pl.when(pl.lit(pl.Series(vacant))).then(True).alias("vacant"))


def simulate_readings(spec: FleetSpec) -> pl.DataFrame:
    """Every reading of the period in the ``readings`` contract, sorted by ``ts``, ``meter_id``
    and ``quantity`` (a duplicate right after its original).

    >>> spec = FleetSpec(meters=2, start=dt.datetime(2026, 1, 5, tzinfo=dt.UTC), days=1)
    >>> readings = simulate_readings(spec)
    >>> readings.height, readings["quantity"].unique().sort().to_list()
    (576, ['energy_import_kwh', 'power_w', 'voltage_v'])
    """
    return _readings_frame(spec, _simulate(spec))


def simulate_batches(spec: FleetSpec, batch_hours: int = 1) -> Iterator[pl.DataFrame]:
    """The rows of :func:`simulate_readings` in time order, one frame per ``batch_hours`` of
    ``ts`` from ``spec.start`` on, as a gateway would deliver them.

    Every window of the period gives one frame (empty if no meter reported in it), so a caller
    can write each as its own file; concatenated, they equal :func:`simulate_readings`.
    """
    if batch_hours < 1:
        raise ConfigError(f"batch_hours={batch_hours!r}: use at least 1")
    frame = simulate_readings(spec)
    ts = frame["ts"].to_physical().to_numpy()
    window_us = batch_hours * 60 * _US_PER_MINUTE
    windows = -(-spec.days * 24 // batch_hours)
    bounds = _start_us(spec) + window_us * np.arange(windows + 1, dtype=np.int64)
    cuts = np.searchsorted(ts, bounds, side="left")
    cuts[-1] = frame.height
    for lo, hi in itertools.pairwise(cuts):
        yield frame.slice(int(lo), int(hi - lo))


def simulate_faults(spec: FleetSpec) -> pl.DataFrame:
    """Every injected fault: ``meter_id``, ``kind`` (a :class:`FaultKind`), ``quantity`` (null:
    all of the meter's quantities), ``start`` and ``end`` (first and last ``ts`` affected).

    Empty when ``spec.faults`` is false.
    """
    sim = _simulate(spec)
    plan = sim.plan
    ts_us = _start_us(spec) + plan.first * spec.interval_minutes * _US_PER_MINUTE
    end_us = _start_us(spec) + plan.last * spec.interval_minutes * _US_PER_MINUTE
    frame = pl.DataFrame(
        {
            "meter_id": pl.Series(sim.fleet.ids).gather(plan.meter),
            "kind": plan.kind,
            "quantity": plan.quantity,
            "start": pl.Series(ts_us, dtype=pl.Int64).cast(UTC_TS),
            "end": pl.Series(end_us, dtype=pl.Int64).cast(UTC_TS),
        },
        schema=FAULTS_SCHEMA,
    )
    return frame.sort("start", "meter_id")


def simulate_anomalies(spec: FleetSpec) -> pl.DataFrame:
    """Every injected anomaly (the ground truth): ``meter_id``, ``kind`` (an
    :class:`AnomalyKind`), ``first_day`` and ``last_day`` (the local days it covers, inclusive),
    ``start`` and ``end`` (first and last ``ts`` affected: the intervals that end at them lie in
    those days) and ``factor`` (the load multiplier of ``surge`` and ``sustained_drop``, else
    null).

    Empty when ``spec.anomaly_share`` is 0. The low-load vacant meters are not anomalies and not
    listed.

    >>> spec = FleetSpec(
    ...     meters=40, start=dt.datetime(2026, 1, 5, tzinfo=dt.UTC), days=30, anomaly_share=0.15
    ... )
    >>> truth = simulate_anomalies(spec)
    >>> truth.height, truth["kind"].n_unique(), truth["meter_id"].n_unique()
    (6, 6, 6)
    """
    fleet, cal, anomalies = _anomaly_plan(spec)
    step_us = spec.interval_minutes * _US_PER_MINUTE
    epoch_day = (cal.first_date - dt.date(1970, 1, 1)).days
    frame = pl.DataFrame(
        {
            "meter_id": pl.Series(fleet.ids, dtype=pl.String).gather(anomalies.meter),
            "kind": pl.Series(anomalies.kind, dtype=pl.String),
            "first_day": pl.Series(epoch_day + anomalies.first_day, dtype=pl.Int32).cast(pl.Date),
            "last_day": pl.Series(epoch_day + anomalies.last_day, dtype=pl.Int32).cast(pl.Date),
            "start": pl.Series(_start_us(spec) + anomalies.first * step_us).cast(UTC_TS),
            "end": pl.Series(_start_us(spec) + anomalies.last * step_us).cast(UTC_TS),
            "factor": pl.Series(anomalies.factor, dtype=pl.Float64).fill_nan(None),
        },
        schema=ANOMALIES_SCHEMA,
    )
    return frame.sort("start", "meter_id")


# --- the fleet -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Fleet:
    ids: list[str]
    business: Bools
    has_pv: Bools
    pv_kw: Floats
    gateway: Ints
    mean_w: Floats
    phase_h: Floats
    cooling: Floats
    heating: Floats
    import_start_kwh: Floats
    export_start_kwh: Floats
    voltage_offset_v: Floats
    shading: Floats


def _draw_fleet(spec: FleetSpec) -> _Fleet:
    rng = np.random.default_rng(_streams(spec)[0])
    m = spec.meters
    width = max(5, len(str(m)))
    business = rng.random(m) < _BUSINESS_SHARE
    has_pv = np.zeros(m, dtype=np.bool_)
    has_pv[rng.choice(m, size=round(spec.pv_share * m), replace=False)] = True
    # Median daily use: 7 kWh for a household, 45 kWh for a small business.
    daily_kwh = np.where(business, 45.0, 7.0) * rng.lognormal(0.0, 0.45, m)
    pv_kw = np.where(has_pv, np.where(business, 20.0, 4.0) * rng.lognormal(0.0, 0.3, m), 0.0)
    return _Fleet(
        ids=[f"m-{i:0{width}d}" for i in range(1, m + 1)],
        business=business,
        has_pv=has_pv,
        pv_kw=np.round(pv_kw, 2).astype(np.float64),
        gateway=np.arange(m, dtype=np.int64) // METERS_PER_GATEWAY,
        mean_w=daily_kwh * 1000.0 / 24.0,
        phase_h=np.clip(rng.normal(0.0, 0.5, m), -1.5, 1.5),
        cooling=rng.uniform(0.1, 0.8, m),
        heating=rng.uniform(0.0, 0.3, m),
        import_start_kwh=rng.uniform(200.0, 40_000.0, m),
        export_start_kwh=np.where(has_pv, rng.uniform(0.0, 5_000.0, m), 0.0),
        voltage_offset_v=rng.normal(0.0, 3.0, m),
        shading=rng.uniform(0.85, 1.0, m),
    )


def _streams(spec: FleetSpec) -> list[np.random.SeedSequence]:
    """Independent random streams: fleet, weather, load noise, delivery, faults, anomalies
    (the first five are the same however many are spawned)."""
    return np.random.SeedSequence(spec.seed).spawn(6)


# --- local time and weather ----------------------------------------------------------------------


@dataclass(frozen=True)
class _Calendar:
    """Per interval (the interval that ends at ``ts``), in local time at its midpoint."""

    hour: Floats
    weekday: Ints  # ISO: Monday 1 ... Sunday 7
    day_of_year: Floats
    day: Ints  # 0 for the first local day of the period
    dst_h: Floats
    first_date: dt.date  # the first local day of the period


def _calendar(spec: FleetSpec) -> _Calendar:
    step_us = spec.interval_minutes * _US_PER_MINUTE
    mid_us = _start_us(spec) + step_us * np.arange(spec.intervals, dtype=np.int64) - step_us // 2
    mid = pl.Series(mid_us, dtype=pl.Int64).cast(UTC_TS).dt.convert_time_zone(spec.timezone)
    local = pl.DataFrame({"t": mid}).select(
        hour=pl.col("t").dt.hour() + pl.col("t").dt.minute() / 60 + pl.col("t").dt.second() / 3600,
        weekday=pl.col("t").dt.weekday().cast(pl.Int64),
        day_of_year=pl.col("t").dt.ordinal_day().cast(pl.Float64),
        day=(pl.col("t").dt.date() - pl.col("t").dt.date().min()).dt.total_days(),
        dst_h=pl.col("t").dt.dst_offset().dt.total_seconds() / 3600,
    )
    return _Calendar(
        hour=local["hour"].to_numpy().astype(np.float64),
        weekday=local["weekday"].to_numpy().astype(np.int64),
        day_of_year=local["day_of_year"].to_numpy().astype(np.float64),
        day=local["day"].to_numpy().astype(np.int64),
        dst_h=local["dst_h"].to_numpy().astype(np.float64),
        first_date=mid.dt.date()[0],
    )


def _temperature_c(spec: FleetSpec, cal: _Calendar) -> Floats:
    """Outdoor temperature [°C] per interval: season, a smooth day-to-day anomaly, the daily
    cycle (a subtropical climate: about 5 °C in January, 29 °C in July)."""
    rng = np.random.default_rng(_streams(spec)[1])
    days = int(cal.day.max()) + 1
    white = rng.normal(0.0, 3.0, days + 4)
    anomaly = np.convolve(white, np.full(5, 1 / math.sqrt(5)) * 0.8, mode="valid")[:days]
    season = 17.0 - 12.0 * np.cos(2 * np.pi * (cal.day_of_year - 20.0) / 365.25)
    daily = 4.0 * np.cos(2 * np.pi * (cal.hour - 15.0) / 24.0)
    return np.asarray(season + anomaly[cal.day] + daily, dtype=np.float64)


def _cloudiness(spec: FleetSpec, cal: _Calendar) -> Floats:
    """Share of clear-sky PV output per interval (0..1), the same over the fleet."""
    rng = np.random.default_rng(_streams(spec)[1].spawn(1)[0])
    days = int(cal.day.max()) + 1
    per_day = rng.beta(4.0, 1.5, days)
    return np.clip(per_day[cal.day] + rng.normal(0.0, 0.08, cal.hour.size), 0.05, 1.0)


# --- load and generation -------------------------------------------------------------------------


def _bump(hour: Floats, at: float, width: float) -> Floats:
    """A Gaussian bump at hour ``at`` [h], wrapping around midnight."""
    distance = (hour - at + 12.0) % 24.0 - 12.0
    return np.exp(-0.5 * (distance / width) ** 2)


def household_shape(hour: Floats, weekend: Bools) -> Floats:
    """Relative household load at local ``hour`` [h]: night base, morning and evening peaks;
    weekends sleep in and stay home. Unitless, mean about 1 (see :func:`shape_means`)."""
    weekday = (
        0.45
        + 0.9 * _bump(hour, 7.25, 0.9)
        + 0.35 * _bump(hour, 12.5, 1.5)
        + 1.9 * _bump(hour, 20.0, 1.6)
    )
    rest = (
        0.45
        + 0.8 * _bump(hour, 9.25, 1.4)
        + 0.7 * _bump(hour, 13.0, 2.0)
        + 1.8 * _bump(hour, 19.75, 1.8)
    )
    return np.where(weekend, rest, weekday)


def business_shape(hour: Floats, weekday: Ints) -> Floats:
    """Relative small-business load at local ``hour`` [h] on ISO ``weekday`` (1 = Monday):
    open 08:30-18:30 with a lunch dip, less on Saturday, little on Sunday. Unitless."""
    opening = 1.0 / (1.0 + np.exp(-(hour - 8.5) / 0.4))
    closing = 1.0 / (1.0 + np.exp(-(18.5 - hour) / 0.4))
    day = opening * closing * (1.0 - 0.2 * _bump(hour, 12.5, 0.6))
    scale = np.where(weekday == 6, 0.6, np.where(weekday == 7, 0.2, 1.0))
    return 0.3 + 1.6 * day * scale


def shape_means() -> tuple[float, float]:
    """The mean of each weekday shape, so that ``mean_w`` is the weekday mean power."""
    hours = np.linspace(0.0, 24.0, 288, endpoint=False)
    monday = np.ones(hours.size, dtype=np.int64)
    return (
        float(household_shape(hours, monday > 5).mean()),
        float(business_shape(hours, monday).mean()),
    )


def _load_w(spec: FleetSpec, fleet: _Fleet, cal: _Calendar) -> Floats:
    """Mean load [W] per meter and interval, before PV."""
    rng = np.random.default_rng(_streams(spec)[2])
    shape_m, shape_n = fleet.mean_w.size, cal.hour.size
    hour = (cal.hour[None, :] + fleet.phase_h[:, None]) % 24.0
    household_mean, business_mean = shape_means()
    shape = np.where(
        fleet.business[:, None],
        business_shape(hour, cal.weekday[None, :]) / business_mean,
        household_shape(hour, (cal.weekday >= 6)[None, :]) / household_mean,
    )
    temp = _temperature_c(spec, cal)[None, :]
    weather = (
        1.0
        + fleet.cooling[:, None] * np.maximum(temp - 24.0, 0.0) / 8.0
        + fleet.heating[:, None] * np.maximum(12.0 - temp, 0.0) / 10.0
    )
    sigma = np.where(fleet.business, 0.15, 0.3)[:, None]
    noise = np.exp(sigma * rng.standard_normal((shape_m, shape_n)) - sigma**2 / 2)
    spikes = (rng.random((shape_m, shape_n)) < 0.03) * rng.exponential(800.0, (shape_m, shape_n))
    return np.asarray(fleet.mean_w[:, None] * shape * weather * noise + spikes, dtype=np.float64)


def _pv_w(spec: FleetSpec, fleet: _Fleet, cal: _Calendar) -> Floats:
    """PV generation [W] per meter and interval (0 for meters without PV)."""
    season = np.sin(2 * np.pi * (cal.day_of_year - 80.0) / 365.25)
    day_length = 12.0 + 2.2 * season
    from_noon = cal.hour - (12.0 + cal.dst_h)
    sun = np.clip(np.cos(np.pi * from_noon / day_length), 0.0, None) ** 1.3
    sun = np.where(np.abs(from_noon) < day_length / 2, sun, 0.0) * (0.75 + 0.25 * season)
    clear = sun * _cloudiness(spec, cal)
    kw = fleet.pv_kw * fleet.shading * 0.8
    return np.asarray(kw[:, None] * 1000.0 * clear[None, :], dtype=np.float64)


# --- faults --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    """The faults: one row each (kind, meter index, first and last interval index, quantity)."""

    kind: list[str]
    meter: Ints
    first: Ints
    last: Ints
    quantity: list[str | None]

    def of(self, kind: FaultKind) -> tuple[Ints, Ints, Ints]:
        rows = np.array([k == kind.value for k in self.kind], dtype=np.bool_)
        return self.meter[rows], self.first[rows], self.last[rows]


def _plan_faults(spec: FleetSpec, fleet: _Fleet) -> _Plan:
    """Where the faults go (rollover and replacement positions are refined by the registers)."""
    if not spec.faults:
        empty = np.zeros(0, dtype=np.int64)
        return _Plan([], empty, empty, empty, [])
    rng = np.random.default_rng(_streams(spec)[4])
    n = spec.intervals
    per_hour = 60 // spec.interval_minutes
    per_kind = max(1, spec.meters // _METERS_PER_FAULT)
    # Register faults go to meters without PV first: their import register always advances.
    order = rng.permutation(spec.meters)
    order = order[np.argsort(fleet.has_pv[order], kind="stable")]
    kinds = [k for k in FaultKind for _ in range(per_kind)][: spec.meters]
    meter = order[: len(kinds)].astype(np.int64)
    count = len(kinds)
    # Point faults: somewhere in the middle half (glitch, conflict, nan: not first or last).
    first = rng.integers(max(n // 4, 1), max(3 * n // 4, 2), count)
    last = first.copy()
    gap_len = np.minimum(rng.integers(2, 7, count) * per_hour, max(n // 2, 1))
    dup_len = np.full(count, per_hour)
    is_kind = {k: np.array([x == k for x in kinds], dtype=np.bool_) for k in FaultKind}
    spans = is_kind[FaultKind.GAP] | is_kind[FaultKind.DUPLICATE]
    length = np.where(is_kind[FaultKind.GAP], gap_len, dup_len)
    first = np.where(spans, rng.integers(0, np.maximum(n - length, 0) + 1), first)
    last = np.where(spans, first + length - 1, last)
    first = np.where(is_kind[FaultKind.DEAD], rng.integers(n // 2, n, count), first)
    last = np.where(is_kind[FaultKind.DEAD], n - 1, last)
    instantaneous = np.array(["power_w", "voltage_v"])[rng.integers(0, 2, count)]
    quantity: list[str | None] = [
        "energy_import_kwh"
        if k in (FaultKind.ROLLOVER, FaultKind.GLITCH)
        else "power_w"
        if k == FaultKind.CONFLICT
        else str(q)
        if k == FaultKind.NAN
        else None
        for k, q in zip(kinds, instantaneous, strict=True)
    ]
    return _Plan([k.value for k in kinds], meter, first.astype(np.int64), last, quantity)


# --- anomalies -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Anomalies:
    """The anomalies: one row each (kind, meter index, first and last local day, first and last
    interval index, load factor or NaN), and the low-load vacant meters (no anomaly)."""

    kind: list[str]
    meter: Ints
    first_day: Ints
    last_day: Ints
    first: Ints
    last: Ints
    factor: Floats
    vacant: Ints

    def of(self, kind: AnomalyKind) -> tuple[Ints, Ints, Ints, Floats]:
        rows = np.array([k == kind.value for k in self.kind], dtype=np.bool_)
        return self.meter[rows], self.first[rows], self.last[rows], self.factor[rows]

    def window(self, kind: AnomalyKind, intervals: int) -> tuple[Ints, Bools, Floats]:
        """The meters of ``kind``, which of their intervals it affects, and their factors."""
        meters, first, last, factor = self.of(kind)
        cols = np.arange(intervals)[None, :]
        return meters, (cols >= first[:, None]) & (cols <= last[:, None]), factor


def _anomaly_plan(spec: FleetSpec) -> tuple[_Fleet, _Calendar, _Anomalies]:
    """The anomalies without the readings (cheap: no load is simulated)."""
    fleet = _draw_fleet(spec)
    cal = _calendar(spec)
    return fleet, cal, _plan_anomalies(spec, fleet, cal, _plan_faults(spec, fleet))


def _plan_anomalies(spec: FleetSpec, fleet: _Fleet, cal: _Calendar, faults: _Plan) -> _Anomalies:
    """Which meters get which anomaly on which local days, and which meters stand vacant."""
    none = np.zeros(0, dtype=np.int64)
    if spec.anomaly_share == 0.0:
        return _Anomalies([], none, none, none, none, none, np.zeros(0), none)
    rng = np.random.default_rng(_streams(spec)[5])
    faulted = np.zeros(spec.meters, dtype=np.bool_)
    faulted[faults.meter] = True
    kinds, meter, vacant = _pick_anomaly_meters(spec, fleet, faulted, rng)
    count = meter.size
    days = int(cal.day[-1]) + 1
    # At least ten normal days before, in the second half, at least three anomalous days.
    lo = max(days // 2, min(_BASELINE_DAYS, days - 3))
    d0 = rng.integers(lo, max(lo, days - 3) + 1, count)
    surge_days = rng.integers(1, 4, count)
    surge_factor = rng.uniform(2.5, 4.0, count)
    drop_factor = rng.uniform(0.15, 0.4, count)
    is_kind = {k: np.array([x == k for x in kinds], dtype=np.bool_) for k in AnomalyKind}
    surge, drop = is_kind[AnomalyKind.SURGE], is_kind[AnomalyKind.SUSTAINED_DROP]
    first_day = np.where(is_kind[AnomalyKind.VACANT_USE], 0, d0)
    last_day = np.where(surge, np.minimum(d0 + surge_days - 1, days - 1), days - 1)
    return _Anomalies(
        kind=[k.value for k in kinds],
        meter=meter,
        first_day=first_day.astype(np.int64),
        last_day=last_day.astype(np.int64),
        first=np.searchsorted(cal.day, first_day, side="left").astype(np.int64),
        last=(np.searchsorted(cal.day, last_day, side="right") - 1).astype(np.int64),
        factor=np.where(surge, surge_factor, np.where(drop, drop_factor, np.nan)),
        vacant=vacant,
    )


def _pick_anomaly_meters(
    spec: FleetSpec, fleet: _Fleet, faulted: Bools, rng: np.random.Generator
) -> tuple[list[AnomalyKind], Ints, Ints]:
    """The kind and meter of each anomaly, and the low-load vacant meters.

    Meters without fault, then without PV, are taken first (their patterns show plainly); a
    reversed meter must be import-only; ``vacant_use`` prefers households. The constrained kinds
    choose first; the loop runs over the kinds, not the meters.
    """
    m = spec.meters
    every = list(AnomalyKind)
    count = min(max(round(spec.anomaly_share * m), len(every)), m)
    quota = {k: count // len(every) + (i < count % len(every)) for i, k in enumerate(every)}
    rank = rng.permutation(m)
    preference = 4 * faulted.astype(np.int64) + 2 * fleet.has_pv.astype(np.int64)
    taken = np.zeros(m, dtype=np.bool_)

    def take(eligible: Bools, key: Ints, wanted: int) -> Ints:
        order = np.lexsort((rank, key))
        chosen = order[eligible[order] & ~taken[order]][:wanted].astype(np.int64)
        taken[chosen] = True
        return chosen

    first_choosers = (AnomalyKind.REVERSE_ENERGY, AnomalyKind.VACANT_USE)
    kinds: list[AnomalyKind] = []
    meters: list[Ints] = []
    for kind in (*first_choosers, *(k for k in every if k not in first_choosers)):
        eligible = ~fleet.has_pv if kind == AnomalyKind.REVERSE_ENERGY else np.ones(m, np.bool_)
        key = preference + (kind == AnomalyKind.VACANT_USE) * fleet.business.astype(np.int64)
        chosen = take(eligible, key, quota[kind])
        kinds += [kind] * chosen.size
        meters.append(chosen)
    households = ~fleet.business
    wanted = max(1, round(_VACANT_SHARE * int(households.sum())))
    vacant = take(households, preference, wanted)
    return kinds, np.concatenate(meters), np.sort(vacant)


def _apply_load_anomalies(anomalies: _Anomalies, load_w: Floats) -> None:
    """The real load [W] of the surging and the vacant meters, in place."""
    meters, inside, factor = anomalies.window(AnomalyKind.SURGE, load_w.shape[1])
    load_w[meters] *= np.where(inside, factor[:, None], 1.0)
    load_w[anomalies.vacant] *= _VACANT_LOAD


def _record_anomalies(anomalies: _Anomalies, import_kwh: Floats, export_kwh: Floats) -> None:
    """The energy [kWh] per interval that the tampered meters' registers count, in place."""
    n = import_kwh.shape[1]
    meters, inside, factor = anomalies.window(AnomalyKind.SUSTAINED_DROP, n)
    import_kwh[meters] *= np.where(inside, factor[:, None], 1.0)
    meters, inside, _ = anomalies.window(AnomalyKind.ZERO_WITH_VOLTAGE, n)
    import_kwh[meters] = np.where(inside, 0.0, import_kwh[meters])
    meters, inside, _ = anomalies.window(AnomalyKind.REVERSE_ENERGY, n)
    export_kwh[meters] += np.where(inside, import_kwh[meters], 0.0)
    import_kwh[meters] = np.where(inside, 0.0, import_kwh[meters])
    meters, inside, _ = anomalies.window(AnomalyKind.FLAT_LINE, n)
    # Whole hundredths, so that the 0.01 kWh register moves by the same step every interval.
    step = np.maximum(np.round(import_kwh[meters].mean(axis=1) * 100.0), 1.0) / 100.0
    import_kwh[meters] = np.where(inside, step[:, None], import_kwh[meters])
    export_kwh[meters] = np.where(inside, 0.0, export_kwh[meters])


def _flat_registers(
    anomalies: _Anomalies, imports: Floats, import_kwh: Floats, start_kwh: Floats
) -> None:
    """The flat-line meters' import registers [kWh] in exact hundredths, in place (a float sum
    of 0.07 kWh steps could, rarely, floor to a 0.06 or 0.08 step)."""
    meters, first, _, _ = anomalies.of(AnomalyKind.FLAT_LINE)
    _, inside, _ = anomalies.window(AnomalyKind.FLAT_LINE, imports.shape[1])
    step = np.round(import_kwh[meters, first] * 100.0)
    opening = np.floor(start_kwh[meters] * 100.0) / 100.0
    before = np.where(first > 0, imports[meters, first - 1], opening)
    count = np.arange(imports.shape[1])[None, :] - first[:, None] + 1
    flat = (np.round(before * 100.0)[:, None] + count * step[:, None]) / 100.0
    imports[meters] = np.where(inside, flat, imports[meters])


def _record_power(
    anomalies: _Anomalies, power_w: Floats, import_kwh: Floats, export_kwh: Floats, hours: float
) -> None:
    """``power_w`` [W] (a (meters, intervals) view of the values) of the meters whose records
    lie about the load, in place: a bypass and a flat line show the mean power of the energy
    their registers count (``import_kwh`` and ``export_kwh`` [kWh] per interval of ``hours``
    [h]), reversed wiring shows the real power with its sign turned."""
    for kind in (AnomalyKind.SUSTAINED_DROP, AnomalyKind.FLAT_LINE, AnomalyKind.REVERSE_ENERGY):
        meters, inside, _ = anomalies.window(kind, power_w.shape[1])
        if kind == AnomalyKind.REVERSE_ENERGY:
            recorded = -power_w[meters]
        else:
            recorded = np.round((import_kwh[meters] - export_kwh[meters]) * 1000.0 / hours, 1)
        power_w[meters] = np.where(inside, recorded, power_w[meters])


# --- registers -----------------------------------------------------------------------------------


def _register(start_kwh: Floats, energy_kwh: Floats) -> Floats:
    """A cumulative register reading at 0.01 kWh resolution (a meter shows whole hundredths)."""
    return np.floor((start_kwh[:, None] + np.cumsum(energy_kwh, axis=1)) * 100.0) / 100.0


def _apply_register_faults(
    plan: _Plan, import_kwh: Floats, export_kwh: Floats, fleet: _Fleet, rng: np.random.Generator
) -> tuple[Floats, Floats, Ints]:
    """Both registers with rollover, replacement and glitch applied; also where each rollover
    meter's register actually wrapped (-1: it did not)."""
    start = fleet.import_start_kwh.copy()
    cum = np.cumsum(import_kwh, axis=1)
    meters, wrap_at, _ = plan.of(FaultKind.ROLLOVER)
    # The reading before interval `wrap_at` shows 99999.99: the register passes its top during
    # that interval, or at the next one with at least 0.005 kWh of import.
    start[meters] = REGISTER_WRAP_KWH - 0.005 - cum[meters, wrap_at - 1]
    imports = _register(start, import_kwh)
    exports = _register(fleet.export_start_kwh, export_kwh)
    wrapped = imports[meters] >= REGISTER_WRAP_KWH
    imports[meters] = np.where(wrapped, imports[meters] - REGISTER_WRAP_KWH, imports[meters])
    # -1: never wrapped (a PV meter that imported nothing for the rest of the period).
    actual_wrap = np.where(wrapped.any(axis=1), np.argmax(wrapped, axis=1), -1).astype(np.int64)

    # A new meter: both registers restart at a small reading and count from there.
    meters, at, _ = plan.of(FaultKind.REPLACEMENT)
    after = np.arange(imports.shape[1])[None, :] >= at[:, None]
    for registers, energy in ((imports, import_kwh), (exports, export_kwh)):
        cum = np.cumsum(energy[meters], axis=1)
        since = cum - np.take_along_axis(cum, at[:, None], axis=1)
        fresh = rng.uniform(0.0, 0.5, meters.size)[:, None] + since
        registers[meters] = np.where(after, np.floor(fresh * 100.0) / 100.0, registers[meters])

    meters, at, _ = plan.of(FaultKind.GLITCH)
    low = rng.uniform(0.0, 0.5, meters.size)
    imports[meters, at] = np.floor(imports[meters, at] * low * 100.0) / 100.0
    return imports, exports, actual_wrap


# --- the simulation ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Simulation:
    fleet: _Fleet
    plan: _Plan
    values: Floats  # (meters, intervals, quantities)
    reporting: Bools  # (meters, intervals)
    delay_us: Ints  # (meters, intervals)
    anomalies: _Anomalies


def _simulate(spec: FleetSpec) -> _Simulation:
    fleet = _draw_fleet(spec)
    cal = _calendar(spec)
    plan = _plan_faults(spec, fleet)
    anomalies = _plan_anomalies(spec, fleet, cal, plan)
    load = _load_w(spec, fleet, cal)
    _apply_load_anomalies(anomalies, load)
    net_w = load - _pv_w(spec, fleet, cal)
    hours = spec.interval_minutes / 60.0
    import_kwh = np.maximum(net_w, 0.0) * hours / 1000.0
    export_kwh = np.maximum(-net_w, 0.0) * hours / 1000.0
    _record_anomalies(anomalies, import_kwh, export_kwh)
    rng = np.random.default_rng(_streams(spec)[4].spawn(1)[0])
    imports, exports, wrap_at = _apply_register_faults(plan, import_kwh, export_kwh, fleet, rng)
    _flat_registers(anomalies, imports, import_kwh, fleet.import_start_kwh)
    rollover = np.array([k == FaultKind.ROLLOVER for k in plan.kind], dtype=np.bool_)
    first, last = plan.first.copy(), plan.last.copy()
    first[rollover] = last[rollover] = wrap_at
    keep = first >= 0
    plan = _Plan(
        [k for k, ok in zip(plan.kind, keep, strict=True) if ok],
        plan.meter[keep],
        first[keep],
        last[keep],
        [q for q, ok in zip(plan.quantity, keep, strict=True) if ok],
    )

    noise = np.random.default_rng(_streams(spec)[2].spawn(1)[0])
    voltage = (
        NOMINAL_VOLTAGE_V
        + fleet.voltage_offset_v[:, None]
        - 3.5 * _bump(cal.hour, 20.0, 2.0)[None, :]
        + 1.5 * _bump(cal.hour, 3.5, 2.0)[None, :]
        - 6.0 * np.tanh(net_w / 5000.0)
        + noise.normal(0.0, 0.6, net_w.shape)
    )
    values = np.stack(
        [exports, imports, np.round(net_w, 1), np.round(voltage, 1)], axis=-1, dtype=np.float64
    )
    _record_power(anomalies, values[:, :, _POWER], import_kwh, export_kwh, hours)
    meters, at, _ = plan.of(FaultKind.NAN)
    nan_q = [
        QUANTITY_ORDER.index(str(q))
        for k, q in zip(plan.kind, plan.quantity, strict=True)
        if k == FaultKind.NAN
    ]
    values[meters, at, np.array(nan_q, dtype=np.int64)] = np.nan

    reporting = np.ones(net_w.shape, dtype=np.bool_)
    cols = np.arange(spec.intervals)[None, :]
    for kind in (FaultKind.GAP, FaultKind.DEAD):
        meters, lo, hi = plan.of(kind)
        reporting[meters] &= ~((cols >= lo[:, None]) & (cols <= hi[:, None]))

    delivery = np.random.default_rng(_streams(spec)[3])
    delay_s = 1.0 + delivery.exponential(15.0, net_w.shape)
    delay_us = np.round(delay_s * 1e6).astype(np.int64)
    return _Simulation(fleet, plan, values, reporting, delay_us, anomalies)


def _readings_frame(spec: FleetSpec, sim: _Simulation) -> pl.DataFrame:
    """The long form: one row per reported (ts, meter, quantity), plus the duplicate rows."""
    fleet, plan = sim.fleet, sim.plan
    m, n = sim.reporting.shape
    q = len(QUANTITY_ORDER)
    # Arrays ordered (interval, meter, quantity), so that the flat position is the sort key.
    values = sim.values.transpose(1, 0, 2).ravel()
    has_quantity = np.ones((m, q), dtype=np.bool_)
    has_quantity[:, _EXPORT] = fleet.has_pv
    present = sim.reporting.T[:, :, None] & has_quantity[None, :, :]
    # A reversed meter reports its export register from the first reversed interval on.
    meters, inside, _ = sim.anomalies.window(AnomalyKind.REVERSE_ENERGY, n)
    present[:, meters, _EXPORT] = (inside & sim.reporting[meters]).T
    key = np.flatnonzero(present).astype(np.int64)
    delay = sim.delay_us.T.ravel()[key // q]
    value = values[key]

    # Duplicate delivery: the same rows again. Conflict: another power_w value, received later.
    cols = np.arange(n)[None, :]
    meters, lo, hi = plan.of(FaultKind.DUPLICATE)
    again = np.zeros((n, m), dtype=np.bool_)
    again[:, meters] = ((cols >= lo[:, None]) & (cols <= hi[:, None])).T
    dup_key = np.flatnonzero(again[:, :, None] & present).astype(np.int64)
    meters, at, _ = plan.of(FaultKind.CONFLICT)
    conflict_key = (at * m + meters) * q + _POWER
    rng = np.random.default_rng(_streams(spec)[3].spawn(1)[0])
    conflict_value = np.round(values[conflict_key] * rng.uniform(1.05, 1.3, meters.size), 1)
    conflict_delay = sim.delay_us[meters, at] + rng.integers(60, 900, meters.size) * 1_000_000
    extra_key = np.concatenate([dup_key, conflict_key])
    extra_value = np.concatenate([values[dup_key], conflict_value])
    extra_delay = np.concatenate([sim.delay_us.T.ravel()[dup_key // q], conflict_delay])
    order = np.argsort(extra_key, kind="stable")
    where = np.searchsorted(key, extra_key[order], side="right")
    key = np.insert(key, where, extra_key[order])
    value = np.insert(value, where, extra_value[order])
    delay = np.insert(delay, where, extra_delay[order])

    step_us = spec.interval_minutes * _US_PER_MINUTE
    ts_us = _start_us(spec) + (key // (m * q)) * step_us
    meter = (key // q) % m
    invalid_flag = pl.lit([Quality.INVALID_VALUE.value], dtype=READINGS.schema["quality"])
    no_flags = pl.lit([], dtype=READINGS.schema["quality"])
    frame = pl.DataFrame(
        {
            "meter_id": pl.Series(fleet.ids).gather(meter),
            "ts": pl.Series(ts_us, dtype=pl.Int64).cast(UTC_TS),
            "quantity": pl.Series(QUANTITY_ORDER).gather(key % q),
            "value": value,
            "source": _gateway_names(int(fleet.gateway.max()) + 1).gather(fleet.gateway[meter]),
            "received_at": pl.Series(ts_us + delay, dtype=pl.Int64).cast(UTC_TS),
        }
    )
    return frame.select(
        "meter_id",
        "ts",
        "quantity",
        "value",
        pl.when(pl.col("value").is_nan()).then(invalid_flag).otherwise(no_flags).alias("quality"),
        "source",
        "received_at",
    )


# --- helpers -------------------------------------------------------------------------------------


def _gateway_names(count: int) -> pl.Series:
    return pl.Series([f"{SOURCE_PREFIX}{i:02d}" for i in range(1, count + 1)], dtype=pl.String)


def _start_us(spec: FleetSpec) -> int:
    epoch = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
    return (spec.start - epoch) // dt.timedelta(microseconds=1)
