"""A real ``meterlake serve`` for the API tests and the benchmark, and seeded synthetic bills.

:class:`ApiServer` starts ``python -m meterlake serve --port 0`` (a free port: the command
announces the address it bound), waits for ``/healthz`` and stops the process with SIGTERM.
:func:`synthetic_bills` makes a period of bills as a bill run writes them: version 1 of every
meter, some corrected by a version 2 issued a day later, some held for review, each with its
lines adding up to its total.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import selectors
import signal
import ssl
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from types import TracebackType
from typing import Any, Final

import httpx
import numpy as np
import polars as pl

from meterlake.config.schemas import BILL_LINES, BILLS

REPO: Final = Path(__file__).resolve().parents[2]
ISSUED: Final = dt.datetime(2026, 11, 2, 3, tzinfo=dt.UTC)
"""When the synthetic bill run issued version 1 (a batch a minute, four batches)."""


def write_config(path: Path, tokens: list[dict[str, Any]], **api: Any) -> Path:
    """A ``meterlake.toml`` with ``[api]`` keys ``api`` and one ``[[api.tokens]]`` per token."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, Path):
            return json.dumps(str(v))
        return json.dumps(v)  # strings, numbers and lists of strings read the same in TOML

    lines = ["[api]", *(f"{k} = {value(v)}" for k, v in api.items())]
    for token in tokens:
        lines += ["", "[[api.tokens]]", *(f"{k} = {value(v)}" for k, v in token.items())]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


class ApiServer:
    """``meterlake serve`` on a free port of 127.0.0.1, as a context manager.

    Parameters
    ----------
    lake
        The lake to serve.
    config
        The settings file (tokens, TLS, ...).
    env
        Extra environment variables (``METERLAKE_API_TOKENS``).
    verify
        What the client checks a TLS certificate against (a CA file), for https.
    """

    def __init__(
        self,
        lake: Path,
        config: Path | None = None,
        *,
        env: dict[str, str] | None = None,
        verify: Path | bool = True,
        startup_s: float = 60.0,
    ) -> None:
        self.lake = lake
        self.config = config
        self.env = env or {}
        self.verify = verify
        self.startup_s = startup_s
        self.url = ""
        self.log_path = lake.parent / f"serve-{os.getpid()}-{time.monotonic_ns()}.log"
        self.process: subprocess.Popen[str] | None = None

    def __enter__(self) -> ApiServer:
        args = ["serve", "--lake", str(self.lake), "--port", "0"]
        if self.config is not None:
            args += ["--config", str(self.config)]
        with self.log_path.open("w", encoding="utf-8") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "meterlake", *args],
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
                cwd=self.lake.parent,
                env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO), **self.env},
            )
        try:
            self.url = self._announced_url()
            self._wait_healthy()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _announced_url(self) -> str:
        assert self.process is not None and self.process.stdout is not None
        selector = selectors.DefaultSelector()
        selector.register(self.process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + self.startup_s
        while time.monotonic() < deadline:
            if selector.select(timeout=0.2):
                line = self.process.stdout.readline()
                if not line:
                    break
                if " on http" in line:
                    return line.rsplit(" on ", 1)[1].strip()
        raise AssertionError(f"meterlake serve did not start:\n{self.log()}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.startup_s
        with self.client() as client:
            while time.monotonic() < deadline:
                try:
                    if client.get("/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                time.sleep(0.05)
        raise AssertionError(f"meterlake serve is not healthy:\n{self.log()}")

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()

    def log(self) -> str:
        """What the server wrote to stderr so far (its log)."""
        return self.log_path.read_text(encoding="utf-8", errors="replace")

    def client(self, token: str | None = None, **options: Any) -> httpx.Client:
        """An HTTP client of the server, sending ``token`` as the bearer token."""
        headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
        verify: ssl.SSLContext | bool = (
            self.verify
            if isinstance(self.verify, bool)
            else (ssl.create_default_context(cafile=str(self.verify)))
        )
        return httpx.Client(
            base_url=self.url,
            headers=headers,
            timeout=options.pop("timeout", 30.0),
            verify=verify,
            **options,
        )


def _ids(prefix: str, keys: list[str]) -> list[str]:
    return [prefix + hashlib.sha256(k.encode()).hexdigest()[:24] for k in keys]


def synthetic_bills(
    count: int,
    *,
    period: str = "2026-10",
    seed: int = 0,
    corrected: float = 0.05,
    held: float = 0.02,
    accounts: int = 1000,
    lines_per_bill: int = 3,
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """``count`` bill rows of ``period`` and their lines, seeded.

    A share ``corrected`` of the meters has a version 2 (issued a day after version 1, naming
    it in ``supersedes``); a share ``held`` of the other meters' bills is held for review.
    Meter ``m-000001`` belongs to account ``acc-00001`` and so on, modulo ``accounts``. Each
    bill has ``lines_per_bill`` charge lines that add up to its total.
    """
    rng = np.random.default_rng(seed)
    meters = round(count / (1 + corrected))
    fixes = count - meters
    meter_ids = [f"m-{i:06d}" for i in range(1, meters + 1)]
    cents = rng.integers(2_000, 90_000, size=count)
    version = [1] * meters + [2] * fixes
    meter_of = meter_ids + meter_ids[:fixes]
    first_ids = _ids("b-", [f"{m}|{period}|1|{seed}" for m in meter_ids])
    ids = first_ids + _ids("b-", [f"{m}|{period}|2|{seed}" for m in meter_ids[:fixes]])
    held_rows = set(rng.choice(np.arange(fixes, meters), size=round(held * meters), replace=False))
    status = ["held" if i in held_rows else "released" for i in range(count)]
    issued = [ISSUED + dt.timedelta(minutes=i % 4) for i in range(meters)] + [
        ISSUED + dt.timedelta(days=1)
    ] * fixes
    totals = [Decimal(int(c)).scaleb(-2) for c in cents]
    adjustments = [Decimal(0)] * meters + [totals[meters + i] - totals[i] for i in range(fixes)]
    month = dt.date.fromisoformat(f"{period}-01")
    bills = pl.DataFrame(
        {
            "bill_id": ids,
            "meter_id": meter_of,
            "account": [f"acc-{int(m[2:]) % accounts:05d}" for m in meter_of],
            "period": period,
            "period_start": month,
            "period_end": (month + dt.timedelta(days=32)).replace(day=1),
            "tariff_id": "flat",
            "tariff_version": "2026.1",
            "interval_version": [f"v{v}" for v in version],
            "energy_import_kwh": cents / 52.83,
            "energy_export_kwh": 0.0,
            "billed_import_kwh": cents / 52.83,
            "export_carry_kwh": 0.0,
            "estimated_share": rng.uniform(0, 0.2, size=count),
            "intervals": 2976,
            "intervals_estimated": rng.integers(0, 100, size=count),
            "intervals_missing": 0,
            "total_amount": totals,
            "adjustment_amount": adjustments,
            "currency": "CNY",
            "version": version,
            "supersedes": [None] * meters + first_ids[:fixes],
            "status": status,
            "hold_reasons": [["estimated share 0.62 > 0.5"] if s == "held" else [] for s in status],
            "run_id": ["bill-1"] * meters + ["bill-2"] * fixes,
            "issued_at": issued,
        },
        schema_overrides={c: BILLS.schema[c] for c in ("total_amount", "adjustment_amount")},
    )
    lines = _synthetic_lines(ids, totals, period, lines_per_bill)
    return bills.select(BILLS.schema.names()), lines


def _synthetic_lines(
    ids: list[str], totals: list[Decimal], period: str, per_bill: int
) -> pl.DataFrame:
    codes = ["energy", "fixed", "levy", "export_credit", "demand"][:per_bill]
    share = [Decimal("10.00"), Decimal("1.25"), Decimal("-0.50"), Decimal("0.10")][: per_bill - 1]
    amounts = []
    for total in totals:
        rest = list(share)
        amounts += [total - sum(rest, Decimal(0)), *rest]
    return pl.DataFrame(
        {
            "line_id": _ids("l-", [f"{b}|{c}" for b in ids for c in codes]),
            "bill_id": [b for b in ids for _ in codes],
            "period": period,
            "line_no": list(range(1, per_bill + 1)) * len(ids),
            "kind": "charge",
            "code": codes * len(ids),
            "description": [f"{c} charge" for c in codes] * len(ids),
            "quantity": 1.0,
            "unit": "month",
            "rate": amounts,
            "amount": amounts,
            "currency": "CNY",
        },
        schema_overrides={"rate": BILL_LINES.schema["rate"], "amount": BILL_LINES.schema["amount"]},
    ).select(BILL_LINES.schema.names())
