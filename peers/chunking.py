"""Streaming large messages as bounded chunks, reassembled and digest-checked.

Measured on a 2-core machine over loopback Mosquitto: one 80 MB MQTT message ≈ 150 MB/s,
the same bytes as 1 MB messages ≈ 1.5 GB/s (DESIGN §6). Frame layout::

    "MPCK" | version:u8 | message_id:16 | index:u32 | count:u32 | chunk_size:u32
           | total_len:u64 | blake3(message):32 | data

(Version 2; version 1 carried the message's SHA-256, at a fifth of the speed.)

The reassembler bounds memory: a message larger than ``max_message_bytes`` is refused at
its first frame, each source may have ``max_pending_per_source`` partial messages (the
oldest is evicted), and partial messages older than ``max_pending_total`` in count are
dropped first.

A message of several frames of at least ``MIN_BUFFERED_CHUNK`` bytes is reassembled in one
buffer of its announced size, reserved at its first frame and filled as frames arrive, each
frame released once copied: a complete message is never in memory twice (its frames and
their join), which at d = 10^8 was one more copy of a masked input at every site's peak
(README, Benchmarks). The buffer is ``numpy.empty``: glibc's heap under its mmap threshold
(reused round after round), else a fresh mapping whose pages become resident only when
written, in transparent huge pages where the host allows (numpy advises them for large
arrays; a fresh mapping with 4 KiB pages for every message made rounds ≈ 10–15 % slower).
A huge page is committed whole by its first written byte, so the reassembler counts the
2 MiB regions a message's frames have touched and drops a message whose regions exceed
twice its bytes received plus two regions: frames in any order of an honest message stay
far inside that, and a sender that writes one small frame every 2 MiB of a huge announced
size (a review found 504 MiB resident for 19 kB of such frames) is cut off after a few of
them. A partial message therefore holds at most about twice the bytes received, whatever
it announces.
Smaller frames are kept as they arrive and joined at the end, as before. A buffer that
cannot be reserved (an announced size above what the host will commit) is a
:class:`ChunkError`, like any other frame refused. The buffer is returned as a writable
``memoryview``; a one-frame or small-frame message is returned as ``bytes``.

A complete message whose digest (BLAKE3-256) differs from the announced one is dropped,
unless the reassembler is told not to hash (``verify_digest=False``): a site's node does
that, because every message it accepts is an envelope whose signature covers a digest of its
payload (secagg SPEC §4.3), so a second pass over every received message would check
nothing new. The frames of a message must still agree on
the announced digest, size and count.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
from numpy.typing import NDArray

from mpc_agg.crypto import digests_equal, payload_digest
from mpc_agg.errors import DecodeError

MAGIC = b"MPCK"
VERSION = 2
_HEADER = struct.Struct(">4sB16sIIIQ32s")
HEADER_SIZE = _HEADER.size
_Message = TypeVar("_Message", bytes, memoryview)
#: Frames at least this large are copied into one reassembly buffer as they arrive.
MIN_BUFFERED_CHUNK = 64 * 1024
#: What one written byte of a reassembly buffer may commit: a transparent huge page.
REGION = 2 * 1024 * 1024


class ChunkError(DecodeError):
    """A frame is malformed, inconsistent with its message, or over a limit."""


def split(
    message: bytes, *, chunk_size: int, message_id: bytes, pad: bool = False
) -> Iterator[bytes]:
    """Yield the frames of ``message`` (one copy of at most ``chunk_size`` bytes at a time).

    ``pad``: the last frame is zero-filled to ``chunk_size`` too, so every frame on the
    wire has the same size and only the frame count says anything about the message's
    length (side-channel hygiene; the header's total length lets the receiver strip it).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    if len(message_id) != 16:
        raise ValueError("message_id must be 16 bytes")
    digest = payload_digest(message)
    count = max(1, -(-len(message) // chunk_size))
    view = memoryview(message)
    for index in range(count):
        part = view[index * chunk_size : (index + 1) * chunk_size]
        header = _HEADER.pack(
            MAGIC, VERSION, message_id, index, count, chunk_size, len(message), digest
        )
        filler = bytes(chunk_size - len(part)) if pad else b""
        yield header + part.tobytes() + filler


@dataclass(slots=True)
class _Partial:
    total: int
    count: int
    chunk_size: int
    digest: bytes
    #: the reassembly buffer (frames of ``MIN_BUFFERED_CHUNK`` bytes or more), else None
    buffer: NDArray[np.uint8] | None
    #: index -> a small frame's data, a view into the frame as it arrived (buffer is None)
    chunks: dict[int, memoryview] = field(default_factory=dict)
    #: indices of the frames copied into ``buffer``
    indices: set[int] = field(default_factory=set)
    #: ``REGION``-sized regions of ``buffer`` the frames have touched
    regions: set[int] = field(default_factory=set)
    received: int = 0


class Reassembler:
    """Collects frames per (source, message id) and returns complete, verified messages."""

    def __init__(
        self,
        *,
        max_message_bytes: int,
        max_pending_per_source: int = 4,
        max_pending_total: int = 64,
        verify_digest: bool = True,
    ) -> None:
        self.max_message_bytes = max_message_bytes
        self.verify_digest = verify_digest
        self.max_pending_per_source = max_pending_per_source
        self.max_pending_total = max_pending_total
        self._partials: OrderedDict[tuple[str, bytes], _Partial] = OrderedDict()

    @property
    def pending_bytes(self) -> int:
        """Bytes held by incomplete messages (bounded by the limits)."""
        return sum(p.received for p in self._partials.values())

    def feed(self, source: str, frame: bytes) -> bytes | memoryview | None:
        """Add one frame; return the whole message when it completes, else None.

        A message of frames of ``MIN_BUFFERED_CHUNK`` bytes or more comes back as a writable
        ``memoryview`` of the buffer it was reassembled in, which the caller owns; a message
        of one frame, or of smaller frames, as ``bytes``.
        """
        if len(frame) < HEADER_SIZE:
            raise ChunkError(f"frame of {len(frame)} bytes is shorter than its header")
        fields = _HEADER.unpack_from(frame)
        magic, version, message_id, index, count, chunk_size, total, digest = fields
        if magic != MAGIC or version != VERSION:
            raise ChunkError("not an mpc-agg chunk frame (bad magic or version)")
        if total > self.max_message_bytes:
            raise ChunkError(f"message of {total} bytes exceeds the limit {self.max_message_bytes}")
        if chunk_size < 1 or count != max(1, -(-total // chunk_size)) or index >= count:
            raise ChunkError(f"chunk {index} of {count} (size {chunk_size}) does not fit {total}")
        key = (source, message_id)
        partial = self._partials.get(key)
        try:
            data = _chunk_data(frame, index, total, chunk_size)
            if partial is not None and (
                partial.total,
                partial.count,
                partial.chunk_size,
                partial.digest,
            ) != (total, count, chunk_size, digest):
                raise ChunkError("frames of one message disagree on size, count or digest")
        except ChunkError:
            self._partials.pop(key, None)
            raise
        if count == 1:
            return self._checked(bytes(data), digest)
        if partial is None:
            buffer = _reserve(total) if chunk_size >= MIN_BUFFERED_CHUNK else None
            self._make_room(source)
            partial = _Partial(total, count, chunk_size, digest, buffer)
            self._partials[key] = partial
        if index in partial.indices:
            return None  # QoS 1 redelivery
        start = index * chunk_size
        if partial.buffer is not None:
            touched = range(start // REGION, (start + len(data) - 1) // REGION + 1)
            regions = partial.regions.union(touched)
            if len(regions) * REGION > 2 * (partial.received + len(data)) + 2 * REGION:
                self._partials.pop(key, None)
                raise ChunkError(
                    f"frames of a {total}-byte message scattered over it: {len(regions)} "
                    f"regions of {REGION} bytes for {partial.received + len(data)} bytes"
                )
            partial.regions = regions
            partial.buffer[start : start + len(data)] = np.frombuffer(data, dtype=np.uint8)
        else:  # kept as a view until joined: the frame must not change
            partial.chunks[index] = data if type(frame) is bytes else memoryview(bytes(data))
        partial.indices.add(index)
        partial.received += len(data)
        if len(partial.indices) < count:
            return None
        del self._partials[key]
        if partial.buffer is not None:
            return self._checked(partial.buffer.data, digest)
        message = b"".join([partial.chunks[i] for i in range(count)])  # the one copy
        partial.chunks.clear()
        return self._checked(message, digest)

    def _checked(self, message: _Message, digest: bytes) -> _Message:
        """``message``, unless asked to hash and its digest is not the announced one."""
        if self.verify_digest and not digests_equal(payload_digest(message), digest):
            raise ChunkError("reassembled message does not match its digest")
        return message

    def _make_room(self, source: str) -> None:
        mine = [k for k in self._partials if k[0] == source]
        while len(mine) >= self.max_pending_per_source:
            self._partials.pop(mine.pop(0))
        while len(self._partials) >= self.max_pending_total:
            self._partials.popitem(last=False)


def _chunk_data(frame: bytes, index: int, total: int, chunk_size: int) -> memoryview:
    """Chunk ``index``'s data in ``frame``, padding stripped; ChunkError if malformed."""
    expected = min(chunk_size, total - index * chunk_size)
    data = memoryview(frame)[HEADER_SIZE:]
    if len(data) == chunk_size > expected:  # a padded last frame: the filler is zeros
        if np.frombuffer(data[expected:], dtype=np.uint8).any():
            raise ChunkError(f"chunk {index}'s padding is not zero")
        data = data[:expected]
    if len(data) != expected:
        raise ChunkError(f"chunk {index} carries {len(data)} bytes, expected {expected}")
    return data


def _reserve(total: int) -> NDArray[np.uint8]:
    """A writable buffer of ``total`` bytes, not written (module docstring).

    ``numpy.empty``: glibc's heap for a buffer under its mmap threshold (memory a site
    reuses round after round, ``peers/allocator.py``), a fresh mapping above it, advised for
    huge pages; the reassembler's region rule bounds what the frames make resident either
    way. A size the host refuses is a :class:`ChunkError`.
    """
    try:
        return np.empty(total, dtype=np.uint8)
    except (MemoryError, ValueError) as exc:
        raise ChunkError(f"cannot reserve {total} bytes for a message: {exc}") from None
