"""Hardening over the real Mosquitto at 127.0.0.1:1883: presence, no_local, bounds, logs."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable

import aiomqtt
import numpy as np
import pytest

from peers.chunking import split
from peers.mqtt import MqttTransport
from peers.node import AggregateResult, PeerNode
from peers.transport import Transport, federation_filter, message_topic, presence_topic
from protocols.harness import make_roster
from tests.runtime.nodes import FRAC_BITS, on_grid, run_round, running_nodes

HOST, PORT = "127.0.0.1", 1883


def _federation() -> str:
    return f"fed-{os.urandom(4).hex()}"


def _transport(federation: str, site: str) -> MqttTransport:
    return MqttTransport(
        host=HOST,
        port=PORT,
        client_id=f"{federation}-{site}-{os.urandom(3).hex()}",
        presence_topic=presence_topic(federation, site),
        chunk_size=64 * 1024,
        max_message_bytes=1 << 24,
        reconnect_timeout=5.0,
        backoff=(0.05, 0.2),
    )


def _frame(data: bytes) -> bytes:
    return next(split(data, chunk_size=1000, message_id=os.urandom(16)))


def _node(federation: str, me: int, n: int) -> PeerNode:
    roster, keys = make_roster(n)
    return PeerNode(
        federation=federation,
        roster=roster,
        me=me,
        signing_key=keys[me],
        transport=_transport(federation, f"site-{me}"),
        deadlines=lambda _phase: 10.0,
        frac_bits=FRAC_BITS,
    )


async def _presence_until(node: PeerNode, done: Callable[[], bool]) -> None:
    """Wait (bounded) until the node's presence satisfies ``done``."""
    while not done():
        node._presence_changed.clear()
        await asyncio.wait_for(node._presence_changed.wait(), 5)


async def _clear_retained(federation: str, sites: list[str]) -> None:
    async with aiomqtt.Client(HOST, PORT, identifier=f"{federation}-cleanup") as raw:
        for site in sites:
            await raw.publish(presence_topic(federation, site), b"", qos=1, retain=True)


# --------------------------------------------------------------------------- presence


@pytest.mark.asyncio
async def test_hardening_a_stale_retained_online_does_not_end_the_join_wait() -> None:
    federation = _federation()
    async with aiomqtt.Client(HOST, PORT, identifier=f"{federation}-ghost") as ghost:
        # left by dead processes whose Will the broker has not published (yet)
        await ghost.publish(
            presence_topic(federation, "site-1"), b"online 0123abcd", qos=1, retain=True
        )
        await ghost.publish(presence_topic(federation, "site-2"), b"online", qos=1, retain=True)
    try:
        async with _node(federation, 0, 3) as node:
            await _presence_until(node, lambda: len(node.presence) == 2)
            assert await node.wait_for_peers(0.3) == set()
            assert node.presence == {"site-1": b"online", "site-2": b"online"}
            async with _node(federation, 1, 3), _node(federation, 2, 3):
                assert await node.wait_for_peers(5) == {"site-1", "site-2"}
    finally:
        await _clear_retained(federation, ["site-0", "site-1", "site-2"])


@pytest.mark.asyncio
async def test_hardening_sites_online_before_us_announce_themselves_again() -> None:
    federation = _federation()
    try:
        # entered in order: site-0 subscribes after the others announced themselves
        async with (
            _node(federation, 1, 3),
            _node(federation, 2, 3),
            _node(federation, 0, 3) as late,
        ):
            loop = asyncio.get_running_loop()
            started = loop.time()
            assert await late.wait_for_peers(5) == {"site-1", "site-2"}
            assert loop.time() - started < 4
    finally:
        await _clear_retained(federation, ["site-0", "site-1", "site-2"])


@pytest.mark.asyncio
async def test_hardening_a_late_will_of_an_earlier_session_does_not_mark_a_live_site_offline() -> (
    None
):
    federation = _federation()
    try:
        async with _node(federation, 0, 3) as node, _node(federation, 1, 3):
            await _presence_until(node, lambda: node.presence.get("site-1") == b"online")
            async with aiomqtt.Client(HOST, PORT, identifier=f"{federation}-broker") as will:
                # the Will of site-1's previous process, published after the new one joined
                await will.publish(
                    presence_topic(federation, "site-1"), b"offline 0123abcd", qos=1, retain=True
                )
                await will.publish(presence_topic(federation, "site-2"), b"offline", qos=1)
            await _presence_until(node, lambda: "site-2" in node.presence)
            assert node.presence["site-1"] == b"online"
            assert "site-1" in await node.wait_for_peers(0)
    finally:
        await _clear_retained(federation, ["site-0", "site-1"])


# --------------------------------------------------------------------------- no_local


async def _deliveries_until(transport: MqttTransport, marker: str) -> list[str]:
    topics: list[str] = []
    async for delivery in transport.messages():
        topics.append(delivery.topic)
        if delivery.topic == marker:
            break
    return topics


@pytest.mark.asyncio
@pytest.mark.parametrize(("version", "echoed"), [("5", False), ("3.1.1", True)])
async def test_hardening_mqtt5_does_not_send_a_site_its_own_messages(
    version: str, echoed: bool
) -> None:
    federation = _federation()
    own = message_topic(federation, 1, "site-0")
    marker = message_topic(federation, 1, "site-1")
    transport = MqttTransport(
        host=HOST, port=PORT, client_id=f"{federation}-site-0", mqtt_version=version
    )
    async with transport, aiomqtt.Client(HOST, PORT, identifier=f"{federation}-raw") as raw:
        await transport.subscribe(federation_filter(federation))
        await transport.publish(own, b"mine")
        await raw.publish(marker, _frame(b"theirs"), qos=1)
        topics = await asyncio.wait_for(_deliveries_until(transport, marker), 5)
    assert topics == ([own, marker] if echoed else [marker])


def _mqtt(federation: str) -> Callable[[int], Transport]:
    return lambda i: _transport(federation, f"site-{i}")


@pytest.mark.asyncio
async def test_hardening_a_round_over_mqtt5_receives_only_the_other_sites_bytes() -> None:
    federation = _federation()
    rng = np.random.default_rng(5)
    updates = [on_grid(rng, (20_000,)) for _ in range(3)]
    async with running_nodes(3, _mqtt(federation), federation=federation, deadline=10.0) as nodes:
        results = await run_round(nodes, updates)
        transports = [node._transport for node in nodes]
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(updates))
    sent = [t.bytes_out for t in transports if isinstance(t, MqttTransport)]
    for i, transport in enumerate(transports):
        assert isinstance(transport, MqttTransport)
        others = sum(sent) - sent[i]
        # the other sites' frames, plus a few presence messages; none of our own
        assert others <= transport.bytes_in <= others + 1000
    await _clear_retained(federation, ["site-0", "site-1", "site-2"])


# --------------------------------------------------------------------------- bounds, logs


@pytest.mark.asyncio
async def test_hardening_frames_queued_for_a_stalled_reader_are_bounded() -> None:
    federation = _federation()
    topic = message_topic(federation, 1, "site-1")
    marker = message_topic(federation, 1, "site-2")
    transport = MqttTransport(
        host=HOST, port=PORT, client_id=f"{federation}-site-0", max_queued_frames=8
    )
    async with transport, aiomqtt.Client(HOST, PORT, identifier=f"{federation}-raw") as raw:
        await transport.subscribe(federation_filter(federation))
        for k in range(50):  # nobody reads messages() meanwhile
            await raw.publish(topic, _frame(b"%d" % k), qos=1)
        client = transport._client
        assert client is not None
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 5
        while client._queue.qsize() < 8 and loop.time() < give_up:
            await asyncio.sleep(0.01)
        reading = asyncio.ensure_future(_deliveries_until(transport, marker))
        await asyncio.sleep(0)
        await raw.publish(marker, _frame(b"marker"), qos=1)
        topics = await asyncio.wait_for(reading, 5)
    assert topics.count(topic) == 8  # the 42 frames beyond the bound were dropped


@pytest.mark.asyncio
async def test_hardening_sender_chosen_topics_cannot_forge_log_lines(
    caplog: pytest.LogCaptureFixture,
) -> None:
    federation = _federation()
    forged = "x\u20282099-01-01 INFO peers.node: all sites verified\u202e"
    bad_topic = f"mpcagg/v1/{federation}/1/{forged}"
    marker = message_topic(federation, 1, "site-1")
    caplog.set_level(logging.DEBUG, logger="peers.mqtt")
    transport = MqttTransport(host=HOST, port=PORT, client_id=f"{federation}-site-0")
    async with transport, aiomqtt.Client(HOST, PORT, identifier=f"{federation}-raw") as raw:
        await transport.subscribe(federation_filter(federation))
        for _ in range(10):
            await raw.publish(bad_topic, b"not a frame", qos=1)
        await raw.publish(marker, _frame(b"marker"), qos=1)
        await asyncio.wait_for(_deliveries_until(transport, marker), 5)
    lines = [r.getMessage() for r in caplog.records if "malformed frame" in r.getMessage()]
    assert len(lines) == 10
    for line in lines:
        assert line.isprintable()
        assert len(line.splitlines()) == 1
        assert "x\\u2028" in line
    warnings = [r for r in caplog.records if "malformed" in r.getMessage() and r.levelno >= 30]
    assert len(warnings) == 4  # frames 1, 2, 4 and 8: a flood is logged sparsely
