"""Fixed-point encoding: float arrays ↔ signed integers, with headroom checked.

DESIGN §4: flatten → (optional) clip to an L2 norm → scale by 2^frac_bits → stochastic
rounding (unbiased: E[encode(x)] = x·2^f) → check that the sum of ``n_peers`` such
vectors cannot leave ``[-2^63, 2^63)`` → embed in Z_2^64.

Nothing is ever wrapped or clipped silently: NaN/inf, non-float input, values too
large for the configured precision and a sum that could overflow the ring all raise a
typed error whose message names the numbers involved. L2 clipping happens only when
asked for and is reported in :class:`EncodedUpdate.clipped`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mpc_agg.errors import EncodingError, HeadroomError
from mpc_agg.prg import keystream_blocks
from mpc_agg.ring import BLOCK, RING_BITS_CHOICES, RingVector, lift, signed_limit

FloatVector = NDArray[np.float64]

#: float64 represents every integer below 2^53 exactly; scaled values must stay below it
#: so that the rounding step is exact.
_EXACT_FLOAT_LIMIT = float(1 << 53)
#: Entries encoded per block (``ring.BLOCK``): the float64 temporaries (256 KiB each) stay
#: in cache through the block's passes (d = 10^6: 7.4 → 5.5 ms an encode against 2^18).
_BLOCK = BLOCK
#: Stochastic rounding compares the fraction, scaled by 2^32, with a uniform 32-bit word.
_TWO_32 = float(1 << 32)


def sum_of_squares(flat: NDArray[np.floating] | NDArray[np.integer]) -> float:
    """Σ x² in float64 of a 1-D vector, block by block (no float64 copy of the whole vector).

    ``einsum``, not ``dot``: numpy's float ``dot`` goes to a multithreaded BLAS whose
    threads spin after every call — measured over Mosquitto (ten site processes on two
    cores), the norm alone cost a secagg site ≈ 20 ms of CPU per round at d = 10⁶. Every
    L2 norm of a vector-sized array in the package is taken with this (DP, ``robust``'s
    norm check, the torch optimizer's clip). Rounding error: at most d·2⁻⁵³ relative, as
    for any order of summation.
    """
    total = 0.0
    for start in range(0, flat.shape[0], _BLOCK):
        block = flat[start : start + _BLOCK].astype(np.float64, copy=False)  # a view if f64
        total += float(np.einsum("i,i->", block, block))
    return total


def _finite_norm(squares: float) -> float:
    norm = math.sqrt(squares)
    if not math.isfinite(norm):
        raise EncodingError("the update's L2 norm overflows float64; refusing to encode")
    return norm


def check_headroom(max_abs: int, n_peers: int, ring_bits: int = 64) -> None:
    """Raise :class:`HeadroomError` unless ``n_peers · max_abs`` fits the signed ring.

    The sum of ``n_peers`` values each bounded by ``max_abs`` in absolute value decodes
    exactly from Z_2^b iff ``n_peers · max_abs ≤ 2^(b−1) − 1``.
    """
    if n_peers < 1:
        raise EncodingError(f"n_peers must be >= 1, got {n_peers}")
    if max_abs < 0:
        raise EncodingError(f"max_abs must be >= 0, got {max_abs}")
    limit = signed_limit(ring_bits)
    if n_peers * max_abs > limit:
        raise HeadroomError(
            f"sum of {n_peers} peers × max |value| {max_abs} = {n_peers * max_abs} "
            f"exceeds the ring's signed range 2^{ring_bits - 1}−1 = {limit}; lower "
            f"frac_bits, clip the update, or aggregate fewer peers — nothing was wrapped "
            f"or clipped"
        )


@dataclass(frozen=True, slots=True)
class EncodedUpdate:
    """An update encoded for aggregation (the output of :meth:`FixedPointCodec.encode`)."""

    ring: RingVector = field(repr=False)
    """The encoded vector in Z_2^64 (two's-complement signed fixed point)."""
    clipped: bool
    """True when L2 clipping changed the input."""
    l2_norm: float
    """L2 norm of the input before clipping."""
    max_abs: int
    """Largest |integer| in the encoding (what the headroom check used)."""


@dataclass(frozen=True, slots=True)
class FixedPointCodec:
    """Signed fixed point with ``frac_bits`` fractional bits, for sums of ``n_peers`` inputs.

    ``max_abs_value`` bounds |x| per coordinate *before* scaling; together with
    ``n_peers`` it defines the static headroom check done at construction, so a
    configuration that could ever overflow is rejected up front. Every encode also
    checks the actual values.
    """

    frac_bits: int
    n_peers: int
    max_abs_value: float
    ring_bits: int = 64
    """The ring the sum lives in (Z_2^64, or Z_2^32 when the bound fits: half the bytes)."""

    def __post_init__(self) -> None:
        if not 0 <= self.frac_bits <= 52:
            raise EncodingError(f"frac_bits must be in [0, 52], got {self.frac_bits}")
        if self.n_peers < 1:
            raise EncodingError(f"n_peers must be >= 1, got {self.n_peers}")
        if self.ring_bits not in RING_BITS_CHOICES:
            raise EncodingError(f"ring_bits must be one of {RING_BITS_CHOICES}")
        if not (math.isfinite(self.max_abs_value) and self.max_abs_value > 0):
            raise EncodingError(f"max_abs_value must be finite and > 0, got {self.max_abs_value}")
        scaled = self.max_abs_value * self.scale
        if scaled >= _EXACT_FLOAT_LIMIT:
            raise HeadroomError(
                f"max_abs_value {self.max_abs_value} × 2^{self.frac_bits} = {scaled:.3e} "
                f"exceeds 2^53 (exact float range); lower frac_bits"
            )
        check_headroom(self._largest_integer, self.n_peers, self.ring_bits)

    @property
    def _largest_integer(self) -> int:
        """The static bound on |encoded entry|: ⌈max_abs_value·2^f⌉ + 1.

        +1: stochastic rounding may round the largest value up by one unit.
        """
        return math.ceil(self.max_abs_value * self.scale) + 1

    def fits_ring(self, ring_bits: int) -> bool:
        """Whether the static bound n_peers · (⌈max_abs_value·2^f⌉ + 1) fits Z_2^ring_bits."""
        return self.n_peers * self._largest_integer <= signed_limit(ring_bits)

    @property
    def scale(self) -> float:
        """2^frac_bits."""
        return float(1 << self.frac_bits)

    def encode(
        self,
        values: NDArray[np.floating] | NDArray[np.integer],
        rng: np.random.Generator,
        *,
        clip_norm: float | None = None,
    ) -> EncodedUpdate:
        """Encode a float vector (any shape; flattened in C order).

        ``rng`` drives stochastic rounding only (rounding noise, not a secret; callers seed
        it from the OS CSPRNG): 32 bytes of it key an AES-256-CTR stream of 32-bit words
        (:func:`~mpc_agg.prg.keystream_blocks`, 0.8 ms for 10⁶ draws against 2.8 ms for
        ``rng.random``), and an entry x·2^f rounds up with probability ⌈frac·2^32⌉ / 2^32:
        unbiased to within 2^-32 of a unit. Raises :class:`EncodingError` for NaN/inf or a
        coordinate above ``max_abs_value`` (after optional clipping).
        """
        array = np.asarray(values)
        if array.dtype.kind not in "fiu":  # not timedelta64, which numpy calls an integer
            raise EncodingError(f"cannot encode dtype {array.dtype}; expected floats")
        flat = np.ascontiguousarray(array).reshape(-1)
        if not np.isfinite(flat).all():
            bad = int(np.count_nonzero(~np.isfinite(flat)))
            raise EncodingError(f"update contains {bad} NaN/inf entries; refusing to encode")
        factor = 1.0
        clipped = False
        norm: float | None = None  # without clipping: summed in the encoding pass below
        if clip_norm is not None:
            if not (math.isfinite(clip_norm) and clip_norm > 0):
                raise EncodingError(f"clip_norm must be finite and > 0, got {clip_norm}")
            norm = _finite_norm(sum_of_squares(flat))
            if norm > clip_norm:
                factor = clip_norm / norm
                clipped = True
        peak = max(float(np.max(flat)), -float(np.min(flat))) * factor if flat.size else 0.0
        if peak > self.max_abs_value:
            raise EncodingError(
                f"an entry has |x| = {peak:.6g} > max_abs_value {self.max_abs_value:.6g}; "
                f"clip the update (clip_norm) or raise max_abs_value — nothing was clipped"
            )
        integers = np.empty(flat.shape[0], dtype=np.int64)
        scale = self.scale * factor
        squares = 0.0
        top = bottom = 0.0
        # Block by block: temporaries stay O(block), not O(d) (a 10^8-entry update must fit),
        # and a block is read from memory once for its norm, its encoding and its range.
        draws = keystream_blocks(rng.bytes(32), flat.shape[0], np.uint32)
        for start, uniform in zip(range(0, flat.shape[0], _BLOCK), draws, strict=True):
            block = flat[start : start + _BLOCK].astype(np.float64)
            if norm is None:
                squares += float(np.einsum("i,i->", block, block))
            block *= scale
            floor = np.floor(block)
            block -= floor  # fractional part f in [0, 1)
            block *= _TWO_32  # f·2^32, exact
            floor += uniform < block  # round up with probability ⌈f·2^32⌉ / 2^32
            top = max(top, float(floor.max()))
            bottom = min(bottom, float(floor.min()))
            integers[start : start + _BLOCK] = floor
        if norm is None:
            norm = _finite_norm(squares)
        max_abs = int(max(top, -bottom))  # exact: |entries| < 2^53
        check_headroom(max_abs, self.n_peers, self.ring_bits)
        ring = integers.view(np.uint64)
        return EncodedUpdate(ring=ring, clipped=clipped, l2_norm=norm, max_abs=max_abs)

    def decode(self, total: RingVector, *, overwrite: bool = False) -> FloatVector:
        """Decode a ring vector (e.g. an aggregate) back to floats: lift, then ÷ 2^frac_bits.

        ``overwrite``: the floats take ``total``'s own buffer (8 bytes an entry either
        way), block by block, so the aggregate is never in memory twice (peak memory at
        large L); ``total`` is destroyed. A read-only ``total`` is decoded into a new array.
        """
        signed = lift(total)
        if not (overwrite and total.flags.writeable and total.flags.c_contiguous):
            values = signed.astype(np.float64)
            values *= 1.0 / self.scale  # exact: the scale is a power of two; one array
            return values
        values = total.view(np.float64)
        for start in range(0, values.shape[0], _BLOCK):  # a block's temporary, not d's
            stop = start + _BLOCK
            np.multiply(signed[start:stop], 1.0 / self.scale, out=values[start:stop])
        return values

    def on_grid(self, values: NDArray[np.floating]) -> bool:
        """True when every entry is an exact multiple of 2^-frac_bits (encodes exactly)."""
        scaled = np.asarray(values, dtype=np.float64) * self.scale
        return bool(np.all(scaled == np.floor(scaled)))
