"""Review of chunk sums sent as low and high parts (secagg/4, SPEC §5.8 and §6.7).

A ChunkSum carries S_k = Σ_{p∈I} y_{p,k} as ``low`` (S mod 2^32, u32) and ``high``
(⌊S/2^32⌋, u8 when n ≤ 256, else u16), decoded as views into the payload. These tests
attack the parts directly (bypassing ``ChunkSum.from_sums``, which refuses sums that do
not fit): the impossible-sum test at its boundary, strict decoding, ``exact()``, and
forged parts against the random linear checks, on real machines where feasible.

Where n = 256 or n > 256 is needed, a whole round is too slow (the harness is cubic in n),
so one honest machine of a small round is given a larger included set and a forged record
just before its own ``_finish_chunk_sum`` runs: the predicate under test is the real one.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from mpc_agg.codec import Writer
from mpc_agg.errors import DecodeError
from mpc_agg.prg import CHUNK_WORDS
from protocols.common import Effect, PeerExcluded, PhaseStarted, RoundAborted
from protocols.harness import (
    Adversary,
    Dropout,
    Outgoing,
    RoundOutcome,
    adopt,
    payload_of,
    resign,
)
from protocols.secagg.machine import SecAggMachine
from protocols.secagg.messages import ChunkSum, MessageKind, Phase, sum_high_bytes
from tests.protocol.support import run_rs_round

WORD = 0xFFFFFFFF
_FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# --------------------------------------------------------------------------- helpers


def _parts(value: int, width: int) -> tuple[int, int]:
    """(low, high) of an exact sum."""
    assert 0 <= value < 1 << (32 + 8 * width)
    return value & WORD, value >> 32


def _high_dtype(width: int) -> type[np.unsignedinteger]:
    return np.uint8 if width == 1 else np.uint16


def _limit(included: int) -> int:
    return included * WORD


def _forge(message: ChunkSum, low: NDArray[np.uint32], high: NDArray[Any], width: int) -> ChunkSum:
    """A ChunkSum with the given parts, built without ``from_sums``'s fit check."""
    return ChunkSum(
        missing=message.missing,
        low=low,
        high=high.astype(_high_dtype(width)),
        orphans=message.orphans,
    )


def _never_unmasked(outcome: RoundOutcome, honest: Sequence[int]) -> None:
    """No honest peer entered UNMASK or revealed anything."""
    for peer in honest:
        assert outcome.machines[peer].revealed == {}, peer
        started = [e.phase for e in outcome.peers[peer].effects if isinstance(e, PhaseStarted)]
        assert Phase.UNMASK not in started, peer
        assert outcome.peers[peer].result is None, peer


def _excluded_above(outcome: RoundOutcome, peer: int, owner: int) -> bool:
    return any(
        isinstance(e, PeerExcluded) and e.peer == owner and "above" in e.reason
        for e in outcome.peers[peer].effects
    )


#: edit(low, high, |I|) -> None: rewrite the parts (copies) in place
Edit = Callable[[NDArray[np.uint32], NDArray[Any], int], None]


@dataclass
class _PartsOwner(Adversary):
    """An owner that rewrites the low/high parts of its ChunkSum (and keeps its own view)."""

    edit: Edit
    forged: list[int] = field(default_factory=list)  # the forged exact sums (Python ints)
    true: list[int] = field(default_factory=list)
    included: int = 0  # |I| as this owner derived it

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        chunks = machine._chunks
        if kind is not MessageKind.CHUNK_SUM or chunks is None:
            return [Outgoing(data)]
        start, stop = chunks.bounds[machine.me]
        width = sum_high_bytes(machine.params.n)
        lengths = {o: b - a for o, (a, b) in enumerate(chunks.bounds) if o != machine.me}
        message = ChunkSum.decode(
            payload_of(data), length=stop - start, orphans=lengths, high_bytes=width
        )
        self.true = [int(v) for v in message.exact()]
        self.included = len(chunks.included)
        low = message.low.copy()
        high = message.high.astype(np.int64)  # room to go past the dtype, checked below
        self.edit(low, high, len(chunks.included))
        assert high.min() >= 0, "edit must fit the width"
        assert high.max() < 1 << (8 * width), "edit must fit the width"
        forged = _forge(message, low, high, width)
        self.forged = [int(v) for v in forged.exact()]
        chunks.sums[machine.me] = (forged, b"")
        sealed = resign(machine, kind, forged.encode())
        adopt(machine, kind, sealed)
        return [Outgoing(sealed)]


def _set_entry0(high: int, low: int) -> Edit:
    def edit(lows: NDArray[np.uint32], highs: NDArray[Any], included: int) -> None:
        lows[0] = np.uint32(low)
        highs[0] = high

    return edit


# ------------------------------------------------------------ (1) impossible sums, on the wire

#: (name, n, dropped peer or None → |I|)
_ROUNDS = [("n2_I2", 2, None, 2), ("n3_I3", 3, None, 3), ("n4_I3", 4, 3, 3)]


def _cases() -> list[tuple[str, int, int | None, int, int, int, bool]]:
    """(id, n, dropped, |I|, high, low, impossible?) for the entry-0 forgery by owner 1."""
    out = []
    for name, n, dropped, size in _ROUNDS:
        top = size - 1
        limit = _limit(size)
        for label, value in (
            ("at_limit", limit),
            ("limit_plus_1", limit + 1),
            ("limit_plus_2^32", limit + (1 << 32)),
            ("limit_minus_1", limit - 1),
        ):
            low, high = _parts(value, 1)
            out.append((f"{name}-{label}", n, dropped, size, high, low, value > limit))
        out.append((f"{name}-high_top_low_0", n, dropped, size, top, 0, False))
        out.append((f"{name}-high_top+1_low_0", n, dropped, size, top + 1, 0, True))
        out.append((f"{name}-high_255_low_max", n, dropped, size, 255, WORD, True))
        out.append((f"{name}-high_255_low_0", n, dropped, size, 255, 0, True))
    return out


@pytest.mark.parametrize(
    ("n", "dropped", "size", "high", "low", "impossible"),
    [c[1:] for c in _cases()],
    ids=[c[0] for c in _cases()],
)
def test_impossible_sum_boundary_on_the_wire(
    n: int, dropped: int | None, size: int, high: int, low: int, impossible: bool
) -> None:
    """Owner 1 publishes entry 0 as (high, low). Above |I|·(2^32 − 1) it is excluded and
    every honest peer aborts with "impossible sums"; at or below, the range check lets it
    pass and the random checks catch the wrong sum. Nothing is revealed either way. n4_I3
    checks that the bound is |I| (3), not n (4)."""
    owner = 1
    adversary = _PartsOwner(_set_entry0(high, low))
    dropouts = [Dropout(dropped, Phase.MASKED_INPUT)] if dropped is not None else []
    outcome = run_rs_round(
        n=n, vector_length=4 * n, seed=700 + n, dropouts=dropouts, adversaries={owner: adversary}
    )
    honest = [p for p in range(n) if p not in (owner, dropped)]
    forged = (high << 32) | low
    assert adversary.forged[0] == forged
    assert forged != adversary.true[0]  # else the forgery would be no forgery
    assert adversary.included == size
    _never_unmasked(outcome, honest)
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None, peer
        if impossible:
            assert "owner 1 published impossible sums" in aborted.reason, aborted.reason
            assert _excluded_above(outcome, peer, owner)
        else:
            assert "chunk sum of owner 1 does not match" in aborted.reason, aborted.reason
            assert not _excluded_above(outcome, peer, owner)


# ------------------------------------------------------------ (1) |I| = 256 and n > 256


@dataclass
class _BigIncluded(Adversary):
    """Plays an *honest* peer whose CHUNK_SUM close sees |I| = ``size`` and owner 1's record
    replaced by ``record`` (entry 0 = (high, low), width ``width``); records the effects of
    that one ``_finish_chunk_sum`` call. Everything it sends is untouched."""

    size: int
    width: int
    high: int
    low: int
    effects: list[Effect] = field(default_factory=list)
    phase_after: Phase | None = None

    def injected(self, machine: SecAggMachine) -> list[Outgoing]:
        original = machine._finishers[Phase.CHUNK_SUM]

        def finish(effects: list[Effect]) -> None:
            chunks = machine._chunks
            assert chunks is not None
            message, digest = chunks.sums[1]
            low = message.low.copy()
            high = message.high.astype(np.int64)
            low[0], high[0] = self.low, self.high
            chunks.sums[1] = (_forge(message, low, high, self.width), digest)
            real = chunks.included
            chunks.included = tuple(range(self.size))  # only len() and orphans use it
            before = len(effects)
            try:
                original(effects)
            finally:
                chunks.included = real
            self.effects = effects[before:]
            self.phase_after = machine.phase

        machine._finishers[Phase.CHUNK_SUM] = finish
        return []


def _big_cases() -> list[tuple[str, int, int, int, int, bool]]:
    out = []
    for size, width in ((256, 1), (257, 2), (1024, 2)):
        top = size - 1
        limit = _limit(size)
        dmax = (1 << (8 * width)) - 1
        for label, value in (("at_limit", limit), ("limit_plus_1", limit + 1)):
            low, high = _parts(value, width)
            out.append((f"I{size}_w{width}-{label}", size, width, high, low, value > limit))
        out.append((f"I{size}_w{width}-high_top_low_max", size, width, top, WORD, True))
        out.append((f"I{size}_w{width}-high_dtype_max_low_0", size, width, dmax, 0, dmax > top))
        out.append((f"I{size}_w{width}-high_dtype_max_low_max", size, width, dmax, WORD, True))
        if top + 1 <= dmax:
            out.append((f"I{size}_w{width}-high_top+1_low_0", size, width, top + 1, 0, True))
    return out


@pytest.mark.parametrize(
    ("size", "width", "high", "low", "impossible"),
    [c[1:] for c in _big_cases()],
    ids=[c[0] for c in _big_cases()],
)
def test_impossible_sum_boundary_large_included_sets(
    size: int, width: int, high: int, low: int, impossible: bool
) -> None:
    """The real ``_finish_chunk_sum`` of peer 0, with |I| = 256 (u8 high: top = 255 = the
    dtype maximum) and |I| = 257, 1024 (u16 high)."""
    probe = _BigIncluded(size=size, width=width, high=high, low=low)
    run_rs_round(n=3, vector_length=12, seed=710, adversaries={0: probe})
    excluded = [e for e in probe.effects if isinstance(e, PeerExcluded) and e.peer == 1]
    aborts = [e for e in probe.effects if isinstance(e, RoundAborted)]
    if impossible:
        assert [e.reason for e in excluded] == ["ChunkSum above |I|·(2^32 − 1)"]
        assert [e.reason for e in aborts] == ["chunk owner 1 published impossible sums"]
        assert probe.phase_after is Phase.ABORTED
    else:
        assert not excluded, probe.effects
        assert not aborts, probe.effects
        assert probe.phase_after is Phase.CONSISTENCY_CHECK


def test_predicate_matches_integer_bound_exhaustively_near_the_edges() -> None:
    """Every (high, low) near the boundary for every |I| in 1..1024, at the real machine's
    dtypes: the part-wise test equals S > |I|·(2^32 − 1) computed with Python ints.

    (The expression is copied from ``_finish_chunk_sum``; the tests above drive the real one
    at the boundary for |I| = 2, 3, 256, 257, 1024.)"""
    lows = np.array([0, 1, 2**31, WORD - 1024, WORD - 1023, WORD - 256, WORD - 255, WORD - 2,
                     WORD - 1, WORD], dtype=np.uint32)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for size in range(1, 1025):
            width = sum_high_bytes(max(size, 2))
            dtype = _high_dtype(width)
            top = size - 1
            highs = sorted({0, 1, max(top - 1, 0), top, top + 1, (1 << (8 * width)) - 1})
            highs = [h for h in highs if h < 1 << (8 * width)]
            high = np.repeat(np.array(highs, dtype=dtype), lows.size)
            low = np.tile(lows, len(highs))
            above = (high > top) | ((high == top) & (low > np.uint32(WORD - top)))
            truth = [
                (int(h) << 32 | int(lo)) > _limit(size)
                for h, lo in zip(high.tolist(), low.tolist(), strict=True)
            ]
            assert above.tolist() == truth, size


def test_numpy_compares_small_unsigned_arrays_with_python_ints_up_to_1023() -> None:
    """NumPy 2 (NEP 50): uint8/uint16 arrays against Python ints beyond their range compare
    by value (no wrap, no OverflowError, no warning)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        u8 = np.arange(256, dtype=np.uint8)
        u16 = np.array([0, 1, 255, 256, 1022, 1023, 1024, 65535], dtype=np.uint16)
        for top in range(-1, 1024):
            assert (u8 > top).tolist() == [v > top for v in range(256)]
            assert (u8 == top).tolist() == [v == top for v in range(256)]
            assert (u16 > top).tolist() == [v > top for v in u16.tolist()]
            assert (u16 == top).tolist() == [v == top for v in u16.tolist()]
            if top >= 0:
                bound = np.uint32(WORD - top)
                assert int(bound) == WORD - top


def test_empty_included_set_does_not_crash_chunk_sum_close() -> None:
    # Review finding (low, fixed): with |I| = 0, top = -1 and np.uint32(0xFFFFFFFF + 1)
    # raised OverflowError out of the machine; |I| < T is only refused at
    # CONSISTENCY_CHECK close. The CHUNK_SUM close now aborts first.
    probe = _BigIncluded(size=0, width=1, high=0, low=0)
    run_rs_round(n=3, vector_length=12, seed=711, adversaries={0: probe})
    assert any(
        isinstance(e, RoundAborted) and "no included input" in e.reason for e in probe.effects
    )


# --------------------------------------------------------------------------- (2) strict decoding


def _message(sums: Sequence[int], width: int, orphans: dict[int, int] | None = None) -> ChunkSum:
    words = tuple(
        (o, np.arange(length, dtype=np.uint32) * np.uint32(7919 + o))
        for o, length in sorted((orphans or {}).items())
    )
    return ChunkSum.from_sums(
        missing=(), sums=np.array(sums, dtype=np.uint64), orphans=words, high_bytes=width
    )


def _raw(
    missing: Sequence[int],
    low: Sequence[int],
    high: Sequence[int],
    width: int,
    *,
    low_count: int | None = None,
    high_count: int | None = None,
    orphans: int = 0,
) -> bytes:
    """A ChunkSum payload assembled by hand (counts may lie)."""
    w = Writer()
    w.seq(list(missing), 1024, Writer.u16)
    w.u64(len(low) if low_count is None else low_count)
    w.raw(bytes(-len(w.getvalue()) % 4))
    w.raw(np.array(low, dtype="<u4").tobytes())
    w.u64(len(high) if high_count is None else high_count)
    w.raw(bytes(-len(w.getvalue()) % width))
    w.raw(np.array(high, dtype="<u1" if width == 1 else "<u2").tobytes())
    w.u32(orphans)
    return w.getvalue()


def _decode(
    data: bytes, length: int, width: int, orphans: dict[int, int] | None = None
) -> ChunkSum:
    return ChunkSum.decode(data, length=length, orphans=orphans or {}, high_bytes=width)


@pytest.mark.parametrize("width", [1, 2])
def test_hand_built_encoding_matches_and_parts_are_read_only_views(width: int) -> None:
    sums = [0, 1, WORD, 1 << 32, 3 * WORD, (255 << 32) | 7]
    message = _message(sums, width)
    data = message.encode()
    low = [s & WORD for s in sums]
    high = [s >> 32 for s in sums]
    assert data == _raw((), low, high, width)
    decoded = _decode(data, len(sums), width)
    assert decoded.low.dtype == np.uint32
    assert decoded.high.dtype.itemsize == width
    assert decoded.exact().tolist() == sums
    base = np.frombuffer(data, dtype=np.uint8)
    for part in (decoded.low, decoded.high):
        assert not part.flags.writeable
        assert np.shares_memory(part, base)
    assert decoded.encode() == data


@pytest.mark.parametrize("length", [1, 2, 3, 4, 5, 8, 9])
@pytest.mark.parametrize("orphans", [{}, {2: 3}])
def test_the_wrong_high_width_is_a_decode_error(length: int, orphans: dict[int, int]) -> None:
    sums = [(i % 3) << 32 | i for i in range(length)]
    for sent, expected in ((1, 2), (2, 1)):
        data = _message(sums, sent, orphans).encode()
        with pytest.raises(DecodeError):
            _decode(data, length, expected, orphans)


@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize(("low_count", "high_count"), [(3, 2), (3, 4), (3, 0), (0, 3), (2, 3)])
def test_low_and_high_counts_must_agree(width: int, low_count: int, high_count: int) -> None:
    data = _raw((), [5] * low_count, [1] * high_count, width)
    with pytest.raises(DecodeError):
        _decode(data, 3, width)


@pytest.mark.parametrize("width", [1, 2])
def test_lying_counts_are_decode_errors(width: int) -> None:
    cases = [
        _raw((), [1, 2, 3], [0, 0, 0], width, high_count=2),  # says 2, carries 3
        _raw((), [1, 2, 3], [0, 0, 0], width, high_count=4),
        _raw((), [1, 2, 3], [0, 0, 0], width, low_count=4),
        _raw((), [1, 2, 3], [0, 0, 0], width, high_count=1 << 31),
        _raw((), [1, 2, 3], [0, 0, 0], width, high_count=(1 << 31) + 1),
        _raw((), [1, 2, 3], [0, 0, 0], width, high_count=(1 << 64) - 1),
        _raw((), [1, 2, 3], [0, 0, 0], width, low_count=(1 << 64) - 1),
        _raw((), [1, 2], [0, 0], width),  # wrong chunk length
        _raw((1,), [1, 2, 3], [0, 0, 0], width),  # missing and sums
        _raw((), [], [], width),  # neither missing nor sums
        _raw((), [1, 2, 3], [0, 0, 0], width, orphans=1),  # orphan count beyond the map
    ]
    for data in cases:
        with pytest.raises(DecodeError):
            _decode(data, 3, width)


@pytest.mark.parametrize("width", [1, 2])
def test_non_zero_padding_is_a_decode_error(width: int) -> None:
    # one missing peer puts the low words' count at offset 6: 2 bytes of padding follow
    data = bytearray(_raw((1,), [], [], width))
    assert _decode(bytes(data), 3, width).missing == (1,)
    assert len(data) == 4 + 2 + 8 + 2 + 8 + 4
    for at in (14, 15):
        bad = data.copy()
        bad[at] = 1
        with pytest.raises(DecodeError):
            _decode(bytes(bad), 3, width)
    # (the high words always start at an even offset: their padding is never present)


@pytest.mark.parametrize("width", [1, 2])
@pytest.mark.parametrize("orphans", [{}, {0: 2, 2: 3}])
def test_every_truncation_and_any_trailing_byte_is_a_decode_error(
    width: int, orphans: dict[int, int]
) -> None:
    data = _message([WORD, 2 * WORD, 5], width, orphans).encode()
    assert _decode(data, 3, width, orphans).encode() == data
    for cut in range(len(data)):
        with pytest.raises(DecodeError):
            _decode(data[:cut], 3, width, orphans)
    for extra in (b"\x00", b"\x01", bytes(8)):
        with pytest.raises(DecodeError):
            _decode(data + extra, 3, width, orphans)


@_FUZZ
@given(
    width=st.sampled_from([1, 2]),
    length=st.integers(0, 6),
    with_orphan=st.booleans(),
    edits=st.lists(
        st.tuples(
            st.sampled_from(["flip", "insert", "delete"]), st.integers(0, 200), st.integers(1, 255)
        ),
        min_size=1,
        max_size=3,
    ),
)
def test_mutated_payloads_decode_canonically_or_raise_decode_error(
    width: int, length: int, with_orphan: bool, edits: list[tuple[str, int, int]]
) -> None:
    orphans = {1: 2} if with_orphan else {}
    sums = [(i * 0x1_0000_0001) % (1 << (32 + 8 * width)) for i in range(length)]
    if not sums:
        return  # a zero-length chunk: covered by the round tests
    data = bytearray(_message(sums, width, orphans).encode())
    for op, where, value in edits:
        at = where % (len(data) + 1)
        if op == "flip" and at < len(data):
            data[at] ^= value
        elif op == "insert":
            data[at:at] = bytes([value])
        elif op == "delete" and at < len(data):
            del data[at]
    try:
        decoded = _decode(bytes(data), length, width, orphans)
    except DecodeError:
        return
    assert decoded.encode() == bytes(data)  # accepted only in its one canonical form
    assert decoded.low.shape == decoded.high.shape == (length,)


@dataclass
class _Malformed(Adversary):
    """An owner whose ChunkSum payload is rewritten by ``mangle`` (validly signed)."""

    mangle: Callable[[SecAggMachine, bytes], bytes]

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        if kind is not MessageKind.CHUNK_SUM or machine._chunks is None:
            return [Outgoing(data)]
        return [Outgoing(resign(machine, kind, self.mangle(machine, payload_of(data))))]


def _other_width(machine: SecAggMachine, payload: bytes) -> bytes:
    chunks = machine._chunks
    assert chunks is not None
    a, b = chunks.bounds[machine.me]
    message = _decode(payload, b - a, sum_high_bytes(machine.params.n))
    return _forge(message, message.low, message.high, 2).encode()  # u16 in an n ≤ 256 round


def _high_one_short(machine: SecAggMachine, payload: bytes) -> bytes:
    chunks = machine._chunks
    assert chunks is not None
    a, b = chunks.bounds[machine.me]
    message = _decode(payload, b - a, 1)
    return _raw((), message.low.tolist(), message.high[:-1].tolist(), 1)


_MANGLES: dict[str, Callable[[SecAggMachine, bytes], bytes]] = {
    "truncated": lambda m, p: p[:-1],
    "truncated_in_high": lambda m, p: p[: len(p) - 6],
    "trailing": lambda m, p: p + b"\x00",
    "u16_high": _other_width,
    "high_one_short": _high_one_short,
    "empty": lambda m, p: b"",
}


@pytest.mark.parametrize("mangle", list(_MANGLES), ids=list(_MANGLES))
def test_a_malformed_chunk_sum_excludes_its_sender_without_crashing_anyone(mangle: str) -> None:
    outcome = run_rs_round(
        n=4, vector_length=20, seed=720, adversaries={2: _Malformed(_MANGLES[mangle])}
    )
    honest = [0, 1, 3]
    _never_unmasked(outcome, honest)
    for peer in honest:
        assert any(
            isinstance(e, PeerExcluded) and e.peer == 2 and "malformed CHUNK_SUM" in e.reason
            for e in outcome.peers[peer].effects
        ), outcome.peers[peer].effects
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert "owner 2 sent no ChunkSum" in aborted.reason


# --------------------------------------------------------------------------- (3) exact()

_BOUND = st.one_of(st.none(), st.integers(-12, 12))


@_FUZZ
@given(
    width=st.sampled_from([1, 2]),
    data=st.data(),
    start=_BOUND,
    stop=_BOUND,
)
def test_exact_equals_the_u64_sums_for_any_slice(
    width: int, data: st.DataObject, start: int | None, stop: int | None
) -> None:
    top = (1 << (32 + 8 * width)) - 1
    values = data.draw(st.lists(st.integers(0, top), max_size=9))
    sums = np.array(values, dtype=np.uint64)
    message = ChunkSum.from_sums(missing=(), sums=sums, orphans=(), high_bytes=width)
    decoded = _decode(message.encode(), len(values), width) if values else message
    for m in (message, decoded):
        got = m.exact(0 if start is None else start, stop)
        assert got.dtype == np.uint64
        assert got.tolist() == values[slice(start, stop)]
        assert got.flags.writeable
        assert not np.shares_memory(got, m.low)
        assert m.sums.tolist() == values


def test_exact_past_either_end_and_empty() -> None:
    message = _message([1, 2 << 32 | 3, WORD], 1)
    assert message.exact(3, 10).tolist() == []
    assert message.exact(5, 2).tolist() == []
    assert message.exact(-2).tolist() == [2 << 32 | 3, WORD]
    assert message.exact(0, 0).tolist() == []
    empty = ChunkSum(missing=(4,), low=np.zeros(0, np.uint32), high=np.zeros(0, np.uint8),
                     orphans=())  # fmt: skip
    assert empty.exact().shape == (0,)
    assert empty.exact().dtype == np.uint64


# ------------------------------------------------------------ (3) forged parts vs the checks


@_FUZZ
@given(
    n=st.sampled_from([2, 3, 4]),
    extra=st.integers(0, 6),
    owner=st.integers(0, 3),
    entry=st.integers(0, 30),
    part=st.sampled_from(["low", "high", "both"]),
    delta=st.integers(1, WORD),
    seed=st.integers(0, 10_000),
)
def test_any_forged_entry_aborts_before_unmask(
    n: int, extra: int, owner: int, entry: int, part: str, delta: int, seed: int
) -> None:
    """An owner changes one entry in low only, high only, or both (high stays within its
    width). Every honest peer aborts before UNMASK: "impossible sums" exactly when the
    forged sum exceeds |I|·(2^32 − 1), the failed checks otherwise."""
    owner %= n
    length = n + extra  # every chunk non-empty

    def edit(low: NDArray[np.uint32], high: NDArray[Any], included: int) -> None:
        i = entry % low.size
        if part in ("low", "both"):
            low[i] = np.uint32((int(low[i]) + delta) & WORD)
        if part in ("high", "both"):
            h = int(high[i])
            step = 1 + delta % 255
            high[i] = h + step if h + step <= 255 else h - 1 - (delta % max(h, 1))

    adversary = _PartsOwner(edit)
    outcome = run_rs_round(n=n, vector_length=length, seed=seed, adversaries={owner: adversary})
    honest = [p for p in range(n) if p != owner]
    assert adversary.forged != adversary.true
    impossible = max(adversary.forged) > _limit(adversary.included)
    _never_unmasked(outcome, honest)
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None, peer
        if impossible:
            assert f"owner {owner} published impossible sums" in aborted.reason
        else:
            assert f"chunk sum of owner {owner} does not match" in aborted.reason, aborted.reason


def test_a_high_only_forgery_within_the_bound_is_caught_by_the_checks() -> None:
    """The one case the range check cannot see: high − 1 (a sum 2^32 too small) at n = 3."""

    def edit(low: NDArray[np.uint32], high: NDArray[Any], included: int) -> None:
        i = int(np.argmax(high))
        assert high[i] >= 1  # three masked words: some sum ≥ 2^32 in 12 entries
        high[i] -= 1

    adversary = _PartsOwner(edit)
    outcome = run_rs_round(n=3, vector_length=36, seed=730, adversaries={0: adversary})
    _never_unmasked(outcome, [1, 2])
    for peer in (1, 2):
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert "chunk sum of owner 0 does not match" in aborted.reason


# ------------------------------------------------------------ (4) no u64 `sums` in the machine


@pytest.mark.parametrize("dropped", [None, 3], ids=["all", "orphaned_chunk"])
def test_an_honest_round_never_materialises_sums_and_rebuilds_in_blocks(
    monkeypatch: pytest.MonkeyPatch, dropped: int | None
) -> None:
    """The machine never touches ``ChunkSum.sums`` (8 bytes an entry) and asks ``exact``
    for at most CHUNK_WORDS entries at a time; the totals are exact."""

    def forbidden(self: ChunkSum) -> None:
        raise AssertionError("ChunkSum.sums used by the machine")

    requested: list[int] = []
    original_exact = ChunkSum.exact

    def exact(self: ChunkSum, start: int = 0, stop: int | None = None) -> NDArray[np.uint64]:
        out = original_exact(self, start, stop)
        requested.append(out.size)
        return out

    monkeypatch.setattr(ChunkSum, "sums", property(forbidden))
    monkeypatch.setattr(ChunkSum, "exact", exact)
    dropouts = [Dropout(dropped, Phase.MASKED_INPUT)] if dropped is not None else []
    length = 4 * CHUNK_WORDS + 70  # chunks of CHUNK_WORDS + 17 or 18: two blocks each
    outcome = run_rs_round(n=4, vector_length=length, seed=740, dropouts=dropouts)
    results = outcome.results()
    assert set(results) == {p for p in range(4) if p != dropped}
    for result in results.values():
        assert np.array_equal(result.total, outcome.expected_total(result.included))
    assert max(requested) == CHUNK_WORDS
    assert min(requested) < CHUNK_WORDS
