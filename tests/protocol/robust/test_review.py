"""Review probes: crafted messages at the boundaries of admission and decoding.

Each test plays one deviating peer and checks that honest peers finish with the exact sum
of what they accept, blaming exactly the deviating peer (or nobody, when the deviation is
indistinguishable from a network fault).

The second part (security review of ``robust/1`` against up to t peers and the broker)
marks every test that demonstrates a confirmed bug ``xfail(strict=True)``: such a test
asserts the property the SPEC promises, and that assertion fails today. The other tests
probe attacks the implementation withstands and stay as regression tests.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest

from mpc_agg import field as gf
from mpc_agg import normproof
from mpc_agg.crypto import aead_decrypt, aead_encrypt, derive_key, sha256
from mpc_agg.envelope import BROADCAST, parse_envelope
from mpc_agg.errors import EncodingError
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.shares import DealtShares
from protocols.common import Broadcast, MessageIgnored, PeerExcluded, Send
from protocols.harness import Adversary, Dropout, Fault, FaultKind, Outgoing, make_roster
from protocols.robust.harness import (
    Rewrite,
    RobustOutcome,
    adopt,
    payload_of,
    resign,
    run_robust_round,
)
from protocols.robust.machine import RobustMachine
from protocols.robust.messages import (
    Challenge,
    DealInput,
    Output,
    OutputVerify,
    ShareStatus,
    Verify,
    VerifyEntry,
)
from protocols.robust.params import RobustParams
from protocols.robust.phases import MessageKind, Phase
from tests.protocol.robust.support import assert_exact, exclusions, plaintext_sum

N, D = 5, 120


class Misaddressed(Adversary):
    """Sends its input share for holder 1 to holder 2 as well (re-addressed to 1)."""

    def outgoing_private(
        self, machine: Any, kind: Any, data: bytes, recipient: int
    ) -> list[Outgoing]:
        out = [Outgoing(data, recipient)]
        if kind == MessageKind.INPUT_SHARE and recipient == 1:
            out.append(Outgoing(data, 2))  # still says recipient 1 inside the signature
        return out


def test_a_private_share_for_someone_else_is_ignored() -> None:
    outcome = run_robust_round(n=N, vector_length=D, seed=81, adversaries={0: Misaddressed()})
    assert_exact(outcome, included=tuple(range(N)))
    ignored = [
        e
        for e in outcome.peers[2].effects
        if isinstance(e, MessageIgnored) and "wrong phase or recipient" in e.reason
    ]
    assert len(ignored) == 1


class CrossStage(Adversary):
    """Re-signs its input share to holder 3 as that holder's proof share."""

    def __init__(self) -> None:
        self.input_payload = b""

    def outgoing_private(
        self, machine: Any, kind: Any, data: bytes, recipient: int
    ) -> list[Outgoing]:
        if kind == MessageKind.INPUT_SHARE and recipient == 3:
            self.input_payload = payload_of(data)
        if kind == MessageKind.PROOF_SHARE and recipient == 3:
            forged = resign(machine, MessageKind.PROOF_SHARE, self.input_payload, 3)
            return [Outgoing(forged, 3)]
        return [Outgoing(data, recipient)]


def test_an_input_share_replayed_as_a_proof_share_is_a_complaint_not_a_crash() -> None:
    # Holder 3 cannot open it (another channel key): it complains, the dealer answers the
    # dispute with the committed shares, and everything goes on.
    outcome = run_robust_round(n=N, vector_length=D, seed=82, adversaries={0: CrossStage()})
    assert_exact(outcome, included=tuple(range(N)))
    for peer in (1, 2, 3, 4):
        assert exclusions(outcome, peer) == {}


class OutOfRange(Adversary):
    """Publishes a verifier value ≥ p (not a field element) in its Verify."""

    def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
        if kind != MessageKind.VERIFY:
            return [Outgoing(data)]
        payload = payload_of(data)
        message = Verify.decode(
            payload, verifier_length=machine.shape.verifier_length, rows=machine._t + 1
        )
        entries = []
        for entry in message.entries:
            if entry.values is not None:
                values = entry.values.copy()
                values[0] = np.uint64(gf.P)  # the encoder does not check; decoders must
                entry = VerifyEntry(dealer=entry.dealer, status=entry.status, values=values)  # noqa: PLW2901
            entries.append(entry)
        forged = Verify(view=message.view, entries=tuple(entries), reference=message.reference)
        return [Outgoing(resign(machine, MessageKind.VERIFY, forged.encode(), 0xFFFF))]


def test_a_non_reduced_field_element_excludes_its_sender() -> None:
    outcome = run_robust_round(
        n=7, vector_length=D, seed=83, threshold=2, adversaries={6: OutOfRange()}
    )
    for peer in range(6):
        assert exclusions(outcome, peer)[6].startswith("malformed VERIFY")
        result = outcome.results()[peer]
        assert result.total.view(np.int64).tolist() == plaintext_sum(outcome, result.included)


def test_every_private_share_is_a_well_formed_signed_envelope_for_one_holder() -> None:
    outcome = run_robust_round(n=N, vector_length=D, seed=84)
    for peer, record in outcome.peers.items():
        for effect in record.effects:
            if isinstance(effect, Send):
                envelope = parse_envelope(effect.data, max_payload=len(effect.data))
                assert envelope.recipient == effect.recipient != peer
                assert envelope.sender == peer
                assert MessageKind(envelope.kind).private


# =========================================================================== security review


def _broadcast(outcome: RobustOutcome, peer: int, kind: MessageKind) -> bytes | None:
    """The payload of ``peer``'s broadcast of ``kind`` as its machine emitted it."""
    for effect in outcome.peers[peer].effects:
        if isinstance(effect, Broadcast):
            envelope = parse_envelope(effect.data, max_payload=len(effect.data))
            if envelope.kind == kind:
                return bytes(envelope.payload)
    return None


def _decode_verify(machine: Any, payload: bytes) -> Verify:
    return Verify.decode(
        payload, verifier_length=machine.shape.verifier_length, rows=machine._t + 1
    )


def _rewrite_entries(change: dict[int, ShareStatus | str]) -> Any:
    """A Verify transform: about dealer k, claim ``change[k]`` (a status, or "wrong" values)."""

    def transform(machine: RobustMachine, payload: bytes) -> bytes:
        message = _decode_verify(machine, payload)
        entries = []
        for entry in message.entries:
            what = change.get(entry.dealer)
            if what is None or entry.values is None:
                entries.append(entry)
            elif what == "wrong":
                values = entry.values.copy()
                values[0] = (int(values[0]) + 1) % gf.P
                entries.append(VerifyEntry(dealer=entry.dealer, status=entry.status, values=values))
            else:
                assert isinstance(what, ShareStatus)
                entries.append(VerifyEntry(dealer=entry.dealer, status=what))
        return Verify(
            view=message.view, entries=tuple(entries), reference=message.reference
        ).encode()

    return transform


def _output_key(machine: Any, accepted: tuple[int, ...]) -> bytes:
    """K_out for ``accepted`` from the output-key parts ``machine`` received as a holder."""
    return sha256(machine._info(b"output-key"), *(machine._opened[1][u].extra for u in accepted))


def _decrypt_output(machine: Any, key: bytes, holder: int, payload: bytes) -> np.ndarray:
    """Decrypt ``holder``'s Output payload under K_out = ``key`` (as any holder can)."""
    ciphertext = Output.decode(payload).ciphertext
    share_key = derive_key(key, info=machine._info(b"output-share", holder))
    plaintext = aead_decrypt(share_key, ciphertext, machine._info(b"output-ad", holder))
    return np.frombuffer(plaintext, dtype="<u8").astype(np.uint64)


def _own_aggregate_share(machine: Any, accepted: tuple[int, ...]) -> np.ndarray:
    """The aggregate share a (colluding) holder can compute for any set of dealers."""
    total = np.zeros(machine.shape.input_length, dtype=np.uint64)
    for u in accepted:
        total = gf.add(total, machine._opened[1][u].vector)
    return total


def _exact(outcome: RobustOutcome, peers: range | tuple[int, ...]) -> None:
    """Each of ``peers`` that finished output the exact sum of what it says it included."""
    for peer, result in outcome.results().items():
        if peer in peers:
            total = result.total.view(np.int64).tolist()
            assert total == plaintext_sum(outcome, result.included)


def _tampered_output(machine: RobustMachine, payload: bytes) -> bytes:
    """Its own aggregate share with one coordinate shifted (forces the output check)."""
    message = Output.decode(payload)
    key = machine._output_share_key(machine.me)
    ad = machine._info(b"output-ad", machine.me)
    share = np.frombuffer(aead_decrypt(key, message.ciphertext, ad), dtype="<u8").copy()
    share[3] = (int(share[3]) + 777) % gf.P
    return Output(view=message.view, ciphertext=aead_encrypt(key, share.tobytes(), ad)).encode()


# --------------------------------------------------------------------------- confirmed:
# views are compared one phase too late. A phase closed at its deadline without one
# broadcast gives that peer another view; it then broadcasts values that depend on the
# decision (Verify values, Output shares) before anybody compared views of that phase.
# Needs n ≥ 2t + 2 (the deadline close must still see 2t + 1 live peers).


def test_dispute_withheld_from_one_peer_does_not_reveal_an_honest_input() -> None:
    # n = 4, default t = 1. Peer 3 (colluding with the broker) lies about dealer 0's
    # verifier share, so dealer 0 answers a dispute. The broker delays that Dispute to
    # peer 1 only: peer 1 closes DISPUTE at its deadline with 3 = 2t+1 live peers, sees
    # dealer 0 as "dropped before answering" and never excludes the liar, so its
    # A_1 = {1, 2, 3}, while peers 0 and 2 accept A = {0, 1, 2}. Each broadcasts its Output
    # share; peer 3 holds every dealer's output-key part and its own shares, so it
    # interpolates both sums and subtracts: x_0 = Σ_A − Σ_A1 + x_3.
    outcome = run_robust_round(
        n=4,
        vector_length=D,
        seed=101,
        adversaries={3: Rewrite(MessageKind.VERIFY, _rewrite_entries({0: "wrong"}))},
        faults=[Fault(kind=FaultKind.DELAY, sender=0, recipient=1, message=MessageKind.DISPUTE)],
    )
    spy = outcome.machines[3]
    honest_set, other_set = (0, 1, 2), (1, 2, 3)
    payload_1 = _broadcast(outcome, 1, MessageKind.OUTPUT)
    if payload_1 is None:
        return  # peer 1 released nothing: the attack failed
    y1 = _decrypt_output(spy, _output_key(spy, other_set), 1, payload_1)
    sum_other = gf.interpolate_at({2: y1, 4: _own_aggregate_share(spy, other_set)}, 0)
    key = _output_key(spy, honest_set)
    shares = {}
    for peer in (0, 2):
        payload = _broadcast(outcome, peer, MessageKind.OUTPUT)
        assert payload is not None
        shares[peer + 1] = _decrypt_output(spy, key, peer, payload)
    sum_honest = gf.interpolate_at(shares, 0)
    recovered = gf.to_signed(gf.sub(sum_honest, sum_other)[:D]) + outcome.inputs[3].view(np.int64)
    victim = outcome.inputs[0].view(np.int64).tolist()
    assert recovered.tolist() != victim, "the coalition recovered peer 0's input exactly"


def _published_values(outcome: RobustOutcome, peer: int, dealer: int) -> np.ndarray:
    """``peer``'s published verifier share of ``dealer`` (from its Verify broadcast)."""
    payload = _broadcast(outcome, peer, MessageKind.VERIFY)
    assert payload is not None, f"peer {peer} sent no Verify"
    entry = _decode_verify(outcome.machines[peer], payload).entry_for(dealer)
    assert entry is not None
    assert entry.values is not None
    return entry.values


def test_query_challenge_withheld_from_one_peer_leaks_nothing_about_x() -> None:
    # n = 4, t = 1. The broker delays peer 2's QUERY_CHALLENGE to peer 1: peer 1 closes the
    # phase at its deadline (3 = 2t+1 live) without peer 2's nonce, so its query point r'
    # differs from everybody's r, and it publishes Q_r'(its shares) before any view of
    # QUERY_CHALLENGE is compared. Peer 3 interpolates Q_r'(X_0, W_0) from peer 1's value
    # and its own share; dealer 0's reference publishes Q_r(X_0, W_0). U_l(r) and U_l(r')
    # hide x behind one random seed per wire, so λ_0(r')·U_l(r) − λ_0(r)·U_l(r') is a linear
    # function of x_0 alone: L = ⌈d/M⌉ linear functions of an honest input leak.
    outcome = run_robust_round(
        n=4,
        vector_length=D,
        seed=102,
        faults=[
            Fault(kind=FaultKind.DELAY, sender=2, recipient=1, message=MessageKind.QUERY_CHALLENGE)
        ],
    )
    # Fixed by the agreement gate (SPEC §4.5): peer 1 does not reach the quorum on its view
    # of QUERY_CHALLENGE and aborts before publishing anything at its point r'. Every
    # Verify that did go out was computed at the one point the quorum agreed on.
    points: dict[int, int] = {}
    for peer, machine in outcome.machines.items():
        if _broadcast(outcome, peer, MessageKind.VERIFY) is not None:
            assert machine._verifier is not None
            points[peer] = machine._verifier.challenge.point
    assert 1 not in points
    assert len(set(points.values())) == 1


def _partition(first: tuple[int, ...], second: tuple[int, ...], lonely: int) -> list[Fault]:
    """The broker hides ``lonely``'s DealProof from ``second``, then cuts the network."""
    faults = [
        Fault(kind=FaultKind.DROP, sender=lonely, recipient=r, message=k)
        for r in second
        for k in (MessageKind.DEAL_PROOF, MessageKind.PROOF_SHARE)
    ]
    later = [k for k in MessageKind if k.phase >= Phase.QUERY_CHALLENGE]
    for a, b in ((first, second), (second, first)):
        faults += [
            Fault(kind=FaultKind.DROP, sender=s, recipient=r, message=k)
            for s in a
            for r in b
            for k in later
        ]
    return faults


def test_broker_partition_cannot_make_honest_peers_disagree() -> None:
    # n = 6, t = 1 (= ⌊(n − 1)/3⌋, the dropout-tolerant choice of SPEC §2.2). The broker
    # withholds dealer 0's DealProof from {3, 4, 5}, then every message between the halves.
    # Each half has 3 = 2t + 1 live peers in every phase and never sees the other's view.
    # (Any peer of the second half also reads the first half's Output shares and learns
    # x_0 = Σ_A1 − Σ_A2, as in the Dispute test above.)
    faults = _partition((0, 1, 2), (3, 4, 5), 0)
    outcome = run_robust_round(n=6, vector_length=D, seed=103, threshold=1, faults=faults)
    _exact(outcome, range(6))
    results = outcome.results()
    assert len({r.included for r in results.values()}) <= 1, {
        p: r.included for p, r in results.items()
    }


def test_a_delayed_output_does_not_get_honest_peers_blamed() -> None:
    # n = 7, t = 2. The broker delays peer 4's Output to peer 1 only. Peer 1 closes OUTPUT
    # at its deadline with 6 consistent shares (fast path, correct total), but its view of
    # OUTPUT lacks peer 4, so every honest Confirm it processes "disagrees" and is excluded.
    # (A holder sending two different Output messages to two halves does the same.)
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=104,
        threshold=2,
        faults=[Fault(kind=FaultKind.DELAY, sender=4, recipient=1, message=MessageKind.OUTPUT)],
    )
    _exact(outcome, range(7))
    result = outcome.results()[1]
    assert not result.excluded, result.excluded


# --------------------------------------------------------------------------- confirmed:
# MISSING is never disputed and never blamed, and |A| ≥ t + 1 allows one honest input.


@pytest.mark.parametrize("who", ["colluding-holders", "broker"])
def test_missing_claims_cannot_isolate_one_honest_input(who: str) -> None:
    # n = 5, default t = 2. Peers 3 and 4 collude. Either they claim MISSING for dealers 1
    # and 2 although they hold those shares, or the broker drops dealer 1's and dealer 2's
    # input shares to peer 3. A MISSING entry is never disputed, so dealers 1 and 2 have
    # 3 < 2t + 1 agreeing holders and are "dropped"; A = {0, 3, 4} (= t + 1 inputs) and the
    # coalition subtracts its own inputs from the aggregate: x_0 in clear.
    lie = _rewrite_entries({1: ShareStatus.MISSING, 2: ShareStatus.MISSING})
    adversaries: dict[int, Adversary] = {}
    faults: list[Fault] = []
    if who == "colluding-holders":
        adversaries = {3: Rewrite(MessageKind.VERIFY, lie), 4: Rewrite(MessageKind.VERIFY, lie)}
    else:
        faults = [
            Fault(kind=FaultKind.DROP, sender=s, recipient=3, message=MessageKind.INPUT_SHARE)
            for s in (1, 2)
        ]
    outcome = run_robust_round(
        n=5, vector_length=D, seed=105, adversaries=adversaries, faults=faults
    )
    _exact(outcome, range(5))
    results = outcome.results()
    for peer in (0, 1, 2):
        result = results.get(peer)
        if result is None:
            continue  # aborting is allowed
        honest_inputs = set(result.included) & {0, 1, 2}
        assert len(honest_inputs) >= 2, (result.included, result.dropped)


# --------------------------------------------------------------------------- confirmed:
# one deviating peer stops a round that SPEC §3.4–§3.5 says must finish.


class _MaskInconsistentDealer(RobustMachine):
    """Deals mask coordinates (index d) off the polynomial to holders 2, 3 and 4.

    The verifier query Q reads only the first d coordinates of an input share, so the mask
    coordinate is never checked in VERIFY (SPEC §6.5), only in the output check (§6.9).
    """

    def _share(self, stage: int, secret: np.ndarray) -> DealtShares:
        dealt = super()._share(stage, secret)
        if stage == 1:
            for holder in (2, 3, 4):
                x = holder + 1
                assert x in dealt.vectors  # dealer 6 seeds holders 0 and 1
                tampered = dealt.vectors[x].copy()
                tampered[-1] = (int(tampered[-1]) + 1) % gf.P
                dealt.vectors[x] = tampered
        return dealt


def test_a_dealer_with_inconsistent_mask_shares_cannot_abort_the_round() -> None:
    # Peer 6 deals inconsistent mask shares (accepted: VERIFY never looks at them) and
    # tampers its own aggregate share to force the output check. There dealer 6's σ values
    # lie on no degree-t polynomial (3 off > the decoding radius 2): no holder is verified
    # and every honest peer aborts, although all 7 peers are live and 2 dropouts would be
    # tolerated.
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=106,
        threshold=2,
        machine_classes={6: _MaskInconsistentDealer},
        adversaries={6: Rewrite(MessageKind.OUTPUT, _tampered_output)},
    )
    _exact(outcome, range(6))
    results = outcome.results()
    for peer in range(6):
        assert peer in results, outcome.aborts().get(peer)


class _BadSharesNoReference(Adversary):
    """Sends holders 0 and 1 undecryptable input shares and publishes no reference."""

    def outgoing_private(
        self, machine: Any, kind: Any, data: bytes, recipient: int
    ) -> list[Outgoing]:
        if kind == MessageKind.INPUT_SHARE and recipient in (0, 1):
            garbage = bytes(len(payload_of(data)))
            return [Outgoing(resign(machine, kind, garbage, recipient), recipient)]
        return [Outgoing(data, recipient)]

    def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
        if kind != MessageKind.VERIFY:
            return [Outgoing(data)]
        message = _decode_verify(machine, payload_of(data))
        forged = Verify(view=message.view, entries=message.entries, reference=None).encode()
        sealed = resign(machine, kind, forged, BROADCAST)
        adopt(machine, sealed)
        return [Outgoing(sealed)]


def test_live_dealer_without_reference_cannot_silence_complaining_holders() -> None:
    outcome = run_robust_round(
        n=7, vector_length=D, seed=107, threshold=2, adversaries={6: _BadSharesNoReference()}
    )
    _exact(outcome, range(6))
    results = outcome.results()
    for peer in range(6):
        assert peer in results, outcome.aborts().get(peer)


# --------------------------------------------------------------------------- confirmed:
# crashes and local checks.


class _ChallengeWithoutAdvertise(Adversary):
    """Never advertises, but injects a signed WRAP_CHALLENGE at the start of the round."""

    def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
        return [] if kind == MessageKind.ADVERTISE else [Outgoing(data)]

    def injected(self, machine: Any) -> list[Outgoing]:
        message = Challenge(view=bytes(32), nonce=bytes(32)).encode()
        return [Outgoing(resign(machine, MessageKind.WRAP_CHALLENGE, message, BROADCAST))]


def test_challenge_from_a_peer_that_never_advertised_is_ignored() -> None:
    outcome = run_robust_round(
        n=5, vector_length=D, seed=108, threshold=1, adversaries={4: _ChallengeWithoutAdvertise()}
    )
    for peer in range(4):
        assert peer in outcome.results(), outcome.aborts().get(peer)
        assert 4 not in outcome.results()[peer].included


def test_begin_refuses_int64_min() -> None:
    roster, keys = make_roster(3)
    params = RobustParams(
        federation="f", round_id=1, roster=roster, threshold=1, vector_length=8, norm_bound=100
    )
    machine = RobustMachine(
        params, me=0, signing_key=keys[0], randomness=DeterministicRandomSource(1)
    )
    update = np.zeros(8, dtype=np.int64)
    update[0] = np.iinfo(np.int64).min
    refused = False
    try:
        machine.begin(update.view(np.uint64))
    except EncodingError:
        refused = True
    assert refused, "begin() accepted an update of norm 2^63"


def test_from_signed_refuses_int64_min() -> None:
    values = np.array([np.iinfo(np.int64).min], dtype=np.int64)
    try:
        embedded = gf.from_signed(values)
    except gf.FieldError:
        return
    assert int(embedded[0]) < gf.P, hex(int(embedded[0]))


def test_every_accepted_threshold_can_build_its_verifier() -> None:
    roster, _ = make_roster(29)  # default t for n = 29 is 14
    params = RobustParams(
        federation="f", round_id=1, roster=roster, threshold=14, vector_length=8, norm_bound=100
    )
    shape = params.shape
    wrap = normproof.WrapChallenge(bytes(32), shape.repetitions, shape.vector_length)
    wrap.combined(normproof.QueryChallenge.from_seed(bytes(32), shape).wrap_weights)


# --------------------------------------------------------------------------- confirmed:
# SPEC §6.2 / §6.4 accounting of challenge grinding.


def test_broker_can_change_the_query_challenge_without_losing_an_input() -> None:
    # The mechanism behind the next test: the broker drops honest peer 0's QUERY_CHALLENGE
    # reveal for everybody. The others agree on a challenge without N_0 (not one of the 2^t
    # colluder choices of §6.2), and dealer 0 is still verified by 2t + 1 holders.
    plain = run_robust_round(n=7, vector_length=D, seed=109, threshold=2)
    ground = run_robust_round(
        n=7,
        vector_length=D,
        seed=109,
        threshold=2,
        faults=[Fault(kind=FaultKind.DROP, sender=0, message=MessageKind.QUERY_CHALLENGE)],
    )
    before, after = plain.machines[1]._verifier, ground.machines[1]._verifier
    assert before is not None
    assert after is not None
    assert after.challenge.point != before.challenge.point
    results = ground.results()
    assert set(results) >= set(range(1, 7))
    assert len({(r.included, r.result_digest) for r in results.values()}) == 1
    assert results[1].included == tuple(range(7))
    _exact(ground, range(7))


def test_query_challenge_grinding_stays_below_two_to_the_minus_40() -> None:
    n, t = 20, 6  # SPEC §2.2: t = ⌊(n − 1)/3⌋
    shape = normproof.NormProofShape.for_round(
        vector_length=1 << 20, norm_bound=1 << 12, threshold=t, peers=n
    )
    live = 2 * t + 1
    candidates = sum(math.comb(n, k) for k in range(n - live + 1))  # subsets it may withhold
    assert candidates > 2**t
    assert candidates == normproof.challenge_candidates(n, t)
    # fixed: the identities are checked at enough points, and R counts every candidate
    degree = 2 * (max(shape.calls, shape.bit_calls) + shape.points - 1)  # k seeds per wire
    per_point = degree / gf.P  # §6.4 (iii)
    bound = candidates * per_point**shape.points
    assert bound <= 2.0**-40, math.log2(bound)
    assert candidates * 0.5**shape.repetitions <= 2.0**-40  # §6.4 (i)


# =========================================================================== withstood


def test_private_share_readdressed_to_another_holder_is_a_resolved_complaint() -> None:
    # Dealer 4 re-seals the ciphertext meant for holder 2 to holder 3 (signed for 3): holder
    # 3 cannot open it (another channel key), complains (BAD), and the dealer's answer
    # settles it; nobody is blamed.
    class Readdress(Adversary):
        def outgoing_private(
            self, machine: Any, kind: Any, data: bytes, recipient: int
        ) -> list[Outgoing]:
            if kind == MessageKind.INPUT_SHARE and recipient == 2:
                other = resign(machine, kind, payload_of(data), 3)
                return [Outgoing(data, 2), Outgoing(other, 3)]
            if kind == MessageKind.INPUT_SHARE and recipient == 3:
                return []
            return [Outgoing(data, recipient)]

    outcome = run_robust_round(n=5, vector_length=D, seed=121, adversaries={4: Readdress()})
    assert_exact(outcome, included=tuple(range(5)))
    for peer in range(4):
        assert not exclusions(outcome, peer)


def test_private_share_sealed_as_a_broadcast_is_ignored() -> None:
    class ToEveryone(Adversary):
        def outgoing_private(
            self, machine: Any, kind: Any, data: bytes, recipient: int
        ) -> list[Outgoing]:
            if kind == MessageKind.INPUT_SHARE and recipient == 2:
                return [Outgoing(resign(machine, kind, payload_of(data), BROADCAST), 2)]
            return [Outgoing(data, recipient)]

    outcome = run_robust_round(
        n=7, vector_length=D, seed=122, threshold=2, adversaries={6: ToEveryone()}
    )
    assert any(
        isinstance(e, MessageIgnored) and "wrong phase or recipient" in e.reason
        for e in outcome.peers[2].effects
    )
    results = outcome.results()
    assert 2 not in results  # a MISSING share of an accepted dealer: it aborts alone (§7)
    _exact(outcome, range(7))
    for result in results.values():
        assert not result.excluded


def _duplicate_holder(machine: RobustMachine, payload: bytes) -> bytes:
    """The DealInput with its second holder id replaced by the first (not increasing)."""
    message = DealInput.decode(payload)
    raw = bytearray(payload)
    (first, _), (second, digest) = message.commitments[:2]
    start = raw.index(second.to_bytes(2, "big") + digest)
    raw[start : start + 2] = first.to_bytes(2, "big")
    return bytes(raw)


def test_duplicated_holder_in_deal_input_excludes_the_dealer_only() -> None:
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=124,
        threshold=2,
        adversaries={6: Rewrite(MessageKind.DEAL_INPUT, _duplicate_holder)},
    )
    for peer in range(6):
        assert exclusions(outcome, peer) == {6: exclusions(outcome, peer)[6]}
        assert exclusions(outcome, peer)[6].startswith("malformed DEAL_INPUT")
    for result in outcome.results().values():
        assert 6 not in result.included
    _exact(outcome, range(7))


def test_deal_proof_without_an_accepted_deal_input_is_not_a_dealer() -> None:
    # The broker drops dealer 6's DealInput everywhere: its DealProof comes from a peer not
    # live in DEAL_INPUT and is ignored; the round completes without it, nobody blamed.
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=125,
        threshold=2,
        faults=[Fault(kind=FaultKind.DROP, sender=6, message=MessageKind.DEAL_INPUT)],
    )
    results = outcome.results()
    assert set(results) >= set(range(6))
    for result in results.values():
        assert 6 not in result.included
        assert 6 not in result.excluded
    _exact(outcome, range(7))


def test_withheld_wrap_reveal_is_a_dropout_not_a_split() -> None:
    # Peer 6 withholds its WRAP_CHALLENGE reveal from everybody (the colluders' grinding
    # option of §6.2): it is not live afterwards; the others agree and finish.
    class Withhold(Adversary):
        def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
            return [] if kind == MessageKind.WRAP_CHALLENGE else [Outgoing(data)]

    outcome = run_robust_round(
        n=7, vector_length=D, seed=126, threshold=2, adversaries={6: Withhold()}
    )
    results = outcome.results()
    assert set(results) >= set(range(6))
    assert len({(r.included, r.result_digest) for p, r in results.items() if p < 6}) == 1
    for result in results.values():
        assert 6 not in result.included
    _exact(outcome, range(6))


def test_reveal_matching_the_commitment_but_not_the_reference_blames_the_dealer() -> None:
    # Dealer 4 publishes a reference whose row for holder 0 is off: holder 0 is disputed,
    # its committed share contradicts the reference, and dealer 4 (not holder 0) is blamed.
    def wrong_reference(machine: RobustMachine, payload: bytes) -> bytes:
        message = _decode_verify(machine, payload)
        assert message.reference is not None
        reference = message.reference.copy()
        reference[1, 0] = (int(reference[1, 0]) + 1) % gf.P
        return Verify(view=message.view, entries=message.entries, reference=reference).encode()

    outcome = run_robust_round(
        n=5,
        vector_length=D,
        seed=127,
        adversaries={4: Rewrite(MessageKind.VERIFY, wrong_reference)},
    )
    for peer in range(4):
        excluded = exclusions(outcome, peer)
        assert set(excluded) == {4}, excluded
        assert "contradicts the share it dealt" in excluded[4]
    assert_exact(outcome, included=(0, 1, 2, 3))


def test_false_bad_complaint_reveals_only_the_complainers_share() -> None:
    # Holder 4 claims BAD for dealer 0: dealer 0 reveals holder 4's own share (which the
    # coalition holds anyway); the complaint counts as agreeing and dealer 0 stays in.
    outcome = run_robust_round(
        n=5,
        vector_length=D,
        seed=128,
        adversaries={4: Rewrite(MessageKind.VERIFY, _rewrite_entries({0: ShareStatus.BAD}))},
    )
    assert_exact(outcome, included=tuple(range(5)))
    for peer in range(5):
        reveals = outcome.machines[peer]._disputes[peer].reveals
        assert [r.holder for r in reveals] == ([4] if peer == 0 else [])


def test_omitting_output_projections_at_n_7_changes_nothing() -> None:
    # n = 7, t = 2: holder 6 tampers its aggregate share and then omits every projection
    # from OutputVerify; the 6 honest projections still pin every dealer.
    def omit(machine: RobustMachine, payload: bytes) -> bytes:
        message = OutputVerify.decode(payload)
        return OutputVerify(view=message.view, projections=(), reference=message.reference).encode()

    class Both(Rewrite):
        def __init__(self) -> None:
            super().__init__(MessageKind.OUTPUT, _tampered_output)
            self.second = Rewrite(MessageKind.OUTPUT_VERIFY, omit)

        def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
            if kind == MessageKind.OUTPUT_VERIFY:
                return self.second.outgoing(machine, kind, data)
            return super().outgoing(machine, kind, data)

    outcome = run_robust_round(n=7, vector_length=D, seed=129, threshold=2, adversaries={6: Both()})
    results = outcome.results()
    assert set(results) >= set(range(6)), outcome.aborts()
    for peer in range(6):
        assert results[peer].included == tuple(range(7))
    _exact(outcome, range(7))


def test_dealer_crash_before_answering_is_agreed_by_all() -> None:
    # Control for the withheld-Dispute attack: when dealer 0's Dispute is lost for everyone
    # (it crashes), all honest peers drop it alike and nobody is blamed for it.
    outcome = run_robust_round(
        n=7,
        vector_length=D,
        seed=130,
        threshold=2,
        adversaries={6: Rewrite(MessageKind.VERIFY, _rewrite_entries({0: "wrong"}))},
        dropouts=[Dropout(peer=0, phase=Phase.DISPUTE)],
    )
    results = outcome.results()
    assert set(results) >= set(range(1, 6))
    assert len({(r.included, r.result_digest) for p, r in results.items() if p != 6}) == 1
    for result in results.values():
        assert 0 not in result.included
    _exact(outcome, range(7))
    blamed = [
        e.peer
        for p in range(1, 6)
        for e in outcome.peers[p].effects
        if isinstance(e, PeerExcluded) and e.peer == 0
    ]
    assert not blamed
