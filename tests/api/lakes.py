"""The lakes and tokens the API tests serve.

``billed_lake``: the bill tests' three-meter October (``tests/tariffs/test_bill_job.py``)
billed by a real bill run, plus m-4 and m-5 whose energy is all estimated (held for review;
m-5 released by a person), a VEE correction of m-1 that issues its version 2, and the sample
daily figures, tier progress and alerts of ``tests/conftest.py``.

``many_bills_lake``: 10,000 synthetic bill rows of one period (:func:`synthetic_bills`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Final

import polars as pl

from meterlake.config.schemas import (
    ALERTS,
    BILL_LINES,
    BILLS,
    DAILY_USAGE,
    INTERVALS,
    METERS,
    TIER_PROGRESS,
)
from meterlake.storage.layout import init_lake
from meterlake.storage.writer import write_table
from meterlake.tariffs.bill_job import release_bill, run_billing
from tests.api.server import synthetic_bills, write_config
from tests.conftest import sample_frame
from tests.tariffs.helpers import FLAT, write_tariff
from tests.tariffs.test_bill_job import HOUR, NOW, OCT, fleet_lake, intervals, meters

FULL: Final = "full-token-0123456789abcdef"
BILLS_ONLY: Final = "bills-token-0123456789abcd"
USAGE_ONLY: Final = "usage-token-0123456789abcd"
LIMITED: Final = "limited-token-0123456789ab"
"""Both scopes, for the accounts ``LIMITED_ACCOUNTS`` only."""
LIMITED_ACCOUNTS: Final = ("acc-m-1", "acc-00001", "acc-00002")
PERIOD: Final = "2026-10"
MANY_BILLS: Final = 10_000


def tokens_config(path: Path, **api: Any) -> Path:
    """A config with the four test tokens (and ``[api]`` keys ``api``)."""
    both = ["bills:read", "usage:read"]
    return write_config(
        path,
        [
            {"token": FULL, "scopes": both},
            {"token": BILLS_ONLY, "scopes": ["bills:read"]},
            {"token": USAGE_ONLY, "scopes": ["usage:read"]},
            {"token": LIMITED, "scopes": both, "accounts": list(LIMITED_ACCOUNTS)},
        ],
        **api,
    )


def billed_lake(root: Path) -> Path:
    """See the module docstring. Bills of October 2026:

    m-1 version 1 (superseded) and 2, m-2, m-3 released; m-4 held; m-5 held, then released.
    """
    lake = fleet_lake(root)
    estimated = pl.concat([intervals(m, OCT, 31 * 24, 0.3) for m in ("m-4", "m-5")])
    write_table(lake, INTERVALS, estimated.with_columns(status=pl.lit("estimated")))
    write_table(
        lake,
        METERS,
        meters(
            [{"meter_id": m, "account": f"acc-{m}", "tariff_id": "flat"} for m in ("m-4", "m-5")]
        ),
    )
    tariffs = {"flat": write_tariff(root.parent / "tariffs", "flat", FLAT)}
    first = run_billing(lake, tariffs, PERIOD, run_id="bill-1", now=NOW)
    held = first.bills.filter(pl.col("meter_id") == "m-5")["bill_id"][0]
    release_bill(lake, held, reviewer="li.wei", note="checked", now=NOW + HOUR)
    # VEE corrects ten hours of m-1: the next run issues its version 2
    write_table(lake, INTERVALS, intervals("m-1", OCT + 100 * HOUR, 10, 2.5, version=2))
    run_billing(lake, tariffs, PERIOD, run_id="bill-2", now=NOW + 2 * HOUR)
    for table in (DAILY_USAGE, TIER_PROGRESS, ALERTS):
        write_table(lake, table, sample_frame(table))
    return lake


def many_bills_lake(root: Path, count: int = MANY_BILLS, *, seed: int = 7) -> Path:
    """A lake with ``count`` synthetic bill rows (and their lines) of :data:`PERIOD`."""
    lake = init_lake(root)
    bills, lines = synthetic_bills(count, period=PERIOD, seed=seed)
    write_table(lake, BILL_LINES, lines)
    write_table(lake, BILLS, bills)
    return lake
