"""The fast paths of GF(2^61 − 1): limb matrix products, shifts, lifts, PRG expansion,
Lagrange weights on consecutive nodes — each against Python big integers."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc_agg import field as gf
from mpc_agg.randomness import DeterministicRandomSource

elements = st.integers(min_value=0, max_value=gf.P - 1)
EDGE = [0, 1, 2, gf.P - 1, gf.P - 2, (1 << 21) - 1, 1 << 42, (1 << 61) - 3]


def _python_matmul(a: np.ndarray, b: np.ndarray) -> list[list[int]]:
    return [
        [sum(int(a[i, k]) * int(b[k, j]) for k in range(a.shape[1])) % gf.P
         for j in range(b.shape[1])]
        for i in range(a.shape[0])
    ]  # fmt: skip


@settings(max_examples=40, deadline=None)
@given(
    st.integers(min_value=1, max_value=4),
    st.integers(min_value=1, max_value=3000),
    st.integers(min_value=1, max_value=3),
    st.integers(min_value=0, max_value=2**32),
)
def test_matmul_is_exact_across_inner_blocks(rows: int, inner: int, cols: int, seed: int) -> None:
    source = DeterministicRandomSource(seed)
    a = gf.random_vector(source, rows * inner).reshape(rows, inner)
    b = gf.random_vector(source, inner * cols).reshape(inner, cols)
    a.reshape(-1)[: len(EDGE)] = EDGE[: min(len(EDGE), a.size)]
    assert gf.matmul(a, b).tolist() == _python_matmul(a, b)


def test_matmul_many_blocks_and_vector_shapes() -> None:
    # 2^11 · 600 terms: the uint64 limb accumulators are folded every 128 blocks
    source = DeterministicRandomSource(1)
    length = (1 << 11) * 600 + 17
    a = np.full(length, gf.P - 1, dtype=np.uint64)
    b = np.full(length, gf.P - 1, dtype=np.uint64)
    assert int(gf.matmul(a, b)) == length % gf.P  # (−1)·(−1) summed
    m = gf.random_vector(source, 12).reshape(3, 4)
    v = gf.random_vector(source, 4)
    assert gf.matmul(m, v).tolist() == [row[0] for row in _python_matmul(m, v.reshape(4, 1))]
    with pytest.raises(gf.FieldError, match="shapes"):
        gf.matmul(m, gf.random_vector(source, 5))


@pytest.mark.parametrize("inner", [1, 511, 512, 513, 2048, 2049])
def test_matmul_at_the_largest_limbs_on_both_layouts(inner: int) -> None:
    # every limb at its largest: the float sums are at their bound on the stacked layout
    # (inner ≤ 512: 3·512 products < 2^42) and per block on the input-heavy one
    rows, cols = 3, 5
    a = np.full((rows, inner), gf.P - 1, dtype=np.uint64)
    b = np.full((inner, cols), gf.P - 1, dtype=np.uint64)
    assert (gf.matmul(a, b) == inner % gf.P).all()  # (−1)·(−1) summed
    top = np.uint64((1 << 61) - 1 - (1 << 42))  # limbs 2^21 − 1, 2^21 − 1, 2^19 − 2 (< p)
    a[:] = top
    expected = inner * (int(top) * (gf.P - 1)) % gf.P
    assert (gf.matmul(a, b) == expected).all()
    assert gf.matmul(a[0], b[:, 0]) == expected  # the matrix-vector path


def test_lincomb_matches_matmul_over_column_blocks() -> None:
    source = DeterministicRandomSource(2)
    coefficients = gf.random_vector(source, 6).reshape(2, 3)
    vectors = gf.random_vector(source, 3 * 70_000).reshape(3, 70_000)
    assert np.array_equal(gf.lincomb(coefficients, vectors), gf.matmul(coefficients, vectors))
    # a sequence of vectors gives the same, without stacking them whole
    assert np.array_equal(
        gf.lincomb(coefficients, list(vectors)), gf.lincomb(coefficients, vectors)
    )


def test_project_matches_matmul_over_column_blocks() -> None:
    source = DeterministicRandomSource(3)
    length = (1 << 16) * 2 + 5  # three column blocks, the last partial
    vectors = [gf.random_vector(source, length) for _ in range(4)]
    vectors[0][:] = gf.P - 1
    weights = gf.random_vector(source, length)
    expected = gf.matmul(np.vstack(vectors), weights)
    assert np.array_equal(gf.project(vectors, weights), expected)
    assert gf.project([], weights).shape == (0,)
    with pytest.raises(gf.FieldError, match="length"):
        gf.project([weights[:-1]], weights)
    with pytest.raises(gf.FieldError, match="one length"):
        gf.lincomb(np.ones((1, 2), dtype=np.uint64), [weights, weights[:-1]])


@settings(max_examples=200)
@given(st.lists(elements, min_size=1, max_size=20), st.integers(min_value=0, max_value=200))
def test_shift_multiplies_by_a_power_of_two(values: list[int], bits: int) -> None:
    vector = np.array(values, dtype=np.uint64)
    assert gf.shift(vector, bits).tolist() == [v * pow(2, bits, gf.P) % gf.P for v in values]


@settings(max_examples=200)
@given(st.lists(st.integers(min_value=-(2**62), max_value=2**62), min_size=1, max_size=20))
def test_signed_lifts_and_residues(values: list[int]) -> None:
    array = np.array(values, dtype=np.int64)
    assert gf.reduce_signed(array).tolist() == [v % gf.P for v in values]
    small = [v for v in values if abs(v) < gf.P // 2]
    if small:
        embedded = gf.from_signed(np.array(small, dtype=np.int64))
        assert embedded.tolist() == [v % gf.P for v in small]
        assert gf.to_signed(embedded).tolist() == small


def test_signed_lift_is_exact_beyond_float_precision() -> None:
    # found by hypothesis: a uint64/int64 mix in np.where went through float64
    values = [2**53 + 1, -(2**53 + 1), gf.P // 2 - 1, -(gf.P // 2 - 1)]
    embedded = gf.from_signed(np.array(values, dtype=np.int64))
    assert gf.to_signed(embedded).tolist() == values


def test_from_signed_refuses_values_that_would_wrap() -> None:
    with pytest.raises(gf.FieldError, match="does not fit"):
        gf.from_signed(np.array([gf.P // 2], dtype=np.int64))
    with pytest.raises(gf.FieldError):
        gf.to_signed(np.array([gf.P], dtype=np.uint64))


def test_sum_rows_is_exact() -> None:
    matrix = np.full((5, 3), gf.P - 1, dtype=np.uint64)
    assert gf.sum_rows(matrix, axis=0).tolist() == [(5 * (gf.P - 1)) % gf.P] * 3
    assert gf.sum_rows(matrix, axis=1).tolist() == [(3 * (gf.P - 1)) % gf.P] * 5


def test_expand_is_deterministic_uniform_and_reduced() -> None:
    key = bytes(range(32))
    first = gf.expand(key, 50_000)
    assert np.array_equal(first[:1000], gf.expand(key, 1000))  # a prefix of the same stream
    assert int(first.max()) < gf.P
    assert not np.array_equal(first, gf.expand(bytes(32), 50_000))
    # top and bottom bit of the 61 are balanced (a crude uniformity check)
    for bit in (0, 60):
        share = float(np.mean((first >> np.uint64(bit)) & np.uint64(1)))
        assert abs(share - 0.5) < 0.01


@settings(max_examples=50)
@given(
    st.lists(elements, min_size=1, max_size=8),
    st.integers(min_value=0, max_value=gf.P - 1),
)
def test_lagrange_consecutive_interpolates(coefficients: list[int], at: int) -> None:
    def f(x: int) -> int:
        return sum(c * pow(x, k, gf.P) for k, c in enumerate(coefficients)) % gf.P

    count = len(coefficients)
    values = [f(m) for m in range(count)]
    weights = gf.lagrange_consecutive(count, at)
    assert sum(int(w) * v for w, v in zip(weights, values, strict=True)) % gf.P == f(at)
    matrix = gf.extrapolation_matrix(count, 4)
    extended = [sum(int(matrix[k, m]) * values[m] for m in range(count)) % gf.P for k in range(4)]
    assert extended == [f(count + k) for k in range(4)]


def test_lagrange_at_a_node_is_an_indicator() -> None:
    assert gf.lagrange_consecutive(5, 3).tolist() == [0, 0, 0, 1, 0]
