"""The gateway's on-disk spool: append-only segments between the collectors and the lake.

Every message a collector takes (an MQTT payload, a Modbus poll encoded as canonical JSON) is
appended to the spool as an :class:`Envelope` *before* it is acknowledged; a flush later decodes
whole segments into lake files and only then trims them. So a crash at any point loses nothing:
an unacknowledged message is redelivered by the broker, a spooled one is replayed from disk, and
the duplicates either can cause are removed by the lake's dedup key.

Layout of the spool directory::

    000000000007.open     the segment being appended to (one per spool)
    000000000006.seg      sealed segments, waiting to be flushed into the lake
    000000000005.stored   in the lake already, waiting to be forwarded upstream (if configured)

A record is ``length u32 | crc32 u32 | received_at_us i64 | channel_len u16 | topic_len u16 |
channel | topic | payload``. A crash mid-append leaves a torn last record; reading stops there,
which is safe because the torn message was never acknowledged.
"""

from __future__ import annotations

import errno
import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal, NamedTuple

from meterlake.config.durable import fsync_dir
from meterlake.config.errors import PermanentError, RetryableError

log = logging.getLogger(__name__)

FsyncPolicy = Literal["always", "batch", "never"]
_HEADER: Final = struct.Struct("<IIq")
_NAMES: Final = struct.Struct("<HH")
_OPEN: Final = ".open"
_SEALED: Final = ".seg"
_STORED: Final = ".stored"
_MAX_RECORD: Final = 256 * 1024 * 1024


class Envelope(NamedTuple):
    """One message as it arrived: which channel took it, its topic, its bytes and when."""

    channel: str
    """The subscription or bus that took it; it names the decoder."""
    topic: str
    payload: bytes
    received_at_us: int


class SpoolFullError(RetryableError):
    """The spool's disk is full: stop acknowledging; retry when space returns."""


@dataclass(frozen=True)
class SegmentContents:
    """The envelopes of one segment, and whether a torn or corrupt tail was cut off."""

    path: Path
    envelopes: list[Envelope]
    torn_bytes: int


def encode_envelope(envelope: Envelope) -> bytes:
    """One spool record.

    >>> len(encode_envelope(Envelope("c", "t", b"{}", 0)))
    24
    """
    channel = envelope.channel.encode()
    topic = envelope.topic.encode()
    body = (
        struct.pack("<q", envelope.received_at_us)
        + _NAMES.pack(len(channel), len(topic))
        + channel
        + topic
        + envelope.payload
    )
    return struct.pack("<II", len(body), zlib.crc32(body)) + body


def decode_records(data: bytes) -> tuple[list[Envelope], int]:
    """The envelopes in ``data`` up to the first torn or corrupt record, and the bytes after it."""
    envelopes = []
    offset = 0
    size = len(data)
    while offset + 8 <= size:
        length, crc = struct.unpack_from("<II", data, offset)
        start = offset + 8
        end = start + length
        if length < 12 or length > _MAX_RECORD or end > size:
            break
        body = data[start:end]
        if zlib.crc32(body) != crc:
            break
        (received,) = struct.unpack_from("<q", body, 0)
        channel_len, topic_len = _NAMES.unpack_from(body, 8)
        names_end = 12 + channel_len + topic_len
        if names_end > length:
            break
        channel = body[12 : 12 + channel_len].decode(errors="replace")
        topic = body[12 + channel_len : names_end].decode(errors="replace")
        envelopes.append(Envelope(channel, topic, body[names_end:], received))
        offset = end
    return envelopes, size - offset


def read_segment(path: Path) -> SegmentContents:
    """The envelopes of a segment file (a torn tail is reported, not raised)."""
    envelopes, torn = decode_records(path.read_bytes())
    return SegmentContents(path=path, envelopes=envelopes, torn_bytes=torn)


class Spool:
    """An append-only, segmented, crash-safe spool in one directory.

    Parameters
    ----------
    directory
        Where the segments live (created if missing). One process owns a spool at a time.
    segment_bytes
        A segment is sealed once it holds this many bytes [B].
    segment_age_s
        ... or once it is this old [s], so a quiet gateway still flushes.
    fsync
        ``batch``: the caller calls :meth:`sync` before acknowledging a batch (group commit);
        ``always``: every :meth:`append` is fsynced; ``never``: leave it to the OS (tests, or
        media where fsync is not available).
    clock
        Monotonic seconds, injectable for tests.

    Several collectors may share one spool: every method holds the spool's lock.
    """

    def __init__(
        self,
        directory: Path,
        *,
        segment_bytes: int = 8 * 1024 * 1024,
        segment_age_s: float = 10.0,
        fsync: FsyncPolicy = "batch",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if segment_bytes < 1024:
            raise PermanentError(f"spool segment_bytes {segment_bytes} is too small (min 1024)")
        self.directory = directory
        self.segment_bytes = segment_bytes
        self.segment_age_s = segment_age_s
        self.fsync_policy = fsync
        self._clock = clock
        directory.mkdir(parents=True, exist_ok=True)
        self._recover_open_segments()
        self._sequence = max((_sequence_of(p) for p in self._all_segments()), default=0)
        self._fd: int | None = None
        self._path: Path | None = None
        self._size = 0
        self._opened_at = 0.0
        self._dirty = False
        self._lock = threading.RLock()

    # appending -----------------------------------------------------------------------------

    def append(self, envelopes: Sequence[Envelope]) -> None:
        """Append ``envelopes`` as one write; durable per the fsync policy.

        Raises
        ------
        SpoolFullError
            The disk is full. Nothing of this call is in the spool (a partial write is cut
            off), so the caller must not acknowledge these messages.
        """
        if not envelopes:
            return
        data = b"".join(encode_envelope(e) for e in envelopes)
        with self._lock:
            self._append_locked(data)

    def _append_locked(self, data: bytes) -> None:
        fd = self._current_fd()
        try:
            written = os.write(fd, data)
            while written < len(data):  # os.write may write less than asked
                written += os.write(fd, data[written:])
            if self.fsync_policy == "always":
                os.fsync(fd)
        except OSError as exc:
            os.ftruncate(fd, self._size)  # cut off what part of the batch was written
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFullError(f"spool {self.directory}: disk full ({exc.strerror})") from exc
            raise
        self._size += len(data)
        self._dirty = self.fsync_policy == "batch"
        if self._size >= self.segment_bytes:
            self._seal_locked()

    def sync(self) -> None:
        """Make everything appended so far durable (the group commit of ``fsync="batch"``)."""
        with self._lock:
            if self._fd is not None and self._dirty:
                os.fsync(self._fd)
                self._dirty = False

    def seal(self) -> Path | None:
        """Close the open segment so it can be flushed; return its sealed path (None if empty)."""
        with self._lock:
            return self._seal_locked()

    def _seal_locked(self) -> Path | None:
        if self._fd is None or self._path is None:
            return None
        if self.fsync_policy != "never":
            os.fsync(self._fd)
        os.close(self._fd)
        path = self._path
        self._fd, self._path, self._dirty = None, None, False
        if self._size == 0:
            path.unlink()
            return None
        sealed = path.with_suffix(_SEALED)
        path.rename(sealed)
        fsync_dir(self.directory)
        return sealed

    def seal_if_old(self) -> Path | None:
        """Seal the open segment if it is older than ``segment_age_s``."""
        with self._lock:
            if self._fd is not None and self._clock() - self._opened_at >= self.segment_age_s:
                return self._seal_locked()
            return None

    # flushing ------------------------------------------------------------------------------

    def sealed_segments(self) -> list[Path]:
        """Sealed segments, oldest first."""
        return sorted(self.directory.glob(f"*{_SEALED}"))

    def mark_stored(self, path: Path) -> Path:
        """Record that a sealed segment is durably in the lake; it waits for forwarding."""
        stored = path.with_suffix(_STORED)
        path.rename(stored)
        fsync_dir(self.directory)
        return stored

    def stored_segments(self) -> list[Path]:
        """Segments in the lake but not yet forwarded upstream, oldest first."""
        return sorted(self.directory.glob(f"*{_STORED}"))

    def trim(self, path: Path) -> None:
        """Delete a sealed segment whose contents are durably in the lake."""
        path.unlink(missing_ok=True)
        fsync_dir(self.directory)

    def pending_bytes(self) -> int:
        """Bytes waiting in the spool (sealed and open segments)."""
        return sum(p.stat().st_size for p in self._all_segments())

    def close(self) -> None:
        """Seal the open segment; the spool can be reopened later."""
        self.seal()

    # internals -----------------------------------------------------------------------------

    def _current_fd(self) -> int:
        if self._fd is None:
            self._sequence += 1
            self._path = self.directory / f"{self._sequence:012d}{_OPEN}"
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND)
            fsync_dir(self.directory)
            self._size = 0
            self._opened_at = self._clock()
        return self._fd

    def _all_segments(self) -> list[Path]:
        return sorted(
            p for suffix in (_OPEN, _SEALED, _STORED) for p in self.directory.glob(f"*{suffix}")
        )

    def _recover_open_segments(self) -> None:
        """Seal segments left open by a crash; their valid records are flushed like any other."""
        for path in sorted(self.directory.glob(f"*{_OPEN}")):
            if path.stat().st_size == 0:
                path.unlink()
                continue
            log.warning("spool: replaying segment %s left open by an earlier run", path.name)
            path.rename(path.with_suffix(_SEALED))
        fsync_dir(self.directory)


def _sequence_of(path: Path) -> int:
    try:
        return int(path.stem)
    except ValueError:
        return 0
