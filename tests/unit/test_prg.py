"""AES-256-CTR mask expansion: keystream layout, chunked application, domain separation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from Crypto.Cipher import AES as PYCRYPTODOME_AES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpc_agg.prg import (
    CHUNK_WORDS,
    MaskTerm,
    apply_masks,
    expand,
    keystream_blocks,
    mask_info,
    mask_key,
)

LENGTHS = [0, 1, CHUNK_WORDS - 1, CHUNK_WORDS, CHUNK_WORDS + 1, 3 * CHUNK_WORDS + 5]
KEYS = [bytes([i]) * 32 for i in (1, 2, 3)]


def _keystream_words(key: bytes, length: int) -> np.ndarray:
    """AES-256-CTR(key, iv = 16 zero bytes) as little-endian uint64 words, via `cryptography`."""
    encryptor = Cipher(algorithms.AES(key), modes.CTR(bytes(16))).encryptor()
    stream = encryptor.update(bytes(8 * length)) + encryptor.finalize()
    return np.frombuffer(stream, dtype="<u8").astype(np.uint64)


def test_expand_known_answer_for_the_zero_key() -> None:
    # AES-256(key = 0^32, block = 0^16) = dc95c078a2408989ad48a21492842087 (the first
    # CTR block with a zero counter), read as two little-endian words.
    block = bytes.fromhex("dc95c078a2408989ad48a21492842087")
    expected = [int.from_bytes(block[:8], "little"), int.from_bytes(block[8:], "little")]
    assert expand(bytes(32), 2).tolist() == expected


@pytest.mark.parametrize("length", LENGTHS)
def test_expand_equals_independent_aes_ctr_keystream(length: int) -> None:
    key = bytes(range(32))
    out = expand(key, length)
    assert out.dtype == np.uint64
    assert out.shape == (length,)
    assert np.array_equal(out, _keystream_words(key, length))


def test_expand_matches_pycryptodome_with_full_128_bit_counter() -> None:
    key = bytes(range(100, 132))
    length = CHUNK_WORDS + 7
    cipher = PYCRYPTODOME_AES.new(key, PYCRYPTODOME_AES.MODE_CTR, nonce=b"", initial_value=0)
    stream = cipher.encrypt(bytes(8 * length))
    assert np.array_equal(expand(key, length), np.frombuffer(stream, dtype="<u8"))


def test_expand_prefixes_agree_and_keys_differ() -> None:
    long = expand(KEYS[0], 100)
    assert np.array_equal(expand(KEYS[0], 10), long[:10])
    assert not np.array_equal(expand(KEYS[1], 100), long)


def _expected_sum(initial: np.ndarray, terms: Sequence[MaskTerm]) -> np.ndarray:
    expected = initial.copy()
    for term in terms:
        stream = _keystream_words(term.key, initial.shape[0])
        expected = expected + stream if term.sign > 0 else expected - stream  # wraps mod 2^64
    return expected


@pytest.mark.parametrize("length", LENGTHS)
def test_apply_masks_equals_signed_sum_of_expansions(length: int) -> None:
    initial = np.random.default_rng(length).integers(0, 2**64, size=length, dtype=np.uint64)
    terms = [MaskTerm(KEYS[0], +1), MaskTerm(KEYS[1], -1), MaskTerm(KEYS[2], +1)]
    accumulator = initial.copy()
    apply_masks(accumulator, terms)
    assert np.array_equal(accumulator, _expected_sum(initial, terms))
    by_expand = initial + expand(KEYS[0], length) - expand(KEYS[1], length)
    by_expand += expand(KEYS[2], length)
    assert np.array_equal(accumulator, by_expand)


@pytest.mark.parametrize("length", [1, CHUNK_WORDS + 1, 3 * CHUNK_WORDS + 5])
def test_apply_masks_with_caller_scratch_and_initial_zero(length: int) -> None:
    terms = [MaskTerm(KEYS[1], -1), MaskTerm(KEYS[2], +1)]
    accumulator = np.full(length, 77, dtype=np.uint64)
    scratch = np.full(CHUNK_WORDS + 3, 5, dtype=np.uint64)
    apply_masks(accumulator, terms, initial_zero=True, scratch=scratch)
    assert np.array_equal(accumulator, _expected_sum(np.zeros(length, np.uint64), terms))


def test_apply_masks_ignores_a_too_small_scratch() -> None:
    length = CHUNK_WORDS + 9
    accumulator = np.zeros(length, dtype=np.uint64)
    small = np.zeros(16, dtype=np.uint64)
    apply_masks(accumulator, [MaskTerm(KEYS[0], +1)], scratch=small)
    assert np.array_equal(accumulator, _keystream_words(KEYS[0], length))
    assert not small.any()


def test_apply_masks_without_terms() -> None:
    accumulator = np.arange(10, dtype=np.uint64)
    apply_masks(accumulator, [])
    assert accumulator.tolist() == list(range(10))
    apply_masks(accumulator, [], initial_zero=True)
    assert not accumulator.any()


@pytest.mark.parametrize("length", [0, 1, 3 * CHUNK_WORDS + 5])
def test_opposite_masks_cancel(length: int) -> None:
    initial = np.random.default_rng(1).integers(0, 2**64, size=length, dtype=np.uint64)
    accumulator = initial.copy()
    apply_masks(accumulator, [MaskTerm(KEYS[0], +1), MaskTerm(KEYS[1], +1)])
    if length:
        assert not np.array_equal(accumulator, initial)
    apply_masks(accumulator, [MaskTerm(KEYS[1], -1), MaskTerm(KEYS[0], -1)])
    assert np.array_equal(accumulator, initial)


def test_pairwise_masks_cancel_in_the_sum() -> None:
    # Party 1 adds PRG(k12), party 2 subtracts it: the sum of masked inputs is the plain sum.
    length = CHUNK_WORDS + 2
    x1 = np.random.default_rng(1).integers(0, 2**64, size=length, dtype=np.uint64)
    x2 = np.random.default_rng(2).integers(0, 2**64, size=length, dtype=np.uint64)
    y1, y2 = x1.copy(), x2.copy()
    apply_masks(y1, [MaskTerm(KEYS[2], +1)])
    apply_masks(y2, [MaskTerm(KEYS[2], -1)])
    assert not np.array_equal(y1, x1)
    assert np.array_equal(y1 + y2, x1 + x2)


@pytest.mark.parametrize("dtype", [np.uint64, np.uint32])
@pytest.mark.parametrize("length", [0, 1, CHUNK_WORDS - 1, CHUNK_WORDS, 2 * CHUNK_WORDS + 7])
def test_keystream_blocks_concatenate_to_expand(length: int, dtype: type[Any]) -> None:
    key = bytes(range(32))
    blocks = [block.copy() for block in keystream_blocks(key, length, dtype)]  # one buffer
    assert all(0 < len(b) <= CHUNK_WORDS and b.dtype == dtype for b in blocks)
    joined = np.concatenate(blocks) if blocks else np.zeros(0, dtype=dtype)
    assert np.array_equal(joined, expand(key, length, dtype))


def test_keystream_blocks_of_uint32_are_the_uint64_stream_split() -> None:
    # the same keystream bytes, read as twice as many little-endian 32-bit words
    key = bytes(range(32))
    wide = expand(key, CHUNK_WORDS + 3)
    narrow = np.concatenate(
        [b.copy() for b in keystream_blocks(key, 2 * CHUNK_WORDS + 6, np.uint32)]
    )
    assert np.array_equal(narrow, wide.view(np.uint32))


def test_keystream_blocks_refuse_other_word_types() -> None:
    with pytest.raises(TypeError, match="uint64 or uint32"):
        next(keystream_blocks(bytes(32), 4, np.uint16))


def test_mask_term_repr_hides_the_key() -> None:
    term = MaskTerm(bytes(range(32)), -1)
    assert repr(term) == "MaskTerm(sign=-1)"
    assert bytes(range(32)).hex()[:8] not in repr(term)


# --------------------------------------------------------------------------- key derivation


@dataclass(frozen=True)
class InfoFields:
    protocol: str = "secagg/1"
    federation: str = "hospitals-eu"
    round_id: int = 7
    purpose: str = "pairwise"
    parties: tuple[int, ...] = (1, 2)

    def info(self) -> bytes:
        return mask_info(
            protocol=self.protocol,
            federation=self.federation,
            round_id=self.round_id,
            purpose=self.purpose,
            parties=self.parties,
        )


def test_mask_info_is_deterministic() -> None:
    assert InfoFields().info() == InfoFields().info()
    assert InfoFields().info().startswith(b"mpc-agg/mask/v1")


@pytest.mark.parametrize(
    "changed",
    [
        InfoFields(protocol="secagg/2"),
        InfoFields(federation="hospitals-us"),
        InfoFields(round_id=8),
        InfoFields(round_id=7 + (1 << 32)),
        InfoFields(purpose="self"),
        InfoFields(parties=(2, 1)),
        InfoFields(parties=(1, 3)),
        InfoFields(parties=(1, 2, 3)),
        InfoFields(parties=(1,)),
        InfoFields(parties=()),
    ],
    ids=repr,
)
def test_mask_info_differs_when_any_field_differs(changed: InfoFields) -> None:
    assert changed.info() != InfoFields().info()


def test_mask_info_fields_cannot_be_shifted_into_each_other() -> None:
    assert InfoFields(protocol="ab", federation="c").info() != (
        InfoFields(protocol="a", federation="bc").info()
    )
    assert InfoFields(federation="x", purpose="yz").info() != (
        InfoFields(federation="xy", purpose="z").info()
    )


def test_mask_key_is_deterministic_32_bytes_and_separated_by_info() -> None:
    secret = bytes(range(32))
    key = mask_key(secret, InfoFields().info())
    assert len(key) == 32
    assert key == mask_key(secret, InfoFields().info())
    assert key != mask_key(secret, InfoFields(parties=(2, 1)).info())
    assert key != mask_key(bytes(32), InfoFields().info())
    assert key != secret


def test_mask_key_accepts_exactly_128_bits() -> None:
    assert len(mask_key(bytes(16), InfoFields().info())) == 32


@pytest.mark.parametrize("length", [0, 1, 15])
def test_mask_key_rejects_short_secrets(length: int) -> None:
    with pytest.raises(ValueError, match="128 bits"):
        mask_key(bytes(length), InfoFields().info())


@pytest.mark.parametrize("length", [1, 5, CHUNK_WORDS + 3])
def test_32_bit_words_are_4_keystream_bytes_each_and_add_mod_2_32(length: int) -> None:
    """Z_2^32 rounds (secagg SPEC §6.3): each entry takes 4 keystream bytes, not 8."""
    key = bytes(range(50, 82))
    cipher = PYCRYPTODOME_AES.new(key, PYCRYPTODOME_AES.MODE_CTR, nonce=b"", initial_value=0)
    stream = np.frombuffer(cipher.encrypt(bytes(4 * length)), dtype="<u4")
    assert np.array_equal(expand(key, length, np.uint32), stream)
    initial = np.random.default_rng(length).integers(0, 2**32, size=length, dtype=np.uint32)
    accumulator = initial.copy()
    apply_masks(accumulator, [MaskTerm(key, +1), MaskTerm(KEYS[0], -1)])
    other = expand(KEYS[0], length, np.uint32)
    rows = zip(initial.tolist(), stream.tolist(), other.tolist(), strict=True)
    expected = [(a + s - o) % 2**32 for a, s, o in rows]
    assert accumulator.tolist() == expected


def test_apply_masks_refuses_other_word_types() -> None:
    with pytest.raises(TypeError, match="uint64 or uint32"):
        apply_masks(np.zeros(4, dtype=np.int64), [MaskTerm(KEYS[0], +1)])  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("length", LENGTHS)
def test_sources_set_the_accumulator_to_their_sum_before_the_masks(
    dtype: type[np.unsignedinteger], length: int
) -> None:
    rng = np.random.default_rng(length)
    info = np.iinfo(dtype)
    sources = [rng.integers(0, info.max, length, dtype=dtype, endpoint=True) for _ in range(3)]
    terms = [MaskTerm(KEYS[0], +1), MaskTerm(KEYS[1], -1)]
    expected = np.zeros(length, dtype=dtype)
    for source in sources:
        expected += source
    apply_masks(expected, terms)
    garbage = np.full(length, info.max, dtype=dtype)  # previous content is ignored
    apply_masks(garbage, terms, sources=sources)
    assert np.array_equal(garbage, expected)
    # the accumulator may itself be a source (the sum is taken in place in it)
    inside = sources[1].copy()
    apply_masks(inside, terms, sources=[sources[0], inside, sources[2]])
    assert np.array_equal(inside, expected)
    # one source, no terms: a copy; the sources are not modified
    before = [s.copy() for s in sources]
    only = np.empty(length, dtype=dtype)
    apply_masks(only, [], sources=sources[:1])
    assert np.array_equal(only, sources[0])
    assert all(np.array_equal(a, b) for a, b in zip(before, sources, strict=True))


def test_sources_must_match_the_accumulator() -> None:
    accumulator = np.zeros(8, dtype=np.uint32)
    with pytest.raises(ValueError, match="sources must be uint32 vectors of length 8"):
        apply_masks(accumulator, [], sources=[np.zeros(8, dtype=np.uint64)])
    with pytest.raises(ValueError, match="sources must be uint32 vectors of length 8"):
        apply_masks(accumulator, [], sources=[np.zeros(7, dtype=np.uint32)])
