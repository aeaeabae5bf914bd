"""Security review (attacker's view) of ``robust``: two findings at robust/2, both fixed.

With k = 2 query points (n = 20, t = 6, SPEC §2.2's dropout-tolerant choice) each wire had
one random seed, so its two opened values fixed a linear function of the data: the broker
read an honest dealer's input off its public Verify. robust/3 gives each wire k seeds
(SPEC §3.2, §6.4); this attack now recovers nothing. And at n = 2t + 1 one holder that
omitted its output projections made every honest peer abort (§6.10).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpc_agg import field as gf
from mpc_agg.crypto import aead_decrypt, aead_encrypt
from mpc_agg.envelope import parse_envelope
from protocols.common import Broadcast
from protocols.harness import Outgoing
from protocols.robust.harness import Rewrite, RobustOutcome, run_robust_round
from protocols.robust.machine import RobustMachine
from protocols.robust.messages import Output, OutputVerify, Verify
from protocols.robust.phases import MessageKind


def _broadcast_payload(outcome: RobustOutcome, peer: int, kind: MessageKind) -> bytes:
    for effect in outcome.peers[peer].effects:
        if isinstance(effect, Broadcast):
            envelope = parse_envelope(effect.data, max_payload=len(effect.data))
            if envelope.kind == kind:
                return bytes(envelope.payload)
    raise AssertionError(f"peer {peer} sent no {kind.name}")


def test_two_query_points_reveal_an_honest_input_from_the_public_verifier() -> None:
    # SPEC §2.2 recommends t = ⌊(n − 1)/3⌋ = 6 at n = 20; then K ≈ 2^17 and §6.4 (iii) makes
    # the verifier query k = 2 points. Each wire polynomial has ONE random seed (node 0), so
    # its values at two points fix a linear function of the data without the seed. At d = 1
    # (M = L = 1) that is the input itself: the broker reads it off dealer 0's public Verify.
    n, t, d = 20, 6, 1
    secret = 12345
    inputs = {p: np.array([7 * p - 30], dtype=np.int64).view(np.uint64) for p in range(n)}
    inputs[0] = np.array([secret], dtype=np.int64).view(np.uint64)
    outcome = run_robust_round(n=n, vector_length=d, seed=3, threshold=t, inputs=inputs)
    machine = outcome.machines[1]
    shape = machine.shape
    assert shape.points == 2
    verifier = machine._verifier  # public: derived from broadcast nonces and views only
    assert verifier is not None
    r1, r2 = verifier.challenge.points
    message = Verify.decode(
        _broadcast_payload(outcome, 0, MessageKind.VERIFY),
        verifier_length=shape.verifier_length,
        rows=t + 1,
    )
    assert message.reference is not None
    q = message.reference[0]  # Q(X_0, W_0): what every peer and the broker learns
    u1, u2 = int(q[0]), int(q[shape.point_length])
    # U(r) = (1 − r)·seed + r·x  (nodes 0 and 1); eliminate the seed
    p = gf.P
    a1, a2 = (1 - r1) % p, (1 - r2) % p
    x = (a2 * u1 - a1 * u2) * pow(a2 * r1 - a1 * r2, p - 2, p) % p
    recovered = x - p if x > p // 2 else x
    # SPEC §3.2 / §8: Q(X, W) reveals nothing about an honest x beyond validity
    assert recovered != secret, "the public verifier reveals dealer 0's input exactly"


# --------------------------------------------------------------------------- output check


def _tamper_output(machine: RobustMachine, payload: bytes) -> bytes:
    """Its own aggregate share with one coordinate shifted (forces the output check)."""
    message = Output.decode(payload)
    key = machine._output_share_key(machine.me)
    ad = machine._info(b"output-ad", machine.me)
    share = np.frombuffer(aead_decrypt(key, message.ciphertext, ad), dtype="<u8").copy()
    share[0] = (int(share[0]) + 1) % gf.P
    return Output(view=message.view, ciphertext=aead_encrypt(key, share.tobytes(), ad)).encode()


def _omit_projections(machine: RobustMachine, payload: bytes) -> bytes:
    message = OutputVerify.decode(payload)
    return OutputVerify(view=message.view, projections=(), reference=message.reference).encode()


class _TamperAndOmit(Rewrite):
    def __init__(self) -> None:
        super().__init__(MessageKind.OUTPUT, _tamper_output)
        self.second = Rewrite(MessageKind.OUTPUT_VERIFY, _omit_projections)

    def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
        if kind == MessageKind.OUTPUT_VERIFY:
            return self.second.outgoing(machine, kind, data)
        return super().outgoing(machine, kind, data)


def test_a_holder_omitting_its_projections_is_excluded_at_n_2t_plus_1() -> None:
    # n = 5, t = 2 (n = 2t + 1). Peer 4 alone tampers with its aggregate share (forcing the
    # output check, §6.9) and publishes an OutputVerify without projections. Every dealer
    # then had 2t matching values, not the 2t + 1 that pin it, and every honest peer aborted
    # (a review found it). A holder that published its aggregate share holds every accepted
    # dealer's share, so omitting a projection is provable deviation (§6.10): it is
    # excluded, counts towards pinning, and the others finish with the exact sum.
    outcome = run_robust_round(n=5, vector_length=40, seed=21, adversaries={4: _TamperAndOmit()})
    results = outcome.results()
    assert set(results) >= set(range(4)), outcome.aborts()
    for peer in range(4):
        result = results[peer]
        assert "no output projection" in result.excluded[4]
        assert (result.total == outcome.expected_total(result.included)).all()
