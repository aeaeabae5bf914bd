"""Rounds in Z_2^32 (SPEC §2.1, §5.3, §6.6): half the bytes on the wire, the same sums.

The machines keep computing in uint64 words; only the low 32 bits of each masked input
travel, and the total is reduced mod 2^32 and sign-extended before its digest.
"""

from __future__ import annotations

import numpy as np
import pytest

from mpc_agg.envelope import parse_envelope
from mpc_agg.errors import EncodingError
from mpc_agg.randomness import DeterministicRandomSource
from protocols.common import Broadcast
from protocols.harness import (
    Adversary,
    Dropout,
    Outgoing,
    RoundOutcome,
    make_roster,
    random_inputs,
    resign,
    run_secagg_round,
)
from protocols.secagg.machine import SecAggMachine, SecAggParams
from protocols.secagg.messages import MaskedInput, MessageKind, Phase
from tests.protocol.support import effects_of

N = 5  # default T = 4


def _signed_sum(inputs: dict[int, np.ndarray], included: tuple[int, ...]) -> list[int]:
    return [sum(int(inputs[p].view(np.int64)[i]) for p in included) for i in range(8)]


def _masked_payload_size(outcome: RoundOutcome) -> int:
    for effect in effects_of(outcome, 0, Broadcast):
        envelope = parse_envelope(effect.data, max_payload=1 << 30)
        if envelope.kind == MessageKind.MASKED_INPUT:
            return len(envelope.payload)
    raise AssertionError("no MaskedInput broadcast")


@pytest.mark.parametrize("dropout", [None, Phase.MASKED_INPUT, Phase.UNMASK])
def test_a_32_bit_round_gives_the_exact_signed_sum(dropout: Phase | None) -> None:
    bound = (1 << 31) // N  # every partial sum of N inputs stays in [-2^31, 2^31)
    inputs = random_inputs(N, 2_000, seed=3, bound=bound)
    outcome = run_secagg_round(
        n=N,
        vector_length=2_000,
        seed=3,
        inputs=inputs,
        ring_bits=32,
        dropouts=[] if dropout is None else [Dropout(peer=4, phase=dropout)],
    )
    results = outcome.results()
    assert len(results) == (N if dropout is None else N - 1)
    for result in results.values():
        # the total is the signed sum, sign-extended into the uint64 words
        assert result.total.view(np.int64)[:8].tolist() == _signed_sum(inputs, result.included)
        ring_sum = [
            sum(int(inputs[p][i]) for p in result.included) % (1 << 32) for i in range(2_000)
        ]
        signed = [v - (1 << 32) if v >= 1 << 31 else v for v in ring_sum]
        assert result.total.view(np.int64).tolist() == signed
        assert np.array_equal(result.total, outcome.expected_total(result.included))
    assert len({r.result_digest for r in results.values()}) == 1


def test_the_masked_input_travels_as_4_bytes_an_entry() -> None:
    sizes = {}
    for bits in (32, 64):
        outcome = run_secagg_round(n=3, vector_length=10_000, seed=4, ring_bits=bits)
        assert len(outcome.results()) == 3
        sizes[bits] = _masked_payload_size(outcome)
    assert 40_000 <= sizes[32] < 40_000 + 512
    assert 80_000 <= sizes[64] < 80_000 + 512


def test_an_input_outside_the_32_bit_ring_is_refused_before_anything_is_sent() -> None:
    roster, keys = make_roster(3)
    params = SecAggParams(
        federation="f", round_id=1, roster=roster, threshold=2, vector_length=4, ring_bits=32
    )
    machine = SecAggMachine(
        params, me=0, signing_key=keys[0], randomness=DeterministicRandomSource("r32")
    )
    update = np.array([0, 1, -(1 << 31), 1 << 31], dtype=np.int64).view(np.uint64)
    with pytest.raises(
        EncodingError, match=r"outside the round's ring Z_2\^32.*nothing was wrapped"
    ):
        machine.begin(update)
    assert machine.phase == Phase.IDLE  # still unused: nothing was emitted


def test_ring_bits_must_be_32_or_64() -> None:
    roster, _ = make_roster(3)
    with pytest.raises(ValueError, match="ring_bits"):
        SecAggParams(
            federation="f", round_id=1, roster=roster, threshold=2, vector_length=4, ring_bits=16
        )


class _WideMaskedInput(Adversary):
    """Sends its MaskedInput in Z_2^64 into a Z_2^32 round (a peer configured otherwise)."""

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        if kind is not MessageKind.MASKED_INPUT:
            return [Outgoing(data)]
        payload = parse_envelope(data, max_payload=1 << 30).payload
        message = MaskedInput.decode(
            payload, vector_length=machine.params.vector_length, ring_bits=32
        )
        wide = MaskedInput(
            mask_set=message.mask_set,
            complaints=message.complaints,
            masked=message.masked.astype(np.uint64),
            ring_bits=64,
        )
        return [Outgoing(resign(machine, kind, wide.encode()))]


def test_a_masked_input_in_the_wrong_ring_is_excluded_with_its_reason() -> None:
    outcome = run_secagg_round(
        n=N, vector_length=64, seed=5, ring_bits=32, adversaries={2: _WideMaskedInput()}
    )
    for peer in (0, 1, 3, 4):
        result = outcome.results()[peer]
        assert "Z_2^64, the round's ring is Z_2^32" in result.excluded[2]
        assert 2 not in result.included  # never summed: the sum of the others is exact
        assert np.array_equal(result.total, outcome.expected_total(result.included))
