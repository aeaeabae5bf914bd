"""Integer noise samplers for distributed DP, driven by a cryptographic randomness source.

DESIGN §7. Everything here draws its randomness from a
:class:`~mpc_agg.randomness.RandomSource` (AES-CTR or ``os.urandom``), never from numpy's
RNG, and is vectorised: a round's noise vector of 10^6 entries is a few dozen numpy
passes over shrinking arrays, not a Python loop over coordinates.

* :func:`discrete_gaussian` is **exact**: Canonne, Kamath and Steinke (NeurIPS 2020),
  Algorithms 1–3 — Bernoulli(exp(−γ)) by the alternating-series trick, a discrete
  Laplace proposal and a Bernoulli(exp(−·)) acceptance — run in integer arithmetic only.
  The variance parameter is an integer ``σ² = t·m`` (the Laplace scale ``t`` divides it),
  so every acceptance exponent ``(|y| − m)² / (2σ²)`` is a ratio of integers below 2^63;
  the (astronomically rare) candidates whose numerator would not fit are finished in
  Python integers, so nothing is approximated.
* :func:`skellam` is the difference of two Poisson variates drawn by Hörmann's PTRS
  transformed rejection (1993) with a log-density evaluated stably (Loader's deviance
  form, Stirling's remainder), from CSPRNG uniforms. It is **not exact**: its acceptance
  test is a float64 comparison with a relative error near 1e-15. The noise is an integer
  drawn independently of the data and added to integers, so the floating-point *support*
  leak that Mironov (CCS 2012) found in textbook Laplace samplers cannot happen here; what
  remains is a distribution error of that order, which a user who needs exactness avoids
  by choosing the discrete Gaussian (the default).

Floating point appears only in :func:`skellam`; the discrete Gaussian path has none.
"""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import NDArray

from mpc_agg.randomness import RandomSource, random_below

IntVector = NDArray[np.int64]
BoolVector = NDArray[np.bool_]
_U64 = np.dtype("<u8")

#: Largest σ² the exact discrete Gaussian sampler takes: 2σ²·K stays below 2^63 for
#: every K the Bernoulli(exp(−γ)) loop can reach in practice (K ≤ 2^11).
MAX_DISCRETE_GAUSSIAN_VARIANCE = 1 << 50
#: Largest Poisson mean of the Skellam sampler (float64 keeps k − λ exact below 2^52).
MAX_SKELLAM_MU = float(1 << 46)
#: |y − m| at or above this is finished with Python integers (its square needs > 62 bits).
_BIG = 1 << 31
#: The Bernoulli(exp(−γ)) loop stops by K = 2^11 with probability 1 − 1/2047!.
_MAX_K = 1 << 11


def _words(source: RandomSource, count: int) -> NDArray[np.uint64]:
    """``count`` uniform 64-bit words from the source."""
    return np.frombuffer(source.random_bytes(8 * count), dtype=_U64).astype(np.uint64)


def uniform_below(source: RandomSource, bounds: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """One uniform integer in ``[0, b)`` for each ``b`` of ``bounds`` (each in ``[1, 2^63]``).

    Rejection sampling on 64-bit words: a word is kept when it is below the largest
    multiple of ``b`` that fits in 2^64, so ``word % b`` has no modulo bias.
    """
    bounds = np.asarray(bounds, dtype=np.uint64)
    if bounds.size and (int(bounds.min()) < 1 or int(bounds.max()) > 1 << 63):
        raise ValueError("bounds must be in [1, 2^63]")
    out = np.empty(bounds.shape, dtype=np.uint64)
    pending = np.arange(bounds.size)
    while pending.size:
        words = _words(source, pending.size)
        bound = bounds[pending]
        # 2^64 mod b, computed without 2^64: (2^64 − b) mod b.
        excess = (np.uint64(0) - bound) % bound
        ok = (excess == 0) | (words < np.uint64(0) - excess)
        out[pending[ok]] = words[ok] % bound[ok]
        pending = pending[~ok]
    return out


#: Relative margin around a/b in float64 (its error is below 3·2^-53): outside it the
#: float comparison is exact; inside it, Python integers decide.
_MARGIN = 2.0**-48


def _bernoulli_fraction(
    source: RandomSource, numerator: NDArray[np.uint64], denominator: NDArray[np.uint64]
) -> BoolVector:
    """Exact Bernoulli(numerator / denominator) for each pair (numerator ≤ denominator).

    Compares a uniform U ∈ [0, 1) with p = a/b, reading U's first 53 bits k: U lies in
    [k, k+1)·2^-53, so the answer is 1 when (k+1)·2^-53 < p and 0 when k·2^-53 ≥ p. The
    float test below decides only where it is certain (a margin of 2^-48 around p, far
    wider than float64's error on a/b); an interval that straddles p — probability about
    2^-48 — is decided exactly in Python integers with fresh bits of U.
    """
    k = (_words(source, numerator.size) >> np.uint64(11)).astype(np.float64)
    p = numerator.astype(np.float64) / denominator.astype(np.float64)
    one = (k + 1.0) * 2.0**-53 <= p * (1.0 - _MARGIN)
    zero = k * 2.0**-53 >= p * (1.0 + _MARGIN)
    result = one
    for i in np.flatnonzero(~(one | zero)):
        a, b, top = int(numerator[i]), int(denominator[i]), int(k[i])
        # U < a/b  ⇔  (top + V)·b < a·2^53 with V uniform in [0, 1): V·b < a·2^53 − top·b.
        rest = (a << 53) - top * b
        result[i] = rest > 0 and (rest >= b or random_below(source, b) < rest)
    return result


#: Bits of each e^{-w} expansion: a comparison still tied after them (probability
#: 2^-1024) raises instead of guessing.
_EXPANSION_BITS = 1024
#: Largest w with its own expansion; e^{-w} for larger w is a product of these.
_EXPANSION_MAX = 40


def _exp_minus_expansion(w: int) -> int:
    """⌊e^{-w}·2^1024⌋ exactly, from the alternating series in integer fixed point.

    Each term ``v^n/n!`` is computed at ``1024 + guard`` bits with a floor error of at
    most one unit per term, so the sum is within (terms + 2) units; the floor at 1024
    bits is returned only when that band does not straddle an integer (else more guard
    bits are used).
    """
    if w == 0:  # e^0 = 1 is not below 2^1024; never used (w = 0 needs no draw)
        return (1 << _EXPANSION_BITS) - 1
    guard = 128
    while guard <= 1 << 14:
        scale = _EXPANSION_BITS + guard
        term, total, n = 1 << scale, 0, 0
        while term:
            total += -term if n % 2 else term
            n += 1
            term = term * w // n
        low, high = (total - n - 2) >> guard, (total + n + 2) >> guard
        if low == high:
            return low
        guard *= 2
    raise ArithmeticError(f"cannot bound e^-{w} at {_EXPANSION_BITS} bits")  # never for w ≥ 1


#: The 64-bit digits of e^{-w}, most significant first, for w = 1 … _EXPANSION_MAX.
_EXP_DIGITS: tuple[tuple[int, ...], ...] = tuple(
    tuple(
        (_exp_minus_expansion(w) >> (_EXPANSION_BITS - 64 * (j + 1))) & ((1 << 64) - 1)
        for j in range(_EXPANSION_BITS // 64)
    )
    for w in range(_EXPANSION_MAX + 1)
)
_EXP_LEADING = np.array([digits[0] for digits in _EXP_DIGITS], dtype=np.uint64)


def bernoulli_exp_integer(source: RandomSource, w: NDArray[np.uint64]) -> BoolVector:
    """Exact Bernoulli(e^{-w}) for integer ``w ≥ 0``: one 64-bit word per 40 units of w.

    U < e^{-w} is read off U's binary digits against e^{-w}'s (precomputed exactly):
    the first word decides unless it equals e^{-w}'s first digit (probability 2^-64),
    and then the next words decide. e^{-w} for w > 40 is e^{-40}·e^{-(w−40)}: independent
    trials, all of which must succeed.
    """
    w = np.asarray(w, dtype=np.uint64)
    result = np.ones(w.shape, dtype=bool)
    index = np.flatnonzero(w > 0)
    rest = w[index]
    while index.size:
        step = np.minimum(rest, np.uint64(_EXPANSION_MAX))
        word = _words(source, index.size)
        leading = _EXP_LEADING[step.astype(np.intp)]
        success = word < leading
        for i in np.flatnonzero(word == leading):  # tied on 64 bits: compare further digits
            success[i] = _below_expansion_tail(source, int(step[i]))
        result[index[~success]] = False
        rest = rest[success] - step[success]
        index = index[success]
        more = rest > 0
        index, rest = index[more], rest[more]
    return result


def _below_expansion_tail(source: RandomSource, w: int) -> bool:
    """Given U's first 64 bits equal e^{-w}'s, compare the following digits."""
    for digit in _EXP_DIGITS[w][1:]:
        word = int(_words(source, 1)[0])
        if word != digit:
            return word < digit
    raise RuntimeError("U matched e^{-w} on 1024 bits; the randomness source is broken")


def bernoulli_exp(
    source: RandomSource, numerator: NDArray[np.uint64], denominator: int | NDArray[np.uint64]
) -> BoolVector:
    """Exact Bernoulli(exp(−γ)) for each ``γ = numerator / denominator ≥ 0`` (CKS Alg. 1).

    ``⌊γ⌋`` independent Bernoulli(exp(−1)) trials must all succeed — drawn at once as
    Bernoulli(e^{-⌊γ⌋}) by :func:`bernoulli_exp_integer` — then one
    Bernoulli(exp(−(γ − ⌊γ⌋))). For γ ∈ [0, 1]: draw A_K ~ Bernoulli(γ/K) for K = 1, 2, …
    until one fails; the answer is whether that K is odd. ``denominator · 2^11`` must be
    below 2^63.
    """
    numerator = np.asarray(numerator, dtype=np.uint64)
    denom = np.broadcast_to(np.asarray(denominator, dtype=np.uint64), numerator.shape)
    if denom.size and int(denom.max()) * _MAX_K >= 1 << 63:
        raise ValueError("denominator too large for the exact Bernoulli(exp) sampler")
    whole = numerator // denom
    # ⌊γ⌋ trials of Bernoulli(e^{-1}) all succeed with probability e^{-⌊γ⌋}: one trial.
    result = bernoulli_exp_integer(source, whole)
    live = np.flatnonzero(result)
    if live.size:
        frac = numerator[live] - whole[live] * denom[live]
        result[live] = _bernoulli_exp_fraction(source, frac, denom[live])
    return result


def _bernoulli_exp_fraction(
    source: RandomSource, numerator: NDArray[np.uint64], denominator: NDArray[np.uint64]
) -> BoolVector:
    """Bernoulli(exp(−γ)) for γ = numerator/denominator ∈ [0, 1] (CKS Alg. 1, inner loop).

    The loop runs over compacted arrays of the still-running trials (they halve or better
    each pass), never over the full index set.
    """
    result = np.zeros(numerator.shape, dtype=bool)
    index = np.arange(numerator.size)
    num, den = numerator, denominator
    k = np.ones(num.shape, dtype=np.uint64)
    while index.size:
        if int(k.max()) >= _MAX_K:  # probability below 1/2047!: never in practice
            raise RuntimeError("Bernoulli(exp) loop ran away; the randomness source is broken")
        success = _bernoulli_fraction(source, num, den * k)
        stopped = ~success
        result[index[stopped]] = (k[stopped] & np.uint64(1)).astype(bool)
        index, num, den, k = index[success], num[success], den[success], k[success] + np.uint64(1)
    return result


def _bernoulli_exp_scalar(source: RandomSource, numerator: int, denominator: int) -> bool:
    """:func:`bernoulli_exp` for one γ in Python integers (any size)."""
    whole, frac = divmod(numerator, denominator)
    while whole > 0:  # e^{-whole} in steps the vectorised sampler takes
        step = min(whole, 1 << 62)
        if not bernoulli_exp_integer(source, np.array([step], dtype=np.uint64))[0]:
            return False
        whole -= step
    k = 1
    while True:
        if random_below(source, denominator * k) >= frac:
            return k % 2 == 1
        k += 1


def discrete_laplace(source: RandomSource, scale: int, size: int) -> IntVector:
    """Exact discrete Laplace samples, P(y) ∝ exp(−|y|/scale) (CKS Alg. 2 with s = 1)."""
    if not 1 <= scale < 1 << 40:
        raise ValueError(f"scale must be in [1, 2^40), got {scale}")
    out = np.empty(size, dtype=np.int64)
    pending = np.arange(size)
    t = np.uint64(scale)
    while pending.size:
        count = pending.size
        u = uniform_below(source, np.full(count, t, dtype=np.uint64))
        keep = bernoulli_exp(source, u, scale)
        u = u[keep]
        # V: how many Bernoulli(exp(−1)) successes before the first failure.
        v = np.zeros(u.size, dtype=np.uint64)
        going = np.arange(u.size)
        ones = np.ones(going.size, dtype=np.uint64)
        while going.size:
            ok = bernoulli_exp_integer(source, ones[: going.size])
            v[going[ok]] += np.uint64(1)
            going = going[ok]
        x = (u + t * v).astype(np.int64)
        negative = (np.frombuffer(source.random_bytes(u.size), np.uint8) & 1).astype(bool)
        valid = ~(negative & (x == 0))  # −0 would double the mass at zero
        accepted = np.flatnonzero(keep)[valid]  # positions within ``pending``
        out[pending[accepted]] = np.where(negative, -x, x)[valid]
        done = np.zeros(count, dtype=bool)
        done[accepted] = True
        pending = pending[~done]
    return out


def discrete_gaussian_parameters(variance: float) -> tuple[int, int]:
    """``(t, m)`` with ``σ² = t·m ≥ variance``, ``t = ⌊√variance⌋ + 1`` (the CKS proposal scale).

    Rounding σ² up to a multiple of ``t`` adds at most ``t ≈ σ`` to it (a relative
    increase of about 1/σ) and makes every acceptance exponent a ratio of integers.
    """
    if not (math.isfinite(variance) and variance > 0):
        raise ValueError(f"variance must be finite and > 0, got {variance}")
    t = math.isqrt(math.floor(variance)) + 1
    m = max(1, math.ceil(variance / t))
    while t * m < variance:  # float rounding in the division
        m += 1
    if t * m > MAX_DISCRETE_GAUSSIAN_VARIANCE:
        raise ValueError(
            f"discrete Gaussian variance {variance:.4g} exceeds the exact sampler's limit "
            f"2^50; use fewer fractional bits"
        )
    return t, m


def discrete_gaussian(source: RandomSource, sigma_squared: int, size: int, *, t: int) -> IntVector:
    """Exact samples of N_Z(0, σ²): P(y) ∝ exp(−y²/(2σ²)) over the integers (CKS Alg. 3).

    ``sigma_squared`` must be a multiple of ``t`` (see :func:`discrete_gaussian_parameters`):
    a discrete Laplace(t) candidate ``y`` is kept with probability
    ``exp(−(|y| − σ²/t)² / (2σ²))``.
    """
    if t < 1 or sigma_squared < 1 or sigma_squared % t:
        raise ValueError(f"sigma_squared {sigma_squared} must be a positive multiple of t={t}")
    if sigma_squared > MAX_DISCRETE_GAUSSIAN_VARIANCE:
        raise ValueError(f"sigma_squared {sigma_squared} exceeds 2^50")
    m = sigma_squared // t
    den = 2 * sigma_squared
    out = np.empty(size, dtype=np.int64)
    pending = np.arange(size)
    while pending.size:
        y = discrete_laplace(source, t, pending.size)
        offset = np.abs(y) - m
        big = np.abs(offset) >= _BIG
        accept = np.zeros(pending.size, dtype=bool)
        small = np.flatnonzero(~big)
        if small.size:
            num = (offset[small] * offset[small]).astype(np.uint64)
            accept[small] = bernoulli_exp(source, num, den)
        for i in np.flatnonzero(big):  # exact, in Python integers
            accept[i] = _bernoulli_exp_scalar(source, int(offset[i]) ** 2, den)
        out[pending[accept]] = y[accept]
        pending = pending[~accept]
    return out


# --------------------------------------------------------------------------- Skellam

_HALF_LOG_2PI = 0.5 * math.log(2.0 * math.pi)


def _stirling_remainder(k: NDArray[np.float64]) -> NDArray[np.float64]:
    """``log k! − (k log k − k + ½ log(2πk))`` for k ≥ 1 (series for k ≥ 16, exact below)."""
    out = np.empty_like(k)
    large = k >= 16
    kl = k[large]
    inv2 = 1.0 / (kl * kl)
    out[large] = (1.0 / 12.0 - inv2 * (1.0 / 360.0 - inv2 * (1.0 / 1260.0 - inv2 / 1680.0))) / kl
    small = k[~large]
    out[~large] = [
        math.lgamma(v + 1.0) - (v * math.log(v) - v + 0.5 * math.log(2.0 * math.pi * v))
        for v in small.tolist()
    ]
    return out


def _poisson_log_pmf(k: NDArray[np.float64], lam: float) -> NDArray[np.float64]:
    """``log P(K = k)`` for K ~ Poisson(λ), stable for large λ (Loader 2000).

    ``k log λ − λ − log k! = −λ·[(1+x)·log1p(x) − x] − ½ log(2πk) − stirlerr(k)`` with
    ``x = (k − λ)/λ``: the bracket is computed without the cancellation of two ~k·log k
    terms.
    """
    out = np.full(k.shape, -math.inf)
    zero = k == 0
    out[zero] = -lam
    pos = k > 0
    kp = k[pos]
    x = (kp - lam) / lam
    deviance = lam * ((1.0 + x) * np.log1p(x) - x)
    out[pos] = -deviance - 0.5 * np.log(kp) - _HALF_LOG_2PI - _stirling_remainder(kp)
    return out


def _uniforms(source: RandomSource, count: int) -> NDArray[np.float64]:
    """Uniform floats in (0, 1) with 53 random bits (never exactly 0)."""
    return ((_words(source, count) >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53


def poisson(source: RandomSource, lam: float, size: int) -> IntVector:
    """Poisson(λ) samples: inversion for λ < 10, PTRS (Hörmann 1993) above."""
    if not (math.isfinite(lam) and 0 < lam <= MAX_SKELLAM_MU):
        raise ValueError(f"Poisson mean must be in (0, 2^46], got {lam}")
    if lam < 10:
        u = _uniforms(source, size)
        out = np.zeros(size, dtype=np.int64)
        pmf = math.exp(-lam)
        cdf = np.full(size, pmf)
        k = 0
        active = np.flatnonzero(u > cdf)
        while active.size:
            k += 1
            pmf *= lam / k
            if pmf == 0.0:  # u within 1e-16 of 1 exhausted float's tail: draw those again
                out[active] = poisson(source, lam, active.size)
                break
            out[active] = k
            cdf[active] += pmf
            active = active[u[active] > cdf[active]]
        return out
    slam = math.sqrt(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    log_inv_alpha = math.log(1.1239 + 1.1328 / (b - 3.4))
    vr = 0.9277 - 3.6224 / (b - 2.0)
    out = np.empty(size, dtype=np.int64)
    pending = np.arange(size)
    while pending.size:
        u = _uniforms(source, pending.size) - 0.5
        v = _uniforms(source, pending.size)
        us = 0.5 - np.abs(u)
        candidate = np.floor((2.0 * a / us + b) * u + lam + 0.43)
        accept = (us >= 0.07) & (v <= vr)
        test = ~accept & (candidate >= 0) & ~((us < 0.013) & (v > us))
        idx = np.flatnonzero(test)
        if idx.size:
            lhs = np.log(v[idx]) + log_inv_alpha - np.log(a / (us[idx] * us[idx]) + b)
            accept[idx] = lhs <= _poisson_log_pmf(candidate[idx], lam)
        out[pending[accept]] = candidate[accept].astype(np.int64)
        pending = pending[~accept]
    return out


def skellam(source: RandomSource, mu: float, size: int) -> IntVector:
    """Symmetric Skellam Sk(μ, μ) = Poisson(μ) − Poisson(μ): mean 0, variance 2μ."""
    return poisson(source, mu, size) - poisson(source, mu, size)
