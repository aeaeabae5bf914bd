"""Dropouts at every phase (DESIGN §5.1: exact with up to n−T dropouts), and late arrivals.

Threshold behaviour with n−T+1 dropouts, as the machine implements it (SPEC §6/§7):

* before UNMASK every phase checks its own count against T and aborts ("… T=4");
* at UNMASK the survivors still reveal, but hold fewer than T shares of each secret, so
  reconstruction aborts ("… 4 needed"): a wrong sum is impossible, secrets stay hidden;
* at CONFIRM_RESULT every Unmask already arrived: the survivors compute the exact sum,
  and ``confirmed_by`` shows how few peers confirmed it (the digest exchange is a
  cross-check, not a threshold).
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from protocols.common import MessageIgnored
from protocols.harness import Dropout, Fault, FaultKind, run_secagg_round
from protocols.secagg.messages import MessageKind, Phase, ShareKind
from tests.protocol.support import (
    assert_exact,
    assert_never_both_kinds,
    effects_of,
    ignored,
    plaintext_sum,
    revealed_on_wire,
)

N, T = 7, 4
ACTIVE = [
    Phase.ADVERTISE_KEYS,
    Phase.SHARE_KEYS,
    Phase.MASKED_INPUT,
    Phase.CONSISTENCY_CHECK,
    Phase.UNMASK,
    Phase.CONFIRM_RESULT,
]
#: Why a peer that crashed entering each phase is missing from the sum (None: it is included).
DROP_REASON = {
    Phase.ADVERTISE_KEYS: "no AdvertiseKeys before the deadline",
    Phase.SHARE_KEYS: "no ShareKeys before the deadline",
    Phase.MASKED_INPUT: "no MaskedInput before the deadline",
    Phase.CONSISTENCY_CHECK: None,
    Phase.UNMASK: None,
    Phase.CONFIRM_RESULT: None,
}


@pytest.mark.parametrize("phase", ACTIVE, ids=lambda p: p.name)
def test_n_minus_t_dropouts_still_give_the_exact_sum(phase: Phase) -> None:
    crashed = {1, 3, 6}
    assert len(crashed) == N - T
    outcome = run_secagg_round(
        n=N,
        threshold=T,
        vector_length=64,
        seed=int(phase),
        dropouts=[Dropout(p, phase) for p in sorted(crashed)],
    )
    survivors = [p for p in range(N) if p not in crashed]
    assert {p for p, o in outcome.peers.items() if o.crashed} == crashed
    reason = DROP_REASON[phase]
    included = tuple(survivors) if reason is not None else tuple(range(N))
    results = outcome.results()
    assert sorted(results) == survivors
    assert not outcome.aborts()
    for peer, result in results.items():
        assert result.included == included
        assert_exact(outcome, result)
        assert np.array_equal(result.total, plaintext_sum(outcome.inputs, included))
        expected_dropped = dict.fromkeys(crashed, reason) if reason is not None else {}
        assert dict(result.dropped) == expected_dropped
        assert dict(result.excluded) == {}
        assert set(result.dropped) | set(result.included) == set(range(N))
        assert result.confirmed_by == tuple(p for p in survivors if p != peer)
    # what was unmasked: self-masks of the included, mask keys of dealers that dropped
    # after dealing (only when they dropped before their masked input arrived)
    for peer in survivors:
        revealed = revealed_on_wire(outcome, peer)
        expected_kinds = {p: {ShareKind.SELF_MASK} for p in included}
        if phase is Phase.MASKED_INPUT:
            expected_kinds |= {p: {ShareKind.MASK_KEY} for p in crashed}
        assert revealed == expected_kinds
    assert_never_both_kinds(outcome, survivors)


ABORT_REASON = {
    Phase.ADVERTISE_KEYS: r"^only 3 of 7 peers advertised keys \{0, 2, 4\}; threshold T=4$",
    Phase.SHARE_KEYS: r"^only 3 peers dealt valid shares \{0, 2, 4\}; threshold T=4$",
    Phase.MASKED_INPUT: r"^only 3 masked inputs arrived \{0, 2, 4\}; threshold T=4$",
    Phase.CONSISTENCY_CHECK: r"^only 3 peers confirmed the view \{0, 2, 4\}; threshold T=4$",
    Phase.UNMASK: r"^cannot reconstruct the SELF_MASK of peer 0: .*only 3 valid shares.*4 needed",
}


@pytest.mark.parametrize("phase", ACTIVE, ids=lambda p: p.name)
def test_n_minus_t_plus_one_dropouts_never_give_a_wrong_sum(phase: Phase) -> None:
    crashed = {1, 3, 5, 6}
    assert len(crashed) == N - T + 1
    outcome = run_secagg_round(
        n=N,
        threshold=T,
        vector_length=64,
        seed=50 + int(phase),
        dropouts=[Dropout(p, phase) for p in sorted(crashed)],
    )
    survivors = [0, 2, 4]
    if phase is Phase.CONFIRM_RESULT:
        # every Unmask was delivered before the crash: the sum is complete and exact
        results = outcome.results()
        assert sorted(results) == survivors
        for peer, result in results.items():
            assert result.included == tuple(range(N))
            assert_exact(outcome, result)
            assert result.confirmed_by == tuple(p for p in survivors if p != peer)
        return
    assert outcome.results() == {}
    aborts = outcome.aborts()
    assert sorted(aborts) == survivors
    for peer, aborted in aborts.items():
        assert re.search(ABORT_REASON[phase], aborted.reason), aborted.reason
        assert aborted.phase is phase
        assert outcome.machines[peer].phase is Phase.ABORTED
        if phase < Phase.UNMASK:
            assert revealed_on_wire(outcome, peer) == {}
            assert outcome.machines[peer].revealed == {}
    assert_never_both_kinds(outcome, survivors)


LATE_KINDS = [MessageKind.ADVERTISE_KEYS, MessageKind.SHARE_KEYS, MessageKind.MASKED_INPUT]


@pytest.mark.parametrize("kind", LATE_KINDS, ids=lambda k: k.name)
@pytest.mark.parametrize("late", [6, 0])
def test_late_message_sender_is_dropped_and_never_unmasked(late: int, kind: MessageKind) -> None:
    """DESIGN §5.1 / SPEC §7: a late message from a peer already declared dropped is never used.

    The harness releases a delayed message only after every recipient's deadline for
    that phase fired, so it arrives once the phase is closed. The MaskedInput case is the
    late-arrival attack of Bonawitz et al.: the late peer's mask key is reconstructed, so
    its self-mask seed must never be revealed — and it is not.
    """
    outcome = run_secagg_round(
        n=N,
        threshold=T,
        vector_length=64,
        seed=77 + late + 10 * kind,
        faults=[Fault(kind=FaultKind.DELAY, sender=late, message=kind)],
    )
    honest = [p for p in range(N) if p != late]
    included = tuple(honest)
    results = outcome.results()
    assert sorted(results) == honest
    for peer in honest:
        result = results[peer]
        assert result.included == included
        assert_exact(outcome, result)
        assert dict(result.dropped) == {late: DROP_REASON[kind.phase]}
        assert dict(result.excluded) == {}
        assert late not in result.confirmed_by
        late_note = MessageIgnored(late, f"late {kind.name}: phase {kind.phase.name} is closed")
        assert ignored(outcome, peer).count(late_note) == 1
        machine = outcome.machines[peer]
        assert late not in machine._inputs  # its input was never used
        expected = dict.fromkeys(included, ShareKind.SELF_MASK)
        if kind is MessageKind.MASKED_INPUT:
            expected[late] = ShareKind.MASK_KEY  # only its pairwise masks are removed
        assert machine.revealed == expected
        assert revealed_on_wire(outcome, peer) == {p: {k} for p, k in expected.items()}
    assert_never_both_kinds(outcome, honest)
    # the late peer itself cannot finish alone, and reveals nothing
    aborted = outcome.peers[late].aborted
    assert aborted is not None
    assert outcome.machines[late].revealed == {}
    assert revealed_on_wire(outcome, late) == {}


def test_masked_input_withheld_from_some_peers_never_unmasks_both_kinds() -> None:
    """The broker delivers peer 6's MaskedInput to {0, 1, 2} on time and to {3, 4, 5} late.

    {0, 1, 2, 6} hold the same view and T=4 confirmations: they include 6 and finish.
    {3, 4, 5} froze a view without 6, see a different view and abort before revealing
    anything — so nobody ever reveals 6's mask key next to its self-mask.
    """
    slow = (3, 4, 5)
    outcome = run_secagg_round(
        n=N,
        threshold=T,
        vector_length=64,
        seed=9,
        faults=[
            Fault(kind=FaultKind.DELAY, sender=6, recipient=r, message=MessageKind.MASKED_INPUT)
            for r in slow
        ],
    )
    fast = [0, 1, 2, 6]
    results = outcome.results()
    assert sorted(results) == fast
    for peer in fast:
        assert results[peer].included == tuple(range(N))
        assert_exact(outcome, results[peer])
    for peer in slow:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert "different view" in aborted.reason
        assert "inputs only they have {6}" in aborted.reason
        assert revealed_on_wire(outcome, peer) == {}
        assert effects_of(outcome, peer, type(aborted)) == [aborted]
    assert_never_both_kinds(outcome, range(N))
