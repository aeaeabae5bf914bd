"""Pseudo-random mask expansion: AES-256-CTR keystream written into reused numpy buffers.

Mask keys are 32-byte AES keys derived with HKDF-SHA256 from a full-entropy secret (an
ECDH output or a 256-bit seed) and an ``info`` string that names the protocol version,
federation, round, purpose and the parties (:func:`mask_key`), so no two masks in any two
rounds, federations or pairs share a keystream. The counter starts at zero because each
key is used for exactly one vector.

Hot path: :func:`apply_masks` walks the accumulator in cache-sized chunks and, for each
chunk, adds or subtracts the next slice of every mask's keystream. The accumulator chunk
stays in cache while all masks touch it; memory traffic is one pass over the accumulator
no matter how many masks there are. No Python loop runs over coordinates. Words are
``uint64`` (Z_2^64) or ``uint32`` (Z_2^32: 4 keystream bytes an entry, secagg SPEC §6.3).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from mpc_agg.crypto import derive_key
from mpc_agg.ring import BLOCK, RING_DTYPE, RingVector

if sys.byteorder != "little":  # the keystream is read as little-endian words on the wire too
    raise ImportError("mpc_agg.prg requires a little-endian host (masks must match across sites)")

#: Words per chunk: 32 Ki words = 256 KiB, well inside L2 on the machines we measured.
CHUNK_WORDS = BLOCK
_ZERO_CHUNK = np.zeros(CHUNK_WORDS, dtype=RING_DTYPE)
_ZERO_CHUNK.flags.writeable = False
_ZERO_CHUNK_BYTES = _ZERO_CHUNK.view(np.uint8).data
_IV = bytes(16)
_WORD_DTYPES = (np.dtype(np.uint64), np.dtype(np.uint32))


def _field(value: bytes) -> bytes:
    return len(value).to_bytes(2, "big") + value


def mask_info(
    *,
    protocol: str,
    federation: str,
    round_id: int,
    purpose: str,
    parties: Sequence[int],
) -> bytes:
    """Canonical HKDF ``info`` for a mask: every field length-prefixed, parties in order."""
    return b"".join(
        [
            b"mpc-agg/mask/v1",
            _field(protocol.encode()),
            _field(federation.encode()),
            round_id.to_bytes(8, "big"),
            _field(purpose.encode()),
            len(parties).to_bytes(2, "big"),
            *(p.to_bytes(2, "big") for p in parties),
        ]
    )


def mask_key(secret: bytes, info: bytes) -> bytes:
    """32-byte AES key for one mask vector."""
    if len(secret) < 16:
        raise ValueError("mask secrets must carry at least 128 bits")
    return derive_key(secret, info=info, length=32)


@dataclass(frozen=True, slots=True)
class MaskTerm:
    """One mask to apply: ``sign`` ∈ {+1, −1} times PRG(``key``)."""

    key: bytes
    sign: int

    def __repr__(self) -> str:  # never print keys
        return f"MaskTerm(sign={self.sign:+d})"


def expand(key: bytes, length: int, dtype: type[np.unsignedinteger[Any]] = np.uint64) -> Any:
    """The first ``length`` little-endian words (``dtype``) of AES-256-CTR(key, iv=0).

    For tests and vectors.
    """
    out = np.empty(length, dtype=dtype)
    apply_masks(out, [MaskTerm(key, +1)], initial_zero=True)
    return out


def keystream_blocks(
    key: bytes, length: int, dtype: type[np.unsignedinteger[Any]] = np.uint64
) -> Iterator[Any]:
    """:func:`expand`'s ``length`` words (``dtype``: uint64 or uint32), ``CHUNK_WORDS`` at a time.

    Every block is a view of one reused buffer, valid until the next step: memory stays
    O(``CHUNK_WORDS``) whatever ``length`` is, and the block is in cache when it is used.
    """
    word = np.dtype(dtype)
    if word not in _WORD_DTYPES:
        raise TypeError(f"keystream words are uint64 or uint32, not {word}")
    width = word.itemsize
    buffer = np.empty(min(CHUNK_WORDS, max(length, 0)), dtype=word)
    out = buffer.view(np.uint8).data
    stream = Cipher(algorithms.AES(key), modes.CTR(_IV)).encryptor()
    for start in range(0, length, CHUNK_WORDS):
        words = min(CHUNK_WORDS, length - start)
        stream.update_into(_ZERO_CHUNK_BYTES[: width * words], out[: width * words])
        yield buffer[:words]


def apply_masks(
    accumulator: RingVector | NDArray[np.uint32],
    terms: Sequence[MaskTerm],
    *,
    initial_zero: bool = False,
    scratch: RingVector | NDArray[np.uint32] | None = None,
    sources: Sequence[RingVector | NDArray[np.uint32]] = (),
) -> None:
    """``accumulator += Σ sign·PRG(key)`` in place, chunk by chunk.

    In Z_2^64 for ``uint64`` words, in Z_2^32 for ``uint32`` words (4 keystream bytes an
    entry: half the AES work).

    ``initial_zero`` zeroes the accumulator first (saves a separate pass). ``scratch``
    is an optional reusable buffer of at least ``CHUNK_WORDS`` words of the same dtype.
    ``sources`` (vectors of the accumulator's dtype and length): the accumulator is first
    *set* to their sum, chunk by chunk in the same pass as the masks, so a sum of masked
    inputs and its unmasking read each input once and the accumulator once (secagg SPEC
    §6.5); its previous content is ignored (it may be a fresh ``np.empty``, or one of the
    sources, itself: a source that only overlaps it raises ``ValueError``).
    """
    length = accumulator.shape[0]
    dtype = accumulator.dtype
    if dtype not in _WORD_DTYPES:
        raise TypeError(f"masks apply to uint64 or uint32 words, not {dtype}")
    for source in sources:
        if source.dtype != dtype or source.shape != accumulator.shape:
            raise ValueError(
                f"sources must be {dtype} vectors of length {length}, "
                f"not {source.dtype} of shape {source.shape}"
            )
    width = dtype.itemsize
    if initial_zero and not sources:
        accumulator[:] = 0
    if not terms and not sources:
        return
    if scratch is None or scratch.shape[0] < CHUNK_WORDS or scratch.dtype != dtype:
        scratch = np.empty(CHUNK_WORDS, dtype=dtype)
    scratch_bytes = scratch.view(np.uint8).data
    streams = [(Cipher(algorithms.AES(t.key), modes.CTR(_IV)).encryptor(), t.sign) for t in terms]
    # the accumulator may be a source (once or more): scale it and add the others to it, or
    # copy the first other in; any other overlap would be read after it is overwritten
    inside = sum(source is accumulator for source in sources)
    others = [source for source in sources if source is not accumulator]
    if any(np.may_share_memory(source, accumulator) for source in others):
        raise ValueError("a source overlaps the accumulator without being it")
    for start in range(0, length, CHUNK_WORDS):
        stop = min(start + CHUNK_WORDS, length)
        words = stop - start
        target = accumulator[start:stop]
        if sources:
            rest = iter(others)
            if inside > 1:
                np.multiply(target, dtype.type(inside), out=target)
            elif not inside:
                np.copyto(target, next(rest)[start:stop])
            for source in rest:
                np.add(target, source[start:stop], out=target)
        buf = scratch[:words]
        buf_bytes = scratch_bytes[: width * words]
        for stream, sign in streams:
            stream.update_into(_ZERO_CHUNK_BYTES[: width * words], buf_bytes)
            if sign > 0:
                np.add(target, buf, out=target)
            else:
                np.subtract(target, buf, out=target)
