"""Fixed-point encoding (DESIGN §4): exactness, unbiased rounding, typed rejections."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc_agg.errors import EncodingError, HeadroomError
from mpc_agg.fixedpoint import FixedPointCodec, check_headroom
from mpc_agg.ring import SIGNED_LIMIT, add_into, lift, zeros

SIGNED_LIMIT_TEXT = "9223372036854775807"


def _rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def _grid_values(codec: FixedPointCodec, count: int, seed: int) -> np.ndarray:
    """Random multiples of 2^-frac_bits in [-max_abs_value, max_abs_value]."""
    bound = math.floor(codec.max_abs_value * codec.scale)
    integers = np.random.default_rng(seed).integers(-bound, bound, size=count, endpoint=True)
    return integers.astype(np.float64) / codec.scale


# --------------------------------------------------------------------------- check_headroom


def test_check_headroom_passes_exactly_at_the_boundary() -> None:
    check_headroom(SIGNED_LIMIT, 1)
    # 2^63 − 1 = 7^2 · 73 · 127 · 337 · 92737 · 649657, so 7 · (2^63 − 1)/7 hits it exactly.
    assert SIGNED_LIMIT % 7 == 0
    check_headroom(SIGNED_LIMIT // 7, 7)
    check_headroom(0, 10**6)


@pytest.mark.parametrize(
    ("max_abs", "n_peers"),
    [(SIGNED_LIMIT + 1, 1), (SIGNED_LIMIT // 7 + 1, 7), (1 << 62, 2), (1, SIGNED_LIMIT + 1)],
)
def test_check_headroom_fails_one_past_the_boundary(max_abs: int, n_peers: int) -> None:
    with pytest.raises(HeadroomError) as info:
        check_headroom(max_abs, n_peers)
    message = str(info.value)
    assert str(n_peers) in message
    assert str(max_abs) in message
    assert str(n_peers * max_abs) in message
    assert SIGNED_LIMIT_TEXT in message


def test_headroom_error_is_an_encoding_error() -> None:
    with pytest.raises(EncodingError):
        check_headroom(1 << 63, 1)


@pytest.mark.parametrize(("max_abs", "n_peers"), [(1, 0), (1, -3), (-1, 1)])
def test_check_headroom_rejects_nonsense_arguments(max_abs: int, n_peers: int) -> None:
    with pytest.raises(EncodingError) as info:
        check_headroom(max_abs, n_peers)
    assert not isinstance(info.value, HeadroomError)


# --------------------------------------------------------------------------- construction


@pytest.mark.parametrize("frac_bits", [-1, 53, 64])
def test_codec_rejects_frac_bits_outside_0_to_52(frac_bits: int) -> None:
    with pytest.raises(EncodingError, match="frac_bits"):
        FixedPointCodec(frac_bits=frac_bits, n_peers=1, max_abs_value=1e-6)


@pytest.mark.parametrize("frac_bits", [0, 52])
def test_codec_accepts_frac_bits_extremes(frac_bits: int) -> None:
    codec = FixedPointCodec(frac_bits=frac_bits, n_peers=2, max_abs_value=1.0)
    assert codec.scale == float(2**frac_bits)


@pytest.mark.parametrize("n_peers", [0, -1])
def test_codec_rejects_non_positive_peer_count(n_peers: int) -> None:
    with pytest.raises(EncodingError, match="n_peers"):
        FixedPointCodec(frac_bits=16, n_peers=n_peers, max_abs_value=1.0)


@pytest.mark.parametrize("max_abs_value", [0.0, -1.0, math.nan, math.inf, -math.inf])
def test_codec_rejects_bad_max_abs_value(max_abs_value: float) -> None:
    with pytest.raises(EncodingError, match="max_abs_value"):
        FixedPointCodec(frac_bits=16, n_peers=1, max_abs_value=max_abs_value)


def test_codec_rejects_scaled_values_beyond_exact_float_range() -> None:
    # 2.0 · 2^52 = 2^53: stochastic rounding would no longer be exact.
    with pytest.raises(HeadroomError, match="2\\^53"):
        FixedPointCodec(frac_bits=52, n_peers=1, max_abs_value=2.0)
    FixedPointCodec(frac_bits=51, n_peers=1, max_abs_value=2.0)


def test_codec_rejects_a_peer_count_whose_sum_could_overflow() -> None:
    # max_abs_value · 2^52 = 2^52 per peer: 2048 peers sum to 2^63, which wraps.
    FixedPointCodec(frac_bits=52, n_peers=2047, max_abs_value=1.0)
    with pytest.raises(HeadroomError) as info:
        FixedPointCodec(frac_bits=52, n_peers=2048, max_abs_value=1.0)
    assert "2048" in str(info.value)
    assert SIGNED_LIMIT_TEXT in str(info.value)


@pytest.mark.parametrize(
    ("frac_bits", "max_abs_value"), [(16, 1000.0), (30, 3.5), (40, 1e3), (8, 1e12)]
)
def test_every_accepted_configuration_has_headroom_for_its_worst_case(
    frac_bits: int, max_abs_value: float
) -> None:
    worst_integer = math.ceil(max_abs_value * 2**frac_bits)  # rounding up at the extreme
    largest_safe_n = SIGNED_LIMIT // worst_integer
    too_many = SIGNED_LIMIT // worst_integer + 1
    assert too_many * worst_integer > SIGNED_LIMIT
    with pytest.raises(HeadroomError):
        FixedPointCodec(frac_bits=frac_bits, n_peers=too_many, max_abs_value=max_abs_value)
    # Whatever n the codec accepts, n · worst_integer must fit the signed ring.
    accepted = [
        n
        for n in (1, 2, largest_safe_n // 2, largest_safe_n - 1, largest_safe_n)
        if n >= 1 and _constructs(frac_bits, n, max_abs_value)
    ]
    assert 1 in accepted
    for n in accepted:
        assert n * worst_integer <= SIGNED_LIMIT


def _constructs(frac_bits: int, n_peers: int, max_abs_value: float) -> bool:
    try:
        FixedPointCodec(frac_bits=frac_bits, n_peers=n_peers, max_abs_value=max_abs_value)
    except HeadroomError:
        return False
    return True


def test_largest_accepted_peer_count_sums_worst_case_values_exactly() -> None:
    codec = FixedPointCodec(frac_bits=52, n_peers=2047, max_abs_value=1.0)
    values = np.array([1.0, -1.0, 0.5, -(1 - 2**-52)])
    encoded = codec.encode(values, _rng())
    assert encoded.max_abs == 2**52
    total = encoded.ring * np.uint64(codec.n_peers)  # n identical encodings, mod 2^64
    assert np.array_equal(codec.decode(total), values * codec.n_peers)


# --------------------------------------------------------------------------- encode / decode


@settings(max_examples=50, deadline=None)
@given(
    frac_bits=st.integers(0, 40),
    seed=st.integers(0, 2**32 - 1),
    count=st.integers(0, 64),
)
def test_on_grid_values_round_trip_exactly(frac_bits: int, seed: int, count: int) -> None:
    codec = FixedPointCodec(frac_bits=frac_bits, n_peers=4, max_abs_value=1000.0)
    values = _grid_values(codec, count, seed)
    assert codec.on_grid(values)
    encoded = codec.encode(values, _rng(seed))
    assert encoded.ring.dtype == np.uint64
    assert encoded.ring.shape == (count,)
    assert np.array_equal(codec.decode(encoded.ring), values)
    assert np.array_equal(lift(encoded.ring), (values * codec.scale).astype(np.int64))
    expected_max = int(np.max(np.abs(values * codec.scale))) if count else 0
    assert encoded.max_abs == expected_max
    assert encoded.clipped is False


def test_round_trip_of_extreme_on_grid_values() -> None:
    codec = FixedPointCodec(frac_bits=20, n_peers=3, max_abs_value=4.0)
    values = np.array([4.0, -4.0, 2**-20, -(2**-20), 0.0, -0.0, 4.0 - 2**-20])
    encoded = codec.encode(values, _rng())
    assert np.array_equal(codec.decode(encoded.ring), values)
    assert encoded.max_abs == 4 * 2**20


def test_encode_flattens_in_c_order() -> None:
    codec = FixedPointCodec(frac_bits=4, n_peers=2, max_abs_value=100.0)
    matrix = np.arange(12, dtype=np.float64).reshape(3, 4) / 16
    encoded = codec.encode(matrix, _rng())
    assert np.array_equal(codec.decode(encoded.ring), matrix.reshape(-1))
    fortran = np.asfortranarray(matrix)
    assert np.array_equal(codec.encode(fortran, _rng()).ring, encoded.ring)


def test_float32_and_integer_inputs_encode_like_float64() -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=100.0)
    reference = codec.encode(np.array([1.5, -2.25, 3.0]), _rng()).ring
    assert np.array_equal(
        codec.encode(np.array([1.5, -2.25, 3.0], np.float32), _rng()).ring, reference
    )
    ints = codec.encode(np.array([1, -2, 3], dtype=np.int32), _rng())
    assert np.array_equal(codec.decode(ints.ring), [1.0, -2.0, 3.0])


def test_empty_vector_encodes_to_empty_ring_vector() -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=1.0)
    encoded = codec.encode(np.array([], dtype=np.float64), _rng())
    assert encoded.ring.shape == (0,)
    assert encoded.max_abs == 0
    assert encoded.l2_norm == 0.0
    assert codec.decode(encoded.ring).shape == (0,)


@pytest.mark.parametrize(
    ("value", "probability_up"),
    [(2.3, 0.3), (-2.3, 0.7), (0.1, 0.1), (-0.5, 0.5), (7.9, 0.9), (-7.25, 0.75)],
)
def test_stochastic_rounding_is_unbiased_and_within_one_unit(
    value: float, probability_up: float
) -> None:
    # frac_bits = 0, so the unit is 1. Each encoded entry is floor(x) + Bernoulli(p), whose
    # variance is p(1 − p) ≤ 1/4; the mean of N = 200 000 draws has standard deviation
    # ≤ 0.5/√N ≈ 0.0011. A tolerance of 0.008 is > 7σ (so the fixed seed is far from
    # the edge) yet 12× smaller than the smallest bias a non-stochastic rounding would
    # show here (|p − round(p)| ≥ 0.1).
    count = 200_000
    codec = FixedPointCodec(frac_bits=0, n_peers=2, max_abs_value=10.0)
    encoded = codec.encode(np.full(count, value), np.random.default_rng(20240601))
    integers = lift(encoded.ring)
    low = math.floor(value)
    assert set(np.unique(integers).tolist()) == {low, low + 1}
    assert np.all(np.abs(integers - value) < 1.0)
    assert abs(float(np.mean(integers)) - value) < 0.008
    assert abs(float(np.mean(integers == low + 1)) - probability_up) < 0.008


def test_stochastic_rounding_mean_matches_input_at_fine_precision() -> None:
    # Many distinct off-grid values: the decoded mean over 400 draws each is within
    # 6 · 0.5/√400 = 0.15 units of every input (fixed seed; each bound is a 6σ bound).
    codec = FixedPointCodec(frac_bits=16, n_peers=2, max_abs_value=1.0)
    rng = np.random.default_rng(7)
    inputs = rng.uniform(-1.0, 1.0, size=50)
    assert not codec.on_grid(inputs)
    repeats = 400
    encoded = codec.encode(np.repeat(inputs, repeats), rng)
    scaled = lift(encoded.ring).reshape(50, repeats).astype(np.float64)
    exact = inputs * codec.scale
    assert np.all(np.abs(scaled - exact[:, None]) < 1.0)
    assert np.all(np.abs(scaled.mean(axis=1) - exact) < 0.15)


def test_stochastic_rounding_is_reproducible_for_a_seeded_generator() -> None:
    codec = FixedPointCodec(frac_bits=3, n_peers=2, max_abs_value=10.0)
    values = np.linspace(-9.9, 9.9, 101)
    first = codec.encode(values, np.random.default_rng(5)).ring
    second = codec.encode(values, np.random.default_rng(5)).ring
    other = codec.encode(values, np.random.default_rng(6)).ring
    assert np.array_equal(first, second)
    assert not np.array_equal(first, other)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_rejected(bad: float) -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=10.0)
    with pytest.raises(EncodingError, match="1 NaN/inf"):
        codec.encode(np.array([0.5, bad, 1.0]), _rng())


def test_non_finite_count_is_reported() -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=10.0)
    with pytest.raises(EncodingError, match="3 NaN/inf"):
        codec.encode(np.array([math.nan, 1.0, math.inf, -math.inf]), _rng())


def test_non_finite_values_are_rejected_even_when_clipping() -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=10.0)
    with pytest.raises(EncodingError, match="NaN/inf"):
        codec.encode(np.array([math.nan, 1.0]), _rng(), clip_norm=1.0)


@pytest.mark.parametrize(
    "array",
    [
        np.array([1 + 2j, 3j]),
        np.array([True, False]),
        np.array(["1.0", "2.0"]),
        np.array([1.0, 2.0], dtype=object),
        np.array(["2024-01-01"], dtype="datetime64[D]"),
    ],
    ids=["complex", "bool", "str", "object", "datetime"],
)
def test_non_float_dtypes_are_rejected(array: np.ndarray) -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=10.0)
    with pytest.raises(EncodingError, match="dtype"):
        codec.encode(array, _rng())


@pytest.mark.parametrize("value", [10.000001, -10.5, 1e30])
def test_values_above_max_abs_value_raise_instead_of_clipping(value: float) -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=10.0)
    with pytest.raises(EncodingError, match="max_abs_value") as info:
        codec.encode(np.array([0.0, value]), _rng())
    assert not isinstance(info.value, HeadroomError)


def test_values_exactly_at_max_abs_value_are_accepted() -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=10.0)
    encoded = codec.encode(np.array([10.0, -10.0]), _rng())
    assert np.array_equal(codec.decode(encoded.ring), [10.0, -10.0])


def test_clip_norm_scales_down_and_reports_it() -> None:
    codec = FixedPointCodec(frac_bits=20, n_peers=2, max_abs_value=10.0)
    encoded = codec.encode(np.array([3.0, -4.0]), _rng(), clip_norm=1.0)
    assert encoded.clipped is True
    assert encoded.l2_norm == 5.0
    decoded = codec.decode(encoded.ring)
    assert np.all(np.abs(decoded - np.array([0.6, -0.8])) <= 1 / codec.scale)
    assert abs(float(np.linalg.norm(decoded)) - 1.0) <= 2 / codec.scale


def test_clip_norm_makes_an_otherwise_out_of_range_update_encodable() -> None:
    codec = FixedPointCodec(frac_bits=20, n_peers=2, max_abs_value=1.0)
    update = np.array([30.0, 40.0])
    with pytest.raises(EncodingError):
        codec.encode(update, _rng())
    encoded = codec.encode(update, _rng(), clip_norm=1.0)
    assert encoded.clipped is True
    assert encoded.l2_norm == 50.0


def test_no_clip_when_under_the_norm() -> None:
    codec = FixedPointCodec(frac_bits=20, n_peers=2, max_abs_value=10.0)
    values = np.array([0.75, -0.5, 0.25])
    encoded = codec.encode(values, _rng(), clip_norm=2.0)
    assert encoded.clipped is False
    assert encoded.l2_norm == pytest.approx(math.sqrt(0.875), rel=1e-15)
    assert np.array_equal(codec.decode(encoded.ring), values)


def test_no_clip_exactly_at_the_norm() -> None:
    codec = FixedPointCodec(frac_bits=20, n_peers=2, max_abs_value=10.0)
    encoded = codec.encode(np.array([3.0, 4.0]), _rng(), clip_norm=5.0)
    assert encoded.clipped is False
    assert np.array_equal(codec.decode(encoded.ring), [3.0, 4.0])


@pytest.mark.parametrize("clip_norm", [0.0, -1.0, math.nan, math.inf])
def test_bad_clip_norm_is_rejected(clip_norm: float) -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=10.0)
    with pytest.raises(EncodingError, match="clip_norm"):
        codec.encode(np.array([1.0]), _rng(), clip_norm=clip_norm)


@settings(max_examples=30, deadline=None)
@given(n_peers=st.integers(1, 12), seed=st.integers(0, 2**32 - 1), frac_bits=st.integers(0, 30))
def test_decoded_sum_of_n_encodings_equals_sum_of_inputs(
    n_peers: int, seed: int, frac_bits: int
) -> None:
    codec = FixedPointCodec(frac_bits=frac_bits, n_peers=n_peers, max_abs_value=500.0)
    inputs = [_grid_values(codec, 33, seed + i) for i in range(n_peers)]
    total = zeros(33)
    rng = _rng(seed)
    for values in inputs:
        add_into(total, codec.encode(values, rng).ring)
    assert np.array_equal(codec.decode(total), np.sum(inputs, axis=0))


def test_decoded_sum_with_all_peers_at_negative_extreme() -> None:
    codec = FixedPointCodec(frac_bits=10, n_peers=5, max_abs_value=3.0)
    total = zeros(2)
    for _ in range(codec.n_peers):
        add_into(total, codec.encode(np.array([-3.0, 3.0]), _rng()).ring)
    assert np.array_equal(codec.decode(total), [-15.0, 15.0])


@pytest.mark.parametrize("length", [0, 1, 5, (1 << 18) + 3])
def test_decode_overwrite_gives_the_same_floats_in_the_totals_own_buffer(length: int) -> None:
    codec = FixedPointCodec(frac_bits=16, n_peers=4, max_abs_value=100.0)
    total = np.random.default_rng(length).integers(-(1 << 40), 1 << 40, size=length)
    ring = total.astype(np.int64).view(np.uint64)
    expected = codec.decode(ring)
    decoded = codec.decode(ring, overwrite=True)
    assert decoded.dtype == np.float64
    assert np.array_equal(decoded, expected)
    assert length == 0 or np.shares_memory(decoded, ring)
    frozen = total.astype(np.int64).view(np.uint64)
    frozen.flags.writeable = False  # not ours to overwrite: decoded into a new array
    again = codec.decode(frozen, overwrite=True)
    assert np.array_equal(again, expected)
    assert not np.shares_memory(again, frozen)


def test_decode_rejects_non_ring_input() -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=10.0)
    with pytest.raises(EncodingError):
        codec.decode(np.array([1, 2], dtype=np.int64))


def test_on_grid_distinguishes_grid_points() -> None:
    codec = FixedPointCodec(frac_bits=2, n_peers=2, max_abs_value=10.0)
    assert codec.on_grid(np.array([0.25, -1.75, 3.0]))
    assert not codec.on_grid(np.array([0.25, 0.125]))


def test_encoded_update_repr_hides_the_ring_vector() -> None:
    codec = FixedPointCodec(frac_bits=8, n_peers=2, max_abs_value=1000.0)
    encoded = codec.encode(np.array([987.654321, 3.5]), _rng())
    assert int(lift(encoded.ring)[1]) == 896
    text = repr(encoded)
    assert "ring=" not in text
    assert "array" not in text
    assert "896" not in text
