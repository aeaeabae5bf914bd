"""Review: PeerNode and the topic scheme against hostile or failing inputs (memory transport)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest

from mpc_agg.errors import ProtocolMisuseError
from peers.audit import AuditLog
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import AggregateResult, PeerNode
from peers.transport import (
    Delivery,
    Transport,
    TransportError,
    check_segment,
    message_topic,
    parse_topic,
    presence_topic,
)
from protocols.harness import make_roster
from tests.runtime.nodes import FRAC_BITS, on_grid, run_round, running_nodes


def _memory(broker: MemoryBroker) -> Callable[[int], Transport]:
    return lambda i: MemoryTransport(broker, name=f"site-{i}")


# --------------------------------------------------------------------------- topics


def test_review_parse_topic_never_raises_on_unicode_digits() -> None:
    # "²".isdigit() is True but int("²") raises; "٣" (Arabic-Indic 3) parses as round 3
    assert parse_topic("mpcagg/v1/fed/²/site-0") is None
    assert parse_topic("mpcagg/v1/fed/٣/site-0") is None
    assert parse_topic("mpcagg/v1/fed/3/site-0") is not None


def test_review_segments_reject_a_trailing_newline() -> None:
    with pytest.raises(ValueError):
        check_segment("fed\n", "federation id")
    assert parse_topic("mpcagg/v1/fed/3/site-0\n") is None


@pytest.mark.asyncio
async def test_review_a_unicode_digit_round_topic_does_not_kill_the_reader() -> None:
    broker = MemoryBroker()
    rng = np.random.default_rng(41)
    updates = [on_grid(rng, (8,)) for _ in range(3)]
    async with (
        running_nodes(3, _memory(broker), threshold=2, deadline=2.0) as nodes,
        MemoryTransport(broker, name="intruder") as intruder,
    ):
        await intruder.publish("mpcagg/v1/fed-test/²/site-1", b"x")
        await asyncio.sleep(0.01)
        results = await asyncio.wait_for(run_round(nodes, updates), 4)
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(updates))


# --------------------------------------------------------------------------- early buffer


def _held(node: PeerNode) -> int:
    return sum(len(v) for v in node._early.values())


@pytest.mark.asyncio
async def test_review_early_buffer_is_bounded_across_many_future_rounds() -> None:
    broker = MemoryBroker()
    async with (
        running_nodes(3, _memory(broker), threshold=2) as nodes,
        MemoryTransport(broker, name="intruder") as intruder,
    ):
        # one (ACL-confined) site floods messages for thousands of distinct future rounds
        for r in range(2, 3002):
            for _ in range(3):
                await intruder.publish(message_topic("fed-test", r, "site-2"), b"junk" * 16)
        # a topic whose site is not in the roster is never held
        await intruder.publish(message_topic("fed-test", 1, "mallory"), b"junk")
        await asyncio.sleep(0.01)
        node = nodes[0]
        assert len(node._early) <= 2
        assert _held(node) <= 6


@pytest.mark.asyncio
async def test_review_one_site_flooding_future_rounds_cannot_push_out_anothers_messages() -> None:
    broker = MemoryBroker()
    rng = np.random.default_rng(42)
    updates = [on_grid(rng, (8,)) for _ in range(4)]
    async with (
        running_nodes(4, _memory(broker), threshold=3, deadline=1.0) as nodes,
        MemoryTransport(broker, name="intruder") as intruder,
    ):
        # site-3 never takes part; it (or anyone publishing on its topics) floods round 5,
        # which the others are about to run, and the rounds below it
        for _ in range(100):
            await intruder.publish(message_topic("fed-test", 5, "site-3"), b"junk")
        for r in range(1, 5):
            for _ in range(50):
                await intruder.publish(message_topic("fed-test", r, "site-3"), b"junk")
        early = [
            asyncio.ensure_future(n.aggregate(u, round_id=5))
            for n, u in zip(nodes[:2], updates[:2], strict=True)
        ]
        await asyncio.sleep(0.05)  # site-0 and site-1 already published round 5 messages
        late = await asyncio.wait_for(nodes[2].aggregate(updates[2], round_id=5), 4)
        results = [*(await asyncio.gather(*early)), late]
    for result in results:
        assert result.included == ("site-0", "site-1", "site-2")
        assert np.array_equal(result.total, sum(updates[:3]))


# --------------------------------------------------------------------------- concurrency


def _node(
    transport: Transport, *, me: int = 0, n: int = 3, join: float = 0.0, audit: Path | None = None
) -> PeerNode:
    roster, keys = make_roster(n)
    return PeerNode(
        federation="fed-test",
        roster=roster,
        me=me,
        signing_key=keys[me],
        transport=transport,
        deadlines=lambda _phase: 5.0,
        frac_bits=FRAC_BITS,
        join_timeout=join,
        audit=AuditLog(audit, signing_key=keys[me]) if audit is not None else None,
    )


@pytest.mark.asyncio
async def test_review_a_second_round_during_the_join_wait_is_refused() -> None:
    async with _node(MemoryTransport(MemoryBroker()), join=0.5) as node:
        first = asyncio.ensure_future(node.aggregate(np.zeros(4)))
        await asyncio.sleep(0.01)  # the first call waits for the other sites to come online
        with pytest.raises(ProtocolMisuseError, match="still running"):
            await asyncio.wait_for(node.aggregate(np.zeros(4)), 0.2)
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


# --------------------------------------------------------------------------- failures


class _DeadReader(MemoryTransport):
    """Its message stream fails at once (e.g. the broker stayed unreachable)."""

    def messages(self) -> AsyncIterator[Delivery]:
        return self

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        raise TransportError("MQTT broker unreachable for 60s")


@pytest.mark.asyncio
async def test_review_a_dead_reader_fails_the_next_round_at_once() -> None:
    async with _node(_DeadReader(MemoryBroker())) as node:
        await asyncio.sleep(0.01)  # the reader has died before any round started
        with pytest.raises(TransportError, match="unreachable"):
            await asyncio.wait_for(node.aggregate(np.zeros(4)), 2)


class _FailingPublish(MemoryTransport):
    """Publishing fails (the broker went away mid-round)."""

    async def publish(self, topic: str, payload: bytes) -> None:
        raise TransportError("transport closed while publishing")


@pytest.mark.asyncio
async def test_review_a_round_that_fails_on_the_transport_is_audited(tmp_path: Path) -> None:
    log = tmp_path / "site-0.audit.jsonl"
    async with _node(_FailingPublish(MemoryBroker()), audit=log) as node:
        with pytest.raises(TransportError):
            await node.aggregate(np.zeros(4))
    records = [json.loads(line)["record"] for line in log.read_text().splitlines()]
    assert [(r["round"], r["outcome"]) for r in records] == [(1, "started"), (1, "failed")]
    record = records[1]
    assert "transport closed while publishing" in record["reason"]


# --------------------------------------------------------------------------- presence


@pytest.mark.asyncio
async def test_review_presence_is_kept_for_roster_sites_only() -> None:
    broker = MemoryBroker()
    async with (
        running_nodes(3, _memory(broker)) as nodes,
        MemoryTransport(broker, name="intruder") as intruder,
    ):
        for k in range(500):
            await intruder.publish(presence_topic("fed-test", f"ghost-{k}"), b"online" * 100)
        await intruder.publish(presence_topic("fed-test", "site-1"), b"online")
        await asyncio.sleep(0.01)
        assert set(nodes[0].presence) == {"site-1"}


class _DyingReader(MemoryTransport):
    """Its message stream fails after a while (the broker went away during the join wait)."""

    def messages(self) -> AsyncIterator[Delivery]:
        return self

    def __aiter__(self) -> AsyncIterator[Delivery]:
        return self

    async def __anext__(self) -> Delivery:
        await asyncio.sleep(0.2)
        raise TransportError("cannot connect to the MQTT broker within 60s")


@pytest.mark.asyncio
async def test_a_transport_that_dies_during_the_join_wait_ends_it_at_once() -> None:
    # Before, the wait for the other sites ran to its own timeout (here 30 s) after the
    # transport had given up; now the round fails as soon as the reader does.
    loop = asyncio.get_running_loop()
    async with _node(_DyingReader(MemoryBroker()), join=30.0) as node:
        started = loop.time()
        with pytest.raises(TransportError, match="cannot connect"):
            await asyncio.wait_for(node.aggregate(np.zeros(4)), 10)
        assert loop.time() - started < 5
