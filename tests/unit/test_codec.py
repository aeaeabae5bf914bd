"""Canonical binary codec: layouts, strict decoding, round trips and fuzzing."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc_agg.codec import (
    InvalidValueError,
    OversizeError,
    Reader,
    TrailingBytesError,
    TruncatedError,
    Writer,
    read_sorted_unique_u16,
    write_u16_set,
)
from mpc_agg.errors import DecodeError

U64_MAX = 2**64 - 1


def _ring(values: list[int]) -> np.ndarray:
    return np.array(values, dtype=np.uint64)


# --------------------------------------------------------------------------- a schema

BLOB_MAX, NAME_MAX, COUNTS_MAX, IDS_MAX, VECTOR_MAX, NOTES_MAX, NOTE_MAX = 40, 64, 6, 8, 12, 4, 9


@dataclass(frozen=True)
class Sample:
    """A message using every Writer/Reader method, with vectors at varying alignments."""

    small: int
    medium: int
    large: int
    huge: int
    tag: bytes
    blob: bytes
    first: tuple[int, ...]
    name: str
    counts: tuple[int, ...]
    ids: tuple[int, ...]
    second: tuple[int, ...]
    notes: tuple[bytes, ...]


def encode_sample(sample: Sample) -> bytes:
    writer = (
        Writer()
        .u8(sample.small)
        .u16(sample.medium)
        .u32(sample.large)
        .u64(sample.huge)
        .fixed(sample.tag, 3)
        .var_bytes(sample.blob, BLOB_MAX)
        .ring_vector(_ring(list(sample.first)), VECTOR_MAX)
        .text(sample.name, NAME_MAX)
        .seq(sample.counts, COUNTS_MAX, Writer.u32)
    )
    write_u16_set(writer, sample.ids, IDS_MAX)
    writer.ring_vector(_ring(list(sample.second)), VECTOR_MAX)
    writer.seq(sample.notes, NOTES_MAX, lambda w, note: w.var_bytes(note, NOTE_MAX))
    return writer.raw(b"!").getvalue()


def decode_sample(data: bytes | memoryview) -> Sample:
    reader = Reader(data)
    sample = Sample(
        small=reader.u8(),
        medium=reader.u16(),
        large=reader.u32(),
        huge=reader.u64(),
        tag=reader.fixed(3),
        blob=reader.var_bytes(BLOB_MAX),
        first=tuple(int(v) for v in reader.ring_vector(VECTOR_MAX)),
        name=reader.text(NAME_MAX),
        counts=tuple(reader.seq(COUNTS_MAX, Reader.u32)),
        ids=read_sorted_unique_u16(reader, IDS_MAX),
        second=tuple(int(v) for v in reader.ring_vector(VECTOR_MAX)),
        notes=tuple(reader.seq(NOTES_MAX, lambda r: r.var_bytes(NOTE_MAX))),
    )
    if reader.fixed(1) != b"!":
        raise InvalidValueError("bad terminator")
    reader.finish()
    return sample


def _vectors() -> st.SearchStrategy[tuple[int, ...]]:
    return st.lists(st.integers(0, U64_MAX), max_size=VECTOR_MAX).map(tuple)


samples = st.builds(
    Sample,
    small=st.integers(0, 0xFF),
    medium=st.integers(0, 0xFFFF),
    large=st.integers(0, 0xFFFF_FFFF),
    huge=st.integers(0, U64_MAX),
    tag=st.binary(min_size=3, max_size=3),
    blob=st.binary(max_size=BLOB_MAX),
    first=_vectors(),
    name=st.text(st.characters(codec="utf-8"), max_size=NAME_MAX // 4),
    counts=st.lists(st.integers(0, 0xFFFF_FFFF), max_size=COUNTS_MAX).map(tuple),
    ids=st.sets(st.integers(0, 0xFFFF), max_size=IDS_MAX).map(lambda s: tuple(sorted(s))),
    second=_vectors(),
    notes=st.lists(st.binary(max_size=NOTE_MAX), max_size=NOTES_MAX).map(tuple),
)

EXAMPLE = Sample(
    small=0xFF,
    medium=0xBEEF,
    large=0xFFFF_FFFF,
    huge=U64_MAX,
    tag=b"abc",
    blob=b"\x00\x01\x02\x03\x04",
    first=(0, 1, U64_MAX, 2**63),
    name="Zürich-医院",
    counts=(0, 7, 0xFFFF_FFFF),
    ids=(0, 5, 0xFFFF),
    second=(42,),
    notes=(b"", b"x" * NOTE_MAX),
)


def test_example_round_trip() -> None:
    data = encode_sample(EXAMPLE)
    assert decode_sample(data) == EXAMPLE
    assert encode_sample(decode_sample(data)) == data


@settings(max_examples=100, deadline=None)
@given(sample=samples)
def test_encode_decode_encode_is_identity(sample: Sample) -> None:
    data = encode_sample(sample)
    decoded = decode_sample(data)
    assert decoded == sample
    assert encode_sample(decoded) == data
    assert decode_sample(memoryview(data)) == sample
    assert decode_sample(memoryview(bytearray(data))) == sample


@settings(max_examples=50, deadline=None)
@given(sample=samples)
def test_every_strict_prefix_is_truncated(sample: Sample) -> None:
    data = encode_sample(sample)
    for cut in range(len(data)):
        with pytest.raises(TruncatedError):
            decode_sample(data[:cut])


def test_every_strict_prefix_of_the_example_is_truncated() -> None:
    data = encode_sample(EXAMPLE)
    for cut in range(len(data)):
        with pytest.raises(TruncatedError):
            decode_sample(data[:cut])


@pytest.mark.parametrize("extra", [b"\x00", b"!", b"\x00" * 8])
def test_trailing_bytes_are_rejected(extra: bytes) -> None:
    with pytest.raises(TrailingBytesError, match=f"{len(extra)} trailing"):
        decode_sample(encode_sample(EXAMPLE) + extra)


def _assert_only_decode_errors(data: bytes) -> None:
    try:
        sample = decode_sample(data)
    except DecodeError:
        return
    # Whatever is accepted is canonical: it re-encodes to the same bytes.
    assert encode_sample(sample) == data


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=300))
def test_random_bytes_only_raise_decode_errors(data: bytes) -> None:
    _assert_only_decode_errors(data)


@settings(max_examples=200, deadline=None)
@given(sample=samples, data=st.data())
def test_mutated_encodings_only_raise_decode_errors(sample: Sample, data: st.DataObject) -> None:
    encoded = bytearray(encode_sample(sample))
    kind = data.draw(st.sampled_from(["flip", "insert", "delete", "set"]), label="kind")
    index = data.draw(st.integers(0, len(encoded) - 1), label="index")
    byte = data.draw(st.integers(0, 255), label="byte")
    if kind == "flip":
        encoded[index] ^= byte or 1
    elif kind == "insert":
        encoded.insert(index, byte)
    elif kind == "delete":
        del encoded[index]
    else:
        encoded[index] = byte
    _assert_only_decode_errors(bytes(encoded))


# --------------------------------------------------------------------------- layouts


def test_integers_are_big_endian_fixed_width() -> None:
    data = Writer().u8(1).u16(0x0203).u32(0x04050607).u64(0x08090A0B0C0D0E0F).getvalue()
    assert data == bytes(range(1, 16))
    reader = Reader(data)
    assert (reader.u8(), reader.u16(), reader.u32(), reader.u64()) == (
        1,
        0x0203,
        0x04050607,
        0x08090A0B0C0D0E0F,
    )
    assert reader.remaining == 0
    reader.finish()


@pytest.mark.parametrize(
    ("method", "value", "size"),
    [("u8", 0xFF, 1), ("u16", 0xFFFF, 2), ("u32", 0xFFFF_FFFF, 4), ("u64", U64_MAX, 8)],
)
def test_integer_extremes_round_trip(method: str, value: int, size: int) -> None:
    for v in (0, 1, value):
        data = getattr(Writer(), method)(v).getvalue()
        assert len(data) == size
        reader = Reader(data)
        assert getattr(reader, method)() == v
        reader.finish()


def test_var_bytes_text_and_seq_layouts() -> None:
    writer = Writer().var_bytes(b"ab", 2).text("é", 2).seq([1, 2], 2, Writer.u8)
    data = writer.getvalue()
    assert data == b"\x00\x00\x00\x02ab" + b"\x00\x00\x00\x02\xc3\xa9" + b"\x00\x00\x00\x02\x01\x02"
    reader = Reader(data)
    assert reader.var_bytes(2) == b"ab"
    assert reader.text(2) == "é"
    assert reader.seq(2, Reader.u8) == [1, 2]
    reader.finish()


def test_ring_vector_layout_is_count_padding_and_little_endian_words() -> None:
    data = Writer().u8(7).ring_vector(_ring([1, U64_MAX]), 2).getvalue()
    assert data == (
        b"\x07"
        + (2).to_bytes(8, "big")
        + bytes(7)  # words start at offset 16
        + (1).to_bytes(8, "little")
        + b"\xff" * 8
    )
    reader = Reader(data)
    assert reader.u8() == 7
    vector = reader.ring_vector(2)
    reader.finish()
    assert vector.dtype == np.uint64
    assert vector.tolist() == [1, U64_MAX]


@pytest.mark.parametrize("offset", range(9))
def test_ring_vector_words_are_aligned_at_every_offset(offset: int) -> None:
    values = _ring([3, 1 << 40, U64_MAX])
    data = Writer().raw(b"p" * offset).ring_vector(values, 3).getvalue()
    count_end = offset + 8
    assert len(data) == count_end + (-count_end % 8) + 24
    assert (len(data) - 24) % 8 == 0
    reader = Reader(data)
    reader.fixed(offset)
    vector = reader.ring_vector(3)
    reader.finish()
    assert np.array_equal(vector, values)
    assert vector.flags.aligned


def test_ring_vector_from_bytes_is_a_read_only_view() -> None:
    data = Writer().ring_vector(_ring([5, 6]), 2).getvalue()
    vector = Reader(data).ring_vector(2)
    assert not vector.flags.writeable
    copy = Reader(memoryview(bytearray(data))).ring_vector(2)
    assert copy.tolist() == [5, 6]


def test_ring_vector_from_an_unaligned_memoryview() -> None:
    payload = Writer().u16(9).ring_vector(_ring([11, 12, 13]), 3).getvalue()
    buffer = b"xyz" + payload
    reader = Reader(memoryview(buffer)[3:])
    assert reader.u16() == 9
    assert reader.ring_vector(3).tolist() == [11, 12, 13]
    reader.finish()


def test_ring_vector_accepts_non_contiguous_input() -> None:
    values = np.arange(10, dtype=np.uint64)[::2]
    reader = Reader(Writer().ring_vector(values, 5).getvalue())
    assert reader.ring_vector(5).tolist() == [0, 2, 4, 6, 8]


def test_empty_fields_round_trip() -> None:
    data = (
        Writer()
        .var_bytes(b"", 0)
        .text("", 0)
        .seq([], 0, Writer.u8)
        .ring_vector(_ring([]), 0)
        .raw(b"")
        .getvalue()
    )
    reader = Reader(data)
    assert reader.var_bytes(0) == b""
    assert reader.text(0) == ""
    assert reader.seq(0, Reader.u8) == []
    assert reader.ring_vector(0).shape == (0,)
    reader.finish()


def test_raw_appends_without_framing() -> None:
    assert Writer().raw(b"MPCA").u8(1).getvalue() == b"MPCA\x01"


def test_u16_set_is_written_sorted() -> None:
    writer = Writer()
    write_u16_set(writer, [9, 1, 5], 3)
    data = writer.getvalue()
    assert data == b"\x00\x00\x00\x03\x00\x01\x00\x05\x00\x09"
    reader = Reader(data)
    assert read_sorted_unique_u16(reader, 3) == (1, 5, 9)
    reader.finish()


# --------------------------------------------------------------------------- rejections


def test_writer_rejects_values_over_their_maximum() -> None:
    with pytest.raises(ValueError, match="expected 4 bytes"):
        Writer().fixed(b"abc", 4)
    with pytest.raises(ValueError, match="exceeds"):
        Writer().var_bytes(b"abc", 2)
    with pytest.raises(ValueError, match="exceeds"):
        Writer().text("éé", 3)  # 4 bytes of UTF-8
    with pytest.raises(ValueError, match="exceeds"):
        Writer().seq([1, 2, 3], 2, Writer.u8)
    with pytest.raises(ValueError, match="exceeds"):
        Writer().ring_vector(_ring([1, 2, 3]), 2)


@pytest.mark.parametrize(
    "values",
    [np.zeros(2, np.int64), np.zeros((2, 2), np.uint64), np.zeros(2, np.float64)],
    ids=["int64", "2-d", "float"],
)
def test_writer_rejects_non_ring_vectors(values: np.ndarray) -> None:
    with pytest.raises(ValueError, match="1-D uint64"):
        Writer().ring_vector(values, 10)


def test_var_bytes_over_max_is_oversize() -> None:
    data = Writer().var_bytes(b"x" * 11, 11).getvalue()
    assert Reader(data).var_bytes(11) == b"x" * 11
    with pytest.raises(OversizeError, match="11 exceeds maximum 10"):
        Reader(data).var_bytes(10)
    with pytest.raises(OversizeError):
        Reader(data).text(10)


def test_var_view_is_var_bytes_without_the_copy() -> None:
    data = Writer().var_bytes(b"abc", 8).u8(7).getvalue()
    buffer = bytearray(data)  # a writable message buffer, as the MQTT transport delivers
    reader = Reader(memoryview(buffer))
    view = reader.var_view(8)
    assert bytes(view) == b"abc"
    assert view.readonly
    assert reader.u8() == 7
    reader.finish()
    buffer[4] = ord("z")  # a view, not a copy
    assert bytes(view) == b"zbc"
    with pytest.raises(OversizeError, match="3 exceeds maximum 2"):
        Reader(data).var_view(2)
    with pytest.raises(TruncatedError):
        Reader(data[:5]).var_view(8)
    assert bytes(Reader(Writer().var_bytes(b"", 1).getvalue()).var_view(1)) == b""


def test_seq_over_max_is_oversize() -> None:
    data = Writer().seq([1, 2, 3], 3, Writer.u8).getvalue()
    assert Reader(data).seq(3, Reader.u8) == [1, 2, 3]
    with pytest.raises(OversizeError, match="3 items exceeds maximum 2"):
        Reader(data).seq(2, Reader.u8)


def test_ring_vector_over_max_is_oversize() -> None:
    data = Writer().ring_vector(_ring([1, 2, 3]), 3).getvalue()
    assert Reader(data).ring_vector(3).tolist() == [1, 2, 3]
    with pytest.raises(OversizeError, match="3 entries exceeds maximum 2"):
        Reader(data).ring_vector(2)


def test_huge_announced_lengths_are_oversize_or_truncated_never_allocated() -> None:
    huge_count = b"\xff" * 8 + bytes(8)
    with pytest.raises(OversizeError):
        Reader(huge_count).ring_vector(1 << 20)
    with pytest.raises(TruncatedError):
        Reader(huge_count).ring_vector(U64_MAX)
    huge_length = b"\xff\xff\xff\xff" + b"abc"
    with pytest.raises(OversizeError):
        Reader(huge_length).var_bytes(1 << 20)
    with pytest.raises(TruncatedError):
        Reader(huge_length).var_bytes(1 << 32)
    with pytest.raises(TruncatedError):
        Reader(huge_length).seq(1 << 32, Reader.u8)


def test_nonzero_vector_padding_is_invalid() -> None:
    data = bytearray(Writer().u8(1).ring_vector(_ring([5]), 1).getvalue())
    data[9] = 1  # first padding byte after the count
    reader = Reader(bytes(data))
    reader.u8()
    with pytest.raises(InvalidValueError, match="padding"):
        reader.ring_vector(1)


@pytest.mark.parametrize(
    "raw",
    [b"\xff", b"\xc3", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"a\x80b"],
    ids=["ff", "truncated-2-byte", "overlong-nul", "surrogate", "above-u10ffff", "lone-cont"],
)
def test_text_rejects_invalid_utf8(raw: bytes) -> None:
    data = Writer().var_bytes(raw, 8).getvalue()
    with pytest.raises(InvalidValueError, match="UTF-8"):
        Reader(data).text(8)


@pytest.mark.parametrize("values", [[1, 1], [2, 1], [1, 3, 2], [0, 0xFFFF, 0xFFFF]])
def test_u16_set_must_be_strictly_increasing(values: list[int]) -> None:
    data = Writer().seq(values, 4, Writer.u16).getvalue()
    with pytest.raises(InvalidValueError, match="strictly increasing"):
        read_sorted_unique_u16(Reader(data), 4)


def test_u16_set_over_max_is_oversize() -> None:
    writer = Writer()
    write_u16_set(writer, [1, 2, 3], 3)
    with pytest.raises(OversizeError):
        read_sorted_unique_u16(Reader(writer.getvalue()), 2)


def test_reader_truncation_messages_and_remaining() -> None:
    reader = Reader(b"\x01\x02\x03")
    assert reader.remaining == 3
    assert reader.u16() == 0x0102
    assert reader.remaining == 1
    with pytest.raises(TruncatedError, match="need 4 bytes at offset 2, only 1 left"):
        reader.u32()
    with pytest.raises(TrailingBytesError, match="1 trailing"):
        reader.finish()


def test_reader_errors_are_decode_errors() -> None:
    for error in (TruncatedError, TrailingBytesError, OversizeError, InvalidValueError):
        assert issubclass(error, DecodeError)
        assert issubclass(error, ValueError)
