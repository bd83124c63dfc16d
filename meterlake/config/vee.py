"""Settings of the VEE validation rules (``[vee]``), with per-meter-group overrides.

Every rule of :mod:`meterlake.analytics.validation` has a table here: whether it runs
(``enabled``), its thresholds and, for rules that judge a value, whether a failing ``actual``
interval becomes ``suspect``. The top-level tables are the defaults; ``[vee.groups.<name>]``
overrides any of them for the meters of group ``<name>`` (only the keys given change)::

    [vee.spike]
    ratio = 2.0
    min_peak_kwh = 0.5

    [vee.groups.commercial.spike]
    ratio = 3.0          # min_peak_kwh stays 0.5

Where the defaults come from (the public rule catalogues describe *what* each check compares; the
numbers are parameters each utility sets, so ours are conservative starting points):

- spike: Oracle Utilities MDM "Interval Spike Check" (highest against third-highest interval per
  24 hours, a configurable tolerance; its example moves the tolerance from 1.2 to 1.5) and the
  California interval-data VEE rules; 2.0 with a 0.5 kWh floor keeps a kettle or an EV start on a
  household meter from being a spike while a pulse-overflow or a rollover artefact is one.
- usage: Oracle "High/Low Check" (against historical average daily usage, ADU); 3x / 0.2x ADU
  and at least 14 days of history.
- zero runs: Oracle "Consecutive Interval Check" / "Zero Consumption Check"; 24 h.
- sum check: Oracle "Sum Check", Itron IEE "interval data against register data"; 2 % or
  0.1 kWh, whichever is larger.
- prolonged estimation: Oracle "Prolonged Estimation Check" ("days of estimation allowable");
  72 h.
"""

from __future__ import annotations

from typing import Annotated, Any, Final, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Rule(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    enabled: bool = True
    """Whether the rule runs for the meters these settings apply to."""


class IntervalCountRule(_Rule):
    """Flag ``interval_count`` on every interval of a local day whose interval count differs
    from what the day holds (DST-aware: 92/100 quarter-hours on change days)."""


class GapRule(_Rule):
    """Materialise absent grid intervals as ``missing`` rows with null energy, flag ``gap``."""


class DuplicateRule(_Rule):
    """Keep one row per (meter, interval), flag it ``duplicate``; ``suspect`` if the copies'
    energies disagree."""

    suspect_on_conflict: bool = True
    """A kept ``actual`` interval whose copies had different energies becomes ``suspect``."""


class SpikeRule(_Rule):
    """Flag ``spike`` on the highest interval of a local day when it exceeds ``ratio`` times the
    third-highest interval and is at least ``min_peak_kwh``."""

    ratio: Annotated[float, Field(gt=1, le=1000)] = 2.0
    """Highest / third-highest interval energy above which the highest is a spike [1]."""
    min_peak_kwh: Annotated[float, Field(ge=0, le=1e6)] = 0.5
    """The highest interval must hold at least this much energy to be judged at all [kWh]."""
    suspect: bool = True
    """A spike interval that was ``actual`` becomes ``suspect``."""


class UsageRule(_Rule):
    """Flag ``high_usage`` / ``low_usage`` on a local day's intervals when its import differs
    from the meter's historical average daily use (same day type if history allows)."""

    high_multiple: Annotated[float, Field(gt=1, le=1000)] = 3.0
    """A day above this multiple of the average daily use is ``high_usage`` [1]."""
    low_multiple: Annotated[float, Field(ge=0, lt=1)] = 0.2
    """A complete day below this multiple of the average daily use is ``low_usage`` [1]."""
    min_history_days: Annotated[int, Field(ge=1, le=3660)] = 14
    """Days of history needed before the rule judges a meter; the same-day-type average is
    used when that many days of the type exist, else the average over all days."""
    suspect: bool = False
    """Usage can change for real (holidays, a new heat pump): by default only a flag."""


class ZeroRunRule(_Rule):
    """Flag ``zero_run`` on runs of zero consumption longer than ``max_hours``."""

    max_hours: Annotated[float, Field(gt=0, le=24 * 366)] = 24.0
    """Runs of zero import (and zero or no export) longer than this are flagged [h]."""
    suspect: bool = False
    """A vacant home reads zero for real: by default only a flag."""


class NegativeRule(_Rule):
    """Flag ``negative`` on negative energy, and on any export of an import-only meter."""

    suspect: bool = True


class SumCheckRule(_Rule):
    """Flag ``sum_check`` on the intervals between two register reads whose sum differs from
    the register difference by more than the tolerance."""

    tolerance_pct: Annotated[float, Field(ge=0, le=100)] = 2.0
    """Allowed difference as a share of the register difference [%] ..."""
    tolerance_kwh: Annotated[float, Field(ge=0, le=1e6)] = 0.1
    """... or this absolute difference, whichever is larger [kWh]."""
    suspect: bool = True


class MaxPowerRule(_Rule):
    """Flag ``over_max_power`` where ``energy / interval length > max_power_kw * safety_factor``."""

    safety_factor: Annotated[float, Field(ge=1, le=100)] = 1.1
    """Headroom above the meter's rated maximum before a value is impossible [1]."""
    suspect: bool = True


class ProlongedEstimationRule(_Rule):
    """Flag ``prolonged_estimation`` on runs of ``estimated`` intervals longer than
    ``max_hours``."""

    max_hours: Annotated[float, Field(gt=0, le=24 * 366)] = 72.0
    """Consecutive estimated time above which the meter needs a visit or a read [h]."""


class VeeRules(BaseModel):
    """The validation rules of one meter group."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    interval_count: IntervalCountRule = IntervalCountRule()
    gap: GapRule = GapRule()
    duplicate: DuplicateRule = DuplicateRule()
    spike: SpikeRule = SpikeRule()
    usage: UsageRule = UsageRule()
    zero_run: ZeroRunRule = ZeroRunRule()
    negative: NegativeRule = NegativeRule()
    sum_check: SumCheckRule = SumCheckRule()
    max_power: MaxPowerRule = MaxPowerRule()
    prolonged_estimation: ProlongedEstimationRule = ProlongedEstimationRule()


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        old = merged.get(key)
        if isinstance(old, dict) and isinstance(value, dict):
            merged[key] = _merge(old, value)
        else:
            merged[key] = value
    return merged


_RUN_KEYS: Final = frozenset({"groups", "interval_minutes", "shard_meters", "history_days"})
"""Keys of ``[vee]`` that set up a run rather than a rule (not inherited by groups)."""


class VeeSettings(VeeRules):
    """``[vee]``: how a run is cut up, the default rules, and partial overrides per meter group
    (``[vee.groups.<name>]``).

    >>> vee = VeeSettings.model_validate(
    ...     {"spike": {"ratio": 2.5}, "groups": {"shop": {"spike": {"min_peak_kwh": 2.0}}}})
    >>> vee.rules_for("shop").spike.ratio, vee.rules_for("shop").spike.min_peak_kwh
    (2.5, 2.0)
    >>> vee.rules_for("unknown-group").spike.min_peak_kwh
    0.5
    """

    groups: dict[Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")], VeeRules] = {}
    """Per meter group: the defaults above with this group's keys replaced."""
    interval_minutes: Literal[5, 15, 30, 60] = 15
    """Length of the interval grid [min]."""
    shard_meters: Annotated[int, Field(ge=1, le=1_000_000)] = 2000
    """Meters computed together: peak memory grows with it (about 3 GiB per 1,000 meters and 30
    days of 15-minute reads; 2,000 peaked at 6 GiB), speed hardly does beyond a few hundred."""
    history_days: Annotated[int, Field(ge=1, le=3660)] = 91
    """The high/low usage rule judges a day against the meter's average daily use over this
    many days before it (stored intervals before a run's range and the range's own days) [d]."""

    @model_validator(mode="before")
    @classmethod
    def _groups_inherit_defaults(cls, data: Any) -> Any:
        """Each group starts from the top-level tables; its own keys win."""
        if not isinstance(data, dict) or not isinstance(data.get("groups"), dict):
            return data
        base = {k: v for k, v in data.items() if k not in _RUN_KEYS}
        groups = {
            name: _merge(base, group) if isinstance(group, dict) else group
            for name, group in data["groups"].items()
        }
        return {**data, "groups": groups}

    def rules_for(self, group: str | None) -> VeeRules:
        """The rules of meter group ``group`` (the defaults if it has no overrides)."""
        if group is not None and group in self.groups:
            return self.groups[group]
        return VeeRules.model_validate(self.model_dump(exclude=set(_RUN_KEYS)))
