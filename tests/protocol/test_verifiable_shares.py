"""§6.2/§6.3/§6.5 verifiable shares: bad dealing, false complaints and bad reveals are caught.

Every adversary here keeps its own view consistent with what it actually sent
(``corrupt_payload`` adopts the forged message), so the round is not simply aborted by
the consistency check: the verifiable-share machinery itself must do the work.
"""

from __future__ import annotations

import pytest

from mpc_agg.crypto import aead_decrypt
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.vss import Q, prove_dleq, shared_point
from protocols.harness import Dropout, RoundOutcome, corrupt_payload, payload_of, run_secagg_round
from protocols.secagg.machine import SecAggMachine
from protocols.secagg.messages import (
    SHARE_CIPHERTEXT_SIZE,
    Complaint,
    MaskedInput,
    MessageKind,
    Phase,
    RevealedShare,
    ShareKind,
    Unmask,
    decode_revealed,
)
from tests.protocol.support import (
    Recorder,
    assert_exact,
    assert_never_both_kinds,
    exclusions,
    off_by_one_share,
    parsed_kind,
    reencrypt_share_keys,
    revealed_in,
    revealed_on_wire,
    rewrite_unmask,
    unmask_key,
)

N = 5  # default T = 4


def wrong_values(machine: SecAggMachine, sent: list[bytes], owner: int) -> int:
    """How many distinct revealed values of ``owner`` in ``sent`` differ from the held share."""
    held = {machine._held_self_mask.get(owner), machine._held_mask_key.get(owner)}
    values: set[int] = set()
    for data in sent:
        if parsed_kind(data) is not MessageKind.UNMASK:
            continue
        for recipient, ciphertext in Unmask.decode(payload_of(data)).ciphertexts:
            key, info = unmask_key(machine, machine.me, recipient)
            plaintext = aead_decrypt(key, ciphertext, info)
            values |= {s.value for s in decode_revealed(plaintext) if s.owner == owner}
    return len(values - held)


def _random_ciphertext(key: bytes, info: bytes, ciphertext: bytes) -> bytes:
    return DeterministicRandomSource("garbage").random_bytes(SHARE_CIPHERTEXT_SIZE)


def _assert_dealer_excluded(outcome: RoundOutcome, dealer: int, victim: int, local: str) -> None:
    honest = [p for p in range(N) if p != dealer]
    results = outcome.results()
    assert set(honest) <= set(results)
    for peer in honest:
        result = results[peer]
        assert result.included == tuple(honest)
        assert_exact(outcome, result)
        assert set(result.excluded) == {dealer}
        assert dealer not in result.dropped
        blamed = [e for e in exclusions(outcome, peer) if e.peer == dealer]
        assert len(blamed) == 1
        if peer == victim:
            # the victim blames on receipt, before anyone else can know
            assert blamed[0].phase is Phase.SHARE_KEYS
            assert blamed[0].reason == f"invalid share: {local}"
            assert result.excluded[dealer] == f"invalid share: {local}"
        else:
            # everyone else decides the public complaint once the view is agreed
            assert blamed[0].phase is Phase.CONSISTENCY_CHECK
            expected = f"dealt an invalid share to {victim} (verified complaint)"
            assert blamed[0].reason == expected
            assert result.excluded[dealer] == expected
        # the cheating dealer is treated as dropped: only its mask key is reconstructed
        # (the victim holds no valid share of it, so reveals nothing for it)
        revealed = revealed_on_wire(outcome, peer).get(dealer, set())
        assert revealed == (set() if peer == victim else {ShareKind.MASK_KEY})
    # the victim complained in its MaskedInput, publicly
    victim_input = outcome.machines[victim]._inputs[victim].message
    assert [c.accused for c in victim_input.complaints] == [dealer]
    assert dealer not in victim_input.mask_set
    assert_never_both_kinds(outcome, honest)


def test_share_inconsistent_with_commitments_is_a_verified_complaint() -> None:
    dealer, victim = 2, 0

    def tamper(machine: SecAggMachine, payload: bytes) -> bytes:
        return reencrypt_share_keys(machine, payload, victim, off_by_one_share)

    outcome = run_secagg_round(
        n=N,
        vector_length=32,
        seed=21,
        adversaries={dealer: corrupt_payload(tamper, MessageKind.SHARE_KEYS)},
    )
    _assert_dealer_excluded(
        outcome, dealer, victim, "its share to me does not match its commitments"
    )


def test_share_ciphertext_that_does_not_decrypt_is_a_verified_complaint() -> None:
    dealer, victim = 4, 1

    def tamper(machine: SecAggMachine, payload: bytes) -> bytes:
        return reencrypt_share_keys(machine, payload, victim, _random_ciphertext)

    outcome = run_secagg_round(
        n=N,
        vector_length=32,
        seed=22,
        adversaries={dealer: corrupt_payload(tamper, MessageKind.SHARE_KEYS)},
    )
    _assert_dealer_excluded(outcome, dealer, victim, "its share ciphertext to me does not decrypt")


@pytest.mark.parametrize(
    ("valid_proof", "reason"),
    [
        (True, "false complaint against 1 (the share is valid)"),
        (False, "complaint against 1 with an invalid proof"),
    ],
)
def test_false_complaint_excludes_the_complainer(valid_proof: bool, reason: str) -> None:
    complainer, accused = 3, 1

    def complain(machine: SecAggMachine, payload: bytes) -> bytes:
        assert machine._encryption_key is not None
        message = MaskedInput.decode(payload, vector_length=machine.params.vector_length)
        scalar = machine._encryption_key.scalar
        other = machine._advertised[accused].encryption_key
        point = shared_point(scalar, other)
        context = machine._info(b"complaint", machine.me, accused if valid_proof else 0)
        proof = prove_dleq(scalar, other, point, context, DeterministicRandomSource("dleq"))
        return MaskedInput(
            mask_set=tuple(p for p in message.mask_set if p != accused),
            complaints=(Complaint(accused=accused, shared_point=point, proof=proof),),
            masked=message.masked,
        ).encode()

    outcome = run_secagg_round(
        n=N,
        vector_length=32,
        seed=23,
        adversaries={complainer: corrupt_payload(complain, MessageKind.MASKED_INPUT)},
    )
    honest = [p for p in range(N) if p != complainer]
    results = outcome.results()
    for peer in honest:
        result = results[peer]
        assert result.included == tuple(honest)
        assert_exact(outcome, result)
        assert dict(result.excluded) == {complainer: reason}
        assert accused in result.included
        assert [(e.peer, e.reason) for e in exclusions(outcome, peer)] == [(complainer, reason)]
        assert revealed_on_wire(outcome, peer)[complainer] == {ShareKind.MASK_KEY}
    assert_never_both_kinds(outcome, honest)


@pytest.mark.parametrize("kind", [ShareKind.SELF_MASK, ShareKind.MASK_KEY], ids=lambda k: k.name)
def test_wrong_share_revealed_at_unmask_is_caught_and_blamed(kind: ShareKind) -> None:
    """§6.5: a revealed share is checked against the dealer's commitments; the sender is blamed.

    SELF_MASK: 5 peers, all included; the liar corrupts its share of peer 1's self-mask.
    MASK_KEY: 6 peers, peer 5 drops before its masked input; the liar corrupts its share
    of 5's mask key. Either way T=4 valid shares remain and the sum is exact.
    """
    liar, owner = 4, (1 if kind is ShareKind.SELF_MASK else 5)
    n = N if kind is ShareKind.SELF_MASK else N + 1
    dropouts = [Dropout(5, Phase.MASKED_INPUT)] if kind is ShareKind.MASK_KEY else []

    def change(share: RevealedShare) -> RevealedShare:
        if share.owner != owner or share.kind is not kind:
            return share
        return RevealedShare(owner=share.owner, kind=share.kind, value=(share.value + 1) % Q)

    def lie(machine: SecAggMachine, payload: bytes) -> bytes:
        return rewrite_unmask(machine, payload, change)

    recorder = Recorder(corrupt_payload(lie, MessageKind.UNMASK))
    outcome = run_secagg_round(
        n=n,
        threshold=4,
        vector_length=32,
        seed=24,
        dropouts=dropouts,
        adversaries={liar: recorder},
    )
    included = tuple(p for p in range(n) if kind is ShareKind.SELF_MASK or p != 5)
    honest = [p for p in included if p != liar]
    results = outcome.results()
    reason = f"revealed an invalid {kind.name} share of peer {owner}"
    for peer in honest:
        result = results[peer]
        # the liar's *input* was agreed before Unmask and stays in the sum
        assert result.included == included
        assert_exact(outcome, result)
        assert dict(result.excluded) == {liar: reason}
        blamed = exclusions(outcome, peer)
        assert [(e.peer, e.reason, e.phase) for e in blamed] == [(liar, reason, Phase.UNMASK)]
    # the liar really did put a wrong share of that kind on the wire
    assert revealed_in(outcome.machines[liar], recorder.sent)[owner] == {kind}
    assert wrong_values(outcome.machines[liar], recorder.sent, owner) == 1
    assert_never_both_kinds(outcome, honest)


def test_wrong_share_with_exactly_t_shares_aborts_instead_of_a_wrong_sum() -> None:
    """With one confirmed peer fewer, only T shares arrive; one is wrong: reconstruction
    is impossible and every honest peer aborts (never a wrong sum)."""
    liar, owner = 4, 1

    def change(share: RevealedShare) -> RevealedShare:
        if share.owner != owner:
            return share
        return RevealedShare(owner=share.owner, kind=share.kind, value=(share.value + 1) % Q)

    def lie(machine: SecAggMachine, payload: bytes) -> bytes:
        return rewrite_unmask(machine, payload, change)

    outcome = run_secagg_round(
        n=N,
        vector_length=32,
        seed=25,
        dropouts=[Dropout(0, Phase.UNMASK)],
        adversaries={liar: corrupt_payload(lie, MessageKind.UNMASK)},
    )
    honest = [1, 2, 3]
    assert outcome.results().keys().isdisjoint(honest)
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert aborted.phase is Phase.UNMASK
        assert f"cannot reconstruct the SELF_MASK of peer {owner}" in aborted.reason
        assert "3 valid shares of 4 received; 4 needed" in aborted.reason


def test_share_of_the_wrong_kind_is_refused_and_its_sender_blamed() -> None:
    """§6.5: the liar labels its share of included peer 1's secret as a MASK_KEY share
    (asking, in effect, for both kinds). Honest peers refuse the whole Unmask, blame the
    sender, and still reconstruct from the T honest shares they hold."""
    liar, owner = 4, 1

    def relabel(share: RevealedShare) -> RevealedShare:
        if share.owner != owner:
            return share
        return RevealedShare(owner=owner, kind=ShareKind.MASK_KEY, value=share.value)

    def lie(machine: SecAggMachine, payload: bytes) -> bytes:
        return rewrite_unmask(machine, payload, relabel)

    recorder = Recorder(corrupt_payload(lie, MessageKind.UNMASK))
    outcome = run_secagg_round(n=N, vector_length=32, seed=26, adversaries={liar: recorder})
    honest = [0, 1, 2, 3]
    reason = f"revealed a MASK_KEY share of {owner}, which the agreed view does not call for"
    results = outcome.results()
    for peer in honest:
        result = results[peer]
        assert result.included == tuple(range(N))
        assert_exact(outcome, result)
        assert dict(result.excluded) == {liar: reason}
        assert outcome.machines[peer].revealed[owner] is ShareKind.SELF_MASK
        # none of the liar's shares were pooled, not even its valid ones
        pool = outcome.machines[peer]._pool
        assert all(liar + 1 not in shares for shares in pool.values())
    assert revealed_in(outcome.machines[liar], recorder.sent)[owner] == {ShareKind.MASK_KEY}
    assert_never_both_kinds(outcome, honest)
