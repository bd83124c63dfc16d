"""The ``meterlake`` command, run as a user runs it: a real process, real files."""

from __future__ import annotations

import json
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.cli_runner import run_cli

run = run_cli


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cli") / "lake"
    done = run("init", root)
    assert done.returncode == 0, done.stderr
    return root


def test_init_makes_a_lake_and_a_commented_config(lake: Path) -> None:
    config = lake / "meterlake.toml"
    assert config.is_file()
    assert "# meterlake settings" in config.read_text()
    assert (lake / "catalog.duckdb").is_file()
    for table in ("readings", "intervals", "bills", "bill_lines", "alerts", "quarantine"):
        assert (lake / table).is_dir()
    # the example config is valid and points at the lake itself
    done = run("info", "--config", config)
    assert done.returncode == 0, done.stderr
    assert "readings" in done.stdout


def test_import_keeps_good_rows_and_quarantines_bad_ones(lake: Path, tmp_path: Path) -> None:
    good = tmp_path / "good.csv"
    good.write_text(
        "meter_id,ts,quantity,value\n"
        "m1,2026-10-01T00:00:00Z,energy_import_kwh,100.0\n"
        "m1,2026-10-01T00:15:00Z,energy_import_kwh,100.4\n"
        "bad/id,2026-10-01T00:15:00Z,energy_import_kwh,1\n"
    )
    garbage = tmp_path / "garbage.csv"
    garbage.write_text("x,y\n1,2\n")
    done = run("import", "--lake", lake, good, garbage)
    assert done.returncode == 0, done.stderr
    assert "fit neither form" in done.stdout

    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        rows = con.sql("SELECT meter_id, value FROM readings ORDER BY ts").fetchall()
        quarantined = con.sql("SELECT source, reason FROM quarantine ORDER BY source").fetchall()
    finally:
        con.close()
    assert rows == [("m1", 100.0), ("m1", 100.4)]
    assert quarantined[0][0] == "import:garbage.csv"
    assert "fit neither form" in quarantined[0][1]
    assert quarantined[1][0] == "import:good.csv:4"
    assert "meter_id 'bad/id' is not allowed" in quarantined[1][1]


def test_import_fails_only_when_nothing_could_be_imported(lake: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("meter_id,ts,quantity,value\nm1,2026-10-01 00:00,power_w,1\n")
    done = run("import", "--lake", lake, bad)
    assert done.returncode == 1
    assert "nothing could be imported" in done.stderr
    assert "pass --tz" in done.stdout


def test_sql_formats(lake: Path, tmp_path: Path) -> None:
    query = "SELECT quantity, unit FROM quantities WHERE quantity LIKE 'energy_%' ORDER BY 1"
    as_csv = run("sql", "--lake", lake, "--format", "csv", query)
    assert as_csv.returncode == 0, as_csv.stderr
    assert as_csv.stdout.splitlines()[:2] == ["quantity,unit", "energy_export_kwh,kWh"]
    as_json = run("sql", "--lake", lake, "--format", "json", query)
    assert json.loads(as_json.stdout)[0] == {"quantity": "energy_export_kwh", "unit": "kWh"}
    out = tmp_path / "q.parquet"
    as_parquet = run("sql", "--lake", lake, "--format", "parquet", "--out", out, query)
    assert as_parquet.returncode == 0, as_parquet.stderr
    assert pl.read_parquet(out).row(0) == ("energy_export_kwh", "kWh")
    table = run("sql", "--lake", lake, query)
    assert "energy_import_kwh" in table.stdout


def test_sql_errors_are_one_clear_line(lake: Path) -> None:
    done = run("sql", "--lake", lake, "SELEC nonsense")
    assert done.returncode == 2
    assert "query failed" in done.stderr
    assert "Traceback" not in done.stderr
    readonly = run("sql", "--lake", lake, "CREATE TABLE t (x INT)")
    assert readonly.returncode == 2
    assert "read-only" in readonly.stderr.lower()


def test_simulate_compact_info(tmp_path: Path) -> None:
    root = tmp_path / "sim"
    assert run("init", root).returncode == 0
    done = run("simulate", "--lake", root, "--meters", "5", "--days", "2", "--start", "2026-10-01")
    assert done.returncode == 0, done.stderr
    files_before = len(list((root / "readings").glob("*/*.parquet")))
    compacted = run("compact", "--lake", root)
    assert compacted.returncode == 0, compacted.stderr
    files_after = len(list((root / "readings").glob("*/*.parquet")))
    assert files_after < files_before
    first = run("vee", "--lake", root)
    assert first.returncode == 0, first.stderr
    assert "interval versions of 5 of 5 meters" in first.stdout
    again = run("vee", "--lake", root)
    assert "nothing changed, nothing written" in again.stdout  # idempotent
    info = run("info", "--lake", root)
    assert info.returncode == 0, info.stderr
    line = next(row for row in info.stdout.splitlines() if "readings" in row)
    assert " 5 " in line  # five meters


def test_bad_settings_are_reported_without_a_traceback(tmp_path: Path) -> None:
    config = tmp_path / "meterlake.toml"
    config.write_text('[[mqtt]]\nport = 70000\n[site]\ntimezone = "Mars/Olympus"\n')
    done = run("info", "--config", config)
    assert done.returncode == 2
    assert str(config) in done.stderr
    assert "[[mqtt]] #1 port = 70000" in done.stderr
    assert "[site] timezone = 'Mars/Olympus'" in done.stderr
    assert "Traceback" not in done.stderr


def test_not_a_lake(tmp_path: Path) -> None:
    done = run("info", "--lake", tmp_path)
    assert done.returncode == 2
    assert "is not a meterlake lake" in done.stderr


def test_every_command_has_help() -> None:
    for command in (
        "init",
        "import",
        "compact",
        "catalog",
        "sql",
        "info",
        "simulate",
        "collect",
        "status",
        "simulate-gateway",
        "quality",
        "vee",
    ):
        done = run(command, "--help")
        assert done.returncode == 0, (command, done.stderr)
        assert "Usage" in done.stdout


def test_quality_of_imported_intervals(tmp_path: Path) -> None:
    root = tmp_path / "q"
    assert run("init", root).returncode == 0
    profile = tmp_path / "profile.csv"
    rows = ["meter_id,interval_start,energy_import_kwh"]
    rows += [f"m1,2026-10-01T00:{m:02d}:00Z,0.25" for m in (0, 15, 45)]  # 00:30 is missing
    rows += [f"m2,2026-10-01T00:{m:02d}:00Z,0.5" for m in (0, 15, 30, 45)]
    profile.write_text("\n".join(rows) + "\n")
    assert run("import", "--lake", root, profile).returncode == 0
    done = run("quality", "--lake", root, "--format", "csv")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "meter_id,intervals_expected,completeness_pct,estimated_pct,longest_gap_h,suspect",
        "m1,4,75.0,0.0,0.25,0",
        "m2,4,100.0,0.0,0.0,0",
    ]
