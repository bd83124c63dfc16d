"""Operations over real HTTP: /healthz, /metrics, the OpenAPI document and docs, TLS, many
clients at once; and the 503 a busy lake gets."""

from __future__ import annotations

import asyncio
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import trustme

from meterlake.api.app import create_app
from meterlake.api.lake import LakeReader
from meterlake.config.errors import LakeBusyError
from meterlake.config.settings import ApiSettings, ApiToken, Settings
from tests.api.lakes import FULL, PERIOD
from tests.api.server import ApiServer, write_config
from tests.cli_runner import run_cli

CLIENTS = 16


def test_healthz_and_metrics(server: ApiServer) -> None:
    with server.client(FULL) as client:
        health = client.get("/healthz")
        assert (health.status_code, health.json()) == (200, {"status": "ok"})
        client.get("/v1/bills", params={"period": PERIOD})
        client.get("/v1/bills/b-0000000000000000000000ff")
        client.get("/v1/no/such/route/../..")
        metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
    text = metrics.text
    assert 'meterlake_api_requests_total{method="GET",route="/v1/bills",status="200"}' in text
    assert 'route="/v1/bills/{bill_id}",status="404"' in text
    assert 'route="unmatched",status="404"' in text
    assert "no/such" not in text  # paths never become labels
    assert 'meterlake_api_request_duration_seconds_bucket{le="0.1",method="GET"' in text
    files = {
        line.split('"')[1]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("meterlake_lake_files{")
    }
    assert files["bills"] >= 2
    assert files["readings"] == 0
    assert 'meterlake_lake_age_seconds{table="bills"}' in text
    assert 'meterlake_lake_age_seconds{table="readings"}' not in text
    assert 'meterlake_lake_last_write_timestamp_seconds{table="intervals"}' in text


def test_the_openapi_document_and_the_docs(server: ApiServer) -> None:
    with server.client(FULL) as client:
        document = client.get("/openapi.json").json()
        docs = client.get("/docs")
    assert document["info"]["title"] == "meterlake"
    assert set(document["paths"]) == {
        "/v1/bills",
        "/v1/bills/{bill_id}",
        "/v1/meters/{meter_id}/usage",
        "/v1/meters/{meter_id}/curve",
        "/v1/meters/{meter_id}/tier-progress",
        "/v1/alerts",
        "/healthz",
        "/metrics",
    }
    listing = document["paths"]["/v1/bills"]["get"]
    assert listing["security"] == [{"HTTPBearer": []}]
    assert "422" not in listing["responses"]
    assert "application/problem+json" in listing["responses"]["400"]["content"]
    assert docs.status_code == 200
    assert "swagger-ui" in docs.text


def test_tls_with_a_configured_certificate_and_public_docs(billed: Path, tmp_path: Path) -> None:
    authority = trustme.CA()  # a throwaway CA and a certificate for the loopback address
    served = authority.issue_cert("127.0.0.1")
    served.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    served.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    authority.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    config = write_config(
        tmp_path / "meterlake.toml",
        [{"token": FULL, "scopes": ["bills:read"]}],
        tls_cert="cert.pem",  # relative to the config file
        tls_key="key.pem",
        public_docs=True,
    )
    with ApiServer(billed, config, verify=tmp_path / "ca.pem") as running:
        assert running.url.startswith("https://127.0.0.1:")
        with running.client(FULL) as client:
            assert client.get("/v1/bills", params={"period": PERIOD}).status_code == 200
        with running.client() as anonymous:
            assert anonymous.get("/openapi.json").status_code == 200  # public_docs
            assert anonymous.get("/docs").status_code == 200
            assert anonymous.get("/metrics").status_code == 401
        with pytest.raises(httpx.TransportError):  # plain HTTP on the TLS port: hung up on
            httpx.get(running.url.replace("https", "http") + "/healthz", timeout=5)


def test_serve_refuses_a_missing_certificate_and_a_bad_lake(billed: Path, tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "meterlake.toml", [], tls_cert="nope.pem", tls_key="nope-key.pem"
    )
    result = run_cli("serve", "--lake", billed, "--config", config, "--port", "0")
    assert result.returncode == 2
    assert "tls_cert" in result.stderr
    half = write_config(tmp_path / "half.toml", [], tls_cert="cert.pem")
    result = run_cli("serve", "--lake", billed, "--config", half, "--port", "0")
    assert result.returncode == 2
    assert "tls_cert and tls_key go together" in result.stderr
    result = run_cli("serve", "--lake", tmp_path / "not-a-lake", "--config", half, "--port", "0")
    assert result.returncode == 2


def test_many_clients_at_once_get_the_same_answers(many: Path, many_server: ApiServer) -> None:
    with many_server.client(FULL) as client:
        reference = [client.get("/v1/bills", params={"period": PERIOD, "limit": 2000}).content]
        ids = [
            b["bill_id"]
            for b in client.get("/v1/bills", params={"period": PERIOD, "limit": 10000}).json()[
                "bills"
            ]
        ]
        singles = {i: client.get(f"/v1/bills/{i}").content for i in ids[:40]}

    def work(seed: int) -> tuple[list[bytes], dict[str, bytes]]:
        chosen = random.Random(seed).sample(sorted(singles), 20)
        with many_server.client(FULL) as own:
            page = own.get("/v1/bills", params={"period": PERIOD, "limit": 2000})
            assert page.status_code == 200
            got = {i: own.get(f"/v1/bills/{i}").content for i in chosen}
        return [page.content], got

    with ThreadPoolExecutor(CLIENTS) as pool:
        results = list(pool.map(work, range(CLIENTS)))
    for pages, got in results:
        assert pages == reference
        assert all(singles[i] == body for i, body in got.items())


def test_a_busy_lake_is_a_503_not_a_500(billed: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def busy(self: LakeReader, period: str) -> None:
        raise LakeBusyError("another process holds the lake")

    monkeypatch.setattr(LakeReader, "bills", busy)
    settings = Settings(api=ApiSettings(tokens=(ApiToken(token=FULL, scopes=("bills:read",)),)))
    app = create_app(billed, settings)

    async def ask() -> httpx.Response:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as client:
            return await client.get(
                "/v1/bills", params={"period": PERIOD}, headers={"Authorization": f"Bearer {FULL}"}
            )

    response = asyncio.run(ask())
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    assert "try again" in response.json()["detail"]
