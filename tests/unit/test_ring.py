"""Ring Z_2^64: two's-complement embedding, wrapping arithmetic, shape checks."""

from __future__ import annotations

import numpy as np
import pytest

from mpc_agg.errors import EncodingError
from mpc_agg.ring import (
    RING_DTYPE,
    SIGNED_LIMIT,
    add_into,
    check_ring_vector,
    embed,
    lift,
    narrow32,
    sub_into,
    widen32_in_place,
    zeros,
)

MODULUS = 1 << 64
INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1


def _ring(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


def test_signed_limit_is_2_63_minus_1() -> None:
    assert SIGNED_LIMIT == 2**63 - 1
    assert np.dtype(np.uint64) == RING_DTYPE


def test_zeros() -> None:
    vector = zeros(5)
    assert vector.dtype == np.uint64
    assert vector.shape == (5,)
    assert not vector.any()


def test_embed_uses_twos_complement_including_extremes() -> None:
    signed = np.array([0, 1, -1, INT64_MAX, INT64_MIN, -2, 12345, -12345], dtype=np.int64)
    ring = embed(signed)
    assert ring.dtype == np.uint64
    assert [int(v) for v in ring] == [int(v) % MODULUS for v in signed]
    assert int(ring[2]) == MODULUS - 1
    assert int(ring[3]) == 2**63 - 1
    assert int(ring[4]) == 2**63


def test_lift_inverts_embed_including_extremes() -> None:
    signed = np.array([INT64_MIN, INT64_MIN + 1, -1, 0, 1, INT64_MAX - 1, INT64_MAX], np.int64)
    assert np.array_equal(lift(embed(signed)), signed)
    ring = _ring([0, 2**63 - 1, 2**63, MODULUS - 1])
    assert lift(ring).tolist() == [0, INT64_MAX, INT64_MIN, -1]
    assert np.array_equal(embed(lift(ring)), ring)


def test_random_round_trip() -> None:
    signed = np.random.default_rng(3).integers(INT64_MIN, INT64_MAX, size=1000, dtype=np.int64)
    assert np.array_equal(lift(embed(signed)), signed)


def test_embed_copies_and_handles_non_contiguous_input() -> None:
    signed = np.arange(-10, 10, dtype=np.int64)
    strided = signed[::3]
    ring = embed(strided)
    assert ring.flags.c_contiguous
    assert lift(ring).tolist() == strided.tolist()
    signed[0] = 99
    assert int(lift(ring)[0]) == -10


def test_lift_is_a_view() -> None:
    ring = _ring([1, 2, 3])
    assert np.shares_memory(lift(ring), ring)


@pytest.mark.parametrize("dtype", [np.int32, np.uint64, np.float64])
def test_embed_rejects_non_int64(dtype: type[np.generic]) -> None:
    with pytest.raises(EncodingError, match="int64"):
        embed(np.array([1, 2], dtype=dtype))


def test_add_into_wraps_modulo_2_64() -> None:
    accumulator = _ring([MODULUS - 1, 2**63, 5, MODULUS - 3])
    add_into(accumulator, _ring([1, 2**63, 7, 10]))
    assert accumulator.tolist() == [0, 0, 12, 7]


def test_sub_into_wraps_modulo_2_64() -> None:
    accumulator = _ring([0, 5, 2**63, 3])
    sub_into(accumulator, _ring([1, 7, 2**63 + 1, 3]))
    assert accumulator.tolist() == [MODULUS - 1, MODULUS - 2, MODULUS - 1, 0]


def test_add_and_sub_match_python_integers_on_random_vectors() -> None:
    rng = np.random.default_rng(11)
    a = rng.integers(0, MODULUS, size=500, dtype=np.uint64)
    b = rng.integers(0, MODULUS, size=500, dtype=np.uint64)
    total = a.copy()
    add_into(total, b)
    assert total.tolist() == [(int(x) + int(y)) % MODULUS for x, y in zip(a, b, strict=True)]
    difference = a.copy()
    sub_into(difference, b)
    assert difference.tolist() == [(int(x) - int(y)) % MODULUS for x, y in zip(a, b, strict=True)]
    sub_into(total, b)
    assert np.array_equal(total, a)


def test_signed_sum_decodes_through_wraparound() -> None:
    # −5 + 3 + 1 = −1: intermediate ring values wrap, the lifted sum is exact.
    total = zeros(1)
    for value in (-5, 3, 1):
        add_into(total, embed(np.array([value], dtype=np.int64)))
    assert lift(total).tolist() == [-1]


def test_check_ring_vector_accepts_valid_vectors() -> None:
    check_ring_vector(zeros(4))
    check_ring_vector(zeros(4), length=4)
    check_ring_vector(zeros(0), length=0)


def test_check_ring_vector_rejects_non_arrays() -> None:
    with pytest.raises(EncodingError, match="numpy array, got list"):
        check_ring_vector([1, 2, 3])


@pytest.mark.parametrize("dtype", [np.int64, np.uint32, np.float64, np.dtype(">u8")])
def test_check_ring_vector_rejects_wrong_dtype(dtype: np.dtype[np.generic]) -> None:
    with pytest.raises(EncodingError, match="dtype uint64"):
        check_ring_vector(np.zeros(3, dtype=dtype), name="mask")


@pytest.mark.parametrize("shape", [(), (2, 2), (1, 3, 1)])
def test_check_ring_vector_rejects_wrong_ndim(shape: tuple[int, ...]) -> None:
    with pytest.raises(EncodingError, match="1-D"):
        check_ring_vector(np.zeros(shape, dtype=np.uint64))


def test_check_ring_vector_rejects_wrong_length_and_names_it() -> None:
    with pytest.raises(EncodingError, match=r"share has 3 entries, expected 4"):
        check_ring_vector(zeros(3), length=4, name="share")


@pytest.mark.parametrize(
    "length", [0, 1, 2, 3, (1 << 15) - 1, 1 << 15, (1 << 15) + 1, 3 * (1 << 15) + 7]
)
def test_widen32_in_place_sign_extends_the_first_half(length: int) -> None:
    rng = np.random.default_rng(length)
    words = rng.integers(-(1 << 31), 1 << 31, length, dtype=np.int32)
    if length >= 2:
        words[:2] = [-(1 << 31), (1 << 31) - 1]  # the extremes
    buffer = np.empty(length, dtype=RING_DTYPE)
    buffer.view(np.int32)[:length] = words
    assert widen32_in_place(buffer) is buffer
    assert np.array_equal(lift(buffer), words.astype(np.int64))


def test_widen32_in_place_rejects_other_buffers() -> None:
    with pytest.raises(EncodingError, match="writable 1-D C-contiguous uint64"):
        widen32_in_place(np.zeros(4, dtype=np.int64))
    with pytest.raises(EncodingError, match="writable 1-D C-contiguous uint64"):
        widen32_in_place(np.zeros(8, dtype=RING_DTYPE)[::2])


@pytest.mark.parametrize("length", [1, 2, (1 << 15) - 1, 1 << 15, (1 << 15) + 1, 3 * (1 << 15) + 7])
def test_narrow32_keeps_the_low_words_and_reports_the_range(length: int) -> None:
    rng = np.random.default_rng(length)
    signed = rng.integers(-(1 << 40), 1 << 40, length, dtype=np.int64)
    words, low, high = narrow32(signed.view(RING_DTYPE))
    assert words.dtype == np.uint32
    assert np.array_equal(words, (signed % (1 << 32)).astype(np.uint32))
    assert (low, high) == (int(signed.min()), int(signed.max()))
    positive = np.abs(signed) + 5  # a minimum above zero, in the last block only
    positive[-1] = 3
    assert narrow32(positive.view(RING_DTYPE))[1:] == (3, int(positive.max()))


def test_narrow32_of_an_empty_vector_is_an_empty_span() -> None:
    words, low, high = narrow32(np.zeros(0, dtype=RING_DTYPE))
    assert words.shape == (0,)
    assert (low, high) == (0, -1)


def test_narrow32_reads_a_strided_vector() -> None:
    signed = np.arange(-10, 10, dtype=np.int64)
    words, low, high = narrow32(signed.view(RING_DTYPE)[::2])
    assert np.array_equal(words.view(np.int32), signed[::2])
    assert (low, high) == (-10, 8)
