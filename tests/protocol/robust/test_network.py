"""Network faults, equivocation, replays, API misuse and the transition table."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from mpc_agg.crypto import SigningKey
from mpc_agg.errors import ProtocolMisuseError
from mpc_agg.normproof import NormBoundError
from mpc_agg.randomness import DeterministicRandomSource
from protocols.admission import Action
from protocols.common import Broadcast, MessageIgnored, RoundAborted, Send
from protocols.harness import Adversary, Fault, FaultKind, Outgoing, make_roster
from protocols.robust.harness import payload_of, resign, run_robust_round
from protocols.robust.machine import TRANSITIONS, RobustMachine
from protocols.robust.params import RobustParams
from protocols.robust.phases import ACTIVE_PHASES, MessageKind, Phase
from tests.protocol.robust.support import assert_exact, plaintext_sum

N, D = 5, 64


def test_duplicates_change_nothing() -> None:
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=41,
        faults=[Fault(kind=FaultKind.DUPLICATE, probability=0.3)],
    )
    assert_exact(outcome, included=tuple(range(N)))


@pytest.mark.parametrize("seed", range(5))
def test_arbitrary_reordering_keeps_every_result_exact_and_agreed(seed: int) -> None:
    # A share overtaken by a whole phase of broadcasts counts as missing at its holder
    # (an erasure), so a dealer may be left out; whatever happens, results are exact.
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=seed,
        threshold=2,
        faults=[Fault(kind=FaultKind.DUPLICATE, probability=0.3)],
        reorder=True,
    )
    results = outcome.results()
    assert len(results) >= 5
    assert len({(r.included, r.result_digest) for r in results.values()}) == 1
    for result in results.values():
        assert result.total.view(np.int64).tolist() == plaintext_sum(outcome, result.included)


def test_tampered_bytes_are_ignored_not_blamed() -> None:
    # every DealProof broadcast of peer 2 is bit-flipped: the signature fails, nobody is
    # blamed, and peer 2 counts as having dropped out of DEAL_PROOF at every receiver
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=42,
        threshold=2,
        faults=[Fault(kind=FaultKind.TAMPER, sender=2, message=MessageKind.DEAL_PROOF)],
    )
    for result in outcome.results().values():
        assert 2 not in result.excluded
        assert 2 not in result.included
        assert result.total.view(np.int64).tolist() == plaintext_sum(outcome, result.included)


def test_a_lost_private_share_makes_an_erasure_not_a_blame() -> None:
    # the broker drops dealer 1's input share to holder 3: dealer 1 is still verified by
    # the other six holders; holder 3 cannot open the output and aborts alone
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=43,
        threshold=2,
        faults=[Fault(kind=FaultKind.DROP, sender=1, recipient=3, message=MessageKind.INPUT_SHARE)],
    )
    results = outcome.results()
    assert set(results) == {0, 1, 2, 4, 5, 6}
    for result in results.values():
        assert result.included == tuple(range(7))
        assert not result.excluded
        assert result.total.view(np.int64).tolist() == plaintext_sum(outcome, result.included)
    assert "holds no input share of accepted dealers {1}" in outcome.aborts()[3].reason


def test_a_late_message_is_never_used() -> None:
    # peer 4's DealInput reaches everybody after DEAL_INPUT closed: it is not a dealer
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=44,
        threshold=2,
        faults=[Fault(kind=FaultKind.DELAY, sender=4, message=MessageKind.DEAL_INPUT)],
    )
    honest = [p for p in range(7) if p != 4]
    for peer in honest:
        effects = outcome.peers[peer].effects
        assert any(
            isinstance(e, MessageIgnored) and e.reason.startswith("late DEAL_INPUT")
            for e in effects
        )
    for result in outcome.results().values():
        assert 4 not in result.included


class Equivocator(Adversary):
    """Sends one DealInput to peers 0–1 and a different (re-signed) one to the others."""

    def outgoing(self, machine: RobustMachine, kind: object, data: bytes) -> list[Outgoing]:
        if kind != MessageKind.DEAL_INPUT:
            return [Outgoing(data)]
        payload = bytearray(payload_of(data))
        payload[-1] ^= 1  # another output-key commitment
        other = resign(machine, MessageKind.DEAL_INPUT, bytes(payload), 0xFFFF)
        return [Outgoing(data if p < 2 else other, p) for p in range(machine.params.n) if p != 4]


def test_equivocation_aborts_the_round() -> None:
    outcome = run_robust_round(n=N, vector_length=D, seed=45, adversaries={4: Equivocator()})
    honest = range(4)
    assert not any(p in outcome.results() for p in honest)
    for peer in honest:
        assert "different view" in outcome.aborts()[peer].reason


def test_replay_from_another_round_is_ignored() -> None:
    first = run_robust_round(n=N, vector_length=D, seed=46, round_id=1)
    replayed = [
        (1, e.data)
        for e in first.peers[0].effects
        if isinstance(e, Broadcast | Send) and (not isinstance(e, Send) or e.recipient == 1)
    ]
    second = run_robust_round(n=N, vector_length=D, seed=46, round_id=2, inject=replayed)
    assert_exact(second)
    ignored = [
        e
        for e in second.peers[1].effects
        if isinstance(e, MessageIgnored) and "round 1" in e.reason
    ]
    assert len(ignored) == len(replayed)


# --------------------------------------------------------------------------- misuse


def _machine() -> RobustMachine:
    roster, keys = make_roster(3)
    params = RobustParams(
        federation="f", round_id=1, roster=roster, threshold=1, vector_length=8, norm_bound=100
    )
    return RobustMachine(params, me=0, signing_key=keys[0], randomness=DeterministicRandomSource(1))


def test_api_misuse_raises() -> None:
    machine = _machine()
    with pytest.raises(ValueError, match="entries"):
        machine.begin(np.zeros(7, dtype=np.uint64))
    too_big = np.zeros(8, dtype=np.int64)
    too_big[0] = 101
    with pytest.raises(NormBoundError, match="exceeds"):
        machine.begin(too_big.view(np.uint64))
    machine.begin(np.zeros(8, dtype=np.uint64))
    with pytest.raises(ProtocolMisuseError, match="once per round"):
        machine.begin(np.zeros(8, dtype=np.uint64))
    _, keys = make_roster(3)
    params = machine.params
    with pytest.raises(ProtocolMisuseError, match="roster"):
        RobustMachine(params, me=3, signing_key=keys[0], randomness=DeterministicRandomSource(1))
    with pytest.raises(ProtocolMisuseError, match="signing key"):
        RobustMachine(
            params,
            me=0,
            signing_key=SigningKey.generate(DeterministicRandomSource(9)),
            randomness=DeterministicRandomSource(1),
        )


@pytest.mark.parametrize(
    ("threshold", "bound", "match"),
    [(0, 100, "threshold"), (2, 100, "threshold"), (1, 0, "positive"), (1, 1 << 40, "too large")],
)
def test_bad_parameters_raise(threshold: int, bound: int, match: str) -> None:
    roster, _ = make_roster(4)
    with pytest.raises(ValueError, match=match):
        RobustParams(
            federation="f",
            round_id=1,
            roster=roster,
            threshold=threshold,
            vector_length=8,
            norm_bound=bound,
        )


def test_transition_table_is_total_and_follows_the_phase_order() -> None:
    assert set(TRANSITIONS) == set(itertools.product(Phase, MessageKind))
    for (phase, kind), action in TRANSITIONS.items():
        if phase in (Phase.DONE, Phase.ABORTED):
            assert action is Action.FINISHED
        elif phase is Phase.IDLE or kind.phase > phase:
            assert action is Action.BUFFER
        elif kind.phase == phase or (kind.private and phase == kind.phase + 1):
            assert action is Action.PROCESS
        else:
            assert action is Action.LATE
    for phase in ACTIVE_PHASES:
        processed = {k for k in MessageKind if TRANSITIONS[(phase, k)] is Action.PROCESS}
        broadcast = {k for k in processed if not k.private}
        assert len(broadcast) == 1
        assert all(k.phase is phase for k in broadcast)


def test_deadline_for_another_phase_does_nothing_and_aborted_machines_stay_quiet() -> None:
    machine = _machine()
    machine.begin(np.zeros(8, dtype=np.uint64))
    assert machine.deadline(Phase.VERIFY) == []
    effects = machine.deadline(Phase.ADVERTISE)  # alone: 1 < 2t+1 = 3
    assert [type(e) for e in effects] == [RoundAborted]
    assert machine.finished
    assert machine.deadline(Phase.ADVERTISE) == []
