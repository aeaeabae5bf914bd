"""Private messages over the real Mosquitto at 127.0.0.1:1883: inbox, chunking, bytes.

This broker has no ACL (anonymous, everything allowed): what a site receives here is
what its subscriptions select. The ACL that stops a site from *choosing* to read another
site's inbox is tested with the generated broker set-up in ``test_broker_setup.py``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import numpy as np
import pytest

from peers.mqtt import MqttTransport
from peers.node import AggregateResult
from peers.transport import (
    Delivery,
    Transport,
    federation_filter,
    inbox_filter,
    message_topic,
    presence_topic,
)
from tests.runtime.nodes import on_grid, run_round, running_nodes
from tests.runtime.relay import PRIVATE, RelayNode

HOST, PORT = "127.0.0.1", 1883
CHUNK = 64 * 1024


def _federation() -> str:
    return f"fed-{os.urandom(4).hex()}"


@asynccontextmanager
async def _sites(federation: str, n: int) -> AsyncIterator[list[MqttTransport]]:
    async with AsyncExitStack() as stack:
        sites = []
        for k in range(n):
            transport = MqttTransport(
                host=HOST,
                port=PORT,
                client_id=f"{federation}-site-{k}-{os.urandom(3).hex()}",
                chunk_size=CHUNK,
                max_message_bytes=1 << 24,
                reconnect_timeout=5.0,
            )
            await stack.enter_async_context(transport)
            await transport.subscribe(
                federation_filter(federation), inbox_filter(federation, f"site-{k}")
            )
            sites.append(transport)
        yield sites


async def _until(transport: MqttTransport, marker: str) -> list[Delivery]:
    received: list[Delivery] = []
    async for delivery in transport.messages():
        received.append(delivery)
        if delivery.topic == marker:
            return received
    raise AssertionError("the transport closed before the marker arrived")


@pytest.mark.asyncio
async def test_a_chunked_private_message_reaches_its_recipient_only() -> None:
    federation = _federation()
    share = os.urandom(5 * CHUNK + 123)  # six frames
    private = message_topic(federation, 3, "site-0", recipient="site-2")
    marker = message_topic(federation, 3, "site-0")
    async with _sites(federation, 3) as sites:
        readers = [asyncio.ensure_future(_until(site, marker)) for site in sites[1:]]
        await asyncio.sleep(0)
        await sites[0].publish(private, share)
        await sites[0].publish(marker, b"broadcast after the share")
        at_1, at_2 = await asyncio.wait_for(asyncio.gather(*readers), 10)
        out = sites[0].bytes_out
    assert [(d.topic, d.payload) for d in at_2] == [
        (private, share),
        (marker, b"broadcast after the share"),
    ]
    assert [d.topic for d in at_1] == [marker]  # the share's frames never reached site-1
    assert out > len(share)  # frames with headers, counted by the sender


@pytest.mark.asyncio
async def test_private_messages_interleaved_with_broadcasts_of_the_sender_reassemble() -> None:
    federation = _federation()
    messages = {
        message_topic(federation, 1, "site-1", recipient="site-0"): os.urandom(3 * CHUNK),
        message_topic(federation, 1, "site-1"): os.urandom(2 * CHUNK + 1),
        message_topic(federation, 2, "site-1", recipient="site-0"): os.urandom(CHUNK - 1),
    }
    marker = message_topic(federation, 2, "site-1")
    async with _sites(federation, 2) as (receiver, sender):
        reader = asyncio.ensure_future(_until(receiver, marker))
        await asyncio.sleep(0)
        # concurrently: frames of the three messages are interleaved on the wire
        await asyncio.gather(*(sender.publish(t, p) for t, p in messages.items()))
        await sender.publish(marker, b"done")
        received = await asyncio.wait_for(reader, 10)
    assert {d.topic: d.payload for d in received[:-1]} == messages
    assert len(received) == 4


@pytest.mark.asyncio
async def test_peer_nodes_relay_private_messages_over_mosquitto() -> None:
    """Each site's Send reaches the next site only (chunked: 400 kB in 64 KiB frames)."""
    federation = _federation()
    tag = os.urandom(3).hex()

    def transport(i: int) -> Transport:
        return MqttTransport(
            host=HOST,
            port=PORT,
            client_id=f"{federation}-site-{i}-{tag}",
            presence_topic=presence_topic(federation, f"site-{i}"),
            chunk_size=CHUNK,
        )

    rng = np.random.default_rng(3)
    updates = [on_grid(rng, (50_000,)) for _ in range(3)]
    async with running_nodes(
        3, transport, federation=federation, deadline=10.0, node_class=RelayNode
    ) as nodes:
        results = await run_round(nodes, updates)
        received = [node.machines[0].received for node in nodes if isinstance(node, RelayNode)]
    for k, result in enumerate(results):
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, updates[(k - 1) % 3])
        assert [s for s, kind in received[k] if kind == PRIVATE] == [(k - 1) % 3]
        assert result.bytes_out > 8 * 50_000  # the private message's frames
        assert result.bytes_in > 8 * 50_000
