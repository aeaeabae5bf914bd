"""Review probes: crafted messages at the boundaries of admission and decoding.

Each test plays one deviating peer and checks that honest peers finish with the exact sum
of what they accept, blaming exactly the deviating peer (or nobody, when the deviation is
indistinguishable from a network fault).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from mpc_agg import field as gf
from mpc_agg.envelope import parse_envelope
from protocols.common import MessageIgnored, Send
from protocols.harness import Adversary, Outgoing
from protocols.robust.harness import payload_of, resign, run_robust_round
from protocols.robust.messages import Verify, VerifyEntry
from protocols.robust.phases import MessageKind
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
