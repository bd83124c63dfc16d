"""Pre-release checks of bills: held for review with reasons, released by a person.

The checks themselves (:func:`hold_reasons`) on hand-made frames; then bill runs on a lake whose
September (or last October) bills give the meters a history, an open alert, estimated intervals,
and the release through ``meterlake bill --release`` and the catalogue's ``bills_current``.
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from meterlake.config.errors import PermanentError
from meterlake.config.schemas import ALERTS, BILL_REVIEWS, BILLS, INTERVALS
from meterlake.config.settings import BillSettings
from meterlake.storage.catalog import connect_catalog, refresh_catalog
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table
from meterlake.tariffs.bill_checks import hold_reasons
from meterlake.tariffs.bill_job import release_bill, run_billing
from meterlake.tariffs.model import Tariff
from tests.cli_runner import run_cli
from tests.tariffs.helpers import FLAT, write_tariff
from tests.tariffs.test_bill_job import NOW, fleet_lake, intervals, local

NO_ALERTS = pl.DataFrame(
    schema={"meter_id": pl.String, "rule": pl.String, "severity": pl.String, "message": pl.String}
)


def bills_frame(totals: dict[str, str], estimated: dict[str, float] | None = None) -> pl.DataFrame:
    estimated = estimated or {}
    return pl.DataFrame(
        {
            "meter_id": list(totals),
            "period": ["2026-10"] * len(totals),
            "total_amount": [Decimal(v) for v in totals.values()],
            "currency": ["CNY"] * len(totals),
            "estimated_share": [estimated.get(m, 0.0) for m in totals],
        }
    )


def history_frame(rows: list[tuple[str, str, str]]) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "meter_id": [r[0] for r in rows],
            "period": [r[1] for r in rows],
            "total_amount": [Decimal(r[2]) for r in rows],
        },
        schema={"meter_id": pl.String, "period": pl.String, "total_amount": pl.Decimal(18, 4)},
    )


def reasons_of(frame: pl.DataFrame) -> dict[str, list[str]]:
    return {m: list(r) for m, r in frame.iter_rows()}


def test_a_bill_within_its_history_is_released() -> None:
    history = history_frame([("m1", "2025-10", "100.00"), ("m1", "2026-09", "120.00")])
    held = hold_reasons(bills_frame({"m1": "199.99"}), history, NO_ALERTS, BillSettings())
    assert reasons_of(held) == {"m1": []}


def test_same_month_last_year_is_the_reference_when_there_is_one() -> None:
    # 3x the recent mean but only 1.5x last October: released
    history = history_frame(
        [("m1", "2025-10", "200.00")] + [("m1", f"2026-0{m}", "100.00") for m in (7, 8, 9)]
    )
    held = hold_reasons(bills_frame({"m1": "300.00"}), history, NO_ALERTS, BillSettings())
    assert reasons_of(held) == {"m1": []}


def test_without_last_year_the_mean_of_the_recent_bills_is_the_reference() -> None:
    history = history_frame(
        [("m1", "2026-05", "900.00")] + [("m1", f"2026-0{m}", "100.00") for m in (7, 8, 9)]
    )
    held = hold_reasons(bills_frame({"m1": "250.00"}), history, NO_ALERTS, BillSettings())
    assert reasons_of(held) == {
        "m1": ["total CNY 250.00 is 2.5x the mean of the meter's last bills (CNY 100.00)"]
    }
    # the ratio is a setting
    relaxed = hold_reasons(
        bills_frame({"m1": "250.00"}), history, NO_ALERTS, BillSettings(high_bill_ratio=3.0)
    )
    assert reasons_of(relaxed) == {"m1": []}


def test_a_new_meter_without_history_is_not_a_high_bill() -> None:
    held = hold_reasons(
        bills_frame({"m9": "5000.00"}), history_frame([]), NO_ALERTS, BillSettings()
    )
    assert reasons_of(held) == {"m9": []}


def test_estimated_negative_and_alert_reasons_add_up() -> None:
    alerts = pl.DataFrame(
        {
            "meter_id": ["m1", "m1", "m2"],
            "rule": ["tamper", "tier-90", "offline"],
            "severity": ["critical", "info", "warning"],
            "message": ["no energy registered while the supply was on", "90% of tier 1", "4 h"],
        }
    )
    bills = bills_frame({"m1": "-3.20", "m2": "80.00"}, estimated={"m1": 0.8, "m2": 0.5})
    held = hold_reasons(bills, history_frame([]), alerts, BillSettings())
    assert reasons_of(held) == {
        "m1": [
            "negative total (CNY -3.20)",
            "80% of the energy is estimated",
            "open critical alert 'tamper': no energy registered while the supply was on",
        ],
        "m2": [],  # 50% estimated is not more than 0.5; a warning alert does not hold
    }
    by_rule = hold_reasons(
        bills, history_frame([]), alerts, BillSettings(hold_alert_rules=("offline",))
    )
    assert reasons_of(by_rule)["m2"] == ["open warning alert 'offline': 4 h"]


# --- on a lake ------------------------------------------------------------------------------


def current_status(lake: Path, meter_id: str, period: str) -> list[tuple[str, str | None]]:
    """``status, released_by`` of the meter's bill as the catalogue's ``bills_current`` shows it."""
    refresh_catalog(lake)
    with connect_catalog(lake) as con:
        rows = con.execute(
            "SELECT status, released_by FROM bills_current WHERE meter_id = ? AND period = ?",
            [meter_id, period],
        ).fetchall()
    return [(str(status), by) for status, by in rows]


@pytest.fixture
def flat(tmp_path: Path) -> dict[str, Tariff]:
    return {"flat": write_tariff(tmp_path / "tariffs", "flat", FLAT)}


def with_september(lake: Path, kwh_per_hour: dict[str, float]) -> None:
    """Each meter's September intervals (its history)."""
    sep = local(2026, 9, 1)
    write_table(
        lake,
        INTERVALS,
        pl.concat([intervals(m, sep, 30 * 24, kwh) for m, kwh in kwh_per_hour.items()]),
    )


def test_a_bill_far_above_last_month_is_held_and_released_by_a_person(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    lake = fleet_lake(tmp_path / "lake")  # October: m-1 0.5 kWh/h, m-2 1.0, m-3 0.4
    with_september(lake, {"m-1": 0.5, "m-2": 0.2, "m-3": 0.4})  # m-2 used a fifth of it
    september = run_billing(lake, flat, "2026-09", run_id="sep", now=NOW)
    assert set(september.bills["status"]) == {"released"}

    october = run_billing(lake, flat, "2026-10", run_id="oct", now=NOW)
    status = {
        r["meter_id"]: (r["status"], r["hold_reasons"]) for r in october.bills.iter_rows(named=True)
    }
    assert status["m-1"] == ("released", [])
    assert status["m-3"] == ("released", [])
    held_status, reasons = status["m-2"]
    assert held_status == "held"
    assert len(reasons) == 1
    assert (
        reasons[0].startswith("total CNY ") and "x the mean of the meter's last bills" in reasons[0]
    )

    bill_id = october.bills.filter(pl.col("meter_id") == "m-2")["bill_id"][0]
    shown = current_status(lake, "m-2", "2026-10")
    assert shown == [("held", None)]

    assert release_bill(lake, bill_id, reviewer="li.wei", note="heat pump", now=NOW)
    assert not release_bill(lake, bill_id, reviewer="li.wei", note=None, now=NOW)  # once
    reviews = scan(lake, BILL_REVIEWS).collect()
    assert reviews.select("bill_id", "action", "reviewer", "note").rows() == [
        (bill_id, "released", "li.wei", "heat pump")
    ]
    # the bill itself is not rewritten; the catalogue shows it released
    stored = scan(lake, BILLS).filter(pl.col("bill_id") == bill_id).collect()
    assert stored["status"].to_list() == ["held"]
    shown = current_status(lake, "m-2", "2026-10")
    assert shown == [("released", "li.wei")]


def test_a_recent_window_reaching_last_year_counts_that_bill_once(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    # with the last 12 bills as "recent", the same month last year is in both references
    lake = fleet_lake(tmp_path / "lake")
    write_table(lake, INTERVALS, intervals("m-1", local(2025, 10, 1), 31 * 24, 0.5))
    run_billing(lake, flat, "2025-10", run_id="last-year", now=NOW)

    settings = BillSettings(high_bill_recent=12)
    october = run_billing(lake, flat, "2026-10", run_id="oct", now=NOW, settings=settings)

    assert sorted(october.bills["meter_id"]) == ["m-1", "m-2", "m-3"]
    stored = scan(lake, BILLS).filter(pl.col("period") == "2026-10").collect()
    assert sorted(stored["meter_id"]) == ["m-1", "m-2", "m-3"]
    assert october.bills.filter(pl.col("meter_id") == "m-1")["status"].to_list() == ["released"]


def test_an_open_critical_alert_holds_the_bill_until_it_is_resolved(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    lake = fleet_lake(tmp_path / "lake")
    alert = {
        "alert_id": "al-1",
        "rule": "tamper",
        "severity": "critical",
        "meter_id": "m-3",
        "state": "raised",
        "message": "no energy registered while the supply was on (221 V)",
        "values_json": "{}",
    }
    write_table(
        lake,
        ALERTS,
        pl.DataFrame([{**alert, "ts": NOW - dt.timedelta(days=3)}], schema=ALERTS.schema),
    )
    first = run_billing(lake, flat, "2026-10", run_id="b1", now=NOW)
    held = first.bills.filter(pl.col("status") == "held")
    assert held["meter_id"].to_list() == ["m-3"]
    assert held["hold_reasons"][0].to_list() == [
        "open critical alert 'tamper': no energy registered while the supply was on (221 V)"
    ]
    # resolved: a new October bill (after corrected data) is released
    resolved = {**alert, "state": "resolved", "ts": NOW - dt.timedelta(days=1)}
    write_table(lake, ALERTS, pl.DataFrame([resolved], schema=ALERTS.schema))
    write_table(lake, INTERVALS, intervals("m-3", local(2026, 10, 5), 4, 0.2, version=2))
    second = run_billing(lake, flat, "2026-10", run_id="b2", now=NOW)
    assert second.bills.select("meter_id", "status", "version").rows() == [("m-3", "released", 2)]


def test_releasing_an_unknown_or_superseded_bill_is_refused(
    tmp_path: Path, flat: dict[str, Tariff]
) -> None:
    lake = fleet_lake(tmp_path / "lake")
    first = run_billing(lake, flat, "2026-10", run_id="b1", now=NOW)
    with pytest.raises(PermanentError, match="no bill 'b-nope' in the lake"):
        release_bill(lake, "b-nope", reviewer="x", note=None, now=NOW)
    old = first.bills.filter(pl.col("meter_id") == "m-1")["bill_id"][0]
    write_table(lake, INTERVALS, intervals("m-1", local(2026, 10, 5), 4, 0.9, version=2))
    second = run_billing(lake, flat, "2026-10", run_id="b2", now=NOW)
    new = second.bills["bill_id"][0]
    with pytest.raises(PermanentError, match=f"superseded by {new}"):
        release_bill(lake, old, reviewer="x", note=None, now=NOW)
    # a released bill has nothing to release
    assert not release_bill(lake, new, reviewer="x", note=None, now=NOW)


def test_bill_release_from_the_command_line(tmp_path: Path, flat: dict[str, Tariff]) -> None:
    lake = fleet_lake(tmp_path / "lake")
    with_september(lake, {"m-1": 0.1, "m-2": 1.0, "m-3": 0.4})
    tariffs_dir = tmp_path / "tariffs"
    run_cli("bill", "--lake", str(lake), "--period", "2026-09", "--tariffs", str(tariffs_dir))
    done = run_cli(
        "bill", "--lake", str(lake), "--period", "2026-10", "--tariffs", str(tariffs_dir)
    )
    assert "1 held for review" in done.stdout
    bill_id = scan(lake, BILLS).filter(pl.col("status") == "held").collect()["bill_id"].to_list()
    assert len(bill_id) == 1
    assert bill_id[0] in done.stdout
    released = run_cli(
        "bill", "--lake", str(lake), "--release", bill_id[0], "--by", "ops", "--note", "ok"
    )
    assert f"released bill {bill_id[0]} (by ops)" in released.stdout
    again = run_cli("bill", "--lake", str(lake), "--release", bill_id[0])
    assert "is not held: nothing to release" in again.stdout
