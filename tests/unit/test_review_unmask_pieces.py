"""Review of the one-pass unmask and the sealed-from-pieces masked input (f574679, b0d9c61).

Under review:

- ``apply_masks(..., sources=...)`` sets the accumulator to the sum of ``sources`` in the
  same chunked pass as the masks (the accumulator may itself be a source);
- ``SecAggMachine._unmasked_sum``: the broadcast round's sum and unmasking in one pass,
  in place in a writable received vector (the MQTT reassembly path), else in the first
  half of a fresh uint64 array that ``ring.widen32_in_place`` sign-extends *after* the
  result digest was taken over the 32-bit words (SPEC §6.6);
- ``ring.narrow32`` in ``begin`` (b = 32 range check and words in one blocked pass);
- ``seal_envelope`` / ``payload_digest`` / ``MaskedInput.encode_parts`` / ``Writer.parts``.

End-to-end checks run the in-memory harness against the plaintext sum and recompute the
result digest independently, over every data path (b = 32 and 64, read-only, writable and
mixed deliveries, reduce-scatter), with dropouts, L < n and vectors that span several
blocks. Its three findings (aliased sources, a whole bytes-like payload, a read-only
buffer to widen) are fixed; their tests pass.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from mpc_agg.codec import Writer
from mpc_agg.crypto import SigningKey, payload_digest
from mpc_agg.envelope import BROADCAST, EnvelopeContext, parse_envelope, seal_envelope
from mpc_agg.errors import EncodingError
from mpc_agg.prg import CHUNK_WORDS, MaskTerm, apply_masks, expand
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import RING_DTYPE, RingVector, lift, narrow32, widen32_in_place
from protocols.common import Effect
from protocols.harness import (
    Dropout,
    RoundOutcome,
    make_roster,
    random_inputs,
    run_network,
    run_secagg_round,
)
from protocols.secagg import machine as machine_module
from protocols.secagg.machine import (
    SecAggMachine,
    SecAggParams,
    default_threshold,
    result_digest,
)
from protocols.secagg.messages import MaskedInput, MessageKind, Phase

B = CHUNK_WORDS  # apply_masks' chunk; ring._WIDEN_BLOCK is the same 2^15 entries
assert B == 1 << 15
KEYS = [bytes([i + 1]) * 32 for i in range(3)]
TERMS = [MaskTerm(KEYS[0], +1), MaskTerm(KEYS[1], -1), MaskTerm(KEYS[2], +1)]
BLOCK_LENGTHS = [1, 2, B - 1, B, B + 1, 2 * B - 1, 2 * B, 2 * B + 1, 3 * B + 7]
WordArray = NDArray[np.uint32] | NDArray[np.uint64]

# --------------------------------------------------------------------------- helpers


def _random_words(rng: np.random.Generator, length: int, dtype: type[np.unsignedinteger]) -> Any:
    return rng.integers(0, np.iinfo(dtype).max, length, dtype=dtype, endpoint=True)


def _reference(sources: Sequence[WordArray], length: int, dtype: type[np.unsignedinteger]) -> Any:
    """Σ sources + Σ sign·PRG(key), computed the slow, obvious way."""
    expected = np.zeros(length, dtype=dtype)
    for source in sources:
        np.add(expected, source, out=expected)
    for term in TERMS:
        mask = expand(term.key, length, dtype)
        if term.sign > 0:
            np.add(expected, mask, out=expected)
        else:
            np.subtract(expected, mask, out=expected)
    return expected


def _independent_digest(outcome: RoundOutcome, peer: int) -> tuple[bytes, bytes]:
    """(digest over b-bit words of the plaintext total, digest over its 64-bit widening)."""
    result = outcome.results()[peer]
    seeds = [outcome.machines[q]._self_mask_seed for q in result.included]
    expected = outcome.expected_total(result.included)  # sign-extended 64-bit words
    bits = outcome.params.ring_bits
    words = expected.astype(np.uint32) if bits == 32 else expected
    return (
        result_digest(result.included, words, seeds),
        result_digest(result.included, expected, seeds),
    )


def _assert_exact(outcome: RoundOutcome, *, finishers: int) -> None:
    """Every finisher outputs the plaintext sum, with the SPEC §6.6 digest, all confirmed."""
    assert outcome.aborts() == {}
    results = outcome.results()
    assert len(results) == finishers
    bits = outcome.params.ring_bits
    length = outcome.vector_length
    for peer, result in results.items():
        total = result.total
        assert total.dtype == RING_DTYPE
        assert total.shape == (length,)
        assert total.flags.c_contiguous
        assert np.array_equal(total, outcome.expected_total(result.included))
        if bits == 32:  # sign-extended: lift() reads [−2^31, 2^31)
            signed = lift(total)
            assert int(signed.min()) >= -(1 << 31)
            assert int(signed.max()) < 1 << 31
        over_words, over_wide = _independent_digest(outcome, peer)
        assert result.result_digest == over_words
        if bits == 32:  # the digest covers the 32-bit words, *not* the widened total
            assert result.result_digest != over_wide
        assert result.disagreeing == ()
        assert set(result.confirmed_by) == set(results) - {peer}


def _extreme_inputs(n: int, length: int, seed: int) -> dict[int, RingVector]:
    """b = 32 inputs over the whole ring, the extremes on every block boundary."""
    rng = np.random.default_rng(seed)
    inputs = {}
    for p in range(n):
        signed = rng.integers(-(1 << 31), 1 << 31, length, dtype=np.int64)
        for edge in range(0, length + 1, B):
            for offset, value in ((-1, -(1 << 31)), (0, (1 << 31) - 1), (1, -1)):
                if 0 <= edge + offset < length:
                    signed[edge + offset] = value if p % 2 == 0 else -1 - value
        inputs[p] = signed.view(np.uint64)
    return inputs


class _WidenSpy:
    """Wraps ``widen32_in_place`` in the machine: records the 32-bit words it widened."""

    def __init__(self) -> None:
        self.words: list[NDArray[np.uint32]] = []

    def __call__(self, buffer: RingVector) -> RingVector:
        self.words.append(buffer.view(np.uint32)[: buffer.shape[0]].copy())
        return widen32_in_place(buffer)


@pytest.fixture
def widen_spy(monkeypatch: pytest.MonkeyPatch) -> _WidenSpy:
    spy = _WidenSpy()
    monkeypatch.setattr(machine_module, "widen32_in_place", spy)
    return spy


# --------------------------------------------------------------------------- apply_masks


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
@pytest.mark.parametrize("length", [0, 1, B - 1, B, B + 1, 2 * B + 3])
def test_sources_sum_exactly_at_every_chunk_boundary(
    dtype: type[np.unsignedinteger], length: int
) -> None:
    rng = np.random.default_rng(length)
    a, b, c = (_random_words(rng, length, dtype) for _ in range(3))
    expected = _reference([a, b, c], length, dtype)
    before = [a.copy(), b.copy(), c.copy()]

    fresh = np.full(length, np.iinfo(dtype).max, dtype=dtype)  # previous content ignored
    apply_masks(fresh, TERMS, sources=[a, b, c], initial_zero=True)
    assert np.array_equal(fresh, expected)
    assert all(np.array_equal(x, y) for x, y in zip(before, [a, b, c], strict=True))

    for position in range(3):  # the accumulator is the first, middle or last source
        inside = [a, b, c][position].copy()
        sources = [a, b, c]
        sources[position] = inside
        apply_masks(inside, TERMS, sources=sources)
        assert np.array_equal(inside, expected), position


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_sources_may_be_strided_or_read_only_and_the_accumulator_strided(
    dtype: type[np.unsignedinteger],
) -> None:
    length = B + 9
    rng = np.random.default_rng(7)
    a = _random_words(rng, 2 * length, dtype)[::2]  # non-contiguous
    b = _random_words(rng, length, dtype)
    b.flags.writeable = False
    c = _random_words(rng, length, dtype)[::-1]  # negative stride
    expected = _reference([a, b, c], length, dtype)
    backing = np.zeros(3 * length, dtype=dtype)
    accumulator = backing[::3]
    apply_masks(accumulator, TERMS, sources=[a, b, c])
    assert np.array_equal(accumulator, expected)
    assert not backing[1::3].any()  # nothing written between the accumulator's entries
    assert not backing[2::3].any()


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_a_source_given_twice_counts_twice(dtype: type[np.unsignedinteger]) -> None:
    length = B + 1
    rng = np.random.default_rng(1)
    a, b = (_random_words(rng, length, dtype) for _ in range(2))
    accumulator = np.empty(length, dtype=dtype)
    apply_masks(accumulator, TERMS, sources=[a, b, a])
    assert np.array_equal(accumulator, _reference([a, b, a], length, dtype))


def test_sources_without_terms_and_without_sources() -> None:
    length = B + 1
    rng = np.random.default_rng(2)
    a, b = (_random_words(rng, length, np.uint64) for _ in range(2))
    accumulator = np.empty(length, dtype=np.uint64)
    apply_masks(accumulator, [], sources=[a, b])
    assert np.array_equal(accumulator, a + b)
    untouched = a.copy()
    apply_masks(untouched, [], sources=())
    assert np.array_equal(untouched, a)


def test_a_read_only_accumulator_is_refused_not_silently_skipped() -> None:
    accumulator = np.zeros(8, dtype=np.uint32)
    accumulator.flags.writeable = False
    with pytest.raises(ValueError, match="read-only"):
        apply_masks(accumulator, TERMS, sources=[np.ones(8, dtype=np.uint32)])


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_the_accumulator_listed_twice_counts_twice(dtype: type[np.unsignedinteger]) -> None:
    length = B + 1
    rng = np.random.default_rng(3)
    a, b = (_random_words(rng, length, dtype) for _ in range(2))
    expected = _reference([a, a, b], length, dtype)
    accumulator = a.copy()
    apply_masks(accumulator, TERMS, sources=[accumulator, accumulator, b])
    assert np.array_equal(accumulator, expected)


@pytest.mark.parametrize("dtype", [np.uint32, np.uint64])
def test_a_view_of_the_accumulator_after_another_source(
    dtype: type[np.unsignedinteger],
) -> None:
    length = B + 1
    rng = np.random.default_rng(4)
    a, b = (_random_words(rng, length, dtype) for _ in range(2))
    expected = _reference([b, a], length, dtype)
    accumulator = a.copy()
    try:  # refusing the overlap is as good as summing it right; a wrong sum is not
        apply_masks(accumulator, TERMS, sources=[b, accumulator[:]])
    except ValueError:
        return
    assert np.array_equal(accumulator, expected)


# --------------------------------------------------------------------------- widen32


@pytest.mark.parametrize("length", [0, *BLOCK_LENGTHS])
def test_widen32_at_every_block_boundary_and_at_the_half(length: int) -> None:
    rng = np.random.default_rng(length + 11)
    words = rng.integers(-(1 << 31), 1 << 31, length, dtype=np.int64).astype(np.int32)
    # the extremes around every block boundary and around L/2, where the 64-bit words
    # being written meet the 32-bit words still to be read
    edges = [*range(0, length + 1, B), length // 2, (length + 1) // 2, length]
    for edge in edges:
        for offset, value in ((-2, 0), (-1, -(1 << 31)), (0, (1 << 31) - 1), (1, -1)):
            if 0 <= edge + offset < length:
                words[edge + offset] = value
    buffer = np.full(length, 0xA5A5A5A5A5A5A5A5, dtype=RING_DTYPE)  # junk in the top half
    buffer.view(np.int32)[:length] = words
    assert widen32_in_place(buffer) is buffer
    assert np.array_equal(lift(buffer), words.astype(np.int64))


def test_widen32_of_an_offset_slice_touches_only_the_slice() -> None:
    length = 2 * B + 5
    backing = np.full(length + 6, 0x1122334455667788, dtype=RING_DTYPE)
    buffer = backing[3 : 3 + length]  # C-contiguous, not at the start of its allocation
    words = np.arange(length, dtype=np.int64).astype(np.int32) - (1 << 16)
    buffer.view(np.int32)[:length] = words
    widen32_in_place(buffer)
    assert np.array_equal(lift(buffer), words.astype(np.int64))
    assert (backing[:3] == 0x1122334455667788).all()
    assert (backing[3 + length :] == 0x1122334455667788).all()


def test_widen32_of_a_read_only_buffer_raises() -> None:
    buffer = np.zeros(4, dtype=RING_DTYPE)
    buffer.flags.writeable = False
    with pytest.raises(EncodingError, match="writable 1-D C-contiguous uint64"):
        widen32_in_place(buffer)


# --------------------------------------------------------------------------- narrow32


@pytest.mark.parametrize("layout", ["min-first", "max-first", "both-last", "middle"])
def test_narrow32_reports_the_extremes_wherever_they_are(layout: str) -> None:
    length = 3 * B + 7
    rng = np.random.default_rng(5)
    signed = rng.integers(-1000, 1000, length, dtype=np.int64)
    where = {
        "min-first": (0, length - 1),
        "max-first": (length - 1, 0),
        "both-last": (length - 2, length - 1),
        "middle": (B, 2 * B - 1),
    }[layout]
    signed[where[0]] = -(1 << 40) - 3
    signed[where[1]] = (1 << 35) + 9
    words, low, high = narrow32(signed.view(RING_DTYPE))
    assert (low, high) == (-(1 << 40) - 3, (1 << 35) + 9)
    assert np.array_equal(words, (signed % (1 << 32)).astype(np.uint32))


def test_narrow32_of_a_read_only_strided_vector() -> None:
    signed = np.arange(-(1 << 17), 1 << 17, dtype=np.int64) * 7919
    view = signed.view(RING_DTYPE)[::3]
    view.flags.writeable = False
    words, low, high = narrow32(view)
    part = signed[::3]
    assert (low, high) == (int(part.min()), int(part.max()))
    assert np.array_equal(words, (part % (1 << 32)).astype(np.uint32))
    assert words.flags.c_contiguous
    assert words.flags.writeable


def test_narrow32_of_an_empty_vector() -> None:
    words, low, high = narrow32(np.zeros(0, dtype=RING_DTYPE))
    assert words.dtype == np.uint32
    assert words.shape == (0,)
    assert (low, high) == (0, -1)


def _params(
    *, federation: str, round_id: int, n: int, length: int, ring_bits: int
) -> tuple[SecAggParams, list[SigningKey]]:
    roster, keys = make_roster(n)
    params = SecAggParams(
        federation=federation,
        round_id=round_id,
        roster=roster,
        threshold=default_threshold(n),
        vector_length=length,
        ring_bits=ring_bits,
    )
    return params, list(keys)


def _machine(*, length: int, ring_bits: int = 32, n: int = 3) -> SecAggMachine:
    params, keys = _params(federation="review", round_id=1, n=n, length=length, ring_bits=ring_bits)
    return SecAggMachine(
        params, me=0, signing_key=keys[0], randomness=DeterministicRandomSource("review")
    )


def _phase(machine: SecAggMachine) -> Phase:
    return machine.phase


def _stored(machine: SecAggMachine) -> RingVector | NDArray[np.uint32] | None:
    return machine._input


@pytest.mark.parametrize(
    ("low_at", "high_at", "low", "high"),
    [
        (2 * B + 4, 0, -(1 << 31) - 1, 5),  # the only offender in the last block
        (0, 2 * B + 4, -3, 1 << 31),
        (B, B - 1, -(1 << 63), (1 << 63) - 1),  # the int64 extremes, either side of a block
    ],
)
def test_begin_names_the_exact_span_and_can_be_retried(
    low_at: int, high_at: int, low: int, high: int
) -> None:
    length = 2 * B + 5
    machine = _machine(length=length)
    signed = np.zeros(length, dtype=np.int64)
    signed[low_at] = low
    signed[high_at] = high
    with pytest.raises(EncodingError, match=re.escape(f"span [{low}, {high}]")):
        machine.begin(signed.view(RING_DTYPE))
    assert _phase(machine) == Phase.IDLE
    assert _stored(machine) is None
    signed[low_at], signed[high_at] = -(1 << 31), (1 << 31) - 1  # the ring's own extremes
    assert machine.begin(signed.view(RING_DTYPE))
    assert _phase(machine) == Phase.ADVERTISE_KEYS
    stored = _stored(machine)
    assert stored is not None
    assert stored.dtype == np.uint32
    assert np.array_equal(stored, (signed % (1 << 32)).astype(np.uint32))


# --------------------------------------------------------------------------- pieces

CONTEXT = EnvelopeContext(
    protocol="review", federation="pieces", roster_digest=bytes(range(32)), round_id=9
)
KEY = SigningKey(bytes(range(1, 33)))


def _seal(payload: bytes | Sequence[bytes | memoryview]) -> bytes:
    return seal_envelope(
        CONTEXT, phase=3, kind=3, sender=1, recipient=BROADCAST, payload=payload, signing_key=KEY
    )


def test_pieces_of_every_byte_kind_seal_to_the_whole() -> None:
    words = np.arange(1, 10, dtype=np.uint32)
    backing = bytearray(b"0123456789abcdef")
    pieces: list[bytes | memoryview] = [
        b"head",
        b"",
        memoryview(backing)[3:11],  # an offset slice of a writable buffer
        words.view(np.uint8).data,  # a vector's view (what Writer.parts holds)
        memoryview(b""),
        bytes(backing),
    ]
    whole = b"head" + bytes(backing[3:11]) + words.tobytes() + bytes(backing)
    sealed = _seal(pieces)
    assert sealed == _seal(whole)
    envelope = parse_envelope(sealed, max_payload=len(whole))
    assert bytes(envelope.payload) == whole
    assert envelope.payload_digest == payload_digest(*pieces) == payload_digest(whole)
    assert _seal([]) == _seal(b"")


@pytest.mark.parametrize(
    "piece",
    [
        np.arange(5, dtype=np.uint32).data,  # format "I": nbytes 20, len 5
        np.arange(6, dtype=np.uint16).reshape(2, 3).data,  # 2-D
        memoryview(bytes(range(16)))[::2],  # non-contiguous
    ],
    ids=["uint32", "2-D", "strided"],
)
def test_a_non_byte_piece_is_refused_or_sealed_exactly(piece: memoryview) -> None:
    """Never an envelope whose length, digest and bytes disagree (it raises today)."""
    whole = b"pre" + piece.tobytes() + b"post"
    try:
        sealed = _seal([b"pre", piece, b"post"])
    except (BufferError, TypeError, ValueError):
        return
    assert sealed == _seal(whole)


@pytest.mark.parametrize("kind", ["bytearray", "memoryview"])
def test_a_whole_bytes_like_payload_seals_like_bytes(kind: str) -> None:
    whole = bytes(range(40))
    payload = bytearray(whole) if kind == "bytearray" else memoryview(whole)
    assert _seal(payload) == _seal(whole)  # type: ignore[arg-type]


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("length", [1, 3, B + 1])
def test_masked_input_parts_join_to_the_encoding_and_view_the_vector(
    ring_bits: int, length: int
) -> None:
    dtype = np.uint32 if ring_bits == 32 else np.uint64
    rng = np.random.default_rng(length)
    masked = _random_words(rng, length, dtype)
    message = MaskedInput(mask_set=(0, 2), complaints=(), masked=masked, ring_bits=ring_bits)
    parts = message.encode_parts()
    joined = b"".join(parts)
    assert joined == message.encode()
    assert sum(memoryview(p).nbytes for p in parts) == len(joined)
    assert any(np.shares_memory(np.frombuffer(p, np.uint8), masked) for p in parts)
    assert _seal(parts) == _seal(joined)
    decoded = MaskedInput.decode(joined, vector_length=length, ring_bits=ring_bits)
    assert np.array_equal(decoded.masked, masked)
    # a strided vector is copied (contiguously) into its piece
    strided = _random_words(rng, 2 * length, dtype)[::2]
    other = MaskedInput(mask_set=(1,), complaints=(), masked=strided, ring_bits=ring_bits)
    assert b"".join(other.encode_parts()) == other.encode()
    assert np.array_equal(
        MaskedInput.decode(other.encode(), vector_length=length, ring_bits=ring_bits).masked,
        strided,
    )


def test_writer_parts_is_a_snapshot_that_joins_to_getvalue() -> None:
    writer = Writer().u8(1).ring_vector32(np.arange(5, dtype=np.uint32), 5)
    parts = writer.parts()
    assert b"".join(parts) == writer.getvalue()
    writer.u8(2)
    assert b"".join(parts) + b"\x02" == writer.getvalue()


# --------------------------------------------------------------------------- rounds


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("length", [1, 2, B + 1, 2 * B + 3])
def test_broadcast_rounds_read_only_and_writable_agree_with_the_plaintext(
    ring_bits: int, length: int, widen_spy: _WidenSpy
) -> None:
    inputs = _extreme_inputs(3, length, length) if ring_bits == 32 else None
    outcomes = {}
    for writable in (False, True):
        widen_spy.words.clear()
        outcome = run_secagg_round(
            n=3,
            vector_length=length,
            seed=21,
            ring_bits=ring_bits,
            writable=writable,
            inputs=inputs,
        )
        _assert_exact(outcome, finishers=3)
        outcomes[writable] = outcome
        # b = 32 and read-only deliveries: the sum lands in a fresh 64-bit array's first half,
        # widened after the digest; a writable delivery is summed in place and copied out
        widened = ring_bits == 32 and not writable
        assert len(widen_spy.words) == (3 if widened else 0)
        for words in widen_spy.words:  # what was widened is the total's 32-bit words
            assert np.array_equal(words, outcome.expected_total(range(3)).astype(np.uint32))
    for peer in range(3):  # same seed, same round: the data path changes nothing
        a, b = outcomes[False].results()[peer], outcomes[True].results()[peer]
        assert a.result_digest == b.result_digest
        assert np.array_equal(a.total, b.total)


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("writable", [False, True])
@pytest.mark.parametrize("phase", [Phase.SHARE_KEYS, Phase.MASKED_INPUT, Phase.UNMASK])
def test_dropouts(ring_bits: int, writable: bool, phase: Phase, widen_spy: _WidenSpy) -> None:
    """A dealer lost at MASKED_INPUT puts its pairwise masks into D (s_w reconstructed)."""
    length = B + 3
    inputs = _extreme_inputs(5, length, 3) if ring_bits == 32 else None
    outcome = run_secagg_round(
        n=5,
        vector_length=length,
        seed=8,
        ring_bits=ring_bits,
        writable=writable,
        inputs=inputs,
        dropouts=[Dropout(4, phase)],
    )
    _assert_exact(outcome, finishers=4)
    # not a dealer: nowhere; a dealer without a masked input: in D; lost at UNMASK: in I
    included = (0, 1, 2, 3, 4) if phase == Phase.UNMASK else (0, 1, 2, 3)
    dropped_dealers = (4,) if phase == Phase.MASKED_INPUT else ()
    for peer, result in outcome.results().items():
        assert result.included == included
        agreement = outcome.machines[peer]._agreement
        assert agreement is not None
        assert agreement.dropped_dealers == dropped_dealers
    assert len(widen_spy.words) == (4 if ring_bits == 32 and not writable else 0)


@pytest.mark.parametrize(("ring_bits", "reduce_scatter"), [(32, False), (64, False), (32, True)])
@pytest.mark.parametrize("writable", [False, True])
def test_fewer_entries_than_peers(ring_bits: int, reduce_scatter: bool, writable: bool) -> None:
    outcome = run_secagg_round(
        n=5,
        vector_length=2,
        seed=4,
        ring_bits=ring_bits,
        reduce_scatter=reduce_scatter,
        writable=writable,
        inputs=_extreme_inputs(5, 2, 4) if ring_bits == 32 else None,
    )
    _assert_exact(outcome, finishers=5)


@pytest.mark.parametrize("length", [3, 2 * B + 3])
@pytest.mark.parametrize("writable", [False, True])
def test_reduce_scatter_rounds_are_unaffected(
    length: int, writable: bool, widen_spy: _WidenSpy
) -> None:
    outcome = run_secagg_round(
        n=4,
        vector_length=length,
        seed=6,
        ring_bits=32,
        reduce_scatter=True,
        writable=writable,
        inputs=_extreme_inputs(4, length, 6),
        dropouts=[Dropout(3, Phase.UNMASK)],
    )
    _assert_exact(outcome, finishers=3)
    assert widen_spy.words == []  # the chunk path's own total, never the broadcast sum


class _MixedDelivery(SecAggMachine):
    """Messages from ``read_only`` senders arrive as bytes, the rest as given (writable).

    Over MQTT a message of large frames is reassembled into a writable buffer and a small
    one is joined into bytes (``peers.chunking``), so both kinds meet in one sum.
    """

    read_only: frozenset[int] = frozenset()

    def receive(self, sender: int | None, data: bytes | memoryview) -> list[Effect]:
        if sender in self.read_only:
            data = bytes(data)
        return super().receive(sender, data)


def _mixed_round(
    *, ring_bits: int, length: int, read_only: frozenset[int], n: int = 4
) -> RoundOutcome:
    params, keys = _params(federation="mixed", round_id=3, n=n, length=length, ring_bits=ring_bits)
    root = DeterministicRandomSource("mixed")
    machines: dict[int, SecAggMachine] = {}
    for p in range(n):
        machine = _MixedDelivery(
            params, me=p, signing_key=keys[p], randomness=root.fork(f"peer/{p}")
        )
        machine.read_only = read_only
        machines[p] = machine
    inputs: Mapping[int, RingVector] = (
        _extreme_inputs(n, length, 9) if ring_bits == 32 else random_inputs(n, length, 9)
    )
    return run_network(
        params,
        machines,
        MessageKind,
        inputs,
        seed=9,
        dropouts=(),
        faults=(),
        adversaries=None,
        reorder=False,
        inject=(),
        vector_length=length,
        writable=True,
    )


@pytest.mark.parametrize("ring_bits", [32, 64])
@pytest.mark.parametrize("read_only", [frozenset({0}), frozenset({0, 2}), frozenset({1, 3})])
def test_mixed_writable_and_read_only_deliveries(ring_bits: int, read_only: frozenset[int]) -> None:
    """The writable vector taken as accumulator need not be the first included one."""
    _assert_exact(_mixed_round(ring_bits=ring_bits, length=B + 5, read_only=read_only), finishers=4)


def test_inputs_given_as_strided_read_only_views() -> None:
    length = B + 2
    inputs = {}
    for p, vector in _extreme_inputs(3, length, 12).items():
        backing = np.zeros(2 * length, dtype=RING_DTYPE)
        backing[::2] = vector
        view = backing[::2]
        view.flags.writeable = False
        inputs[p] = view
    for ring_bits in (32, 64):
        outcome = run_secagg_round(
            n=3, vector_length=length, seed=13, ring_bits=ring_bits, inputs=inputs
        )
        _assert_exact(outcome, finishers=3)
