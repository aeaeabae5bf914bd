"""Active adversaries: equivocation, garbage inputs, and views crafted to unmask twice."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np
import pytest

from protocols.common import Broadcast
from protocols.harness import (
    Adversary,
    Fault,
    FaultKind,
    RoundOutcome,
    corrupt_payload,
    run_secagg_round,
)
from protocols.secagg.machine import SecAggMachine
from protocols.secagg.messages import (
    ConsistencyCheck,
    MaskedInput,
    MessageKind,
    Phase,
    ShareKind,
)
from tests.protocol.support import (
    SplitAdversary,
    alternative_share_keys,
    assert_correct_or_aborted,
    assert_exact,
    assert_never_both_kinds,
    effects_of,
    exclusions,
    no_result_differs,
    plaintext_sum,
    revealed_on_wire,
    unmask_recipients,
)

N = 6  # default T = 5


def _shifted_masked_input(machine: SecAggMachine, payload: bytes) -> bytes:
    message = MaskedInput.decode(payload, vector_length=machine.params.vector_length)
    return MaskedInput(
        mask_set=message.mask_set,
        complaints=message.complaints,
        masked=message.masked + np.uint64(1),
    ).encode()


def _second_share_keys(machine: SecAggMachine, payload: bytes) -> bytes:
    return alternative_share_keys(machine, "equivocation")


ALTERNATIVES = {
    MessageKind.SHARE_KEYS: _second_share_keys,
    MessageKind.MASKED_INPUT: _shifted_masked_input,
}


def _assert_nothing_unmasked(outcome: RoundOutcome, peers: list[int]) -> None:
    for peer in peers:
        assert outcome.machines[peer].phase is Phase.ABORTED
        unmasks = [e for e in effects_of(outcome, peer, Broadcast) if e.phase is Phase.UNMASK]
        assert unmasks == []
        assert revealed_on_wire(outcome, peer) == {}
        assert outcome.machines[peer].revealed == {}


@pytest.mark.parametrize("kind", list(ALTERNATIVES), ids=lambda k: k.name)
@pytest.mark.parametrize("sees_both", [(), (5,)], ids=["halves", "one-sees-both"])
def test_equivocation_never_yields_a_wrong_result(
    kind: MessageKind, sees_both: tuple[int, ...]
) -> None:
    """Peer 0 sends one validly signed message to {1, 2} and a different one to {3, 4, 5}."""
    liar = 0
    adversary = SplitAdversary(
        kind=kind,
        first_half=frozenset({1, 2}),
        alternative=ALTERNATIVES[kind],
        both=frozenset(sees_both),
    )
    outcome = run_secagg_round(n=N, vector_length=32, seed=60 + kind, adversaries={liar: adversary})
    # the two versions really are different, validly signed messages of the same kind
    assert adversary.sent["honest"] != adversary.sent["alternative"]
    honest = [p for p in range(N) if p != liar]
    no_result_differs(outcome, honest)
    assert_correct_or_aborted(outcome, honest)
    # with honest peers on both sides of the split, the views differ: everyone aborts
    assert outcome.results().keys().isdisjoint(honest)
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        if peer in sees_both:
            assert aborted.reason == f"peer {liar} equivocated in {kind.name}"
            assert aborted.phase is kind.phase
            excluded = [(e.peer, e.reason) for e in exclusions(outcome, peer)]
            assert excluded == [(liar, f"equivocation: two different signed {kind.name}")]
        else:
            label = "dealers" if kind is MessageKind.SHARE_KEYS else "inputs"
            assert "different view" in aborted.reason
            assert f"{label} with different digests {{{liar}}}" in aborted.reason
            assert aborted.phase is Phase.CONSISTENCY_CHECK
    _assert_nothing_unmasked(outcome, honest)


def test_garbage_masked_input_is_summed_as_the_adversary_s_effective_input() -> None:
    """DESIGN §5.3: ``secagg`` does not validate inputs (clipping is client-side).

    Adding garbage g to the masked vector is indistinguishable from submitting x + g: every
    honest peer agrees on Σ honest + (x_adv + g). Catching this is the job of ``robust``.
    """
    liar = 3
    garbage = np.random.default_rng(7).integers(0, 1 << 63, size=48, dtype=np.uint64)

    def add_garbage(machine: SecAggMachine, payload: bytes) -> bytes:
        message = MaskedInput.decode(payload, vector_length=machine.params.vector_length)
        return MaskedInput(
            mask_set=message.mask_set,
            complaints=message.complaints,
            masked=message.masked + garbage,
        ).encode()

    outcome = run_secagg_round(
        n=N,
        vector_length=48,
        seed=70,
        adversaries={liar: corrupt_payload(add_garbage, MessageKind.MASKED_INPUT)},
    )
    honest = [p for p in range(N) if p != liar]
    effective = outcome.inputs[liar] + garbage
    expected = plaintext_sum({**outcome.inputs, liar: effective}, range(N))
    results = outcome.results()
    totals = [results[p].total for p in honest]
    for peer, total in zip(honest, totals, strict=True):
        assert results[peer].included == tuple(range(N))
        assert np.array_equal(total, expected)
        assert dict(results[peer].excluded) == {}
        assert results[peer].result_digest == results[honest[0]].result_digest
    assert not np.array_equal(totals[0], plaintext_sum(outcome.inputs, range(N)))


def _omit(survivor: int) -> Callable[[SecAggMachine, bytes], bytes]:
    """A ConsistencyCheck rewrite that drops ``survivor`` from the view's inputs."""

    def omit(machine: SecAggMachine, payload: bytes) -> bytes:
        view = ConsistencyCheck.decode(payload)
        inputs = tuple((p, d) for p, d in view.inputs if p != survivor)
        return dataclasses.replace(view, inputs=inputs).encode()

    return omit


def _omitting_adversary(survivor: int) -> Adversary:
    return corrupt_payload(_omit(survivor), MessageKind.CONSISTENCY_CHECK)


def test_view_omitting_a_survivor_aborts_before_anything_is_unmasked() -> None:
    """A view without survivor 2 would make its holders reveal 2's MASK_KEY while the others
    reveal 2's SELF_MASK. Every honest peer sees the differing view and aborts first."""
    liar, survivor = 4, 2
    outcome = run_secagg_round(
        n=N, vector_length=32, seed=80, adversaries={liar: _omitting_adversary(survivor)}
    )
    honest = [p for p in range(N) if p != liar]
    assert outcome.results() == {}
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert aborted.phase is Phase.CONSISTENCY_CHECK
        assert aborted.reason == (
            f"peer {liar} reports a different view (inputs only I have {{{survivor}}}); "
            "honest peers must agree before anything is unmasked"
        )
    _assert_nothing_unmasked(outcome, honest)
    assert_never_both_kinds(outcome, honest)


@pytest.mark.parametrize("threshold", [4, 5])
def test_view_omitting_a_survivor_sent_to_some_peers_never_unmasks_both_kinds(
    threshold: int,
) -> None:
    """The liar shows its honest view to {1, 2, 3} and one without survivor 2 to {4, 5}.

    {4, 5} abort before revealing anything, so 2's MASK_KEY is never revealed. With T=4,
    {1, 2, 3} hold T confirmations of one view (theirs, the liar's, and the views {4, 5}
    sent before aborting), reveal 2's SELF_MASK and finish exactly. With T=5 they reveal
    too but receive only 4 Unmasks (the liar's and each other's) and abort at UNMASK.
    """
    liar, survivor = 0, 2
    adversary = SplitAdversary(
        kind=MessageKind.CONSISTENCY_CHECK,
        first_half=frozenset({1, 2, 3}),
        alternative=_omit(survivor),
    )
    outcome = run_secagg_round(
        n=N, threshold=threshold, vector_length=32, seed=81, adversaries={liar: adversary}
    )
    honest = [1, 2, 3, 4, 5]
    assert_correct_or_aborted(outcome, honest)
    for peer in (1, 2, 3):
        assert revealed_on_wire(outcome, peer)[survivor] == {ShareKind.SELF_MASK}
        if threshold == 4:
            result = outcome.peers[peer].result
            assert result is not None
            assert result.included == tuple(range(N))
            assert_exact(outcome, result)
        else:
            aborted = outcome.peers[peer].aborted
            assert aborted is not None
            assert aborted.phase is Phase.UNMASK
            assert "4 valid shares of 4 received; 5 needed" in aborted.reason
    for peer in (4, 5):
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert f"inputs only I have {{{survivor}}}" in aborted.reason
    _assert_nothing_unmasked(outcome, [4, 5])
    assert_never_both_kinds(outcome, honest)


def test_a_peer_whose_view_arrives_late_is_sent_no_shares() -> None:
    """The liar's (bad) view is held back until the others' deadline: they proceed with the T
    peers that confirmed, and address no Unmask ciphertext to the unconfirmed liar."""
    liar, survivor = 4, 2
    outcome = run_secagg_round(
        n=N,
        threshold=4,
        vector_length=32,
        seed=82,
        adversaries={liar: _omitting_adversary(survivor)},
        faults=[Fault(kind=FaultKind.DELAY, sender=liar, message=MessageKind.CONSISTENCY_CHECK)],
    )
    honest = [p for p in range(N) if p != liar]
    for peer in honest:
        result = outcome.peers[peer].result
        assert result is not None
        assert result.included == tuple(range(N))
        assert_exact(outcome, result)
        assert liar not in result.confirmed_by
        assert liar not in unmask_recipients(outcome, peer)
        assert unmask_recipients(outcome, peer) == set(honest) - {peer}
    assert_never_both_kinds(outcome, honest)
