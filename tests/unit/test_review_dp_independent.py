"""Independent privacy review of mpc_agg/dp.py and DP.md (found at be68d96).

Reference ε values here are computed WITHOUT the project's accountant: the exact
(ε, δ) curve of the Gaussian mechanism (Balle and Wang 2018, closed form), composed over
R rounds as one Gaussian of multiplier z/√R. The review found that the default
``noise_sites = T`` covers observers outside the federation but not a participating site
(which knows its own noise share), that a site skipping its share weakens everyone's
guarantee, and a wrong τ threshold: DP.md §1 and §4.1 now say so, and these tests pin the
claims. Sites with different ``[dp]`` tables: ``tests/runtime/test_review_dp_binding.py``.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from scipy import optimize, stats

from mpc_agg import dp
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import lift

ROOT = Path(__file__).resolve().parents[2]
DELTA = 1e-5


def exact_gaussian_epsilon(rounds: int, multiplier: float, delta: float) -> float:
    """Exact ε(δ) of ``rounds`` Gaussian mechanisms of noise multiplier ``multiplier``.

    R-fold composition of N(0, (zΔ)²) with sensitivity Δ is μ-GDP with μ = √R / z, and
    δ(ε) = Φ(−ε/μ + μ/2) − e^ε Φ(−ε/μ − μ/2) (Balle and Wang 2018, Thm. 8).
    """
    mu = math.sqrt(rounds) / multiplier

    def excess(eps: float) -> float:
        tail = math.exp(min(700.0, eps + stats.norm.logcdf(-eps / mu - mu / 2)))
        return float(stats.norm.cdf(-eps / mu + mu / 2) - tail) - delta

    if excess(0.0) <= 0:
        return 0.0
    high = 1.0
    while excess(high) > 0:
        high *= 2
    return float(optimize.brentq(excess, 0.0, high, xtol=1e-12))


def _readme_plan(threshold: int = 3, noise_sites: int | None = None) -> dp.DpRound:
    """README's example: z = 4, clip 1, δ = 1e-5, d = 4810, 2^-20, T = 3."""
    settings = dp.DpSettings(
        noise_multiplier=4.0, clip_norm=1.0, delta=DELTA, noise_sites=noise_sites
    )
    return dp.plan_round(
        settings,
        vector_length=4810,
        frac_bits=20,
        min_sites=threshold,
        federation="demo",
        round_id=1,
    )


# --------------------------------------------------------------------------- F1


def _epsilons(plan: dp.DpRound, unknown_shares: int, rounds: int = 50) -> tuple[float, float]:
    """(ε reported by the ledger, exact ε with ``unknown_shares`` noise shares in the sum)."""
    reported = dp.PrivacyAccountant(delta=DELTA).epsilon([plan.cost] * rounds)
    z = math.sqrt(unknown_shares * plan.sigma_squared) / plan.l2_sensitivity
    return reported, exact_gaussian_epsilon(rounds, z, DELTA)


@pytest.mark.parametrize("threshold", [2, 3])
def test_the_default_covers_outsiders_and_t_minus_1_covers_a_participating_site(
    threshold: int,
) -> None:
    """Every included site knows its own noise share. With only T sites included (what the
    calibration is built for), an outsider faces T unknown shares, a site T − 1. The
    README's sample (z = 4, T = 3, 50 rounds) reports ε = 9.235 against outsiders; against
    a site the exact ε is ≥ 11.03, so DP.md §1 tells users to set noise_sites = T − 1."""
    default = _readme_plan(threshold)
    reported, outsider = _epsilons(default, unknown_shares=threshold)
    assert reported >= outsider
    _, against_a_site = _epsilons(default, unknown_shares=threshold - 1)
    assert reported < against_a_site  # the default does not cover a site
    covered = _readme_plan(threshold, noise_sites=threshold - 1)
    reported, against_a_site = _epsilons(covered, unknown_shares=threshold - 1)
    assert reported >= against_a_site


def test_dp_md_says_whom_the_default_covers() -> None:
    text = " ".join((ROOT / "mpc_agg" / "DP.md").read_text().split())
    assert "Everyone who sees the aggregate: the other sites" not in text
    assert "with `noise_sites = T − 1`, also each other site" in text
    assert "Against any single site, set `noise_sites = T − 1`" in text


# --------------------------------------------------------------------------- F2


def test_a_site_that_skips_its_share_weakens_everyone_and_counts_as_a_colluder() -> None:
    """3 included sites, site 2 adds no noise. Calibrated for k = T = 3, the sum keeps 2/3
    of the accounted variance: every other site's data loses (DP.md §1, corrected).
    Counting the skipping site in noise_sites (k = 2), the two honest shares carry it."""
    d = _readme_plan(3).dimension
    target = None
    for noise_sites, expected in ((None, 2 / 3), (2, 1.0)):
        plan = _readme_plan(3, noise_sites)
        shares = [
            lift(
                dp.privatize(
                    plan,
                    np.zeros(d),
                    randomness=DeterministicRandomSource(i),
                    rounding=np.random.default_rng(i),
                    n_peers=4,
                ).ring
            ).astype(np.float64)
            for i in range(2)
        ]
        target = (plan.settings.noise_multiplier * plan.l2_sensitivity) ** 2
        ratio = float((shares[0] + shares[1]).var() / target)
        assert ratio == pytest.approx(expected, rel=0.05)
    text = " ".join((ROOT / "mpc_agg" / "DP.md").read_text().split())
    assert "weakens the guarantee of *every* site's data" in text
    assert "weakens only" not in text


# --------------------------------------------------------------------------- F4


def test_dp_md_tau_underflow_threshold() -> None:
    """τ = 10·Σ e^{−2π²σ²j/(j+1)} is 2.6e-38 at σ = 3 (k = 3) and 0.0 in float64 only from
    σ² ≈ 76 (σ ≈ 8.7); DP.md §4.1 said σ ≳ 3."""
    assert 0.0 < dp.discrete_gaussian_tau(9, 3) < 1e-36
    assert dp.discrete_gaussian_tau(76, 3) == 0.0
    text = " ".join((ROOT / "mpc_agg" / "DP.md").read_text().split())
    assert "At σ ≳ 3 τ underflows" not in text
