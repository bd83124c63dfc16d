"""The ``canonical`` format: meterlake's own JSON, one object or a batch (a list of objects).

::

    {"meter_id": "m1", "ts": "2026-10-01T00:15:00Z",
     "readings": {"energy_import_kwh": 1234.5, "power_w": 512}}

``meter_id`` is a safe meter id; ``ts`` an ISO 8601 time with a zone (``Z`` or an offset);
``readings`` maps canonical quantity names to numbers in the quantity's unit (``null``, ``NaN``
and ``Infinity`` are kept as NaN/inf, flagged ``invalid_value``). An optional ``quality`` list
carries flags set upstream (a gateway forwarding what it received keeps ``clock_invalid``).

This is the hot path (gateways forward batches of hundreds of readings), so the loop below is
written for speed: parsed timestamps and checked ids are cached, and readings are built without
the NamedTuple constructor.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any, Final

from meterlake.config.schemas import Quality, is_known_quantity
from meterlake.ingest.payloads._core import (
    _SAFE_IDS,
    CLOCK_FLAGS,
    NO_FLAGS,
    FormatOptions,
    NoReadingsError,
    PayloadError,
    add_reading,
    checked_meter_id,
    describe,
    load_json,
    new_reading,
)
from meterlake.ingest.readings import Reading, to_us

KEYS: Final = frozenset({"meter_id", "ts", "readings", "quality"})
QUALITY_FLAGS: Final = frozenset(q.value for q in Quality)
MAX_BEHIND_S: Final = 10 * 366 * 86_400
"""Default oldest canonical time trusted [s]: readings forwarded after a long outage keep their
times, a clock reset to 1970 (or year 1) does not."""
_KNOWN: set[str] = set()  # quantities already checked; finitely many exist
_TS_CACHE: dict[str, int] = {}
_MAX_TS_CACHE: Final = 16_384
_NAN: Final = math.nan
_INT_MAX: Final = 2**53  # integers beyond are converted with care (or refused: > 1e308)
_INT_MIN: Final = -(2**53)


def decode_canonical(
    payload: bytes, *, topic: str, received_at_us: int, options: FormatOptions
) -> list[Reading]:
    """Readings of a canonical JSON object or batch.

    Parameters
    ----------
    payload
        The message body.
    topic
        The MQTT topic; becomes each reading's ``source``.
    received_at_us
        When the gateway received the message, UTC [us].
    options
        Only the clock window is used: by default a time may be up to ``max_clock_ahead_s``
        ahead of the receipt and up to :data:`MAX_BEHIND_S` behind it (store-and-forward).

    Examples
    --------
    >>> body = b'{"meter_id": "m1", "ts": "2026-10-01T00:15:00Z", "readings": {"power_w": 512}}'
    >>> [r] = decode_canonical(body, topic="meters/m1", received_at_us=1_790_900_000_000_000,
    ...                        options=FormatOptions())
    >>> r.meter_id, r.ts_us, r.quantity, r.value, r.quality
    ('m1', 1790813700000000, 'power_w', 512.0, ())
    """
    items = _items(load_json(payload))
    window = options.clock_window(received_at_us, MAX_BEHIND_S)
    batch = len(items) > 1
    out: list[Reading] = []
    append = out.append
    for index, obj in enumerate(items):
        meter_id, ts_us, flags, values = _head(obj, received_at_us, window, batch, index)
        for quantity, value in values.items():
            if quantity not in _KNOWN:
                _check_quantity(quantity, _where(batch, index))
            kind = type(value)
            if kind is float and value - value == 0.0 and quantity != "power_factor":
                append(new_reading(Reading, (meter_id, ts_us, quantity, value, flags, topic)))
            elif kind is int and _INT_MIN < value < _INT_MAX and quantity != "power_factor":
                append(
                    new_reading(Reading, (meter_id, ts_us, quantity, float(value), flags, topic))
                )
            else:
                number = _number(value, quantity, _where(batch, index))
                add_reading(out, meter_id, ts_us, quantity, number, flags, topic)
    return out


def _head(
    obj: Any, received_at_us: int, window: tuple[float, float], batch: bool, index: int
) -> tuple[str, int, tuple[str, ...], dict[str, Any]]:
    """meter id, time [us], flags and the readings object of one canonical object."""
    if type(obj) is dict and len(obj) == 3:
        try:
            meter_id = obj["meter_id"]
            ts = obj["ts"]
            values = obj["readings"]
        except KeyError:
            meter_id, ts, values = _unusual_object(obj, _where(batch, index))
    else:
        meter_id, ts, values = _unusual_object(obj, _where(batch, index))
    if type(meter_id) is not str or meter_id not in _SAFE_IDS:
        meter_id = checked_meter_id(meter_id, _where(batch, index))
    ts_us = _TS_CACHE.get(ts) if type(ts) is str else None
    if ts_us is None:
        ts_us = _parse_ts(ts, _where(batch, index))
    if window[0] <= ts_us <= window[1]:
        flags = NO_FLAGS
    else:
        ts_us, flags = received_at_us, CLOCK_FLAGS
    if len(obj) > 3:
        flags = _upstream_flags(obj, flags, _where(batch, index))
    if type(values) is not dict or not values:
        raise PayloadError(
            f"{_where(batch, index)}readings must be a non-empty object of quantity: number, "
            f"got {describe(values)}"
        )
    return meter_id, ts_us, flags, values


def _items(doc: Any) -> list[Any]:
    if type(doc) is dict:
        return [doc]
    if type(doc) is list:
        if not doc:
            raise NoReadingsError("empty batch: a canonical batch is a list of reading objects")
        return doc
    raise PayloadError(f"expected a JSON object or a list of objects, got {describe(doc)}")


def _unusual_object(obj: Any, where: str) -> tuple[Any, Any, Any]:
    """meter_id, ts and readings of an object that is not just those three keys (or no object)."""
    if type(obj) is not dict:
        raise PayloadError(f"{where}expected an object, got {describe(obj)}")
    missing = [key for key in ("meter_id", "ts", "readings") if key not in obj]
    if missing:
        raise PayloadError(
            f"{where}missing key {missing[0]!r}: a canonical object has meter_id, ts and readings"
        )
    return obj["meter_id"], obj["ts"], obj["readings"]


def _number(value: Any, quantity: str, where: str) -> float:
    """A reading's value off the fast path: null (NaN), a huge integer, or not a number."""
    if value is None:
        return _NAN
    number = value if type(value) is float else None
    if type(value) is int:
        try:
            number = float(value)
        except OverflowError:
            raise PayloadError(f"{where}{quantity}: number too large") from None
    if number is None:
        raise PayloadError(f"{where}{quantity}: expected a number, got {describe(value)}")
    return number


def _where(batch: bool, index: int) -> str:
    return f"item {index}: " if batch else ""


def _parse_ts(ts: Any, where: str) -> int:
    if type(ts) is not str:
        raise PayloadError(f"{where}ts must be an ISO 8601 string, got {describe(ts)}")
    try:
        moment = dt.datetime.fromisoformat(ts)
    except ValueError:
        raise PayloadError(
            f"{where}ts {ts[:40]!r} is not an ISO 8601 time such as 2026-10-01T00:15:00Z"
        ) from None
    if moment.tzinfo is None:
        raise PayloadError(f"{where}ts {ts[:40]!r} has no zone: write it in UTC with a Z")
    try:
        ts_us = to_us(moment)
    except OverflowError:
        raise PayloadError(f"{where}ts {ts[:40]!r} is out of range") from None
    if len(_TS_CACHE) >= _MAX_TS_CACHE:
        _TS_CACHE.clear()
    _TS_CACHE[ts] = ts_us
    return ts_us


def _upstream_flags(obj: dict[str, Any], flags: tuple[str, ...], where: str) -> tuple[str, ...]:
    extra = obj.keys() - KEYS
    if extra:
        raise PayloadError(
            f"{where}unknown key {sorted(extra)[0]!r}: a canonical object has meter_id, ts, "
            "readings and optionally quality"
        )
    quality = obj["quality"]
    if type(quality) is not list or any(
        type(q) is not str or q not in QUALITY_FLAGS for q in quality
    ):
        raise PayloadError(
            f"{where}quality must be a list of flags ({', '.join(sorted(QUALITY_FLAGS))})"
        )
    return tuple(dict.fromkeys((*quality, *flags)))


def _check_quantity(quantity: str, where: str) -> None:
    if not is_known_quantity(quantity):
        raise PayloadError(
            f"{where}{quantity[:60]!r} is not a canonical quantity (e.g. energy_import_kwh, "
            "power_w, voltage_l1_v)"
        )
    _KNOWN.add(quantity)
