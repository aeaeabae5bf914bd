"""Wire messages of ``secagg`` (SPEC §5): frozen, slotted, keyword-only, validated when built.

Each message is the payload of a signed envelope whose ``kind`` is the message's
:class:`MessageKind` and whose ``phase`` is the phase of the same number. Encodings are
canonical (:mod:`mpc_agg.codec`): sets are strictly increasing, every length is bounded,
and ``decode`` rejects trailing bytes, so one message has exactly one encoding.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mpc_agg.codec import (
    InvalidValueError,
    Reader,
    Writer,
    read_sorted_unique_u16,
    write_u16_set,
)
from mpc_agg.crypto import AEAD_TAG_SIZE, DIGEST_SIZE, P256_POINT_SIZE
from mpc_agg.ring import RING_BITS_CHOICES, RingVector
from mpc_agg.vss import PROOF_SIZE, SCALAR_SIZE, decode_scalar, encode_scalar
from protocols.common import MAX_PEERS


class Phase(enum.IntEnum):
    """Machine phases (SPEC §4). Message kind k is sent and processed in phase k."""

    IDLE = 0
    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY_CHECK = 4
    UNMASK = 5
    CONFIRM_RESULT = 6
    DONE = 7
    ABORTED = 8


class MessageKind(enum.IntEnum):
    """Message kinds (SPEC §5); the value is the phase the message belongs to."""

    ADVERTISE_KEYS = 1
    SHARE_KEYS = 2
    MASKED_INPUT = 3
    CONSISTENCY_CHECK = 4
    UNMASK = 5
    RESULT_DIGEST = 6

    @property
    def phase(self) -> Phase:
        """The phase in which this kind is sent."""
        return Phase(self.value)


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
        _check_set(self.mask_set, "mask set")
        accused = [c.accused for c in self.complaints]
        _check_set(accused, "complaints (by accused)")
        if set(accused) & set(self.mask_set):
            raise InvalidValueError("a peer cannot be both accused and masked with")
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
        w = Writer()
        write_u16_set(w, self.mask_set, MAX_PEERS)
        w.seq(
            self.complaints,
            MAX_PEERS,
            lambda w, c: (
                w.u16(c.accused).fixed(c.shared_point, P256_POINT_SIZE).fixed(c.proof, PROOF_SIZE)
            ),
        )
        w.u8(self.ring_bits)
        if self.ring_bits == 32:
            w.ring_vector32(self.masked, self.masked.shape[0])
        else:
            w.ring_vector(self.masked.astype(np.uint64, copy=False), self.masked.shape[0])
        return w.getvalue()

    @classmethod
    def decode(
        cls, data: bytes | memoryview, *, vector_length: int, ring_bits: int = 64
    ) -> MaskedInput:
        """Strict decoding: ``vector_length`` entries in the round's ring Z_2^``ring_bits``."""
        r = Reader(data)
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
        # zero-copy views: the size check below names both sizes
        masked: RingVector | NDArray[np.uint32] = (
            r.ring_vector32(1 << 31) if bits == 32 else r.ring_vector(1 << 31)
        )
        r.finish()
        if masked.shape[0] != vector_length:
            raise InvalidValueError(
                f"masked input has {masked.shape[0]} entries, the round has {vector_length}"
            )
        return cls(mask_set=mask_set, complaints=tuple(complaints), masked=masked, ring_bits=bits)


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

    def __post_init__(self) -> None:
        _check_set([p for p, _ in self.advertised], "view advertised keys")
        _check_set([p for p, _ in self.dealers], "view dealers")
        _check_set([p for p, _ in self.inputs], "view inputs")
        digests = (*self.advertised, *self.dealers, *self.inputs)
        if any(len(d) != DIGEST_SIZE for _, d in digests):
            raise InvalidValueError("view digests must be 32 bytes")

    def encode(self) -> bytes:
        """Canonical encoding."""
        w = Writer()
        for items in (self.advertised, self.dealers, self.inputs):
            w.seq(items, MAX_PEERS, lambda w, pd: w.u16(pd[0]).fixed(pd[1], DIGEST_SIZE))
        return w.getvalue()

    @classmethod
    def decode(cls, data: bytes | memoryview) -> ConsistencyCheck:
        """Strict decoding."""
        r = Reader(data)
        advertised = r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(DIGEST_SIZE)))
        dealers = r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(DIGEST_SIZE)))
        inputs = r.seq(MAX_PEERS, lambda r: (r.u16(), r.fixed(DIGEST_SIZE)))
        r.finish()
        return cls(advertised=tuple(advertised), dealers=tuple(dealers), inputs=tuple(inputs))


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
