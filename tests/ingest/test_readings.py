"""The Reading record, the device-clock policy and the one way records become a frame."""

from __future__ import annotations

import datetime as dt
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from meterlake.config.errors import PermanentError
from meterlake.config.schemas import READINGS
from meterlake.config.units import conversion_factor
from meterlake.ingest.readings import Reading, choose_timestamp, readings_frame, to_us
from meterlake.storage.writer import conform

RECEIVED = to_us(dt.datetime(2026, 10, 1, 12, 0, tzinfo=dt.UTC))


@given(st.datetimes(timezones=st.just(dt.UTC)))
def test_to_us_matches_polars(moment: dt.datetime) -> None:
    frame = readings_frame(
        [Reading("m1", to_us(moment), "power_w", 1.0)], received_at_us=to_us(moment)
    )
    assert frame["ts"][0] == moment


def test_to_us_refuses_naive() -> None:
    with pytest.raises(ValueError, match="naive"):
        to_us(dt.datetime(2026, 10, 1))


@pytest.mark.parametrize(
    ("device_offset_s", "trusted"),
    [
        (0, True),
        (-3600, True),
        (-6 * 86_400, True),
        (60, True),
        (-8 * 86_400, False),
        (3600, False),
    ],
)
def test_device_clock_is_used_only_when_plausible(device_offset_s: int, trusted: bool) -> None:
    device = RECEIVED + device_offset_s * 1_000_000
    ts, quality = choose_timestamp(device, RECEIVED)
    if trusted:
        assert (ts, quality) == (device, ())
    else:
        assert (ts, quality) == (RECEIVED, ("clock_invalid",))


def test_frame_conforms_and_flags_non_finite_values() -> None:
    rows = [
        Reading("m1", RECEIVED, "energy_import_kwh", 12.5, (), "tele/m1/SENSOR"),
        Reading("m1", RECEIVED, "power_w", math.nan, ("clock_invalid",), "tele/m1/SENSOR"),
        Reading("m2", RECEIVED, "power_w", math.inf, ("invalid_value",), "x"),
    ]
    frame = readings_frame(rows, received_at_us=[RECEIVED, RECEIVED + 1, RECEIVED + 2])
    conform(frame, READINGS)
    assert frame["quality"].to_list() == [[], ["clock_invalid", "invalid_value"], ["invalid_value"]]
    assert math.isnan(frame["value"][1])  # kept, never 0
    assert frame["received_at"].dt.epoch("us").to_list() == [RECEIVED, RECEIVED + 1, RECEIVED + 2]


def test_empty_batch_gives_an_empty_conforming_frame() -> None:
    frame = readings_frame([], received_at_us=RECEIVED)
    assert frame.height == 0
    conform(frame, READINGS)


def test_unit_conversion() -> None:
    assert conversion_factor("Wh", "kWh") == pytest.approx(1e-3)
    assert conversion_factor("kW", "W") == pytest.approx(1e3)
    assert conversion_factor("mA", "A") == pytest.approx(1e-3)
    with pytest.raises(PermanentError, match="cannot be converted"):
        conversion_factor("kW", "kWh")
    with pytest.raises(PermanentError, match="unknown unit"):
        conversion_factor("furlong", "W")
