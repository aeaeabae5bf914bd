"""In-process network harness for ``robust``: N machines from a seed, with faults and adversaries.

Public, like :mod:`protocols.harness` (whose :class:`~protocols.harness.Network`, faults,
dropouts and adversaries it reuses), so that reviewers can script attacks::

    from protocols.robust.harness import run_robust_round

    outcome = run_robust_round(n=5, vector_length=1000, seed=7)
    for peer, result in outcome.results().items():
        assert (result.total == outcome.expected_total(result.included)).all()
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence

import numpy as np

from mpc_agg.crypto import SigningKey
from mpc_agg.envelope import parse_envelope
from mpc_agg.normproof import max_norm_bound
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import RingVector
from protocols.common import Roster
from protocols.harness import (
    Adversary,
    Dropout,
    Fault,
    Network,
    ProtocolOutcome,
    make_roster,
)
from protocols.robust.machine import RobustMachine
from protocols.robust.params import RobustParams, default_threshold
from protocols.robust.phases import MessageKind

#: The outcome of a ``robust`` round (:func:`run_robust_round`).
RobustOutcome = ProtocolOutcome[RobustParams, RobustMachine]


def default_norm_bound(vector_length: int) -> int:
    """A bound that every vector length accepts (for tests): min(2^16, the largest allowed)."""
    return min(1 << 16, max_norm_bound(vector_length))


def bounded_inputs(
    n: int, vector_length: int, seed: int, norm_bound: int, *, fill: float = 0.9
) -> dict[int, RingVector]:
    """Integer vectors with L2 norm ≈ ``fill``·B (≤ B), as two's-complement ring words."""
    rng = np.random.default_rng(seed)
    out = {}
    for peer in range(n):
        direction = rng.normal(0.0, 1.0, vector_length)
        direction /= max(float(np.linalg.norm(direction)), 1e-12)
        values = np.trunc(direction * fill * norm_bound).astype(np.int64)  # |·| only shrinks
        out[peer] = values.view(np.uint64)
    return out


def run_robust_round(
    *,
    n: int,
    vector_length: int,
    seed: int,
    threshold: int | None = None,
    norm_bound: int | None = None,
    inputs: Mapping[int, RingVector] | None = None,
    dropouts: Sequence[Dropout] = (),
    faults: Sequence[Fault] = (),
    adversaries: Mapping[int, Adversary] | None = None,
    reorder: bool = False,
    inject: Sequence[tuple[int, bytes]] = (),
    round_id: int = 1,
    federation: str = "harness",
    roster: tuple[Roster, list[SigningKey]] | None = None,
) -> RobustOutcome:
    """Run one round of ``robust`` among ``n`` in-process machines and return every outcome."""
    roster_obj, keys = roster if roster is not None else make_roster(n)
    bound = norm_bound if norm_bound is not None else default_norm_bound(vector_length)
    params = RobustParams(
        federation=federation,
        round_id=round_id,
        roster=roster_obj,
        threshold=threshold if threshold is not None else default_threshold(n),
        vector_length=vector_length,
        norm_bound=bound,
    )
    data_in = dict(inputs) if inputs is not None else bounded_inputs(n, vector_length, seed, bound)
    root = DeterministicRandomSource(f"robust-harness/{seed}/{round_id}")
    machines = {
        p: RobustMachine(params, me=p, signing_key=keys[p], randomness=root.fork(f"peer/{p}"))
        for p in range(n)
    }
    network = Network(
        machines=machines,
        kinds=MessageKind,
        dropouts={d.peer: d.phase for d in dropouts},
        faults=list(faults),
        adversaries=dict(adversaries or {}),
        rng=random.Random(seed),  # noqa: S311 - schedules faults, not a secret
        reorder=reorder,
    )
    network.start(data_in, inject)
    return RobustOutcome(
        params=params,
        inputs=data_in,
        peers=network.outcomes,
        machines=machines,
        delivered=network.delivered,
        vector_length=vector_length,
    )


def resign(machine: RobustMachine, kind: MessageKind, payload: bytes, recipient: int) -> bytes:
    """Seal ``payload`` as ``kind`` with the machine's own key and context (for adversaries)."""
    return machine._seal(kind, payload, recipient)  # the harness plays this peer


def payload_of(data: bytes) -> bytes:
    """The payload bytes of a sealed envelope."""
    return bytes(parse_envelope(data, max_payload=len(data)).payload)
