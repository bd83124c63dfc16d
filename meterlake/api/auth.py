"""Bearer tokens: who is asking, what they may read.

Tokens come from ``[[api.tokens]]`` or ``$METERLAKE_API_TOKENS`` (see
:mod:`meterlake.config.settings`). A presented token is hashed and compared with the SHA-256 of
every configured token with :func:`hmac.compare_digest`, all of them, whichever matches: the time
taken says nothing about how much of a token was right, nor which token it was. The server keeps
only the hashes; logs name a token by its position (``token#2``), never by its text.

Scopes: ``bills:read`` for ``/v1/bills``, ``usage:read`` for ``/v1/meters`` and ``/v1/alerts``;
``/metrics`` (and the docs, unless public) take any valid token. A token with ``accounts`` reads
only those accounts' bills, meters and alerts: other accounts' rows are left out of lists, and a
single bill or meter of another account is answered 404, as if it did not exist.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from meterlake.api.errors import ApiError
from meterlake.config.settings import ApiToken, Scope

_CHALLENGE: Final = 'Bearer realm="meterlake"'


@dataclass(frozen=True)
class Principal:
    """The holder of a valid token: a name for logs, its scopes and its accounts."""

    name: str
    scopes: frozenset[str]
    accounts: frozenset[str] | None
    """None: every account."""

    def may_read(self, account: str | None) -> bool:
        """True if this token may read rows of ``account`` (null: only unlimited tokens).

        >>> Principal("token#1", frozenset(), frozenset({"acc-1"})).may_read("acc-2")
        False
        """
        return self.accounts is None or (account is not None and account in self.accounts)


@dataclass(frozen=True)
class TokenTable:
    """The configured tokens, as hashes."""

    entries: tuple[tuple[bytes, Principal], ...]

    @classmethod
    def from_settings(cls, tokens: Sequence[ApiToken]) -> TokenTable:
        return cls(
            tuple(
                (
                    _digest(t.token),
                    Principal(
                        f"token#{i}",
                        frozenset(t.scopes),
                        None if t.accounts is None else frozenset(t.accounts),
                    ),
                )
                for i, t in enumerate(tokens, start=1)
            )
        )

    def find(self, presented: str) -> Principal | None:
        """The principal of ``presented``, or None; compares with every token in constant time.

        >>> table = TokenTable.from_settings([ApiToken(token="s3cret-token-0123456",
        ...                                            scopes=("bills:read",))])
        >>> table.find("s3cret-token-0123456").name, table.find("s3cret-token-0123457")
        ('token#1', None)
        """
        digest = _digest(presented)
        found = None
        for expected, principal in self.entries:
            if hmac.compare_digest(expected, digest):  # no early exit: every token is compared
                found = principal
        return found


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def authorize(table: TokenTable, authorization: str | None, scope: Scope | None) -> Principal:
    """The principal of an ``Authorization`` header that holds ``scope`` (None: any scope).

    Raises
    ------
    ApiError
        401 without a bearer token or with an unknown one; 403 when the token lacks ``scope``.
    """
    scheme, _, credentials = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise ApiError(
            401,
            "a bearer token is required: send the header `Authorization: Bearer TOKEN`",
            headers={"WWW-Authenticate": _CHALLENGE},
        )
    principal = table.find(credentials.strip())
    if principal is None:
        raise ApiError(
            401,
            "the bearer token is not valid",
            headers={"WWW-Authenticate": f'{_CHALLENGE}, error="invalid_token"'},
        )
    if scope is not None and scope not in principal.scopes:
        raise ApiError(
            403,
            f"this token lacks the scope {scope}",
            headers={
                "WWW-Authenticate": f'{_CHALLENGE}, error="insufficient_scope", scope="{scope}"'
            },
        )
    return principal
