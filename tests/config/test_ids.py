"""Identifiers and partition values are validated before they can become part of a path."""

from __future__ import annotations

import hashlib
import threading

import duckdb
import polars as pl
import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterlake.config import ids
from meterlake.config.errors import PermanentError, UnsafeIdentifierError
from meterlake.config.ids import (
    METER_ID_MAX_LEN,
    meter_id_is_safe,
    stable_ids,
    validate_meter_id,
    validate_partition_value,
)

UNSAFE_IDS = [
    "../x",
    "a/b",
    "x\x00y",
    "",
    " lead",
    "a" * 65,
    "..",
    ".",
    "/abs",
    "a\\b",
    "trail\n",
    "tab\tin",
    "-leading-dash",
    "_x",
    "zähler",
    "m 1",
]
SAFE_IDS = ["m-0001", "SDM630:1", "dtsu666.17_a", "0", "a" * METER_ID_MAX_LEN, "a..b"]


@pytest.mark.parametrize("meter_id", UNSAFE_IDS)
def test_unsafe_meter_id_is_refused(meter_id: str) -> None:
    with pytest.raises(UnsafeIdentifierError) as info:
        validate_meter_id(meter_id)
    message = str(info.value)
    assert repr(meter_id) in message
    assert "letters, digits" in message


def test_unsafe_identifier_error_is_a_permanent_value_error() -> None:
    with pytest.raises(PermanentError):
        validate_meter_id("../x")
    with pytest.raises(ValueError, match="not allowed"):
        validate_meter_id("../x")


@pytest.mark.parametrize("meter_id", SAFE_IDS)
def test_safe_meter_id_is_returned_unchanged(meter_id: str) -> None:
    assert validate_meter_id(meter_id) == meter_id


def test_non_string_meter_id_is_refused() -> None:
    with pytest.raises(UnsafeIdentifierError):
        validate_meter_id(17)  # type: ignore[arg-type]


def test_meter_id_expression_marks_unsafe_and_null_ids() -> None:
    ids = [*SAFE_IDS, *UNSAFE_IDS, None]
    frame = pl.DataFrame({"meter_id": ids}, schema={"meter_id": pl.String})
    safe = frame.select(meter_id_is_safe())["meter_id"].to_list()
    assert safe == [True] * len(SAFE_IDS) + [False] * (len(UNSAFE_IDS) + 1)


@given(st.text(max_size=70) | st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._:\-]{0,70}", fullmatch=True))
def test_expression_and_python_check_agree(meter_id: str) -> None:
    """The Polars expression (writer) and the Python check (everything else) are one rule."""
    try:
        validate_meter_id(meter_id)
        python_ok = True
    except UnsafeIdentifierError:
        python_ok = False
    frame = pl.DataFrame({"meter_id": [meter_id]})
    assert frame.select(meter_id_is_safe()).item() is python_ok


@pytest.mark.parametrize(
    ("kind", "value"),
    [("date", "2026-10-01"), ("date", "2024-02-29"), ("month", "2026-10"), ("period", "2026-01")],
)
def test_valid_partition_values_are_returned(kind: str, value: str) -> None:
    assert validate_partition_value(kind, value) == value


@pytest.mark.parametrize(
    ("kind", "value"),
    [
        ("date", "../2026-10-01"),
        ("date", "2026-10-01/.."),
        ("date", "2026-13-01"),
        ("date", "2026-02-30"),
        ("date", "2025-02-29"),
        ("date", "2026-10"),
        ("date", "2026-10-1"),
        ("date", "20261001"),
        ("date", " 2026-10-01"),
        ("date", "2026-10-01\n"),
        ("date", "２０２６-１０-０１"),
        ("date", ""),
        ("month", "2026-10-01"),
        ("month", "2026-13"),
        ("month", "2026-00"),
        ("month", "../2026-10"),
        ("period", "2026-1"),
        ("period", "*"),
    ],
)
def test_invalid_partition_values_are_refused(kind: str, value: str) -> None:
    with pytest.raises(UnsafeIdentifierError) as info:
        validate_partition_value(kind, value)
    assert repr(value) in str(info.value)
    assert ("YYYY-MM-DD" if kind == "date" else "YYYY-MM") in str(info.value)


def test_unknown_partition_kind_is_refused() -> None:
    with pytest.raises(UnsafeIdentifierError, match="unknown partition kind 'year'"):
        validate_partition_value("year", "2026")


def _expected_id(*parts: str) -> str:
    return "b-" + hashlib.sha256("|".join(parts).encode()).hexdigest()[:24]


def test_stable_ids_are_the_sha256_of_the_joined_columns() -> None:
    frame = pl.DataFrame({"meter": ["m-1", "m-2"], "period": ["2026-10", "2026-10"]})
    assert stable_ids(frame, ["meter", "period"], "b-").to_list() == [
        _expected_id("m-1", "2026-10"),
        _expected_id("m-2", "2026-10"),
    ]


def test_stable_ids_open_a_new_connection_after_a_broken_one() -> None:
    frame = pl.DataFrame({"meter": ["m-1"]})
    ids._hasher().close()  # what an invalidated connection looks like to the next call
    with pytest.raises(duckdb.Error):
        stable_ids(frame, ["meter"], "b-")
    assert stable_ids(frame, ["meter"], "b-").to_list() == [_expected_id("m-1")]


def test_stable_ids_from_several_threads_at_once() -> None:
    frames = [pl.DataFrame({"meter": [f"m-{t}-{i}" for i in range(500)]}) for t in range(4)]
    results: dict[int, list[str]] = {}

    def run(t: int) -> None:
        for _ in range(5):
            results[t] = stable_ids(frames[t], ["meter"], "b-").to_list()

    threads = [threading.Thread(target=run, args=(t,)) for t in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for t in range(4):
        assert results[t] == [_expected_id(f"m-{t}-{i}") for i in range(500)]
