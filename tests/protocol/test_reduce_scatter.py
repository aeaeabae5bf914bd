"""SPEC §6.7: the reduce-scatter data path — chunks to owners, verified chunk sums.

Honest rounds are exact at every size (chunks may be empty); dropouts before the masked
input are absorbed (an orphaned chunk is summed from its parts), dropouts between the
masked input and the checks abort before anything is revealed, later ones are absorbed;
a wrong chunk sum, or a chunk that does not match its header, aborts every honest peer
before any share is revealed.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mpc_agg.codec import InvalidValueError, Writer, write_u16_set
from mpc_agg.envelope import parse_envelope
from mpc_agg.errors import DecodeError
from protocols.common import MessageIgnored
from protocols.harness import (
    Adversary,
    Dropout,
    Outgoing,
    RoundOutcome,
    adopt,
    make_roster,
    resign,
)
from protocols.secagg.machine import SecAggMachine, SecAggParams, chunk_bounds
from protocols.secagg.messages import ChunkSum, MaskedChunk, MessageKind, Phase, sum_high_bytes
from tests.protocol.support import run_rs_round

N = 7


def _exact(outcome: RoundOutcome, peers: set[int]) -> None:
    results = outcome.results()
    assert set(results) == peers, outcome.aborts()
    for result in results.values():
        assert np.array_equal(result.total, outcome.expected_total(result.included))


def _nothing_revealed(outcome: RoundOutcome) -> None:
    for machine in outcome.machines.values():
        assert machine.revealed == {}


@pytest.mark.parametrize(("n", "length"), [(3, 1), (3, 1000), (5, 3), (7, 1001), (10, 64)])
def test_honest_rounds_are_exact_whatever_the_chunking(n: int, length: int) -> None:
    outcome = run_rs_round(n=n, vector_length=length, seed=n + length)
    _exact(outcome, set(range(n)))


def test_chunks_cover_the_vector_once() -> None:
    for length in (1, 5, 1000, 1001):
        for owners in (2, 3, 7):
            bounds = chunk_bounds(length, owners)
            assert bounds[0][0] == 0
            assert bounds[-1][1] == length
            assert all(a[1] == b[0] for a, b in itertools.pairwise(bounds))


@pytest.mark.parametrize(
    "phase", [Phase.ADVERTISE_KEYS, Phase.SHARE_KEYS, Phase.MASKED_INPUT], ids=lambda p: p.name
)
def test_a_dropout_before_the_masked_input_is_absorbed(phase: Phase) -> None:
    # from MASKED_INPUT on the dropped peer is an owner without a header: its chunk is
    # orphaned and summed by everyone from the parts the included peers publish
    outcome = run_rs_round(n=N, vector_length=501, seed=3, dropouts=[Dropout(3, phase)])
    _exact(outcome, set(range(N)) - {3})
    assert all(3 not in r.included for r in outcome.results().values())


def test_two_orphaned_chunks() -> None:
    dropouts = [Dropout(1, Phase.MASKED_INPUT), Dropout(5, Phase.MASKED_INPUT)]
    outcome = run_rs_round(n=N, vector_length=77, seed=4, dropouts=dropouts)
    _exact(outcome, set(range(N)) - {1, 5})


@pytest.mark.parametrize("phase", [Phase.CHUNK_SUM, Phase.CONSISTENCY_CHECK], ids=lambda p: p.name)
def test_a_dropout_between_the_masked_input_and_the_checks_aborts_before_any_reveal(
    phase: Phase,
) -> None:
    outcome = run_rs_round(n=N, vector_length=64, seed=5, dropouts=[Dropout(3, phase)])
    assert not outcome.results()
    assert set(outcome.aborts()) == set(range(N)) - {3}
    _nothing_revealed(outcome)


@pytest.mark.parametrize("phase", [Phase.UNMASK, Phase.CONFIRM_RESULT], ids=lambda p: p.name)
def test_a_dropout_after_the_checks_is_absorbed(phase: Phase) -> None:
    outcome = run_rs_round(n=N, vector_length=64, seed=6, dropouts=[Dropout(3, phase)])
    _exact(outcome, set(range(N)) - {3})
    assert all(r.included == tuple(range(N)) for r in outcome.results().values())


class _WrongSum(Adversary):
    """An owner that adds ``shift`` to one entry of its chunk sum (and keeps its own view)."""

    def __init__(self, fix_checks: bool = False) -> None:
        self.fix_checks = fix_checks

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        if kind is not MessageKind.CHUNK_SUM:
            return [Outgoing(data)]
        chunks = machine._chunks
        assert chunks is not None
        start, stop = chunks.bounds[machine.me]
        payload = parse_envelope(data, max_payload=1 << 30).payload
        message = ChunkSum.decode(payload, length=stop - start, orphans={})
        sums = message.sums.copy()
        sums[0] += np.uint64(1)
        wrong = ChunkSum.from_sums(missing=message.missing, sums=sums, orphans=message.orphans)
        forged = resign(machine, kind, wrong.encode())
        chunks.sums[machine.me] = (wrong, b"")
        adopt(machine, kind, forged)
        return [Outgoing(forged)]


def test_a_wrong_chunk_sum_aborts_every_honest_peer_before_any_reveal() -> None:
    outcome = run_rs_round(n=N, vector_length=100, seed=7, adversaries={2: _WrongSum()})
    assert not outcome.results()
    for peer, aborted in outcome.aborts().items():
        if peer != 2:
            assert "chunk sum of owner 2 does not match" in aborted.reason
    _nothing_revealed(outcome)


class _BadChunk(Adversary):
    """Sends owner 0 a chunk that differs from the digest in its broadcast header."""

    def outgoing_private(
        self, machine: SecAggMachine, kind: MessageKind, data: bytes, recipient: int
    ) -> list[Outgoing]:
        if kind is not MessageKind.MASKED_CHUNK or recipient != 0:
            return [Outgoing(data, recipient)]
        payload = parse_envelope(data, max_payload=1 << 30).payload
        words = MaskedChunk.decode(payload, length=len(payload) // 4 - 2).words.copy()
        words[0] ^= np.uint32(1)
        return [Outgoing(resign_to(machine, MaskedChunk(words=words).encode(), 0), recipient)]


def resign_to(machine: SecAggMachine, payload: bytes, recipient: int) -> bytes:
    return machine._seal(MessageKind.MASKED_CHUNK, payload, recipient)


def test_a_chunk_that_does_not_match_its_header_aborts_before_any_reveal() -> None:
    outcome = run_rs_round(n=N, vector_length=140, seed=8, adversaries={4: _BadChunk()})
    assert not outcome.results()
    for peer, aborted in outcome.aborts().items():
        if peer != 4:
            assert "chunk owner 0 lacks the chunks of {4}" in aborted.reason, aborted.reason
    _nothing_revealed(outcome)


def test_a_masked_chunk_in_a_broadcast_round_is_ignored() -> None:
    roster, keys = make_roster(3)
    params = SecAggParams(
        federation="f", round_id=1, roster=roster, threshold=2, vector_length=4, ring_bits=32
    )
    from mpc_agg.randomness import DeterministicRandomSource  # noqa: PLC0415

    machines = [
        SecAggMachine(params, me=p, signing_key=keys[p], randomness=DeterministicRandomSource(p))
        for p in range(3)
    ]
    machines[0].begin(np.zeros(4, dtype=np.uint64))
    data = machines[1]._seal(
        MessageKind.MASKED_CHUNK, MaskedChunk(words=np.zeros(2, np.uint32)).encode(), 0
    )
    machines[0].phase = Phase.MASKED_INPUT  # as if there: the chunk is processed now
    effects = machines[0].receive(1, data)
    assert effects[0] == MessageIgnored(1, "MaskedChunk in a broadcast round")


def test_reduce_scatter_needs_the_32_bit_ring() -> None:
    roster, _ = make_roster(3)
    with pytest.raises(ValueError, match="ring_bits = 32"):
        SecAggParams(
            federation="f",
            round_id=1,
            roster=roster,
            threshold=2,
            vector_length=4,
            reduce_scatter=True,
        )


def test_the_data_path_is_part_of_the_protocol_name() -> None:
    roster, _ = make_roster(3)

    def params(rs: bool) -> SecAggParams:
        return SecAggParams(
            federation="f",
            round_id=1,
            roster=roster,
            threshold=2,
            vector_length=4,
            ring_bits=32,
            reduce_scatter=rs,
        )

    rs, plain = params(True), params(False)
    assert rs.protocol_id == "secagg/4 b32 L4 rs"
    assert plain.protocol_id == "secagg/4 b32 L4"


@pytest.mark.parametrize("n", [3, 256, 257, 1024])
def test_chunk_sums_travel_as_low_words_and_high_bytes(n: int) -> None:
    # §5.8: each exact sum of ≤ n words < 2^32 is < n·2^32, sent as 4 + 1 bytes up to
    # n = 256 and 4 + 2 beyond, instead of 8
    width = sum_high_bytes(n)
    assert width == (1 if n <= 256 else 2)
    largest = n * 0xFFFFFFFF
    sums = np.array([0, 1, 0xFFFFFFFF, 1 << 32, largest], dtype=np.uint64)
    message = ChunkSum.from_sums(missing=(), sums=sums, orphans=(), high_bytes=width)
    wire = message.encode()
    decoded = ChunkSum.decode(wire, length=5, orphans={}, high_bytes=width)
    assert np.array_equal(decoded.sums, sums)
    assert decoded.encode() == wire
    zeros = ChunkSum.from_sums(
        missing=(), sums=np.zeros(1000, np.uint64), orphans=(), high_bytes=width
    )
    assert len(zeros.encode()) < (4 + width) * 1000 + 64
    assert decoded.low.base is not None  # a view into the payload, not a copy
    with pytest.raises(DecodeError):  # the other width misreads the layout
        ChunkSum.decode(wire, length=5, orphans={}, high_bytes=3 - width)
    too_large = np.array([1 << (32 + 8 * width)], np.uint64)
    with pytest.raises(DecodeError, match="does not fit"):
        ChunkSum.from_sums(missing=(), sums=too_large, orphans=(), high_bytes=width)
    assert np.array_equal(decoded.exact(1, 4), sums[1:4])


def test_chunk_sum_parts_of_different_lengths_are_malformed() -> None:
    w = Writer()
    write_u16_set(w, (), 1024)
    w.ring_vector32(np.arange(3, dtype=np.uint32), 1 << 31)
    w.small_words(np.zeros(2, dtype=np.uint8), 1, 1 << 31)
    w.u32(0)
    with pytest.raises(DecodeError, match="differ in length"):
        ChunkSum.decode(w.getvalue(), length=3, orphans={})


@pytest.mark.parametrize(
    ("parts", "length", "high_bytes"),
    [(1, 0, 1), (3, 1, 1), (255, 70_001, 1), (257, 33_000, 2), (4, 3 * (1 << 15) + 5, 2)],
)
def test_chunk_sum_summing_matches_from_sums(parts: int, length: int, high_bytes: int) -> None:
    rng = np.random.default_rng(parts + length)
    words = [
        rng.integers(0, 1 << 32, length, dtype=np.uint64).astype(np.uint32) for _ in range(parts)
    ]
    if length:
        for w in words:
            w[0] = 0xFFFFFFFF  # the largest sum the parts can reach, in the first entry
    orphans = ((1, words[0][: min(length, 3)]),)
    exact = np.zeros(length, dtype=np.uint64)
    for w in words:
        exact += w
    reference = ChunkSum.from_sums(missing=(), sums=exact, orphans=orphans, high_bytes=high_bytes)
    summed = ChunkSum.summing(parts=words, length=length, orphans=orphans, high_bytes=high_bytes)
    assert summed.encode() == reference.encode()
    assert b"".join(summed.encode_parts()) == reference.encode()
    assert np.array_equal(summed.sums, exact)


def test_chunk_sum_summing_refuses_what_does_not_fit_or_is_not_a_part() -> None:
    full = np.full(5, 0xFFFFFFFF, dtype=np.uint32)
    with pytest.raises(InvalidValueError, match="does not fit in 5 bytes"):
        ChunkSum.summing(parts=[full] * 257, length=5, orphans=(), high_bytes=1)
    with pytest.raises(InvalidValueError, match="uint32 vectors of 5 entries"):
        ChunkSum.summing(parts=[full[:4]], length=5, orphans=(), high_bytes=1)
    with pytest.raises(InvalidValueError, match="uint32 vectors of 5 entries"):
        ChunkSum.summing(parts=[full.astype(np.uint64)], length=5, orphans=(), high_bytes=1)
    with pytest.raises(InvalidValueError, match="1 or 2 bytes"):
        ChunkSum.summing(parts=[full], length=5, orphans=(), high_bytes=4)
