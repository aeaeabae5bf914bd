"""Review: sites in different rings (§2.1) split into two camps that both finish.

The ring b is not bound into anything checked before the masked inputs (envelope context,
AdvertiseKeys, key derivation), and a MaskedInput in another ring is merely "malformed":
its sender is excluded *after* it dealt its shares and every other peer masked with it.
With T ≤ n/2 a federation whose sites disagree on b (an explicit ``[encoding] ring_bits``
in some copies of federation.toml, or — since the MaskedInput wire format changed while the
protocol string stayed ``secagg/1`` — a rolling upgrade) splits into two camps that each
collect T confirmations. (The same split already happens when sites disagree on the
vector length L — checked on 62f81ac — the ring is a second such parameter.) Camp A
reveals the self-mask shares of its members, camp B the
mask-key shares of the same members (to camp B, they are dropouts). One colluder per camp
(c = 2 < T = 3, an observing broker: SPEC §3.2 (P1)) then holds both b_0 and s_0 of an
honest peer and unmasks its input.

Fixed: b and L are bound into the protocol name of every envelope and key derivation
(``protocol_id``, SPEC §2.1), so the two camps never hear each other; kept as a regression.
"""

from __future__ import annotations

import numpy as np

from mpc_agg.crypto import AgreementKey
from mpc_agg.envelope import parse_envelope
from mpc_agg.prg import MaskTerm, apply_masks
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.vss import recover
from protocols.common import AggregateReady, Broadcast, Effect, RoundAborted
from protocols.harness import make_roster
from protocols.secagg.machine import SecAggMachine, SecAggParams
from protocols.secagg.messages import MaskedInput, MessageKind, ShareKind

N = 6
T = 3  # allowed by SPEC §2.1 (2 ≤ T ≤ n); (P1) promises privacy for c < T
L = 32
CAMP_A = (0, 1, 2)  # Z_2^32
CAMP_B = (3, 4, 5)  # Z_2^64 (a site configured otherwise, or running the previous release)
COLLUDER_A, COLLUDER_B = 2, 5


def _run_split_round() -> tuple[dict[int, SecAggMachine], dict[int, list[Effect]], bytes]:
    roster, keys = make_roster(N)
    machines: dict[int, SecAggMachine] = {}
    for p in range(N):
        params = SecAggParams(
            federation="fed",
            round_id=1,
            roster=roster,
            threshold=T,
            vector_length=L,
            ring_bits=32 if p in CAMP_A else 64,
        )
        machines[p] = SecAggMachine(
            params, me=p, signing_key=keys[p], randomness=DeterministicRandomSource(f"s/{p}")
        )
    rng = np.random.default_rng(7)
    inputs = {p: rng.integers(-1000, 1000, L).astype(np.int64).view(np.uint64) for p in range(N)}
    outcomes: dict[int, list[Effect]] = {p: [] for p in range(N)}
    wire: list[tuple[int, bytes]] = []  # what the (observing) broker sees
    queue: list[tuple[int, Effect]] = []
    for p in range(N):
        queue.extend((p, e) for e in machines[p].begin(inputs[p]))
    while True:
        while queue:
            sender, effect = queue.pop(0)
            outcomes[sender].append(effect)
            if isinstance(effect, Broadcast):
                wire.append((sender, effect.data))
                for q in range(N):
                    if q != sender:
                        queue.extend((q, e) for e in machines[q].receive(sender, effect.data))
        waiting = [p for p in range(N) if not machines[p].finished]
        if not waiting:
            break
        for p in waiting:  # every message was delivered: the phases' deadlines fire
            queue.extend((p, e) for e in machines[p].deadline(machines[p].phase))
    masked_0 = next(
        data
        for sender, data in wire
        if sender == 0
        and parse_envelope(data, max_payload=1 << 20).kind == MessageKind.MASKED_INPUT
    )
    return machines, outcomes, masked_0


def test_review_perf_two_rings_split_into_camps_that_reveal_both_secrets_of_a_peer() -> None:
    machines, outcomes, _ = _run_split_round()
    finished = {
        p: [e for e in outcomes[p] if isinstance(e, AggregateReady | RoundAborted)]
        for p in range(N)
    }
    # both camps finish on their own (each holds T confirmations of its own view)
    for p in range(N):
        assert finished[p], p
        assert isinstance(finished[p][-1], AggregateReady), (p, finished[p])
    # the coalition {COLLUDER_A, COLLUDER_B} pools what the honest peers revealed to it
    a, b = machines[COLLUDER_A], machines[COLLUDER_B]
    self_shares = a._pool.get((ShareKind.SELF_MASK, 0), {})
    key_shares = b._pool.get((ShareKind.MASK_KEY, 0), {})
    assert len(self_shares) < T or len(key_shares) < T, (
        "an honest peer's self-mask seed and mask key are both revealed to a coalition of "
        f"c = 2 < T = {T}: {len(self_shares)} self-mask shares at site {COLLUDER_A} (camp A), "
        f"{len(key_shares)} mask-key shares at site {COLLUDER_B} (camp B)"
    )


def test_review_perf_the_coalition_unmasks_the_honest_input_after_a_ring_split() -> None:
    """The same split, carried to the end: x_0 from y_0, b_0 and s_0 (what §3.2 forbids)."""
    machines, _, masked_0 = _run_split_round()
    a, b = machines[COLLUDER_A], machines[COLLUDER_B]
    dealer_0 = a._dealers[0]
    self_shares = a._pool.get((ShareKind.SELF_MASK, 0), {})
    key_shares = b._pool.get((ShareKind.MASK_KEY, 0), {})
    if len(self_shares) < T or len(key_shares) < T:
        return  # not split (the fix): nothing to unmask
    seed = recover(self_shares, dealer_0.self_mask_commitments).secret
    scalar = recover(key_shares, b._dealers[0].mask_key_commitments).secret
    payload = parse_envelope(masked_0, max_payload=1 << 20).payload
    message = MaskedInput.decode(payload, vector_length=L, ring_bits=32)
    recovered = np.array(message.masked, dtype=np.uint32)
    terms = [MaskTerm(a._self_mask_key(0, seed), -1)]
    for v in message.mask_set:
        secret = AgreementKey(scalar).exchange(a._advertised[v].mask_key)
        terms.append(MaskTerm(a._pair_mask_key(0, v, secret), -1 if v > 0 else 1))
    apply_masks(recovered, terms)
    rng = np.random.default_rng(7)
    x_0 = rng.integers(-1000, 1000, L).astype(np.int64)
    unmasked = recovered.view(np.int32).astype(np.int64)
    assert not np.array_equal(unmasked, x_0), (
        "the coalition recovered site 0's input exactly: " + str(unmasked[:6].tolist())
    )
