"""Calibration, privatisation and accounting (mpc_agg/dp.py, DP.md §2–§4)."""

from __future__ import annotations

import itertools
import math
from dataclasses import replace

import dp_accounting as dpa
import numpy as np
import pytest
from dp_accounting.pld import PLDAccountant
from dp_accounting.rdp import RdpAccountant

from mpc_agg import dp
from mpc_agg.errors import EncodingError
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import add_into, zeros

DELTA = 1e-5


def _settings(**overrides: object) -> dp.DpSettings:
    values: dict[str, object] = {"noise_multiplier": 1.1, "clip_norm": 1.0, "delta": DELTA}
    values.update(overrides)
    return dp.DpSettings(**values)  # type: ignore[arg-type]


def _plan(settings: dp.DpSettings, d: int = 1000, k: int = 3, bits: int = 20) -> dp.DpRound:
    return dp.plan_round(
        settings, vector_length=d, frac_bits=bits, min_sites=k, federation="f", round_id=7
    )


def _library_epsilon(event: dpa.DpEvent, orders: tuple[float, ...] | None = None) -> float:
    accountant = RdpAccountant(orders=None if orders is None else list(orders))
    accountant.compose(event)
    return float(accountant.get_epsilon(DELTA))


# ---------------------------------------------------------------- accounting vs dp-accounting


def test_discrete_gaussian_schedule_equals_dp_accounting_gaussian() -> None:
    """At these sizes τ vanishes: the sum is a Gaussian mechanism of multiplier √k·σ/Δ₂."""
    plan = _plan(_settings(), d=10_000)
    z = math.sqrt(plan.min_sites * plan.sigma_squared) / plan.l2_sensitivity
    assert dp.discrete_gaussian_tau(plan.sigma_squared, plan.min_sites) == 0.0
    for rounds in (1, 10, 250):
        ours = dp.PrivacyAccountant(delta=DELTA).epsilon([plan.cost] * rounds)
        library = _library_epsilon(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), rounds))
        assert ours == pytest.approx(library, abs=1e-6)


def test_mixed_schedule_equals_dp_accounting_for_the_same_events() -> None:
    """Rounds of different noise, composed one by one, as the library composes them."""
    accountant = dp.PrivacyAccountant(delta=DELTA)
    events = []
    for z_setting, rounds in ((0.9, 5), (1.5, 20), (3.0, 7)):
        plan = _plan(_settings(noise_multiplier=z_setting), d=5000, k=4)
        for _ in range(rounds):
            accountant.spend(plan.cost)
        z = math.sqrt(plan.min_sites * plan.sigma_squared) / plan.l2_sensitivity
        events.append(dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), rounds))
    assert accountant.rounds == 32
    library = _library_epsilon(dpa.ComposedDpEvent(events))
    assert accountant.epsilon() == pytest.approx(library, abs=1e-6)


def test_poisson_subsampled_schedule_equals_dp_accounting() -> None:
    plan = _plan(_settings(sampling_probability=0.02, unit=dp.Unit.EXAMPLE), d=5000)
    z = math.sqrt(plan.min_sites * plan.sigma_squared) / plan.l2_sensitivity
    ours = dp.PrivacyAccountant(delta=DELTA).epsilon([plan.cost] * 1000)
    event = dpa.SelfComposedDpEvent(dpa.PoissonSampledDpEvent(0.02, dpa.GaussianDpEvent(z)), 1000)
    assert ours == pytest.approx(_library_epsilon(event), abs=1e-6)
    # The PLD accountant, tighter, agrees that subsampling bought a lot.
    pld = PLDAccountant()
    pld.compose(event)
    assert pld.get_epsilon(DELTA) <= ours + 1e-6
    assert ours < dp.PrivacyAccountant(delta=DELTA).epsilon([_plan(_settings(), d=5000).cost] * 10)


def test_local_mode_is_the_single_discrete_gaussian() -> None:
    """Canonne–Kamath–Steinke: one N_Z(0, σ²) is exactly ½(Δ/σ)²-zCDP (τ = 0)."""
    plan = _plan(_settings(local=True), k=5)
    assert plan.min_sites == 1
    rho = plan.l2_sensitivity**2 / (2 * plan.sigma_squared)
    assert plan.cost.rho == pytest.approx(rho, rel=1e-12)
    assert plan.sigma_squared >= (1.1 * plan.l2_sensitivity) ** 2


def test_small_noise_pays_the_discreteness_term_tau() -> None:
    """Few bits: σ² near 1, so τ > 0 and ε exceeds the continuous Gaussian's."""
    eps = dp.discrete_gaussian_epsilon(l2_sensitivity=1.0, sigma_squared=0.5, sites=4, dimension=10)
    assert dp.discrete_gaussian_tau(0.5, 4) > 1e-3
    assert eps > 1.0 / math.sqrt(4 * 0.5)


def test_skellam_bound_converges_to_the_gaussian_one() -> None:
    """Same noise multiplier, growing variance: Skellam's ε → Gaussian's (integer orders)."""
    z, rounds = 1.2, 50
    gaps = []
    for c in (2.0**2, 2.0**5, 2.0**8, 2.0**12, 2.0**16):
        mu = (z * c) ** 2 / 2  # Sk(μ, μ) has variance 2μ = (zΔ)²
        cost = dp.skellam_cost(l2_sensitivity=c, l1_sensitivity=min(c * c, 100 * c), mu=mu)
        skellam = dp.PrivacyAccountant(delta=DELTA).epsilon([cost] * rounds)
        gaussian = _library_epsilon(
            dpa.SelfComposedDpEvent(dpa.GaussianDpEvent(z), rounds), dp.INTEGER_ORDERS
        )
        assert skellam >= gaussian - 1e-9  # an upper bound never beats the Gaussian
        gaps.append(skellam / gaussian - 1)
    assert all(a > b for a, b in itertools.pairwise(gaps)), gaps
    assert gaps[-1] < 1e-6


def test_skellam_rdp_branches_are_upper_bounds_of_the_theorem() -> None:
    cost = dp.skellam_cost(l2_sensitivity=30.0, l1_sensitivity=400.0, mu=500.0)
    assert cost.alt_rho is not None
    assert cost.alt_xi is not None
    for alpha in dp.INTEGER_ORDERS:
        exact = dp.skellam_rdp(alpha, l2_sensitivity=30.0, l1_sensitivity=400.0, mu=500.0)
        first = cost.xi + cost.rho * alpha
        second = cost.alt_xi + cost.alt_rho * alpha
        assert min(first, second) == pytest.approx(exact, rel=1e-12, abs=1e-15) or (
            min(first, second) >= exact
        )


def test_round_cost_survives_json_and_rejects_garbage() -> None:
    cost = _plan(_settings(mechanism=dp.Mechanism.SKELLAM)).cost
    assert dp.RoundCost.from_json(cost.to_json()) == cost
    for bad in ({}, {**cost.to_json(), "rho": "x"}, {**cost.to_json(), "mechanism": "laplace"}):
        with pytest.raises(ValueError, match="malformed"):
            dp.RoundCost.from_json(bad)


def test_calibration_meets_the_target_and_no_less_noise_would() -> None:
    for mechanism in dp.Mechanism:
        settings = _settings(mechanism=mechanism)
        z = dp.calibrate_noise_multiplier(
            settings, epsilon=3.0, rounds=40, vector_length=2000, frac_bits=20, min_sites=3
        )

        def spent(multiplier: float, s: dp.DpSettings = settings) -> float:
            plan = _plan(replace(s, noise_multiplier=multiplier), d=2000)
            return dp.PrivacyAccountant(delta=DELTA).epsilon([plan.cost] * 40)

        assert spent(z) <= 3.0
        assert spent(z * 0.999) > 3.0


# ---------------------------------------------------------------- planning


def test_each_site_carries_a_share_of_the_target_variance() -> None:
    settings = _settings(noise_multiplier=2.0)
    plan = _plan(settings, k=4)
    target = (2.0 * plan.l2_sensitivity) ** 2
    assert target / 4 <= plan.sigma_squared <= target / 4 + plan.laplace_scale
    assert plan.l2_sensitivity >= 2**20  # the clip norm in integer units, plus rounding


def test_frac_bits_are_lowered_until_the_sampler_can_draw_the_noise() -> None:
    plan = _plan(_settings(noise_multiplier=500.0, clip_norm=100.0), bits=30, k=2)
    assert plan.frac_bits < 30
    assert plan.sigma_squared <= 1 << 50


def test_settings_reject_bad_values() -> None:
    for bad in (
        {"noise_multiplier": 0.0},
        {"clip_norm": math.inf},
        {"delta": 1.0},
        {"epsilon_budget": -1.0},
        {"sampling_probability": 0.0},
        {"sampling_probability": 0.5, "mechanism": dp.Mechanism.SKELLAM},
    ):
        with pytest.raises(ValueError):
            _settings(**bad)


# ---------------------------------------------------------------- privatise and decode


def test_rotation_is_orthogonal_and_inverts() -> None:
    plan = _plan(_settings(rotation=True), d=1000)
    assert plan.dimension == 1024
    x = np.random.default_rng(1).normal(size=1000)
    y = dp.rotate(plan, x)
    assert np.linalg.norm(y) == pytest.approx(np.linalg.norm(x), rel=1e-12)
    assert np.allclose(dp.unrotate(plan, y), x, atol=1e-12)
    # A spike is spread over every coordinate (what rotation is for).
    spike = np.zeros(1000)
    spike[3] = 1.0
    assert np.abs(dp.rotate(plan, spike)).max() == pytest.approx(1 / 32)


@pytest.mark.parametrize("rotation", [False, True])
def test_sum_of_privatized_updates_decodes_to_the_sum_plus_noise(rotation: bool) -> None:
    rng = np.random.default_rng(2)
    n, d = 5, 4000
    settings = _settings(noise_multiplier=0.5, clip_norm=10.0, rotation=rotation)
    plan = _plan(settings, d=d, k=3)
    updates = [rng.normal(size=d) * 0.05 for _ in range(n)]
    total = zeros(plan.dimension)
    for i, update in enumerate(updates):
        private = dp.privatize(
            plan,
            update,
            randomness=DeterministicRandomSource(i),
            rounding=np.random.default_rng(i),
            n_peers=n,
        )
        assert not private.clipped
        add_into(total, private.ring)
    decoded = dp.decode(plan, total)
    error = decoded - sum(updates)
    sigma = 0.5 * plan.l2_sensitivity / plan.scale * math.sqrt(n / 3)  # float units
    assert abs(error.std() / sigma - 1) < 0.05
    assert abs(error.mean()) < 5 * sigma / math.sqrt(d)


def test_privatize_clips_to_the_clip_norm_and_respects_the_sensitivity_bound() -> None:
    settings = _settings(noise_multiplier=1e-6, clip_norm=1.0)  # noise ≈ 1 unit
    plan = _plan(settings, d=500, k=1, bits=10)
    x = np.full(500, 3.0)
    private = dp.privatize(
        plan,
        x,
        randomness=DeterministicRandomSource(3),
        rounding=np.random.default_rng(3),
        n_peers=3,
    )
    assert private.clipped
    assert private.l2_norm == pytest.approx(3.0 * math.sqrt(500))
    decoded = dp.decode(plan, private.ring)
    assert np.linalg.norm(decoded) == pytest.approx(1.0, abs=0.05)


def test_conditional_rounding_never_exceeds_the_bound() -> None:
    scaled = np.full(10_000, 0.5)  # every coordinate rounds up or down at random
    bound = dp.l2_sensitivity_bound(float(np.linalg.norm(scaled)), 10_000)
    rounded, draws = dp._round_conditionally(scaled, bound**2, np.random.default_rng(4))
    assert float(np.dot(rounded, rounded)) <= bound**2
    assert draws >= 1


def test_privatize_rejects_bad_input() -> None:
    plan = _plan(_settings(), d=4)
    kwargs = {
        "randomness": DeterministicRandomSource(0),
        "rounding": np.random.default_rng(0),
        "n_peers": 3,
    }
    with pytest.raises(EncodingError, match="NaN"):
        dp.privatize(plan, np.array([0.0, np.nan, 0.0, 0.0]), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="expects 4"):
        dp.privatize(plan, np.zeros(5), **kwargs)  # type: ignore[arg-type]
    with pytest.raises(EncodingError, match="dtype"):
        dp.privatize(plan, np.array(["a"] * 4), **kwargs)  # type: ignore[arg-type]


def test_budget_accountant_spends_and_reports() -> None:
    plan = _plan(_settings())
    accountant = dp.PrivacyAccountant(delta=DELTA)
    assert accountant.epsilon() == 0.0
    first = accountant.spend(plan.cost)
    second = accountant.spend(plan.cost)
    assert 0 < first < second
    assert accountant.costs == (plan.cost, plan.cost)
    restored = dp.PrivacyAccountant(delta=DELTA, history=accountant.costs)
    assert restored.epsilon() == second


# ---------------------------------------------------------------- unit = example, noise_sites


def test_example_unit_rounds_to_nearest_and_never_clips() -> None:
    settings = _settings(unit=dp.Unit.EXAMPLE, noise_multiplier=1e-6, clip_norm=0.25)
    plan = _plan(settings, d=100, k=1, bits=16)
    assert plan.l2_sensitivity == pytest.approx(0.25 * 2**16 + 10.0)
    x = np.linspace(-3.0, 3.0, 100)  # a sum of many clipped examples: norm ≫ clip_norm
    private = dp.privatize(
        plan,
        x,
        randomness=DeterministicRandomSource(5),
        rounding=np.random.default_rng(5),
        n_peers=3,
    )
    assert not private.clipped
    assert private.rounding_draws == 0
    decoded = dp.decode(plan, private.ring)
    assert np.abs(decoded - x).max() <= 0.5 / 2**16 + 1e-3  # nearest rounding plus tiny noise


def test_example_unit_refuses_entries_the_ring_cannot_hold() -> None:
    plan = _plan(_settings(unit=dp.Unit.EXAMPLE), d=3, bits=20)
    with pytest.raises(EncodingError, match="too large for the ring"):
        dp.privatize(
            plan,
            np.array([0.0, 2.0**50, 0.0]),
            randomness=DeterministicRandomSource(0),
            rounding=np.random.default_rng(0),
            n_peers=3,
        )


def test_noise_sites_against_colluders_lowers_k() -> None:
    base = _plan(_settings(), k=5)
    guarded = _plan(_settings(noise_sites=3), k=5)
    assert (base.min_sites, guarded.min_sites) == (5, 3)
    assert guarded.sigma_squared > base.sigma_squared  # each site adds more
    # …so that the sum of 3 honest sites carries what 5 did: the same ε.
    assert guarded.cost.rho == pytest.approx(base.cost.rho, rel=1e-5)
    with pytest.raises(ValueError, match="noise_sites"):
        _settings(noise_sites=0)


def test_integer_orders_are_dp_accountings_integer_default_orders() -> None:
    """INTEGER_ORDERS is written out (no dp-accounting import at start-up): keep it in step."""
    from dp_accounting.rdp.rdp_privacy_accountant import DEFAULT_RDP_ORDERS  # noqa: PLC0415

    library = tuple(float(a) for a in DEFAULT_RDP_ORDERS if float(a) == int(a) and a >= 2)
    assert library == dp.INTEGER_ORDERS


def test_importing_the_runtime_does_not_import_dp_accounting() -> None:
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    code = "import sys, peers.cli; print('dp_accounting' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
