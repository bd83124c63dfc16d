"""Anomaly and theft scores per meter and local day, each with reasons a person can read.

Three sources, combined into one ``score`` between 0 and 1 (higher: more suspicious):

baseline
    The meter's own like days (weekdays against weekdays, weekends against weekends): the
    median and MAD of its previous ``like_days`` like days. ``robust_z`` = (energy - median) /
    (1.4826 MAD), the scale floored at ``scale_floor`` of the median and ``min_scale_kwh``, so a
    very regular meter is not flagged for a small wobble. ``surge``: z >= ``surge_z`` and at
    least ``surge_ratio`` x the median; ``drop``: z <= -``drop_z`` and at most ``drop_ratio`` x.
    Days with more than a tenth of their intervals missing (the first and last of the data, a
    dead meter) take no part in baselines and have no ``robust_z``: never a surge or a drop.
tamper rules
    ``sustained_drop``: the median of the last ``recent_days`` days is below ``sustained_ratio``
    of the median of the ``reference_days`` before them, and so is the day (a bypass keeps the
    meter reporting, but less). ``zero_with_voltage``: no import on a day the supply voltage is
    present and the meter's power reading shows load (a stuck or tampered register).
    ``reverse_energy``: export on a meter registered import-only (reversed wiring).
    ``flat_line``: every interval of a measured day the same non-zero value. ``vacant_use``:
    more than ``vacant_kwh`` on a meter registered vacant.
isolation
    An IsolationForest (scikit-learn) over the portfolio's daily feature vectors (log energy,
    energy against baseline, load factor, base load and peak over mean), fitted on a seeded
    sample; ``isolation`` is its anomaly score mapped to 0-1. It finds days unlike the fleet's,
    and alone never scores above ``isolation_weight``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import polars as pl
from sklearn.ensemble import IsolationForest

from meterlake.config.schemas import ANOMALY_SCORES

SCORE_COLUMNS: Final = tuple(c for c in ANOMALY_SCORES.schema if c not in ("run_id", "computed_at"))
_MAD_TO_SIGMA: Final = 1.4826


@dataclass(frozen=True)
class AnomalyRules:
    """Thresholds of the rules (module docstring); energies [kWh]."""

    like_days: int = 8
    whole_day_share: float = 0.9
    min_like_days: int = 3
    scale_floor: float = 0.1
    min_scale_kwh: float = 0.2
    surge_z: float = 4.0
    surge_ratio: float = 1.8
    drop_z: float = 4.0
    drop_ratio: float = 0.4
    recent_days: int = 5
    reference_days: int = 28
    min_reference_days: int = 7
    sustained_ratio: float = 0.5
    zero_kwh: float = 0.01
    voltage_present_v: float = 100.0
    power_present_w: float = 50.0
    export_kwh: float = 0.05
    flat_min_share: float = 0.9
    vacant_kwh: float = 1.0
    isolation_weight: float = 0.6
    isolation_trees: int = 100
    isolation_fit_days: int = 50_000
    seed: int = 0

    @property
    def history_days(self) -> int:
        """Days before a scored day the rules look at: the sustained-drop windows (the recent
        days end on the day) and the like days (weekend days, the sparser kind, are two a week).

        >>> AnomalyRules().history_days
        32
        """
        like_reach = 7 * -(-self.like_days // 2)
        return max(self.recent_days - 1 + self.reference_days, like_reach)


SIGNALS_SCHEMA: Final = pl.Schema(
    {
        "meter_id": pl.String(),
        "day": pl.Date(),
        "voltage_v": pl.Float64(),
        "max_power_w": pl.Float64(),
    }
)
"""What :func:`score_anomalies` needs from the raw readings of a candidate day: the mean
voltage and the highest power reading."""


def zero_day_candidates(daily: pl.DataFrame, rules: AnomalyRules | None = None) -> pl.DataFrame:
    """``meter_id, day`` of days without import (whose readings the zero-with-voltage rule
    needs: only these are read from the raw readings)."""
    rules = rules or AnomalyRules()
    return daily.filter(pl.col("energy_kwh").fill_null(0.0) <= rules.zero_kwh).select(
        "meter_id", "day"
    )


def score_anomalies(
    daily: pl.DataFrame,
    meters: pl.DataFrame,
    signals: pl.DataFrame | None = None,
    rules: AnomalyRules | None = None,
) -> pl.DataFrame:
    """Scores for every day of ``daily`` (the ``anomaly_scores`` columns but the run's).

    Parameters
    ----------
    daily
        ``meter_id, day, interval_minutes, intervals, intervals_missing, energy_kwh,
        export_kwh, mean_kw, peak_kw, load_factor, base_load_kw, curve_kw, actual_share``:
        the days to score *and* up to :attr:`AnomalyRules.history_days` before them (the
        caller drops the history's rows from the result).
    meters
        ``meter_id, import_only, vacant`` (nulls: false).
    signals
        :data:`SIGNALS_SCHEMA` rows for the days of :func:`zero_day_candidates`.
    """
    rules = rules or AnomalyRules()
    signals = signals if signals is not None else pl.DataFrame(schema=SIGNALS_SCHEMA)
    flags = meters.select(
        "meter_id",
        pl.col("import_only").fill_null(value=False).alias("import_only"),
        pl.col("vacant").fill_null(value=False).alias("vacant"),
    )
    frame = (
        daily.sort("meter_id", "day")
        .join(flags, on="meter_id", how="left")
        .join(signals, on=["meter_id", "day"], how="left")
        .with_columns(
            pl.col("import_only", "vacant").fill_null(value=False),
            weekend=pl.col("day").dt.weekday() >= 6,
        )
    )
    frame = _baseline(frame, rules)
    frame = frame.with_columns(isolation=_isolation(frame, rules))
    return _combine(frame, rules).select(
        pl.col(c).cast(ANOMALY_SCORES.schema[c]) for c in SCORE_COLUMNS
    )


def _baseline(frame: pl.DataFrame, rules: AnomalyRules) -> pl.DataFrame:
    # a day with intervals missing (the first or last of the data, a dead meter) understates
    # its use: it takes no part in baselines and gets no z, so it is never a surge or a drop
    # and its score has no z term
    measured = pl.col("intervals") - pl.col("intervals_missing").fill_null(0)
    expected = 24 * 60 / pl.col("interval_minutes")
    frame = frame.with_columns(whole=measured >= expected * rules.whole_day_share)
    energy = pl.col("energy_kwh")
    whole_energy = pl.when(pl.col("whole")).then(energy)
    like = pl.concat_list(
        [whole_energy.shift(i).over("meter_id", "weekend") for i in range(1, rules.like_days + 1)]
    ).list.drop_nulls()
    frame = frame.with_columns(like=like).with_columns(
        baseline_kwh=pl.when(pl.col("like").list.len() >= rules.min_like_days).then(
            pl.col("like").list.median()
        )
    )
    deviation = (pl.col("like") - pl.col("baseline_kwh")).list.eval(pl.element().abs())
    scale = pl.max_horizontal(
        deviation.list.median() * _MAD_TO_SIGMA,
        pl.col("baseline_kwh") * rules.scale_floor,
        pl.lit(rules.min_scale_kwh),
    )
    recent = whole_energy.rolling_median(rules.recent_days, min_samples=rules.recent_days)
    reference = whole_energy.shift(rules.recent_days).rolling_median(
        rules.reference_days, min_samples=rules.min_reference_days
    )
    return frame.with_columns(
        robust_z=pl.when(pl.col("whole")).then((energy - pl.col("baseline_kwh")) / scale),
        recent_kwh=recent.over("meter_id"),
        reference_kwh=reference.over("meter_id"),
        flat=(
            (pl.col("curve_kw").list.std() < 1e-9)
            & (energy > rules.zero_kwh)
            & (pl.col("actual_share") >= rules.flat_min_share)
        ),
    ).drop("like")


def _isolation(frame: pl.DataFrame, rules: AnomalyRules) -> pl.Series:
    """The IsolationForest score of each day, 0 (typical) to 1 (isolated)."""
    eps = 1e-3
    energy = pl.col("energy_kwh").fill_null(0.0)
    features = frame.select(
        energy.log1p().alias("log_energy"),
        ((energy + 0.1) / (pl.col("baseline_kwh") + 0.1)).log().fill_null(0.0).alias("vs_base"),
        pl.col("load_factor").fill_null(0.0),
        (pl.col("base_load_kw") / (pl.col("mean_kw") + eps)).fill_null(0.0).alias("base"),
        (pl.col("peak_kw") / (pl.col("mean_kw") + eps)).fill_null(0.0).clip(0.0, 96.0),
    ).to_numpy()
    if len(features) < 2:
        return pl.Series("isolation", [0.0] * len(features), dtype=pl.Float64)
    rng = np.random.default_rng(rules.seed)
    sample = features[rng.permutation(len(features))[: rules.isolation_fit_days]]
    forest = IsolationForest(
        n_estimators=rules.isolation_trees, random_state=rules.seed, n_jobs=1
    ).fit(sample)
    # score_samples: about -0.5 for ordinary points, towards -1 for isolated ones
    raw = -forest.score_samples(features)
    return pl.Series("isolation", np.clip((raw - 0.5) * 2.0, 0.0, 1.0))


def _combine(frame: pl.DataFrame, rules: AnomalyRules) -> pl.DataFrame:
    energy = pl.col("energy_kwh")
    base = pl.col("baseline_kwh")
    z = pl.col("robust_z")
    day_kind = pl.when(pl.col("weekend")).then(pl.lit("weekend day")).otherwise(pl.lit("weekday"))
    surge = (z >= rules.surge_z) & (energy >= base * rules.surge_ratio)
    drop = (z <= -rules.drop_z) & (energy <= base * rules.drop_ratio)
    ratio = pl.col("recent_kwh") / pl.col("reference_kwh")
    sustained = (
        pl.col("whole")
        & (ratio < rules.sustained_ratio)
        & (energy < pl.col("reference_kwh") * rules.sustained_ratio)
    )
    zero = (
        (energy.fill_null(0.0) <= rules.zero_kwh)
        & (pl.col("voltage_v") >= rules.voltage_present_v)
        & (pl.col("max_power_w") >= rules.power_present_w)
    )
    reverse = pl.col("import_only") & (pl.col("export_kwh").fill_null(0.0) > rules.export_kwh)
    vacant = pl.col("vacant") & (energy.fill_null(0.0) > rules.vacant_kwh)
    isolated = pl.col("isolation") >= 0.5
    z_score = 1.0 - (-z.abs() / 6.0).exp()
    isolation_score = (pl.col("isolation") * rules.isolation_weight).fill_null(0.0)
    # (kind, fires, reason, score while it fires; None: scored by the always-on terms only)
    parts: list[tuple[str, pl.Expr, pl.Expr, pl.Expr | None]] = [
        (
            "surge",
            surge,
            pl.format(
                "used {} kWh, {}x its usual {} kWh for a {}",
                energy.round(1),
                (energy / base).round(1),
                base.round(1),
                day_kind,
            ),
            z_score,
        ),
        (
            "drop",
            drop,
            pl.format(
                "used {} kWh, {}% of its usual {} kWh for a {}",
                energy.round(1),
                (energy / base * 100).round(0).cast(pl.Int64),
                base.round(1),
                day_kind,
            ),
            z_score,
        ),
        (
            "sustained_drop",
            sustained,
            pl.format(
                "use fell to {}% of its level before ({} kWh/day, from {}) and stayed there",
                (ratio * 100).round(0).cast(pl.Int64),
                pl.col("recent_kwh").round(1),
                pl.col("reference_kwh").round(1),
            ),
            0.6 + 0.4 * (1.0 - ratio).clip(0.0, 1.0),
        ),
        (
            "zero_with_voltage",
            zero,
            pl.format(
                "no energy registered while the supply was on ({} V) and power read up to {} W",
                pl.col("voltage_v").round(0).cast(pl.Int64),
                pl.col("max_power_w").round(0).cast(pl.Int64),
            ),
            pl.lit(0.95),
        ),
        (
            "reverse_energy",
            reverse,
            pl.format(
                "{} kWh flowed out on a meter registered import-only",
                pl.col("export_kwh").round(2),
            ),
            pl.lit(0.9),
        ),
        (
            "flat_line",
            pl.col("flat"),
            pl.format(
                "every interval read the same {} kW all day, as a stuck register does",
                pl.col("peak_kw").round(3),
            ),
            pl.lit(0.85),
        ),
        (
            "vacant_use",
            vacant,
            pl.format("used {} kWh on a meter registered vacant", energy.round(1)),
            pl.lit(0.8),
        ),
        (
            "isolation",
            isolated,
            pl.format("unlike the fleet's days (isolation score {})", pl.col("isolation").round(2)),
            None,
        ),
    ]
    fired = [cond.fill_null(value=False) for _, cond, _, _ in parts]
    return frame.with_columns(
        kinds=pl.concat_list(
            [pl.when(f).then(pl.lit(name)) for (name, _, _, _), f in zip(parts, fired, strict=True)]
        ).list.drop_nulls(),
        reasons=pl.concat_list(
            [pl.when(f).then(text) for (_, _, text, _), f in zip(parts, fired, strict=True)]
        ).list.drop_nulls(),
        score=pl.max_horizontal(
            # always on, whether or not a rule fires: the z of a whole day and the isolation
            # (alone at most isolation_weight)
            z_score.fill_null(0.0) * 0.9,
            isolation_score,
            *[
                pl.when(f).then(s).otherwise(0.0)
                for (_, _, _, s), f in zip(parts, fired, strict=True)
                if s is not None
            ],
        ),
    )
