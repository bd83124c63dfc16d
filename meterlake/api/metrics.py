"""``/metrics`` in the Prometheus text format, and the request log.

::

    meterlake_api_requests_total{method, route, status}       requests answered
    meterlake_api_request_duration_seconds{method, route}     latency histogram [s]
    meterlake_lake_files{table}                               data files of each lake table
    meterlake_lake_last_write_timestamp_seconds{table}        newest data file's mtime [s]
    meterlake_lake_age_seconds{table}                         how long ago that was [s]

``route`` is the route's template (``/v1/bills/{bill_id}``), never the requested path, so a
client cannot blow up the number of series; a path no route matched counts as ``unmatched``.
Each app has its own registry (several apps may run in one process, as in the tests).

The request log has one line per request: client address, method, path, status, duration and
the token's name (``token#2``); never a header, so never a token.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import Any, Final

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from meterlake.api.lake import LakeReader
from meterlake.api.service import Clock

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS: Final = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
access_log = logging.getLogger("meterlake.api.access")


_SECRET_WORDS: Final = ("token", "secret", "password", "key", "auth")
_LOGGED_CHARS: Final = 300


def loggable_target(path: str, query: bytes) -> str:
    r"""The request target as logged: parameters whose name suggests a secret are redacted,
    control characters escaped (a client cannot forge log lines) and the length capped.

    >>> loggable_target("/v1/bills", b"period=2026-10&access_token=s3cret")
    '/v1/bills?period=2026-10&access_token=<redacted>'
    >>> loggable_target("/v1/x\nforged", b"")
    '/v1/x\\x0aforged'
    """
    parts = []
    for part in query.decode("latin-1").split("&") if query else []:
        name, sep, _value = part.partition("=")
        secret = any(word in name.lower() for word in _SECRET_WORDS)
        parts.append(f"{name}{sep}<redacted>" if secret and sep else part)
    target = path + ("?" + "&".join(parts) if parts else "")
    cleaned = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in target)
    return cleaned[:_LOGGED_CHARS]


class LakeFreshness(Collector):
    """Per lake table at each scrape: its data files and how old the newest one is."""

    def __init__(self, reader: LakeReader, clock: Clock) -> None:
        self._reader = reader
        self._clock = clock

    def collect(self) -> Iterator[Metric]:
        files = GaugeMetricFamily(
            "meterlake_lake_files", "Data files of a lake table", labels=["table"]
        )
        last = GaugeMetricFamily(
            "meterlake_lake_last_write_timestamp_seconds",
            "Modification time of the table's newest data file",
            labels=["table"],
        )
        age = GaugeMetricFamily(
            "meterlake_lake_age_seconds",
            "Seconds since the table's newest data file was written",
            labels=["table"],
        )
        now = self._clock().timestamp()
        for table, (count, newest) in sorted(self._reader.last_writes().items()):
            files.add_metric([table], count)
            if count:
                last.add_metric([table], newest)
                age.add_metric([table], max(0.0, now - newest))
        yield from (files, last, age)


class Metrics:
    """The API's metrics registry."""

    def __init__(self, reader: LakeReader, clock: Clock) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "meterlake_api_requests",
            "HTTP requests answered",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "meterlake_api_request_duration_seconds",
            "Time to answer an HTTP request",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(LakeFreshness(reader, clock))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestLog:
    """ASGI middleware: counts, times and logs every HTTP request."""

    def __init__(
        self, app: ASGIApp, metrics: Metrics, monotonic: Callable[[], float] = time.perf_counter
    ) -> None:
        self.app = app
        self.metrics = metrics
        self.monotonic = monotonic

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = self.monotonic()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            elapsed = self.monotonic() - began
            route = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.observe(scope["method"], route, status, elapsed)
            state: dict[str, Any] = scope.get("state") or {}
            client = scope.get("client") or ("-", 0)
            access_log.info(
                "%s %s %s %d %.1fms %s",
                client[0],
                scope["method"],
                loggable_target(scope["path"], scope.get("query_string", b"")),
                status,
                elapsed * 1000,
                state.get("principal", "-"),
            )
