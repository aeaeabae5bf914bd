"""A stand-in protocol whose machine emits ``Send`` effects, to test the runtime's plumbing.

Not a protocol test double of the broker: the transports and brokers stay real (memory or
Mosquitto). ``RelayMachine`` is a sans-I/O machine like ``secagg``'s or ``robust``'s: on
``begin`` each peer sends its encoded update privately to the next peer of the roster ring
(``Send``) and broadcasts a greeting (``Broadcast``); its result is the update received
from the previous peer. A private message from any other peer, or one that is not whole,
makes it abort, so a round that succeeds shows that each private message reached its
recipient, intact, and no other site. ``RelayNode`` plugs it in through
``PeerNode._plan_round``, the hook a real protocol uses.
"""

from __future__ import annotations

import enum
from typing import Any

import numpy as np

from mpc_agg.crypto import sha256
from mpc_agg.fixedpoint import FixedPointCodec
from mpc_agg.ring import RingVector
from peers.node import PeerNode, RoundPlan
from protocols.common import (
    AggregateReady,
    Broadcast,
    Effect,
    PhaseStarted,
    RoundAborted,
    Send,
)

PROTOCOL = "relay/1"
PRIVATE, GREETING = b"P", b"B"


class RelayPhase(enum.IntEnum):
    """The relay's phases (the names PeerNode treats as untimed are the usual ones)."""

    IDLE = 0
    EXCHANGE = 1
    DONE = 2
    ABORTED = 3


class RelayMachine:
    """Send the update to the next peer, broadcast a greeting, output the previous update."""

    def __init__(self, *, n: int, me: int, vector_length: int) -> None:
        self.n, self.me, self.vector_length = n, me, vector_length
        self.previous = (me - 1) % n
        self.received: list[tuple[int | None, bytes]] = []  # (claimed sender, kind)
        self.greeted: set[int] = set()
        self.total: RingVector | None = None
        self.finished = False

    def begin(self, update: RingVector) -> list[Effect]:
        phase = RelayPhase.EXCHANGE
        return [
            PhaseStarted(phase),
            Send((self.me + 1) % self.n, PRIVATE + update.tobytes(), phase),
            Broadcast(GREETING + bytes([self.me]), phase),
        ]

    def receive(self, sender: int | None, data: bytes | memoryview) -> list[Effect]:
        data = bytes(data)
        self.received.append((sender, data[:1]))
        if self.finished:
            return []
        kind, body = data[:1], data[1:]
        if kind == PRIVATE:
            if sender != self.previous or len(body) != 8 * self.vector_length:
                return self._abort(f"unexpected private message from {sender}")
            self.total = np.frombuffer(body, dtype=np.uint64).copy()
        elif kind == GREETING and sender is not None and body == bytes([sender]):
            self.greeted.add(sender)
        if self.total is None or len(self.greeted) < self.n - 1:
            return []
        self.finished = True
        everyone = tuple(range(self.n))
        return [
            PhaseStarted(RelayPhase.DONE),
            AggregateReady(
                total=self.total,
                included=everyone,
                dropped={},
                excluded={},
                result_digest=sha256(self.total.tobytes()),
                confirmed_by=everyone,
                disagreeing=(),
            ),
        ]

    def deadline(self, phase: Any) -> list[Effect]:
        if self.finished:
            return []
        return self._abort(f"no private message from {self.previous} before the deadline")

    def _abort(self, reason: str) -> list[Effect]:
        self.finished = True
        return [PhaseStarted(RelayPhase.ABORTED), RoundAborted(reason, RelayPhase.EXCHANGE)]


class RelayNode(PeerNode):
    """A PeerNode that runs the relay; ``byte_budget`` overrides the plan's default."""

    byte_budget: int | None = None
    machines: list[RelayMachine]

    def _plan_round(
        self, round_id: int, vector_length: int, codec: FixedPointCodec, context: str = ""
    ) -> RoundPlan:
        machine = RelayMachine(n=len(self.roster), me=self.me, vector_length=vector_length)
        if not hasattr(self, "machines"):
            self.machines = []
        self.machines.append(machine)
        budget = self.byte_budget
        return RoundPlan(
            protocol=PROTOCOL,
            machine=machine,
            threshold=1,
            vector_length=vector_length,
            byte_budget=8 * vector_length + 1024 if budget is None else budget,
            codec=codec,
        )
