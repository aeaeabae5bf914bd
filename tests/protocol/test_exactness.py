"""§6.6 exactness: every honest peer outputs exactly the ring sum of the included inputs."""

from __future__ import annotations

import numpy as np
import pytest

from mpc_agg.fixedpoint import FixedPointCodec
from mpc_agg.ring import RingVector
from protocols.harness import Dropout, Fault, FaultKind, RoundOutcome, run_secagg_round
from protocols.secagg.machine import default_threshold, result_digest
from protocols.secagg.messages import Phase
from tests.protocol.support import assert_exact, ignored, plaintext_sum


def _assert_everyone_agrees(outcome: RoundOutcome, n: int) -> None:
    results = outcome.results()
    assert sorted(results) == list(range(n))
    assert not outcome.aborts()
    expected = plaintext_sum(outcome.inputs, range(n))
    # §6.6: the digest is keyed by the included peers' self-mask seeds (kept by each machine)
    seeds = [outcome.machines[p]._self_mask_seed for p in range(n)]
    digest = result_digest(tuple(range(n)), expected, seeds)
    for peer, result in results.items():
        assert result.included == tuple(range(n))
        assert np.array_equal(result.total, expected)
        assert_exact(outcome, result)
        assert result.confirmed_by == tuple(p for p in range(n) if p != peer)
        assert result.disagreeing == ()
        assert dict(result.dropped) == {}
        assert dict(result.excluded) == {}
        assert result.result_digest == digest
        assert ignored(outcome, peer) == []


@pytest.mark.parametrize("n", [3, 5, 10])
def test_sum_is_exact_and_identical_at_every_peer(n: int) -> None:
    outcome = run_secagg_round(n=n, vector_length=1000, seed=100 + n)
    assert outcome.params.threshold == default_threshold(n)
    _assert_everyone_agrees(outcome, n)


def test_sum_wraps_modulo_2_64_exactly() -> None:
    """Inputs at the ring's extremes: the sum is taken in Z_2^64 with no carry lost."""
    n = 3
    top = np.full(8, (1 << 64) - 1, dtype=np.uint64)
    inputs = {0: top, 1: top.copy(), 2: np.arange(8, dtype=np.uint64)}
    outcome = run_secagg_round(n=n, vector_length=8, seed=4, inputs=inputs)
    _assert_everyone_agrees(outcome, n)
    total = outcome.results()[0].total
    assert total.tolist() == [(2 * ((1 << 64) - 1) + i) % (1 << 64) for i in range(8)]


@pytest.mark.parametrize("n", [3, 5, 10])
def test_on_grid_floats_decode_to_the_exact_float_sum(n: int) -> None:
    codec = FixedPointCodec(frac_bits=16, n_peers=n, max_abs_value=64.0)
    rng = np.random.default_rng(n)
    floats = {
        p: rng.integers(-(1 << 22), 1 << 22, size=1000).astype(np.float64) / (1 << 16)
        for p in range(n)
    }
    for values in floats.values():
        assert codec.on_grid(values)
    inputs: dict[int, RingVector] = {
        p: codec.encode(values, np.random.default_rng(1000 + p)).ring
        for p, values in floats.items()
    }
    outcome = run_secagg_round(n=n, vector_length=1000, seed=200 + n, inputs=inputs)
    _assert_everyone_agrees(outcome, n)
    # on-grid values and their partial sums are exact in float64 (< 2^53 units of 2^-16)
    expected = np.sum(np.stack([floats[p] for p in range(n)]), axis=0)
    for result in outcome.results().values():
        decoded = codec.decode(result.total)
        assert decoded.dtype == np.float64
        assert np.array_equal(decoded, expected)


@pytest.mark.slow
def test_ten_peers_a_million_coordinates() -> None:
    n, length = 10, 10**6
    outcome = run_secagg_round(n=n, vector_length=length, seed=31)
    expected = np.zeros(length, dtype=np.uint64)
    for peer in range(n):
        np.add(expected, outcome.inputs[peer], out=expected)
    # independent check of the vectorised oracle on a sample of coordinates
    sample = np.arange(0, length, 9973)
    by_ints = [sum(int(outcome.inputs[p][i]) for p in range(n)) % (1 << 64) for i in sample]
    assert expected[sample].tolist() == by_ints
    results = outcome.results()
    assert sorted(results) == list(range(n))
    for peer, result in results.items():
        assert result.included == tuple(range(n))
        assert np.array_equal(result.total, expected)
        assert result.confirmed_by == tuple(p for p in range(n) if p != peer)


@pytest.mark.parametrize(("ring_bits", "reduce_scatter"), [(32, False), (64, False), (32, True)])
@pytest.mark.parametrize("dropout", [None, Phase.MASKED_INPUT, Phase.UNMASK])
def test_received_buffers_summed_in_place_give_the_same_exact_sum(
    ring_bits: int, reduce_scatter: bool, dropout: Phase | None
) -> None:
    """§6.5: a transport that hands over writable buffers (MQTT's reassembled messages) lets
    the machine sum in a received vector instead of a new one (§6.7: and keep the masked
    total in its own buffer); the result is the same, duplicates and reordering included."""
    n = 5
    bound = 1 << 20 if ring_bits == 32 else 1 << 40
    rng = np.random.default_rng(ring_bits)
    inputs: dict[int, RingVector] = {
        p: rng.integers(-bound, bound, size=777, dtype=np.int64).view(np.uint64) for p in range(n)
    }
    dropouts = [] if dropout is None else [Dropout(3, dropout)]
    outcomes = [
        run_secagg_round(
            n=n,
            vector_length=777,
            seed=9,
            inputs=inputs,
            ring_bits=ring_bits,
            reduce_scatter=reduce_scatter,
            dropouts=dropouts,
            faults=[Fault(kind=FaultKind.DUPLICATE, probability=0.3)],
            reorder=True,
            writable=writable,
        )
        for writable in (False, True)
    ]
    plain, in_place = (o.results() for o in outcomes)
    assert sorted(in_place) == sorted(plain)
    assert len(in_place) >= n - 1
    for peer, result in in_place.items():
        assert np.array_equal(result.total, plain[peer].total)
        assert result.included == plain[peer].included
        assert np.array_equal(result.total, plaintext_sum(inputs, result.included))
        assert result.result_digest == plain[peer].result_digest
        assert_exact(outcomes[1], result)
