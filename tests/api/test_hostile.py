"""Hostile and malformed input over real HTTP: every answer a 4xx problem document, never a 5xx
or a traceback, and the server none the worse for it."""

from __future__ import annotations

import pytest

from tests.api.lakes import FULL, PERIOD
from tests.api.server import ApiServer

SQL = ["2026-10' OR '1'='1", "2026-10; DROP TABLE bills; --", "' UNION SELECT * FROM bills --"]
TRAVERSAL = ["../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "%2e%2e%2f%2e%2e%2f", "a/../../b"]

# (path, query) pairs, each to be refused with a 4xx
HOSTILE: list[tuple[str, dict[str, str]]] = [
    # periods: SQL, traversal, impossible months, other spellings, unicode digits, huge
    *[("/v1/bills", {"period": p}) for p in [*SQL, *TRAVERSAL]],
    *[
        ("/v1/bills", {"period": p})
        for p in [
            "2026-13",
            "2026-00",
            "0000-01",
            "26-10",
            "2026/10",
            "２０２６-10",
            "",
            "x" * 5000,
        ]
    ],
    ("/v1/bills", {}),
    # limits: huge, negative, not integers
    *[
        ("/v1/bills", {"period": PERIOD, "limit": v})
        for v in ["10001", "99999999999999999999999999", "-1", "0", "1e3", "NaN", "ten", "1.5"]
    ],
    # cursors: malformed, oversized, SQL
    *[
        ("/v1/bills", {"period": PERIOD, "after": c})
        for c in ["x", "a.b", "!!!.???", "A" * 600, "eyJrIjpbXX0.AAAA", SQL[0], "..", "."]
    ],
    ("/v1/bills", {"period": PERIOD, "status": "deleted"}),
    ("/v1/bills", {"period": PERIOD, "account": "x" * 500}),
    ("/v1/bills", {"period": PERIOD, "sql": "SELECT * FROM bills"}),
    # bill and meter ids: traversal, SQL, control characters, too long
    *[(f"/v1/bills/{i}", {}) for i in ["b-1' OR '1'='1", "%00", "b%0Ab", "b" * 200, ".hidden"]],
    *[(f"/v1/bills/{t}", {}) for t in TRAVERSAL],
    *[(f"/v1/meters/{t}/usage", {}) for t in TRAVERSAL],
    *[
        (f"/v1/meters/{m}/usage", {})
        for m in ["m 1", "m-1;DROP TABLE intervals", "мeter", "m" * 65, "-m", "m%2F1"]
    ],
    # dates and ranges
    *[
        ("/v1/meters/m-1/usage", {"from": v})
        for v in [
            "2026-02-30",
            "yesterday",
            "2026-10-01T00:00:00",  # no offset: ambiguous
            "0001-01-01",
            "9999-12-31T23:59:59+14:00",
            "2026-10-01T25:00:00Z",
            "2026-10-01 00:00:00Z",
            SQL[0],
        ]
    ],
    ("/v1/meters/m-1/usage", {"from": "2026-10-02", "to": "2026-10-01"}),
    ("/v1/meters/m-1/usage", {"from": "2026-10-01", "to": "2026-10-01"}),
    ("/v1/meters/m-1/usage", {"from": "2020-01-01", "to": "2026-10-01", "resolution": "interval"}),
    ("/v1/meters/m-1/usage", {"from": "2000-01-01", "to": "2026-10-01", "resolution": "day"}),
    ("/v1/meters/m-1/usage", {"resolution": "hour"}),
    *[("/v1/meters/m-1/curve", {"date": d}) for d in ["2026-10-32", "2026/10/01", "1900-01-01"]],
    ("/v1/meters/m-1/tier-progress", {"as_of": "2026-10-01"}),
    *[("/v1/alerts", {"since": v}) for v in ["garbage", "2026-13-01", SQL[0]]],
    ("/v1/alerts", {"state": "closed"}),
    ("/v1/alerts", {"limit": "0"}),
    ("/v1/alerts", {"meter_id": "../../etc"}),
    ("/v1/alerts", {"after": "x.y"}),
    # paths and methods that do not exist
    ("/v1/../../etc/passwd", {}),
    ("/v2/bills", {}),
    ("/v1/bills/", {}),
]


def test_hostile_input_is_refused_with_a_4xx(server: ApiServer) -> None:
    with server.client(FULL) as client:
        for path, query in HOSTILE:
            response = client.get(path, params=query)
            assert 400 <= response.status_code < 500, (path, query, response.text)
            assert "Traceback" not in response.text
            assert response.headers["content-type"] == "application/problem+json", (
                path,
                query,
                response.status_code,
                response.headers.get("content-type"),
            )
            problem = response.json()
            assert problem["status"] == response.status_code
            assert problem["detail"]
        post = client.post("/v1/bills", params={"period": PERIOD})
        assert post.status_code == 405
        assert post.headers["content-type"] == "application/problem+json"
        assert client.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    ("query", "parameter", "words"),
    [
        ({"period": "2026-13"}, "period", "pattern"),
        ({"period": PERIOD, "limit": "100000"}, "limit", "less than or equal to 10000"),
        ({"period": PERIOD, "after": "x"}, "after", "cursor is not valid"),
        ({"period": PERIOD, "perod": "2026-10"}, "perod", "unknown query parameter"),
        ({}, "period", "required"),
    ],
)
def test_the_error_names_the_parameter_and_what_is_wrong(
    server: ApiServer, query: dict[str, str], parameter: str, words: str
) -> None:
    with server.client(FULL) as client:
        problem = client.get("/v1/bills", params=query).json()
    assert problem["status"] == 400
    assert problem["parameter"] == parameter
    assert words in problem["detail"]


def test_bad_dates_are_explained(server: ApiServer) -> None:
    with server.client(FULL) as client:
        naive = client.get("/v1/meters/m-1/usage", params={"from": "2026-10-01T00:00:00"}).json()
        assert naive["parameter"] == "from"
        backwards = client.get(
            "/v1/meters/m-1/usage", params={"from": "2026-10-02", "to": "2026-10-01"}
        ).json()
        assert backwards["detail"] == "to: must be after from"
        impossible = client.get("/v1/meters/m-1/curve", params={"date": "2026-02-30"}).json()
        assert impossible["detail"] == "date: '2026-02-30' is not a day YYYY-MM-DD"
