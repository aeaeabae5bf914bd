"""Inconsistent dealers and lying holders are told apart, blamed, and change nothing."""

from __future__ import annotations

import numpy as np
import pytest

from mpc_agg import field as gf
from mpc_agg.crypto import aead_decrypt, aead_encrypt
from protocols.common import PeerExcluded
from protocols.robust.harness import InconsistentDealer, Rewrite, RobustOutcome, run_robust_round
from protocols.robust.machine import RobustMachine
from protocols.robust.messages import Output, OutputVerify, Verify, VerifyEntry
from protocols.robust.phases import MessageKind, Phase
from tests.protocol.robust.support import (
    assert_exact,
    exclusions,
    plaintext_sum,
)

N, D = 5, 400


def _reveals(outcome: object, phase: Phase) -> int:
    """Shares revealed publicly in ``phase`` by every peer (from the machines' records)."""
    machines = outcome.machines  # type: ignore[attr-defined]
    records = "_disputes" if phase is Phase.DISPUTE else "_output_disputes"
    return sum(
        len(getattr(m, records).get(m.me).reveals)
        for m in machines.values()
        if getattr(m, records).get(m.me) is not None
    )


def test_honest_round_reveals_no_share() -> None:
    outcome = run_robust_round(n=N, vector_length=D, seed=11)
    assert_exact(outcome)
    assert _reveals(outcome, Phase.DISPUTE) == 0
    for machine in outcome.machines.values():
        assert machine.phase is Phase.DONE
        assert machine._output_verify == {}  # the output check never ran


@pytest.mark.parametrize("victim", [1, 3])  # a seeded and a vector holder of dealer 0
def test_dealer_with_shares_off_the_polynomial_is_blamed(victim: int) -> None:
    cls = type("Dealer", (InconsistentDealer,), {"victim": victim})
    outcome = run_robust_round(n=N, vector_length=D, seed=12, machine_classes={0: cls})
    assert_exact(outcome, included=(1, 2, 3, 4))
    for peer in (1, 2, 3, 4):
        reason = exclusions(outcome, peer)[0]
        assert "contradicts the share it dealt" in reason, reason
        assert victim not in exclusions(outcome, peer)  # the holder is not blamed


def _wrong_verifier_share(machine: RobustMachine, payload: bytes) -> bytes:
    message = Verify.decode(
        payload, verifier_length=machine.shape.verifier_length, rows=machine._t + 1
    )
    entries = []
    for entry in message.entries:
        if entry.dealer == 2 and entry.values is not None:
            values = entry.values.copy()
            values[0] = (int(values[0]) + 1) % gf.P
            entries.append(VerifyEntry(dealer=entry.dealer, status=entry.status, values=values))
        else:
            entries.append(entry)
    return Verify(view=message.view, entries=tuple(entries), reference=message.reference).encode()


def test_holder_publishing_a_wrong_verifier_share_is_blamed_and_changes_nothing() -> None:
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=13,
        adversaries={4: Rewrite(MessageKind.VERIFY, _wrong_verifier_share)},
    )
    results = outcome.results()
    honest = (0, 1, 2, 3)
    for peer in honest:
        assert exclusions(outcome, peer)[4] == "published a wrong verifier share for dealer 2"
        assert 2 not in exclusions(outcome, peer)
        assert 2 in results[peer].included
    assert {results[p].included for p in honest} == {(0, 1, 2, 3)}
    for peer in honest:
        assert results[peer].total.view(np.int64).tolist() == _plain(outcome, (0, 1, 2, 3))
    assert _reveals(outcome, Phase.DISPUTE) == 1  # exactly the liar's own share of dealer 2


def _plain(outcome: RobustOutcome, included: tuple[int, ...]) -> list[int]:
    return plaintext_sum(outcome, included)


def _tampered_output(machine: RobustMachine, payload: bytes) -> bytes:
    message = Output.decode(payload)
    key = machine._output_share_key(machine.me)
    ad = machine._info(b"output-ad", machine.me)
    share = np.frombuffer(aead_decrypt(key, message.ciphertext, ad), dtype="<u8").copy()
    share[5] = (int(share[5]) + 12345) % gf.P
    return Output(view=message.view, ciphertext=aead_encrypt(key, share.tobytes(), ad)).encode()


def test_tampered_aggregate_share_is_detected_and_the_output_is_still_correct() -> None:
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=14,
        adversaries={3: Rewrite(MessageKind.OUTPUT, _tampered_output)},
    )
    results = outcome.results()
    for peer in (0, 1, 2, 4):
        assert exclusions(outcome, peer)[3] == "published a wrong aggregate share"
        assert results[peer].included == tuple(range(N))  # its input was valid and stays
        assert results[peer].total.view(np.int64).tolist() == _plain(outcome, tuple(range(N)))
        assert outcome.machines[peer]._output_verify  # the output check ran


def _wrong_projection(machine: RobustMachine, payload: bytes) -> bytes:
    message = OutputVerify.decode(payload)
    projections = tuple((d, (v + 1) % gf.P if d == 0 else v) for d, v in message.projections)
    return OutputVerify(
        view=message.view, projections=projections, reference=message.reference
    ).encode()


def test_tampered_share_and_projection_are_both_caught() -> None:
    outcome = run_robust_round(
        n=N,
        vector_length=D,
        seed=15,
        adversaries={
            3: _Both(),
        },
    )
    results = outcome.results()
    for peer in (0, 1, 2, 4):
        reason = exclusions(outcome, peer)[3]
        assert reason in (
            "published a wrong output projection for 0",
            "published a wrong aggregate share",
        ), reason
        assert results[peer].total.view(np.int64).tolist() == _plain(outcome, tuple(range(N)))


class _Both(Rewrite):
    """Tampers its aggregate share and then lies about a projection to cover it."""

    def __init__(self) -> None:
        super().__init__(MessageKind.OUTPUT, _tampered_output)
        self.second = Rewrite(MessageKind.OUTPUT_VERIFY, _wrong_projection)

    def outgoing(self, machine, kind, data):  # type: ignore[no-untyped-def]
        if kind == MessageKind.OUTPUT_VERIFY:
            return self.second.outgoing(machine, kind, data)
        return super().outgoing(machine, kind, data)


def test_two_colluding_liars_at_the_threshold_cannot_change_the_output() -> None:
    # n = 5, t = 2: two holders publish the same wrong aggregate shares (on one polynomial
    # with two honest points, the attack that fools plain Reed–Solomon decoding).
    shift = {}

    class Colluder(Rewrite):
        def __init__(self) -> None:
            super().__init__(MessageKind.OUTPUT, self._shift)

        def _shift(self, machine: RobustMachine, payload: bytes) -> bytes:
            message = Output.decode(payload)
            key = machine._output_share_key(machine.me)
            ad = machine._info(b"output-ad", machine.me)
            share = np.frombuffer(aead_decrypt(key, message.ciphertext, ad), dtype="<u8").copy()
            # Q = F + (X − x_0)(X − x_1): equal to F at holders 0 and 1
            x = machine.me + 1
            delta = (x - 1) * (x - 2) % gf.P
            shift[machine.me] = delta
            share[0] = (int(share[0]) + delta) % gf.P
            return Output(
                view=message.view, ciphertext=aead_encrypt(key, share.tobytes(), ad)
            ).encode()

    outcome = run_robust_round(
        n=N, vector_length=D, seed=16, adversaries={3: Colluder(), 4: Colluder()}
    )
    results = outcome.results()
    assert set(shift) == {3, 4}
    for peer in (0, 1, 2):
        assert results[peer].total.view(np.int64).tolist() == _plain(outcome, tuple(range(N)))
        excluded = exclusions(outcome, peer)
        assert excluded[3] == excluded[4] == "published a wrong aggregate share"


def test_effects_name_blamed_peers_once() -> None:
    cls = type("Dealer", (InconsistentDealer,), {"victim": 2})
    outcome = run_robust_round(n=N, vector_length=D, seed=17, machine_classes={1: cls})
    for peer in (0, 2, 3, 4):
        blamed = [e.peer for e in outcome.peers[peer].effects if isinstance(e, PeerExcluded)]
        assert blamed == [1]


def test_a_dealer_that_crashes_before_answering_a_dispute_is_dropped_not_blamed() -> None:
    from protocols.harness import Dropout  # noqa: PLC0415

    # holder 4 lies about dealer 2's verifier share; dealer 2 crashes entering DISPUTE.
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=18,
        threshold=2,
        adversaries={4: Rewrite(MessageKind.VERIFY, _wrong_verifier_share)},
        dropouts=[Dropout(peer=2, phase=Phase.DISPUTE)],
    )
    results = outcome.results()
    for peer in (0, 1, 3, 5, 6):
        result = results[peer]
        assert 2 not in result.excluded
        assert result.dropped[2].startswith("dropped before answering the dispute")
        assert 2 not in result.included
        assert result.total.view(np.int64).tolist() == _plain(outcome, result.included)
