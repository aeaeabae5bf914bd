"""Noise samplers (mpc_agg/noise.py): distributions checked against theory at fixed seeds.

Each test draws from a seeded AES-CTR source, so the outcome is reproducible; the
thresholds (p > 10^-3 for chi-square, 5 standard errors for moments) would catch a
wrong distribution with millions of samples while a correct sampler passes them.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from mpc_agg import dp, noise
from mpc_agg.randomness import DeterministicRandomSource

MILLION = 1_000_000


def _source(seed: int) -> DeterministicRandomSource:
    return DeterministicRandomSource(f"noise-test-{seed}")


def _chi_square(samples: np.ndarray, pmf: dict[int, float], min_expected: float = 20.0) -> float:
    """p-value of a chi-square test; values whose expected count is small share one bin."""
    total = samples.size
    values, counts = np.unique(samples, return_counts=True)
    observed = dict(zip(values.tolist(), counts.tolist(), strict=True))
    bins_obs, bins_exp = [], []
    rest_obs, rest_exp = total, 1.0 * total
    for value, p in pmf.items():
        expected = p * total
        if expected >= min_expected:
            bins_obs.append(observed.get(value, 0))
            bins_exp.append(expected)
            rest_obs -= observed.get(value, 0)
            rest_exp -= expected
    bins_obs.append(rest_obs)
    bins_exp.append(max(rest_exp, 1e-9))
    return float(stats.chisquare(bins_obs, bins_exp).pvalue)


def _discrete_gaussian_pmf(sigma2: float, radius: int) -> dict[int, float]:
    ys = np.arange(-radius, radius + 1)
    weights = np.exp(-(ys.astype(np.float64) ** 2) / (2 * sigma2))
    weights /= weights.sum()
    return dict(zip(ys.tolist(), weights.tolist(), strict=True))


def test_uniform_below_is_unbiased_for_awkward_bounds() -> None:
    source = _source(1)
    for bound in (3, 7, 1000, (1 << 63) - 25):
        draws = noise.uniform_below(source, np.full(MILLION // 4, bound, dtype=np.uint64))
        assert int(draws.max()) < bound
        if bound <= 1000:
            p = _chi_square(draws.astype(np.int64), dict.fromkeys(range(bound), 1.0 / bound))
            assert p > 1e-3, (bound, p)
        else:  # the top bit is set with probability (b − 2^62)/b
            top = np.count_nonzero(draws >= np.uint64(1 << 62)) / draws.size
            expected = (bound - (1 << 62)) / bound
            assert abs(top - expected) < 5 * math.sqrt(expected * (1 - expected) / draws.size)


def test_uniform_below_rejects_bounds_outside_its_range() -> None:
    with pytest.raises(ValueError, match="bounds"):
        noise.uniform_below(_source(0), np.array([0], dtype=np.uint64))


@pytest.mark.parametrize(("numerator", "denominator"), [(0, 1), (3, 10), (1, 1), (5, 2), (7, 1)])
def test_bernoulli_exp_has_probability_exp_minus_gamma(numerator: int, denominator: int) -> None:
    n = MILLION
    draws = noise.bernoulli_exp(
        _source(numerator), np.full(n, numerator, dtype=np.uint64), denominator
    )
    p = math.exp(-numerator / denominator)
    assert abs(draws.mean() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_bernoulli_exp_in_python_integers_agrees() -> None:
    source = _source(5)
    # γ = 10^30 / (4·10^29) = 2.5: far beyond 64-bit numerators.
    draws = [noise._bernoulli_exp_scalar(source, 10**30, 4 * 10**29) for _ in range(40_000)]
    p = math.exp(-2.5)
    assert abs(np.mean(draws) - p) <= 5 * math.sqrt(p * (1 - p) / 40_000)


def test_discrete_laplace_matches_its_pmf() -> None:
    t = 3
    samples = noise.discrete_laplace(_source(6), t, MILLION)
    ys = np.arange(-80, 81)
    weights = np.exp(-np.abs(ys) / t)
    weights /= weights.sum()
    pmf = dict(zip(ys.tolist(), weights.tolist(), strict=True))
    assert _chi_square(samples, pmf) > 1e-3


@pytest.mark.parametrize(("sigma2", "t"), [(2, 2), (12, 4), (100, 10)])
def test_discrete_gaussian_matches_its_pmf(sigma2: int, t: int) -> None:
    samples = noise.discrete_gaussian(_source(sigma2), sigma2, 2 * MILLION, t=t)
    pmf = _discrete_gaussian_pmf(sigma2, radius=int(12 * math.sqrt(sigma2)) + 5)
    assert _chi_square(samples, pmf) > 1e-3
    # Exact moments of N_Z(0, σ²) from the pmf.
    ys = np.array(list(pmf))
    ps = np.array(list(pmf.values()))
    variance = float((ps * ys.astype(np.float64) ** 2).sum())
    n = samples.size
    assert abs(samples.mean()) < 5 * math.sqrt(variance / n)
    assert abs(samples.var() - variance) < 5 * variance * math.sqrt(2 / n)


def test_discrete_gaussian_with_a_large_variance_has_gaussian_moments_and_tails() -> None:
    t, m = noise.discrete_gaussian_parameters(1e10)
    sigma2 = t * m
    sigma = math.sqrt(sigma2)
    samples = noise.discrete_gaussian(_source(7), sigma2, 2 * MILLION, t=t)
    n = samples.size
    assert abs(samples.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(samples.var() / sigma2 - 1) < 5 * math.sqrt(2 / n)
    for k in (1.0, 2.0, 3.0, 4.0):  # two-sided tails P(|X| > kσ)
        expected = math.erfc(k / math.sqrt(2))
        observed = np.count_nonzero(np.abs(samples) > k * sigma) / n
        assert abs(observed - expected) < 5 * math.sqrt(expected * (1 - expected) / n) + 1e-6
    assert stats.kstest(samples / sigma, "norm").pvalue > 1e-3


def test_discrete_gaussian_python_integer_path_draws_the_same_law(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fallback for huge offsets (never reached at 2^31) is forced at 2: same pmf."""
    monkeypatch.setattr(noise, "_BIG", 2)
    samples = noise.discrete_gaussian(_source(8), 12, 100_000, t=4)
    assert _chi_square(samples, _discrete_gaussian_pmf(12, 60)) > 1e-3


def test_discrete_gaussian_parameters_round_the_variance_up_to_the_grid() -> None:
    for variance in (0.3, 2.0, 12.5, 1e6 + 0.5, 3.7e12):
        t, m = noise.discrete_gaussian_parameters(variance)
        assert t * m >= variance
        assert t * m - variance <= t
    with pytest.raises(ValueError, match="2\\^50"):
        noise.discrete_gaussian_parameters(2.0**51)
    with pytest.raises(ValueError, match="multiple"):
        noise.discrete_gaussian(_source(0), 13, 10, t=4)


@pytest.mark.parametrize("lam", [0.7, 4.0, 30.0, 1e9])
def test_poisson_matches_its_distribution(lam: float) -> None:
    samples = noise.poisson(_source(int(lam * 10)), lam, MILLION)
    n = samples.size
    assert abs(samples.mean() - lam) < 5 * math.sqrt(lam / n)
    assert abs(samples.var() / lam - 1) < 5 * math.sqrt(2 / n) + 1 / lam
    if lam < 100:
        ks = range(int(lam + 15 * math.sqrt(lam)) + 10)
        pmf = {k: float(stats.poisson.pmf(k, lam)) for k in ks}
        assert _chi_square(samples, pmf) > 1e-3


@pytest.mark.parametrize("mu", [3.0, 20.0, 5e7])
def test_skellam_matches_its_distribution(mu: float) -> None:
    samples = noise.skellam(_source(int(mu)), mu, MILLION)
    n = samples.size
    assert abs(samples.mean()) < 5 * math.sqrt(2 * mu / n)
    assert abs(samples.var() / (2 * mu) - 1) < 5 * math.sqrt(2 / n)
    if mu < 100:
        radius = int(12 * math.sqrt(2 * mu)) + 5
        pmf = {k: float(stats.skellam.pmf(k, mu, mu)) for k in range(-radius, radius + 1)}
        assert _chi_square(samples, pmf) > 1e-3


def test_samplers_are_reproducible_from_the_seed_and_differ_across_seeds() -> None:
    a = noise.discrete_gaussian(_source(9), 12, 1000, t=4)
    b = noise.discrete_gaussian(_source(9), 12, 1000, t=4)
    c = noise.discrete_gaussian(_source(10), 12, 1000, t=4)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("mechanism", list(dp.Mechanism))
def test_sum_of_site_noise_has_the_target_variance(mechanism: dp.Mechanism) -> None:
    """σ² with the minimum number of sites; n/k_min·σ² with all of them (DP.md §3.1)."""
    n_sites, k_min = 5, 3
    settings = dp.DpSettings(
        noise_multiplier=0.8, clip_norm=2**-12, delta=1e-5, mechanism=mechanism
    )
    plan = dp.plan_round(
        settings, vector_length=400_000, frac_bits=20, min_sites=k_min, federation="f", round_id=1
    )
    target = (settings.noise_multiplier * plan.l2_sensitivity) ** 2
    source = _source(11)
    shares = []
    for _ in range(n_sites):
        if plan.laplace_scale:
            shares.append(
                noise.discrete_gaussian(
                    source, plan.sigma_squared, plan.dimension, t=plan.laplace_scale
                )
            )
        else:
            shares.append(noise.skellam(source, plan.skellam_mu, plan.dimension))
    d = plan.dimension
    survivors = np.sum(shares[:k_min], axis=0)
    everyone = np.sum(shares, axis=0)
    tolerance = 5 * math.sqrt(2 / d) + 2 / math.sqrt(target)  # sampling + grid round-up
    assert abs(survivors.var() / target - 1) < tolerance
    assert abs(everyone.var() / (target * n_sites / k_min) - 1) < tolerance


@pytest.mark.parametrize("w", [1, 3, 40, 45, 83])
def test_bernoulli_exp_integer_has_probability_exp_minus_w(w: int) -> None:
    n = MILLION
    draws = noise.bernoulli_exp_integer(_source(100 + w), np.full(n, w, dtype=np.uint64))
    p = math.exp(-w)
    assert abs(draws.mean() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12


def test_exp_expansions_are_the_exact_binary_digits() -> None:
    """⌊e^{-w}·2^1024⌋ from the integer series agrees with a 1300-bit mpmath value."""
    import mpmath  # noqa: PLC0415 - only this test needs it (a dp-accounting dependency)

    mpmath.mp.prec = 1300
    for w in (1, 2, 7, 20, 40):
        exact = int(mpmath.floor(mpmath.exp(-w) * mpmath.mpf(2) ** 1024))
        assert noise._exp_minus_expansion(w) == exact
        digits = noise._EXP_DIGITS[w]
        assert sum(d << (1024 - 64 * (j + 1)) for j, d in enumerate(digits)) == exact


class _Scripted:
    """A RandomSource that returns given 64-bit words (little-endian), then zeros."""

    def __init__(self, words: list[int]) -> None:
        self.data = b"".join(w.to_bytes(8, "little") for w in words)

    def random_bytes(self, n: int) -> bytes:
        out, self.data = self.data[:n], self.data[n:]
        return out + bytes(n - len(out))


def test_a_tie_on_the_first_word_is_decided_by_the_next_digits() -> None:
    digits = noise._EXP_DIGITS[1]
    below = _Scripted([digits[0], digits[1] - 1])
    above = _Scripted([digits[0], digits[1] + 1])
    deeper = _Scripted([digits[0], digits[1], digits[2] - 1])
    one = np.ones(1, dtype=np.uint64)
    assert noise.bernoulli_exp_integer(below, one)[0]
    assert not noise.bernoulli_exp_integer(above, one)[0]
    assert noise.bernoulli_exp_integer(deeper, one)[0]


def test_bernoulli_fraction_exact_path_draws_the_same_law(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a huge margin most draws take the Python-integer path: still Bernoulli(a/b)."""
    monkeypatch.setattr(noise, "_MARGIN", 0.5)
    n = 40_000
    for a, b in ((3, 10), (1, 3), (7, 7), (0, 5), ((1 << 62) - 1, 1 << 62)):
        draws = noise._bernoulli_fraction(
            _source(a % 97), np.full(n, a, dtype=np.uint64), np.full(n, b, dtype=np.uint64)
        )
        p = a / b
        assert abs(draws.mean() - p) <= 5 * math.sqrt(p * (1 - p) / n) + 1e-12, (a, b)
