"""Review of mpc_agg/dp.py and mpc_agg/noise.py (mpc_agg/DP.md).

Written by an adversarial review. Its findings were fixed and are regression tests here;
the one ``xfail(strict=True)`` is a documented limitation (float32 sums); the others pin
down behaviour that was checked and found correct.
"""

from __future__ import annotations

import math
from fractions import Fraction

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.rdp import RdpAccountant
from scipy import stats
from scipy.special import logsumexp

from mpc_agg import dp, noise
from mpc_agg.errors import EncodingError
from mpc_agg.randomness import DeterministicRandomSource
from tests.dp_support import DELTA
from tests.dp_support import dp_settings as _settings


def _plan(settings: dp.DpSettings, d: int = 1000, k: int = 3, bits: int = 20) -> dp.DpRound:
    return dp.plan_round(
        settings, vector_length=d, frac_bits=bits, min_sites=k, federation="f", round_id=3
    )


# --------------------------------------------------------------------------- findings


def test_site_unit_with_poisson_sampling_is_refused() -> None:
    """Fixed: a site sitting out is public and uncharged, so site sampling amplifies nothing."""
    with pytest.raises(ValueError, match="needs unit = example"):
        _settings(sampling_probability=0.1)


def test_site_unit_poisson_sampling_would_under_report_if_sites_sat_out() -> None:
    """Why it is refused: the ledger of a site that took part in 1/10 of the rounds."""
    cost = _plan(_settings(sampling_probability=0.1, unit=dp.Unit.EXAMPLE), d=5000).cost
    rounds = 200
    truth = dp.PrivacyAccountant(delta=DELTA).epsilon([cost] * rounds)
    ledger = dp.PrivacyAccountant(delta=DELTA).epsilon([cost] * (rounds // 10))
    assert ledger < 0.5 * truth


@pytest.mark.xfail(
    strict=True,
    reason="documented limitation (clipped_gradient_sum, DP.md §6): a float32 model stores "
    "the clipped sum rounded to float32, which can move it by more than Δ₂ = c + √d; the sum "
    "is formed in float64 and the demo trains in float64",
)
def test_float32_sum_of_clipped_examples_stays_within_the_example_sensitivity() -> None:
    f, clip, d = 20, 1.0, 16
    ulp = 2.0**-17  # float32 spacing in [64, 128)
    others = np.full(d, 100.0, dtype=np.float32)  # e.g. 400 examples of (¼, …, ¼)
    # One more example g with ‖g‖ ≤ clip, each entry just past a half-ulp of the sum.
    grid = [Fraction(int(0.25 / ulp) - 1) + Fraction(33, 64)] * d
    i = 0
    while True:
        bigger = list(grid)
        bigger[i % d] += 1
        if sum(x * x for x in bigger) * Fraction(ulp) ** 2 > 1:
            break
        grid, i = bigger, i + 1
    g = np.array([float(x) * ulp for x in grid], dtype=np.float32)
    assert float(np.linalg.norm(g.astype(np.float64))) <= clip
    with_g = others + g  # the float32 sum clipped_gradient_sum would hold
    scale = 2.0**f
    moved = np.rint(with_g.astype(np.float64) * scale) - np.rint(others.astype(np.float64) * scale)
    bound = dp.example_sensitivity_bound(clip * scale, d)
    assert float(np.linalg.norm(moved)) <= bound


def test_a_variance_at_the_sampler_limit_is_planned_or_refused_as_encoding() -> None:
    """Fixed: plan_round tests the grid-rounded t·m against the sampler's limit."""
    settings = _settings(clip_norm=float(2**25 - 1), unit=dp.Unit.EXAMPLE, local=True)
    # frac_bits 1: Δ₂ = 2^26 − 1, too much noise; lowered to 0: Δ₂ = (2^25 − 1) + √1 = 2^25,
    # so the variance (z·Δ₂)² is exactly 2^50 = the limit.
    try:
        plan = dp.plan_round(
            settings, vector_length=1, frac_bits=1, min_sites=1, federation="f", round_id=1
        )
    except EncodingError:
        return
    assert plan.sigma_squared <= noise.MAX_DISCRETE_GAUSSIAN_VARIANCE


# --------------------------------------------------------------------------- checked: correct


def test_exact_sampler_at_sigma2_one_with_t_one_matches_the_pmf() -> None:
    """The smallest grid point (σ² = 1, t = 1: every offset is |y| − 1) is exact."""
    samples = noise.discrete_gaussian(DeterministicRandomSource("r1"), 1, 400_000, t=1)
    ys = np.arange(-8, 9)
    pmf = np.exp(-(ys.astype(np.float64) ** 2) / 2)
    pmf /= pmf.sum()
    counts = np.array([np.count_nonzero(samples == y) for y in ys])
    keep = pmf * samples.size >= 20
    observed = [*counts[keep].tolist(), samples.size - int(counts[keep].sum())]
    expected = [*(pmf[keep] * samples.size).tolist(), samples.size * (1 - pmf[keep].sum())]
    assert stats.chisquare(observed, expected).pvalue > 1e-3


def test_exact_sampler_at_the_variance_limit() -> None:
    t, m = noise.discrete_gaussian_parameters(float(2**50 - 1))
    assert t * m == noise.MAX_DISCRETE_GAUSSIAN_VARIANCE
    samples = noise.discrete_gaussian(DeterministicRandomSource("r2"), t * m, 200_000, t=t)
    n, sigma2 = samples.size, float(t * m)
    assert abs(samples.astype(np.float64).var() / sigma2 - 1) < 5 * math.sqrt(2 / n)
    assert noise.discrete_gaussian(DeterministicRandomSource("r3"), 12, 0, t=4).shape == (0,)


def test_noise_is_a_function_of_the_random_source_only() -> None:
    """Noise comes from the RandomSource; numpy's RNG only drives the rounding."""
    plan = _plan(_settings(noise_multiplier=3.0, clip_norm=2.0**-10), d=64)
    x = np.zeros(64)
    a = dp.privatize(
        plan,
        x,
        randomness=DeterministicRandomSource("s"),
        rounding=np.random.default_rng(1),
        n_peers=3,
    )
    b = dp.privatize(
        plan,
        x,
        randomness=DeterministicRandomSource("s"),
        rounding=np.random.default_rng(2),
        n_peers=3,
    )
    assert np.array_equal(a.ring, b.ring)  # zero input: rounding is trivial, noise identical


def test_rotation_then_clip_keeps_the_sensitivity_bound() -> None:
    plan = _plan(_settings(rotation=True, clip_norm=0.01, noise_multiplier=0.01), d=777)
    assert plan.dimension == 1024
    rng = np.random.default_rng(4)
    for _ in range(20):
        spike = np.zeros(777)
        spike[rng.integers(777)] = 50.0
        for x in (spike, rng.normal(size=777)):
            scaled = dp.rotate(plan, x)
            scaled *= plan.scale * plan.settings.clip_norm / float(np.linalg.norm(scaled))
            z, _ = dp._round_conditionally(scaled, plan.l2_sensitivity**2, rng)
            assert float(np.linalg.norm(z.astype(np.float64))) <= plan.l2_sensitivity


def test_skellam_min_over_branches_dominates_the_exact_divergence() -> None:
    """Agarwal et al. Thm 3.5 vs the Rényi divergence of Sk(μ, μ) computed from its pmf."""
    mu, shift = 3.0, 2  # Sk(μ, μ): variance 2μ
    ks = np.arange(-60, 61)
    log_p = stats.skellam.logpmf(ks, mu, mu)
    log_q = stats.skellam.logpmf(ks - shift, mu, mu)
    cost = dp.skellam_cost(l2_sensitivity=shift, l1_sensitivity=shift, mu=mu)
    assert cost.alt_rho is not None
    assert cost.alt_xi is not None
    for alpha in (2, 3, 5, 8):
        exact = float(logsumexp(alpha * log_p + (1 - alpha) * log_q)) / (alpha - 1)
        bound = min(cost.xi + cost.rho * alpha, cost.alt_xi + cost.alt_rho * alpha)
        assert exact <= bound


def test_poisson_subsampled_round_is_the_gaussian_with_the_sum_multiplier() -> None:
    plan = _plan(_settings(sampling_probability=0.05, unit=dp.Unit.EXAMPLE), d=4096, k=4)
    event = plan.cost.event()
    assert isinstance(event, dpa.PoissonSampledDpEvent)
    assert isinstance(event.event, dpa.GaussianDpEvent)
    z = math.sqrt(plan.min_sites * plan.sigma_squared) / plan.l2_sensitivity
    assert event.event.noise_multiplier == pytest.approx(z, rel=1e-9)


def test_epsilon_cache_is_keyed_by_the_multiset() -> None:
    a = _plan(_settings(noise_multiplier=1.0)).cost
    b = _plan(_settings(noise_multiplier=2.0)).cost
    eps = dp.PrivacyAccountant(delta=DELTA).epsilon
    assert eps([a, b]) == eps([b, a])
    assert eps([a, a]) != eps([a, b]) != eps([b, b])
    library = RdpAccountant()
    library.compose(dpa.ComposedDpEvent([a.event(), b.event()]))
    assert eps([a, b]) == pytest.approx(float(library.get_epsilon(DELTA)), abs=1e-9)


def test_frac_bits_lowering_is_the_same_for_every_site_and_round() -> None:
    settings = _settings(noise_multiplier=50.0, clip_norm=1000.0)
    plans = {
        (
            dp.plan_round(
                settings, vector_length=10, frac_bits=30, min_sites=3, federation=f, round_id=r
            ).frac_bits
        )
        for f in ("a", "b")
        for r in (1, 2, 99)
    }
    assert len(plans) == 1
    (bits,) = plans
    assert bits < 30
