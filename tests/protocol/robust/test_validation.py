"""Input validation: invalid inputs are excluded, valid ones (up to exactly B) accepted."""

from __future__ import annotations

import numpy as np
import pytest

from mpc_agg import field as gf
from protocols.robust.harness import UncheckedDealer, bounded_inputs, run_robust_round
from tests.protocol.robust.support import (
    assert_exact,
    exclusions,
    norm_violating,
)

N, D, B = 5, 300, 4096


def _inputs(**overrides: np.ndarray) -> dict[int, np.ndarray]:
    inputs = bounded_inputs(N, D, seed=3, norm_bound=B)
    for peer, vector in overrides.items():
        inputs[int(peer.removeprefix("p"))] = vector
    return inputs


def test_honest_round_is_exact() -> None:
    outcome = run_robust_round(n=N, vector_length=D, seed=1, norm_bound=B, inputs=_inputs())
    assert_exact(outcome, included=tuple(range(N)))
    for result in outcome.results().values():
        assert not result.excluded
        assert not result.dropped
        assert len(result.confirmed_by) == N - 1


def test_norm_a_hundred_times_the_bound_is_excluded() -> None:
    big = norm_violating(D, B, 100)
    assert np.linalg.norm(big.view(np.int64).astype(float)) >= 99 * B
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=2,
        norm_bound=B,
        inputs=_inputs(p2=big),
        machine_classes={2: UncheckedDealer},
    )
    assert_exact(outcome, included=(0, 1, 3, 4))
    for peer in (0, 1, 3, 4):
        reason = exclusions(outcome, peer)[2]
        assert reason.startswith("input failed the validity check"), reason


def test_a_squared_norm_that_wraps_modulo_p_is_excluded() -> None:
    # 2^62 = 2(p + 1) ≡ 2 (mod p): the squared norm "is" 2, the real norm is 2^31 ≫ B.
    wrapping = np.zeros(D, dtype=np.int64)
    wrapping[7] = 1 << 31
    x = gf.reduce_signed(wrapping)
    assert gf.inner(x, x) == 2
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=3,
        norm_bound=B,
        inputs=_inputs(p4=wrapping.view(np.uint64)),
        machine_classes={4: UncheckedDealer},
    )
    assert_exact(outcome, included=(0, 1, 2, 3))
    assert exclusions(outcome, 0)[4].startswith("input failed the validity check")


@pytest.mark.parametrize(
    "coordinates",
    [
        {0: B},  # one coordinate at the bound
        {0: -(3 * B // 5), 5: 4 * B // 5} if B % 5 == 0 else {0: -B},
        {3: 2 * 1024 * 2, 9: 0},
    ],
    ids=["one-coordinate", "three-four-five", "partial"],
)
def test_norm_exactly_on_the_bound_is_accepted(coordinates: dict[int, int]) -> None:
    vector = np.zeros(D, dtype=np.int64)
    for k, v in coordinates.items():
        vector[k] = v
    outcome = run_robust_round(
        n=N, vector_length=D, seed=4, norm_bound=B, inputs=_inputs(p1=vector.view(np.uint64))
    )
    assert_exact(outcome, included=tuple(range(N)))


def test_exact_bound_with_pythagorean_triple() -> None:
    # 3-4-5 scaled: ‖(3k, 4k)‖ = 5k = B exactly.
    bound = 5 * 800
    vector = np.zeros(D, dtype=np.int64)
    vector[10], vector[200] = -3 * 800, 4 * 800
    inputs = bounded_inputs(N, D, seed=5, norm_bound=bound)
    inputs[0] = vector.view(np.uint64)
    outcome = run_robust_round(n=N, vector_length=D, seed=5, norm_bound=bound, inputs=inputs)
    assert_exact(outcome, included=tuple(range(N)))


def test_one_past_the_bound_is_refused_locally_and_excluded_when_forced() -> None:
    bound = 5 * 800
    vector = np.zeros(D, dtype=np.int64)
    vector[10], vector[200], vector[3] = -3 * 800, 4 * 800, 1  # ‖x‖² = B² + 1
    inputs = bounded_inputs(N, D, seed=6, norm_bound=bound)
    inputs[0] = vector.view(np.uint64)
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=6,
        norm_bound=bound,
        inputs=inputs,
        machine_classes={0: UncheckedDealer},
    )
    assert_exact(outcome, included=(1, 2, 3, 4))
