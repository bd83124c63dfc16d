"""Bearer tokens over real HTTP: 401 without one, 403 outside its scope, account limits, tokens
compared in constant time and never logged."""

from __future__ import annotations

import hmac
from pathlib import Path

import pytest

from meterlake.api.auth import TokenTable
from meterlake.config.settings import ApiToken
from tests.api.lakes import BILLS_ONLY, FULL, LIMITED, PERIOD, USAGE_ONLY
from tests.api.server import ApiServer

BILL_PATHS = [f"/v1/bills?period={PERIOD}", "/v1/bills/b-000000000000000000000000"]
USAGE_PATHS = [
    "/v1/meters/m-1/usage",
    "/v1/meters/m-1/curve?date=2026-10-01",
    "/v1/meters/m-1/tier-progress",
    "/v1/alerts",
]
GUARDED = [*BILL_PATHS, *USAGE_PATHS, "/metrics", "/openapi.json", "/docs"]


@pytest.mark.parametrize("path", GUARDED)
def test_nothing_but_healthz_is_readable_without_a_token(server: ApiServer, path: str) -> None:
    with server.client() as anonymous:
        for headers in ({}, {"Authorization": "Basic dXNlcjpwYXNz"}, {"Authorization": "Bearer"}):
            response = anonymous.get(path, headers=headers)
            assert response.status_code == 401, (path, headers)
            assert response.headers["www-authenticate"].startswith("Bearer")
            assert response.headers["content-type"] == "application/problem+json"
        wrong = anonymous.get(path, headers={"Authorization": f"Bearer {FULL}x"})
        assert wrong.status_code == 401
        assert 'error="invalid_token"' in wrong.headers["www-authenticate"]
        assert anonymous.get("/healthz").json() == {"status": "ok"}


def test_a_token_reads_only_within_its_scopes(server: ApiServer) -> None:
    with server.client(BILLS_ONLY) as bills, server.client(USAGE_ONLY) as usage:
        for path in BILL_PATHS[:1]:
            assert bills.get(path).status_code == 200
            refused = usage.get(path)
            assert refused.status_code == 403
            assert 'scope="bills:read"' in refused.headers["www-authenticate"]
        for path in USAGE_PATHS:
            assert usage.get(path).status_code == 200, path
            assert bills.get(path).status_code == 403, path
        # /metrics and the docs take any valid token
        for path in ("/metrics", "/openapi.json", "/docs"):
            assert bills.get(path).status_code == 200
            assert usage.get(path).status_code == 200


def test_a_token_limited_to_accounts_sees_only_them(server: ApiServer) -> None:
    with server.client(LIMITED) as limited, server.client(FULL) as full:
        everything = full.get("/v1/bills", params={"period": PERIOD, "status": "all"}).json()
        mine = limited.get("/v1/bills", params={"period": PERIOD, "status": "all"}).json()
        assert {b["account"] for b in mine["bills"]} == {"acc-m-1"}
        assert len(mine["bills"]) == 2  # m-1's two versions
        others = [b for b in everything["bills"] if b["account"] != "acc-m-1"]
        assert others
        for bill in others:
            assert limited.get(f"/v1/bills/{bill['bill_id']}").status_code == 404
            assert full.get(f"/v1/bills/{bill['bill_id']}", params={"status": "all"}).is_success
        refused = limited.get("/v1/bills", params={"period": PERIOD, "account": "acc-m-2"})
        assert refused.status_code == 403
        assert limited.get("/v1/meters/m-1/usage").status_code == 200
        for path in ("/v1/meters/m-2/usage", "/v1/meters/m-2/tier-progress"):
            assert limited.get(path).status_code == 404
        # an unregistered meter belongs to no account
        assert limited.get("/v1/meters/m-unknown/usage").status_code == 404
        assert full.get("/v1/meters/m-unknown/usage").status_code == 200
        alerts = limited.get("/v1/alerts").json()["alerts"]
        assert {a["meter_id"] for a in alerts} == {"m-1"}
        assert limited.get("/v1/alerts", params={"meter_id": "m-2"}).status_code == 404


def test_tokens_are_compared_with_every_configured_token_in_constant_time(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tokens = [
        ApiToken(token=f"token-number-{i}-0123456789", scopes=("bills:read",)) for i in range(4)
    ]
    table = TokenTable.from_settings(tokens)
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    for presented in (tokens[0].token, tokens[3].token, "x", "token-number-0-012345678"):
        compared.clear()
        table.find(presented)
        # all four, whichever matched; digests of equal length, whatever the presented length
        assert len(compared) == 4
        assert {len(a) for pair in compared for a in pair} == {32}
    found = table.find(tokens[2].token)
    assert found is not None
    assert found.name == "token#3"


def test_requests_are_logged_without_tokens(server: ApiServer) -> None:
    with server.client(LIMITED) as client:
        client.get("/v1/bills", params={"period": PERIOD, "access_token": FULL})
        client.get("/v1/bills", params={"period": PERIOD})
    log = server.log()
    assert "/v1/bills?period=2026-10" in log
    assert "token#4" in log
    for token in (FULL, BILLS_ONLY, USAGE_ONLY, LIMITED):
        assert token not in log


def test_tokens_from_the_environment(billed: Path, tmp_path: Path) -> None:
    env = {"METERLAKE_API_TOKENS": f"{USAGE_ONLY}:usage:read,{FULL}:bills:read+usage:read"}
    config = tmp_path / "empty.toml"
    config.write_text("", encoding="utf-8")
    with ApiServer(billed, config, env=env) as running:
        with running.client(USAGE_ONLY) as usage:
            assert usage.get("/v1/alerts").status_code == 200
            assert usage.get("/v1/bills", params={"period": PERIOD}).status_code == 403
        with running.client(FULL) as full:
            assert full.get("/v1/bills", params={"period": PERIOD}).status_code == 200
        with running.client(BILLS_ONLY) as unknown:
            assert unknown.get("/v1/alerts").status_code == 401
