"""In-process network harness for ``robust``: N machines from a seed, with faults and adversaries.

Public, like :mod:`protocols.harness` (whose :class:`~protocols.harness.Network`, faults,
dropouts and adversaries it reuses), so that reviewers can script attacks::

    from protocols.robust.harness import run_robust_round

    outcome = run_robust_round(n=5, vector_length=1000, seed=7)
    for peer, result in outcome.results().items():
        assert (result.total == outcome.expected_total(result.included)).all()
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from mpc_agg import field as gf
from mpc_agg import normproof
from mpc_agg.crypto import SigningKey, aead_decrypt
from mpc_agg.envelope import BROADCAST, parse_envelope
from mpc_agg.randomness import DeterministicRandomSource, RandomSource
from mpc_agg.ring import RingVector
from mpc_agg.shares import DealtShares
from protocols.common import Roster
from protocols.harness import (
    Adversary,
    Dropout,
    Fault,
    Outgoing,
    ProtocolOutcome,
    make_roster,
    run_network,
)
from protocols.robust.machine import RobustMachine
from protocols.robust.messages import Output, OutputVerify, Verify
from protocols.robust.params import RobustParams, default_threshold
from protocols.robust.phases import MessageKind

#: The outcome of a ``robust`` round (:func:`run_robust_round`).
RobustOutcome = ProtocolOutcome[RobustParams, RobustMachine]


def default_norm_bound(vector_length: int) -> int:
    """A bound that every vector length accepts (for tests): min(2^16, the largest allowed)."""
    return min(1 << 16, normproof.max_norm_bound(vector_length))


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
    machine_classes: Mapping[int, type[RobustMachine]] | None = None,
) -> RobustOutcome:
    """Run one round of ``robust`` among ``n`` in-process machines and return every outcome.

    ``machine_classes`` lets a peer run modified code (a subclass of :class:`RobustMachine`
    that deals inconsistent shares or proves a false statement, say).
    """
    classes = dict(machine_classes or {})
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
        p: classes.get(p, RobustMachine)(
            params, me=p, signing_key=keys[p], randomness=root.fork(f"peer/{p}")
        )
        for p in range(n)
    }
    return run_network(
        params,
        machines,
        MessageKind,
        data_in,
        seed=seed,
        dropouts=dropouts,
        faults=faults,
        adversaries=adversaries,
        reorder=reorder,
        inject=inject,
        vector_length=vector_length,
    )


def resign(machine: RobustMachine, kind: MessageKind, payload: bytes, recipient: int) -> bytes:
    """Seal ``payload`` as ``kind`` with the machine's own key and context (for adversaries)."""
    return machine._seal(kind, payload, recipient)  # the harness plays this peer


def payload_of(data: bytes) -> bytes:
    """The payload bytes of a sealed envelope."""
    return bytes(parse_envelope(data, max_payload=len(data)).payload)


def adopt(machine: RobustMachine, data: bytes) -> None:
    """Make ``machine`` record the broadcast ``data`` as the one it sent.

    A consistent adversary's own view must reflect what it really broadcast; without this
    its next message would carry a different view and every round would simply abort.
    """
    envelope = parse_envelope(data, max_payload=len(data))
    kind = MessageKind(envelope.kind)
    digest = envelope.message_digest
    machine._seen[(kind, machine.me)] = digest
    machine._live[kind.phase][machine.me] = digest
    shape = machine.shape
    if kind is MessageKind.VERIFY:
        machine._verify[machine.me] = Verify.decode(
            envelope.payload, verifier_length=shape.verifier_length, rows=machine._t + 1
        )
    elif kind is MessageKind.OUTPUT_VERIFY:
        machine._output_verify[machine.me] = OutputVerify.decode(envelope.payload)
    elif kind is MessageKind.OUTPUT:
        ciphertext = Output.decode(envelope.payload).ciphertext
        if ciphertext:
            plaintext = aead_decrypt(
                machine._output_share_key(machine.me),
                ciphertext,
                machine._info(b"output-ad", machine.me),
            )
            machine._output_shares[machine.me] = np.frombuffer(plaintext, dtype="<u8").astype(
                np.uint64
            )


class Rewrite(Adversary):
    """Replace the payload of the peer's ``kind`` broadcast by ``transform(machine, payload)``."""

    def __init__(
        self, kind: MessageKind, transform: Callable[[RobustMachine, bytes], bytes]
    ) -> None:
        self.kind = kind
        self.transform = transform

    def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
        """The rewritten, re-signed and adopted broadcast (other kinds pass unchanged)."""
        if kind != self.kind:
            return [Outgoing(data)]
        forged = resign(machine, kind, self.transform(machine, payload_of(data)), BROADCAST)
        adopt(machine, forged)
        return [Outgoing(forged)]


# --------------------------------------------------------------------------- modified peers


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
    k = shape.points
    seeds = gf.random_vector(randomness, k * shape.wires).reshape(k, shape.wires)
    wires = normproof._wire_matrix(seeds, x_field, shape.calls)
    px = gf.sum_rows(gf.square(normproof._evaluations(wires, shape._extrapolation)), axis=1)
    bit_seeds = gf.random_vector(randomness, k * shape.bit_wires).reshape(k, shape.bit_wires)
    bit_wires = normproof._evaluations(
        normproof._wire_matrix(bit_seeds, bits, shape.bit_calls), shape._bit_extrapolation
    )
    pb = gf.sub(gf.square(bit_wires), bit_wires)
    pad = gf.random_vector(randomness, 1)
    return np.concatenate([bits, seeds.reshape(-1), px, bit_seeds.reshape(-1), pb.reshape(-1), pad])


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
