"""Opaque, tamper-proof page cursors: a small JSON position signed with the server's key.

A cursor is ``base64url(payload) "." base64url(tag)`` where ``payload`` is compact JSON naming
the query it belongs to and the last row of the page (its sort key), and ``tag`` the first 16
bytes of HMAC-SHA256(key, payload). Nothing random goes in, so the same position of the same
query always gives the same cursor (a repeated pull is byte for byte the same), and a cursor
that was edited, cut short or signed with another key is refused before its payload is read.

Keyset pagination: the next page starts after the last row's key, so rows written while a
client pages (new bill versions sort last) never shift what the client has not seen yet.

>>> key = b"k" * 32
>>> cursor = sign_cursor(key, {"q": "bills|2026-10", "k": [1, "b-1"]})
>>> open_cursor(key, cursor, query="bills|2026-10")
(1, 'b-1')
>>> open_cursor(key, cursor[:-2] + "AA", query="bills|2026-10")
Traceback (most recent call last):
...
meterlake.api.errors.CursorError: after: the cursor is not valid (changed, cut short or made by \
another server); start the pull again without `after`
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import orjson
import polars as pl

from meterlake.api.errors import CursorError
from meterlake.api.lake import page
from meterlake.config.errors import ConfigError

MAX_CURSOR_CHARS: Final = 512
"""Longer ``after`` values are refused before anything else is done with them."""
KEY_BYTES: Final = 32
_TAG_BYTES: Final = 16
_INVALID: Final = (
    "after: the cursor is not valid (changed, cut short or made by another server); "
    "start the pull again without `after`"
)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _tag(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest()[:_TAG_BYTES]


def sign_cursor(key: bytes, payload: Mapping[str, Any]) -> str:
    """The cursor for ``payload`` (JSON-serialisable: strings, numbers, lists)."""
    data = orjson.dumps(dict(payload), option=orjson.OPT_SORT_KEYS)
    return f"{_b64(data)}.{_b64(_tag(key, data))}"


def open_cursor(key: bytes, cursor: str, *, query: str) -> tuple[int, str]:
    """The position (``"k"``: a sort key and an id) in a cursor made by :func:`sign_cursor`
    for ``query`` (``"q"``).

    Raises
    ------
    CursorError
        The cursor is too long, malformed, does not verify with ``key`` or names another query.
    """
    if len(cursor) > MAX_CURSOR_CHARS or cursor.count(".") != 1:
        raise CursorError(_INVALID)
    body, _, tag = cursor.partition(".")
    try:
        data, given = _unb64(body), _unb64(tag)
    except (binascii.Error, ValueError):
        raise CursorError(_INVALID) from None
    if not hmac.compare_digest(given, _tag(key, data)):
        raise CursorError(_INVALID)
    try:
        payload = orjson.loads(data)
    except orjson.JSONDecodeError:  # signed by us, so only a key shared with other software
        raise CursorError(_INVALID) from None
    position = payload.get("k") if isinstance(payload, dict) else None
    if not (
        isinstance(position, list)
        and len(position) == 2
        and isinstance(position[0], int)
        and isinstance(position[1], str)
    ):
        raise CursorError(_INVALID)
    if payload.get("q") != query:
        raise CursorError(
            "after: this cursor belongs to another query; pass the same period, status and "
            "filters it came with, or start again without `after`"
        )
    return position[0], position[1]


def signed_page(
    rows: pl.DataFrame,
    *,
    key: bytes,
    query: str,
    after: str | None,
    keep: pl.Expr,
    limit: int,
    id_column: str,
) -> tuple[pl.DataFrame, str | None]:
    """A :func:`~meterlake.api.lake.page` of ``rows`` after the cursor ``after`` of ``query``,
    and the cursor of the next page (None: this is the last).

    Raises
    ------
    CursorError
        ``after`` does not verify, or belongs to another query.
    """
    position = None if after is None else open_cursor(key, after, query=query)
    shown, last = page(rows, position, keep, limit, id_column)
    return shown, None if last is None else sign_cursor(key, {"q": query, "k": list(last)})


def load_cursor_key(path: Path | None) -> bytes:
    """The bytes of ``path``, unchanged (at least 32), or a new random key when ``path`` is None.

    Raises
    ------
    ConfigError
        The file cannot be read or is too short.
    """
    if path is None:
        return secrets.token_bytes(KEY_BYTES)
    try:
        key = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"[api] cursor_key_file {path}: cannot read it ({exc})") from None
    # The file's bytes are the key as they are: random bytes may well be whitespace, so
    # stripping would shorten (and change) a key made with /dev/urandom.
    if len(key) < KEY_BYTES:
        raise ConfigError(
            f"[api] cursor_key_file {path}: holds {len(key)} bytes, needs at least "
            f"{KEY_BYTES}; make one with `head -c 32 /dev/urandom > {path.name}`"
        )
    return key
