"""Frames to JSON bytes, and responses with an ETag.

The same rows always give the same bytes: columns in a fixed order, money as exact decimal
strings (``"193.7500"``: a JSON number would be a binary float), days as ``YYYY-MM-DD``,
instants as UTC RFC 3339 (``2026-11-02T03:00:00Z``), non-finite floats as null. Nothing about
the request or the time of the answer goes into a body, so a repeated request is answered with
the same bytes, and the ETag (a hash of the body) tells a client that nothing changed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson
import polars as pl
from fastapi import Request
from starlette.responses import Response

JSON_TYPE: Final = "application/json"
JSON_OBJECT: Final = "_json"
"""The column of a snapshot that holds each row rendered (:func:`json_objects`)."""
INSTANT_FORMAT: Final = "%Y-%m-%dT%H:%M:%S%.fZ"
CACHE_HEADERS: Final = {"Cache-Control": "private, no-cache", "Vary": "Authorization"}


def json_ready(frame: pl.DataFrame, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """``frame`` (its ``columns``, in that order) with every value as JSON will show it.

    >>> import datetime as dt
    >>> from decimal import Decimal
    >>> frame = pl.DataFrame({"amount": [Decimal("1.5")], "day": [dt.date(2026, 10, 1)],
    ...     "at": [dt.datetime(2026, 11, 2, 3, tzinfo=dt.UTC)]},
    ...     schema_overrides={"amount": pl.Decimal(18, 4)})
    >>> json_ready(frame).row(0)
    ('1.5000', '2026-10-01', '2026-11-02T03:00:00Z')
    """
    chosen = frame.select(columns) if columns is not None else frame
    return chosen.with_columns(
        pl.col(pl.Decimal).cast(pl.String),
        pl.col(pl.Date).dt.strftime("%Y-%m-%d"),
        pl.col(pl.Datetime).dt.convert_time_zone("UTC").dt.strftime(INSTANT_FORMAT),
    )


def json_rows(frame: pl.DataFrame) -> orjson.Fragment:
    """The rows of ``frame`` as a JSON array of objects, ready to embed with orjson."""
    return orjson.Fragment(json_ready(frame).write_json().encode())


def json_objects(frame: pl.DataFrame, columns: Sequence[str]) -> pl.Series:
    """Each row of ``frame`` (its ``columns``) as the text of a JSON object, as
    :func:`json_rows` writes it: rendered once, an answer only joins them.

    >>> json_objects(pl.DataFrame({"a": [1, None], "b": ["x", "y"]}), ["b", "a"]).to_list()
    ['{"b":"x","a":1}', '{"b":"y","a":null}']
    """
    ready = json_ready(frame, columns)
    if not ready.height:
        return pl.Series(JSON_OBJECT, [], dtype=pl.String)
    return ready.select(pl.struct(pl.all()).struct.json_encode().alias(JSON_OBJECT)).to_series()


def json_array(objects: pl.Series) -> orjson.Fragment:
    """A JSON array of objects rendered by :func:`json_objects`, ready to embed with orjson."""
    joined = objects.str.join(",").item() if objects.len() else ""
    return orjson.Fragment(("[" + joined + "]").encode())


def with_field(json_object: str, name: str, value: orjson.Fragment) -> bytes:
    """``json_object`` (an object's text) with one more field, ``name``, at its end.

    >>> with_field('{"a":1}', "b", orjson.Fragment(b"[]"))
    b'{"a":1,"b":[]}'
    """
    head = json_object.removesuffix("}")
    separator = "," if head.strip() != "{" else ""
    return (head + separator).encode() + orjson.dumps({name: value})[1:]


def json_row(frame: pl.DataFrame, row: int, columns: Sequence[str]) -> dict[str, Any]:
    """One row of ``frame`` as a dict of JSON values."""
    return json_ready(frame.slice(row, 1), columns).row(0, named=True)


def etag_of(body: bytes) -> str:
    """A strong ETag: the first 128 bits of the body's SHA-256, quoted."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """Whether an ``If-None-Match`` header names ``etag`` (weak comparison, as RFC 9110 asks).

    >>> matches('W/"abc", "def"', '"abc"'), matches("*", '"x"'), matches('"abd"', '"abc"')
    (True, True, False)
    """
    if if_none_match is None:
        return False
    tags = [t.strip().removeprefix("W/") for t in if_none_match.split(",")]
    return "*" in tags or etag in tags


def json_response(request: Request, body: Mapping[str, Any] | bytes) -> Response:
    """``body`` (or its JSON text) with its ETag; 304 without a body when the client has that
    ETag."""
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    etag = etag_of(data)
    headers = {"ETag": etag, **CACHE_HEADERS}
    if matches(request.headers.get("if-none-match"), etag):
        return Response(status_code=304, headers=headers)
    return Response(data, media_type=JSON_TYPE, headers=headers)
