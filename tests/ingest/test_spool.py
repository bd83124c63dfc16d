"""The spool: appends survive crashes, torn tails are cut, a full disk loses nothing."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from meterlake.ingest.spool import (
    Envelope,
    Spool,
    SpoolFullError,
    decode_records,
    encode_envelope,
    read_segment,
)

envelopes = st.builds(
    Envelope,
    channel=st.text(max_size=20),
    topic=st.text(max_size=60),
    payload=st.binary(max_size=300),
    received_at_us=st.integers(-(2**62), 2**62),
)


@given(st.lists(envelopes, max_size=20))
def test_records_round_trip(batch: list[Envelope]) -> None:
    data = b"".join(encode_envelope(e) for e in batch)
    decoded, torn = decode_records(data)
    assert torn == 0
    assert [(e.channel, e.topic, e.payload, e.received_at_us) for e in decoded] == [
        (
            e.channel.encode(errors="replace").decode(errors="replace"),
            e.topic,
            e.payload,
            e.received_at_us,
        )
        for e in batch
    ]


@settings(max_examples=200)
@given(st.lists(envelopes, min_size=1, max_size=10), st.data())
def test_a_torn_or_corrupt_tail_keeps_every_whole_record_before_it(
    batch: list[Envelope], data: st.DataObject
) -> None:
    records = [encode_envelope(e) for e in batch]
    whole = b"".join(records)
    cut = data.draw(st.integers(0, len(whole) - 1))
    decoded, torn = decode_records(whole[:cut])
    complete = 0
    offset = 0
    for record in records:  # records that end at or before the cut survive
        offset += len(record)
        if offset <= cut:
            complete += 1
    assert len(decoded) == complete
    assert torn == cut - sum(len(r) for r in records[:complete])
    # a flipped byte inside a record ends reading there, never yields garbage
    flip = data.draw(st.integers(0, len(whole) - 1))
    corrupted = bytearray(whole)
    corrupted[flip] ^= 0xFF
    decoded, _ = decode_records(bytes(corrupted))
    assert [e.payload for e in decoded] == [e.payload for e in batch[: len(decoded)]]


def test_segments_rotate_by_size_and_age(tmp_path: Path) -> None:
    now = [0.0]
    spool = Spool(tmp_path, segment_bytes=2048, segment_age_s=5, clock=lambda: now[0])
    batch = [Envelope("mqtt", "t/1", b"x" * 100, i) for i in range(30)]
    spool.append(batch)  # > 2048 bytes: sealed at once
    assert len(spool.sealed_segments()) == 1
    spool.append(batch[:1])
    assert spool.seal_if_old() is None
    now[0] = 6.0
    sealed = spool.seal_if_old()
    assert sealed is not None
    assert [len(read_segment(p).envelopes) for p in spool.sealed_segments()] == [30, 1]
    spool.trim(spool.sealed_segments()[0])
    assert len(spool.sealed_segments()) == 1


def test_a_restarted_spool_replays_what_a_crash_left_open(tmp_path: Path) -> None:
    writer = """
import sys
from pathlib import Path
from meterlake.ingest.spool import Envelope, Spool
spool = Spool(Path(sys.argv[1]), fsync="always")
for i in range(1_000_000):
    spool.append([Envelope("mqtt", "meters/m1", b'{"n": %d}' % i, i)])
    if i == 500:
        print("ready", flush=True)
"""
    with subprocess.Popen(
        [sys.executable, "-c", writer, str(tmp_path)], stdout=subprocess.PIPE, text=True
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)

    spool = Spool(tmp_path)  # restart
    segments = spool.sealed_segments()
    assert segments, "the open segment of the killed writer is sealed for replay"
    numbers = [
        int(e.payload.split(b":")[1].strip(b" }"))
        for p in segments
        for e in read_segment(p).envelopes
    ]
    assert numbers == list(range(len(numbers)))  # nothing lost, nothing reordered
    assert len(numbers) > 500
    # new appends go to a new segment after the replayed ones
    spool.append([Envelope("mqtt", "meters/m1", b"{}", 1)])
    spool.close()
    assert spool.sealed_segments()[-1] > segments[-1]


def test_a_full_disk_raises_and_leaves_the_segment_valid(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spool = Spool(tmp_path, fsync="always")
    spool.append([Envelope("mqtt", "t", b"before", 1)])
    real_write = os.write

    def half_then_full(fd: int, data: bytes) -> int:
        real_write(fd, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_full)
    with pytest.raises(SpoolFullError, match="disk full"):
        spool.append([Envelope("mqtt", "t", b"lost?" * 100, 2)])
    monkeypatch.setattr(os, "write", real_write)
    spool.append([Envelope("mqtt", "t", b"after", 3)])  # space is back
    path = spool.seal()
    assert path is not None
    contents = read_segment(path)
    assert [e.payload for e in contents.envelopes] == [b"before", b"after"]
    assert contents.torn_bytes == 0


def test_group_commit_syncs_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real_fsync(fd))[1])
    spool = Spool(tmp_path, fsync="batch")
    spool.append([Envelope("mqtt", "t", b"x", -1)])  # opens the segment (a directory fsync)
    before = len(calls)
    for i in range(10):
        spool.append([Envelope("mqtt", "t", b"x", i)])
    assert len(calls) == before  # appends alone never fsync
    spool.sync()
    assert len(calls) == before + 1
    spool.sync()  # nothing new: no second fsync
    assert len(calls) == before + 1
