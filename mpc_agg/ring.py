"""Vectors in the ring Z_2^64, stored as ``numpy.uint64``.

Invariants: every ring vector is a 1-D, C-contiguous ``uint64`` array; arithmetic wraps
modulo 2^64 by construction (numpy unsigned arithmetic on arrays never raises). Signed
fixed-point integers embed by two's complement, so a sum whose true value lies in
``[-2^63, 2^63)`` decodes exactly — the headroom check in :mod:`mpc_agg.fixedpoint`
guarantees that before anything is masked.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from mpc_agg.errors import EncodingError

RING_BITS = 64
RING_DTYPE = np.dtype(np.uint64)
#: Rings a round may aggregate in: Z_2^64, or Z_2^32 (secagg then works on uint32 words,
#: 4 bytes an entry on the wire, and sign-extends its total; see :func:`reduce_mod`).
RING_BITS_CHOICES = (32, 64)

RingVector = NDArray[np.uint64]
SignedVector = NDArray[np.int64]


def zeros(length: int) -> RingVector:
    """A zero ring vector of ``length`` entries."""
    return np.zeros(length, dtype=RING_DTYPE)


def check_ring_vector(value: object, *, length: int | None = None, name: str = "vector") -> None:
    """Raise :class:`EncodingError` unless ``value`` is a 1-D uint64 array (of ``length``)."""
    if not isinstance(value, np.ndarray):
        raise EncodingError(f"{name} must be a numpy array, got {type(value).__name__}")
    if value.dtype != RING_DTYPE:
        raise EncodingError(f"{name} must have dtype uint64 (ring Z_2^64), got {value.dtype}")
    if value.ndim != 1:
        raise EncodingError(f"{name} must be 1-D, got shape {value.shape}")
    if length is not None and value.shape[0] != length:
        raise EncodingError(f"{name} has {value.shape[0]} entries, expected {length}")


def embed(values: SignedVector) -> RingVector:
    """Embed signed 64-bit integers into Z_2^64 (two's complement; a copy, C-contiguous)."""
    if values.dtype != np.int64:
        raise EncodingError(f"embed() expects int64, got {values.dtype}")
    return np.ascontiguousarray(values).view(RING_DTYPE).copy()


def lift(values: RingVector) -> SignedVector:
    """Read ring elements as signed integers in ``[-2^63, 2^63)`` (a view, no copy)."""
    check_ring_vector(values)
    return values.view(np.int64)


def signed_limit(bits: int) -> int:
    """Largest magnitude a sum may reach and still decode exactly from Z_2^``bits``."""
    return (1 << (bits - 1)) - 1


#: Largest magnitude a *sum* may reach and still decode exactly (two's complement).
SIGNED_LIMIT = signed_limit(RING_BITS)


def reduce_mod(values: RingVector, bits: int) -> None:
    """Reduce ``values`` mod 2^``bits`` in place, sign-extended to 64-bit words.

    The result is the two's complement of the same signed values in Z_2^64, so
    :func:`lift` reads them directly. For ``bits = 64`` nothing changes. Two passes, no
    temporary.
    """
    if bits == RING_BITS:
        return
    if bits not in RING_BITS_CHOICES:
        raise EncodingError(f"ring bits must be one of {RING_BITS_CHOICES}, got {bits}")
    shift = np.uint64(RING_BITS - bits)
    np.left_shift(values, shift, out=values)
    signed = values.view(np.int64)
    np.right_shift(signed, shift.astype(np.int64), out=signed)  # arithmetic: sign-extends


#: Entries per step of the blocked passes over long vectors (:func:`widen32_in_place`,
#: :func:`narrow32`, ``prg.apply_masks``, ``ChunkSum.summing``, the fixed-point codec):
#: 256 KiB of 64-bit words, so a block's temporaries stay in cache through its passes.
BLOCK = 1 << 15


def widen32_in_place(buffer: RingVector) -> RingVector:
    """Sign-extend the int32 words in the first half of ``buffer`` to its int64 words.

    ``buffer`` (uint64, length L, C-contiguous, writable) holds L 32-bit words in its first
    4·L bytes; afterwards entry i is word i sign-extended (two's complement in Z_2^64, as
    :func:`lift` reads it). Blocks run from the end: block [a, b) writes bytes [8a, 8b),
    i.e. words [2a, 2b), never a word below a — the words still to be read — and its own
    words are copied out first. No temporary beyond one block, one pass; a Z_2^32 total
    becomes a 64-bit one without a second L-entry array (secagg SPEC §6.6).
    """
    if (
        buffer.dtype != RING_DTYPE
        or buffer.ndim != 1
        or not buffer.flags.c_contiguous
        or not buffer.flags.writeable
    ):
        raise EncodingError("widen32_in_place needs a writable 1-D C-contiguous uint64 buffer")
    length = buffer.shape[0]
    words = buffer.view(np.int32)[:length]
    wide = buffer.view(np.int64)
    block = np.empty(min(BLOCK, length), dtype=np.int32)
    for stop in range(length, 0, -BLOCK):
        start = max(0, stop - BLOCK)
        part = block[: stop - start]
        np.copyto(part, words[start:stop])
        np.copyto(wide[start:stop], part)
    return buffer


def narrow32(values: RingVector) -> tuple[NDArray[np.uint32], int, int]:
    """(values mod 2^32 as uint32 words, min, max of values read as int64), in one pass.

    An empty vector gives (empty words, 0, −1).

    Block by block, so each block is read from memory once for its range and its words;
    the caller checks the range (secagg SPEC §2.1: every entry in [−2^31, 2^31)).
    """
    check_ring_vector(values)
    length = values.shape[0]
    signed = values.view(np.int64)
    words = np.empty(length, dtype=np.uint32)
    low, high = 0, -1  # an empty vector: an empty span
    for start in range(0, length, BLOCK):
        block = signed[start : start + BLOCK]
        low = int(block.min()) if start == 0 else min(low, int(block.min()))
        high = int(block.max()) if start == 0 else max(high, int(block.max()))
        np.copyto(words[start : start + BLOCK], block, casting="unsafe")
    return words, low, high


def add_into(accumulator: RingVector, other: RingVector) -> None:
    """``accumulator += other`` in Z_2^64, in place."""
    np.add(accumulator, other, out=accumulator)


def sub_into(accumulator: RingVector, other: RingVector) -> None:
    """``accumulator -= other`` in Z_2^64, in place."""
    np.subtract(accumulator, other, out=accumulator)
