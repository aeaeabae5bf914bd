"""Helpers of the robust protocol tier: exactness, dishonest dealers, tampering holders.

Expected sums are recomputed from the raw inputs with Python integers; adversaries are
peers running modified code (:class:`RobustMachine` subclasses) or rewriting what they put
on the wire (:class:`~protocols.robust.harness.Rewrite`).
"""

from __future__ import annotations

import numpy as np

from mpc_agg.ring import RingVector
from protocols.common import PeerExcluded
from protocols.robust.harness import (
    RobustOutcome,
)

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
