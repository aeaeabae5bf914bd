"""In-process network harness: run N ``secagg`` machines from a seed, with faults and adversaries.

This is how the protocol is tested without a network, and it is public so that security
reviewers can script their own attacks::

    from protocols.harness import Dropout, run_secagg_round
    from protocols.secagg.messages import Phase

    outcome = run_secagg_round(n=5, vector_length=1000, seed=7,
                               dropouts=[Dropout(peer=4, phase=Phase.MASKED_INPUT)])
    for peer, result in outcome.results().items():
        assert (result.total == outcome.expected_total(result.included)).all()

Model: every broadcast is queued for every other peer; the queue is drained (optionally
reordered, with messages dropped, duplicated, tampered with or delayed per
:class:`Fault`); when nothing is in flight, every live machine's current phase deadline
fires, then delayed messages are released — so a *delayed* message always arrives after
its phase closed at the recipient. A :class:`Dropout` crashes a peer when it would enter a
phase: it sends nothing from that phase on. An :class:`Adversary` rewrites what its peer
sends (re-signing with that peer's key) and may inject extra messages.
"""

from __future__ import annotations

import enum
import random
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mpc_agg.crypto import SigningKey
from mpc_agg.envelope import parse_envelope
from mpc_agg.errors import DecodeError
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import RingVector
from protocols.common import (
    AggregateReady,
    Broadcast,
    Effect,
    PhaseStarted,
    Roster,
    RosterEntry,
    RoundAborted,
    Send,
)
from protocols.secagg.machine import SecAggMachine, SecAggParams, default_threshold
from protocols.secagg.messages import MaskedInput, MessageKind, Phase, ShareKeys

_MAX_STEPS = 100_000


class FaultKind(enum.Enum):
    """Network faults the harness can inject."""

    DROP = "drop"
    DELAY = "delay"
    DUPLICATE = "duplicate"
    TAMPER = "tamper"


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Apply ``kind`` to messages matching every given filter (None matches anything)."""

    kind: FaultKind
    sender: int | None = None
    recipient: int | None = None
    message: MessageKind | None = None
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class Dropout:
    """``peer`` crashes as it enters ``phase`` (sends nothing in that phase or later)."""

    peer: int
    phase: Phase


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message an adversary wants on the wire: to ``recipient`` (None = everyone)."""

    data: bytes
    recipient: int | None = None


class Adversary:
    """Base class: rewrites the broadcasts of the peer it controls (default: honest)."""

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        """Return what actually goes on the wire instead of ``data``."""
        return [Outgoing(data)]

    def injected(self, machine: SecAggMachine) -> list[Outgoing]:
        """Extra messages sent when the round starts."""
        return []


def resign(machine: SecAggMachine, kind: MessageKind, payload: bytes) -> bytes:
    """Seal ``payload`` as ``kind`` with the machine's own key and context (for adversaries)."""
    return machine._seal(kind, payload)  # the harness plays this peer


def adopt(machine: SecAggMachine, kind: MessageKind, data: bytes) -> None:
    """Make ``machine`` record ``data`` as the message of ``kind`` it sent.

    A consistent adversary's own view must reflect what it really broadcast; without this
    its ConsistencyCheck would differ from everyone's and every round would simply abort.
    """
    envelope = parse_envelope(data, max_payload=len(data))
    digest = envelope.message_digest
    machine._seen[(kind, machine.me)] = digest
    if kind is MessageKind.SHARE_KEYS and machine.me in machine._dealers:
        machine._dealers[machine.me].message = ShareKeys.decode(envelope.payload)
        machine._dealers[machine.me].digest = digest
    if kind is MessageKind.MASKED_INPUT and machine.me in machine._inputs:
        vector_length = machine.params.vector_length
        record = machine._inputs[machine.me]
        record.message = MaskedInput.decode(envelope.payload, vector_length=vector_length)
        record.digest = digest


def payload_of(data: bytes) -> bytes:
    """The payload bytes of a sealed envelope."""
    return bytes(parse_envelope(data, max_payload=len(data)).payload)


@dataclass(slots=True)
class PeerOutcome:
    """What one peer ended with, and everything its machine emitted."""

    peer: int
    result: AggregateReady | None = None
    aborted: RoundAborted | None = None
    crashed: bool = False
    effects: list[Effect] = field(default_factory=list)


@dataclass(slots=True)
class RoundOutcome:
    """Every peer's outcome, plus the inputs and machines (for assertions)."""

    params: SecAggParams
    inputs: dict[int, RingVector]
    peers: dict[int, PeerOutcome]
    machines: dict[int, SecAggMachine]
    delivered: int

    def results(self) -> dict[int, AggregateReady]:
        """Peers that produced an aggregate."""
        return {p: o.result for p, o in self.peers.items() if o.result is not None}

    def aborts(self) -> dict[int, RoundAborted]:
        """Peers that aborted."""
        return {p: o.aborted for p, o in self.peers.items() if o.aborted is not None}

    def expected_total(self, included: Iterable[int]) -> RingVector:
        """Plaintext ring sum of the inputs of ``included``."""
        total = np.zeros(self.params.vector_length, dtype=np.uint64)
        for peer in included:
            np.add(total, self.inputs[peer], out=total)
        return total


def make_roster(n: int, seed: int | str = 0) -> tuple[Roster, list[SigningKey]]:
    """A roster of ``n`` sites ``site-0 …`` with deterministic keys (tests only)."""
    source = DeterministicRandomSource(f"roster/{seed}")
    keys = [SigningKey.generate(source) for _ in range(n)]
    entries = tuple(
        RosterEntry(name=f"site-{i}", verify_key=k.public_bytes()) for i, k in enumerate(keys)
    )
    return Roster(entries), keys


def random_inputs(n: int, length: int, seed: int, bound: int = 1 << 20) -> dict[int, RingVector]:
    """Signed inputs in [-bound, bound) embedded in the ring (not secret; test data)."""
    rng = np.random.default_rng(seed)
    return {
        p: rng.integers(-bound, bound, size=length, dtype=np.int64).view(np.uint64)
        for p in range(n)
    }


def run_secagg_round(
    *,
    n: int,
    vector_length: int,
    seed: int,
    threshold: int | None = None,
    inputs: Mapping[int, RingVector] | None = None,
    dropouts: Sequence[Dropout] = (),
    faults: Sequence[Fault] = (),
    adversaries: Mapping[int, Adversary] | None = None,
    reorder: bool = False,
    inject: Sequence[tuple[int, bytes]] = (),
    round_id: int = 1,
    federation: str = "harness",
    roster: tuple[Roster, list[SigningKey]] | None = None,
) -> RoundOutcome:
    """Run one round of ``secagg`` among ``n`` in-process machines and return every outcome.

    ``inject`` lists (recipient, bytes) delivered before anything else (e.g. replays).
    """
    roster_obj, keys = roster if roster is not None else make_roster(n)
    params = SecAggParams(
        federation=federation,
        round_id=round_id,
        roster=roster_obj,
        threshold=threshold if threshold is not None else default_threshold(n),
        vector_length=vector_length,
    )
    data_in = dict(inputs) if inputs is not None else random_inputs(n, vector_length, seed)
    root = DeterministicRandomSource(f"harness/{seed}/{round_id}")
    machines = {
        p: SecAggMachine(params, me=p, signing_key=keys[p], randomness=root.fork(f"peer/{p}"))
        for p in range(n)
    }
    network = _Network(
        machines=machines,
        dropouts={d.peer: d.phase for d in dropouts},
        faults=list(faults),
        adversaries=dict(adversaries or {}),
        rng=random.Random(seed),  # noqa: S311 - schedules faults, not a secret
        reorder=reorder,
    )
    for recipient, data in inject:
        network.queue.append((None, recipient, data))
    for peer in range(n):
        adversary = network.adversaries.get(peer)
        if adversary is not None:
            for extra in adversary.injected(machines[peer]):
                network.post(peer, extra.data, extra.recipient)
    for peer in range(n):
        if network.dropouts.get(peer) == Phase.IDLE:
            network.outcomes[peer].crashed = True
            continue
        network.handle(peer, machines[peer].begin(data_in[peer]))
    network.run()
    return RoundOutcome(
        params=params,
        inputs=data_in,
        peers=network.outcomes,
        machines=machines,
        delivered=network.delivered,
    )


@dataclass(slots=True)
class _Network:
    machines: dict[int, SecAggMachine]
    dropouts: dict[int, Phase]
    faults: list[Fault]
    adversaries: dict[int, Adversary]
    rng: random.Random
    reorder: bool
    queue: deque[tuple[int | None, int, bytes]] = field(default_factory=deque)
    delayed: list[tuple[int | None, int, bytes]] = field(default_factory=list)
    held_back: set[tuple[int | None, int, bytes]] = field(default_factory=set)
    outcomes: dict[int, PeerOutcome] = field(default_factory=dict)
    delivered: int = 0

    def __post_init__(self) -> None:
        self.outcomes = {p: PeerOutcome(p) for p in self.machines}

    def alive(self, peer: int) -> bool:
        return not self.outcomes[peer].crashed

    def handle(self, peer: int, effects: list[Effect]) -> None:
        outcome = self.outcomes[peer]
        for effect in effects:
            if outcome.crashed:
                return
            outcome.effects.append(effect)
            if isinstance(effect, PhaseStarted):
                crash_at = self.dropouts.get(peer)
                if crash_at is not None and effect.phase >= crash_at:
                    outcome.crashed = True
            elif isinstance(effect, Broadcast):
                kind = MessageKind(effect.phase.value)
                adversary = self.adversaries.get(peer)
                sends = (
                    adversary.outgoing(self.machines[peer], kind, effect.data)
                    if adversary is not None
                    else [Outgoing(effect.data)]
                )
                for out in sends:
                    self.post(peer, out.data, out.recipient)
            elif isinstance(effect, Send):
                self.post(peer, effect.data, effect.recipient)
            elif isinstance(effect, AggregateReady):
                outcome.result = effect
            elif isinstance(effect, RoundAborted):
                outcome.aborted = effect

    def post(self, sender: int, data: bytes, recipient: int | None) -> None:
        targets = (
            [recipient] if recipient is not None else [p for p in self.machines if p != sender]
        )
        for target in targets:
            self.queue.append((sender, target, data))

    def _apply_faults(self, sender: int | None, recipient: int, data: bytes) -> list[bytes] | None:
        """Return the copies to deliver now, or None if the message was dropped or delayed."""
        kind: MessageKind | None = None
        try:
            kind = MessageKind(parse_envelope(data, max_payload=len(data)).kind)
        except (DecodeError, ValueError):  # injected or tampered bytes may not parse
            kind = None
        copies = [data]
        for fault in self.faults:
            if fault.sender is not None and fault.sender != sender:
                continue
            if fault.recipient is not None and fault.recipient != recipient:
                continue
            if fault.message is not None and fault.message != kind:
                continue
            if self.rng.random() >= fault.probability:
                continue
            if fault.kind is FaultKind.DROP:
                return None
            if fault.kind is FaultKind.DELAY:
                if (sender, recipient, data) in self.held_back:
                    continue  # released after the deadlines: deliver it now, late
                self.held_back.add((sender, recipient, data))
                self.delayed.append((sender, recipient, data))
                return None
            if fault.kind is FaultKind.DUPLICATE:
                copies.append(data)
            if fault.kind is FaultKind.TAMPER:
                position = self.rng.randrange(len(data))
                flipped = bytearray(data)
                flipped[position] ^= 1 << self.rng.randrange(8)
                copies = [bytes(flipped) for _ in copies]
        return copies

    def run(self) -> None:
        steps = 0
        while True:
            while self.queue:
                steps += 1
                if steps > _MAX_STEPS:
                    raise RuntimeError("harness did not converge (message storm?)")
                if self.reorder and len(self.queue) > 1:
                    self.queue.rotate(-self.rng.randrange(len(self.queue)))
                sender, recipient, data = self.queue.popleft()
                if not self.alive(recipient):
                    continue
                copies = self._apply_faults(sender, recipient, data)
                for copy in copies or []:
                    self.delivered += 1
                    self.handle(recipient, self.machines[recipient].receive(sender, copy))
            waiting = [p for p, m in self.machines.items() if self.alive(p) and not m.finished]
            if not waiting and not self.delayed:
                return
            for peer in waiting:
                steps += 1
                machine = self.machines[peer]
                self.handle(peer, machine.deadline(machine.phase))
            if steps > _MAX_STEPS:
                raise RuntimeError("harness did not converge (deadlines never finish)")
            self.queue.extend(self.delayed)
            self.delayed.clear()
            if not waiting and not self.queue:
                return


def corrupt_payload(
    transform: Callable[[SecAggMachine, bytes], bytes], kind: MessageKind
) -> Adversary:
    """An adversary that replaces its ``kind`` payload by ``transform(machine, payload)``."""

    class _Corrupt(Adversary):
        def outgoing(
            self, machine: SecAggMachine, message: MessageKind, data: bytes
        ) -> list[Outgoing]:
            if message != kind:
                return [Outgoing(data)]
            forged = resign(machine, kind, transform(machine, payload_of(data)))
            adopt(machine, kind, forged)
            return [Outgoing(forged)]

    return _Corrupt()
