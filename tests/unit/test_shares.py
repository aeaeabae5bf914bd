"""Seed-compressed Shamir sharing of vectors (robust SPEC §6.1)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mpc_agg import field as gf
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.shares import deal, evaluation_matrix, expand_seed

POINTS = [1, 2, 3, 4, 5, 6, 7]
INFO = {x: f"holder-{x}".encode() for x in POINTS}


def _vectors(dealt: object, length: int) -> dict[int, np.ndarray]:
    return {x: dealt.vector(x, INFO[x], length) for x in POINTS}  # type: ignore[attr-defined]


@pytest.mark.parametrize("degree", [1, 2, 3])
def test_any_degree_plus_one_shares_reconstruct_the_secret(degree: int) -> None:
    source = DeterministicRandomSource(degree)
    secret = gf.random_vector(source, 1000)
    dealt = deal(
        secret,
        points=POINTS,
        seeded=POINTS[:degree],
        degree=degree,
        randomness=source,
        info=INFO,
    )
    assert set(dealt.seeds) == set(POINTS[:degree])
    assert set(dealt.vectors) == set(POINTS[degree:])
    shares = _vectors(dealt, 1000)
    for subset in itertools.combinations(POINTS, degree + 1):
        assert np.array_equal(gf.interpolate_at({x: shares[x] for x in subset}, 0), secret)


def test_seeded_shares_are_their_seed_expansions_and_bound_to_the_holder() -> None:
    source = DeterministicRandomSource(9)
    dealt = deal(
        gf.random_vector(source, 64), points=POINTS, seeded=[2, 5], degree=2,
        randomness=source, info=INFO,
    )  # fmt: skip
    assert np.array_equal(dealt.vector(2, INFO[2], 64), expand_seed(dealt.seeds[2], INFO[2], 64))
    assert not np.array_equal(
        expand_seed(dealt.seeds[2], INFO[2], 64), expand_seed(dealt.seeds[2], INFO[3], 64)
    )


def test_t_shares_reveal_nothing_pointwise() -> None:
    # With degree t, the t seeded shares are independent of the secret: two different
    # secrets dealt with the same seeds give the same t shares.
    shares = []
    for secret_value in (0, 12345):
        source = DeterministicRandomSource("same seeds")
        secret = np.full(16, secret_value, dtype=np.uint64)
        dealt = deal(secret, points=POINTS, seeded=[1, 2], degree=2, randomness=source, info=INFO)
        shares.append((dealt.vector(1, INFO[1], 16), dealt.vector(2, INFO[2], 16)))
    assert all(np.array_equal(a, b) for a, b in zip(*shares, strict=True))


def test_bad_arguments() -> None:
    source = DeterministicRandomSource(1)
    secret = gf.random_vector(source, 4)
    with pytest.raises(ValueError, match="seeded"):
        deal(secret, points=POINTS, seeded=[1], degree=2, randomness=source, info=INFO)
    with pytest.raises(ValueError, match="seeded"):
        deal(secret, points=POINTS, seeded=[1, 9], degree=2, randomness=source, info=INFO)
    with pytest.raises(ValueError, match="distinct and non-zero"):
        deal(secret, points=[0, 1, 2], seeded=[1], degree=1, randomness=source, info=INFO)


def test_evaluation_matrix_moves_between_point_sets() -> None:
    coefficients = [5, 7, 11]

    def f(x: int) -> int:
        return sum(c * pow(x, k, gf.P) for k, c in enumerate(coefficients)) % gf.P

    matrix = evaluation_matrix([0, 3, 9], [1, 2, 100])
    values = np.array([f(0), f(3), f(9)], dtype=np.uint64)
    assert gf.matmul(matrix, values).tolist() == [f(1), f(2), f(100)]
