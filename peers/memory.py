"""In-memory transport with fault injection, for runtime tests without a broker.

A :class:`MemoryBroker` fans every published message out to the transports whose
subscriptions match, applying :class:`MemoryFaults`: drop, duplicate, delay (which also
reorders), and tamper (one flipped bit). Faults are drawn from a seeded RNG, so a failing
run can be replayed.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import TracebackType
from typing import Self

from peers.transport import Delivery, TransportError, topic_matches


@dataclass(frozen=True, slots=True, kw_only=True)
class MemoryFaults:
    """Per-delivery fault probabilities; ``delay`` is a (min, max) range in seconds."""

    drop: float = 0.0
    duplicate: float = 0.0
    tamper: float = 0.0
    delay: tuple[float, float] = (0.0, 0.0)
    seed: int = 0


class MemoryBroker:
    """Routes messages between :class:`MemoryTransport` instances in one event loop."""

    def __init__(self, faults: MemoryFaults | None = None) -> None:
        self.faults = faults or MemoryFaults()
        self._rng = random.Random(self.faults.seed)  # noqa: S311 - fault schedule, not a secret
        self._clients: list[MemoryTransport] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0

    def connect(self, client: MemoryTransport) -> None:
        """Attach a client."""
        self._clients.append(client)

    def disconnect(self, client: MemoryTransport) -> None:
        """Detach a client (it receives nothing more)."""
        if client in self._clients:
            self._clients.remove(client)

    def route(self, topic: str, payload: bytes) -> None:
        """Deliver to every matching subscription, through the fault model."""
        for client in list(self._clients):
            if not client.wants(topic):
                continue
            if self._rng.random() < self.faults.drop:
                continue
            copies = 2 if self._rng.random() < self.faults.duplicate else 1
            for _ in range(copies):
                data = payload
                if payload and self._rng.random() < self.faults.tamper:
                    flipped = bytearray(payload)
                    flipped[self._rng.randrange(len(payload))] ^= 1 << self._rng.randrange(8)
                    data = bytes(flipped)
                low, high = self.faults.delay
                wait = self._rng.uniform(low, high) if high > 0 else 0.0
                if wait > 0:
                    task = asyncio.get_running_loop().create_task(
                        self._later(client, Delivery(topic, data), wait)
                    )
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                else:
                    client.enqueue(Delivery(topic, data))
                    self.delivered += 1

    async def _later(self, client: MemoryTransport, delivery: Delivery, wait: float) -> None:
        await asyncio.sleep(wait)
        client.enqueue(delivery)
        self.delivered += 1


class MemoryTransport:
    """A :class:`~peers.transport.Transport` attached to a :class:`MemoryBroker`."""

    def __init__(self, broker: MemoryBroker, *, name: str = "client") -> None:
        self.name = name
        self._broker = broker
        self._filters: list[str] = []
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue()
        self._connected = False
        self.bytes_out = 0

    async def __aenter__(self) -> Self:
        self._broker.connect(self)
        self._connected = True
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._connected = False
        self._broker.disconnect(self)
        self._queue.put_nowait(None)

    def wants(self, topic: str) -> bool:
        """True when a subscription matches ``topic``."""
        return any(topic_matches(f, topic) for f in self._filters)

    def enqueue(self, delivery: Delivery) -> None:
        """Called by the broker."""
        if self._connected:
            self._queue.put_nowait(delivery)

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish to the in-memory broker."""
        if not self._connected:
            raise TransportError(f"{self.name}: publish on a closed transport")
        self.bytes_out += len(payload)
        self._broker.route(topic, payload)

    async def subscribe(self, topic_filter: str, *more: str) -> None:
        """Add subscriptions."""
        self._filters.extend((topic_filter, *more))

    async def messages(self) -> AsyncIterator[Delivery]:
        """Deliveries until the transport closes."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item
