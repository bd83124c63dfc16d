"""Typical daily profiles: two clearly different shapes (evening-peak homes, office-hours
businesses) come out as two clusters, stably; per-meter rows, partial days and too few days."""

from __future__ import annotations

import datetime as dt

import numpy as np
import polars as pl
import pytest

from meterlake.analytics.profiles import PORTFOLIO, ProfileRules, Profiles, typical_profiles
from meterlake.config.schemas import LOAD_PROFILES

FIRST = dt.date(2026, 10, 5)  # a Monday
DAYS = 14
HOURS = np.arange(96) / 4


def home_shape() -> np.ndarray:
    """Low all day, a morning bump and a high evening (18:00-23:00) [kW]."""
    base = np.full(96, 0.3)
    base[(HOURS >= 7) & (HOURS < 8)] = 0.8
    base[(HOURS >= 18) & (HOURS < 23)] = 2.0
    return base


def office_shape() -> np.ndarray:
    """Standby at night, full load in office hours (08:00-18:00) [kW]."""
    base = np.full(96, 2.0)
    base[(HOURS >= 8) & (HOURS < 18)] = 20.0
    return base


def days_of(
    meter_id: str,
    shape: np.ndarray,
    rng: np.random.Generator,
    *,
    first: dt.date = FIRST,
    days: int = DAYS,
    scale: float = 1.0,
) -> pl.DataFrame:
    """``days`` days of ``shape`` x ``scale`` with 10 % multiplicative noise."""
    curves = [(shape * scale * rng.uniform(0.9, 1.1, size=96)).tolist() for _ in range(days)]
    return pl.DataFrame(
        {
            "meter_id": [meter_id] * days,
            "day": [first + dt.timedelta(days=i) for i in range(days)],
            "energy_kwh": [sum(c) / 4 for c in curves],
            "curve_kw": curves,
        },
        schema={
            "meter_id": pl.String,
            "day": pl.Date,
            "energy_kwh": pl.Float64,
            "curve_kw": pl.List(pl.Float64),
        },
    )


HOMES = [f"home-{i}" for i in range(6)]
SHOPS = [f"shop-{i}" for i in range(4)]


@pytest.fixture(scope="module")
def fleet() -> pl.DataFrame:
    """6 homes and 4 businesses, two weeks, sizes varying by meter (shape, not size, counts)."""
    rng = np.random.default_rng(42)
    frames = [days_of(m, home_shape(), rng, scale=1 + i / 2) for i, m in enumerate(HOMES)]
    frames += [days_of(m, office_shape(), rng, scale=1 + i) for i, m in enumerate(SHOPS)]
    return pl.concat(frames)


@pytest.fixture(scope="module")
def profiles(fleet: pl.DataFrame) -> Profiles:
    """The fleet's profiles under the default rules."""
    return typical_profiles(fleet)


def cluster_of(assigned: pl.DataFrame, meters: list[str]) -> set[int]:
    return set(assigned.filter(pl.col("meter_id").is_in(meters))["profile"])


def test_homes_and_businesses_fall_into_two_clusters(
    fleet: pl.DataFrame, profiles: Profiles
) -> None:
    result = profiles
    portfolio = result.profiles.filter(pl.col("scope") == PORTFOLIO).sort("cluster")
    assert portfolio["cluster"].to_list() == [0, 1]  # k = 2 by the silhouette
    assert result.assigned.height == fleet.height  # every day is whole
    # every day of a home in one cluster, every business day in the other; homes have more
    # days (84 against 56), so they are cluster 0
    assert cluster_of(result.assigned, HOMES) == {0}
    assert cluster_of(result.assigned, SHOPS) == {1}
    assert portfolio["days"].to_list() == [84, 56]
    assert portfolio["share"].to_list() == pytest.approx([0.6, 0.4])
    silhouette = portfolio["silhouette"].unique().to_list()
    assert len(silhouette) == 1 and 0.5 < silhouette[0] <= 1.0


def test_the_portfolio_rows_describe_their_clusters(
    fleet: pl.DataFrame, profiles: Profiles
) -> None:
    result = profiles
    portfolio = result.profiles.filter(pl.col("scope") == PORTFOLIO).sort("cluster")
    assert dict(result.profiles.schema) == {
        c: t for c, t in LOAD_PROFILES.schema.items() if c not in ("run_id", "computed_at")
    }
    # 5-18 October 2026: two weekends, 4 of 14 days
    assert portfolio["weekend_days"].to_list() == [6 * 4, 4 * 4]
    assert portfolio["weekday_days"].to_list() == [6 * 10, 4 * 10]
    for cluster, meters in ((0, HOMES), (1, SHOPS)):
        energy = fleet.filter(pl.col("meter_id").is_in(meters))["energy_kwh"].mean()
        row = portfolio.filter(pl.col("cluster") == cluster)
        assert row["mean_energy_kwh"].item() == pytest.approx(energy)
    assert set(result.profiles["range_start"]) == {FIRST}
    assert set(result.profiles["range_end"]) == {FIRST + dt.timedelta(days=DAYS)}


def test_centroids_have_mean_one_and_the_shape_of_their_cluster(profiles: Profiles) -> None:
    result = profiles
    for centroid in result.profiles["centroid"]:
        values = np.array(centroid.to_list())
        assert values.shape == (96,)
        assert values.mean() == pytest.approx(1.0, abs=1e-5)
    portfolio = result.profiles.filter(pl.col("scope") == PORTFOLIO).sort("cluster")
    home, office = (np.array(c.to_list()) for c in portfolio["centroid"])
    evening, noon = 20 * 4, 12 * 4  # quarter hours of 20:00 and 12:00
    assert home[evening] > 2 * home[noon]  # evening peak
    assert office[noon] > 5 * office[evening]  # office hours
    expected = home_shape() / home_shape().mean()
    assert home == pytest.approx(expected, rel=0.05)


def test_the_same_seed_gives_the_same_clusters(fleet: pl.DataFrame) -> None:
    first = typical_profiles(fleet, ProfileRules(seed=3))
    again = typical_profiles(fleet, ProfileRules(seed=3))
    assert first.assigned.equals(again.assigned)
    assert first.profiles.equals(again.profiles)


def test_shuffled_rows_give_the_same_assignment_per_meter_and_day(
    fleet: pl.DataFrame, profiles: Profiles
) -> None:
    ordered = profiles
    shuffled = typical_profiles(fleet.sample(fraction=1.0, shuffle=True, seed=1))
    key = ["meter_id", "day"]
    assert shuffled.assigned.sort(key).equals(ordered.assigned.sort(key))
    assert shuffled.profiles.sort("scope", "cluster").equals(
        ordered.profiles.sort("scope", "cluster")
    )


def test_a_small_fit_sample_still_assigns_every_day(fleet: pl.DataFrame) -> None:
    result = typical_profiles(fleet, ProfileRules(fit_days=30, silhouette_days=20, seed=5))
    assert result.assigned.height == fleet.height
    assert cluster_of(result.assigned, HOMES) == {0}
    assert cluster_of(result.assigned, SHOPS) == {1}


def test_per_meter_rows_share_their_meters_days(fleet: pl.DataFrame) -> None:
    rng = np.random.default_rng(7)
    # a meter that is a home in its first week and an office in its second
    mixed = pl.concat(
        [
            days_of("mixed", home_shape(), rng, days=7),
            days_of("mixed", office_shape(), rng, first=FIRST + dt.timedelta(days=7), days=7),
        ]
    )
    result = typical_profiles(pl.concat([fleet, mixed]))
    per_meter = result.profiles.filter(pl.col("scope") != PORTFOLIO)
    assert set(per_meter["scope"]) == {*HOMES, *SHOPS, "mixed"}
    assert per_meter["silhouette"].null_count() == per_meter.height
    totals = per_meter.group_by("scope").agg(pl.col("share").sum(), pl.col("days").sum())
    assert totals["share"].to_list() == pytest.approx([1.0] * totals.height)
    assert set(totals["days"]) == {DAYS}
    rows = per_meter.filter(pl.col("scope") == "mixed").sort("cluster")
    assert rows["cluster"].to_list() == [0, 1]
    assert rows["days"].to_list() == [7, 7]
    assert rows["share"].to_list() == [0.5, 0.5]
    # 5-11 October holds one weekend, 12-18 October the other
    assert rows["weekend_days"].to_list() == [2, 2]
    home_row = per_meter.filter(pl.col("scope") == HOMES[0])
    assert (home_row["cluster"].item(), home_row["days"].item(), home_row["share"].item()) == (
        0,
        DAYS,
        1.0,
    )
    curves = np.array(
        result.assigned.join(pl.concat([fleet, mixed]), on=["meter_id", "day"])
        .filter(pl.col("meter_id") == HOMES[0])["curve_kw"]
        .to_list()
    )
    own = (curves / curves.mean(axis=1, keepdims=True)).mean(axis=0)
    assert home_row["centroid"].item().to_list() == pytest.approx(own, rel=1e-5)
    assert home_row["mean_energy_kwh"].item() == pytest.approx(
        fleet.filter(pl.col("meter_id") == HOMES[0])["energy_kwh"].mean()
    )


def test_partial_days_are_not_assigned(fleet: pl.DataFrame) -> None:
    short = days_of("short", home_shape(), np.random.default_rng(1), days=1).with_columns(
        pl.col("curve_kw").list.head(92)
    )
    gap = days_of("gap", home_shape(), np.random.default_rng(2), days=1).with_columns(
        pl.col("curve_kw").list.eval(
            pl.when(pl.int_range(pl.len()) == 10).then(None).otherwise(pl.element())
        )
    )
    zero = days_of("zero", home_shape(), np.random.default_rng(3), days=1).with_columns(
        pl.col("curve_kw").list.eval(pl.element() * 0), energy_kwh=pl.lit(0.0)
    )
    unknown = days_of("unknown", home_shape(), np.random.default_rng(4), days=1).with_columns(
        energy_kwh=pl.lit(None, dtype=pl.Float64)
    )
    result = typical_profiles(pl.concat([fleet, short, gap, zero, unknown]))
    assert set(result.assigned["meter_id"]) == {*HOMES, *SHOPS}
    assert result.assigned.height == fleet.height
    assert not set(result.profiles["scope"]) & {"short", "gap", "zero", "unknown"}
    assert result.profiles.filter(pl.col("scope") == PORTFOLIO)["days"].sum() == fleet.height


def test_a_meters_partial_days_do_not_count_towards_its_days(fleet: pl.DataFrame) -> None:
    home = HOMES[0]
    broken = pl.col("meter_id").eq(home) & pl.col("day").eq(FIRST)
    daily = fleet.with_columns(
        curve_kw=pl.when(broken).then(pl.col("curve_kw").list.head(50)).otherwise("curve_kw")
    )
    result = typical_profiles(daily)
    row = result.profiles.filter(pl.col("scope") == home)
    assert (row["days"].item(), row["share"].item()) == (DAYS - 1, 1.0)
    assert FIRST not in result.assigned.filter(pl.col("meter_id") == home)["day"].to_list()


def assert_empty(result: Profiles) -> None:
    assert result.assigned.is_empty()
    assert result.profiles.is_empty()
    assert dict(result.assigned.schema) == {
        "meter_id": pl.String,
        "day": pl.Date,
        "profile": pl.Int16,
    }
    assert dict(result.profiles.schema) == {
        c: t for c, t in LOAD_PROFILES.schema.items() if c not in ("run_id", "computed_at")
    }


@pytest.mark.parametrize("whole_days", [1, 2])
def test_too_few_whole_days_give_empty_frames(fleet: pl.DataFrame, whole_days: int) -> None:
    assert_empty(typical_profiles(fleet.head(whole_days)))


def test_only_partial_days_give_empty_frames(fleet: pl.DataFrame) -> None:
    daily = fleet.with_columns(energy_kwh=pl.lit(0.0))
    assert_empty(typical_profiles(daily))


def test_no_days_at_all_give_empty_frames(fleet: pl.DataFrame) -> None:
    # (without a warning: there is no usual curve length to compare with)
    assert_empty(typical_profiles(fleet.clear()))


def test_only_k_values_below_the_number_of_days_are_tried(fleet: pl.DataFrame) -> None:
    daily = pl.concat([fleet.filter(pl.col("meter_id") == m).head(2) for m in (HOMES[0], SHOPS[0])])
    result = typical_profiles(daily)  # 4 whole days: k = 2 or 3
    assert result.assigned.height == 4
    assert set(result.profiles.filter(pl.col("scope") == PORTFOLIO)["cluster"]) <= {0, 1, 2}
    assert typical_profiles(daily, ProfileRules(k_values=(4, 5))).profiles.is_empty()


def test_days_of_one_shape_do_not_crash_the_clustering() -> None:
    # every whole day has the same normalised shape (constant loads of different sizes): with
    # one distinct shape no k >= 2 can be clustered (k-means would warn, the silhouette fail),
    # so there are no profiles, as with too few days; one day of another shape gives two
    days = [FIRST + dt.timedelta(days=i) for i in range(7)]
    daily = pl.DataFrame(
        {
            "meter_id": ["flat"] * 7,
            "day": days,
            "energy_kwh": [24.0 * (i + 1) for i in range(6)] + [sum(home_shape()) / 4],
            "curve_kw": [[float(i + 1)] * 96 for i in range(6)] + [home_shape().tolist()],
        }
    )
    assert_empty(typical_profiles(daily.head(6)))
    result = typical_profiles(daily)
    # clusters are numbered by size: the six flat days are profile 0, the other day 1
    assert result.assigned.sort("day")["profile"].to_list() == [0] * 6 + [1]
    portfolio = result.profiles.filter(pl.col("scope") == PORTFOLIO).sort("cluster")
    assert portfolio["days"].to_list() == [6, 1]
