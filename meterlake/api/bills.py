"""``/v1/bills``: the billing system's pull of computed charges.

A period's bills are listed in a stable order -- ``issued_at``, then ``bill_id`` -- every
version of every bill, a replaced version marked with the ``superseded_by`` that replaced it.
Pages are cut by keyset: the signed cursor (:mod:`meterlake.api.cursor`) holds the last bill's
sort key and the query it belongs to, so a new version issued while a client pages sorts after
everything it has seen, and pulling a period again gives the same bills in the same bytes.

Only released bills are served unless ``status=held`` or ``status=all`` asks for held ones
(bills a pre-release check held for review; a review releases them).
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and some name types local to the function that builds the routes.

from typing import Annotated, Any, Final, Literal

import polars as pl
from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.responses import Response

from meterlake.api.auth import Principal
from meterlake.api.cursor import signed_page
from meterlake.api.errors import ApiError
from meterlake.api.lake import PeriodBills
from meterlake.api.models import BillPage, BillWithLines
from meterlake.api.params import ID_PATTERN, PERIOD_PATTERN, check_id
from meterlake.api.render import JSON_OBJECT, json_array, json_response, with_field
from meterlake.api.service import Service
from meterlake.config.ids import validate_partition_value

StatusFilter = Literal["released", "held", "all"]
StatusParam = Annotated[
    StatusFilter, Query(description="`released` (the default), `held` for review, or `all`.")
]
MAX_LIMIT: Final = 10_000


def shown_status(status: StatusFilter) -> pl.Expr:
    """Which bill versions a ``status`` filter shows."""
    return pl.lit(True) if status == "all" else pl.col("status") == status


def bills_page(
    bills: PeriodBills,
    *,
    key: bytes,
    status: StatusFilter,
    account: str | None,
    readable: frozenset[str] | None,
    after: str | None,
    limit: int,
) -> dict[str, Any]:
    """One page of a period's bills as the JSON body, with the cursor of the next page.

    Parameters
    ----------
    bills
        The period's bills.
    key
        The cursor key.
    status, account
        The client's filters.
    readable
        The accounts the client's token may read (None: all).
    after
        The cursor of the previous page, if any.
    limit
        Bills per page, at most.

    Raises
    ------
    CursorError
        ``after`` does not verify, or was made for other filters.
    """
    keep = shown_status(status)
    if account is not None:
        keep &= pl.col("account") == account
    if readable is not None:
        keep &= pl.col("account").is_in(sorted(readable))
    shown, following = signed_page(
        bills.rows,
        key=key,
        query=f"bills|{bills.period}|{status}|{account or ''}",
        after=after,
        keep=keep,
        limit=limit,
        id_column="bill_id",
    )
    return {
        "period": bills.period,
        "status": status,
        "account": account,
        "limit": limit,
        "count": shown.height,
        "bills": json_array(shown[JSON_OBJECT]),
        "next": following,
    }


def bills_router(service: Service) -> APIRouter:
    """The ``/v1/bills`` endpoints (scope ``bills:read``)."""
    router = APIRouter(prefix="/v1/bills", tags=["bills"])
    bills_reader = service.require("bills:read")

    @router.get(
        "",
        summary="The bills of a billing period, page by page",
        responses={200: {"model": BillPage}},
    )
    def list_bills(
        request: Request,
        principal: Annotated[Principal, Depends(bills_reader)],
        period: Annotated[
            str,
            Query(
                pattern=PERIOD_PATTERN,
                description="The billing period, YYYY-MM.",
                examples=["2026-10"],
            ),
        ],
        status: StatusParam = "released",
        account: Annotated[
            str | None,
            Query(min_length=1, max_length=128, description="Only this account's bills."),
        ] = None,
        after: Annotated[
            str | None,
            Query(
                min_length=1,
                max_length=512,
                description="The `next` cursor of the previous page; omit it for the first.",
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT, description="Bills per page.")] = 1000,
    ) -> Response:
        """Every version of every bill of ``period``, ordered by ``issued_at`` then ``bill_id``.

        Follow ``next`` until it is null. The same pull gives the same bytes; a version
        issued meanwhile comes last. A replaced version names its ``superseded_by``.
        """
        validate_partition_value("period", period)
        if account is not None and not principal.may_read(account):
            raise ApiError(403, "this token may not read that account", parameter="account")
        body = bills_page(
            service.reader.bills(period),
            key=service.cursor_key,
            status=status,
            account=account,
            readable=principal.accounts,
            after=after,
            limit=limit,
        )
        return json_response(request, body)

    @router.get(
        "/{bill_id}",
        summary="One bill with its lines",
        responses={200: {"model": BillWithLines}, 304: {"description": "Not modified"}},
    )
    def get_bill(
        request: Request,
        principal: Annotated[Principal, Depends(bills_reader)],
        bill_id: Annotated[
            str, Path(pattern=ID_PATTERN, max_length=64, examples=["b-5d0c4e1f2a3b4c5d6e7f8091"])
        ],
        status: StatusParam = "released",
    ) -> Response:
        """The bill ``bill_id`` (any version) and its lines in order. The answer has an
        ``ETag``; ask with ``If-None-Match`` to get 304 when it has not changed."""
        check_id(bill_id, "bill_id")
        found = service.reader.find_bill(bill_id)
        if found is None or not principal.may_read(found[0].rows["account"][found[1]]):
            raise ApiError(404, f"no bill {bill_id}", parameter="bill_id")
        bills, row = found
        bill_status = bills.rows["status"][row]
        if status not in ("all", bill_status):
            raise ApiError(
                404,
                f"bill {bill_id} is {bill_status}, not {status}; ask with status=all to see it",
                parameter="bill_id",
            )
        lines = service.reader.lines(bills.period).lines(bill_id)[JSON_OBJECT]
        body = with_field(bills.rows[JSON_OBJECT][row], "lines", json_array(lines))
        return json_response(request, body)

    return router
