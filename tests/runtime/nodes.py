"""Helpers: build a set of PeerNodes over one transport factory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager

import numpy as np
from numpy.typing import NDArray

from mpc_agg.dp import DpSettings
from mpc_agg.randomness import RandomSource
from peers.audit import AuditLog
from peers.background import BackgroundPeer, EventLoopThread
from peers.memory import MemoryBroker, MemoryFaults, MemoryTransport
from peers.node import AggregateResult, PeerNode
from peers.transport import Transport
from protocols.common import Roster
from protocols.harness import make_roster

FRAC_BITS = 20


def on_grid(rng: np.random.Generator, shape: tuple[int, ...]) -> NDArray[np.float64]:
    """Floats that are exact multiples of 2^-FRAC_BITS (so encoding is exact)."""
    scaled = np.round(rng.uniform(-0.25, 0.25, shape) * 2**FRAC_BITS)
    return np.asarray(scaled / 2**FRAC_BITS, dtype=np.float64)


@asynccontextmanager
async def running_nodes(
    n: int,
    transport: Callable[[int], Transport],
    *,
    threshold: int | None = None,
    deadline: float = 5.0,
    federation: str = "fed-test",
    roster: Roster | None = None,
    node_class: type[PeerNode] = PeerNode,
    protocol: str = "secagg",
    max_norm: float | None = None,
    privacy: DpSettings | None = None,
    audit: Callable[[int], AuditLog | None] = lambda _i: None,
    randomness: Callable[[int], RandomSource | None] = lambda _i: None,
    reduce_scatter: bool = False,
) -> AsyncIterator[list[PeerNode]]:
    """Enter ``n`` nodes (site-0 … site-{n-1}) of ``node_class`` and yield them."""
    default_roster, keys = make_roster(n)
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                node_class(
                    federation=federation,
                    roster=roster or default_roster,
                    me=i,
                    signing_key=keys[i],
                    transport=transport(i),
                    deadlines=lambda _phase: deadline,
                    threshold=threshold,
                    frac_bits=FRAC_BITS,
                    protocol=protocol,
                    max_norm=max_norm,
                    privacy=privacy,
                    audit=audit(i),
                    randomness=randomness(i),
                    reduce_scatter=reduce_scatter,
                )
            )
            for i in range(n)
        ]
        yield nodes


async def run_round(
    nodes: Sequence[PeerNode], updates: Sequence[NDArray[np.float64]]
) -> list[AggregateResult | BaseException]:
    """Every node aggregates its update concurrently; exceptions are returned, not raised."""
    return await asyncio.gather(
        *(node.aggregate(u) for node, u in zip(nodes, updates, strict=True)),
        return_exceptions=True,
    )


@contextmanager
def background_peers(
    n: int,
    *,
    threshold: int | None = None,
    deadline: float = 5.0,
    faults: MemoryFaults | None = None,
    federation: str = "fed-torch",
) -> Iterator[list[BackgroundPeer]]:
    """``n`` BackgroundPeers on one shared loop thread and one in-memory broker."""
    roster, keys = make_roster(n)
    loop = EventLoopThread()
    holder: dict[str, MemoryBroker] = {}

    async def make_broker() -> MemoryBroker:
        return MemoryBroker(faults)

    holder["broker"] = loop.run(make_broker())

    def factory(i: int) -> Callable[[], PeerNode]:
        return lambda: PeerNode(
            federation=federation,
            roster=roster,
            me=i,
            signing_key=keys[i],
            transport=MemoryTransport(holder["broker"], name=f"site-{i}"),
            deadlines=lambda _phase: deadline,
            threshold=threshold,
            frac_bits=FRAC_BITS,
        )

    try:
        with ExitStack() as stack:
            yield [stack.enter_context(BackgroundPeer(factory(i), loop=loop)) for i in range(n)]
    finally:
        loop.close()
