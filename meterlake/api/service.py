"""What every endpoint shares: the lake reader, the tokens, the cursor key and the clock."""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations at runtime,
# and some name types local to the function that builds the routes.

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from meterlake.api.auth import Principal, TokenTable, authorize
from meterlake.api.lake import LakeReader
from meterlake.api.params import reject_unknown_params
from meterlake.config.settings import Scope

Clock = Callable[[], dt.datetime]

bearer = HTTPBearer(
    auto_error=False,
    description="A token of `[[api.tokens]]` or `$METERLAKE_API_TOKENS`, as "
    "`Authorization: Bearer TOKEN`.",
)


@dataclass(frozen=True)
class Service:
    """The parts of a running API. ``clock`` gives the current UTC time."""

    reader: LakeReader
    tokens: TokenTable
    cursor_key: bytes
    clock: Clock

    def require(self, scope: Scope | None) -> Callable[..., Awaitable[Principal]]:
        """A dependency that answers 401/403 unless the request's token holds ``scope``
        (None: any valid token), records the token's name for the request log, and then
        answers 400 for a query parameter the route does not take."""

        async def principal(
            request: Request,
            _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
        ) -> Principal:
            found = authorize(self.tokens, request.headers.get("authorization"), scope)
            request.state.principal = found.name
            reject_unknown_params(request)
            return found

        return principal
