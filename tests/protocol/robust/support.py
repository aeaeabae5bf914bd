"""Helpers of the robust protocol tier: exactness, dishonest dealers, tampering holders.

Expected sums are recomputed from the raw inputs with Python integers; adversaries are
peers running modified code (:class:`RobustMachine` subclasses) or rewriting what they put
on the wire (:class:`~protocols.robust.harness.Rewrite`).
"""

from __future__ import annotations

import numpy as np

from mpc_agg import field as gf
from mpc_agg import normproof
from mpc_agg.randomness import RandomSource
from mpc_agg.ring import RingVector
from mpc_agg.shares import DealtShares
from protocols.common import PeerExcluded
from protocols.robust.harness import RobustOutcome
from protocols.robust.machine import RobustMachine

FieldVector = np.ndarray


def plaintext_sum(outcome: RobustOutcome, included: tuple[int, ...]) -> list[int]:
    """Σ of the included inputs as Python integers (no wrap-around anywhere)."""
    totals = [0] * outcome.vector_length
    for peer in included:
        for k, v in enumerate(outcome.inputs[peer].view(np.int64).tolist()):
            totals[k] += v
    return totals


def assert_exact(outcome: RobustOutcome, *, included: tuple[int, ...] | None = None) -> None:
    """Every peer produced an aggregate, it is the exact sum of its included inputs, and
    all peers agree (same included set, same digest)."""
    results = outcome.results()
    assert results, {p: a.reason for p, a in outcome.aborts().items()}
    assert not outcome.aborts(), {p: a.reason for p, a in outcome.aborts().items()}
    sets = {r.included for r in results.values()}
    assert len(sets) == 1, sets
    if included is not None:
        assert sets == {included}
    digests = {r.result_digest for r in results.values()}
    assert len(digests) == 1
    for result in results.values():
        assert result.total.view(np.int64).tolist() == plaintext_sum(outcome, result.included)


def exclusions(outcome: RobustOutcome, peer: int) -> dict[int, str]:
    """What ``peer``'s machine excluded, with reasons."""
    return {e.peer: e.reason for e in outcome.peers[peer].effects if isinstance(e, PeerExcluded)}


def norm_violating(vector_length: int, norm_bound: int, factor: int) -> RingVector:
    """A vector with L2 norm ``factor``·B spread over the coordinates (no wrap mod p)."""
    values = np.zeros(vector_length, dtype=np.int64)
    per = max(1, (factor * norm_bound) // max(1, int(np.sqrt(vector_length))))
    values[:] = per
    return values.view(np.uint64)


class UncheckedDealer(RobustMachine):
    """A dealer whose input is invalid: it skips the local norm check and proves anyway.

    The proof is built like an honest one — the FLP parts are computed from the real x and
    bits — except that the slack and the shifted projections are reduced into their bit
    widths, which is the best a cheater can do: the polynomial identities then hold and
    only the batched relations expose the lie.
    """

    def _check_input(self, x: np.ndarray) -> None:
        return None

    def _prove(self) -> np.ndarray:
        assert self._x is not None
        return forged_proof(self.shape, self._x, self._wrap(), self._rng)


def forged_proof(
    shape: normproof.NormProofShape,
    x: np.ndarray,
    wrap: normproof.WrapChallenge,
    randomness: RandomSource,
) -> np.ndarray:
    """The cheater's proof: honest structure, slack and projections reduced into range."""
    bound = shape.norm_bound
    x_field = gf.reduce_signed(x.astype(np.int64))  # wraps modulo p, as a cheater may
    slack = (bound * bound - gf.inner(x_field, x_field)) % gf.P % (1 << shape.slack_bits)
    totals = [0] * shape.repetitions
    for start, block in wrap.chunks():
        part = x_field[start : start + block.shape[1]]
        for s in range(shape.repetitions):
            plus = int(gf.sum_rows(part[block[s] > 0]))
            minus = int(gf.sum_rows(part[block[s] < 0]))
            totals[s] = (totals[s] + plus - minus) % gf.P
    shifted = [
        (total + normproof.ALPHA * bound) % gf.P % (1 << shape.wrap_bits) for total in totals
    ]
    bits = np.concatenate(
        [
            normproof._bits_of([slack], shape.slack_bits),
            normproof._bits_of(shifted, shape.wrap_bits),
        ]
    )
    seeds = gf.random_vector(randomness, shape.wires)
    wires = normproof._wire_matrix(seeds, x_field, shape.calls)
    px = gf.sum_rows(gf.square(normproof._evaluations(wires, shape._extrapolation)), axis=1)
    bit_seeds = gf.random_vector(randomness, shape.bit_wires)
    bit_wires = normproof._evaluations(
        normproof._wire_matrix(bit_seeds, bits, shape.bit_calls), shape._bit_extrapolation
    )
    pb = gf.sub(gf.square(bit_wires), bit_wires)
    return np.concatenate([bits, seeds, px, bit_seeds, pb.reshape(-1)])


class InconsistentDealer(RobustMachine):
    """Deals one holder an input share off the polynomial (and commits to it)."""

    victim = 1

    def _share(self, stage: int, secret: np.ndarray) -> DealtShares:
        dealt = super()._share(stage, secret)
        x = self.victim + 1
        if stage == 1 and x in dealt.vectors:
            tampered = dealt.vectors[x].copy()
            tampered[0] = (int(tampered[0]) + 1) % gf.P
            dealt.vectors[x] = tampered
        elif stage == 1 and x in dealt.seeds:
            dealt.seeds[x] = bytes(32)  # a different seed: a different share, same commitment
        return dealt
