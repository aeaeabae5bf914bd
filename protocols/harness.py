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
from typing import Any, Generic, Protocol, TypeVar

import numpy as np

from mpc_agg.crypto import SigningKey
from mpc_agg.envelope import parse_envelope
from mpc_agg.errors import DecodeError
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import RingVector, reduce_mod
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
from protocols.secagg.messages import MaskedHeader, MaskedInput, MessageKind, ShareKeys

_MAX_STEPS = 100_000


class FaultKind(enum.Enum):
    """Network faults the harness can inject."""

    DROP = "drop"
    DELAY = "delay"
    DUPLICATE = "duplicate"
    TAMPER = "tamper"


class Machine(Protocol):
    """What the network drives: any protocol's sans-I/O machine."""

    @property
    def me(self) -> int:
        """The machine's own peer id."""
        ...

    @property
    def finished(self) -> bool:
        """True once the round ended (aggregate or abort)."""
        ...

    @property
    def phase(self) -> enum.IntEnum:
        """The current phase."""
        ...

    def begin(self, update: RingVector) -> list[Effect]:
        """Start the round."""
        ...

    def receive(self, sender: int | None, data: bytes | memoryview) -> list[Effect]:
        """Process one message."""
        ...

    def deadline(self, phase: Any) -> list[Effect]:
        """Close ``phase``."""
        ...


ParamsT = TypeVar("ParamsT")
MachineT = TypeVar("MachineT", bound=Machine)


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Apply ``kind`` to messages matching every given filter (None matches anything).

    ``message`` is a message kind of the protocol being run (its enum).
    """

    kind: FaultKind
    sender: int | None = None
    recipient: int | None = None
    message: enum.IntEnum | None = None
    probability: float = 1.0


@dataclass(frozen=True, slots=True)
class Dropout:
    """``peer`` crashes as it enters ``phase`` (sends nothing in that phase or later)."""

    peer: int
    phase: enum.IntEnum


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message an adversary wants on the wire: to ``recipient`` (None = everyone)."""

    data: bytes
    recipient: int | None = None


class Adversary:
    """Base class: rewrites what the peer it controls sends (default: honest).

    ``machine`` is that peer's machine (``SecAggMachine`` or ``RobustMachine``) and ``kind``
    the message kind in that protocol's enum.
    """

    def outgoing(self, machine: Any, kind: Any, data: bytes) -> list[Outgoing]:
        """Return what actually goes on the wire instead of the broadcast ``data``."""
        return [Outgoing(data)]

    def outgoing_private(
        self, machine: Any, kind: Any, data: bytes, recipient: int
    ) -> list[Outgoing]:
        """Return what goes on the wire instead of ``data`` sent to ``recipient`` alone."""
        return [Outgoing(data, recipient)]

    def injected(self, machine: Any) -> list[Outgoing]:
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
        chunks = machine._chunks
        record.message = (
            MaskedHeader.decode(envelope.payload, chunks=machine.params.n)
            if chunks is not None
            else MaskedInput.decode(
                envelope.payload, vector_length=vector_length, ring_bits=machine.params.ring_bits
            )
        )
        record.digest = digest
    if kind is MessageKind.CHUNK_SUM and machine._chunks is not None:
        message, _ = machine._chunks.sums[machine.me]
        machine._chunks.sums[machine.me] = (message, digest)


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
class ProtocolOutcome(Generic[ParamsT, MachineT]):
    """Every peer's outcome, plus the inputs and machines (for assertions)."""

    params: ParamsT
    inputs: dict[int, RingVector]
    peers: dict[int, PeerOutcome]
    machines: dict[int, MachineT]
    delivered: int
    vector_length: int

    def results(self) -> dict[int, AggregateReady]:
        """Peers that produced an aggregate."""
        return {p: o.result for p, o in self.peers.items() if o.result is not None}

    def aborts(self) -> dict[int, RoundAborted]:
        """Peers that aborted."""
        return {p: o.aborted for p, o in self.peers.items() if o.aborted is not None}

    def expected_total(self, included: Iterable[int]) -> RingVector:
        """Plaintext ring sum of the inputs of ``included`` (in the round's ring)."""
        total = np.zeros(self.vector_length, dtype=np.uint64)
        for peer in included:
            np.add(total, self.inputs[peer], out=total)
        reduce_mod(total, getattr(self.params, "ring_bits", 64))
        return total


#: The outcome of a ``secagg`` round (:func:`run_secagg_round`).
RoundOutcome = ProtocolOutcome[SecAggParams, SecAggMachine]


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
    ring_bits: int = 64,
    reduce_scatter: bool = False,
    writable: bool = False,
) -> RoundOutcome:
    """Run one round of ``secagg`` among ``n`` in-process machines and return every outcome.

    ``inject`` lists (recipient, bytes) delivered before anything else (e.g. replays).
    ``writable`` delivers every message as a writable ``memoryview`` of its own buffer, as
    the MQTT transport delivers a message of several frames (``peers.chunking``).
    """
    roster_obj, keys = roster if roster is not None else make_roster(n)
    params = SecAggParams(
        federation=federation,
        round_id=round_id,
        roster=roster_obj,
        threshold=threshold if threshold is not None else default_threshold(n),
        vector_length=vector_length,
        ring_bits=ring_bits,
        reduce_scatter=reduce_scatter,
    )
    data_in = dict(inputs) if inputs is not None else random_inputs(n, vector_length, seed)
    root = DeterministicRandomSource(f"harness/{seed}/{round_id}")
    machines = {
        p: SecAggMachine(params, me=p, signing_key=keys[p], randomness=root.fork(f"peer/{p}"))
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
        writable=writable,
    )


def run_network(
    params: ParamsT,
    machines: Mapping[int, MachineT],
    kinds: type[enum.IntEnum],
    inputs: Mapping[int, RingVector],
    *,
    seed: int,
    dropouts: Sequence[Dropout],
    faults: Sequence[Fault],
    adversaries: Mapping[int, Adversary] | None,
    reorder: bool,
    inject: Sequence[tuple[int, bytes]],
    vector_length: int,
    writable: bool = False,
) -> ProtocolOutcome[ParamsT, MachineT]:
    """Wire ``machines`` together, run the round from ``inputs``, collect every outcome."""
    network = Network(
        machines=machines,
        kinds=kinds,
        dropouts={d.peer: d.phase for d in dropouts},
        faults=list(faults),
        adversaries=dict(adversaries or {}),
        rng=random.Random(seed),  # noqa: S311 - schedules faults, not a secret
        reorder=reorder,
        writable=writable,
    )
    network.start(inputs, inject)
    return ProtocolOutcome(
        params=params,
        inputs=dict(inputs),
        peers=network.outcomes,
        machines=dict(machines),
        delivered=network.delivered,
        vector_length=vector_length,
    )


@dataclass(slots=True)
class Network:
    """N machines of one protocol wired together in memory (see the module docstring)."""

    machines: Mapping[int, Machine]
    kinds: type[enum.IntEnum]
    dropouts: dict[int, enum.IntEnum]
    faults: list[Fault]
    adversaries: dict[int, Adversary]
    rng: random.Random
    reorder: bool
    writable: bool = False
    queue: deque[tuple[int | None, int, bytes]] = field(default_factory=deque)
    delayed: list[tuple[int | None, int, bytes]] = field(default_factory=list)
    held_back: set[tuple[int | None, int, bytes]] = field(default_factory=set)
    outcomes: dict[int, PeerOutcome] = field(default_factory=dict)
    delivered: int = 0

    def __post_init__(self) -> None:
        self.outcomes = {p: PeerOutcome(p) for p in self.machines}

    def start(self, inputs: Mapping[int, RingVector], inject: Sequence[tuple[int, bytes]]) -> None:
        """Deliver ``inject`` first, begin every machine with its input, run to the end."""
        for recipient, data in inject:
            self.queue.append((None, recipient, data))
        for peer, machine in self.machines.items():
            adversary = self.adversaries.get(peer)
            if adversary is not None:
                for extra in adversary.injected(machine):
                    self.post(peer, extra.data, extra.recipient)
        for peer, machine in self.machines.items():
            crash_at = self.dropouts.get(peer)
            if crash_at is not None and crash_at.value == 0:
                self.outcomes[peer].crashed = True
                continue
            self.handle(peer, machine.begin(inputs[peer]))
        self.run()

    def _kind(self, data: bytes) -> enum.IntEnum | None:
        try:
            return self.kinds(parse_envelope(data, max_payload=len(data)).kind)
        except (DecodeError, ValueError):  # injected or tampered bytes may not parse
            return None

    def alive(self, peer: int) -> bool:
        """Whether ``peer`` has not crashed."""
        return not self.outcomes[peer].crashed

    def handle(self, peer: int, effects: list[Effect]) -> None:
        """Record ``peer``'s effects and put its messages on the wire (through its adversary)."""
        outcome = self.outcomes[peer]
        for effect in effects:
            if outcome.crashed:
                return
            outcome.effects.append(effect)
            if isinstance(effect, PhaseStarted):
                crash_at = self.dropouts.get(peer)
                if crash_at is not None and effect.phase.value >= crash_at.value:
                    outcome.crashed = True
            elif isinstance(effect, Broadcast):
                adversary = self.adversaries.get(peer)
                sends = (
                    adversary.outgoing(self.machines[peer], self._kind(effect.data), effect.data)
                    if adversary is not None
                    else [Outgoing(effect.data)]
                )
                for out in sends:
                    self.post(peer, out.data, out.recipient)
            elif isinstance(effect, Send):
                adversary = self.adversaries.get(peer)
                sends = (
                    adversary.outgoing_private(
                        self.machines[peer], self._kind(effect.data), effect.data, effect.recipient
                    )
                    if adversary is not None
                    else [Outgoing(effect.data, effect.recipient)]
                )
                for out in sends:
                    self.post(peer, out.data, out.recipient)
            elif isinstance(effect, AggregateReady):
                outcome.result = effect
            elif isinstance(effect, RoundAborted):
                outcome.aborted = effect

    def post(self, sender: int, data: bytes, recipient: int | None) -> None:
        """Queue ``data`` for ``recipient`` (None: every peer but the sender)."""
        targets = (
            [recipient] if recipient is not None else [p for p in self.machines if p != sender]
        )
        for target in targets:
            self.queue.append((sender, target, data))

    def _apply_faults(self, sender: int | None, recipient: int, data: bytes) -> list[bytes] | None:
        """Return the copies to deliver now, or None if the message was dropped or delayed."""
        kind = self._kind(data)
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
        """Deliver until quiet; then fire every live machine's deadline, release delays, repeat."""
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
                    message = memoryview(bytearray(copy)) if self.writable else copy
                    self.handle(recipient, self.machines[recipient].receive(sender, message))
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
