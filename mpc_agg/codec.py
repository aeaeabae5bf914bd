"""Canonical, deterministic binary codec.

Every value has exactly one encoding: fixed-width big-endian integers, length-prefixed
byte strings and lists (with a per-field maximum), and uint64 vectors as a 64-bit count
followed by raw little-endian words. Decoding is strict: :class:`Reader` raises
:class:`~mpc_agg.errors.DecodeError` (with a specific subclass) on truncation, an
over-long field, a value out of its domain, and — through :meth:`Reader.finish` — on any
trailing byte. So ``encode(decode(b)) == b`` for every accepted ``b``.
"""

from __future__ import annotations

import itertools
import struct
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import numpy as np
from numpy.typing import NDArray

from mpc_agg.errors import DecodeError
from mpc_agg.ring import RING_DTYPE, RingVector

T = TypeVar("T")

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_LE_U64 = np.dtype("<u8")
_LE_U32 = np.dtype("<u4")
_SMALL_WORDS: dict[int, np.dtype[Any]] = {1: np.dtype("u1"), 2: np.dtype("<u2")}


class TruncatedError(DecodeError):
    """Input ended before the value did."""


class TrailingBytesError(DecodeError):
    """Bytes remain after the last field."""


class OversizeError(DecodeError):
    """A length or count exceeds the field's maximum."""


class InvalidValueError(DecodeError):
    """A field's value is outside its domain (unknown enum, unsorted list, …)."""


class UnknownVersionError(DecodeError):
    """The message names a format or protocol version this build does not speak."""


class Writer:
    """Builds a canonical encoding; fields are appended in schema order."""

    __slots__ = ("_length", "_parts")

    def __init__(self) -> None:
        self._parts: list[bytes | memoryview] = []
        self._length = 0

    def _append(self, part: bytes | memoryview) -> None:
        self._parts.append(part)
        self._length += len(part)

    def u8(self, value: int) -> Writer:
        """Append an unsigned 8-bit integer."""
        self._append(_U8.pack(value))
        return self

    def u16(self, value: int) -> Writer:
        """Append an unsigned 16-bit integer."""
        self._append(_U16.pack(value))
        return self

    def u32(self, value: int) -> Writer:
        """Append an unsigned 32-bit integer."""
        self._append(_U32.pack(value))
        return self

    def u64(self, value: int) -> Writer:
        """Append an unsigned 64-bit integer."""
        self._append(_U64.pack(value))
        return self

    def fixed(self, value: bytes, size: int) -> Writer:
        """Append exactly ``size`` bytes."""
        if len(value) != size:
            raise ValueError(f"expected {size} bytes, got {len(value)}")
        self._append(value)
        return self

    def var_bytes(self, value: bytes, max_len: int) -> Writer:
        """Append a u32 length and the bytes."""
        if len(value) > max_len:
            raise ValueError(f"field of {len(value)} bytes exceeds its maximum {max_len}")
        self._append(_U32.pack(len(value)))
        self._append(value)
        return self

    def text(self, value: str, max_len: int) -> Writer:
        """Append UTF-8 text (length-prefixed)."""
        return self.var_bytes(value.encode(), max_len)

    def seq(
        self, items: Sequence[T], max_count: int, write: Callable[[Writer, T], object]
    ) -> Writer:
        """Append a u32 count and each item with ``write``."""
        if len(items) > max_count:
            raise ValueError(f"list of {len(items)} items exceeds its maximum {max_count}")
        self._append(_U32.pack(len(items)))
        for item in items:
            write(self, item)
        return self

    def ring_vector(self, values: RingVector, max_len: int) -> Writer:
        """Append a u64 count, zero padding to an 8-byte boundary, and the words little-endian.

        The padding keeps the words aligned when the enclosing buffer is, so a receiver's
        zero-copy view adds at full speed.
        """
        if values.dtype != RING_DTYPE or values.ndim != 1:
            raise ValueError("ring vectors must be 1-D uint64")
        return self._words(np.ascontiguousarray(values, dtype=_LE_U64), max_len)

    def ring_vector32(self, values: RingVector | NDArray[np.uint32], max_len: int) -> Writer:
        """Append a ring vector reduced mod 2^32 (4 bytes an entry).

        A u64 count, zero padding to a 4-byte boundary, and the low 32 bits of every word,
        little-endian.
        """
        if values.dtype not in (RING_DTYPE, np.dtype(np.uint32)) or values.ndim != 1:
            raise ValueError("ring vectors must be 1-D uint64 (or uint32 words mod 2^32)")
        # unsigned casts keep the low bits (x mod 2^32); uint32 words go as they are
        return self._words(np.ascontiguousarray(values.astype(_LE_U32, copy=False)), max_len)

    def small_words(self, values: NDArray[Any], width: int, max_len: int) -> Writer:
        """Append unsigned words of ``width`` bytes (1 or 2): a u64 count, padding, the words.

        For the high parts of split sums (secagg SPEC §5.8); every value must fit.
        """
        dtype = _SMALL_WORDS.get(width)
        if dtype is None or values.ndim != 1:
            raise ValueError("small words are a 1-D vector of 1- or 2-byte words")
        if values.size and int(values.max()) >> (8 * width):
            raise ValueError(f"a value does not fit in {width} byte(s)")
        return self._words(np.ascontiguousarray(values.astype(dtype)), max_len)

    def _words(self, words: NDArray[Any], max_len: int) -> Writer:
        """A u64 count, zero padding to the word size, then the (little-endian) words."""
        if words.shape[0] > max_len:
            raise ValueError(f"vector of {words.shape[0]} entries exceeds maximum {max_len}")
        self._append(_U64.pack(words.shape[0]))
        self._append(bytes(-self._length % words.itemsize))  # words start aligned
        self._append(words.view(np.uint8).data)
        return self

    def raw(self, value: bytes) -> Writer:
        """Append bytes with no framing (for nesting an already-canonical encoding)."""
        self._append(value)
        return self

    def getvalue(self) -> bytes:
        """The encoding."""
        return b"".join(self._parts)

    def parts(self) -> tuple[bytes | memoryview, ...]:
        """The encoding as the appended pieces, not joined (large vectors stay views)."""
        return tuple(self._parts)


class Reader:
    """Strict decoder over a bytes-like buffer; call :meth:`finish` at the end."""

    __slots__ = ("_data", "_pos")

    def __init__(self, data: bytes | memoryview) -> None:
        self._data = memoryview(data).cast("B") if not isinstance(data, bytes) else data
        self._pos = 0

    @property
    def remaining(self) -> int:
        """Bytes not yet consumed."""
        return len(self._data) - self._pos

    def _advance(self, size: int) -> int:
        """Consume ``size`` bytes; return where they start (TruncatedError if they aren't)."""
        pos = self._pos
        if size < 0 or pos + size > len(self._data):
            raise TruncatedError(f"need {size} bytes at offset {pos}, only {self.remaining} left")
        self._pos = pos + size
        return pos

    def _take(self, size: int) -> bytes:
        pos = self._advance(size)
        return bytes(self._data[pos : pos + size])

    def _int(self, fmt: struct.Struct) -> int:
        """One integer of ``fmt`` read in place (no slice copied: the hot path of parsing)."""
        return int(fmt.unpack_from(self._data, self._advance(fmt.size))[0])

    def u8(self) -> int:
        """Read an unsigned 8-bit integer."""
        return self._int(_U8)

    def u16(self) -> int:
        """Read an unsigned 16-bit integer."""
        return self._int(_U16)

    def u32(self) -> int:
        """Read an unsigned 32-bit integer."""
        return self._int(_U32)

    def u64(self) -> int:
        """Read an unsigned 64-bit integer."""
        return self._int(_U64)

    def fixed(self, size: int) -> bytes:
        """Read exactly ``size`` bytes."""
        return self._take(size)

    def var_bytes(self, max_len: int) -> bytes:
        """Read a length-prefixed byte string of at most ``max_len`` bytes."""
        return self._take(self._var_length(max_len))

    def var_view(self, max_len: int) -> memoryview:
        """:meth:`var_bytes` without the copy: a read-only view into the decoded buffer.

        For large fields consumed once (ciphertexts of vectors); the view keeps the whole
        buffer alive while it is held.
        """
        length = self._var_length(max_len)
        pos = self._advance(length)
        return memoryview(self._data)[pos : pos + length].toreadonly()

    def _var_length(self, max_len: int) -> int:
        length = self.u32()
        if length > max_len:
            raise OversizeError(f"field length {length} exceeds maximum {max_len}")
        return length

    def text(self, max_len: int) -> str:
        """Read UTF-8 text."""
        raw = self.var_bytes(max_len)
        try:
            return raw.decode()
        except UnicodeDecodeError:
            raise InvalidValueError("text field is not valid UTF-8") from None

    def seq(self, max_count: int, read: Callable[[Reader], T]) -> list[T]:
        """Read a counted list of at most ``max_count`` items."""
        count = self.u32()
        if count > max_count:
            raise OversizeError(f"list of {count} items exceeds maximum {max_count}")
        return [read(self) for _ in range(count)]

    def ring_vector(self, max_len: int) -> RingVector:
        """Read a uint64 vector (a read-only view when the input is ``bytes``)."""
        return self._words(max_len, _LE_U64).astype(RING_DTYPE, copy=False)

    def ring_vector32(self, max_len: int) -> NDArray[np.uint32]:
        """Read a vector of :meth:`Writer.ring_vector32` (a read-only uint32 view)."""
        return self._words(max_len, _LE_U32).astype(np.uint32, copy=False)

    def small_words(self, max_len: int, width: int) -> NDArray[Any]:
        """Read a vector of :meth:`Writer.small_words` (a read-only view when possible)."""
        dtype = _SMALL_WORDS.get(width)
        if dtype is None:
            raise ValueError("small words are 1 or 2 bytes wide")
        return self._words(max_len, dtype)

    def _words(self, max_len: int, dtype: np.dtype[Any]) -> NDArray[Any]:
        """A u64 count, zero padding to the word size, then the count words (a view)."""
        count = self.u64()
        if count > max_len:
            raise OversizeError(f"vector of {count} entries exceeds maximum {max_len}")
        padding = self._take(-self._pos % dtype.itemsize)
        if any(padding):
            raise InvalidValueError("alignment padding before a vector must be zero")
        nbytes = dtype.itemsize * count
        if self._pos + nbytes > len(self._data):
            raise TruncatedError(f"vector needs {nbytes} bytes, only {self.remaining} left")
        view = np.frombuffer(self._data, dtype=dtype, count=count, offset=self._pos)
        self._pos += nbytes
        return view

    def finish(self) -> None:
        """Raise :class:`TrailingBytesError` unless every byte was consumed."""
        if self._pos != len(self._data):
            raise TrailingBytesError(f"{self.remaining} trailing bytes after the last field")


def read_sorted_unique_u16(reader: Reader, max_count: int) -> tuple[int, ...]:
    """A list of u16 that must be strictly increasing (canonical set encoding)."""
    values = reader.seq(max_count, Reader.u16)
    if any(a >= b for a, b in itertools.pairwise(values)):
        raise InvalidValueError("set elements must be strictly increasing")
    return tuple(values)


def write_u16_set(writer: Writer, values: Sequence[int], max_count: int) -> None:
    """Write a set of u16 in canonical (sorted) order; duplicates are a caller error."""
    if len(set(values)) != len(values):
        raise ValueError("a set cannot contain duplicates")
    writer.seq(sorted(values), max_count, Writer.u16)
