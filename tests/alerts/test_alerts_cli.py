"""``meterlake alerts`` end to end: a real process on a real lake and rules file."""

from __future__ import annotations

from pathlib import Path

import duckdb

from meterlake.config.schemas import METERS
from tests.alerts.helpers import HOUR, MIN, NOW, put, put_reads, reads
from tests.cli_runner import run_cli

RULES = """
[[rules]]
name = "offline"
kind = "meter_offline"
severity = "critical"
intervals = 4

[[rules]]
name = "prepaid"
kind = "prepaid_low"
below = 10.0

[[sinks]]
name = "log"
type = "log"
"""


def test_alerts_command(lake: Path, tmp_path: Path) -> None:
    put(
        lake,
        METERS,
        [
            {"meter_id": "m1", "prepaid": True, "updated_at": NOW - 24 * HOUR},
            {"meter_id": "m2", "updated_at": NOW - 24 * HOUR},
        ],
    )
    put_reads(lake, reads("m1", [NOW - 30 * MIN], "balance", [4.2]))
    rules = tmp_path / "alerts.toml"
    rules.write_text(RULES)

    first = run_cli("alerts", "--lake", lake, "--rules", rules, "--now", "2026-10-10T12:00Z")
    assert first.returncode == 0, first.stderr
    assert (
        "alerts as of 2026-10-10 12:00 UTC: 2 conditions true; 2 raised, 0 renotified, 0 "
        "resolved" in first.stdout
    )
    assert "sink log: 2 delivered, 0 pending" in first.stdout
    assert "raised offline m2 [critical]: no reading in the last 7d" in first.stderr
    assert "raised prepaid m1 [warning]: prepaid balance 4.20 is below" in first.stderr

    again = run_cli(
        "alerts", "--lake", lake, "--rules", rules, "--now", "2026-10-10T12:00:00+00:00"
    )
    assert again.returncode == 0, again.stderr
    assert "0 raised, 0 renotified, 0 resolved" in again.stdout
    assert "sink log: 0 delivered, 0 pending" in again.stdout

    con = duckdb.connect(str(lake / "catalog.duckdb"), read_only=True)
    try:
        open_now = con.sql("SELECT rule, meter_id FROM alerts_open ORDER BY rule").fetchall()
        deliveries = con.sql("SELECT count(*) FROM alert_deliveries").fetchall()
    finally:
        con.close()
    assert open_now == [("offline", "m2"), ("prepaid", "m1")]
    assert deliveries == [(2,)]


def test_alerts_command_reports_a_bad_rules_file(lake: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[rules]]\nname = "x"\nkind = "surge"\nmin_score = 2\n')
    done = run_cli("alerts", "--lake", lake, "--rules", bad)
    assert done.returncode == 2
    assert "bad.toml: 1 problem:" in done.stderr
    assert "[[rules]] #1 (x) min_score = 2" in done.stderr
