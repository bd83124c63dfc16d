"""Typical daily profiles: k-means (scikit-learn) on normalised daily curves.

A day's curve is divided by its mean, so clusters group days by *shape* (evening peak, office
hours, flat), not by size. Only whole days take part: every interval of the usual length present,
none missing, some energy. The portfolio's clusters are fitted on a seeded sample of days (at
most ``fit_days``), ``k`` chosen from ``k_values`` by the silhouette score (on a sample of at
most ``silhouette_days``); then every day gets its cluster. A meter's own profiles are its mean
normalised curve per cluster its days fall in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import numpy as np
import numpy.typing as npt
import polars as pl
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from meterlake.config.schemas import LOAD_PROFILES

PORTFOLIO: Final = "portfolio"
_PROFILE_COLUMNS: Final = tuple(
    c for c in LOAD_PROFILES.schema if c not in ("run_id", "computed_at")
)


@dataclass(frozen=True)
class ProfileRules:
    """How profiles are found: candidate ``k_values``, sample sizes and the ``seed``."""

    k_values: tuple[int, ...] = (2, 3, 4, 5, 6)
    fit_days: int = 20_000
    silhouette_days: int = 4_000
    seed: int = 0


@dataclass(frozen=True)
class Profiles:
    """``assigned``: ``meter_id, day, profile`` for every whole day; ``profiles``: the rows of
    the ``load_profiles`` table (portfolio and per meter), without the run's columns."""

    assigned: pl.DataFrame
    profiles: pl.DataFrame


def typical_profiles(daily: pl.DataFrame, rules: ProfileRules | None = None) -> Profiles:
    """Cluster the whole days of ``daily`` (``meter_id, day, energy_kwh, curve_kw``).

    Fewer whole days than the smallest ``k`` + 1 give no profiles (empty frames).
    """
    rules = rules or ProfileRules()
    whole = _whole_days(daily)
    empty = Profiles(
        pl.DataFrame(schema={"meter_id": pl.String, "day": pl.Date, "profile": pl.Int16}),
        pl.DataFrame(schema={c: LOAD_PROFILES.schema[c] for c in _PROFILE_COLUMNS}),
    )
    if whole.is_empty():
        return empty
    width = whole["curve_kw"].list.len()[0]
    curves = whole["curve_kw"].list.to_array(width).to_numpy().astype(np.float32)
    shapes = curves / curves.mean(axis=1, keepdims=True)
    rng = np.random.default_rng(rules.seed)
    fit = shapes[rng.permutation(len(shapes))[: rules.fit_days]]
    # k clusters need k distinct shapes (k-means warns, the silhouette fails otherwise)
    distinct = len(np.unique(fit.round(4), axis=0))
    k_values = [k for k in rules.k_values if k < len(fit) and k <= distinct]
    if not k_values:
        return empty
    best: tuple[float, KMeans] | None = None
    for k in k_values:
        model = KMeans(n_clusters=k, n_init=3, random_state=rules.seed).fit(fit)
        score = float(
            silhouette_score(
                fit,
                model.labels_,
                sample_size=min(rules.silhouette_days, len(fit)),
                random_state=rules.seed,
            )
        )
        if best is None or score > best[0]:
            best = (score, model)
    assert best is not None
    silhouette, model = best
    raw = model.predict(shapes)
    # clusters numbered by size (0: the most days), so a re-run names them the same way
    by_size = np.argsort(-np.bincount(raw, minlength=model.n_clusters), kind="stable")
    labels = np.argsort(by_size).astype(np.int16)[raw]
    assigned = whole.select("meter_id", "day", pl.Series("profile", labels))
    weekend = whole["day"].dt.weekday().to_numpy() >= 6
    energy = whole["energy_kwh"].to_numpy()
    portfolio = _cluster_rows(
        np.zeros(len(labels), dtype=np.int64), labels, shapes, weekend, energy
    ).with_columns(scope=pl.lit(PORTFOLIO), silhouette=pl.lit(silhouette))
    meters = whole["meter_id"].unique(maintain_order=True)  # sorted: whole is
    codes = whole["meter_id"].rle_id().to_numpy().astype(np.int64)
    per_meter = _cluster_rows(codes, labels, shapes, weekend, energy)
    per_meter = per_meter.with_columns(
        scope=meters.gather(per_meter["group"]), silhouette=pl.lit(None, dtype=pl.Float64)
    )
    first, last = whole["day"].min(), whole["day"].max()
    profiles = pl.concat([portfolio, per_meter], how="diagonal_relaxed").with_columns(
        range_start=pl.lit(first), range_end=pl.lit(last) + pl.duration(days=1)
    )
    return Profiles(
        assigned,
        profiles.select(pl.col(c).cast(LOAD_PROFILES.schema[c]) for c in _PROFILE_COLUMNS),
    )


def _whole_days(daily: pl.DataFrame) -> pl.DataFrame:
    """The days whose curve has the usual length, no gap and some energy."""
    length = pl.col("curve_kw").list.len()
    if daily.is_empty():
        return daily
    usual = daily.select(length.mode().first()).item()
    return daily.filter(
        (length == usual)
        & (pl.col("curve_kw").list.eval(pl.element().is_null().any()).list.first().not_())
        & (pl.col("energy_kwh") > 0)
    ).sort("meter_id", "day")


def _cluster_rows(
    group: npt.NDArray[np.int64],
    labels: npt.NDArray[np.int16],
    shapes: npt.NDArray[np.float32],
    weekend: npt.NDArray[np.bool_],
    energy: npt.NDArray[np.float64],
) -> pl.DataFrame:
    """Per (group, cluster): days, share of the group's days, weekday/weekend days, mean
    energy and the mean shape, computed with sorted reductions (no loop per group)."""
    key = group * (int(labels.max()) + 1) + labels
    order = np.argsort(key, kind="stable")
    keys, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
    sums = np.add.reduceat(shapes[order].astype(np.float64), starts, axis=0)
    frame = pl.DataFrame(
        {
            "group": keys // (int(labels.max()) + 1),
            "cluster": keys % (int(labels.max()) + 1),
            "days": counts,
            "weekend_days": np.add.reduceat(weekend[order].astype(np.int64), starts),
            "mean_energy_kwh": np.add.reduceat(energy[order], starts) / counts,
            "centroid": sums / counts[:, None],
        }
    )
    return frame.with_columns(
        share=pl.col("days") / pl.col("days").sum().over("group"),
        weekday_days=pl.col("days") - pl.col("weekend_days"),
        centroid=pl.col("centroid").arr.to_list(),
    )
