"""An untrusted broker (DESIGN §2): replays, duplicates, bit flips, reordering, lost messages."""

from __future__ import annotations

import re

import numpy as np
import pytest

from protocols.common import AggregateReady, Broadcast, MessageIgnored, PhaseStarted
from protocols.harness import (
    Fault,
    FaultKind,
    RoundOutcome,
    make_roster,
    run_secagg_round,
)
from protocols.secagg.messages import BROADCAST_ROUND_KINDS, MessageKind, Phase
from tests.protocol.support import (
    assert_correct_or_aborted,
    assert_exact,
    drive_to,
    effects_of,
    exclusions,
    ignored,
    record_transcript,
    run_steps,
)

N = 5  # default T = 4


def _captured(outcome: RoundOutcome) -> list[tuple[int, bytes]]:
    """Every broadcast of every peer, as (sender, sealed bytes)."""
    return [
        (peer, effect.data)
        for peer in outcome.peers
        for effect in effects_of(outcome, peer, Broadcast)
    ]


def _assert_all_exact(outcome: RoundOutcome, n: int) -> None:
    results = outcome.results()
    assert sorted(results) == list(range(n))
    for result in results.values():
        assert result.included == tuple(range(n))
        assert_exact(outcome, result)


@pytest.mark.parametrize(
    ("federation", "round_id", "roster_seed", "reason"),
    [
        ("harness", 1, 0, "not for this round: message is for round 1, this is round 2"),
        ("other", 2, 0, "not for this federation: federation 'other' is not 'harness'"),
        (
            "harness",
            2,
            1,
            "not for this federation: roster digest does not match this federation's roster",
        ),
    ],
    ids=["previous-round", "other-federation", "other-roster"],
)
def test_replayed_messages_are_ignored(
    federation: str, round_id: int, roster_seed: int, reason: str
) -> None:
    source = run_secagg_round(
        n=N,
        vector_length=32,
        seed=5,
        round_id=round_id,
        federation=federation,
        roster=make_roster(N, seed=roster_seed),
    )
    assert len(source.results()) == N
    captured = _captured(source)
    assert len(captured) == N * len(BROADCAST_ROUND_KINDS)
    replay = [(r, data) for sender, data in captured for r in range(N) if r != sender]
    outcome = run_secagg_round(
        n=N, vector_length=32, seed=6, round_id=2, federation="harness", inject=replay
    )
    _assert_all_exact(outcome, N)
    for peer in range(N):
        notes = ignored(outcome, peer)
        assert len(notes) == len(captured) - len(BROADCAST_ROUND_KINDS)  # all but its own six
        assert all(note == MessageIgnored(None, reason) for note in notes)
        assert exclusions(outcome, peer) == []


def test_duplicates_are_ignored() -> None:
    outcome = run_secagg_round(
        n=N, vector_length=32, seed=7, faults=[Fault(kind=FaultKind.DUPLICATE)]
    )
    _assert_all_exact(outcome, N)
    for peer in range(N):
        notes = ignored(outcome, peer)
        # one duplicate per message from each of the other peers
        assert len(notes) == (N - 1) * len(BROADCAST_ROUND_KINDS)
        assert {n.reason for n in notes} == {f"duplicate {k.name}" for k in BROADCAST_ROUND_KINDS}
        assert exclusions(outcome, peer) == []


@pytest.mark.parametrize("seed", range(8))
def test_random_bit_flips_give_correct_or_abort(seed: int) -> None:
    outcome = run_secagg_round(
        n=N,
        vector_length=32,
        seed=300 + seed,
        faults=[Fault(kind=FaultKind.TAMPER, probability=0.03)],
    )
    assert_correct_or_aborted(outcome, range(N))
    finished = outcome.results()
    digests = {r.result_digest for r in finished.values() if r.included == tuple(range(N))}
    assert len(digests) <= 1
    # a flipped bit is never attributable: nobody is blamed for the network's doing
    for peer in range(N):
        assert exclusions(outcome, peer) == []


#: Reasons a bit-flipped envelope can be ignored for (never a crash, never blame).
TAMPER_REASONS = re.compile(
    r"^(malformed message|not for this (round|federation)|unknown sender id|transport says sender"
    r"|unknown message kind|\w+ with wrong phase or recipient|forged or corrupted)"
)


@pytest.mark.parametrize("kind", list(BROADCAST_ROUND_KINDS), ids=lambda k: k.name)
def test_one_tampered_message_is_ignored_and_the_round_ends_correct_or_aborted(
    kind: MessageKind,
) -> None:
    outcome = run_secagg_round(
        n=N,
        vector_length=32,
        seed=400 + kind,
        faults=[Fault(kind=FaultKind.TAMPER, sender=1, recipient=0, message=kind)],
    )
    assert_correct_or_aborted(outcome, range(N))
    tampered = [n for n in ignored(outcome, 0) if TAMPER_REASONS.match(n.reason)]
    assert len(tampered) == 1, ignored(outcome, 0)
    for peer in range(1, N):
        assert not [n for n in ignored(outcome, peer) if TAMPER_REASONS.match(n.reason)]
        assert exclusions(outcome, peer) == []


def test_every_single_bit_flip_is_ignored_without_poisoning_the_machine() -> None:
    """Flip one bit in every byte of a real ShareKeys (header, payload, signature): each copy
    is ignored; the genuine message still completes the phase (no false equivocation)."""
    transcript = record_transcript()
    machine, remaining = drive_to(transcript, Phase.SHARE_KEYS)
    genuine = transcript.messages[(1, MessageKind.SHARE_KEYS)]
    for position in range(len(genuine)):
        flipped = bytearray(genuine)
        flipped[position] ^= 1 << (position % 8)
        effects = machine.receive(1, bytes(flipped))
        assert len(effects) == 1, (position, effects)
        assert isinstance(effects[0], MessageIgnored), (position, effects)
        assert TAMPER_REASONS.match(effects[0].reason), effects[0].reason
        assert machine.phase is Phase.SHARE_KEYS
    for cut in (0, 1, 10, len(genuine) // 2, len(genuine) - 1):
        effects = machine.receive(1, genuine[:cut])
        assert [type(e) for e in effects] == [MessageIgnored]
    effects = machine.receive(1, genuine + b"\x00")
    assert [type(e) for e in effects] == [MessageIgnored]
    assert "trailing" in effects[0].reason  # type: ignore[attr-defined]
    effects = machine.receive(1, genuine)
    assert PhaseStarted(Phase.MASKED_INPUT) in effects
    # the round then completes exactly from the recorded messages
    done = run_steps(transcript, machine, remaining, skip=(1, MessageKind.SHARE_KEYS))
    results = [e for e in done if isinstance(e, AggregateReady)]
    assert len(results) == 1
    assert results[0].included == (0, 1, 2)
    assert np.array_equal(results[0].total, transcript.expected)


@pytest.mark.parametrize("seed", range(4))
def test_reordering_gives_exact_results(seed: int) -> None:
    outcome = run_secagg_round(n=N, vector_length=32, seed=500 + seed, reorder=True)
    _assert_all_exact(outcome, N)
    assert len({r.result_digest for r in outcome.results().values()}) == 1
    assert all(
        np.array_equal(r.total, outcome.results()[0].total) for r in outcome.results().values()
    )


#: Who ends up in the sum when peer 1's message of a kind never reaches peer 0 (n=5, T=4).
#: Early losses stall peer 0 until the deadline, by which time the others moved on without
#: it; later losses are absorbed by the n−T slack.
LOST_MESSAGE_INCLUDED = {
    MessageKind.ADVERTISE_KEYS: (1, 2, 3, 4),
    MessageKind.SHARE_KEYS: (1, 2, 3, 4),
    MessageKind.MASKED_INPUT: (0, 1, 2, 3, 4),
    MessageKind.CONSISTENCY_CHECK: (0, 1, 2, 3, 4),
    MessageKind.UNMASK: (0, 1, 2, 3, 4),
    MessageKind.RESULT_DIGEST: (0, 1, 2, 3, 4),
}


@pytest.mark.parametrize("kind", list(BROADCAST_ROUND_KINDS), ids=lambda k: k.name)
def test_a_message_lost_to_one_peer_gives_correct_or_abort(kind: MessageKind) -> None:
    outcome = run_secagg_round(
        n=N,
        vector_length=32,
        seed=1,
        faults=[Fault(kind=FaultKind.DROP, sender=1, recipient=0, message=kind)],
    )
    assert_correct_or_aborted(outcome, range(N))
    included = LOST_MESSAGE_INCLUDED[kind]
    for peer in range(1, N):
        result = outcome.peers[peer].result
        assert result is not None
        assert result.included == included
        assert set(result.dropped) == set(range(N)) - set(included)
    victim = outcome.peers[0]
    if kind.phase >= Phase.CONSISTENCY_CHECK:
        assert victim.result is not None
        assert victim.result.included == included
    else:
        assert victim.aborted is not None
        assert "different view" in victim.aborted.reason
