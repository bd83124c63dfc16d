"""Load profiles (``meterlake bill --load``): reading the CSV into UTC intervals, every refusal,
and the month-by-month bill with hand-computed amounts."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path

import polars as pl
import pytest

from meterlake.config.errors import InputFileError, PermanentError
from meterlake.tariffs.model import Tariff
from meterlake.tariffs.profile import METER, bill_load_profile, read_load_profile
from tests.tariffs.helpers import FIXED, FLAT, RATE, cents, money, write_tariff

UTC = dt.UTC


@pytest.fixture
def flat(tmp_path: Path) -> Tariff:
    """0.5283 CNY/kWh and 10 CNY a month, Asia/Shanghai."""
    return write_tariff(tmp_path / "tariffs", "flat", FLAT)


@pytest.fixture
def berlin(tmp_path: Path) -> Tariff:
    return write_tariff(
        tmp_path / "tariffs", "berlin", "[energy]\nprices = { all = 0.3 }\n", "Europe/Berlin"
    )


def write_csv(path: Path, rows: Iterable[tuple[str, str]], header: str = "timestamp,kwh") -> Path:
    path.write_text(header + "\n" + "".join(f"{t},{k}\n" for t, k in rows), encoding="utf-8")
    return path


def naive_rows(
    start: dt.datetime, count: int, kwh: float, step: dt.timedelta = dt.timedelta(hours=1)
) -> list[tuple[str, str]]:
    """``count`` rows of local wall-clock timestamps (no offset) from naive ``start``."""
    return [((start + i * step).strftime("%Y-%m-%d %H:%M"), f"{kwh}") for i in range(count)]


# --- reading ---------------------------------------------------------------------------------


def test_hourly_naive_timestamps_are_the_tariffs_local_time(tmp_path: Path, flat: Tariff) -> None:
    path = write_csv(
        tmp_path / "hourly.csv",
        [("2026-10-01 00:00", "1.5"), ("2026-10-01 01:00", "0"), ("2026-10-01 02:00", "-0.75")],
    )

    frame = read_load_profile(path, flat)

    assert frame.columns == [
        "meter_id",
        "interval_start",
        "interval_minutes",
        "energy_import_kwh",
        "energy_export_kwh",
        "status",
    ]
    assert frame.schema["interval_start"] == pl.Datetime("us", "UTC")
    assert set(frame["meter_id"]) == {METER}
    # local midnight in Asia/Shanghai (UTC+8) is 16:00 UTC the day before
    assert frame["interval_start"].to_list() == [
        dt.datetime(2026, 9, 30, 16, tzinfo=UTC),
        dt.datetime(2026, 9, 30, 17, tzinfo=UTC),
        dt.datetime(2026, 9, 30, 18, tzinfo=UTC),
    ]
    assert set(frame["interval_minutes"]) == {60}
    # negative kWh is export; import and export are never negative
    assert frame["energy_import_kwh"].to_list() == [1.5, 0.0, 0.0]
    assert frame["energy_export_kwh"].to_list() == [0.0, 0.0, 0.75]
    assert set(frame["status"]) == {"actual"}


def test_quarter_hour_rows_in_any_order(tmp_path: Path, flat: Tariff) -> None:
    rows = naive_rows(dt.datetime(2026, 10, 1), 8, 0.25, dt.timedelta(minutes=15))
    path = write_csv(tmp_path / "quarter.csv", reversed(rows))

    frame = read_load_profile(path, flat)

    assert set(frame["interval_minutes"]) == {15}
    assert frame.height == 8
    assert frame["interval_start"].is_sorted()
    assert frame["interval_start"][0] == dt.datetime(2026, 9, 30, 16, tzinfo=UTC)
    assert frame["interval_start"][-1] == dt.datetime(2026, 9, 30, 17, 45, tzinfo=UTC)


def test_timestamps_with_an_offset_are_taken_as_given(tmp_path: Path, berlin: Tariff) -> None:
    path = write_csv(
        tmp_path / "aware.csv",
        [
            ("2026-10-01T00:00:00+08:00", "1"),
            ("2026-09-30T17:00:00Z", "2"),
            ("2026-10-01T02:00:00+0800", "3"),
            ("2026-09-30T14:00:00-05:00", "-4"),
        ],
    )

    frame = read_load_profile(path, berlin)  # the tariff's zone plays no part

    assert frame["interval_start"].to_list() == [
        dt.datetime(2026, 9, 30, hour, tzinfo=UTC) for hour in (16, 17, 18, 19)
    ]
    assert frame["energy_import_kwh"].to_list() == [1.0, 2.0, 3.0, 0.0]
    assert frame["energy_export_kwh"].to_list() == [0.0, 0.0, 0.0, 4.0]
    assert set(frame["interval_minutes"]) == {60}


def test_a_local_time_repeated_by_dst_is_its_first_occurrence(
    tmp_path: Path, berlin: Tariff
) -> None:
    # 25 October 2026: Berlin's clocks go from 03:00 CEST back to 02:00 CET
    path = write_csv(
        tmp_path / "fall.csv",
        [("2026-10-25 01:00", "1"), ("2026-10-25 02:00", "2"), ("2026-10-25 03:00", "3")],
    )

    frame = read_load_profile(path, berlin)

    assert frame["interval_start"].to_list() == [
        dt.datetime(2026, 10, 24, 23, tzinfo=UTC),
        dt.datetime(2026, 10, 25, 0, tzinfo=UTC),  # 02:00 CEST, the first 02:00
        dt.datetime(2026, 10, 25, 2, tzinfo=UTC),  # 03:00 CET
    ]


def test_hourly_local_time_in_a_half_hour_zone(tmp_path: Path) -> None:
    """Naive hourly rows in Asia/Kolkata (UTC+05:30) are the tariff's local hours: on the
    hourly grid of local time, although not of UTC."""
    india = write_tariff(
        tmp_path / "tariffs", "india", "[energy]\nprices = { all = 6.5 }\n", "Asia/Kolkata"
    )
    path = write_csv(tmp_path / "india.csv", naive_rows(dt.datetime(2026, 10, 1), 3, 1.0))

    frame = read_load_profile(path, india)

    assert frame["interval_start"][0] == dt.datetime(2026, 9, 30, 18, 30, tzinfo=UTC)
    assert set(frame["interval_minutes"]) == {60}
    (month,) = bill_load_profile(frame, india)["months"]
    assert month["month"] == "2026-10"
    assert money(month["total"]) == cents(3 * Decimal("6.5"))


def refusal_cases() -> list[tuple[str, str, str]]:
    """(name, CSV text, the message after ``<path>``), one per refusal."""
    head = "timestamp,kwh\n"
    return [
        ("missing-column", "time,kwh\n2026-10-01 00:00,1\n",
         ": a load profile needs the columns timestamp,kwh; missing ['timestamp']"),
        ("missing-both", "a,b\n1,2\n",
         ": a load profile needs the columns timestamp,kwh; missing ['kwh', 'timestamp']"),
        ("bad-number", head + "2026-10-01 00:00,1\n2026-10-01 01:00,2\n2026-10-01 02:00,abc\n",
         ":4: kwh 'abc' is not a number"),
        ("infinite", head + "2026-10-01 00:00,1\n2026-10-01 01:00,inf\n",
         ":3: kwh 'inf' is not a number"),
        ("bad-timestamp", head + "2026-10-01 00:00,1\nyesterday,1\n",
         ":3: timestamp 'yesterday' is not a date and time such as 2018-01-01 00:00"),
        ("off-grid", head + "2026-10-01 00:00,1\n2026-10-01 01:00,1\n2026-10-01 02:30,1\n"
         "2026-10-01 03:30,1\n",
         ":4: 2026-10-01 02:30 is not on the 60-minute grid"),
        ("seven-minutes", head + "2026-10-01 00:00,1\n2026-10-01 00:07,1\n2026-10-01 00:14,1\n",
         ": rows are 7 minutes apart; use 5, 15, 30 or 60-minute energy"),
        ("one-row", head + "2026-10-01 00:00,1\n", ": a load profile needs at least two rows"),
        ("mixed", head + "2026-10-01 00:00,1\n2026-10-01T01:00:00+08:00,1\n",
         ": mix of timestamps with and without a UTC offset"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("text", "message"),
    [pytest.param(text, message, id=name) for name, text, message in refusal_cases()],
)
def test_refusals_name_the_file_the_line_and_the_fix(
    tmp_path: Path, flat: Tariff, text: str, message: str
) -> None:
    path = tmp_path / "profile.csv"
    path.write_text(text, encoding="utf-8")

    with pytest.raises(InputFileError) as info:
        read_load_profile(path, flat)

    assert str(info.value) == f"{path}{message}"
    assert isinstance(info.value, PermanentError)  # the CLI exits 2


def test_a_repeated_timestamp_is_refused(tmp_path: Path, flat: Tariff) -> None:
    path = write_csv(
        tmp_path / "twice.csv",
        [
            ("2026-10-01 00:00", "1"),
            ("2026-10-01 01:00", "1"),
            ("2026-10-01 02:00", "1"),
            ("2026-10-01 01:00", "2"),
        ],
    )

    with pytest.raises(InputFileError) as info:
        read_load_profile(path, flat)

    # either line of the pair may be named
    assert re.fullmatch(
        re.escape(str(path)) + r":(3|5): timestamp 2026-10-01 01:00 is given twice",
        str(info.value),
    )


def test_the_same_instant_twice_in_different_notations_is_refused(
    tmp_path: Path, flat: Tariff
) -> None:
    path = write_csv(
        tmp_path / "twice.csv",
        [("2026-10-01T00:00:00+08:00", "1"), ("2026-09-30T16:00:00Z", "1")],
    )

    with pytest.raises(InputFileError, match="is given twice"):
        read_load_profile(path, flat)


def test_a_local_time_skipped_by_dst_is_refused(tmp_path: Path, berlin: Tariff) -> None:
    # 29 March 2026: Berlin's clocks jump from 02:00 to 03:00
    path = write_csv(
        tmp_path / "spring.csv",
        [("2026-03-29 01:00", "1"), ("2026-03-29 02:00", "1"), ("2026-03-29 03:00", "1")],
    )

    with pytest.raises(InputFileError) as info:
        read_load_profile(path, berlin)

    assert str(info.value) == (
        f"{path}:3: 2026-03-29 02:00 does not exist in Europe/Berlin (a DST change skips it); "
        "give timestamps with an offset"
    )


def test_an_unreadable_file_is_refused(tmp_path: Path, flat: Tariff) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(InputFileError, match=re.escape(f"{missing}: cannot read the load profile")):
        read_load_profile(missing, flat)


# --- billing ---------------------------------------------------------------------------------


MONTH_FIELDS = {
    "month",
    "energy_charge",
    "demand_charge",
    "fixed_charge",
    "minimum_charge_adjustment",
    "levies",
    "export_credit",
    "tax",
    "total",
    "energy_import_kwh",
    "energy_export_kwh",
    "lines",
}


def two_months(tmp_path: Path, step: dt.timedelta) -> Path:
    """October and November 2026 in local time, 1.5 kWh an hour."""
    per_step = 1.5 * (step / dt.timedelta(hours=1))
    count = int(dt.timedelta(days=61) / step)
    return write_csv(
        tmp_path / f"load-{int(step.total_seconds())}.csv",
        naive_rows(dt.datetime(2026, 10, 1), count, per_step, step),
    )


def test_a_flat_tariff_with_a_fixed_charge_over_two_months(tmp_path: Path, flat: Tariff) -> None:
    path = two_months(tmp_path, dt.timedelta(hours=1))

    result = bill_load_profile(read_load_profile(path, flat), flat)

    assert set(result) == {"tariff", "tariff_version", "currency", "months", "total"}
    assert (result["tariff"], result["tariff_version"], result["currency"]) == (
        "flat",
        flat.fingerprint,
        "CNY",
    )
    october, november = result["months"]
    assert (october["month"], november["month"]) == ("2026-10", "2026-11")
    expected = {}
    for month, hours in ((october, 31 * 24), (november, 30 * 24)):
        assert set(month) == MONTH_FIELDS
        kwh = Decimal("1.5") * hours  # 1116 and 1080 kWh
        energy = cents(kwh * RATE)  # 589.5828 -> 589.58; 570.564 -> 570.56
        assert month["energy_import_kwh"] == pytest.approx(float(kwh))
        assert month["energy_export_kwh"] == 0.0
        assert money(month["energy_charge"]) == energy
        assert money(month["fixed_charge"]) == FIXED
        for field in ("demand_charge", "minimum_charge_adjustment", "export_credit", "levies"):
            assert month[field] == 0.0
        assert money(month["total"]) == energy + FIXED
        expected[month["month"]] = energy + FIXED
        assert [line["code"] for line in month["lines"]] == ["energy", "fixed"]
        energy_line = month["lines"][0]
        assert energy_line["quantity"] == pytest.approx(float(kwh))
        assert energy_line["unit"] == "kWh"
        assert Decimal(str(energy_line["rate"])) == RATE
        assert money(energy_line["amount"]) == energy
        assert money(sum(line["amount"] for line in month["lines"])) == money(month["total"])
    assert expected == {"2026-10": Decimal("599.58"), "2026-11": Decimal("580.56")}
    assert money(result["total"]) == sum(expected.values())
    assert money(result["total"]) == sum(money(m["total"]) for m in result["months"])
    json.dumps(result)  # what the CLI writes


def test_quarter_hours_and_hours_of_the_same_energy_bill_the_same(
    tmp_path: Path, flat: Tariff
) -> None:
    hourly = bill_load_profile(
        read_load_profile(two_months(tmp_path, dt.timedelta(hours=1)), flat), flat
    )
    quarter = read_load_profile(two_months(tmp_path, dt.timedelta(minutes=15)), flat)
    assert set(quarter["interval_minutes"]) == {15}

    assert money(bill_load_profile(quarter, flat)["total"]) == money(hourly["total"])


def test_months_are_the_tariffs_local_months(tmp_path: Path, flat: Tariff) -> None:
    path = write_csv(
        tmp_path / "edge.csv",
        [("2026-09-30T15:00:00Z", "2"), ("2026-09-30T16:00:00Z", "4")],  # 23:00 and 00:00 local
    )

    result = bill_load_profile(read_load_profile(path, flat), flat)

    months = {m["month"]: m for m in result["months"]}
    assert sorted(months) == ["2026-09", "2026-10"]
    assert months["2026-09"]["energy_import_kwh"] == pytest.approx(2.0)
    assert months["2026-10"]["energy_import_kwh"] == pytest.approx(4.0)
    assert money(months["2026-10"]["energy_charge"]) == cents(4 * RATE)  # 2.1132 -> 2.11


def test_demand_minimum_and_export_credit(tmp_path: Path) -> None:
    tariff = write_tariff(
        tmp_path / "tariffs",
        "demand",
        """
        [energy]
        prices = { all = 0.2 }

        [[demand]]
        name = "maximum demand"
        price = 5.0

        [minimum]
        amount = 50.0
        per = "month"

        [export]
        mode = "net_billing"
        sell_price = 0.05
        """,
    )
    path = write_csv(
        tmp_path / "quarter.csv",
        [
            ("2026-10-01 00:00", "2.0"),  # 8 kW over the quarter hour
            ("2026-10-01 00:15", "1.0"),
            ("2026-10-01 00:30", "-4.0"),
            ("2026-10-01 00:45", "0.5"),
        ],
    )

    (month,) = bill_load_profile(read_load_profile(path, tariff), tariff)["months"]

    energy = cents(Decimal("3.5") * Decimal("0.2"))  # 0.70
    demand = cents(8 * Decimal("5.0"))  # 40.00
    credit = -cents(4 * Decimal("0.05"))  # -0.20
    # the minimum counts energy after export credits, demand and fixed charges (as SAM)
    minimum = Decimal("50.00") - (energy + demand + credit)  # 9.50
    assert money(month["energy_charge"]) == energy
    assert money(month["demand_charge"]) == demand
    assert money(month["minimum_charge_adjustment"]) == minimum
    assert money(month["export_credit"]) == credit
    assert month["fixed_charge"] == 0.0
    assert money(month["total"]) == energy + demand + minimum + credit  # 50.00
    assert month["energy_export_kwh"] == pytest.approx(4.0)
    codes = [line["code"] for line in month["lines"]]
    assert codes == ["energy", "demand", "min_adjustment", "export_credit"]
