"""Review: MqttTransport against a hostile publisher and a flaky reconnection (real Mosquitto)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from peers.chunking import split
from peers.mqtt import MqttTransport, _with_queued
from peers.transport import TransportError, federation_filter, message_topic

HOST, PORT = "127.0.0.1", 1883


def _transport(federation: str, name: str) -> MqttTransport:
    return MqttTransport(
        host=HOST,
        port=PORT,
        client_id=f"{federation}-{name}-{os.urandom(3).hex()}",
        chunk_size=1000,
        max_message_bytes=1 << 20,
        reconnect_timeout=5.0,
        backoff=(0.05, 0.2),
    )


@pytest.mark.asyncio
async def test_review_one_site_on_many_round_topics_cannot_evict_anothers_message() -> None:
    federation = f"fed-{os.urandom(3).hex()}"
    message = os.urandom(1500)
    frames = list(split(message, chunk_size=1000, message_id=os.urandom(16)))
    async with (
        _transport(federation, "receiver") as receiver,
        aiomqtt.Client(HOST, PORT, identifier=f"{federation}-raw") as raw,
    ):
        await receiver.subscribe(federation_filter(federation))
        got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def read() -> None:
            async for delivery in receiver.messages():
                await got.put((delivery.topic, bytes(delivery.payload)))

        reader = asyncio.ensure_future(read())
        try:
            honest = message_topic(federation, 1, "site-0")
            await raw.publish(honest, frames[0], qos=1)
            # site-1 may publish under its own name only (ACL) — but on any round topic
            for r in range(1, 100):
                junk = next(split(bytes(2000), chunk_size=1000, message_id=os.urandom(16)))
                await raw.publish(message_topic(federation, r, "site-1"), junk, qos=1)
            await raw.publish(honest, frames[1], qos=1)
            topic, payload = await asyncio.wait_for(got.get(), 3)
        finally:
            reader.cancel()
    assert (topic, payload) == (honest, message)


@pytest.mark.asyncio
async def test_review_a_connection_lost_while_resubscribing_is_retried(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    federation = f"fed-{os.urandom(3).hex()}"
    async with (
        _transport(federation, "site-0") as transport,
        aiomqtt.Client(HOST, PORT, identifier=f"{federation}-raw") as raw,
    ):
        await transport.subscribe(federation_filter(federation))
        original = aiomqtt.Client.subscribe
        calls = 0

        async def flaky(self: aiomqtt.Client, *args: Any, **kwargs: Any) -> Any:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise aiomqtt.MqttError("connection lost while subscribing")
            return await original(self, *args, **kwargs)

        monkeypatch.setattr(aiomqtt.Client, "subscribe", flaky)
        # the connection drops; the reconnection itself is interrupted once
        await asyncio.wait_for(transport._reconnect(transport._generation), 5)
        assert calls == 2

        async def first() -> bytes:
            async for delivery in transport.messages():
                return bytes(delivery.payload)
            raise AssertionError("no message")

        reading = asyncio.ensure_future(first())
        await asyncio.sleep(0.1)
        payload = next(split(b"hello", chunk_size=1000, message_id=os.urandom(16)))
        await raw.publish(message_topic(federation, 1, "site-1"), payload, qos=1)
        assert await asyncio.wait_for(reading, 3) == b"hello"


class _QuickTimeouts(MqttTransport):
    """aiomqtt waits 10 s for a PUBACK that never comes; 0.3 s keeps the test short."""

    def _new_client(self) -> aiomqtt.Client:
        client = super()._new_client()
        client.timeout = 0.3
        return client


@pytest.fixture
def small_packet_broker(tmp_path: Path) -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_packet_size 5000\n"
    )
    broker = subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        yield port
    finally:
        broker.kill()
        broker.wait(5)


@pytest.mark.asyncio
async def test_review_a_publish_the_broker_always_refuses_fails_instead_of_looping(
    small_packet_broker: int,
) -> None:
    # chunk_size above the broker's max_packet_size: the broker drops the connection on
    # every frame, the reconnection succeeds at once, and the frame is sent again
    transport = _QuickTimeouts(
        host=HOST,
        port=small_packet_broker,
        client_id=f"big-{os.urandom(3).hex()}",
        chunk_size=10_000,
        reconnect_timeout=1.0,
        backoff=(0.05, 0.1),
    )
    async with transport:
        with pytest.raises(TransportError):
            await asyncio.wait_for(transport.publish("mpcagg/v1/f/1/site-0", bytes(20_000)), 4)


@pytest.mark.asyncio
async def test_the_drain_takes_every_queued_frame_once_in_order_after_the_awaited_one() -> None:
    """peers.mqtt._with_queued: aiomqtt's queue is emptied each turn, FIFO, nothing twice."""

    class _Messages:
        def __init__(self, queue: asyncio.Queue[Any]) -> None:
            self.queue = queue

        def __len__(self) -> int:
            return self.queue.qsize()

    class _Client:
        def __init__(self) -> None:
            self._queue: asyncio.Queue[Any] = asyncio.Queue()
            self.messages = _Messages(self._queue)

    client = _Client()
    for k in range(1, 6):
        client._queue.put_nowait(k)
    taken: list[Any] = list(_with_queued(client, 0))  # type: ignore[arg-type]
    assert taken == [0, 1, 2, 3, 4, 5]
    assert client._queue.empty()
    # a client whose queue is not an asyncio.Queue (another aiomqtt): the awaited frame only
    odd = _Client()
    odd._queue = [7]  # type: ignore[assignment]
    alone: list[Any] = list(_with_queued(odd, 0))  # type: ignore[arg-type]
    assert alone == [0]
