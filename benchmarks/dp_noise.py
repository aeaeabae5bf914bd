"""Cost of distributed DP per site and round: samplers, privatisation, accounting.

Run: ``.venv/bin/python -m benchmarks.dp_noise`` (writes results/dp_noise.json).
"""

from __future__ import annotations

import numpy as np

from benchmarks.common import best_of, write
from mpc_agg import dp, noise
from mpc_agg.fixedpoint import FixedPointCodec
from mpc_agg.randomness import DeterministicRandomSource, SystemRandomSource


def _fresh_epsilon(accountant: dp.PrivacyAccountant, costs: list[dp.RoundCost]) -> float:
    """ε without the cache (what the first round of a schedule pays)."""
    dp._epsilon_of_multiset.cache_clear()
    return accountant.epsilon(costs)


def main() -> None:
    d = 1_000_000
    rows: dict[str, float] = {}
    # What privatize() draws from: AES-256-CTR keyed by 32 bytes of the OS CSPRNG.
    source = DeterministicRandomSource(SystemRandomSource().random_bytes(32))
    # Per-site noise of a typical round: f = 20, clip 1, z = 1, T = 3 sites.
    settings = dp.DpSettings(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5)
    plan = dp.plan_round(
        settings, vector_length=d, frac_bits=20, min_sites=3, federation="bench", round_id=1
    )
    rows["site_sigma"] = float(np.sqrt(plan.sigma_squared))
    best, _ = best_of(
        lambda: noise.discrete_gaussian(source, plan.sigma_squared, d, t=plan.laplace_scale), 3
    )
    rows["discrete_gaussian_1e6_ms"] = best * 1e3
    rows["discrete_gaussian_per_s_millions"] = d / best / 1e6
    mu = plan.sigma_squared / 2
    best, _ = best_of(lambda: noise.skellam(source, mu, d), 3)
    rows["skellam_1e6_ms"] = best * 1e3
    rng = np.random.default_rng(0)
    x = rng.normal(size=d) * (0.5 / np.sqrt(d))
    best, _ = best_of(lambda: dp.privatize(plan, x, randomness=source, rounding=rng, n_peers=10), 3)
    rows["privatize_site_unit_1e6_ms"] = best * 1e3
    codec = FixedPointCodec(frac_bits=20, n_peers=10, max_abs_value=1.0)
    best, _ = best_of(lambda: codec.encode(x, rng), 3)
    rows["plain_encode_1e6_ms"] = best * 1e3
    rotated = dp.plan_round(
        dp.DpSettings(noise_multiplier=1.0, clip_norm=1.0, delta=1e-5, rotation=True),
        vector_length=d,
        frac_bits=20,
        min_sites=3,
        federation="bench",
        round_id=1,
    )
    best, _ = best_of(lambda: dp.rotate(rotated, x), 3)
    rows["rotate_1e6_to_2^20_ms"] = best * 1e3
    costs = [plan.cost] * 200
    accountant = dp.PrivacyAccountant(delta=1e-5)
    best, _ = best_of(lambda: _fresh_epsilon(accountant, costs), 5)
    rows["epsilon_200_rounds_ms"] = best * 1e3
    sub = dp.plan_round(
        dp.DpSettings(
            noise_multiplier=1.0, clip_norm=1.0, delta=1e-5, sampling_probability=0.1,
            unit=dp.Unit.EXAMPLE,
        ),
        vector_length=d, frac_bits=20, min_sites=3, federation="bench", round_id=1,
    )  # fmt: skip
    best, _ = best_of(lambda: _fresh_epsilon(accountant, [sub.cost] * 100), 5)
    rows["epsilon_100_subsampled_rounds_ms"] = best * 1e3
    # Reproducibility of a seeded draw (what the tests rely on).
    a = noise.discrete_gaussian(DeterministicRandomSource(1), 12, 1000, t=4)
    b = noise.discrete_gaussian(DeterministicRandomSource(1), 12, 1000, t=4)
    assert np.array_equal(a, b)
    path = write("dp_noise", {"command": "python -m benchmarks.dp_noise", "d": d, "results": rows})
    for key, value in rows.items():
        print(f"{key:40s} {value:10.2f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
