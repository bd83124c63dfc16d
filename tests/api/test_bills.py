"""``/v1/bills`` over real HTTP: paging 10,000 bills, signed cursors, repeated pulls, versions,
held bills, one bill with its lines, ETags."""

from __future__ import annotations

import base64
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest

from meterlake.api.cursor import sign_cursor
from meterlake.config.schemas import BILLS
from meterlake.storage.scan import scan
from meterlake.storage.writer import write_table
from tests.api.lakes import FULL, MANY_BILLS, PERIOD, many_bills_lake, tokens_config
from tests.api.server import ApiServer


def pull(client: httpx.Client, **params: Any) -> list[httpx.Response]:
    """Every page of a pull, following ``next``."""
    pages = []
    after = None
    while True:
        query = {"period": PERIOD, **params, **({"after": after} if after else {})}
        response = client.get("/v1/bills", params=query)
        assert response.status_code == 200, response.text
        pages.append(response)
        after = response.json()["next"]
        if after is None:
            return pages


def bill_ids(pages: list[httpx.Response]) -> list[str]:
    return [b["bill_id"] for page in pages for b in page.json()["bills"]]


def test_paging_10000_bills_misses_and_repeats_none(many: Path, many_server: ApiServer) -> None:
    stored = scan(many, BILLS).collect()
    assert stored.height == MANY_BILLS
    with many_server.client(FULL) as client:
        pages = pull(client, status="all", limit=1000)
        odd = pull(client, status="all", limit=777)

    ids = bill_ids(pages)
    assert len(pages) == 10
    assert [p.json()["count"] for p in pages] == [1000] * 10
    assert len(ids) == len(set(ids)) == MANY_BILLS
    assert set(ids) == set(stored["bill_id"])
    # the stable order: issued_at, then bill_id
    expected = stored.sort("issued_at", "bill_id")["bill_id"].to_list()
    assert ids == expected
    assert bill_ids(odd) == expected
    assert len(odd) == -(-MANY_BILLS // 777)


def test_only_released_bills_unless_held_ones_are_asked_for(
    many: Path, many_server: ApiServer
) -> None:
    stored = scan(many, BILLS).collect()
    with many_server.client(FULL) as client:
        released = bill_ids(pull(client, limit=5000))
        held = bill_ids(pull(client, status="held", limit=5000))
    assert set(released) == set(stored.filter(pl.col("status") == "released")["bill_id"])
    assert set(held) == set(stored.filter(pl.col("status") == "held")["bill_id"])
    assert held and not set(held) & set(released)


def test_a_repeated_pull_is_the_same_bytes_also_after_a_restart(
    many: Path, many_config: Path, many_server: ApiServer
) -> None:
    with many_server.client(FULL) as client:
        first = [p.content for p in pull(client, limit=2500)]
        again = [p.content for p in pull(client, limit=2500)]
    assert first == again
    assert len(first) == 4
    # another server over the same lake with the same cursor key: the same cursors and bytes
    with ApiServer(many, many_config) as restarted, restarted.client(FULL) as client:
        assert [p.content for p in pull(client, limit=2500)] == first


def test_a_tampered_or_foreign_cursor_is_refused(many_server: ApiServer) -> None:
    with many_server.client(FULL) as client:
        first = client.get("/v1/bills", params={"period": PERIOD, "limit": 10}).json()
        cursor = first["next"]
        body, _, tag = cursor.partition(".")
        payload = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        forged_payload = payload.replace(b'"k":[', b'"k":[1').rstrip(b"=")
        forged = base64.urlsafe_b64encode(forged_payload).decode().rstrip("=") + "." + tag
        flipped_tag = body + "." + ("A" if tag[0] != "A" else "B") + tag[1:]
        other_key = sign_cursor(b"another server's key 0123456789ab", {"q": "x", "k": [1, "b"]})
        cases = {
            "payload changed": forged,
            "tag changed": flipped_tag,
            "cut short": cursor[:-3],
            "no tag": body,
            "other key": other_key,
            "garbage": "%%%.%%%",
        }
        for name, bad in cases.items():
            response = client.get("/v1/bills", params={"period": PERIOD, "after": bad})
            assert response.status_code == 400, name
            problem = response.json()
            assert problem["parameter"] == "after", name
            assert "cursor" in problem["detail"], name
        # a good cursor, but of another query
        for other in ({"period": "2026-09"}, {"period": PERIOD, "status": "all"}):
            response = client.get("/v1/bills", params={**other, "after": cursor})
            assert response.status_code == 400
            assert "another query" in response.json()["detail"]
        # and the genuine one still works
        second = client.get("/v1/bills", params={"period": PERIOD, "limit": 10, "after": cursor})
        assert second.status_code == 200
        assert second.json()["bills"][0]["bill_id"] not in {b["bill_id"] for b in first["bills"]}


def test_versions_point_to_their_successor_and_money_is_exact(server: ApiServer) -> None:
    with server.client(FULL) as client:
        bills = client.get("/v1/bills", params={"period": PERIOD, "status": "all"}).json()
    by_meter: dict[str, list[dict[str, Any]]] = {}
    for bill in bills["bills"]:
        by_meter.setdefault(bill["meter_id"], []).append(bill)
    first, second = sorted(by_meter["m-1"], key=lambda b: b["version"])
    assert first["superseded_by"] == second["bill_id"]
    assert second["supersedes"] == first["bill_id"]
    assert second["superseded_by"] is None
    assert [b["superseded_by"] for m in ("m-2", "m-3") for b in by_meter[m]] == [None, None]
    # the corrected bill is the last in the order: it was issued last
    assert bills["bills"][-1]["bill_id"] == second["bill_id"]
    # 392 kWh x 0.5283 = 207.0936 -> 207.09, + 10.00 fixed; amounts are exact strings
    assert second["total_amount"] == "217.0900"
    assert Decimal(second["adjustment_amount"]) == Decimal("10.56")
    assert first["total_amount"] == "206.5300"
    assert second["issued_at"].endswith("Z")


def test_held_and_released_after_review(server: ApiServer) -> None:
    with server.client(FULL) as client:
        default = client.get("/v1/bills", params={"period": PERIOD}).json()["bills"]
        held = client.get("/v1/bills", params={"period": PERIOD, "status": "held"}).json()
    assert {b["meter_id"] for b in default} == {"m-1", "m-2", "m-3", "m-5"}
    assert [b["meter_id"] for b in held["bills"]] == ["m-4"]
    assert held["bills"][0]["hold_reasons"]
    released = next(b for b in default if b["meter_id"] == "m-5")
    assert (released["status"], released["released_by"]) == ("released", "li.wei")
    assert released["released_at"].endswith("Z")


def test_one_bill_with_its_lines_and_an_etag(server: ApiServer) -> None:
    with server.client(FULL) as client:
        listed = client.get("/v1/bills", params={"period": PERIOD}).json()["bills"]
        latest = next(b for b in listed if b["meter_id"] == "m-1" and b["version"] == 2)
        response = client.get(f"/v1/bills/{latest['bill_id']}")
        assert response.status_code == 200
        bill = response.json()
        etag = response.headers["etag"]

        assert {k: v for k, v in bill.items() if k != "lines"} == latest
        lines = bill["lines"]
        assert [line["line_no"] for line in lines] == sorted(line["line_no"] for line in lines)
        charges = [Decimal(line["amount"]) for line in lines if line["kind"] == "charge"]
        assert sum(charges) == Decimal(bill["total_amount"])
        adjustments = [Decimal(line["amount"]) for line in lines if line["kind"] == "adjustment"]
        assert sum(adjustments) == Decimal(bill["adjustment_amount"])

        for header in (etag, f"W/{etag}", f'"nope", {etag}', "*"):
            cached = client.get(f"/v1/bills/{latest['bill_id']}", headers={"If-None-Match": header})
            assert cached.status_code == 304, header
            assert cached.content == b""
            assert cached.headers["etag"] == etag
        stale = client.get(f"/v1/bills/{latest['bill_id']}", headers={"If-None-Match": '"old"'})
        assert stale.status_code == 200
        assert stale.content == response.content

        # a page has an ETag too
        page = client.get("/v1/bills", params={"period": PERIOD})
        again = client.get(
            "/v1/bills", params={"period": PERIOD}, headers={"If-None-Match": page.headers["etag"]}
        )
        assert again.status_code == 304


def test_a_held_bill_by_id_only_when_asked_for(server: ApiServer) -> None:
    with server.client(FULL) as client:
        held = client.get("/v1/bills", params={"period": PERIOD, "status": "held"}).json()
        bill_id = held["bills"][0]["bill_id"]
        refused = client.get(f"/v1/bills/{bill_id}")
        assert refused.status_code == 404
        assert "held" in refused.json()["detail"]
        assert client.get(f"/v1/bills/{bill_id}", params={"status": "all"}).status_code == 200
        assert client.get(f"/v1/bills/{bill_id}", params={"status": "held"}).status_code == 200
        unknown = client.get("/v1/bills/b-000000000000000000000000")
        assert unknown.status_code == 404
        assert unknown.headers["content-type"] == "application/problem+json"


@pytest.mark.slow
def test_a_version_issued_while_a_client_pages_comes_last(tmp_path: Path) -> None:
    lake = many_bills_lake(tmp_path / "lake", 300, seed=3)
    config = tokens_config(tmp_path / "meterlake.toml", lake_poll_s=0)
    with ApiServer(lake, config) as running, running.client(FULL) as client:
        query = {"period": PERIOD, "status": "all", "limit": 100}
        first = client.get("/v1/bills", params=query).json()
        seen = [b["bill_id"] for b in first["bills"]]
        # a bill run corrects a bill the client has already seen
        old = scan(lake, BILLS).filter(pl.col("bill_id") == seen[0]).collect()
        new = old.with_columns(
            bill_id=pl.lit("b-corrected-while-paging"),
            version=pl.col("version") + 1,
            supersedes=pl.lit(seen[0]),
            issued_at=pl.col("issued_at").dt.offset_by("3d"),
        )
        write_table(lake, BILLS, new)
        after = first["next"]
        while after:
            page = client.get("/v1/bills", params={**query, "after": after}).json()
            seen += [b["bill_id"] for b in page["bills"]]
            after = page["next"]
        assert len(seen) == len(set(seen)) == 301
        assert seen[-1] == "b-corrected-while-paging"
        original = client.get(f"/v1/bills/{seen[0]}", params={"status": "all"}).json()
        assert original["superseded_by"] == "b-corrected-while-paging"
