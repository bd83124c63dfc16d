"""``/v1/meters/...`` and ``/v1/alerts`` over real HTTP, and the usage steps on DST days.

The billed lake: m-1 uses 0.5 kWh every hour of local October (Asia/Shanghai) but ten hours of
October 5 that VEE corrected to 2.5 kWh (``edited``, version 2); m-4's intervals are all
estimated; the daily figures, tier progress and alerts are the samples of tests/conftest.py.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import polars as pl
import pytest

from meterlake.api.lake import usage_steps
from tests.api.lakes import FULL
from tests.api.server import ApiServer


def usage(server: ApiServer, meter: str, **params: str) -> dict[str, Any]:
    with server.client(FULL) as client:
        response = client.get(f"/v1/meters/{meter}/usage", params=params)
    assert response.status_code == 200, response.text
    return response.json()


def test_daily_usage_with_status(server: ApiServer) -> None:
    body = usage(server, "m-1", **{"from": "2026-10-01", "to": "2026-11-03"})
    assert (body["timezone"], body["from"], body["to"]) == (
        "Asia/Shanghai",
        "2026-09-30T16:00:00Z",
        "2026-11-02T16:00:00Z",
    )
    steps = {s["start"]: s for s in body["steps"]}
    assert len(steps) == 33
    assert steps["2026-10-01"] == {
        "start": "2026-10-01",
        "energy_import_kwh": 12.0,
        "energy_export_kwh": 0.0,
        "status": "actual",
        "intervals": 24,
        "actual": 24,
        "estimated": 0,
        "suspect": 0,
        "missing": 0,
    }
    corrected = steps["2026-10-05"]
    assert corrected["energy_import_kwh"] == pytest.approx(14 * 0.5 + 10 * 2.5)
    assert (corrected["status"], corrected["actual"], corrected["estimated"]) == (
        "estimated",
        14,
        10,
    )
    for day in ("2026-11-01", "2026-11-02"):
        assert steps[day]["status"] == "missing"
        assert steps[day]["energy_import_kwh"] is None
        assert steps[day]["intervals"] == 0


def test_interval_and_monthly_usage(server: ApiServer) -> None:
    day = usage(server, "m-1", resolution="interval", **{"from": "2026-10-05", "to": "2026-10-06"})
    steps = day["steps"]
    assert len(steps) == 24
    assert steps[0]["start"] == "2026-10-04T16:00:00Z"
    assert [s["status"] for s in steps] == ["actual"] * 4 + ["edited"] * 10 + ["actual"] * 10
    assert steps[4]["energy_import_kwh"] == 2.5
    assert steps[4]["method"] == "manual"
    assert steps[0]["minutes"] == 60

    months = usage(server, "m-1", resolution="month", **{"from": "2026-09-01", "to": "2026-12-01"})
    by_month = {s["start"]: s for s in months["steps"]}
    assert list(by_month) == ["2026-09", "2026-10", "2026-11"]
    assert by_month["2026-10"]["energy_import_kwh"] == pytest.approx(372 + 20)
    assert by_month["2026-10"]["status"] == "estimated"
    assert by_month["2026-09"]["status"] == by_month["2026-11"]["status"] == "missing"

    estimated = usage(server, "m-4", **{"from": "2026-10-01", "to": "2026-10-02"})
    assert [s["status"] for s in estimated["steps"]] == ["estimated"]

    instants = usage(
        server, "m-1", **{"from": "2026-10-01T00:00:00+08:00", "to": "2026-10-02T16:00:00Z"}
    )
    assert [s["start"] for s in instants["steps"]] == ["2026-10-01", "2026-10-02"]

    recent = usage(server, "m-1")  # by default: the 31 local days up to today
    assert recent["to"].endswith("T16:00:00Z")  # a midnight in Shanghai
    assert len(recent["steps"]) == 31


def test_the_daily_curve(server: ApiServer) -> None:
    with server.client(FULL) as client:
        curve = client.get("/v1/meters/m-1/curve", params={"date": "2026-10-01"}).json()
        assert curve["points"] == [
            {"start": "2026-10-01T00:00:00+08:00", "power_kw": 0.1},
            {"start": "2026-10-01T00:15:00+08:00", "power_kw": 0.2},
            {"start": "2026-10-01T00:30:00+08:00", "power_kw": 2.4},
        ]
        assert (curve["energy_kwh"], curve["peak_kw"], curve["date"]) == (7.25, 2.4, "2026-10-01")
        assert curve["computed_at"] == "2026-10-02T00:00:00Z"
        for meter, day in (("m-1", "2026-10-02"), ("m-2", "2026-11-01")):
            missing = client.get(f"/v1/meters/{meter}/curve", params={"date": day})
            assert missing.status_code == 404
            assert "not analysed" in missing.json()["detail"]


def test_tier_progress(server: ApiServer) -> None:
    with server.client(FULL) as client:
        tier = client.get("/v1/meters/m-1/tier-progress").json()
        assert tier["tier"] == 1
        assert tier["energy_kwh"] == 2500.5
        assert (tier["as_of"], tier["window_start"], tier["projected_crossing"]) == (
            "2026-10-31",
            "2026-01-01",
            "2026-12-02",
        )
        assert client.get("/v1/meters/m-3/tier-progress").status_code == 404


def test_alerts(server: ApiServer) -> None:
    with server.client(FULL) as client:

        def alerts(**params: str) -> list[dict[str, Any]]:
            response = client.get("/v1/alerts", params=params)
            assert response.status_code == 200, response.text
            return list(response.json()["alerts"])

        everything = alerts()
        assert [a["alert_id"] for a in everything] == ["a-1", "a-2"]
        resolved = everything[0]
        assert resolved["state"] == "resolved"
        assert (resolved["raised_at"], resolved["updated_at"]) == (
            "2026-10-01T00:00:00Z",
            "2026-10-01T05:00:00Z",
        )
        assert [(a["alert_id"], a["values"]) for a in alerts(state="open")] == [("a-2", {})]
        assert [a["alert_id"] for a in alerts(state="resolved")] == ["a-1"]
        assert [a["alert_id"] for a in alerts(meter_id="m-1")] == ["a-1"]
        # a day is midnight in the site's zone: 2026-10-01T16:00Z
        assert [a["alert_id"] for a in alerts(since="2026-10-02")] == ["a-2"]
        assert [a["alert_id"] for a in alerts(since="2026-10-01T04:00:00Z")] == ["a-1", "a-2"]

        first = client.get("/v1/alerts", params={"limit": 1}).json()
        second = client.get("/v1/alerts", params={"limit": 1, "after": first["next"]}).json()
        assert [first["alerts"][0]["alert_id"], second["alerts"][0]["alert_id"]] == ["a-1", "a-2"]
        assert second["next"] is None
        other = client.get("/v1/alerts", params={"state": "open", "after": first["next"]})
        assert other.status_code == 400


@pytest.mark.parametrize(
    ("zone", "day", "hours"),
    [
        ("Europe/Berlin", dt.date(2026, 10, 25), 25),  # clocks go back
        ("Europe/Berlin", dt.date(2026, 3, 29), 23),  # clocks go forward
        ("America/New_York", dt.date(2026, 11, 1), 25),
        ("Asia/Shanghai", dt.date(2026, 10, 25), 24),
    ],
)
def test_a_local_day_has_the_hours_its_zone_gives_it(zone: str, day: dt.date, hours: int) -> None:
    from zoneinfo import ZoneInfo

    start = dt.datetime.combine(day, dt.time(), tzinfo=ZoneInfo(zone)).astimezone(dt.UTC)
    quarter = dt.timedelta(minutes=15)
    rows = pl.LazyFrame(
        {
            "interval_start": [start + i * quarter for i in range(-8, 4 * 26)],
            "energy_import_kwh": 0.25,
            "energy_export_kwh": 0.0,
            "status": "actual",
        },
        schema_overrides={"interval_start": pl.Datetime("us", "UTC")},
    )
    steps = usage_steps(rows, zone, "day", day, day).collect()
    assert steps["intervals"].to_list() == [4 * hours]
    assert steps["energy_import_kwh"].to_list() == [pytest.approx(hours * 1.0)]
