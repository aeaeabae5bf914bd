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

from mpc_agg.blas import one_blas_thread
from mpc_agg.errors import MpcAggError
from mpc_agg.prg import expand as prg_expand
from mpc_agg.randomness import RandomSource

P = (1 << 61) - 1
_P = np.uint64(P)
_MASK32 = np.uint64(0xFFFFFFFF)
_MASK29 = np.uint64((1 << 29) - 1)

FieldVector = NDArray[np.uint64]
#: Limbs of 21 bits: products of two limbs are < 2^42, so 2^11 of them sum exactly in a
#: float64 (53-bit mantissa); :func:`matmul` sums at most that many in one float.
_LIMB_BITS = 21
_LIMB_MASK = np.uint64((1 << _LIMB_BITS) - 1)


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
    return x - _P * (x >= _P)  # no wrap-around even on numpy scalars


def add(a: FieldVector, b: FieldVector | int) -> FieldVector:
    """A + b mod p."""
    other = np.uint64(b % P) if isinstance(b, int) else b
    s = a + other  # both < 2^61: no overflow
    return s - _P * (s >= _P)


def sub(a: FieldVector, b: FieldVector | int) -> FieldVector:
    """A − b mod p."""
    other = np.uint64(b % P) if isinstance(b, int) else b
    s = a + (_P - other)  # < 2^62: no overflow
    return s - _P * (s >= _P)


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
    """``length`` uniform field elements: :func:`expand` under 32 fresh bytes of ``source``.

    An AES-256-CTR stream keyed by a fresh 256-bit draw is a CSPRNG (as for DP noise,
    ``dp.py``), and one 32-byte draw from the operating system replaces 8·length bytes:
    10^6 elements cost ≈ 3 ms instead of ≈ 30 ms of ``getrandom``.
    """
    return expand(source.random_bytes(32), length)


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


# --------------------------------------------------------------------------- vectors, fast paths


def from_signed(values: NDArray[np.int64]) -> FieldVector:
    """Embed signed integers with |v| < p/2 in the field (−v ↦ p − v)."""
    array = np.asarray(values, dtype=np.int64)
    limit = P // 2  # min/max, not abs: np.abs(INT64_MIN) is negative
    if array.size and (int(array.max()) >= limit or int(array.min()) <= -limit):
        raise FieldError("a signed value does not fit in (−p/2, p/2)")
    return np.where(array < 0, array + np.int64(P), array).astype(np.uint64)


def to_signed(vector: FieldVector) -> NDArray[np.int64]:
    """The centred lift: field elements ↦ integers in (−p/2, p/2]."""
    signed = check(vector).astype(np.int64)  # < 2^61: exact
    # int64 on both sides: mixing uint64 and int64 in np.where would go through float64
    return np.where(signed > P // 2, signed - np.int64(P), signed)


def shift(vector: FieldVector, bits: int) -> FieldVector:
    """``vector · 2^bits`` mod p for reduced entries (a rotation of 61-bit words)."""
    bits %= 61
    if bits == 0:
        return vector.copy()
    low = (vector & np.uint64((1 << (61 - bits)) - 1)) << np.uint64(bits)
    total = low + (vector >> np.uint64(61 - bits))
    return total - _P * (total >= _P)


def reduce_signed(values: NDArray[np.int64]) -> FieldVector:
    """Any int64 values ↦ their residues mod p."""
    return np.mod(values, np.int64(P)).astype(np.uint64)


def expand(key: bytes, length: int) -> FieldVector:
    """``length`` uniform field elements from AES-256-CTR(``key``) (SPEC of each protocol).

    Each 8-byte little-endian word of the keystream is shifted right by 3 (61 bits) and
    rejected if ≥ p; the first ``length`` accepted words are returned, so the result is
    exactly uniform and depends only on ``key`` and ``length``'s prefix.
    """
    words = length + 8
    while True:
        candidates = prg_expand(key, words) >> np.uint64(3)
        accepted = candidates[candidates < _P]
        if accepted.shape[0] >= length:
            return np.ascontiguousarray(accepted[:length])
        words *= 2  # probability ≈ 2^-61 per word: practically never taken


def _limbs(matrix: NDArray[np.uint64]) -> NDArray[np.float64]:
    """The three 21-bit limbs of reduced field elements as float64, on a new first axis."""
    out = np.empty((3, *matrix.shape), dtype=np.float64)
    _limbs_into(matrix, out)
    return out


def _split_shift(part: FieldVector, bits: int) -> FieldVector:
    """``part · 2^bits`` folded below 2^61 + 2^(bits + 1), for 0 ≤ part < 2^62 (no reduction).

    The low 61 − bits bits move up by ``bits``; the rest stands for a multiple of 2^61 ≡ 1.
    """
    low = (part & np.uint64((1 << (61 - bits)) - 1)) << np.uint64(bits)
    low += part >> np.uint64(61 - bits)
    return low


def _combine(parts: NDArray[np.uint64]) -> FieldVector:
    """Σ_s parts[s]·2^(21s) mod p for the five limb-product sums, each < 2^62.

    ``parts`` has the five sums on its first axis, of any shape after it (``matmul``'s
    blocks, the norm proof's query products).

    2^63 ≡ 4 and 2^84 ≡ 2^23 (mod p): every term is folded below 2^61 + 2^45, the five
    add up below 2^64, and one reduction finishes.
    """
    total = parts[0] & _P
    total += parts[0] >> np.uint64(61)
    total += _split_shift(parts[1], 21)
    total += _split_shift(parts[2], 42)
    total += _split_shift(parts[3], 2)
    total += _split_shift(parts[4], 23)
    return _reduce(total)


#: Inner dimensions up to this take the output-heavy path of :func:`matmul` (one block).
_STACKED_INNER = 1 << 9
#: Blocks of the inner dimension on the input-heavy path: each limb product sums < 2^11
#: terms < 2^42, exact in float64.
_MATMUL_BLOCK = 1 << 11
#: Input-heavy blocks accumulated before folding: each adds < 3·2^53 to a limb sum, and
#: :func:`_combine` takes sums < 2^62.
_FOLD_EVERY = 128


def _stacked_limbs(matrix: NDArray[np.uint64]) -> NDArray[np.float64]:
    """The 5K × 3m float64 matrix A with A·[B₀; B₁; B₂] = the five limb-product sums.

    Row block s, column block l holds the limb s − l of ``matrix`` (K × m) when
    0 ≤ s − l ≤ 2, else zero: S_s = Σ_{i+l=s} A_i·B_l.
    """
    rows, inner = matrix.shape
    limbs = _limbs(matrix)
    stacked = np.zeros((5 * rows, 3 * inner), dtype=np.float64)
    for s in range(5):
        for limb in range(3):
            i = s - limb
            if 0 <= i <= 2:
                stacked[s * rows : (s + 1) * rows, limb * inner : (limb + 1) * inner] = limbs[i]
    return stacked


@one_blas_thread
def matmul(a: NDArray[np.uint64], b: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """Exact matrix product mod p of reduced matrices (2-D, or 1-D as a row/column).

    Both factors are cut into three 21-bit limbs, whose products (< 2^42) are summed
    exactly in float64 by BLAS, then as integers, and folded mod p. Two layouts, one BLAS
    call per block either way:

    - inner dimension m ≤ 2^9 (a few long vectors combined, e.g. Shamir shares): the left
      limbs stacked so that one product gives the five limb-product sums
      (:func:`_stacked_limbs`; each < 3·2^9·2^42 < 2^53), the fewest passes over a large
      output;
    - longer inner dimensions (e.g. a projection of d-long shares), in blocks of 2^11:
      the three left limbs on top of each other times the three right limbs side by side,
      all nine limb products in one call, no zero padding over a large input.

    No Python loop over coordinates.
    """
    left = np.atleast_2d(a)
    right = b.reshape(-1, 1) if b.ndim == 1 else b
    if left.shape[1] != right.shape[0]:
        raise FieldError(f"matmul shapes {left.shape} and {right.shape} do not match")
    rows, inner, cols = left.shape[0], left.shape[1], right.shape[1]
    if inner <= _STACKED_INNER:  # one block: its five limb sums are the whole product
        right_limbs = np.empty((3, inner, cols), dtype=np.float64)
        _limbs_into(right, right_limbs)
        stacked_sums = _stacked_limbs(left) @ right_limbs.reshape(3 * inner, cols)
        return _shaped(_combine(stacked_sums.astype(np.uint64).reshape(5, rows, cols)), a, b)
    sums = np.zeros((5, rows, cols), dtype=np.uint64)
    result: FieldVector = np.zeros((rows, cols), dtype=np.uint64)
    size = min(_MATMUL_BLOCK, inner)
    left_buffer = np.empty((3, rows, size), dtype=np.float64)
    right_buffer = np.empty((3, size, cols), dtype=np.float64)
    for block, start in enumerate(range(0, inner, _MATMUL_BLOCK)):
        width = min(_MATMUL_BLOCK, inner - start)
        left_limbs = left_buffer[:, :, :width]
        right_limbs = right_buffer[:, :width]
        _limbs_into(left[:, start : start + width], left_limbs)
        _limbs_into(right[start : start + width], right_limbs)
        stacked = left_limbs.reshape(3 * rows, width)  # the left limbs on top of each other
        for j in range(3):  # one product per right limb: a matrix-vector product when N = 1
            limb = right_limbs[j, :, 0] if cols == 1 else right_limbs[j]
            products = (stacked @ limb).astype(np.uint64).reshape(3, rows, cols)
            sums[j : j + 3] += products  # left limb i with right limb j adds to sum i + j
        if (block + 1) % _FOLD_EVERY == 0:
            result = add(result, _combine(sums))
            sums[:] = 0
    return _shaped(add(result, _combine(sums)), a, b)


def _shaped(result: FieldVector, a: NDArray[np.uint64], b: NDArray[np.uint64]) -> FieldVector:
    """``result`` with the dimensions a 1-D factor of :func:`matmul` does not have."""
    if b.ndim == 1:
        result = result[:, 0]
    if a.ndim == 1:
        result = result[0]
    return result


def _limbs_into(matrix: NDArray[np.uint64], out: NDArray[np.float64]) -> None:
    """``out[k]`` = the k-th 21-bit limb of ``matrix`` as float64, for k = 0, 1, 2."""
    for k in range(3):
        out[k] = (matrix >> np.uint64(_LIMB_BITS * k)) & _LIMB_MASK


def sum_rows(matrix: NDArray[np.uint64], axis: int = 0) -> FieldVector:
    """Σ along ``axis`` mod p, exact (32-bit halves summed separately)."""
    high = np.sum(matrix >> np.uint64(32), axis=axis, dtype=np.uint64)
    low = np.sum(matrix & _MASK32, axis=axis, dtype=np.uint64)
    if matrix.shape[axis] >= 1 << 31:
        raise FieldError("sum_rows supports fewer than 2^31 terms")
    return add(shift(_reduce(np.asarray(high)), 32), _reduce(np.asarray(low)))


def square(vector: FieldVector) -> FieldVector:
    """Elementwise x² mod p."""
    return mul(vector, vector)


# --------------------------------------------------------------------------- consecutive nodes


def _batch_inverse(values: Sequence[int]) -> list[int]:
    """Inverses of non-zero residues with one exponentiation (Montgomery's trick)."""
    prefix = [1]
    for v in values:
        prefix.append(prefix[-1] * v % P)
    running = inv(prefix[-1])
    out = [0] * len(values)
    for k in range(len(values) - 1, -1, -1):
        out[k] = running * prefix[k] % P
        running = running * values[k] % P
    return out


def _factorials(count: int) -> tuple[list[int], list[int]]:
    fact = [1] * (count + 1)
    for k in range(1, count + 1):
        fact[k] = fact[k - 1] * k % P
    inv_last = inv(fact[count])
    inv_fact = [1] * (count + 1)
    inv_fact[count] = inv_last
    for k in range(count, 0, -1):
        inv_fact[k - 1] = inv_fact[k] * k % P
    return fact, inv_fact


def lagrange_consecutive(count: int, at: int) -> FieldVector:
    """λ_0..λ_{count−1} with f(at) = Σ λ_m f(m) for every f of degree < count (nodes 0..count−1)."""
    at %= P
    if at < count:
        weights = np.zeros(count, dtype=np.uint64)
        weights[at] = 1
        return weights
    _, inv_fact = _factorials(count - 1)
    numerator = 1
    for j in range(count):
        numerator = numerator * (at - j) % P
    inv_diff = _batch_inverse([(at - m) % P for m in range(count)])
    top = count - 1
    out = []
    for m in range(count):
        sign = -1 if (top - m) % 2 else 1
        out.append(numerator * inv_diff[m] % P * inv_fact[m] % P * inv_fact[top - m] * sign % P)
    return np.array(out, dtype=np.uint64)


def extrapolation_matrix(count: int, targets: int) -> NDArray[np.uint64]:
    """E with E @ [f(0), …, f(count−1)] = [f(count), …, f(count+targets−1)] for deg f < count."""
    top = count - 1
    fact, inv_fact = _factorials(count + targets)
    inv_small = _batch_inverse(list(range(1, count + targets)))  # 1/(t − m) for t − m ≥ 1
    rows = []
    for k in range(targets):
        t = count + k
        numerator = fact[t] * inv_fact[t - count] % P  # Π_{j<count} (t − j)
        row = []
        for m in range(count):
            sign = -1 if (top - m) % 2 else 1
            weight = numerator * inv_small[t - m - 1] % P * inv_fact[m] % P
            row.append(weight * inv_fact[top - m] * sign % P)
        rows.append(row)
    return np.array(rows, dtype=np.uint64).reshape(targets, count)


#: Columns per block in :func:`lincomb` (bounds the float64 limb copies to a few MB).
_LINCOMB_COLUMNS = 1 << 14


def lincomb(
    coefficients: NDArray[np.uint64], vectors: NDArray[np.uint64] | Sequence[FieldVector]
) -> NDArray[np.uint64]:
    """``coefficients @ vectors`` mod p for a small K × m matrix and m long vectors.

    ``vectors`` is an m × L matrix or m vectors of length L; these are never stacked whole:
    each column block is (a few hundred KB, in cache), so memory stays O(m · block) beyond
    the output and no m × L copy is made.
    """
    rows = _rows(vectors)
    if rows:
        length = rows[0].shape[0]
    else:  # no vectors: the zero combination, as long as a 0 × L matrix says
        length = vectors.shape[1] if isinstance(vectors, np.ndarray) and vectors.ndim == 2 else 0
        return np.zeros((coefficients.shape[0], length), dtype=np.uint64)
    out = np.empty((coefficients.shape[0], length), dtype=np.uint64)
    for start in range(0, length, _LINCOMB_COLUMNS):
        stop = start + _LINCOMB_COLUMNS
        out[:, start:stop] = matmul(coefficients, np.vstack([r[start:stop] for r in rows]))
    return out


def project(vectors: Sequence[FieldVector], weights: FieldVector) -> FieldVector:
    """``[⟨v, weights⟩ mod p for v in vectors]``, without stacking the vectors whole.

    :func:`matmul` of column blocks of the stacked vectors by the matching block of
    ``weights``, the partial results added mod p.
    """
    rows = _rows(vectors)
    if any(r.shape != weights.shape for r in rows):
        raise FieldError("every projected vector must have the weights' length")
    total: FieldVector = np.zeros(len(rows), dtype=np.uint64)
    for start in range(0, weights.shape[0] if rows else 0, _PROJECT_COLUMNS):
        stop = start + _PROJECT_COLUMNS
        block = np.vstack([r[start:stop] for r in rows])
        total = add(total, matmul(block, weights[start:stop]))
    return total


#: Columns per block in :func:`project` (K rows of 512 KiB: a few MB stacked at a time).
_PROJECT_COLUMNS = 1 << 16


def _rows(vectors: NDArray[np.uint64] | Sequence[FieldVector]) -> list[FieldVector]:
    rows = list(vectors)
    if any(r.ndim != 1 or r.shape != rows[0].shape for r in rows):
        raise FieldError("vectors must be 1-D and of one length")
    return rows
