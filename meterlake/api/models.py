"""The shapes of the API's answers, for the OpenAPI document.

The endpoints write their JSON straight from frames (:mod:`meterlake.api.render`); these models
describe it, and the schemathesis test checks every answer against them. Money is a decimal
string (``"193.7500"``), days are ``YYYY-MM-DD``, instants UTC RFC 3339 (``...Z``). A field is
nullable when the lake may hold null in it.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

Money = str


class _Doc(BaseModel):
    model_config = ConfigDict(populate_by_name=True)


class Problem(_Doc):
    """An error answer (RFC 9457 problem details)."""

    type: str = "about:blank"
    title: str
    status: int
    detail: str = Field(description="What was wrong and how to fix it.")
    parameter: str | None = Field(None, description="The parameter at fault, if one is.")


class Health(_Doc):
    status: str = Field(description="`ok`, or `unavailable` when the lake cannot be read.")


class Bill(_Doc):
    """One version of a meter's bill for a billing period."""

    bill_id: str
    meter_id: str | None
    account: str | None
    period: str = Field(description="The billing period, YYYY-MM.")
    period_start: str | None = Field(description="First local day billed.")
    period_end: str | None = Field(description="Local day after the last one billed.")
    tariff_id: str | None
    tariff_version: str | None
    interval_version: str | None
    energy_import_kwh: float | None
    energy_export_kwh: float | None
    billed_import_kwh: float | None
    export_carry_kwh: float | None
    estimated_share: float | None
    intervals: int | None
    intervals_estimated: int | None
    intervals_missing: int | None
    total_amount: Money | None = Field(description="Exact decimal, as a string.")
    adjustment_amount: Money | None = Field(
        description="This version's total minus the superseded version's."
    )
    currency: str | None
    version: int | None
    supersedes: str | None = Field(description="The version this one replaces.")
    superseded_by: str | None = Field(
        description="The version issued to replace this one (it may be held); null: none."
    )
    status: str | None = Field(description="`released`, or `held` for review.")
    hold_reasons: list[str] | None
    released_by: str | None = Field(description="Who released a bill that was held.")
    released_at: str | None
    issued_at: str | None
    run_id: str | None


class BillLine(_Doc):
    line_no: int | None
    line_id: str
    kind: str | None = Field(description="`charge`, `adjustment`, `carry`, ...")
    code: str | None
    description: str | None
    quantity: float | None
    unit: str | None
    rate: Money | None
    amount: Money | None
    currency: str | None


class BillWithLines(Bill):
    lines: list[BillLine] = Field(description="In ``line_no`` order.")


BILL_FIELDS: Final = tuple(Bill.model_fields)
"""The fields of a bill, in the order the answers write them."""
LINE_FIELDS: Final = tuple(BillLine.model_fields)


class BillPage(_Doc):
    period: str
    status: str
    account: str | None
    limit: int
    count: int
    bills: list[Bill]
    next: str | None = Field(
        description="Cursor of the next page (pass it as `after`); null: this was the last."
    )


class IntervalStep(_Doc):
    start: str = Field(description="Start of the interval, UTC.")
    minutes: int | None
    energy_import_kwh: float | None
    energy_export_kwh: float | None
    status: str | None = Field(description="actual, estimated, edited, missing or suspect.")
    flags: list[str] | None
    method: str | None = Field(description="How an estimated value was estimated.")


class UsageStep(_Doc):
    start: str = Field(description="The local day (YYYY-MM-DD) or month (YYYY-MM).")
    energy_import_kwh: float | None
    energy_export_kwh: float | None
    status: str = Field(
        description="`actual`: every interval measured; `missing`: no energy at all; "
        "`estimated`: some of it estimated, edited, suspect or missing."
    )
    intervals: int
    actual: int
    estimated: int
    suspect: int
    missing: int


class Usage(_Doc):
    meter_id: str
    resolution: str
    timezone: str = Field(description="The meter's zone, in which days and months are local.")
    from_: str = Field(alias="from")
    to: str
    steps: list[IntervalStep] | list[UsageStep]


class CurvePoint(_Doc):
    start: str = Field(description="Local start of the interval, with its UTC offset.")
    power_kw: float | None


class Curve(_Doc):
    meter_id: str
    date: str
    timezone: str | None
    interval_minutes: int | None
    energy_kwh: float | None
    export_kwh: float | None
    peak_kw: float | None
    min_kw: float | None
    mean_kw: float | None
    base_load_kw: float | None
    load_factor: float | None
    energy_peak_kwh: float | None
    energy_flat_kwh: float | None
    energy_valley_kwh: float | None
    energy_critical_kwh: float | None
    intervals: int | None
    intervals_estimated: int | None
    intervals_missing: int | None
    actual_share: float | None
    computed_at: str | None
    points: list[CurvePoint]


class TierProgress(_Doc):
    meter_id: str
    as_of: str | None
    tariff_id: str | None
    tier_reset: str | None
    window_start: str | None
    window_end: str | None
    energy_kwh: float | None
    tier: int | None
    next_threshold_kwh: float | None
    threshold_share: float | None
    daily_kwh: float | None
    projected_crossing: str | None
    days_to_crossing: int | None
    computed_at: str | None


class Alert(_Doc):
    alert_id: str
    rule: str | None
    severity: str | None
    meter_id: str | None
    state: str | None = Field(description="The latest event: raised, renotified or resolved.")
    raised_at: str | None
    updated_at: str | None
    message: str | None
    values: dict[str, Any] | None = Field(description="The figures behind the message.")


class AlertPage(_Doc):
    since: str | None
    state: str
    meter_id: str | None
    limit: int
    count: int
    alerts: list[Alert]
    next: str | None
