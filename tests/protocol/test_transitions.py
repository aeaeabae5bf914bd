"""§4.2: walk every (phase × message kind) pair of TRANSITIONS through ``receive``.

A fresh peer 0 is driven into each phase with the recorded messages of an honest round
(see :class:`tests.protocol.support.Transcript`), then fed a real, validly signed message
of each kind. The documented action must be exactly what happens:

* PROCESS  — the message is used: it completes the phase, and the round ends exactly;
* BUFFER   — nothing happens now; it is used later (the round completes without resending);
* LATE     — ``MessageIgnored("late …")`` and nothing else;
* FINISHED — ``MessageIgnored("… after the round ended")`` and nothing else.

LATE and FINISHED are probed with peer 3, a roster member that never spoke, so the reply
cannot be the duplicate check's.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from functools import cache

import numpy as np
import pytest

from protocols.admission import Action
from protocols.common import (
    AggregateReady,
    Broadcast,
    Effect,
    MessageIgnored,
    PeerExcluded,
    PhaseStarted,
    RoundAborted,
)
from protocols.secagg.machine import TRANSITIONS
from protocols.secagg.messages import (
    BROADCAST_ROUND_KINDS,
    BROADCAST_ROUND_PHASES,
    MessageKind,
    Phase,
)
from tests.protocol.support import Transcript, drive_to, record_transcript, run_steps

PAIRS = list(itertools.product(Phase, MessageKind))
#: The pairs a broadcast round can meet (its transcript drives the machine into each phase).
ROUND_PAIRS = list(itertools.product(BROADCAST_ROUND_PHASES, BROADCAST_ROUND_KINDS))
ACTIVE = [p for p in BROADCAST_ROUND_PHASES if p not in (Phase.IDLE, Phase.DONE, Phase.ABORTED)]


def _next(phase: Phase) -> Phase:
    """The phase a broadcast round enters after ``phase`` (it skips CHUNK_SUM)."""
    return BROADCAST_ROUND_PHASES[BROADCAST_ROUND_PHASES.index(phase) + 1]


@cache
def _transcript() -> Transcript:
    return record_transcript()


def test_the_table_is_total_and_matches_the_phase_order() -> None:
    assert set(TRANSITIONS) == set(PAIRS)
    assert len(TRANSITIONS) == len(Phase) * len(MessageKind)
    for (phase, kind), action in TRANSITIONS.items():
        assert kind.phase.value == kind.value or kind is MessageKind.MASKED_CHUNK
        if phase in (Phase.DONE, Phase.ABORTED):
            assert action is Action.FINISHED
        elif phase is Phase.IDLE or kind.phase > phase:
            assert action is Action.BUFFER
        elif kind.phase == phase:
            assert action is Action.PROCESS
        else:
            assert action is Action.LATE
    # each active phase processes exactly its own kind
    for phase in ACTIVE:
        processed = [k for k in MessageKind if TRANSITIONS[(phase, k)] is Action.PROCESS]
        own = [MessageKind(phase.value)]
        assert processed == own + [MessageKind.MASKED_CHUNK] * (phase is Phase.MASKED_INPUT)


def _finish_exactly(transcript: Transcript, effects: Sequence[Effect]) -> None:
    results = [e for e in effects if isinstance(e, AggregateReady)]
    assert len(results) == 1, effects
    assert results[0].included == (0, 1, 2)
    assert np.array_equal(results[0].total, transcript.expected)
    assert results[0].confirmed_by == (1, 2)
    assert not [e for e in effects if isinstance(e, MessageIgnored | PeerExcluded | RoundAborted)]


@pytest.mark.parametrize(("phase", "kind"), ROUND_PAIRS, ids=lambda v: v.name)
def test_transition(phase: Phase, kind: MessageKind) -> None:
    transcript = _transcript()
    action = TRANSITIONS[(phase, kind)]
    machine, remaining = drive_to(transcript, phase)
    assert machine.phase is phase

    if action is Action.FINISHED or action is Action.LATE:
        effects = machine.receive(3, transcript.probe(kind))
        expected = (
            f"{kind.name} after the round ended"
            if action is Action.FINISHED
            else f"late {kind.name}: phase {kind.phase.name} is closed"
        )
        assert effects == [MessageIgnored(3, expected)]
        assert machine.phase is phase
        if action is Action.FINISHED:
            # peer 1's real message: refused just the same (a duplicate once DONE)
            again = machine.receive(1, transcript.messages[(1, kind)])
            if phase is Phase.DONE:
                assert again == [MessageIgnored(1, f"duplicate {kind.name}")]
            else:
                assert again == [MessageIgnored(1, expected)]
        return

    real = transcript.messages[(1, kind)]
    effects = machine.receive(1, real)
    if action is Action.BUFFER:
        assert effects == []
        assert machine.phase is phase
        # the buffered copy is used later: the round completes without it being resent
        _finish_exactly(transcript, run_steps(transcript, machine, remaining, skip=(1, kind)))
        return

    assert action is Action.PROCESS
    assert kind.phase == phase
    assert not [e for e in effects if isinstance(e, MessageIgnored | PeerExcluded | RoundAborted)]
    if phase is Phase.ADVERTISE_KEYS:
        # still waiting for peer 3 (it never speaks): the phase closes at its deadline
        assert effects == []
    elif phase is Phase.CONFIRM_RESULT:
        _finish_exactly(transcript, effects)
        assert machine.phase is Phase.DONE
        return
    else:
        assert effects[0] == PhaseStarted(_next(phase))
        sent = [e for e in effects if isinstance(e, Broadcast)]
        assert [e.phase for e in sent] == [_next(phase)]
        assert sent[0].data == transcript.messages[(0, MessageKind(_next(phase)))]
    _finish_exactly(transcript, run_steps(transcript, machine, remaining, skip=(1, kind)))


def test_idle_machine_buffers_everything_until_begin() -> None:
    transcript = _transcript()
    machine, remaining = drive_to(transcript, Phase.IDLE)
    for kind in BROADCAST_ROUND_KINDS:
        for sender in (1, 2):
            assert machine.receive(sender, transcript.messages[(sender, kind)]) == []
    assert machine.phase is Phase.IDLE
    effects = run_steps(transcript, machine, [("begin",), ("deadline", Phase.ADVERTISE_KEYS)])
    _finish_exactly(transcript, effects)
    assert [e.phase for e in effects if isinstance(e, PhaseStarted)] == [
        Phase.ADVERTISE_KEYS,
        Phase.SHARE_KEYS,
        Phase.MASKED_INPUT,
        Phase.CONSISTENCY_CHECK,
        Phase.UNMASK,
        Phase.CONFIRM_RESULT,
    ]
    assert remaining[0] == ("begin",)


def test_own_echo_is_silently_dropped_in_every_phase() -> None:
    transcript = _transcript()
    for phase in BROADCAST_ROUND_PHASES:
        machine, _ = drive_to(transcript, phase)
        for kind in BROADCAST_ROUND_KINDS:
            assert machine.receive(0, transcript.messages[(0, kind)]) == []
        assert machine.phase is phase


def test_deadline_for_another_phase_does_nothing() -> None:
    transcript = _transcript()
    for phase in ACTIVE:
        machine, _ = drive_to(transcript, phase)
        for other in Phase:
            if other is not phase:
                assert machine.deadline(other) == []
                assert machine.phase is phase
