"""``meterlake bill`` and ``meterlake tariff``, run as a user runs them: a real process, real
files. Expected money is computed here from the tariffs' rates (Decimal, half-up to the cent)."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import textwrap
from decimal import Decimal
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

from meterlake.config.schemas import INTERVALS, METERS
from meterlake.storage.catalog import connect_catalog
from meterlake.storage.writer import write_table
from meterlake.tariffs.registry import CATALOGUE_DIR, shipped_tariffs
from tests.cli_runner import run_cli
from tests.tariffs.helpers import FIXED, FLAT, RATE, cents, money, write_tariff

UTC = dt.UTC


def no_traceback(done: subprocess.CompletedProcess[str]) -> None:
    assert "Traceback" not in done.stderr, done.stderr


@pytest.fixture
def flat_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "tariffs"
    directory.mkdir()
    write_tariff(directory, "flat", FLAT)
    return directory


def hourly_csv(path: Path, start: dt.datetime, hours: int, kwh: float) -> Path:
    """Naive local timestamps, one row an hour."""
    rows = [f"{(start + dt.timedelta(hours=i)):%Y-%m-%d %H:%M},{kwh}\n" for i in range(hours)]
    path.write_text("timestamp,kwh\n" + "".join(rows), encoding="utf-8")
    return path


# --- bill --load ------------------------------------------------------------------------------


def test_bill_a_load_profile_under_a_catalogue_tariff_into_a_json_file(tmp_path: Path) -> None:
    tariff = shipped_tariffs()["us-peco-rate-r"]
    version = tariff.versions[tariff.version_at(dt.date(2026, 10, 1))]
    (energy_rate,) = version.energy.prices["all"]
    (levy,) = version.levies
    (fixed,) = version.fixed
    assert fixed.per == "month"
    load = hourly_csv(tmp_path / "load.csv", dt.datetime(2026, 10, 1), 31 * 24, 0.5)
    out = tmp_path / "bill.json"

    done = run_cli("bill", "--tariff", "us-peco-rate-r", "--load", load, "--out", out, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text(encoding="utf-8"))
    assert (result["tariff"], result["currency"]) == ("us-peco-rate-r", "USD")
    (month,) = result["months"]
    kwh = Decimal(372)  # 744 hours of local October x 0.5 kWh
    energy = cents(kwh * energy_rate)
    levies = cents(kwh * levy.per_kwh)
    assert month["month"] == "2026-10"
    assert month["energy_import_kwh"] == pytest.approx(372.0)
    assert money(month["energy_charge"]) == energy
    assert money(month["levies"]) == levies
    assert money(month["fixed_charge"]) == cents(fixed.amount)
    assert money(month["total"]) == energy + levies + cents(fixed.amount)
    assert money(result["total"]) == money(month["total"])


def test_bill_a_load_profile_under_a_tariff_file_prints_json(
    tmp_path: Path, flat_dir: Path
) -> None:
    load = hourly_csv(tmp_path / "load.csv", dt.datetime(2026, 10, 31, 22), 4, 2.0)

    done = run_cli("bill", "--tariff", flat_dir / "flat.toml", "--load", load, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    months = {m["month"]: m for m in result["months"]}
    assert sorted(months) == ["2026-10", "2026-11"]  # two hours in each local month
    for month in months.values():
        assert money(month["total"]) == cents(4 * RATE) + FIXED  # 2.1132 -> 2.11, + 10
    assert money(result["total"]) == 2 * (cents(4 * RATE) + FIXED)


def test_load_without_tariff_is_refused(tmp_path: Path) -> None:
    load = hourly_csv(tmp_path / "load.csv", dt.datetime(2026, 10, 1), 2, 1.0)

    done = run_cli("bill", "--load", load, cwd=tmp_path)

    assert done.returncode == 2
    assert "--load needs --tariff FILE-or-ID" in done.stderr
    no_traceback(done)


def test_an_unknown_tariff_id_is_refused(tmp_path: Path) -> None:
    load = hourly_csv(tmp_path / "load.csv", dt.datetime(2026, 10, 1), 2, 1.0)

    done = run_cli("bill", "--tariff", "no-such-tariff", "--load", load, cwd=tmp_path)

    assert done.returncode == 2
    assert "neither a .toml/.json file nor a known tariff id" in done.stderr
    assert "meterlake tariff list" in done.stderr
    no_traceback(done)


def test_a_bad_load_profile_is_refused_with_its_line(tmp_path: Path) -> None:
    load = tmp_path / "load.csv"
    load.write_text("timestamp,kwh\n2026-10-01 00:00,1\n2026-10-01 01:00,x\n", encoding="utf-8")

    done = run_cli("bill", "--tariff", "us-peco-rate-r", "--load", load, cwd=tmp_path)

    assert done.returncode == 2
    assert "load.csv:3: kwh 'x' is not a number" in done.stderr
    no_traceback(done)


# --- bill --lake --period ---------------------------------------------------------------------


@pytest.fixture
def lake(tmp_path: Path) -> Path:
    root = tmp_path / "lake"
    done = run_cli("init", root, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    start = dt.datetime(2026, 10, 1, tzinfo=ZoneInfo("Asia/Shanghai")).astimezone(UTC)
    hours = 31 * 24
    kwh = {"m-1": 0.5, "m-2": 1.0, "m-3": 1.0}
    write_table(
        root,
        INTERVALS,
        pl.DataFrame(
            {
                "meter_id": [m for m in kwh for _ in range(hours)],
                "interval_start": [start + dt.timedelta(hours=i) for i in range(hours)] * 3,
                "interval_minutes": 60,
                "energy_import_kwh": [kwh[m] for m in kwh for _ in range(hours)],
                "energy_export_kwh": 0.0,
                "status": "actual",
                "flags": [[] for _ in range(3 * hours)],
                "method": None,
                "version": 1,
                "run_id": "vee-1",
            },
            schema=INTERVALS.schema,
        ),
    )
    meters = pl.DataFrame(
        {"meter_id": list(kwh), "tariff_id": ["flat", "flat", None]},
        schema={"meter_id": pl.String, "tariff_id": pl.String},
    )
    write_table(
        root,
        METERS,
        meters.select(
            pl.col(c) if c in meters.columns else pl.lit(None, dtype).alias(c)
            for c, dtype in METERS.schema.items()
        ).with_columns(
            updated_at=pl.lit(dt.datetime(2026, 10, 1, tzinfo=UTC), METERS.schema["updated_at"])
        ),
    )
    return root


def test_bill_a_period_then_again_writes_nothing_new(
    tmp_path: Path, lake: Path, flat_dir: Path
) -> None:
    args = ("bill", "--lake", lake, "--period", "2026-10", "--tariffs", flat_dir)

    first = run_cli(*args, cwd=tmp_path)

    assert first.returncode == 0, first.stderr
    assert re.search(
        r"2 meters billed, 2 new, 0 corrected, 0 unchanged; 4 lines written", first.stdout
    ), first.stdout
    total = cents(372 * RATE) + FIXED + cents(744 * RATE) + FIXED  # 206.53 + 403.06
    shown = re.search(r"total of the bills written: CNY (\S+)", first.stdout)
    assert shown is not None, first.stdout
    assert Decimal(shown.group(1)) == total
    assert "skipped 1 meters: no tariff_id in meters" in first.stderr

    con = connect_catalog(lake)
    try:
        rows = con.execute(
            "SELECT meter_id, version, total_amount FROM bills_current ORDER BY meter_id"
        ).fetchall()
    finally:
        con.close()
    assert rows == [
        ("m-1", 1, cents(372 * RATE) + FIXED),
        ("m-2", 1, cents(744 * RATE) + FIXED),
    ]

    second = run_cli(*args, cwd=tmp_path)

    assert second.returncode == 0, second.stderr
    assert re.search(
        r"2 meters billed, 0 new, 0 corrected, 2 unchanged; 0 lines written", second.stdout
    ), second.stdout
    assert "total of the bills written" not in second.stdout


def test_a_malformed_period_is_refused(tmp_path: Path, lake: Path, flat_dir: Path) -> None:
    done = run_cli(
        "bill", "--lake", lake, "--period", "2026-13", "--tariffs", flat_dir, cwd=tmp_path
    )

    assert done.returncode == 2
    assert "bill period '2026-13': use YYYY-MM, e.g. 2026-10" in done.stderr
    no_traceback(done)


def test_bill_without_period_or_load_is_refused(tmp_path: Path, lake: Path) -> None:
    done = run_cli("bill", "--lake", lake, cwd=tmp_path)

    assert done.returncode == 2
    assert "give --period YYYY-MM (lake bills) or --load FILE --tariff T" in done.stderr
    no_traceback(done)


# --- tariff check / list ----------------------------------------------------------------------


def test_tariff_check_prints_the_price_grid_of_a_catalogue_file(tmp_path: Path) -> None:
    path = CATALOGUE_DIR / "cn-sh-residential-tou.toml"

    done = run_cli("tariff", "check", path, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    tariff = shipped_tariffs()["cn-sh-residential-tou"]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("cn-sh-residential-tou: ")
    assert f"fingerprint {tariff.fingerprint}" in done.stdout
    header = next(line for line in lines if line.split()[:1] == ["hour"])
    assert header.split() == ["hour", "weekday", "weekend", "holiday"]
    hours = [line.split()[0] for line in lines if re.match(r"\s+\d\d\s", line)]
    assert hours == [f"{h:02d}" for h in range(24)]
    # the grid shows each hour's period and its first-tier price
    version = tariff.versions[0]
    for hour in (3, 12):
        period = tariff.period_at(dt.datetime(2026, 10, 14, hour))  # a Wednesday
        price = version.energy.prices[period][0]
        row = next(line for line in lines if line.strip().startswith(f"{hour:02d} "))
        assert f"{period} {price}" in row


def test_tariff_check_lists_every_problem_of_a_bad_file(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        textwrap.dedent(
            """
            id = "bad"
            name = "bad"
            currency = "CNY"
            timezone = "Mars/Olympus_Mons"
            source = "test"

            [energy]
            prices = { peak = 0.5 }
            """
        ),
        encoding="utf-8",
    )

    done = run_cli("tariff", "check", bad, cwd=tmp_path)

    assert done.returncode == 2
    assert done.stdout == ""
    assert "bad.toml: 2 problems:" in done.stderr
    assert "timezone = 'Mars/Olympus_Mons': not an IANA time zone" in done.stderr
    assert "[energy] prices: without [tou] the one period is 'all'" in done.stderr
    no_traceback(done)


def test_tariff_check_of_a_missing_file(tmp_path: Path) -> None:
    done = run_cli("tariff", "check", tmp_path / "nope.toml", cwd=tmp_path)

    assert done.returncode == 2
    assert "nope.toml: no such file" in done.stderr


def test_tariff_list_shows_every_catalogue_id(tmp_path: Path, flat_dir: Path) -> None:
    done = run_cli("tariff", "list", "--tariffs", flat_dir, cwd=tmp_path)

    assert done.returncode == 0, done.stderr
    shown = {
        cells[1].strip()
        for cells in (line.split("│") for line in done.stdout.splitlines())
        if len(cells) > 2
    }
    ids = {path.stem for path in CATALOGUE_DIR.glob("*.toml")}
    assert ids | {"flat"} <= shown, f"ids not shown in full: {sorted(ids - shown)}"
