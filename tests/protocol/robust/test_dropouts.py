"""Dropouts: with 2t+1 live peers the round completes; below that it aborts with a reason."""

from __future__ import annotations

import pytest

from protocols.harness import Dropout
from protocols.robust.harness import RobustOutcome, run_robust_round
from protocols.robust.phases import Phase
from tests.protocol.robust.support import assert_exact, plaintext_sum

N, T, D = 7, 2, 200  # 2t + 1 = 5: two dropouts tolerated

#: Phases a peer can crash at, and whether its input is still summed.
BEFORE_ACCEPTANCE = [
    Phase.IDLE,
    Phase.ADVERTISE,
    Phase.DEAL_INPUT,
    Phase.WRAP_CHALLENGE,
    Phase.DEAL_PROOF,
]
AFTER_ACCEPTANCE = [Phase.OUTPUT, Phase.CONFIRM]


@pytest.mark.parametrize("phase", BEFORE_ACCEPTANCE, ids=lambda p: p.name)
def test_two_dropouts_before_acceptance_are_left_out(phase: Phase) -> None:
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=21,
        threshold=T,
        dropouts=[Dropout(peer=5, phase=phase), Dropout(peer=6, phase=phase)],
    )
    live = tuple(range(5))
    for peer in live:
        result = outcome.results()[peer]
        assert result.included == live
        assert set(result.dropped) == {5, 6}
    assert_exact_among(outcome, live)


def assert_exact_among(outcome: RobustOutcome, live: tuple[int, ...]) -> None:
    results = outcome.results()
    assert set(results) == set(live), outcome.aborts()
    for result in results.values():
        assert result.total.view("int64").tolist() == plaintext_sum(outcome, result.included)


@pytest.mark.parametrize(
    "phase", [Phase.QUERY_CHALLENGE, Phase.VERIFY, Phase.DISPUTE], ids=lambda p: p.name
)
def test_dealers_gone_after_dealing_are_verified_by_the_others(phase: Phase) -> None:
    """Both stages were dealt: 2t+1 agreeing holders verify a dealer without its reference."""
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=22,
        threshold=T,
        dropouts=[Dropout(peer=5, phase=phase), Dropout(peer=6, phase=phase)],
    )
    live = tuple(range(5))
    results = outcome.results()
    assert set(results) == set(live), outcome.aborts()
    for result in results.values():
        assert result.included == tuple(range(N))
    assert_exact_among(outcome, live)


@pytest.mark.parametrize("phase", AFTER_ACCEPTANCE, ids=lambda p: p.name)
def test_dropouts_after_acceptance_stay_included(phase: Phase) -> None:
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=23,
        threshold=T,
        dropouts=[Dropout(peer=0, phase=phase), Dropout(peer=3, phase=phase)],
    )
    live = (1, 2, 4, 5, 6)
    results = outcome.results()
    assert set(results) == set(live), outcome.aborts()
    for result in results.values():
        assert result.included == tuple(range(N))
    assert_exact_among(outcome, live)


@pytest.mark.parametrize("phase", [Phase.ADVERTISE, Phase.DEAL_PROOF, Phase.OUTPUT])
def test_three_dropouts_abort_with_a_reason(phase: Phase) -> None:
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=24,
        threshold=T,
        dropouts=[Dropout(peer=p, phase=phase) for p in (1, 4, 6)],
    )
    assert not outcome.results()
    aborts = outcome.aborts()
    assert set(aborts) == {0, 2, 3, 5}
    for abort in aborts.values():
        assert "robust needs 2t+1 = 5" in abort.reason, abort.reason
        assert abort.reason.startswith("only 4 peers live")


def test_minimum_federation_without_dropouts() -> None:
    assert_exact(run_robust_round(n=3, vector_length=50, seed=25))


def test_minimum_federation_aborts_on_one_dropout() -> None:
    outcome = run_robust_round(
        n=3, vector_length=50, seed=26, dropouts=[Dropout(peer=2, phase=Phase.DEAL_INPUT)]
    )
    assert not outcome.results()
    assert all("2t+1 = 3" in a.reason for a in outcome.aborts().values())
