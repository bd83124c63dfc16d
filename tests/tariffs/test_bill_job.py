"""Bill runs on a real lake: versioned, idempotent bills with adjustment lines, skipped meters,
tier counters that reach back into earlier months, net-metering carry and true-up, billing days.

Every expected amount is computed here by hand: ``kWh x rate`` in Decimal, rounded half-up to
the cent once per line.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from meterlake.config.schemas import BILL_LINES, BILLS, INTERVALS, METERS
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.layout import init_lake
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table
from meterlake.tariffs.bill_job import BillRunResult, current_bills, run_billing
from meterlake.tariffs.model import Tariff
from tests.tariffs.helpers import FIXED, FLAT, RATE, cents, write_tariff

UTC = dt.UTC
SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = dt.datetime(2026, 11, 2, 3, tzinfo=UTC)
HOUR = dt.timedelta(hours=1)
QUARTER = dt.timedelta(minutes=15)


def local(year: int, month: int, day: int, hour: int = 0, zone: ZoneInfo = SHANGHAI) -> dt.datetime:
    """A local wall-clock time as a UTC instant."""
    return dt.datetime(year, month, day, hour, tzinfo=zone).astimezone(UTC)


def intervals(
    meter_id: str,
    start: dt.datetime,
    count: int,
    import_kwh: float,
    export_kwh: float = 0.0,
    *,
    step: dt.timedelta = HOUR,
    version: int = 1,
) -> pl.DataFrame:
    """``count`` consecutive intervals of ``step`` from ``start``, all with the same energy."""
    return pl.DataFrame(
        {
            "meter_id": meter_id,
            "interval_start": [start + i * step for i in range(count)],
            "interval_minutes": int(step / dt.timedelta(minutes=1)),
            "energy_import_kwh": import_kwh,
            "energy_export_kwh": export_kwh,
            "status": "actual" if version == 1 else "edited",
            "flags": [[] for _ in range(count)],
            "method": None if version == 1 else "manual",
            "version": version,
            "run_id": f"vee-{version}",
        },
        schema=INTERVALS.schema,
    )


def meters(rows: Sequence[Mapping[str, Any]]) -> pl.DataFrame:
    """Meter master records (missing columns null), updated a month before ``NOW``."""
    frame = pl.DataFrame(
        [{"updated_at": NOW - dt.timedelta(days=30), **row} for row in rows],
        schema_overrides={c: METERS.schema[c] for c in ("billing_day", "updated_at")},
    )
    return frame.select(
        pl.col(c).cast(dtype) if c in frame.columns else pl.lit(None, dtype).alias(c)
        for c, dtype in METERS.schema.items()
    )


def bill_files(root: Path) -> dict[Path, tuple[int, int]]:
    """Every file under ``bills`` and ``bill_lines`` with its size and modification time."""
    return {
        path: (path.stat().st_size, path.stat().st_mtime_ns)
        for table in (BILLS.name, BILL_LINES.name)
        for path in (root / table).rglob("*")
        if path.is_file()
    }


def by_meter(result: BillRunResult) -> dict[str, dict[str, Any]]:
    return {row["meter_id"]: row for row in result.bills.iter_rows(named=True)}


def lines_of(
    result: BillRunResult, bill_id: str, kind: str = "charge"
) -> dict[str, dict[str, Any]]:
    """The lines of one bill by code."""
    lines = result.lines.filter(pl.col("bill_id") == bill_id, pl.col("kind") == kind)
    out = {row["code"]: row for row in lines.iter_rows(named=True)}
    assert len(out) == lines.height, "a code appears twice on one bill"
    return out


# --- a small lake: three meters, October 2026, Asia/Shanghai ----------------------------------

OCT = local(2026, 10, 1)
FLEET_KWH = {"m-1": Decimal("372"), "m-2": Decimal("744"), "m-3": Decimal("297.6")}


def fleet_lake(root: Path) -> Path:
    """m-1: 0.5 kWh every hour of local October, m-2: 1.0 kWh/h, m-3: 0.1 kWh every 15 minutes."""
    lake = init_lake(root)
    write_table(
        lake,
        INTERVALS,
        pl.concat(
            [
                intervals("m-1", OCT, 31 * 24, 0.5),
                intervals("m-2", OCT, 31 * 24, 1.0),
                intervals("m-3", OCT, 31 * 96, 0.1, step=QUARTER),
            ]
        ),
    )
    write_table(
        lake,
        METERS,
        meters([{"meter_id": m, "account": f"acc-{m}", "tariff_id": "flat"} for m in FLEET_KWH]),
    )
    return lake


@pytest.fixture
def flat(tmp_path: Path) -> dict[str, Tariff]:
    return {"flat": write_tariff(tmp_path / "tariffs", "flat", FLAT)}


def expected_total(kwh: Decimal) -> Decimal:
    return cents(kwh * RATE) + FIXED


def test_first_run_bills_every_meter_once_at_version_1(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    lake = fleet_lake(tmp_path / "lake")
    result = run_billing(lake, flat, "2026-10", run_id="bill-1", now=NOW)

    assert result.period == "2026-10"
    assert (result.billed, result.unchanged) == (3, 0)
    assert result.skipped.is_empty()
    bills = by_meter(result)
    assert sorted(bills) == sorted(FLEET_KWH)
    for meter_id, kwh in FLEET_KWH.items():
        bill = bills[meter_id]
        assert bill["version"] == 1
        assert bill["supersedes"] is None
        assert bill["adjustment_amount"] == 0
        assert bill["status"] == "released"
        assert bill["account"] == f"acc-{meter_id}"
        assert (bill["period_start"], bill["period_end"]) == (
            dt.date(2026, 10, 1),
            dt.date(2026, 11, 1),
        )
        assert bill["tariff_id"] == "flat"
        assert bill["tariff_version"] == flat["flat"].fingerprint
        assert bill["currency"] == "CNY"
        assert bill["energy_import_kwh"] == pytest.approx(float(kwh))
        assert bill["total_amount"] == expected_total(kwh)
        lines = lines_of(result, bill["bill_id"])
        assert set(lines) == {"energy", "fixed"}
        assert lines["energy"]["amount"] == cents(kwh * RATE)
        assert lines["energy"]["quantity"] == pytest.approx(float(kwh))
        assert lines["fixed"]["amount"] == FIXED
        assert sum(line["amount"] for line in lines.values()) == bill["total_amount"]
    assert bills["m-3"]["intervals"] == 31 * 96
    # 0.5283 CNY/kWh: 372 -> 196.5276 -> 196.53; 744 -> 393.0552 -> 393.06; 297.6 -> 157.22208
    assert [bills[m]["total_amount"] for m in ("m-1", "m-2", "m-3")] == [
        Decimal("206.53"),
        Decimal("403.06"),
        Decimal("167.22"),
    ]
    assert set(result.lines["kind"]) == {"charge"}
    assert result.lines["line_id"].is_unique().all()

    # what was written is what the lake holds
    stored_bills, stored_lines = current_bills(lake, "2026-10")
    assert sorted(stored_bills["bill_id"]) == sorted(result.bills["bill_id"])
    assert sorted(stored_lines["line_id"]) == sorted(result.lines["line_id"])


def test_bill_and_line_ids_are_deterministic(tmp_path: Path, flat: dict[str, Tariff]) -> None:
    first = run_billing(fleet_lake(tmp_path / "a"), flat, "2026-10", run_id="run-a", now=NOW)
    later = NOW + dt.timedelta(days=3)
    second = run_billing(fleet_lake(tmp_path / "b"), flat, "2026-10", run_id="run-b", now=later)

    def ids(result: BillRunResult) -> tuple[list[Any], list[Any]]:
        return (
            sorted(result.bills.select("meter_id", "bill_id").rows()),
            sorted(result.lines["line_id"]),
        )

    assert ids(first) == ids(second)
    assert first.bills["bill_id"].n_unique() == 3
    assert all(i.startswith("b-") for i in first.bills["bill_id"])


def test_second_run_with_the_same_inputs_writes_nothing(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    lake = fleet_lake(tmp_path / "lake")
    run_billing(lake, flat, "2026-10", run_id="bill-1", now=NOW)
    before = bill_files(lake)
    assert before

    again = run_billing(lake, flat, "2026-10", run_id="bill-2", now=NOW + HOUR)

    assert again.bills.is_empty()
    assert again.lines.is_empty()
    assert (again.billed, again.unchanged) == (3, 3)
    assert bill_files(lake) == before


def test_corrected_intervals_issue_a_new_version_with_adjustment_lines(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    lake = fleet_lake(tmp_path / "lake")
    first = run_billing(lake, flat, "2026-10", run_id="bill-1", now=NOW)
    old = by_meter(first)["m-1"]

    # VEE corrects ten hours of m-1 (0.5 -> 2.5 kWh each): +20 kWh
    write_table(lake, INTERVALS, intervals("m-1", OCT + 100 * HOUR, 10, 2.5, version=2))
    second = run_billing(lake, flat, "2026-10", run_id="bill-2", now=NOW + HOUR)

    assert (second.billed, second.unchanged) == (3, 2)
    assert second.bills["meter_id"].to_list() == ["m-1"]
    new = second.bills.row(0, named=True)
    kwh = FLEET_KWH["m-1"] + 20
    assert new["version"] == 2
    assert new["supersedes"] == old["bill_id"]
    assert new["bill_id"] != old["bill_id"]
    assert new["energy_import_kwh"] == pytest.approx(float(kwh))
    assert new["total_amount"] == expected_total(kwh)  # 392 x 0.5283 = 207.0936 -> 207.09 + 10
    assert new["adjustment_amount"] == new["total_amount"] - old["total_amount"]
    assert new["adjustment_amount"] == cents(kwh * RATE) - cents(FLEET_KWH["m-1"] * RATE)

    charges = lines_of(second, new["bill_id"])
    assert sum(line["amount"] for line in charges.values()) == new["total_amount"]
    adjustments = lines_of(second, new["bill_id"], kind="adjustment")
    assert set(adjustments) == {"energy"}  # the fixed charge did not change
    assert adjustments["energy"]["amount"] == Decimal("10.56")  # 207.09 - 196.53
    assert sum(line["amount"] for line in adjustments.values()) == new["adjustment_amount"]
    # adjustment lines follow the charges on the same bill
    assert min(a["line_no"] for a in adjustments.values()) > max(
        c["line_no"] for c in charges.values()
    )

    # the superseded bill is still there, unchanged; every line id in the lake is unique
    all_bills = scan(lake, BILLS).collect().sort("meter_id", "version")
    assert all_bills.height == 4
    kept = all_bills.filter(pl.col("bill_id") == old["bill_id"]).row(0, named=True)
    assert kept["total_amount"] == old["total_amount"]
    assert scan(lake, BILL_LINES).collect()["line_id"].is_unique().all()

    refresh_catalog(lake)
    con = connect_catalog(lake)
    try:
        current = con.sql(
            "SELECT meter_id, version, bill_id, supersedes FROM bills_current "
            "WHERE period = '2026-10' ORDER BY meter_id"
        ).fetchall()
        m1_lines = con.sql(
            "SELECT kind, code, amount FROM bill_lines_current "
            f"WHERE bill_id = '{new['bill_id']}' ORDER BY line_no"
        ).fetchall()
        stale = con.sql(
            f"SELECT count(*) FROM bill_lines_current WHERE bill_id = '{old['bill_id']}'"
        ).fetchall()
    finally:
        con.close()
    assert current[0] == ("m-1", 2, new["bill_id"], old["bill_id"])
    assert [(m, v) for m, v, *_ in current[1:]] == [("m-2", 1), ("m-3", 1)]
    assert [(kind, code) for kind, code, _ in m1_lines] == [
        ("charge", "energy"),
        ("charge", "fixed"),
        ("adjustment", "energy"),
    ]
    assert stale == [(0,)]

    # and the corrected lake is stable again
    third = run_billing(lake, flat, "2026-10", run_id="bill-3", now=NOW + 2 * HOUR)
    assert third.bills.is_empty()
    assert third.unchanged == 3


def test_meters_without_a_known_tariff_are_skipped_with_a_reason(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    lake = fleet_lake(tmp_path / "lake")
    write_table(
        lake,
        INTERVALS,
        pl.concat([intervals("m-4", OCT, 24, 1.0), intervals("m-5", OCT, 24, 1.0)]),
    )
    write_table(
        lake,
        METERS,
        meters([{"meter_id": "m-4"}, {"meter_id": "m-5", "tariff_id": "no-such-tariff"}]),
    )

    result = run_billing(lake, flat, "2026-10", run_id="bill-1", now=NOW)

    assert sorted(result.skipped.rows()) == [
        ("m-4", "no tariff_id in meters"),
        ("m-5", "tariff no-such-tariff is not loaded"),
    ]
    assert sorted(result.bills["meter_id"]) == ["m-1", "m-2", "m-3"]
    assert result.billed == 3
    stored, _ = current_bills(lake, "2026-10")
    assert not {"m-4", "m-5"} & set(stored["meter_id"])


def test_a_lake_where_no_meter_has_a_tariff_bills_nothing(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    lake = init_lake(tmp_path / "lake")
    write_table(lake, INTERVALS, intervals("m-4", OCT, 24, 1.0))
    write_table(lake, METERS, meters([{"meter_id": "m-4"}]))

    result = run_billing(lake, flat, "2026-10", run_id="bill-1", now=NOW)

    assert result.bills.is_empty()
    assert (result.billed, result.unchanged) == (0, 0)
    assert result.skipped.rows() == [("m-4", "no tariff_id in meters")]
    assert not bill_files(lake)


def test_a_line_code_that_vanishes_gets_a_negative_adjustment_line(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    energy_only = write_tariff(
        tmp_path / "tariffs", "energy-only", "[energy]\nprices = { all = 0.6 }\n"
    )
    tariffs = {**flat, "energy-only": energy_only}
    lake = fleet_lake(tmp_path / "lake")
    old = by_meter(run_billing(lake, tariffs, "2026-10", run_id="bill-1", now=NOW))["m-1"]

    # m-1 moves to a tariff without a fixed charge: its "fixed" line disappears
    write_table(
        lake, METERS, meters([{"meter_id": "m-1", "tariff_id": "energy-only", "updated_at": NOW}])
    )
    result = run_billing(lake, tariffs, "2026-10", run_id="bill-2", now=NOW + HOUR)

    (new,) = result.bills.iter_rows(named=True)
    energy = cents(FLEET_KWH["m-1"] * Decimal("0.6"))  # 372 x 0.6 = 223.20
    assert (new["meter_id"], new["version"], new["tariff_id"]) == ("m-1", 2, "energy-only")
    assert new["supersedes"] == old["bill_id"]
    assert new["total_amount"] == energy
    assert new["adjustment_amount"] == energy - old["total_amount"]
    adjustments = lines_of(result, new["bill_id"], kind="adjustment")
    assert {code: line["amount"] for code, line in adjustments.items()} == {
        "energy": energy - cents(FLEET_KWH["m-1"] * RATE),  # 223.20 - 196.53 = 26.67
        "fixed": -FIXED,  # the superseded bill's fixed charge, taken back
    }
    assert sum(line["amount"] for line in adjustments.values()) == new["adjustment_amount"]


# --- tier counters that started before the period ------------------------------------------

ANNUAL = """
    [energy]
    tiers_kwh = [1000]
    tier_reset = "annual"
    tier_year_start = "01-01"
    prices = { all = [0.5, 1.0] }
"""


def test_annual_tiers_count_the_import_of_earlier_months(tmp_path: Path) -> None:
    tariffs = {"annual": write_tariff(tmp_path / "tariffs", "annual", ANNUAL)}
    lake = init_lake(tmp_path / "lake")
    frames = []
    for meter_id in ("t-1", "t-2"):
        frames += [
            # the previous tier year: must not count
            intervals(meter_id, local(2025, 12, 1), 100, 5.0),
            # September: 720 h x 1.25 = 900 kWh
            intervals(meter_id, local(2026, 9, 1), 30 * 24, 1.25),
            # October: 100 h x 2.0 = 200 kWh
            intervals(meter_id, local(2026, 10, 1), 100, 2.0),
        ]
    write_table(lake, INTERVALS, pl.concat(frames))
    write_table(
        lake,
        METERS,
        meters(
            [
                {"meter_id": "t-1", "tariff_id": "annual"},
                # this meter's tier year starts on 1 October: September is another year
                {"meter_id": "t-2", "tariff_id": "annual", "tier_year_start": "10-01"},
            ]
        ),
    )

    result = run_billing(lake, tariffs, "2026-10", run_id="bill-1", now=NOW)

    bills = by_meter(result)
    t1 = lines_of(result, bills["t-1"]["bill_id"])
    # 900 kWh before October: 100 kWh left in tier 1, the other 100 kWh in tier 2
    assert set(t1) == {"energy_tier1", "energy_tier2"}
    assert t1["energy_tier1"]["quantity"] == pytest.approx(100.0)
    assert t1["energy_tier1"]["amount"] == cents(100 * Decimal("0.5"))
    assert t1["energy_tier2"]["quantity"] == pytest.approx(100.0)
    assert t1["energy_tier2"]["amount"] == cents(100 * Decimal("1.0"))
    assert bills["t-1"]["total_amount"] == Decimal("150.00")
    assert bills["t-1"]["energy_import_kwh"] == pytest.approx(200.0)

    t2 = lines_of(result, bills["t-2"]["bill_id"])
    assert set(t2) == {"energy_tier1"}
    assert t2["energy_tier1"]["quantity"] == pytest.approx(200.0)
    assert bills["t-2"]["total_amount"] == Decimal("100.00")


def test_corrected_intervals_of_an_earlier_month_reissue_the_tiered_bill(tmp_path: Path) -> None:
    tariffs = {"annual": write_tariff(tmp_path / "tariffs", "annual", ANNUAL)}
    lake = init_lake(tmp_path / "lake")
    write_table(
        lake,
        INTERVALS,
        pl.concat(
            [
                intervals("t-1", local(2026, 9, 1), 30 * 24, 1.25),  # 900 kWh
                intervals("t-1", local(2026, 10, 1), 100, 2.0),  # 200 kWh
            ]
        ),
    )
    write_table(lake, METERS, meters([{"meter_id": "t-1", "tariff_id": "annual"}]))
    first = run_billing(lake, tariffs, "2026-10", run_id="bill-1", now=NOW)
    old = first.bills.row(0, named=True)

    # September corrected: 40 hours 1.25 -> 2.5 kWh, +50 kWh before October
    write_table(lake, INTERVALS, intervals("t-1", local(2026, 9, 3), 40, 2.5, version=2))
    second = run_billing(lake, tariffs, "2026-10", run_id="bill-2", now=NOW + HOUR)

    (new,) = second.bills.iter_rows(named=True)
    assert (new["version"], new["supersedes"]) == (2, old["bill_id"])
    lines = lines_of(second, new["bill_id"])
    # 950 kWh before October: 50 kWh in tier 1, 150 in tier 2
    assert lines["energy_tier1"]["quantity"] == pytest.approx(50.0)
    assert lines["energy_tier2"]["quantity"] == pytest.approx(150.0)
    total = cents(50 * Decimal("0.5")) + cents(150 * Decimal("1.0"))
    assert new["total_amount"] == total
    assert new["adjustment_amount"] == total - Decimal("150.00")
    adjustments = lines_of(second, new["bill_id"], kind="adjustment")
    assert {code: line["amount"] for code, line in adjustments.items()} == {
        "energy_tier1": Decimal("-25.00"),
        "energy_tier2": Decimal("50.00"),
    }


def test_monthly_tiers_count_from_the_first_of_the_month_with_a_billing_day(
    tmp_path: Path,
) -> None:
    tariff = """
        [energy]
        tiers_kwh = [100]
        tier_reset = "monthly"
        prices = { all = [0.5, 1.0] }
    """
    tariffs = {"monthly": write_tariff(tmp_path / "tariffs", "monthly", tariff)}
    lake = init_lake(tmp_path / "lake")
    write_table(
        lake,
        INTERVALS,
        pl.concat(
            [
                # 60 kWh on 1-14 October (the previous bill period, same calendar month)
                intervals("d-15", local(2026, 10, 2), 60, 1.0),
                # 80 kWh on 15-31 October, 30 kWh in November before the 15th
                intervals("d-15", local(2026, 10, 20), 80, 1.0),
                intervals("d-15", local(2026, 11, 3), 30, 1.0),
            ]
        ),
    )
    write_table(
        lake, METERS, meters([{"meter_id": "d-15", "tariff_id": "monthly", "billing_day": 15}])
    )

    result = run_billing(lake, tariffs, "2026-10", run_id="bill-1", now=NOW)

    (bill,) = result.bills.iter_rows(named=True)
    lines = lines_of(result, bill["bill_id"])
    # October's counter starts at 60 kWh: 40 kWh in tier 1, 40 in tier 2; November's 30 kWh
    # start a new month: tier 1
    assert lines["energy_tier1"]["quantity"] == pytest.approx(70.0)
    assert lines["energy_tier2"]["quantity"] == pytest.approx(40.0)
    assert bill["total_amount"] == cents(70 * Decimal("0.5")) + cents(40 * Decimal("1.0"))


# --- net metering ----------------------------------------------------------------------------

NEM = """
    [energy]
    prices = { all = 0.5 }

    [export]
    mode = "net_metering"
    true_up_month = 11
    true_up_price = 0.2
"""
# (import, export) kWh per hour for ten hours on the 10th of each month
NEM_DATA = {
    "n-1": {9: (10.0, 30.0), 10: (26.0, 1.0), 11: (4.0, 10.0), 12: (1.0, 0.0)},
    "n-2": {9: (10.0, 30.0), 10: (15.0, 0.0), 12: (1.0, 0.0)},
}


def test_net_metering_carries_credit_uses_it_and_pays_it_out_at_the_true_up(
    tmp_path: Path,
) -> None:
    tariffs = {"nem": write_tariff(tmp_path / "tariffs", "nem", NEM)}
    lake = init_lake(tmp_path / "lake")
    write_table(
        lake,
        INTERVALS,
        pl.concat(
            intervals(meter_id, local(2026, month, 10), 10, imp, exp)
            for meter_id, months in NEM_DATA.items()
            for month, (imp, exp) in months.items()
        ),
    )
    write_table(lake, METERS, meters([{"meter_id": m, "tariff_id": "nem"} for m in NEM_DATA]))

    runs = {
        period: run_billing(lake, tariffs, period, run_id=f"bill-{period}", now=NOW)
        for period in ("2026-09", "2026-10", "2026-11", "2026-12")
    }
    bills = {period: by_meter(result) for period, result in runs.items()}

    def codes(period: str, meter_id: str) -> dict[str, dict[str, Any]]:
        return lines_of(runs[period], bills[period][meter_id]["bill_id"])

    # September: 100 kWh in, 300 out -> nothing billed, 200 kWh carried
    for meter_id in NEM_DATA:
        sep = bills["2026-09"][meter_id]
        assert sep["billed_import_kwh"] == pytest.approx(0.0)
        assert sep["export_carry_kwh"] == pytest.approx(200.0)
        assert sep["total_amount"] == 0
        assert "export_true_up" not in codes("2026-09", meter_id)

    # October, n-1: 260 in, 10 out, 200 carried in -> 50 kWh billed at 0.5, nothing carried
    oct1 = bills["2026-10"]["n-1"]
    assert oct1["energy_import_kwh"] == pytest.approx(260.0)
    assert oct1["billed_import_kwh"] == pytest.approx(50.0)
    assert oct1["export_carry_kwh"] == pytest.approx(0.0)
    assert codes("2026-10", "n-1")["energy"]["quantity"] == pytest.approx(50.0)
    assert oct1["total_amount"] == cents(50 * Decimal("0.5"))
    # October, n-2: 150 in, 200 carried in -> nothing billed, 50 kWh carried on
    oct2 = bills["2026-10"]["n-2"]
    assert oct2["billed_import_kwh"] == pytest.approx(0.0)
    assert oct2["export_carry_kwh"] == pytest.approx(50.0)
    assert oct2["total_amount"] == 0

    # November is the true-up: what is left is paid at 0.2 and cleared
    # n-1: 40 in, 100 out -> 60 kWh; n-2: no intervals, 50 kWh carried in
    for meter_id, credit in (("n-1", 60), ("n-2", 50)):
        nov = bills["2026-11"][meter_id]
        true_up = codes("2026-11", meter_id)["export_true_up"]
        assert true_up["quantity"] == pytest.approx(credit)
        assert true_up["rate"] == Decimal("-0.2")
        assert true_up["amount"] == -cents(credit * Decimal("0.2"))
        assert true_up["amount"] < 0
        assert nov["export_carry_kwh"] == pytest.approx(0.0)
        assert nov["billed_import_kwh"] == pytest.approx(0.0)
        assert nov["total_amount"] == true_up["amount"]

    # December starts a new cycle without credit: 10 kWh billed in full
    for meter_id in NEM_DATA:
        dec = bills["2026-12"][meter_id]
        assert dec["billed_import_kwh"] == pytest.approx(10.0)
        assert dec["total_amount"] == cents(10 * Decimal("0.5"))


# --- bill periods in local time --------------------------------------------------------------


def test_billing_day_15_covers_the_15th_to_the_14th(tmp_path: Path) -> None:
    tariff = """
        [energy]
        prices = { all = 1.0 }

        [[fixed]]
        name = "daily charge"
        amount = 0.1
        per = "day"
    """
    tariffs = {"daily": write_tariff(tmp_path / "tariffs", "daily", tariff)}
    lake = init_lake(tmp_path / "lake")
    edges = [
        (local(2026, 10, 14, 23), 1.0),  # the September bill
        (local(2026, 10, 15, 0), 2.0),  # first hour of the October bill
        (local(2026, 11, 14, 23), 4.0),  # last hour of the October bill
        (local(2026, 11, 15, 0), 8.0),  # the November bill
    ]
    write_table(lake, INTERVALS, pl.concat(intervals("d-15", t, 1, kwh) for t, kwh in edges))
    write_table(
        lake, METERS, meters([{"meter_id": "d-15", "tariff_id": "daily", "billing_day": 15}])
    )

    result = run_billing(lake, tariffs, "2026-10", run_id="bill-1", now=NOW)

    (bill,) = result.bills.iter_rows(named=True)
    assert bill["period"] == "2026-10"
    assert bill["period_start"] == dt.date(2026, 10, 15)
    assert bill["period_end"] == dt.date(2026, 11, 15)  # exclusive: the last day is the 14th
    assert bill["energy_import_kwh"] == pytest.approx(6.0)
    assert bill["intervals"] == 2
    lines = lines_of(result, bill["bill_id"])
    assert lines["fixed"]["quantity"] == pytest.approx(31.0)  # 15 Oct .. 14 Nov
    assert lines["fixed"]["amount"] == cents(31 * Decimal("0.1"))
    assert bill["total_amount"] == cents(6 * Decimal("1.0")) + cents(31 * Decimal("0.1"))


def test_a_dst_month_has_its_25_hour_day(tmp_path: Path) -> None:
    berlin = ZoneInfo("Europe/Berlin")
    tariffs = {
        "berlin": write_tariff(
            tmp_path / "tariffs", "berlin", "[energy]\nprices = { all = 0.3 }\n", "Europe/Berlin"
        )
    }
    lake = init_lake(tmp_path / "lake")
    start, end = local(2026, 10, 1, zone=berlin), local(2026, 11, 1, zone=berlin)
    hours = int((end - start) / HOUR)
    assert hours == 31 * 24 + 1  # summer time ends on 25 October
    write_table(
        lake,
        INTERVALS,
        pl.concat(
            [
                intervals("b-1", start - 2 * HOUR, 2, 7.0),  # September, local
                intervals("b-1", start, hours, 1.0),
                intervals("b-1", end, 2, 7.0),  # November, local
            ]
        ),
    )
    write_table(lake, METERS, meters([{"meter_id": "b-1", "tariff_id": "berlin"}]))

    result = run_billing(lake, tariffs, "2026-10", run_id="bill-1", now=NOW)

    (bill,) = result.bills.iter_rows(named=True)
    assert bill["intervals"] == hours
    assert bill["energy_import_kwh"] == pytest.approx(float(hours))
    assert bill["currency"] == "EUR"
    assert bill["total_amount"] == cents(hours * Decimal("0.3"))  # 745 x 0.3 = 223.50


def test_a_rerun_writes_nothing_when_lines_share_a_rank(tmp_path: Path) -> None:
    # several export-credit lines per bill (one per TOU period) must keep their order
    tariffs = {
        "nb": write_tariff(
            tmp_path / "tariffs",
            "nb",
            """
            [energy]
            prices = { peak = 0.6, flat = 0.4, valley = 0.3 }

            [tou]
            [[tou.seasons]]
            name = "all-year"
            months = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]
            all = { peak = ["08:00-12:00"], flat = ["12:00-22:00"], valley = ["22:00-08:00"] }

            [export]
            mode = "net_billing"
            sell_price = { peak = 0.2, flat = 0.15, valley = 0.1 }
            """,
        )
    }
    lake = init_lake(tmp_path / "lake")
    ids = [f"p-{i:02d}" for i in range(30)]
    write_table(
        lake, INTERVALS, pl.concat(intervals(m, local(2026, 10, 1), 48, 1.0, 0.5) for m in ids)
    )
    write_table(lake, METERS, meters([{"meter_id": m, "tariff_id": "nb"} for m in ids]))
    run_billing(lake, tariffs, "2026-10", run_id="bill-1", now=NOW)
    before = bill_files(lake)

    for attempt in range(3):
        again = run_billing(lake, tariffs, "2026-10", run_id=f"bill-{attempt + 2}", now=NOW)
        assert again.bills.is_empty()
    assert bill_files(lake) == before
