"""PeerNode with a machine that emits ``Send``: private topics, routing, budgets, accounting.

The relay machine (tests/runtime/relay.py) sends each site's update privately to the next
site of the roster ring; the in-memory broker routes by subscription like Mosquitto.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mpc_agg.errors import ProtocolMisuseError
from peers.audit import AuditLog
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import (
    OVER_LIMIT,
    AggregateResult,
    PeerNode,
    RoundAbortedError,
    RoundMachine,
    _Round,
)
from peers.transport import (
    Delivery,
    Transport,
    federation_filter,
    inbox_filter,
    message_topic,
    parse_topic,
)
from protocols.common import Send
from protocols.harness import make_roster
from tests.runtime.nodes import FRAC_BITS, on_grid, run_round, running_nodes
from tests.runtime.relay import GREETING, PRIVATE, PROTOCOL, RelayNode, RelayPhase


def _memory(broker: MemoryBroker) -> Callable[[int], Transport]:
    return lambda i: MemoryTransport(broker, name=f"site-{i}")


def _relays(nodes: list[PeerNode]) -> list[RelayNode]:
    assert all(isinstance(node, RelayNode) for node in nodes)
    return [node for node in nodes if isinstance(node, RelayNode)]


@pytest.mark.asyncio
async def test_each_private_message_reaches_its_recipient_only() -> None:
    rng = np.random.default_rng(7)
    updates = [on_grid(rng, (500,)) for _ in range(4)]
    broker = MemoryBroker()
    async with (
        running_nodes(4, _memory(broker), node_class=RelayNode) as nodes,
        MemoryTransport(broker, name="listener") as listener,
    ):
        await listener.subscribe(federation_filter("fed-test"))
        results = await run_round(nodes, updates)
    for k, result in enumerate(results):
        assert isinstance(result, AggregateResult), result
        assert result.protocol == PROTOCOL
        assert np.array_equal(result.total, updates[(k - 1) % 4])  # the previous site's
        machine = _relays(nodes)[k].machines[0]
        privates = [sender for sender, kind in machine.received if kind == PRIVATE]
        assert privates == [(k - 1) % 4]  # exactly one, from its sender, to nobody else
        assert all(sender is not None for sender, _ in machine.received)
        assert sorted(s for s, kind in machine.received if kind == GREETING and s is not None) == [
            i for i in range(4) if i != k
        ]
    heard = [parse_topic(d.topic) for d in _drain(listener)]
    assert len(heard) == 4  # the greetings
    assert all(p is not None and p.recipient is None for p in heard)  # broadcasts only


@pytest.mark.asyncio
async def test_bytes_in_and_out_include_private_messages() -> None:
    updates = [np.full(1000, k / 8) for k in range(3)]
    async with running_nodes(3, _memory(MemoryBroker()), node_class=RelayNode) as nodes:
        results = await run_round(nodes, updates)
    private = 1 + 8 * 1000  # kind byte + the encoded update
    greeting = 2
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert result.bytes_out == private + greeting
        assert result.bytes_in == private + 2 * greeting


@pytest.mark.asyncio
async def test_private_messages_count_against_the_plans_byte_budget() -> None:
    updates = [np.full(1000, k / 8) for k in range(3)]
    async with running_nodes(
        3, _memory(MemoryBroker()), node_class=RelayNode, deadline=0.3
    ) as nodes:
        for node in _relays(nodes):
            node.byte_budget = 8 * 1000  # one byte short of a private message
        results = await run_round(nodes, updates)
    for result in results:
        assert isinstance(result, RoundAbortedError), result
        assert "no private message from" in result.reason
        assert f"{OVER_LIMIT} ×1" in result.reason


@pytest.mark.asyncio
async def test_a_private_message_for_another_site_is_ignored_even_if_delivered() -> None:
    broker = MemoryBroker()
    async with (
        running_nodes(3, _memory(broker), node_class=RelayNode) as nodes,
        MemoryTransport(broker, name="intruder") as intruder,
    ):
        # a broker that (wrongly) delivers everything to site-1
        await nodes[1]._transport.subscribe("mpcagg/v1/fed-test/#")
        to_2 = message_topic("fed-test", 1, "site-0", recipient="site-2")
        to_1 = message_topic("fed-test", 1, "site-0", recipient="site-1")
        await intruder.publish(to_2, b"for site-2")
        await intruder.publish(to_1, b"for site-1")
        await asyncio.sleep(0.01)
        # held for round 1 (not started yet), each site only its own
        assert [data for _, data in nodes[1]._early[(1, 0)].messages] == [b"for site-1"]
        assert [data for _, data in nodes[2]._early[(1, 0)].messages] == [b"for site-2"]
        assert nodes[1]._bytes_in == len(b"for site-1")


@pytest.mark.asyncio
async def test_a_node_subscribes_to_the_federation_and_its_own_inbox() -> None:
    broker = MemoryBroker()
    async with running_nodes(2, _memory(broker)) as nodes:
        transport = nodes[1]._transport
        assert isinstance(transport, MemoryTransport)
        assert transport._filters == [
            federation_filter("fed-test"),
            inbox_filter("fed-test", "site-1"),
        ]


@pytest.mark.parametrize("recipient", [0, 3, -1])
@pytest.mark.asyncio
async def test_a_send_to_itself_or_outside_the_roster_is_a_misuse(
    tmp_path: Path, recipient: int
) -> None:
    roster, keys = make_roster(3)
    node = PeerNode(
        federation="fed-test",
        roster=roster,
        me=0,
        signing_key=keys[0],
        transport=MemoryTransport(MemoryBroker()),
        deadlines=lambda _phase: 1.0,
        frac_bits=FRAC_BITS,
        audit=AuditLog(tmp_path / "audit.jsonl", signing_key=keys[0]),
    )
    async with node:
        plan = node._plan_round(1, 4, node.codec)
        state = _state(node, plan.machine)
        with pytest.raises(ProtocolMisuseError, match="recipients are the other roster sites"):
            await node._perform(state, Send(recipient, b"x", RelayPhase.EXCHANGE), *_books())


@pytest.mark.asyncio
async def test_perform_publishes_a_send_on_the_recipients_private_topic() -> None:
    broker = MemoryBroker()
    async with (
        running_nodes(3, _memory(broker)) as nodes,
        MemoryTransport(broker, name="listener") as listener,
    ):
        await listener.subscribe("mpcagg/v1/fed-test/#")
        node = nodes[0]
        state = _state(node, node._plan_round(4, 4, node.codec).machine, round_id=4)
        await node._perform(state, Send(2, b"share", RelayPhase.EXCHANGE), *_books())
        await asyncio.sleep(0.01)
        assert [data for _, data in nodes[2]._early[(4, 0)].messages] == [b"share"]
        assert (4, 0) not in nodes[1]._early
    assert [(d.topic, d.payload) for d in _drain(listener)] == [
        ("mpcagg/v1/fed-test/4/site-0/site-2", b"share")
    ]


def _drain(transport: MemoryTransport) -> list[Delivery]:
    """What the in-memory broker has queued for ``transport`` so far."""
    deliveries = []
    while not transport._queue.empty():
        item = transport._queue.get_nowait()
        if item is not None:
            deliveries.append(item)
    return deliveries


def _state(node: PeerNode, machine: RoundMachine, *, round_id: int = 1) -> _Round:
    """A round of ``node`` to drive ``_perform`` with directly."""
    return _Round(round_id, machine, byte_limit=1 << 20)


def _books() -> tuple[Counter[str], dict[str, float], dict[str, float | str]]:
    """``_perform``'s ignored counter, timings and phase clock."""
    return Counter(), {}, {"at": 0.0, "phase": "IDLE"}


@pytest.mark.asyncio
async def test_the_audit_log_records_the_plans_protocol(tmp_path: Path) -> None:
    roster, keys = make_roster(3)
    logs = [tmp_path / f"site-{k}.jsonl" for k in range(3)]
    broker = MemoryBroker()
    nodes = [
        RelayNode(
            federation="fed-test",
            roster=roster,
            me=k,
            signing_key=keys[k],
            transport=MemoryTransport(broker),
            deadlines=lambda _phase: 5.0,
            frac_bits=FRAC_BITS,
            audit=AuditLog(logs[k], signing_key=keys[k]),
        )
        for k in range(3)
    ]
    for node in nodes:
        await node.__aenter__()
    try:
        results = await run_round(nodes, [np.full(5, 0.25)] * 3)
    finally:
        for node in nodes:
            await node.__aexit__(None, None, None)
    assert all(isinstance(r, AggregateResult) for r in results), results
    record = json.loads(logs[1].read_text().splitlines()[-1])["record"]
    assert record["protocol"] == PROTOCOL
    assert record["parameters"]["threshold"] == 1
    assert record["parameters"]["vector_length"] == 5
