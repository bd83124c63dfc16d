"""The gateway runtime: collectors feed the spool, the flusher moves sealed segments into the lake.

The flusher decodes a whole segment at once, hands the readings and the quarantine records to a
writer supplied by the caller (the composition root wires it to the lake), and trims the segment
only after both writes returned, i.e. after the Parquet files are durable. A payload that cannot
be decoded goes to the quarantine verbatim with the reason; it never stops the flush.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import polars as pl

from meterlake.config.durable import fsync_file
from meterlake.config.errors import MeterlakeError, RetryableError
from meterlake.config.ids import is_safe_meter_id
from meterlake.config.schemas import QUARANTINE, READINGS, TableSpec, is_known_quantity
from meterlake.ingest.forward import canonical_batches
from meterlake.ingest.payloads import DECODERS, FormatOptions, NoReadingsError
from meterlake.ingest.readings import Reading, readings_frame
from meterlake.ingest.spool import Envelope, Spool, read_segment

log = logging.getLogger(__name__)

Decoder = Callable[[Envelope], list[Reading]]
"""Turns one spooled message into readings, or raises a MeterlakeError saying why it cannot."""
Writer = Callable[[TableSpec, pl.DataFrame], object]
"""Writes a frame into a lake table durably (``storage.writer.write_table`` bound to a lake)."""
STATUS_INTERVAL_S: Final = 1.0
"""How often the status file is rewritten between flushes [s]."""
MODBUS_CHANNEL: Final = "modbus"
"""The spool channel of Modbus polls (canonical JSON, see :func:`spool_sink`)."""
Sink = Callable[[Sequence[Reading]], None]
"""Takes the readings of one poll (the Modbus collector's output)."""
Forward = Callable[[pl.DataFrame], None]
"""Sends readings upstream and returns once they are acknowledged (or raises RetryableError)."""


def envelope_decoder(fmt: str, options: FormatOptions) -> Decoder:
    """The decoder of a subscription: its payload format with its options, for spooled messages."""
    decode = DECODERS[fmt]

    def decoder(envelope: Envelope) -> list[Reading]:
        return decode(
            envelope.payload,
            topic=envelope.topic,
            received_at_us=envelope.received_at_us,
            options=options,
        )

    return decoder


def spool_sink(spool: Spool, channel: str, clock: Callable[[], float] = time.time) -> Sink:
    """A collector sink that spools each batch of readings durably as canonical JSON.

    Decode it with ``envelope_decoder("canonical", FormatOptions())``.
    """

    def sink(readings: Sequence[Reading]) -> None:
        if not readings:
            return
        received_us = int(clock() * 1_000_000)
        frame = readings_frame(readings, received_at_us=received_us)
        spool.append(
            [
                Envelope(channel, channel, payload, received_us)
                for payload in canonical_batches(frame, batch_readings=10_000)
            ]
        )
        spool.sync()

    return sink


class Collector(Protocol):
    """What the gateway needs of a collector."""

    def start(self) -> None: ...
    def stop(self, timeout_s: float = ...) -> None: ...
    def health(self) -> Any: ...


@dataclass(frozen=True)
class FlushResult:
    """What one flush moved from the spool into the lake."""

    segments: int = 0
    envelopes: int = 0
    readings: int = 0
    quarantined: int = 0
    ignored: int = 0
    """Messages without metering fields (see :class:`Decoded`)."""
    torn_bytes: int = 0
    forwarded: int = 0


@dataclass(frozen=True)
class Decoded:
    """What a batch of spooled messages gave."""

    readings: pl.DataFrame
    """In the ``READINGS`` contract."""
    quarantine: pl.DataFrame
    """In the ``QUARANTINE`` contract: payloads that could not be decoded, with the reason."""
    ignored: int
    """Well-formed messages without metering fields (a Shelly event, a Zigbee button press):
    counted, not kept."""


def decode_envelopes(envelopes: Sequence[Envelope], decoders: Mapping[str, Decoder]) -> Decoded:
    """Decode ``envelopes`` with the decoder of each one's channel."""
    ignored = 0
    rows: list[Reading] = []
    received: list[int] = []
    bad: list[tuple[Envelope, str]] = []
    for envelope in envelopes:
        reason = None
        decoder = decoders.get(envelope.channel)
        if decoder is None:
            reason = f"no decoder for channel {envelope.channel!r}"
        else:
            try:
                got = decoder(envelope)
            except NoReadingsError:
                ignored += 1
                continue
            except MeterlakeError as exc:
                reason = str(exc)
            except Exception as exc:  # a decoder bug must not block the spool
                log.exception("decoder of %s failed", envelope.channel)
                reason = f"decoder failed: {type(exc).__name__}: {exc}"
            else:
                reason = _contract_problem(got)
        if reason is None:
            rows.extend(got)
            received.extend([envelope.received_at_us] * len(got))
        else:
            bad.append((envelope, reason))
    return Decoded(readings_frame(rows, received_at_us=received), quarantine_frame(bad), ignored)


def _contract_problem(readings: list[Reading]) -> str | None:
    for r in readings:
        if not is_safe_meter_id(r.meter_id):
            return f"meter id {r.meter_id[:70]!r} is not allowed"
        if not is_known_quantity(r.quantity):
            return f"quantity {r.quantity[:70]!r} is not a canonical quantity"
    return None


def quarantine_frame(bad: Sequence[tuple[Envelope, str]]) -> pl.DataFrame:
    """Quarantine records: each payload verbatim, where it came from and why it was refused."""
    return pl.DataFrame(
        {
            "received_at": [e.received_at_us for e, _ in bad],
            "source": [f"{e.channel}:{e.topic}" for e, _ in bad],
            "reason": [reason for _, reason in bad],
            "payload": [e.payload for e, _ in bad],
        },
        schema={
            "received_at": pl.Int64,
            "source": pl.String,
            "reason": pl.String,
            "payload": pl.Binary,
        },
    ).cast(QUARANTINE.schema)


def flush_spool(
    spool: Spool,
    decoders: Mapping[str, Decoder],
    write: Writer,
    forward: Forward | None = None,
) -> FlushResult:
    """Move sealed segments into the lake (and upstream), trimming each once it is done.

    With ``forward``, a segment in the lake waits as *stored* until the upstream broker
    acknowledged its readings; an upstream outage (a ``RetryableError``) leaves it there for the
    next flush and does not hold up the lake.
    """
    spool.seal_if_old()
    segments = envelopes = readings_count = quarantined = ignored = torn = forwarded = 0
    for path in spool.sealed_segments():
        contents = read_segment(path)
        if contents.torn_bytes:
            log.warning(
                "spool %s: %d bytes after the last whole record (a crash mid-append; those "
                "messages were never acknowledged)",
                path.name,
                contents.torn_bytes,
            )
        decoded = decode_envelopes(contents.envelopes, decoders)
        readings = decoded.readings
        write(READINGS, readings)
        write(QUARANTINE, decoded.quarantine)
        if forward is None:
            spool.trim(path)
        else:
            spool.mark_stored(path)
        segments += 1
        envelopes += len(contents.envelopes)
        readings_count += readings.height
        quarantined += decoded.quarantine.height
        ignored += decoded.ignored
        torn += contents.torn_bytes
    if forward is not None:
        for path in spool.stored_segments():
            readings = decode_envelopes(read_segment(path).envelopes, decoders).readings
            try:
                forward(readings)
            except RetryableError as exc:
                log.warning("forwarding upstream paused: %s (the spool keeps the data)", exc)
                break
            spool.trim(path)
            forwarded += readings.height
    return FlushResult(segments, envelopes, readings_count, quarantined, ignored, torn, forwarded)


class Gateway:
    """Runs collectors and the flusher until stopped.

    Parameters
    ----------
    spool, decoders, write
        See :func:`flush_spool`.
    collectors
        Started by :meth:`start`, stopped (and committed) by :meth:`stop`.
    flush_interval_s
        How often sealed segments go to the lake [s].
    status_path
        Where a JSON snapshot of every collector's health is written every second
        (``meterlake status`` reads it); None: not written.
    """

    def __init__(
        self,
        spool: Spool,
        decoders: Mapping[str, Decoder],
        write: Writer,
        collectors: Sequence[Collector],
        *,
        forward: Forward | None = None,
        flush_interval_s: float = 5.0,
        status_path: Path | None = None,
    ) -> None:
        self.spool = spool
        self.decoders = decoders
        self.write = write
        self.collectors = list(collectors)
        self.forward = forward
        self.flush_interval_s = flush_interval_s
        self.status_path = status_path
        self.flushed = FlushResult()
        self._stop = threading.Event()

    def run(self, duration_s: float | None = None) -> FlushResult:
        """Collect until :meth:`request_stop` (e.g. from a signal handler) or ``duration_s``."""
        self.flush()  # replay what an earlier run left in the spool
        for collector in self.collectors:
            collector.start()
        deadline = None if duration_s is None else time.monotonic() + duration_s
        next_flush = time.monotonic() + self.flush_interval_s
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                wake = min(next_flush, now + STATUS_INTERVAL_S)
                if deadline is not None:
                    wake = min(wake, deadline)
                if self._stop.wait(max(0.0, wake - now)):
                    break
                if deadline is not None and time.monotonic() >= deadline:
                    break
                if time.monotonic() >= next_flush:
                    self.flush()
                    next_flush = time.monotonic() + self.flush_interval_s
                else:
                    self._write_status()
        finally:
            for collector in self.collectors:
                collector.stop()
            self.spool.seal()
            self.flush()
        return self.flushed

    def request_stop(self) -> None:
        """Ask :meth:`run` to stop: collectors commit, the spool is flushed, run returns."""
        self._stop.set()

    def flush(self) -> FlushResult:
        """One flush, logged and counted; a failed write leaves the segment for the next one."""
        try:
            result = flush_spool(self.spool, self.decoders, self.write, self.forward)
        except OSError as exc:
            log.error("flush to the lake failed (%s); the spool keeps the data, retrying", exc)
            return FlushResult()
        if result.segments or result.forwarded:
            log.info(
                "flushed %d segment(s): %d readings, %d quarantined, %d forwarded upstream",
                result.segments,
                result.readings,
                result.quarantined,
                result.forwarded,
            )
        self.flushed = FlushResult(
            **{k: getattr(self.flushed, k) + getattr(result, k) for k in asdict(result)}
        )
        self._write_status()
        return result

    def _write_status(self) -> None:
        if self.status_path is None:
            return
        status = {
            "written_at": time.time(),
            "flushed": asdict(self.flushed),
            "spool_pending_bytes": self.spool.pending_bytes(),
            "collectors": [_as_json(c.health()) for c in self.collectors],
        }
        tmp = self.status_path.with_name(self.status_path.name + ".part")
        tmp.write_text(json.dumps(status, indent=2, default=str), encoding="utf-8")
        fsync_file(tmp)
        tmp.replace(self.status_path)


def _as_json(health: Any) -> Any:
    if hasattr(health, "__dataclass_fields__"):
        return asdict(health)
    if isinstance(health, list | tuple):
        return [_as_json(h) for h in health]
    return health
