"""Z_2^32 rounds below the protocol: wire words, reduction, headroom and configuration."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mpc_agg.codec import InvalidValueError, Reader, TruncatedError, Writer
from mpc_agg.errors import HeadroomError
from mpc_agg.fixedpoint import FixedPointCodec
from mpc_agg.ring import lift, reduce_mod
from peers.config import ConfigError, load_federation
from peers.init import init_federation
from protocols.secagg.messages import MaskedInput

words = st.lists(st.integers(0, (1 << 64) - 1), min_size=0, max_size=40)


@given(words)
def test_a_32_bit_wire_vector_carries_each_word_mod_2_32(values: list[int]) -> None:
    vector = np.array(values, dtype=np.uint64)
    data = Writer().u8(7).ring_vector32(vector, 64).getvalue()
    assert len(data) == 1 + 8 + 3 + 4 * len(values)  # count, padding to 4, 4-byte words
    reader = Reader(data)
    assert reader.u8() == 7
    read = reader.ring_vector32(64)
    reader.finish()
    assert read.dtype == np.uint32
    assert read.tolist() == [v % (1 << 32) for v in values]


def test_a_32_bit_wire_vector_is_read_strictly() -> None:
    data = Writer().u8(1).ring_vector32(np.arange(5, dtype=np.uint64), 8).getvalue()
    reader = Reader(data[:-1])
    reader.u8()
    with pytest.raises(TruncatedError):
        reader.ring_vector32(8)
    dirty = bytearray(data)
    dirty[9] = 1  # a padding byte
    reader = Reader(bytes(dirty))
    reader.u8()
    with pytest.raises(InvalidValueError, match="padding"):
        reader.ring_vector32(8)


@given(st.lists(st.integers(-(1 << 31), (1 << 31) - 1), max_size=40), st.integers(0, 1 << 20))
def test_reduce_mod_32_recovers_any_signed_32_bit_value_from_its_ring_words(
    values: list[int], offset: int
) -> None:
    # the same residues mod 2^32 as values, with arbitrary high bits (as after masking)
    noisy = [(v + (offset << 32)) % (1 << 64) for v in values]
    vector = np.array(noisy, dtype=np.uint64)
    reduce_mod(vector, 32)
    assert lift(vector).tolist() == values


def test_reduce_mod_64_changes_nothing() -> None:
    vector = np.array([1, 1 << 63, (1 << 64) - 1], dtype=np.uint64)
    before = vector.copy()
    reduce_mod(vector, 64)
    assert np.array_equal(vector, before)


def test_the_codec_checks_headroom_against_the_ring_it_sums_in() -> None:
    codec = FixedPointCodec(frac_bits=20, n_peers=10, max_abs_value=1.0)
    assert codec.fits_ring(32)
    assert not FixedPointCodec(frac_bits=28, n_peers=10, max_abs_value=1.0).fits_ring(32)
    with pytest.raises(HeadroomError, match=r"2\^31−1"):
        FixedPointCodec(frac_bits=28, n_peers=10, max_abs_value=1.0, ring_bits=32)
    small = FixedPointCodec(frac_bits=20, n_peers=10, max_abs_value=1.0, ring_bits=32)
    encoded = small.encode(np.array([1.0, -1.0, 0.5]), np.random.default_rng(0))
    assert encoded.max_abs == 1 << 20


def test_a_masked_input_names_its_ring_and_is_refused_in_another() -> None:
    message = MaskedInput(
        mask_set=(1, 2),
        complaints=(),
        masked=np.array([1, (1 << 64) - 1, 1 << 40], dtype=np.uint64),
        ring_bits=32,
    )
    data = message.encode()
    decoded = MaskedInput.decode(data, vector_length=3, ring_bits=32)
    assert decoded.masked.tolist() == [1, (1 << 32) - 1, 0]
    with pytest.raises(InvalidValueError, match=r"Z_2\^32, the round's ring is Z_2\^64"):
        MaskedInput.decode(data, vector_length=3, ring_bits=64)
    with pytest.raises(InvalidValueError, match="ring_bits"):
        MaskedInput(mask_set=(), complaints=(), masked=np.zeros(1, np.uint64), ring_bits=48)


def _federation(tmp_path: Path, encoding: str) -> Path:
    init_federation(tmp_path, sites=3, broker_port=1883, federation_id="ring32")
    toml = tmp_path / "federation.toml"
    toml.write_text(toml.read_text().replace("[encoding]\n", f"[encoding]\n{encoding}"))
    return toml


def test_ring_bits_in_the_config(tmp_path: Path) -> None:
    assert load_federation(_federation(tmp_path / "a", "")).encoding.ring_bits is None
    assert load_federation(_federation(tmp_path / "b", "ring_bits = 64\n")).encoding.ring_bits == 64
    with pytest.raises(ConfigError, match=r"ring_bits.*32 or 64"):
        load_federation(_federation(tmp_path / "c", "ring_bits = 48\n"))
    # frac_bits 30 at n = 3 does not fit Z_2^32: named, not wrapped
    toml = _federation(tmp_path / "d", "ring_bits = 32\n")
    toml.write_text(toml.read_text().replace("frac_bits = 20", "frac_bits = 30"))
    with pytest.raises(ConfigError, match="ring_bits"):
        load_federation(toml)


def _rs_federation(tmp_path: Path, encoding: str = "") -> Path:
    toml = _federation(tmp_path, encoding)
    toml.write_text(
        toml.read_text().replace("[federation]\n", "[federation]\nreduce_scatter = true\n")
    )
    return toml


def test_reduce_scatter_in_the_config(tmp_path: Path) -> None:
    """``[federation] reduce_scatter`` (secagg SPEC §6.7): read, and refused where the 32-bit
    ring cannot be used, with the key named."""
    assert load_federation(_federation(tmp_path / "a", "")).reduce_scatter is False
    assert load_federation(_rs_federation(tmp_path / "b")).reduce_scatter is True
    with pytest.raises(ConfigError, match=r"reduce_scatter.*32-bit ring"):
        load_federation(_rs_federation(tmp_path / "c", "ring_bits = 64\n"))
    toml = _rs_federation(tmp_path / "d")
    toml.write_text(toml.read_text().replace("frac_bits = 20", "frac_bits = 30"))
    with pytest.raises(ConfigError, match="reduce_scatter"):
        load_federation(toml)
    toml = _rs_federation(tmp_path / "e")
    toml.write_text(toml.read_text() + "\n[dp]\nnoise_multiplier = 1.0\nclip_norm = 1.0\n")
    with pytest.raises(ConfigError, match=r"reduce_scatter|dp"):
        load_federation(toml)


def test_init_writes_reduce_scatter(tmp_path: Path) -> None:
    """``mpc-agg init --reduce-scatter`` writes the key, and refuses it with robust or DP."""
    toml = init_federation(tmp_path / "a", sites=5, broker_port=1883, reduce_scatter=True)
    assert load_federation(toml).reduce_scatter is True
    with pytest.raises(ValueError, match="reduce_scatter"):
        init_federation(
            tmp_path / "b",
            sites=5,
            broker_port=1883,
            protocol="robust",
            max_norm=1.0,
            reduce_scatter=True,
        )
