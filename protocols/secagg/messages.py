"""Wire messages of ``secagg`` (SPEC §5): frozen, slotted, keyword-only, validated when built.

Each message is the payload of a signed envelope whose ``kind`` is the message's
:class:`MessageKind` and whose ``phase`` is the phase of the same number. Encodings are
canonical (:mod:`mpc_agg.codec`): sets are strictly increasing, every length is bounded,
and ``decode`` rejects trailing bytes, so one message has exactly one encoding.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mpc_agg.codec import (
    InvalidValueError,
    Reader,
    Writer,
    read_sorted_unique_u16,
    write_u16_set,
)
from mpc_agg.crypto import AEAD_TAG_SIZE, DIGEST_SIZE, P256_POINT_SIZE, payload_digest
from mpc_agg.ring import BLOCK, RING_BITS_CHOICES, RingVector
from mpc_agg.vss import PROOF_SIZE, SCALAR_SIZE, decode_scalar, encode_scalar
from protocols.common import MAX_PEERS

#: §6.7 — independent random linear checks per chunk: an error that changes the output
#: escapes each with probability ≤ 2^-33, all three ≤ 2^-99.
CHECKS_PER_CHUNK = 3


class Phase(enum.IntEnum):
    """Machine phases (SPEC §4). Message kind k ≤ 7 is sent and processed in phase k.

    CHUNK_SUM is entered by reduce-scatter rounds only (§6.7); a broadcast round goes from
    MASKED_INPUT straight to CONSISTENCY_CHECK.
    """

    IDLE = 0
    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CHUNK_SUM = 4
    CONSISTENCY_CHECK = 5
    UNMASK = 6
    CONFIRM_RESULT = 7
    DONE = 8
    ABORTED = 9


class MessageKind(enum.IntEnum):
    """Message kinds (SPEC §5); kinds 1–7 belong to the phase of their number."""

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CHUNK_SUM = 4
    CONSISTENCY_CHECK = 5
    UNMASK = 6
    RESULT_DIGEST = 7
    MASKED_CHUNK = 8
    """Reduce-scatter rounds: one chunk of a masked input, sent to its owner only (§5.7)."""

    @property
    def phase(self) -> Phase:
        """The phase in which this kind is sent."""
        if self is MessageKind.MASKED_CHUNK:
            return Phase.MASKED_INPUT
        return Phase(self.value)

    @property
    def private(self) -> bool:
        """True for the one kind addressed to a single peer (its recipient field is that peer)."""
        return self is MessageKind.MASKED_CHUNK


#: The kinds of a broadcast (not reduce-scatter) round, one per phase 1–7 but CHUNK_SUM.
BROADCAST_ROUND_KINDS = tuple(
    k for k in MessageKind if k not in (MessageKind.CHUNK_SUM, MessageKind.MASKED_CHUNK)
)


#: The phases a broadcast round goes through (all but CHUNK_SUM).
BROADCAST_ROUND_PHASES = tuple(p for p in Phase if p is not Phase.CHUNK_SUM)


class ShareKind(enum.IntEnum):
    """Which secret a revealed share belongs to (SPEC §6.5: one kind per owner, never both)."""

    SELF_MASK = 1
    MASK_KEY = 2


def _check_set(values: Sequence[int], what: str) -> None:
    if any(not 0 <= v < MAX_PEERS for v in values):
        raise InvalidValueError(f"{what}: peer id out of range")
    if any(a >= b for a, b in itertools.pairwise(values)):
        raise InvalidValueError(f"{what}: must be strictly increasing")


def _ciphertext_for(ciphertexts: Sequence[tuple[int, bytes]], recipient: int) -> bytes | None:
    for r, ct in ciphertexts:
        if r == recipient:
            return ct
    return None


# --------------------------------------------------------------------------- §5.1


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvertiseKeys:
    """§5.1 — the sender's per-round P-256 public keys (encryption, mask agreement)."""

    encryption_key: bytes
    mask_key: bytes

    def __post_init__(self) -> None:
        if len(self.encryption_key) != P256_POINT_SIZE or len(self.mask_key) != P256_POINT_SIZE:
            raise InvalidValueError("public keys must be 65-byte SEC1 points")
        if self.encryption_key == self.mask_key:
            raise InvalidValueError("encryption and mask keys must differ")

    def encode(self) -> bytes:
        """Canonical encoding."""
        return (
            Writer()
            .fixed(self.encryption_key, P256_POINT_SIZE)
            .fixed(self.mask_key, P256_POINT_SIZE)
            .getvalue()
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> AdvertiseKeys:
        """Strict decoding."""
        r = Reader(data)
        message = cls(encryption_key=r.fixed(P256_POINT_SIZE), mask_key=r.fixed(P256_POINT_SIZE))
        r.finish()
        return message


# --------------------------------------------------------------------------- §5.2

#: Plaintext inside each ShareKeys ciphertext: mask-key share ‖ self-mask share.
SHARE_PLAINTEXT_SIZE = 2 * SCALAR_SIZE
SHARE_CIPHERTEXT_SIZE = SHARE_PLAINTEXT_SIZE + AEAD_TAG_SIZE


@dataclass(frozen=True, slots=True, kw_only=True)
class ShareKeys:
    """§5.2 — Feldman commitments to both secrets and one AEAD ciphertext per recipient."""

    mask_key_commitments: tuple[bytes, ...]
    self_mask_commitments: tuple[bytes, ...]
    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        t = len(self.mask_key_commitments)
        if t == 0 or t != len(self.self_mask_commitments) or t > MAX_PEERS:
            raise InvalidValueError("both commitment vectors must have the same length T ≥ 1")
        if any(len(c) != P256_POINT_SIZE for c in self.mask_key_commitments):
            raise InvalidValueError("commitments must be 65-byte points")
        if any(len(c) != P256_POINT_SIZE for c in self.self_mask_commitments):
            raise InvalidValueError("commitments must be 65-byte points")
        _check_set([r for r, _ in self.ciphertexts], "ciphertext recipients")
        if any(len(ct) != SHARE_CIPHERTEXT_SIZE for _, ct in self.ciphertexts):
            raise InvalidValueError(f"share ciphertexts must be {SHARE_CIPHERTEXT_SIZE} bytes")

    def ciphertext_for(self, recipient: int) -> bytes | None:
        """The ciphertext addressed to ``recipient``, if any."""
        return _ciphertext_for(self.ciphertexts, recipient)

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer()
        w.seq(self.mask_key_commitments, MAX_PEERS, lambda w, c: w.fixed(c, P256_POINT_SIZE))
        w.seq(self.self_mask_commitments, MAX_PEERS, lambda w, c: w.fixed(c, P256_POINT_SIZE))
        w.seq(
            self.ciphertexts,
            MAX_PEERS,
            lambda w, rc: w.u16(rc[0]).fixed(rc[1], SHARE_CIPHERTEXT_SIZE),
        )
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ShareKeys:
        """Strict decoding."""
        r = Reader(data)
        mask = r.seq(MAX_PEERS, lambda r: r.fixed(P256_POINT_SIZE))
        selfm = r.seq(MAX_PEERS, lambda r: r.fixed(P256_POINT_SIZE))
        cts = r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(SHARE_CIPHERTEXT_SIZE)))
        r.finish()
        return cls(
            mask_key_commitments=tuple(mask),
            self_mask_commitments=tuple(selfm),
            ciphertexts=tuple(cts),
        )


def encode_share_plaintext(mask_key_share: int, self_mask_share: int) -> bytes:
    """The 64-byte plaintext of one ShareKeys ciphertext."""
    return encode_scalar(mask_key_share) + encode_scalar(self_mask_share)


def decode_share_plaintext(data: bytes) -> tuple[int, int]:
    """Inverse of :func:`encode_share_plaintext` (DecodeError on malformed)."""
    r = Reader(data)
    mask_key_share = decode_scalar(r.fixed(SCALAR_SIZE))
    self_mask_share = decode_scalar(r.fixed(SCALAR_SIZE))
    r.finish()
    return mask_key_share, self_mask_share


# --------------------------------------------------------------------------- §5.3


@dataclass(frozen=True, slots=True, kw_only=True)
class Complaint:
    """§6.3 — a public, verifiable accusation that ``accused`` sent the sender a bad share.

    ``shared_point`` is the full ECDH point between the two encryption keys; ``proof``
    is a Chaum–Pedersen proof that it is correct, so anyone can decrypt and check the
    accused's ciphertext to the complainer.
    """

    accused: int
    shared_point: bytes = field(repr=False)
    proof: bytes = field(repr=False)

    def __post_init__(self) -> None:
        if not 0 <= self.accused < MAX_PEERS:
            raise InvalidValueError("accused peer id out of range")
        if len(self.shared_point) != P256_POINT_SIZE or len(self.proof) != PROOF_SIZE:
            raise InvalidValueError("complaint point/proof have the wrong size")


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MaskedInput:
    """§5.3 — the masked vector, the set of peers it was masked with, and complaints.

    ``ring_bits`` is the round's ring (§2.1): with 32 only the low 32 bits of every word
    travel, and a decoded ``masked`` is a uint32 view.
    """

    mask_set: tuple[int, ...]
    complaints: tuple[Complaint, ...]
    masked: RingVector | NDArray[np.uint32] = field(repr=False)
    ring_bits: int = 64

    def __post_init__(self) -> None:
        _check_masking(self.mask_set, self.complaints)
        if self.ring_bits not in RING_BITS_CHOICES:
            raise InvalidValueError(f"ring_bits must be 32 or 64, got {self.ring_bits}")
        allowed = (np.uint64,) if self.ring_bits == 64 else (np.uint64, np.uint32)
        if self.masked.dtype not in allowed or self.masked.ndim != 1:
            raise InvalidValueError(
                f"masked input must be a 1-D {'uint64' if self.ring_bits == 64 else 'uint32'} "
                "vector"
            )

    def encode(self) -> bytes:
        """Canonical encoding."""
        return b"".join(self.encode_parts())

    def encode_parts(self) -> tuple[bytes | memoryview, ...]:
        """:meth:`encode` in pieces, the vector a view of ``masked`` (joined once, when sealed)."""
        w = _write_masking(self.mask_set, self.complaints, self.ring_bits)
        if self.ring_bits == 32:
            w.ring_vector32(self.masked, self.masked.shape[0])
        else:
            w.ring_vector(self.masked.astype(np.uint64, copy=False), self.masked.shape[0])
        return w.parts()

    @classmethod
    def decode(
        cls, data: bytes | memoryview, *, vector_length: int, ring_bits: int = 64
    ) -> MaskedInput:
        """Strict decoding: ``vector_length`` entries in the round's ring Z_2^``ring_bits``."""
        r = Reader(data)
        mask_set, complaints, bits = _read_masking(r, ring_bits)
        # zero-copy views: the size check below names both sizes
        masked: RingVector | NDArray[np.uint32] = (
            r.ring_vector32(1 << 31) if bits == 32 else r.ring_vector(1 << 31)
        )
        r.finish()
        if masked.shape[0] != vector_length:
            raise InvalidValueError(
                f"masked input has {masked.shape[0]} entries, the round has {vector_length}"
            )
        return cls(mask_set=mask_set, complaints=complaints, masked=masked, ring_bits=bits)


def _check_masking(mask_set: tuple[int, ...], complaints: tuple[Complaint, ...]) -> None:
    _check_set(mask_set, "mask set")
    accused = [c.accused for c in complaints]
    _check_set(accused, "complaints (by accused)")
    if set(accused) & set(mask_set):
        raise InvalidValueError("a peer cannot be both accused and masked with")


def _write_masking(
    mask_set: tuple[int, ...], complaints: tuple[Complaint, ...], ring_bits: int
) -> Writer:
    """The fields MaskedInput and MaskedHeader share: mask set, complaints, ring."""
    w = Writer()
    write_u16_set(w, mask_set, MAX_PEERS)
    w.seq(
        complaints,
        MAX_PEERS,
        lambda w, c: (
            w.u16(c.accused).fixed(c.shared_point, P256_POINT_SIZE).fixed(c.proof, PROOF_SIZE)
        ),
    )
    return w.u8(ring_bits)


def _read_masking(r: Reader, ring_bits: int) -> tuple[tuple[int, ...], tuple[Complaint, ...], int]:
    mask_set = read_sorted_unique_u16(r, MAX_PEERS)
    complaints = r.seq(
        MAX_PEERS,
        lambda r: Complaint(
            accused=r.u16(),
            shared_point=r.fixed(P256_POINT_SIZE),
            proof=r.fixed(PROOF_SIZE),
        ),
    )
    bits = r.u8()
    if bits != ring_bits:
        raise InvalidValueError(
            f"masked input is in Z_2^{bits}, the round's ring is Z_2^{ring_bits}"
        )
    return tuple(mask_set), tuple(complaints), bits


@dataclass(frozen=True, slots=True, kw_only=True)
class MaskedHeader:
    """§5.3 (reduce-scatter rounds) — a MaskedInput whose vector travels as chunks.

    Broadcast instead of the masked vector: the digest of each chunk (owner order, §6.7),
    which pins every chunk in the view without anyone but its owner receiving it.
    """

    mask_set: tuple[int, ...]
    complaints: tuple[Complaint, ...]
    chunk_digests: tuple[bytes, ...] = field(repr=False)
    ring_bits: int = 32

    def __post_init__(self) -> None:
        _check_masking(self.mask_set, self.complaints)
        if self.ring_bits != 32:
            raise InvalidValueError("reduce-scatter rounds use the ring Z_2^32")
        if not 1 <= len(self.chunk_digests) <= MAX_PEERS:
            raise InvalidValueError("a masked header names 1 to 1024 chunk digests")
        if any(len(d) != DIGEST_SIZE for d in self.chunk_digests):
            raise InvalidValueError("chunk digests must be 32 bytes")

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = _write_masking(self.mask_set, self.complaints, self.ring_bits)
        w.seq(self.chunk_digests, MAX_PEERS, lambda w, d: w.fixed(d, DIGEST_SIZE))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview, *, chunks: int) -> MaskedHeader:
        """Strict decoding: exactly ``chunks`` digests (one per owner of this round)."""
        r = Reader(data)
        mask_set, complaints, bits = _read_masking(r, 32)
        digests = r.seq(MAX_PEERS, lambda r: r.fixed(DIGEST_SIZE))
        r.finish()
        if len(digests) != chunks:
            raise InvalidValueError(
                f"masked input cut into {len(digests)} chunks, the round has {chunks} owners"
            )
        return cls(
            mask_set=mask_set, complaints=complaints, chunk_digests=tuple(digests), ring_bits=bits
        )


def chunk_digest(words: NDArray[np.uint32]) -> bytes:
    """§6.7 — B(MaskedChunk payload) of a chunk (BLAKE3): the digest its envelope signs.

    So an owner compares the header's digest with the payload digest its admission already
    verified, and a sender takes it from the envelope it sealed: no second hash of a chunk.
    """
    return payload_digest(MaskedChunk(words=words).encode())


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class MaskedChunk:
    """§5.7 — one chunk of the sender's masked input, for the chunk's owner only."""

    words: NDArray[np.uint32] = field(repr=False)

    def __post_init__(self) -> None:
        if self.words.dtype != np.uint32 or self.words.ndim != 1:
            raise InvalidValueError("a masked chunk is a 1-D uint32 vector")

    def encode(self) -> bytes:
        """Canonical encoding."""
        return Writer().ring_vector32(self.words, 1 << 31).getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview, *, length: int) -> MaskedChunk:
        """Strict decoding: exactly ``length`` words."""
        r = Reader(data)
        words = r.ring_vector32(1 << 31)
        r.finish()
        if words.shape[0] != length:
            raise InvalidValueError(f"chunk has {words.shape[0]} words, this owner's has {length}")
        return cls(words=words)


@dataclass(frozen=True, slots=True, kw_only=True, eq=False)
class ChunkSum:
    """§5.8 — an owner's sum of its chunk over the included inputs, and orphaned chunks.

    The exact integer sums Σ_{p∈I} y_{p,k} of the 32-bit words of every included input's
    chunk, held as they travel: ``low`` (the sums mod 2^32, uint32) and ``high`` (the rest,
    uint8, or uint16 when :func:`sum_high_bytes` of the roster size is 2): 5 bytes an entry
    up to n = 256, not 8, and a decoded message keeps views into its payload, so a peer
    holds no 8-byte copy of every chunk's sums until its checks (§6.7). Both are empty when
    ``missing`` (included peers whose chunk the owner lacks) is not. :meth:`from_sums`
    builds one from exact uint64 sums; :meth:`exact` gives them back, a slice at a time.
    ``orphans``: (owner, the sender's own chunk) for each chunk whose owner sent no
    MaskedHeader, so that every peer can sum it itself.
    """

    missing: tuple[int, ...]
    low: NDArray[np.uint32] = field(repr=False)
    high: NDArray[np.unsignedinteger[Any]] = field(repr=False)
    orphans: tuple[tuple[int, NDArray[np.uint32]], ...] = field(repr=False)

    def __post_init__(self) -> None:
        _check_set(self.missing, "missing chunks")
        _check_set([o for o, _ in self.orphans], "orphaned chunks")
        if self.low.dtype != np.uint32 or self.low.ndim != 1:
            raise InvalidValueError("the low parts of chunk sums are a 1-D uint32 vector")
        if self.high.dtype.kind != "u" or self.high.dtype.itemsize not in (1, 2):
            raise InvalidValueError("the high parts of chunk sums are 1- or 2-byte words")
        if self.high.shape != self.low.shape:
            raise InvalidValueError("the low and high parts of the chunk sums differ in length")
        if self.missing and self.low.size:
            raise InvalidValueError("an owner that lacks chunks sends no sums")
        if any(w.dtype != np.uint32 or w.ndim != 1 for _, w in self.orphans):
            raise InvalidValueError("orphaned chunks are 1-D uint32 vectors")

    @property
    def high_bytes(self) -> int:
        """Bytes of each high part on the wire: :func:`sum_high_bytes` of the roster size."""
        return int(self.high.dtype.itemsize)

    @classmethod
    def from_sums(
        cls,
        *,
        missing: tuple[int, ...],
        sums: RingVector,
        orphans: tuple[tuple[int, NDArray[np.uint32]], ...],
        high_bytes: int = 1,
    ) -> ChunkSum:
        """From exact uint64 sums; each must fit in 4 + ``high_bytes`` bytes."""
        if sums.dtype != np.uint64 or sums.ndim != 1:
            raise InvalidValueError("chunk sums are a 1-D uint64 vector")
        high_dtype = _high_dtype(high_bytes)
        if sums.size and int(sums.max()) >> (32 + 8 * high_bytes):
            raise _unfit(high_bytes)
        return cls(
            missing=missing,
            low=sums.astype(np.uint32),  # the low 32 bits
            high=(sums >> np.uint64(32)).astype(high_dtype),
            orphans=orphans,
        )

    @classmethod
    def summing(
        cls,
        *,
        parts: Sequence[NDArray[np.uint32]],
        length: int,
        orphans: tuple[tuple[int, NDArray[np.uint32]], ...],
        high_bytes: int = 1,
    ) -> ChunkSum:
        """The exact sums of ``parts`` (uint32 vectors of ``length``), as low and high parts.

        :meth:`from_sums` of their uint64 sum, without it: the sum is taken a block at a
        time in cache and split at once, so no 8-byte-an-entry array (nor its shifted copy)
        is ever allocated (peak memory at large L, SPEC §5.8).
        """
        parts = tuple(parts)  # read once per block: an iterator would be spent after one
        high_dtype = _high_dtype(high_bytes)
        if any(part.dtype != np.uint32 or part.shape != (length,) for part in parts):
            raise InvalidValueError(f"chunk parts are uint32 vectors of {length} entries")
        low = np.empty(length, dtype=np.uint32)
        high: NDArray[np.unsignedinteger[Any]] = np.empty(length, dtype=high_dtype)
        block = np.empty(min(length, BLOCK), dtype=np.uint64)
        limit = np.uint64(1 << (8 * high_bytes))
        for start in range(0, length, BLOCK):
            stop = min(start + BLOCK, length)
            acc = block[: stop - start]
            acc.fill(0)
            for part in parts:
                np.add(acc, part[start:stop], out=acc)
            np.copyto(low[start:stop], acc, casting="unsafe")  # the low 32 bits
            np.right_shift(acc, np.uint64(32), out=acc)
            if acc.size and acc.max() >= limit:
                raise _unfit(high_bytes)
            np.copyto(high[start:stop], acc, casting="unsafe")
        return cls(missing=(), low=low, high=high, orphans=orphans)

    def exact(self, start: int = 0, stop: int | None = None) -> RingVector:
        """The exact sums of entries [start, stop) as uint64 (a new array of that slice)."""
        out = self.high[start:stop].astype(np.uint64)
        np.left_shift(out, np.uint64(32), out=out)
        np.bitwise_or(out, self.low[start:stop], out=out)
        return out

    @property
    def sums(self) -> RingVector:
        """Every exact sum as uint64 (allocates 8 bytes an entry: tests and small chunks)."""
        return self.exact()

    def encode(self) -> bytes:
        """Canonical encoding."""
        return b"".join(self.encode_parts())

    def encode_parts(self) -> tuple[bytes | memoryview, ...]:
        """:meth:`encode` in pieces, the vectors views (joined once, when sealed)."""
        w = Writer()
        write_u16_set(w, self.missing, MAX_PEERS)
        w.ring_vector32(self.low, 1 << 31)
        w.small_words(self.high, self.high_bytes, 1 << 31)
        w.u32(len(self.orphans))
        for owner, words in self.orphans:
            w.u16(owner).ring_vector32(words, 1 << 31)
        return w.parts()

    @classmethod
    def decode(
        cls,
        data: bytes | memoryview,
        *,
        length: int,
        orphans: Mapping[int, int],
        high_bytes: int = 1,
    ) -> ChunkSum:
        """Strict decoding: ``length`` sums (or none), then the listed orphaned chunks.

        ``orphans`` maps each owner whose chunk may be listed to that chunk's length;
        whether it *is* orphaned is the machine's comparison with its own survivor set
        (§6.7). ``high_bytes``: :func:`sum_high_bytes` of the roster size. The sums stay
        views into ``data``.
        """
        r = Reader(data)
        missing = read_sorted_unique_u16(r, MAX_PEERS)
        low = r.ring_vector32(1 << 31)
        high = r.small_words(1 << 31, high_bytes)
        if high.shape != low.shape:
            raise InvalidValueError("the low and high parts of the chunk sums differ in length")
        count = r.u32()
        if count > len(orphans):
            raise InvalidValueError(f"{count} orphaned chunks, the round has {len(orphans)}")
        items = []
        for _ in range(count):
            owner = r.u16()
            if owner not in orphans:
                raise InvalidValueError(f"chunk of {owner} cannot be listed as orphaned")
            words = r.ring_vector32(1 << 31)
            if words.shape[0] != orphans[owner]:
                raise InvalidValueError(f"orphaned chunk of {owner} has the wrong length")
            items.append((owner, words))
        r.finish()
        if low.shape[0] not in (0, length):
            raise InvalidValueError(f"{low.shape[0]} chunk sums, the chunk has {length} words")
        if not missing and low.shape[0] != length:
            raise InvalidValueError("no chunk sums and no missing chunks")
        return cls(missing=tuple(missing), low=low, high=high, orphans=tuple(items))


def _high_dtype(high_bytes: int) -> type[np.uint8] | type[np.uint16]:
    """§5.8 — the dtype of a chunk sum's high part on ``high_bytes`` bytes (1 or 2)."""
    if high_bytes not in (1, 2):
        raise InvalidValueError("the high part of a chunk sum is 1 or 2 bytes")
    return np.uint8 if high_bytes == 1 else np.uint16


def _unfit(high_bytes: int) -> InvalidValueError:
    return InvalidValueError(f"a chunk sum does not fit in {4 + high_bytes} bytes")


def sum_high_bytes(n: int) -> int:
    """§5.8 — bytes for the high part of a chunk sum: Σ of ≤ n words < 2^32 is < n·2^32."""
    return 1 if n <= 256 else 2


# --------------------------------------------------------------------------- §5.4


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistencyCheck:
    """§5.4 — the sender's frozen view: digests of every message it builds on.

    AdvertiseKeys, ShareKeys and MaskedInput digests: so no peer can show different keys,
    shares or inputs to different peers without the views (and the round) diverging.
    """

    advertised: tuple[tuple[int, bytes], ...]
    dealers: tuple[tuple[int, bytes], ...]
    inputs: tuple[tuple[int, bytes], ...]
    chunk_sums: tuple[tuple[int, bytes], ...] = ()
    """Reduce-scatter rounds: the digest of every owner's ChunkSum (§6.7); part of the view."""
    checks: tuple[int, ...] = ()
    """Reduce-scatter rounds: the sender's chunk checks (§6.7), 3 per chunk; not part of
    the view (every peer's differ)."""

    def __post_init__(self) -> None:
        _check_set([p for p, _ in self.advertised], "view advertised keys")
        _check_set([p for p, _ in self.dealers], "view dealers")
        _check_set([p for p, _ in self.inputs], "view inputs")
        _check_set([p for p, _ in self.chunk_sums], "view chunk sums")
        digests = (*self.advertised, *self.dealers, *self.inputs, *self.chunk_sums)
        if any(len(d) != DIGEST_SIZE for _, d in digests):
            raise InvalidValueError("view digests must be 32 bytes")
        if len(self.checks) > CHECKS_PER_CHUNK * MAX_PEERS or any(
            not 0 <= c < 1 << 64 for c in self.checks
        ):
            raise InvalidValueError("chunk checks are at most 3 per chunk, each a u64")

    def same_view(self, other: ConsistencyCheck) -> bool:
        """True when ``other`` names the same messages (its checks may differ)."""
        return (self.advertised, self.dealers, self.inputs, self.chunk_sums) == (
            other.advertised,
            other.dealers,
            other.inputs,
            other.chunk_sums,
        )

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer()
        for items in (self.advertised, self.dealers, self.inputs, self.chunk_sums):
            w.seq(items, MAX_PEERS, lambda w, pd: w.u16(pd[0]).fixed(pd[1], DIGEST_SIZE))
        w.seq(self.checks, CHECKS_PER_CHUNK * MAX_PEERS, Writer.u64)
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ConsistencyCheck:
        """Strict decoding."""
        r = Reader(data)
        advertised = r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(DIGEST_SIZE)))
        dealers = r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(DIGEST_SIZE)))
        inputs = r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(DIGEST_SIZE)))
        chunk_sums = r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(DIGEST_SIZE)))
        checks = r.seq(CHECKS_PER_CHUNK * MAX_PEERS, Reader.u64)
        r.finish()
        return cls(
            advertised=tuple(advertised),
            dealers=tuple(dealers),
            inputs=tuple(inputs),
            chunk_sums=tuple(chunk_sums),
            checks=tuple(checks),
        )


# --------------------------------------------------------------------------- §5.5


@dataclass(frozen=True, slots=True, kw_only=True)
class RevealedShare:
    """One share revealed at Unmask: ``owner``'s secret of kind ``kind`` at the sender's x."""

    owner: int
    kind: ShareKind
    value: int = field(repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Unmask:
    """§5.5 — the sender's revealed shares, AEAD-encrypted once per recipient."""

    ciphertexts: tuple[tuple[int, bytes], ...]

    def __post_init__(self) -> None:
        _check_set([r for r, _ in self.ciphertexts], "unmask recipients")

    def ciphertext_for(self, recipient: int) -> bytes | None:
        """The ciphertext addressed to ``recipient``, if any."""
        return _ciphertext_for(self.ciphertexts, recipient)

    def encode(self) -> bytes:
        """Canonical encoding."""
        max_len = MAX_PEERS * (3 + SCALAR_SIZE) + 4 + AEAD_TAG_SIZE
        return (
            Writer()
            .seq(self.ciphertexts, MAX_PEERS, lambda w, rc: w.u16(rc[0]).var_bytes(rc[1], max_len))
            .getvalue()
        )

    @classmethod
    def decode(cls, data: bytes | memoryview) -> Unmask:
        """Strict decoding."""
        max_len = MAX_PEERS * (3 + SCALAR_SIZE) + 4 + AEAD_TAG_SIZE
        r = Reader(data)
        cts = r.seq(MAX_PEERS, lambda r: (r.u16(), r.var_bytes(max_len)))
        r.finish()
        return cls(ciphertexts=tuple(cts))


def encode_revealed(shares: Sequence[RevealedShare]) -> bytes:
    """Plaintext of an Unmask ciphertext: shares sorted by owner, one per owner."""
    ordered = sorted(shares, key=lambda s: s.owner)
    _check_set([s.owner for s in ordered], "revealed owners")
    return (
        Writer()
        .seq(
            ordered,
            MAX_PEERS,
            lambda w, s: w.u16(s.owner).u8(s.kind).fixed(encode_scalar(s.value), SCALAR_SIZE),
        )
        .getvalue()
    )


def decode_revealed(data: bytes) -> tuple[RevealedShare, ...]:
    """Strict decoding of an Unmask plaintext."""
    r = Reader(data)

    def _one(r: Reader) -> RevealedShare:
        owner = r.u16()
        kind_value = r.u8()
        try:
            kind = ShareKind(kind_value)
        except ValueError:
            raise InvalidValueError(f"unknown share kind {kind_value}") from None
        return RevealedShare(owner=owner, kind=kind, value=decode_scalar(r.fixed(SCALAR_SIZE)))

    shares = r.seq(MAX_PEERS, _one)
    r.finish()
    _check_set([s.owner for s in shares], "revealed owners")
    return tuple(shares)


# --------------------------------------------------------------------------- §5.6


@dataclass(frozen=True, slots=True, kw_only=True)
class ResultDigest:
    """§5.6 — the sender's digest of (included set, aggregate)."""

    digest: bytes

    def __post_init__(self) -> None:
        if len(self.digest) != DIGEST_SIZE:
            raise InvalidValueError("result digest must be 32 bytes")

    def encode(self) -> bytes:
        """Canonical encoding."""
        return self.digest

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ResultDigest:
        """Strict decoding."""
        r = Reader(data)
        message = cls(digest=r.fixed(DIGEST_SIZE))
        r.finish()
        return message
