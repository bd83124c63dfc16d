"""Import of readings and intervals from CSV/Parquet: good rows conform, bad rows are kept."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import polars as pl
import pytest

from meterlake.config.errors import InputFileError
from meterlake.config.schemas import INTERVALS, METER_EVENTS, METERS, QUARANTINE, READINGS
from meterlake.ingest.files import read_import_file
from meterlake.storage.writer import conform

NOW = dt.datetime(2026, 11, 1, 12, 0, tzinfo=dt.UTC)
UTC = dt.UTC


def _csv(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_good_rows_land_and_each_bad_row_is_kept_with_its_reason(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "r.csv",
        "meter_id,ts,quantity,value,quality,source\n"
        "m1,2026-10-01T00:15:00Z,energy_import_kwh,12.5,,\n"
        "../etc,2026-10-01T00:15:00Z,energy_import_kwh,1,,\n"
        "m2,yesterday,energy_import_kwh,1,,\n"
        "m2,2026-10-01T00:15:00Z,kwh,abc,,\n"
        "m3,2026-10-01T08:30:00+08:00,power_w,512,clock_invalid,gw-7\n"
        "m3,2026-10-01T08:45:00+08:00,power_w,5,bogus,\n",
    )
    result = read_import_file(path, received_at=NOW)
    assert result.kind == "readings"
    conform(result.good, READINGS)
    conform(result.rejected, QUARANTINE)
    assert result.good["meter_id"].to_list() == ["m1", "m3"]
    assert result.good["ts"].to_list() == [
        dt.datetime(2026, 10, 1, 0, 15, tzinfo=UTC),
        dt.datetime(2026, 10, 1, 0, 30, tzinfo=UTC),
    ]
    assert result.good["source"].to_list() == ["import:r.csv", "gw-7"]
    assert result.good["quality"].to_list() == [[], ["clock_invalid"]]
    assert result.good["received_at"].to_list() == [NOW, NOW]

    rejected = result.rejected
    assert rejected["source"].to_list() == [f"import:r.csv:{n}" for n in (3, 4, 5, 7)]
    reasons = rejected["reason"].to_list()
    assert "meter_id '../etc' is not allowed" in reasons[0]
    assert "ts 'yesterday' is not an ISO 8601 timestamp" in reasons[1]
    assert "quantity 'kwh' is not a canonical quantity" in reasons[2]
    assert "value 'abc' is not a number" in reasons[2]  # every problem of a row is named
    assert "quality 'bogus' has unknown flags" in reasons[3]
    # the row is kept verbatim, as text
    first = json.loads(rejected["payload"][0])
    assert first == {
        "meter_id": "../etc",
        "ts": "2026-10-01T00:15:00Z",
        "quantity": "energy_import_kwh",
        "value": "1",
        "quality": None,
        "source": None,
    }


def test_naive_timestamps_need_a_zone_and_are_read_in_it(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "naive.csv",
        "meter_id,ts,quantity,value\nm1,2026-10-01 08:15:00,energy_import_kwh,1.0\n"
        "m1,2026-10-01 08:30,energy_import_kwh,1.1\n",
    )
    without = read_import_file(path, received_at=NOW)
    assert without.good.height == 0
    assert all("pass --tz" in r for r in without.rejected["reason"])

    shanghai = read_import_file(path, received_at=NOW, tz="Asia/Shanghai")
    assert shanghai.rejected.height == 0
    assert shanghai.good["ts"].to_list() == [
        dt.datetime(2026, 10, 1, 0, 15, tzinfo=UTC),
        dt.datetime(2026, 10, 1, 0, 30, tzinfo=UTC),
    ]


def test_local_times_that_dst_skips_or_repeats_are_refused_not_guessed(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "dst.csv",
        "meter_id,ts,quantity,value\n"
        "m1,2026-03-29 02:30,power_w,1\n"  # skipped in Europe/Berlin
        "m1,2026-10-25 02:30,power_w,2\n"  # happens twice
        "m1,2026-10-25 04:30,power_w,3\n",
    )
    result = read_import_file(path, received_at=NOW, tz="Europe/Berlin")
    assert result.good["value"].to_list() == [3.0]
    assert result.good["ts"].to_list() == [dt.datetime(2026, 10, 25, 3, 30, tzinfo=UTC)]
    assert all(
        "does not exist or is ambiguous in Europe/Berlin" in r for r in result.rejected["reason"]
    )


def test_nan_is_kept_and_flagged_never_zeroed(tmp_path: Path) -> None:
    path = _csv(
        tmp_path, "nan.csv", "meter_id,ts,quantity,value\nm1,2026-10-01T00:00Z,power_w,NaN\n"
    )
    result = read_import_file(path, received_at=NOW)
    assert result.good["quality"].to_list() == [["invalid_value"]]
    assert result.good["value"].is_nan().to_list() == [True]


def test_parquet_with_typed_columns(tmp_path: Path) -> None:
    path = tmp_path / "typed.parquet"
    pl.DataFrame(
        {
            "Meter_ID": ["m1", "m2"],
            "ts": [dt.datetime(2026, 10, 1, 8, 0), dt.datetime(2026, 10, 1, 8, 15)],
            "quantity": ["energy_import_kwh", "energy_export_kwh"],
            "value": [1.5, 2.5],
        }
    ).with_columns(pl.col("ts").dt.replace_time_zone("Asia/Shanghai")).write_parquet(path)
    result = read_import_file(path, received_at=NOW)
    assert result.rejected.height == 0
    assert result.good["ts"].to_list() == [
        dt.datetime(2026, 10, 1, 0, 0, tzinfo=UTC),
        dt.datetime(2026, 10, 1, 0, 15, tzinfo=UTC),
    ]
    assert result.good["value"].to_list() == [1.5, 2.5]


def test_interval_files(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "load_profile.csv",
        "meter_id,interval_start,energy_import_kwh,energy_export_kwh\n"
        "m1,2026-10-01T00:00:00Z,0.25,0\n"
        "m1,2026-10-01T00:15:00Z,0.30,\n"
        "m1,2026-10-01T00:20:00Z,0.30,0\n"
        "m1,2026-10-01T00:30:00Z,lots,0\n"
        "m1,2026-10-01T00:45:00Z,0.1,x\n",
    )
    result = read_import_file(path, received_at=NOW)
    again = read_import_file(path, received_at=NOW + dt.timedelta(hours=1))
    assert result.kind == "intervals"
    conform(result.good, INTERVALS)
    assert result.good["energy_import_kwh"].to_list() == [0.25, 0.30]
    assert result.good["energy_export_kwh"].to_list() == [0.0, None]
    assert set(result.good["status"]) == {"actual"}
    assert result.good["run_id"].to_list() == again.good["run_id"].to_list()  # re-import: same rows
    reasons = result.rejected["reason"].to_list()
    assert reasons == [
        "interval_start is not on the interval grid",
        "energy_import_kwh 'lots' is not a finite number",
        "energy_export_kwh 'x' is not a finite number",
    ]


def test_interval_length_from_the_file_or_the_option(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "hourly.csv",
        "meter_id,interval_start,energy_import_kwh\nm1,2026-10-01T01:00:00Z,1.0\n",
    )
    assert read_import_file(path, received_at=NOW, interval_minutes=60).good[
        "interval_minutes"
    ].to_list() == [60]
    with pytest.raises(InputFileError, match="use one of"):
        read_import_file(path, received_at=NOW, interval_minutes=7)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("cols.csv", "a,b\n1,2\n", "fit neither form"),
        ("notes.txt", "hello", "unknown file type"),
        ("broken.parquet", "PAR1 not really", "cannot be read"),
    ],
)
def test_files_that_cannot_be_read_say_why(
    tmp_path: Path, name: str, content: str, message: str
) -> None:
    path = _csv(tmp_path, name, content)
    with pytest.raises(InputFileError, match=message):
        read_import_file(path, received_at=NOW)


def test_unknown_zone_is_refused(tmp_path: Path) -> None:
    path = _csv(tmp_path, "r.csv", "meter_id,ts,quantity,value\n")
    with pytest.raises(InputFileError, match="not an IANA time zone"):
        read_import_file(path, received_at=NOW, tz="Mars/Olympus")


# --- meter master data and meter events ----------------------------------------------------


def test_meter_master_data_lands_typed_and_bad_cells_are_named(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "meters.csv",
        "Meter_ID,account,meter_group,timezone,import_only,max_power_kw,wrap_kwh,tariff_id,"
        "billing_day,tier_year_start,pv,prepaid,vacant,feeder\n"
        "m1,acc-1,residential,Asia/Shanghai,Yes,11,99999.99,cn-sh,1,01-01,0,no,,f-7\n"
        "m2, ,,,,,,,,,,,,\n"
        "m3,acc-3,,Mars/Olympus,maybe,-3,inf,,31,02-30,,,,\n"
        "m4,acc-4,,,true,,,,29,1-1,,,,\n",
    )
    result = read_import_file(path, received_at=NOW)
    assert result.kind == "meters"
    conform(result.good, METERS)
    good = result.good.sort("meter_id")
    assert good.row(0, named=True) == {
        "meter_id": "m1",
        "account": "acc-1",
        "meter_group": "residential",
        "timezone": "Asia/Shanghai",
        "import_only": True,
        "max_power_kw": 11.0,
        "wrap_kwh": 99999.99,
        "tariff_id": "cn-sh",
        "billing_day": 1,
        "tier_year_start": "01-01",
        "pv": False,
        "prepaid": False,
        "vacant": None,
        "feeder": "f-7",
        "updated_at": NOW,
    }
    # empty cells are "the default": null, never "" or False
    assert [
        v for k, v in good.row(1, named=True).items() if k not in ("meter_id", "updated_at")
    ] == [None] * 13
    reasons = result.rejected["reason"].to_list()
    assert len(reasons) == 2
    for part in (
        "timezone 'Mars/Olympus' is not an IANA time zone",
        "import_only 'maybe' is not true/false",
        "max_power_kw '-3' is not a number above 0",
        "wrap_kwh 'inf' is not a number above 0",
        "billing_day '31' is not a day of the month from 1 to 28",
        "tier_year_start '02-30' is not a day of the year MM-DD",
    ):
        assert part in reasons[0]
    assert "billing_day '29'" in reasons[1]
    assert "tier_year_start '1-1'" in reasons[1]


def test_a_meter_listed_twice_in_one_file_is_refused_on_both_lines(tmp_path: Path) -> None:
    path = _csv(tmp_path, "meters.csv", "meter_id,tariff_id\nm1,a\nm2,b\nm1,c\n")
    result = read_import_file(path, received_at=NOW)
    assert result.good["meter_id"].to_list() == ["m2"]
    assert result.rejected["source"].to_list() == ["import:meters.csv:2", "import:meters.csv:4"]
    assert set(result.rejected["reason"]) == {"meter_id appears more than once in the file"}


def test_a_misspelt_meter_column_is_refused_not_dropped(tmp_path: Path) -> None:
    path = _csv(tmp_path, "meters.csv", "meter_id,tarif_id\nm1,a\n")
    with pytest.raises(InputFileError, match=r"tarif_id.*fit neither form.*meters \(meter_id"):
        read_import_file(path, received_at=NOW)


def test_meter_events_are_read_in_the_given_zone_and_bad_kinds_kept(tmp_path: Path) -> None:
    path = _csv(
        tmp_path,
        "events.csv",
        "meter_id,ts,kind,note\n"
        "m1,2026-10-05T10:00:00Z,Replacement,new DDSU666\n"
        "m2,2026-10-06 10:00,reset,\n"
        "m2,2026-10-06T10:00:00Z,explode,\n",
    )
    result = read_import_file(path, received_at=NOW, tz="Asia/Shanghai")
    assert result.kind == "meter_events"
    conform(result.good, METER_EVENTS)
    assert result.good.rows() == [
        ("m1", dt.datetime(2026, 10, 5, 10, tzinfo=UTC), "replacement", "new DDSU666", NOW),
        ("m2", dt.datetime(2026, 10, 6, 2, tzinfo=UTC), "reset", None, NOW),
    ]
    assert result.rejected["reason"].to_list() == [
        "kind 'explode' is not one of replacement, reset"
    ]
