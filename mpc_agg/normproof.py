"""A linear-verifier proof that a Shamir-shared vector has a small L2 norm (robust SPEC §6).

The statement, for an integer vector x of length d embedded in GF(p), p = 2^61 − 1, and a
bound B on the integer grid:

    ‖x‖₂² ≤ B²   (over the integers, not modulo p).

The dealer supplies, as a second shared vector (the *proof*):

* the bits of the slack B² − ‖x‖² (so ‖x‖² + Σ 2^k b_k = B² with b_k ∈ {0, 1});
* for each of R public ternary projections z_s ∈ {−1, 0, 1}^d drawn *after* x was
  committed (PINE, Rothblum et al. 2023), the bits of ⟨z_s, x⟩ + αB (so every projection
  lies in [−αB, 2^m' − 1 − αB]). A coordinate whose centred lift has |x̃_k| ≥ 2^m' makes
  a projection leave that interval with probability ≥ 1/2, so after R projections every
  |x̃_k| < 2^m' except with probability 2^−R; :func:`check_norm_bound` demands
  d·2^(2m') + 2^m ≤ p, so the squared norm then cannot wrap modulo p;
* a fully linear proof (Boneh et al. 2019, the FLP behind Prio3) that the gadget outputs
  are right: the coordinates of x form an M × L matrix whose columns are interpolated by
  wire polynomials U_l (random seeds at the nodes 0..k−1, the data at the nodes k..k+M−1,
  k = the number of query points), and the proof carries P_x(T) = Σ_l U_l(T)² as its
  values at the nodes 0..2(M+k−1); likewise the bits, with the per-wire gadget u² − u.

Every verifier query is an *affine* function of (x, proof), so each holder computes it on
its own shares and the results are themselves Shamir shares of the query on the secret:
holders never multiply shares. The decision uses the reconstructed queries only:
P_x(r) = Σ_l U_l(r)², P_b,l(r) = U_b,l(r)² − U_b,l(r) for every bit wire, and one random
linear combination of every linear relation equal to zero. The opened values are
uniformly random (the seeds) or determined by them, so they reveal nothing about an
honest dealer's x beyond validity: a wire opened at k points has k random seeds, and the
points are chosen so that the k × k matrix of the seed nodes' Lagrange weights at them is
invertible (one seed per wire opened at two points revealed a linear function of x — a
review found it; ``tests/protocol/robust/test_review_attack.py``).

Parameters and error probabilities (SPEC §6.4): α = 6 gives an honest dealer a failed
projection with probability ≤ 2R·e^(−α²) (sub-Gaussian tail of a lazy ±1 sum, variance
proxy 1/2); R = ⌈40 + log₂ K⌉ makes K·2^−R ≤ 2^−40 where K counts the challenges that
colluders and the broker can choose between by making reveals miss a phase's close
(:func:`challenge_candidates`); the polynomial identities fail at a random point with
probability ≤ 2·(max(M, M_b) + k − 1)/p each and are checked at k points, enough for K
times that to stay below 2^−40.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mpc_agg import field as gf
from mpc_agg.blas import one_blas_thread
from mpc_agg.crypto import derive_key
from mpc_agg.errors import EncodingError
from mpc_agg.prg import expand as prg_expand
from mpc_agg.randomness import RandomSource

#: Projection bound in units of B: an honest ⟨z, x⟩ exceeds αB w.p. ≤ 2e^(−α²) ≈ 2^−50.9.
ALPHA = 6
#: Target soundness of the wrap-around check, in bits, before the factor K (challenge_candidates).
SECURITY_BITS = 40
#: Most gadget calls per wire (M): the prover's extrapolation costs O(M·d).
MAX_CALLS = 64
#: Coordinates per chunk of the ternary projection matrix (one AES stream per chunk).
WRAP_CHUNK = 1 << 14

IntVector = NDArray[np.int64]


def _ternary_table() -> NDArray[np.float32]:
    """Byte ↦ its four entries z = b0·(1 − 2·b1), low bit pairs first (float32: exact)."""
    table = np.zeros((256, 4), dtype=np.float32)
    for byte in range(256):
        for k in range(4):
            pair = (byte >> (2 * k)) & 3
            table[byte, k] = (pair & 1) * (1 - 2 * (pair >> 1))
    table.flags.writeable = False
    return table


_TERNARY = _ternary_table()


class NormBoundError(EncodingError):
    """The bound B cannot be checked soundly for this vector length, or x exceeds it."""


class WrapRangeError(NormBoundError):
    """An honest input fell outside a projection's range (probability ≤ 2R·e^-36 ≈ 2^-45.6)."""


def challenge_candidates(peers: int, threshold: int) -> int:
    """K — how many challenges t colluders and the broker can choose between (SPEC §6.2).

    Nonces are committed before and revealed after what they test, so the only freedom is
    which reveals are missing when the phase closes: up to n − (2t + 1) of them (more and
    the round aborts). K = Σ_{k ≤ n−2t−1} C(n, k).
    """
    spare = max(0, peers - (2 * threshold + 1))
    return sum(math.comb(peers, k) for k in range(spare + 1))


def wrap_repetitions(peers: int, threshold: int) -> int:
    """R = ⌈40 + log₂ K⌉ ternary projections: each passes a bad x w.p. ≤ 1/2 (SPEC §6.4)."""
    return math.ceil(SECURITY_BITS + math.log2(challenge_candidates(peers, threshold)))


def _feasible(norm_bound: int, vector_length: int) -> bool:
    wrap_bits = (2 * ALPHA * norm_bound).bit_length()
    slack_bits = (norm_bound * norm_bound).bit_length()
    return vector_length * (1 << (2 * wrap_bits)) + (1 << slack_bits) <= gf.P


def max_norm_bound(vector_length: int) -> int:
    """The largest B that :func:`check_norm_bound` accepts for ``vector_length``."""
    low, high = 0, 1 << 31
    while low < high:
        middle = (low + high + 1) // 2
        if _feasible(middle, vector_length):
            low = middle
        else:
            high = middle - 1
    return low


def check_norm_bound(norm_bound: int, vector_length: int) -> None:
    """Raise :class:`NormBoundError` unless B ≥ 1 and d·2^(2m') + 2^m ≤ p (SPEC §6.4).

    m' bits hold a shifted projection (≤ 2αB), m bits the slack (≤ B²). The condition
    makes the integer squared norm of any vector that passed the projections smaller
    than p, so checking it modulo p is checking it over the integers.
    """
    if norm_bound < 1:
        raise NormBoundError(f"the norm bound must be a positive integer, got {norm_bound}")
    if not _feasible(norm_bound, vector_length):
        raise NormBoundError(
            f"norm bound B={norm_bound} is too large to check over GF(2^61 − 1) for "
            f"d={vector_length}: the largest is {max_norm_bound(vector_length)} "
            "(lower max_norm or frac_bits)"
        )


@dataclass(frozen=True, slots=True)
class NormProofShape:
    """Sizes and layout of the statement, the proof and the verifier (SPEC §2.1, §6.4)."""

    vector_length: int
    norm_bound: int
    repetitions: int
    calls: int
    wires: int
    bit_calls: int
    bit_wires: int
    slack_bits: int
    wrap_bits: int
    points: int = 1

    @classmethod
    def for_round(
        cls,
        *,
        vector_length: int,
        norm_bound: int,
        threshold: int,
        peers: int | None = None,
    ) -> NormProofShape:
        """The shape every peer derives from (d, B, t, n); n defaults to 2t + 1."""
        check_norm_bound(norm_bound, vector_length)
        n = 2 * threshold + 1 if peers is None else peers
        calls = min(MAX_CALLS, math.isqrt(vector_length - 1) + 1)
        wires = -(-vector_length // calls)
        repetitions = wrap_repetitions(n, threshold)
        slack_bits = (norm_bound * norm_bound).bit_length()
        wrap_bits = (2 * ALPHA * norm_bound).bit_length()
        bits = slack_bits + repetitions * wrap_bits
        bit_calls = math.isqrt(bits - 1) + 1
        # k points, each with its own random seed per wire (zero knowledge): P has degree
        # 2·(max(M, M_b) + k − 1), so each identity fails at a random point w.p. ≤ that / p
        target = SECURITY_BITS + math.log2(challenge_candidates(n, threshold))
        points = 1
        while points * (math.log2(gf.P) - math.log2(_degree(calls, bit_calls, points))) < target:
            points += 1
        return cls(
            points=points,
            vector_length=vector_length,
            norm_bound=norm_bound,
            repetitions=repetitions,
            calls=calls,
            wires=wires,
            bit_calls=bit_calls,
            bit_wires=-(-bits // bit_calls),
            slack_bits=slack_bits,
            wrap_bits=wrap_bits,
        )

    @property
    def nodes(self) -> int:
        """Interpolation nodes of an x wire: k seeds, then M data values."""
        return self.points + self.calls

    @property
    def bit_nodes(self) -> int:
        """Interpolation nodes of a bit wire: k seeds, then M_b bits."""
        return self.points + self.bit_calls

    @property
    def input_length(self) -> int:
        """Shared input vector: x ‖ one output-check mask coordinate (SPEC §6.1)."""
        return self.vector_length + 1

    @property
    def bits(self) -> int:
        """Slack bits and the bits of every shifted projection."""
        return self.slack_bits + self.repetitions * self.wrap_bits

    @property
    def proof_length(self) -> int:
        """Bits ‖ x seeds ‖ P_x ‖ bit seeds ‖ P_b ‖ pad.

        With N = M + k and N_b = M_b + k nodes: k × L x seeds, P_x at 0..2(N−1), k × L_b
        bit seeds, P_b at 0..2(N_b−1) (× L_b). The last element is a uniformly random pad
        π: the query publishes μ + π, which puts the input's mask coordinate μ under the
        same consistency check as x.
        """
        return (
            1
            + self.bits
            + self.points * self.wires
            + 2 * self.nodes
            - 1
            + self.points * self.bit_wires
            + (2 * self.bit_nodes - 1) * self.bit_wires
        )

    @property
    def verifier_length(self) -> int:
        """For each query point: U(r) (L) ‖ P_x(r) ‖ U_b(r) (L_b) ‖ P_b(r) (L_b); then Z ‖ μ + π."""
        return self.points * self.point_length + 2

    @property
    def point_length(self) -> int:
        """The verifier values of one query point."""
        return self.wires + 2 * self.bit_wires + 1

    def _slices(self) -> tuple[slice, slice, slice, slice, slice]:
        bits = self.bits
        seeds = bits + self.points * self.wires
        px = seeds + 2 * self.nodes - 1
        bit_seeds = px + self.points * self.bit_wires
        return (
            slice(0, bits),
            slice(bits, seeds),
            slice(seeds, px),
            slice(px, bit_seeds),
            slice(bit_seeds, self.proof_length - 1),
        )

    @property
    def _extrapolation(self) -> NDArray[np.uint64]:
        return _extrapolation_matrix(self.nodes)

    @property
    def _bit_extrapolation(self) -> NDArray[np.uint64]:
        return _extrapolation_matrix(self.bit_nodes)


def _degree(calls: int, bit_calls: int, points: int) -> int:
    """Degree of the gadget polynomials P_x, P_b with ``points`` seeds per wire."""
    return 2 * (max(calls, bit_calls) + points - 1)


@functools.lru_cache(maxsize=16)
def _extrapolation_matrix(nodes: int) -> NDArray[np.uint64]:
    """Nodes 0..N−1 → values at N..2N−2 (read-only, shared)."""
    matrix = gf.extrapolation_matrix(nodes, nodes - 1)
    matrix.flags.writeable = False
    return matrix


# --------------------------------------------------------------------------- challenges


@dataclass(frozen=True, slots=True)
class WrapChallenge:
    """The R ternary projections z_s ∈ {−1, 0, 1}^d, P(0) = 1/2, P(±1) = 1/4 (SPEC §6.4).

    Chunk q of WRAP_CHUNK coordinates comes from AES-256-CTR under
    KDF(seed, "mpc-agg/robust/wrap/v1" ‖ u64(q)): two bits per entry (b0, b1) give
    z = b0·(1 − 2·b1).
    """

    seed: bytes = field(repr=False)
    repetitions: int
    vector_length: int

    def chunks(self) -> Iterator[tuple[int, NDArray[np.float32]]]:
        """(start, Z) with Z the R × c block of projections for coordinates start..start+c."""
        for index, start in enumerate(range(0, self.vector_length, WRAP_CHUNK)):
            width = min(WRAP_CHUNK, self.vector_length - start)
            key = derive_key(self.seed, info=b"mpc-agg/robust/wrap/v1" + index.to_bytes(8, "big"))
            entries = self.repetitions * width
            raw = prg_expand(key, -(-entries // 32)).view(np.uint8)[: -(-entries // 4)]
            block = np.take(_TERNARY, raw, axis=0).reshape(-1)[:entries]
            yield start, block.reshape(self.repetitions, width)

    @one_blas_thread
    def projections(self, x: IntVector) -> list[int]:
        """⟨z_s, x⟩ for every s, exact.

        Float32 products: |x| < 2^31 is cut into 8-bit limbs (sign kept in the value), so a
        chunk sum stays below 2^(8 + 14) < 2^24, the float32 mantissa.
        """
        totals = [0] * self.repetitions
        magnitude = np.abs(x)
        sign = np.sign(x).astype(np.float32)
        limbs = np.empty((x.shape[0], 4), dtype=np.float32)
        for k in range(4):
            np.multiply(sign, (magnitude >> (8 * k)) & 0xFF, out=limbs[:, k], casting="unsafe")
        for start, block in self.chunks():
            part = np.rint(block @ limbs[start : start + block.shape[1]]).astype(np.int64)
            for k in range(4):
                for s, value in enumerate(part[:, k].tolist()):
                    totals[s] += value << (8 * k)
        return totals

    @one_blas_thread
    def combined(self, weights: NDArray[np.uint64]) -> NDArray[np.uint64]:
        """Σ_s η_s·z_s mod p (one d-vector: every holder's query needs only its inner product).

        Float32 products with 16-bit limbs of η, in groups of at most 128 repetitions: a
        group's sum of ≤ 128 terms < 2^16 stays below 2^23, exact in float32.
        """
        limbs = np.vstack(
            [
                ((weights >> np.uint64(16 * k)) & np.uint64(0xFFFF)).astype(np.float32)
                for k in range(4)
            ]
        )
        out = np.empty(self.vector_length, dtype=np.uint64)
        for start, block in self.chunks():
            value = np.zeros(block.shape[1], dtype=np.uint64)
            for first in range(0, self.repetitions, 128):
                rows = slice(first, first + 128)
                parts = np.rint(limbs[:, rows] @ block[rows]).astype(np.int64)
                for k in range(4):
                    value = gf.add(value, gf.shift(gf.reduce_signed(parts[k]), 16 * k))
            out[start : start + block.shape[1]] = value
        return out


@dataclass(frozen=True, slots=True)
class QueryChallenge:
    """The verifier's randomness, fixed after the proof was committed (SPEC §6.5).

    Every point r avoids every interpolation node (0..2·(max(M, M_b) + k − 1)); the points
    are distinct, and taken in order from the seed's draws only while the Lagrange weights
    of the k seed nodes at them stay linearly independent, for the x wires and for the bit
    wires, so the opened wire values are uniformly random; the weights batch every linear
    relation into one value.
    """

    points: tuple[int, ...]
    norm_weight: int
    wrap_weights: NDArray[np.uint64] = field(repr=False)
    bit_weights: NDArray[np.uint64] = field(repr=False)

    @classmethod
    def from_seed(cls, seed: bytes, shape: NormProofShape) -> QueryChallenge:
        """Expand a 32-byte public seed (SPEC §6.5)."""
        key = derive_key(seed, info=b"mpc-agg/robust/query/v1")
        count = 2 + shape.repetitions + shape.bit_calls * shape.bit_wires
        values = gf.expand(key, count + 64 * shape.points)
        nodes = _degree(shape.calls, shape.bit_calls, shape.points)
        chosen: list[int] = []
        for value in dict.fromkeys(int(v) for v in values[count:] if int(v) > nodes):
            if len(chosen) == shape.points:
                break
            if _independent(shape, [*chosen, value]):
                chosen.append(value)
        if len(chosen) < shape.points:  # 64 draws per point in < 2^13 values: never
            raise AssertionError("no admissible query points")
        return cls(
            points=tuple(chosen),
            norm_weight=int(values[0]),
            wrap_weights=values[2 : 2 + shape.repetitions],
            bit_weights=values[2 + shape.repetitions : count].reshape(
                shape.bit_calls, shape.bit_wires
            ),
        )

    @property
    def point(self) -> int:
        """The first query point."""
        return self.points[0]


def _independent(shape: NormProofShape, points: list[int]) -> bool:
    """The seed nodes' Lagrange weights at ``points`` have full row rank, x and bit wires."""
    k = shape.points
    for nodes in (shape.nodes, shape.bit_nodes):
        rows = [[int(w) for w in gf.lagrange_consecutive(nodes, r)[:k]] for r in points]
        if _rank(rows) < len(rows):
            return False
    return True


def _rank(rows: list[list[int]]) -> int:
    """Rank over GF(p) of a small matrix (Gaussian elimination on Python integers)."""
    p = gf.P
    matrix = [[value % p for value in row] for row in rows]
    rank = 0
    for column in range(len(matrix[0]) if matrix else 0):
        pivot = next((i for i in range(rank, len(matrix)) if matrix[i][column]), None)
        if pivot is None:
            continue
        matrix[rank], matrix[pivot] = matrix[pivot], matrix[rank]
        inverse = pow(matrix[rank][column], p - 2, p)
        for i in range(len(matrix)):
            if i != rank and matrix[i][column]:
                factor = matrix[i][column] * inverse % p
                matrix[i] = [
                    (a - factor * b) % p for a, b in zip(matrix[i], matrix[rank], strict=True)
                ]
        rank += 1
    return rank


# --------------------------------------------------------------------------- prover


def _bits_of(values: list[int], width: int) -> NDArray[np.uint64]:
    array = np.array(values, dtype=np.uint64)[:, None]
    return ((array >> np.arange(width, dtype=np.uint64)) & np.uint64(1)).reshape(-1)


def _wire_matrix(
    seeds: NDArray[np.uint64], data: NDArray[np.uint64], calls: int
) -> NDArray[np.uint64]:
    """Rows: nodes 0..k−1 (the k × L seeds), nodes k..k+calls−1 (data, zero-padded)."""
    k, wires = seeds.shape
    matrix = np.zeros((k + calls, wires), dtype=np.uint64)
    matrix[:k] = seeds
    flat = matrix[k:].reshape(-1)
    flat[: data.shape[0]] = data
    return matrix


def _evaluations(
    matrix: NDArray[np.uint64], extrapolation: NDArray[np.uint64]
) -> NDArray[np.uint64]:
    return np.vstack([matrix, gf.matmul(extrapolation, matrix)])


@one_blas_thread
def _gadget_values(
    shape: NormProofShape, seeds: NDArray[np.uint64], x: IntVector
) -> NDArray[np.uint64]:
    """P_x at the nodes 0..2(N−1): Σ_l U_l(T)² (SPEC §6.4), using that x is small.

    Seed nodes 0..k−1: Σ seeds². Data nodes k..N−1: row sums of x² in int64 (≤ ‖x‖² ≤ B²
    < p). Extrapolated nodes: E·[seeds; X] = E₀·seeds + E₁·X, the second as three float64
    products of E's 21-bit limbs with the signed integers X (exact while M·2^21·B < 2^53),
    then squared mod p.
    """
    calls, wires, k, nodes = shape.calls, shape.wires, shape.points, shape.nodes
    flat = np.zeros(calls * wires, dtype=np.int64)
    flat[: x.shape[0]] = x
    data = flat.reshape(calls, wires)
    values = np.empty(2 * nodes - 1, dtype=np.uint64)
    values[:k] = gf.sum_rows(gf.square(seeds), axis=1)
    values[k:nodes] = np.einsum("ml,ml->m", data, data).astype(np.uint64)
    extrapolation = shape._extrapolation
    if calls * (1 << 21) * shape.norm_bound < 1 << 53:
        # in blocks of wires, so that the dozen passes of field arithmetic over each block
        # stay in cache (one pass over the whole M × L matrix each: twice the time)
        limbs = gf._limbs(extrapolation[:, k:])
        first = extrapolation[:, :k]
        squares = np.zeros(nodes - 1, dtype=np.uint64)
        for start in range(0, wires, _GADGET_COLUMNS):
            stop = min(start + _GADGET_COLUMNS, wires)
            floats = data[:, start:stop].astype(np.float64)
            extended = gf.matmul(first, seeds[:, start:stop])
            for j in range(3):
                part = np.rint(limbs[j] @ floats).astype(np.int64)
                extended = gf.add(extended, gf.shift(gf.reduce_signed(part), 21 * j))
            squares = gf.add(squares, gf.sum_rows(gf.square(extended), axis=1))
        values[nodes:] = squares
    else:  # very short vectors with a large B: the generic exact product
        wires_matrix = _wire_matrix(seeds, gf.from_signed(x), calls)
        extended = gf.matmul(extrapolation, wires_matrix)
        values[nodes:] = gf.sum_rows(gf.square(extended), axis=1)
    return values


#: Wires per block in :func:`_gadget_values` (M × 1024 words: a few hundred KB).
_GADGET_COLUMNS = 1 << 10


def squared_norm(x: IntVector) -> int:
    """‖x‖² exactly: callers first check |x_k| ≤ B, and d·B² < p < 2^63 (SPEC §6.4)."""
    return int(np.dot(x, x)) if x.size else 0


def prove(
    shape: NormProofShape, x: IntVector, wrap: WrapChallenge, randomness: RandomSource
) -> NDArray[np.uint64]:
    """SPEC §6.3 — the proof vector for an honest x with ‖x‖ ≤ B.

    Raises :class:`NormBoundError` if ‖x‖ > B (the caller's input is invalid: nothing
    would make it pass) and :class:`WrapRangeError` if a projection leaves its range
    (an honest input; probability ≤ 2R·e^-36 ≈ 2^-45.6).
    """
    bound = shape.norm_bound
    if x.shape != (shape.vector_length,):
        raise NormBoundError(f"x must have shape ({shape.vector_length},), got {x.shape}")
    if x.size and (int(x.max()) > bound or int(x.min()) < -bound):
        raise NormBoundError(f"a coordinate exceeds the norm bound B={bound}")
    slack = bound * bound - squared_norm(x)
    if slack < 0:
        raise NormBoundError(f"the update's L2 norm on the grid exceeds B={bound}")
    shifted = [value + ALPHA * bound for value in wrap.projections(x)]
    if any(not 0 <= w < 1 << shape.wrap_bits for w in shifted):
        raise WrapRangeError("a random projection of the update left its range (p ≤ 2^-45)")
    bits = np.concatenate([_bits_of([slack], shape.slack_bits), _bits_of(shifted, shape.wrap_bits)])
    k = shape.points
    seeds = gf.random_vector(randomness, k * shape.wires).reshape(k, shape.wires)
    bit_seeds = gf.random_vector(randomness, k * shape.bit_wires).reshape(k, shape.bit_wires)
    pad = gf.random_vector(randomness, 1)
    return _proof(shape, x, bits, seeds, bit_seeds, pad)


def _proof(
    shape: NormProofShape,
    x: IntVector,
    bits: NDArray[np.uint64],
    seeds: NDArray[np.uint64],
    bit_seeds: NDArray[np.uint64],
    pad: NDArray[np.uint64],
) -> NDArray[np.uint64]:
    """The proof vector from its random parts (k × L seeds, k × L_b bit seeds, the pad)."""
    px = _gadget_values(shape, seeds, x)
    bit_wires = _evaluations(
        _wire_matrix(bit_seeds, bits, shape.bit_calls), shape._bit_extrapolation
    )
    pb = gf.sub(gf.square(bit_wires), bit_wires)
    return np.concatenate([bits, seeds.reshape(-1), px, bit_seeds.reshape(-1), pb.reshape(-1), pad])


# --------------------------------------------------------------------------- verifier


def query(
    shape: NormProofShape,
    input_share: NDArray[np.uint64],
    proof_share: NDArray[np.uint64],
    challenge: QueryChallenge,
    wrap_combined: NDArray[np.uint64],
) -> NDArray[np.uint64]:
    """SPEC §6.5 — the verifier vector: an affine function of (input, proof) shares.

    Applied to a holder's shares it yields that holder's share of the verifier; applied
    to the secret vectors it yields the verifier itself. (A holder answering several
    dealers prepares one :class:`Verifier` instead.)
    """
    return Verifier(shape, challenge, wrap_combined).query(input_share, proof_share)


_BLOCK = 1 << 11  # limb products < 2^42: 2^11 of them sum exactly in a float64


class Verifier:
    """SPEC §6.5 — one holder's queries in one round: weights and limbs prepared once.

    The x part of a query — the wire values U(r) = Σ_m λ_m(r)·x[m, ·] and ⟨Σ η_s z_s, x⟩ —
    costs one limb split of the share and three float64 products of each kind; the
    Lagrange weights and the limbs of Σ η_s z_s are shared by every dealer's query.
    """

    def __init__(
        self,
        shape: NormProofShape,
        challenge: QueryChallenge,
        wrap_combined: NDArray[np.uint64],
    ) -> None:
        self.shape = shape
        self.challenge = challenge
        calls, wires = shape.calls, shape.wires
        self._padded = -(-calls * wires // _BLOCK) * _BLOCK
        points, k = challenge.points, shape.points
        # one row per query point
        self._lam_x = np.vstack([gf.lagrange_consecutive(shape.nodes, r) for r in points])
        self._lam_data = gf._limbs(self._lam_x[:, k:])  # 3 × points × M
        self._lam_seeds = np.ascontiguousarray(self._lam_x[:, :k])  # points × k
        self._lam_px = np.vstack([gf.lagrange_consecutive(2 * shape.nodes - 1, r) for r in points])
        self._lam_b = np.vstack([gf.lagrange_consecutive(shape.bit_nodes, r) for r in points])
        self._lam_pb = np.vstack(
            [gf.lagrange_consecutive(2 * shape.bit_nodes - 1, r) for r in points]
        )
        combined = np.zeros(self._padded, dtype=np.uint64)
        combined[: shape.vector_length] = wrap_combined
        self._z = gf._limbs(combined).reshape(3, -1, _BLOCK)
        self._x_limbs = np.zeros((3, self._padded), dtype=np.float64)  # reused per query

    def query(
        self, input_share: NDArray[np.uint64], proof_share: NDArray[np.uint64]
    ) -> NDArray[np.uint64]:
        """The verifier share of one dealer's (input, proof) shares (or of the secrets)."""
        shape = self.shape
        bits_slice, seeds_slice, px_slice, bit_seeds_slice, pb_slice = shape._slices()
        x = input_share[: shape.vector_length]
        bits = proof_share[bits_slice]
        px = proof_share[px_slice]
        pb = proof_share[pb_slice].reshape(2 * shape.bit_nodes - 1, shape.bit_wires)
        u, dot = self._x_functionals(x)  # points × L
        seeds = proof_share[seeds_slice].reshape(shape.points, shape.wires)
        u = gf.add(u, gf.matmul(self._lam_seeds, seeds))
        px_r = gf.matmul(self._lam_px, px)
        bit_seeds = proof_share[bit_seeds_slice].reshape(shape.points, shape.bit_wires)
        bit_wires = _wire_matrix(bit_seeds, bits, shape.bit_calls)
        ub = gf.matmul(self._lam_b, bit_wires)
        pb_r = gf.matmul(self._lam_pb, pb)
        parts = []
        for k in range(shape.points):
            parts += [u[k], px_r[k : k + 1], ub[k], pb_r[k]]
        z = _batched_relations(shape, bits, px, pb, self.challenge, dot)
        masked = gf.add(input_share[shape.vector_length :], proof_share[-1:])  # μ + π
        return np.concatenate([*parts, np.array([z], dtype=np.uint64), masked])

    @one_blas_thread
    def _x_functionals(self, x: NDArray[np.uint64]) -> tuple[NDArray[np.uint64], int]:
        """(Σ_{m=k..N′−1} λ_m(r)·x[m−k, ·] for every point r, ⟨Σ η_s z_s, x⟩), one limb split.

        The limbs of x are written into a buffer kept for every query (its padding stays
        zero); per limb j of x, one float64 product with the stacked limbs of the weights
        and one ``einsum`` with the stacked limbs of Σ η_s z_s give the three limb pairs
        (i, j) that add to the sums i + j.
        """
        shape = self.shape
        limbs = self._x_limbs
        gf._limbs_into(x, limbs[:, : shape.vector_length])
        matrix = limbs[:, : shape.calls * shape.wires].reshape(3, shape.calls, shape.wires)
        blocks = limbs.reshape(3, -1, _BLOCK)
        u_parts = np.zeros((5, shape.points, shape.wires), dtype=np.uint64)
        dot_parts = np.zeros((5, blocks.shape[1]), dtype=np.uint64)
        lam = self._lam_data.reshape(3 * shape.points, shape.calls)
        for j in range(3):
            products = (lam @ matrix[j]).astype(np.uint64)
            u_parts[j : j + 3] += products.reshape(3, shape.points, shape.wires)
            dot_parts[j : j + 3] += np.einsum("ikb,kb->ik", self._z, blocks[j]).astype(np.uint64)
        # each part < 3·2^53 (three products of < 2^11 limb pairs < 2^42): _combine's bound
        dot = int(gf.sum_rows(gf._combine(dot_parts)))
        return gf._combine(u_parts), dot


def _powers_of_two(width: int) -> NDArray[np.uint64]:
    return np.array([pow(2, k, gf.P) for k in range(width)], dtype=np.uint64)


def _batched_relations(
    shape: NormProofShape,
    bits: NDArray[np.uint64],
    px: NDArray[np.uint64],
    pb: NDArray[np.uint64],
    challenge: QueryChallenge,
    wrap_dot: int,
) -> int:
    """The batched linear relations (SPEC §6.5), zero for a valid (x, proof).

    η₀·(Σ_{m=k..N′−1} P_x(m) + slack − B²) + Σ β·P_b(data nodes) + Σ_s η_s·(w_s − αB)
    − ⟨Σ_s η_s z_s, x⟩.
    """
    bound = shape.norm_bound
    p = gf.P
    slack = gf.inner(bits[: shape.slack_bits], _powers_of_two(shape.slack_bits))
    k = shape.points  # the data nodes follow the k seed nodes
    norm = int(gf.sum_rows(px[k : shape.nodes]))
    total = challenge.norm_weight * (norm + slack - bound * bound) % p
    total += gf.inner(pb[k : shape.bit_nodes].reshape(-1), challenge.bit_weights.reshape(-1))
    wrap_bits = bits[shape.slack_bits :].reshape(shape.repetitions, shape.wrap_bits)
    shifted = gf.matmul(wrap_bits, _powers_of_two(shape.wrap_bits))
    total += gf.inner(challenge.wrap_weights, gf.sub(shifted, ALPHA * bound))
    total -= wrap_dot
    return total % p


def decide(shape: NormProofShape, verifier: NDArray[np.uint64]) -> str | None:
    """SPEC §6.7 step 3 — ``None`` if the reconstructed verifier accepts, else the failed check."""
    wires, bit_wires, step = shape.wires, shape.bit_wires, shape.point_length
    for k in range(shape.points):
        base = k * step
        u = verifier[base : base + wires]
        px_r = int(verifier[base + wires])
        ub = verifier[base + wires + 1 : base + wires + 1 + bit_wires]
        pb_r = verifier[base + wires + 1 + bit_wires : base + step]
        if px_r != int(gf.sum_rows(gf.square(u))):
            return "the norm proof's polynomial identity fails at the challenge point"
        if not np.array_equal(pb_r, gf.sub(gf.square(ub), ub)):
            return "the range proof's polynomial identity fails at the challenge point"
    z = int(verifier[-2])  # the last value, μ + π, is uniform and decides nothing
    if z != 0:
        return "the norm, range and bit relations do not hold"
    return None
