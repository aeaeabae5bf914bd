"""GF(2^61 − 1) on uint64 vectors: exact products, interpolation, Reed–Solomon decoding."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc_agg.field import (
    DecodingError,
    FieldError,
    P,
    add,
    berlekamp_welch,
    check,
    inner,
    interpolate_at,
    inv,
    lagrange_at,
    mul,
    neg,
    random_vector,
    rs_decode,
    sub,
)
from mpc_agg.randomness import DeterministicRandomSource

elements = st.integers(min_value=0, max_value=P - 1)
EDGE = [0, 1, 2, P - 1, P - 2, (1 << 32) - 1, 1 << 32, (1 << 60) + 12345, (1 << 61) - 3]


def vec(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


@settings(max_examples=300)
@given(st.lists(st.tuples(elements, elements), min_size=1, max_size=50))
def test_operations_match_python_big_integers(pairs: list[tuple[int, int]]) -> None:
    pairs += [(a, b) for a in EDGE for b in EDGE]
    a, b = vec([x for x, _ in pairs]), vec([y for _, y in pairs])
    assert mul(a, b).tolist() == [x * y % P for x, y in pairs]
    assert add(a, b).tolist() == [(x + y) % P for x, y in pairs]
    assert sub(a, b).tolist() == [(x - y) % P for x, y in pairs]
    assert neg(a).tolist() == [-x % P for x, _ in pairs]
    assert inner(a, b) == sum(x * y for x, y in pairs) % P
    assert mul(a, 7).tolist() == [x * 7 % P for x, _ in pairs]


def test_inner_product_of_a_million_worst_case_entries_is_exact() -> None:
    a = np.full(1_000_000, P - 1, dtype=np.uint64)
    assert inner(a, a) == (1_000_000 * (P - 1) ** 2) % P


def test_out_of_field_values_are_refused() -> None:
    with pytest.raises(FieldError, match="≥ p"):
        check(vec([P]))
    with pytest.raises(FieldError, match="uint64"):
        check(np.array([1], dtype=np.int64))
    with pytest.raises(FieldError):
        inv(0)


def test_random_vector_is_uniform_in_range_and_deterministic_per_seed() -> None:
    v = random_vector(DeterministicRandomSource(1), 100_000)
    assert int(v.max()) < P
    assert abs(float(v.mean()) / P - 0.5) < 0.01
    assert np.array_equal(v, random_vector(DeterministicRandomSource(1), 100_000))


def _shares(secret: np.ndarray, degree: int, xs: list[int], seed: int) -> dict[int, np.ndarray]:
    source = DeterministicRandomSource(seed)
    coefficients = [secret] + [random_vector(source, secret.shape[0]) for _ in range(degree)]
    shares = {}
    for x in xs:
        value = np.zeros_like(secret)
        for c in reversed(coefficients):
            value = add(mul(value, x), c)
        shares[x] = value
    return shares


def test_lagrange_interpolation_recovers_the_secret_from_any_t_plus_1_shares() -> None:
    secret = random_vector(DeterministicRandomSource(2), 1000)
    shares = _shares(secret, 2, [1, 2, 3, 4, 5], seed=3)
    for subset in ([1, 2, 3], [3, 4, 5], [1, 3, 5]):
        assert np.array_equal(interpolate_at({x: shares[x] for x in subset}), secret)
    assert sum(lagrange_at([1, 2, 3])) % P == 1  # interpolating a constant
    with pytest.raises(FieldError, match="distinct"):
        lagrange_at([1, 1, 2])


@pytest.mark.parametrize(("n", "degree"), [(5, 2), (7, 2), (7, 3), (10, 3)])
def test_berlekamp_welch_corrects_up_to_the_bound_and_names_the_wrong_points(
    n: int, degree: int
) -> None:
    poly = [11, 22, 33, 44][: degree + 1]
    correct = {x: sum(c * pow(x, k, P) for k, c in enumerate(poly)) % P for x in range(1, n + 1)}
    bound = (n - degree - 1) // 2
    for errors in range(bound + 1):
        points = dict(correct)
        bad = set(range(1, errors + 1))
        for x in bad:
            points[x] = (points[x] + 1000 + x) % P
        decoded, wrong = berlekamp_welch(points, degree)
        assert decoded == poly
        assert wrong == bad
    too_many = dict(correct)
    for x in range(1, bound + 2):
        too_many[x] = (too_many[x] * 3 + 1) % P
    with pytest.raises(DecodingError):
        berlekamp_welch(too_many, degree)


def test_rs_decode_finds_a_holder_that_tampered_with_one_coordinate() -> None:
    secret = random_vector(DeterministicRandomSource(4), 10_000)
    shares = _shares(secret, 2, [1, 2, 3, 4, 5, 6, 7], seed=5)
    shares[3] = shares[3].copy()
    shares[3][1234] = (int(shares[3][1234]) + 1) % P
    shares[6] = random_vector(DeterministicRandomSource(6), 10_000)
    value, wrong = rs_decode(shares, 2, DeterministicRandomSource(7))
    assert wrong == {3, 6}
    assert np.array_equal(value, secret)


def test_rs_decode_with_too_many_wrong_holders_raises() -> None:
    secret = random_vector(DeterministicRandomSource(8), 100)
    shares = _shares(secret, 2, [1, 2, 3, 4, 5], seed=9)
    shares[1] = random_vector(DeterministicRandomSource(10), 100)
    shares[2] = random_vector(DeterministicRandomSource(11), 100)
    with pytest.raises(DecodingError):
        rs_decode(shares, 2, DeterministicRandomSource(12))
