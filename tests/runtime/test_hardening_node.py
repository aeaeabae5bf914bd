"""Hardening: per-site flood bounds, bounded ``ignored`` reasons, no leaked connection."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from mpc_agg.crypto import SigningKey
from mpc_agg.envelope import BROADCAST, EnvelopeContext, seal_envelope
from mpc_agg.randomness import DeterministicRandomSource
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import OVER_LIMIT, AggregateResult, PeerNode
from peers.transport import Transport, TransportError, message_topic, presence_topic
from protocols.harness import make_roster
from protocols.secagg.machine import protocol_id
from tests.runtime.nodes import FRAC_BITS, on_grid, run_round, running_nodes


class _Flooding(MemoryTransport):
    """A site that publishes each of its messages (or only the large ones) many times."""

    def __init__(self, broker: MemoryBroker, *, copies: int, min_size: int = 0) -> None:
        super().__init__(broker, name="flooder")
        self.copies = copies
        self.min_size = min_size

    async def publish(self, topic: str, payload: bytes) -> None:
        copies = self.copies if len(payload) >= self.min_size else 1
        for _ in range(copies):
            await super().publish(topic, payload)


def _with_flooder(broker: MemoryBroker, flooder: MemoryTransport) -> Callable[[int], Transport]:
    return lambda i: flooder if i == 1 else MemoryTransport(broker, name=f"site-{i}")


def _others(ignored: dict[str, int]) -> int:
    return sum(count for reason, count in ignored.items() if reason != OVER_LIMIT)


@pytest.mark.asyncio
async def test_hardening_a_site_flooding_messages_is_cut_at_the_per_round_count() -> None:
    rng = np.random.default_rng(1)
    updates = [on_grid(rng, (16,)) for _ in range(3)]
    broker = MemoryBroker()
    flooder = _Flooding(broker, copies=40)
    async with running_nodes(3, _with_flooder(broker, flooder), threshold=2, deadline=1.0) as nodes:
        results = await run_round(nodes, updates)
    for result in (results[0], results[2]):
        assert isinstance(result, AggregateResult), result
        assert {"site-0", "site-2"} <= set(result.included)
        included = [updates[int(name.removeprefix("site-"))] for name in result.included]
        assert np.array_equal(result.total, sum(included))
        # 40 copies of ADVERTISE_KEYS: 24 reach the machine, the rest are dropped unread
        assert result.ignored[OVER_LIMIT] >= 16
        assert _others(dict(result.ignored)) <= 24


@pytest.mark.asyncio
async def test_hardening_a_site_resending_its_masked_input_is_cut_at_the_byte_budget() -> None:
    rng = np.random.default_rng(2)
    d = 100_000  # masked input ≈ 400 kB (Z_2^32); budget: two of them and 1 MiB
    updates = [on_grid(rng, (d,)) for _ in range(3)]
    broker = MemoryBroker()
    flooder = _Flooding(broker, copies=15, min_size=4 * d)
    async with running_nodes(3, _with_flooder(broker, flooder), threshold=2, deadline=5.0) as nodes:
        results = await run_round(nodes, updates)
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert result.included == ("site-0", "site-1", "site-2")
        assert np.array_equal(result.total, sum(updates))
    for result in (results[0], results[2]):
        assert isinstance(result, AggregateResult)
        # 20 messages from site-1 stay under the count limit; the bytes do not
        assert result.ignored[OVER_LIMIT] >= 10
        assert result.ignored["duplicate MASKED_INPUT"] <= 3


@pytest.mark.asyncio
async def test_hardening_large_messages_held_for_a_future_round_are_bounded_in_bytes() -> None:
    rng = np.random.default_rng(3)
    updates = [on_grid(rng, (16,)) for _ in range(3)]
    broker = MemoryBroker()
    async with (
        running_nodes(3, lambda i: MemoryTransport(broker, name=f"site-{i}")) as nodes,
        MemoryTransport(broker, name="intruder") as intruder,
    ):
        for node in nodes:
            node.max_vector_length = 1000  # early budget: 16 kB + 1 MiB
        for _ in range(12):  # within the early count limit, 2.4 MB in all
            await intruder.publish(message_topic("fed-test", 1, "site-1"), bytes(200_000))
        # a presence message after the flood: once it is seen, the flood has been routed
        nodes[0]._presence_changed.clear()
        await intruder.publish(presence_topic("fed-test", "site-2"), b"online")
        await asyncio.wait_for(nodes[0]._presence_changed.wait(), 2)
        held = sum(len(data) for held in nodes[0]._early.values() for _, data in held.messages)
        assert held <= 16_000 + (1 << 20)
        results = await run_round(nodes, updates)
    for result in (results[0], results[2]):
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(updates))
        assert result.ignored[OVER_LIMIT] == 7  # 5 × 200 kB held, 7 dropped


@pytest.mark.asyncio
async def test_hardening_distinct_ignored_reasons_are_capped() -> None:
    rng = np.random.default_rng(4)
    updates = [on_grid(rng, (16,)) for _ in range(3)]
    broker = MemoryBroker()
    stranger = SigningKey.generate(DeterministicRandomSource("stranger"))
    async with (
        running_nodes(3, lambda i: MemoryTransport(broker, name=f"site-{i}")) as nodes,
        MemoryTransport(broker, name="intruder") as intruder,
    ):
        context = EnvelopeContext(
            protocol=protocol_id(32, 16),  # the round's ring and length (SPEC §2.1)
            federation="fed-test",
            roster_digest=nodes[0].roster.digest,
            round_id=1,
        )
        # each message names another unknown sender id: one distinct reason each
        for k in range(24):
            junk = seal_envelope(
                context,
                phase=1,
                kind=1,
                sender=100 + k,
                recipient=BROADCAST,
                payload=b"x",
                signing_key=stranger,
            )
            await intruder.publish(message_topic("fed-test", 1, f"site-{1 + k % 2}"), junk)
        results = await run_round(nodes, updates)
    result = results[0]
    assert isinstance(result, AggregateResult), result
    assert np.array_equal(result.total, sum(updates))
    assert len(result.ignored) <= 17
    assert sum(result.ignored.values()) == 24
    assert result.ignored["other"] >= 8


class _SubscribeFails(MemoryTransport):
    async def subscribe(self, topic_filter: str, *more: str) -> None:
        raise TransportError("subscription refused")


@pytest.mark.asyncio
async def test_hardening_a_failed_subscribe_closes_the_connection() -> None:
    roster, keys = make_roster(2)
    transport = _SubscribeFails(MemoryBroker())
    node = PeerNode(
        federation="fed-test",
        roster=roster,
        me=0,
        signing_key=keys[0],
        transport=transport,
        deadlines=lambda _phase: 1.0,
        frac_bits=FRAC_BITS,
    )
    with pytest.raises(TransportError, match="subscription refused"):
        async with node:
            pass
    with pytest.raises(TransportError, match="closed transport"):
        await transport.publish(message_topic("fed-test", 1, "site-0"), b"x")
