"""Hypothesis: a peer sending garbage, mutated or re-signed nonsense never breaks honest peers.

One adversarial peer replaces one of its messages (any kind, broadcast or private) by
random bytes, a bit-flipped or truncated copy — re-signed with its own key, so the bytes
pass authentication and reach the handlers — or unsigned garbage. Properties: nothing
raises out of any machine; every honest peer finishes; an honest peer that outputs a
result outputs the exact sum of the inputs it says it included, and honest results agree.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc_agg.envelope import BROADCAST
from protocols.harness import Adversary, Outgoing
from protocols.robust.harness import payload_of, resign, run_robust_round
from protocols.robust.phases import MessageKind
from tests.protocol.robust.support import plaintext_sum

N, D, BAD = 5, 24, 4


class Mutator(Adversary):
    def __init__(self, kind: MessageKind, mode: str, data: bytes, position: int) -> None:
        self.kind, self.mode, self.data, self.position = kind, mode, data, position

    def _mutate(self, machine: Any, data: bytes, recipient: int) -> bytes:
        payload = payload_of(data)
        if self.mode == "random":
            payload = self.data
        elif self.mode == "flip" and payload:
            flipped = bytearray(payload)
            flipped[self.position % len(payload)] ^= 1 << (self.position % 8)
            payload = bytes(flipped)
        elif self.mode == "truncate":
            payload = payload[: self.position % (len(payload) + 1)]
        elif self.mode == "garbage":
            return self.data
        return resign(machine, self.kind, payload, recipient)

    def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
        if kind != self.kind:
            return [Outgoing(data)]
        return [Outgoing(self._mutate(machine, data, BROADCAST))]

    def outgoing_private(
        self, machine: Any, kind: Any, data: bytes, recipient: int
    ) -> list[Outgoing]:
        if kind != self.kind:
            return [Outgoing(data, recipient)]
        return [Outgoing(self._mutate(machine, data, recipient), recipient)]


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
@given(
    kind=st.sampled_from(list(MessageKind)),
    mode=st.sampled_from(["random", "flip", "truncate", "garbage"]),
    data=st.binary(max_size=300),
    position=st.integers(min_value=0, max_value=10_000),
)
def test_one_peer_mutating_any_message_never_breaks_honest_peers(
    kind: MessageKind, mode: str, data: bytes, position: int
) -> None:
    outcome = run_robust_round(
        n=N, vector_length=D, seed=31, adversaries={BAD: Mutator(kind, mode, data, position)}
    )
    honest = [p for p in range(N) if p != BAD]
    for peer in honest:
        assert outcome.machines[peer].finished
    results = {p: r for p, r in outcome.results().items() if p in honest}
    for result in results.values():
        assert result.total.view("int64").tolist() == plaintext_sum(outcome, result.included)
    assert len({(r.included, r.result_digest) for r in results.values()}) <= 1
