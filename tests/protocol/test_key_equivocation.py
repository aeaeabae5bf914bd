"""Regression: a peer showing different AdvertiseKeys to different peers gains nothing.

Before the view covered AdvertiseKeys digests, a malicious peer could give two camps of
honest peers different encryption keys, make their complaint verdicts diverge, and so get
both kinds of share revealed for an honest owner (a coalition of c < T then recovered an
honest input). Now the views differ, every honest peer aborts before Unmask, and no honest
machine reveals anything.
"""

from __future__ import annotations

from mpc_agg.crypto import AgreementKey
from mpc_agg.randomness import DeterministicRandomSource
from protocols.harness import Adversary, Outgoing, payload_of, resign, run_secagg_round
from protocols.secagg.machine import SecAggMachine
from protocols.secagg.messages import AdvertiseKeys, MessageKind


class _TwoFacedKeys(Adversary):
    def __init__(self, camp: set[int]) -> None:
        self.camp = camp

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        if kind is not MessageKind.ADVERTISE_KEYS:
            return [Outgoing(data)]
        real = AdvertiseKeys.decode(payload_of(data))
        other_key = AgreementKey.generate(DeterministicRandomSource("other")).public
        forged = resign(
            machine, kind, AdvertiseKeys(encryption_key=other_key, mask_key=real.mask_key).encode()
        )
        return [
            Outgoing(forged if peer in self.camp else data, recipient=peer)
            for peer in range(machine.params.n)
            if peer != machine.me
        ]


def test_different_encryption_keys_to_two_camps_abort_before_unmask() -> None:
    outcome = run_secagg_round(
        n=7, vector_length=50, seed=3, threshold=5, adversaries={0: _TwoFacedKeys({5, 6})}
    )
    honest = range(1, 7)
    assert not outcome.results()
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert "advertised keys with different digests {0}" in aborted.reason
        assert outcome.machines[peer].revealed == {}


def test_same_keys_to_everyone_is_a_normal_round() -> None:
    outcome = run_secagg_round(
        n=7, vector_length=50, seed=3, threshold=5, adversaries={0: _TwoFacedKeys(set())}
    )
    results = outcome.results()
    assert sorted(results) == list(range(7))
    for result in results.values():
        assert (result.total == outcome.expected_total(result.included)).all()
