"""Arithmetic in GF(p), p = 2^61 − 1, on uint64 numpy vectors (robust SPEC, field section).

Elements are uint64 in [0, p). Products are exact: each factor is split into 32-bit
halves, the four partial products fit in 64 bits, and the 122-bit result is reduced with
2^61 ≡ 1 (mod p) — no floating point, no Python loop over coordinates. Scalars for
polynomial work (Lagrange coefficients, Reed–Solomon decoding over a handful of points)
are Python ints.

:func:`rs_decode` decodes Reed–Solomon codewords of vectors: ``n`` holders each hold a
vector of evaluations of ``d`` degree-``t`` polynomials at their x. The error locator is
found by Berlekamp–Welch on one random linear combination of the coordinates, so a holder
that altered any coordinate is caught (except with probability ≤ d/p over the
combination's coefficients, which come from the caller's randomness); the vectors are
then interpolated from the remaining holders and every holder's vector is checked
against the result.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from numpy.typing import NDArray

from mpc_agg.errors import MpcAggError
from mpc_agg.randomness import RandomSource

P = (1 << 61) - 1
_P = np.uint64(P)
_MASK32 = np.uint64(0xFFFFFFFF)
_MASK29 = np.uint64((1 << 29) - 1)

FieldVector = NDArray[np.uint64]


class FieldError(MpcAggError):
    """A value outside [0, p), or a linear-algebra failure (singular system)."""


class DecodingError(MpcAggError):
    """Too many wrong holders to decode (more than ⌊(n − t − 1)/2⌋)."""


def check(vector: NDArray[np.uint64]) -> FieldVector:
    """``vector`` as uint64 field elements; :class:`FieldError` if any entry is ≥ p."""
    array = np.asarray(vector)
    if array.dtype != np.uint64:
        raise FieldError(f"field vectors are uint64, got {array.dtype}")
    if array.size and int(array.max()) >= P:
        raise FieldError("a field vector holds an entry ≥ p = 2^61 − 1")
    return array


def _reduce(x: FieldVector) -> FieldVector:
    """X < 2^64 → x mod p (two folds of 2^61 ≡ 1, then one conditional subtraction)."""
    x = (x & _P) + (x >> np.uint64(61))
    x = (x & _P) + (x >> np.uint64(61))
    return np.where(x >= _P, x - _P, x)


def add(a: FieldVector, b: FieldVector | int) -> FieldVector:
    """A + b mod p."""
    other = np.uint64(b % P) if isinstance(b, int) else b
    s = a + other  # both < 2^61: no overflow
    return np.where(s >= _P, s - _P, s)


def sub(a: FieldVector, b: FieldVector | int) -> FieldVector:
    """A − b mod p."""
    other = np.uint64(b % P) if isinstance(b, int) else b
    return np.where(a >= other, a - other, a + (_P - other))


def neg(a: FieldVector) -> FieldVector:
    """−a mod p."""
    return np.where(a == 0, a, _P - a)


def mul(a: FieldVector, b: FieldVector | int) -> FieldVector:
    """A · b mod p with the exact 122-bit product (vectorised, no overflow)."""
    other = np.uint64(b % P) if isinstance(b, int) else b
    a_lo, a_hi = a & _MASK32, a >> np.uint64(32)
    b_lo, b_hi = other & _MASK32, other >> np.uint64(32)
    low = a_lo * b_lo  # < 2^64
    mid = a_hi * b_lo + a_lo * b_hi  # < 2^62
    high = a_hi * b_hi  # < 2^58
    # 2^64 ≡ 8; mid·2^32 = mid_hi·2^61 + mid_lo·2^32 ≡ mid_hi + mid_lo·2^32; low folded.
    total = (
        (high << np.uint64(3))
        + (mid >> np.uint64(29))
        + ((mid & _MASK29) << np.uint64(32))
        + (low >> np.uint64(61))
        + (low & _P)
    )
    return _reduce(total)


def inner(a: FieldVector, b: FieldVector) -> int:
    """Σ a_i · b_i mod p (products reduced before summing in chunks; exact)."""
    products = mul(a, b)
    # each < 2^61: 8 of them fit in 64 bits; sum in Python ints per chunk of 2^20 for safety
    total = 0
    for start in range(0, products.shape[0], 1 << 20):
        chunk = products[start : start + (1 << 20)]
        total += int(np.sum(chunk >> np.uint64(32), dtype=np.uint64)) << 32
        total += int(np.sum(chunk & _MASK32, dtype=np.uint64))
    return total % P


def random_vector(source: RandomSource, length: int) -> FieldVector:
    """``length`` uniform field elements from ``source`` (rejection of 61-bit values ≥ p)."""
    out = np.empty(length, dtype=np.uint64)
    filled = 0
    while filled < length:
        need = length - filled
        raw = np.frombuffer(source.random_bytes(8 * (need + 8)), dtype="<u8").astype(np.uint64)
        candidates = raw >> np.uint64(3)
        good = candidates[candidates < _P][:need]
        out[filled : filled + good.shape[0]] = good
        filled += good.shape[0]
    return out


# --------------------------------------------------------------------------- scalars


def inv(x: int) -> int:
    """x^-1 mod p; :class:`FieldError` for 0."""
    if x % P == 0:
        raise FieldError("0 has no inverse")
    return pow(x, P - 2, P)


def lagrange_at(xs: Sequence[int], at: int = 0) -> list[int]:
    """Coefficients λ_j with f(at) = Σ λ_j f(x_j) for every f of degree < len(xs)."""
    if len({x % P for x in xs}) != len(xs):
        raise FieldError("interpolation points must be distinct")
    coefficients = []
    for j, xj in enumerate(xs):
        num, den = 1, 1
        for m, xm in enumerate(xs):
            if m != j:
                num = num * (at - xm) % P
                den = den * (xj - xm) % P
        coefficients.append(num * inv(den) % P)
    return coefficients


def interpolate_at(points: Mapping[int, FieldVector], at: int = 0) -> FieldVector:
    """Evaluate every coordinate's polynomial through ``points`` at ``at`` (Σ λ_j v_j).

    The polynomials have degree < the number of points.
    """
    xs = list(points)
    result = np.zeros_like(points[xs[0]])
    for coefficient, x in zip(lagrange_at(xs, at), xs, strict=True):
        result = add(result, mul(points[x], coefficient))
    return result


def _solve(matrix: list[list[int]], rhs: list[int], unknowns: int) -> list[int] | None:
    """A solution of the linear system mod p (free variables 0), or ``None`` if none.

    Gauss–Jordan elimination over all rows, so over- and under-determined systems work.
    """
    rows = [[v % P for v in row] + [value % P] for row, value in zip(matrix, rhs, strict=True)]
    pivots: list[int] = []
    r = 0
    for col in range(unknowns):
        pivot = next((i for i in range(r, len(rows)) if rows[i][col]), None)
        if pivot is None:
            continue
        rows[r], rows[pivot] = rows[pivot], rows[r]
        scale = inv(rows[r][col])
        rows[r] = [v * scale % P for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][col]:
                factor = rows[i][col]
                rows[i] = [(v - factor * w) % P for v, w in zip(rows[i], rows[r], strict=True)]
        pivots.append(col)
        r += 1
    if any(row[unknowns] for row in rows[r:]):
        return None  # inconsistent
    solution = [0] * unknowns
    for i, col in enumerate(pivots):
        solution[col] = rows[i][unknowns]
    return solution


def _poly_eval(coefficients: Sequence[int], x: int) -> int:
    result = 0
    for c in reversed(coefficients):
        result = (result * x + c) % P
    return result


def berlekamp_welch(points: Mapping[int, int], degree: int) -> tuple[list[int], set[int]]:
    """Decode one Reed–Solomon codeword (Berlekamp–Welch).

    Returns the degree-``degree`` polynomial (coefficients, lowest first) that agrees with
    all but at most e = ⌊(n − degree − 1)/2⌋ of ``points``, and the xs where it disagrees.
    Raises :class:`DecodingError` when no such polynomial exists.
    """
    xs = list(points)
    n = len(xs)
    errors = (n - degree - 1) // 2
    if errors < 0:
        raise DecodingError(f"{n} points cannot determine a degree-{degree} polynomial")
    # Q(x) = y·E(x) with deg Q ≤ degree + e and E monic of degree e: for any solution,
    # Q / E is the polynomial when at most e points are wrong.
    q_len = degree + errors + 1
    matrix, rhs = [], []
    for x in xs:
        y = points[x] % P
        powers = [pow(x, k, P) for k in range(q_len)]
        matrix.append(powers + [(-y * powers[k]) % P for k in range(errors)])
        rhs.append(y * pow(x, errors, P) % P)
    solution = _solve(matrix, rhs, q_len + errors)
    if solution is not None:
        quotient, remainder = _poly_divmod(solution[:q_len], [*solution[q_len:], 1])
        if not any(remainder):
            quotient = (quotient + [0] * (degree + 1))[: degree + 1]
            wrong = {x for x in xs if _poly_eval(quotient, x) != points[x] % P}
            if len(wrong) <= errors:
                return quotient, wrong
    raise DecodingError(
        f"more than {errors} of {n} holders are wrong: cannot decode degree {degree}"
    )


def _poly_divmod(num: Sequence[int], den: Sequence[int]) -> tuple[list[int], list[int]]:
    """Polynomial division mod p (coefficients lowest first; ``den`` monic)."""
    remainder = [c % P for c in num]
    degree = len(den) - 1
    if len(remainder) <= degree:
        return [0], remainder
    quotient = [0] * (len(remainder) - degree)
    for k in range(len(remainder) - 1, degree - 1, -1):
        coefficient = remainder[k]
        if coefficient:
            quotient[k - degree] = coefficient
            for j, d in enumerate(den):
                remainder[k - degree + j] = (remainder[k - degree + j] - coefficient * d) % P
    return quotient, remainder[:degree]


def rs_decode(
    shares: Mapping[int, FieldVector], degree: int, source: RandomSource, at: int = 0
) -> tuple[FieldVector, set[int]]:
    """Decode vectors of Reed–Solomon shares: the value at ``at`` and the wrong holders.

    ``shares[x]`` is holder x's vector. A random projection (coefficients from ``source``)
    locates the wrong holders with Berlekamp–Welch; the result is interpolated from
    ``degree + 1`` of the others and every remaining holder is checked coordinate-wise,
    so a wrong holder missed by the projection is still found (then decoding restarts
    without it). Raises :class:`DecodingError` when more than ⌊(n − degree − 1)/2⌋
    holders are wrong.
    """
    xs = list(shares)
    length = shares[xs[0]].shape[0]
    if any(v.shape != (length,) for v in shares.values()):
        raise FieldError("every holder's share vector must have the same length")
    coefficients = random_vector(source, length)
    projected = {x: inner(shares[x], coefficients) for x in xs}
    _, wrong = berlekamp_welch(projected, degree)
    good = [x for x in xs if x not in wrong]
    basis = {x: shares[x] for x in good[: degree + 1]}
    for x in good[degree + 1 :]:
        if not np.array_equal(interpolate_at(basis, x), shares[x]):
            wrong.add(x)  # the projection missed it (probability ≤ length / p)
    if len(wrong) > (len(xs) - degree - 1) // 2:
        raise DecodingError(f"{len(wrong)} of {len(xs)} holders are wrong")
    return interpolate_at(basis, at), wrong
