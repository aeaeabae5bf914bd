"""MqttTransport._publish_frames when every frame in flight fails (the broker went away)."""

from __future__ import annotations

import asyncio
import gc
from typing import Any

import aiomqtt
import pytest

from peers.mqtt import MqttTransport


class _GoneBroker:
    """A client whose publishes all fail, each after a turn of the event loop."""

    def __init__(self) -> None:
        self.published = 0

    async def publish(self, topic: str, frame: bytes, qos: int) -> None:
        self.published += 1
        await asyncio.sleep(0)
        raise aiomqtt.MqttCodeError(4, "The client is not currently connected.")


@pytest.mark.asyncio
@pytest.mark.parametrize("frames", [3, 20])  # within one window, and several windows
async def test_every_failed_frame_is_retrieved_and_the_first_failure_raised(frames: int) -> None:
    # Before, only the first failure was taken; asyncio then printed "Task exception was
    # never retrieved" with a traceback for each other frame in flight.
    reports: list[dict[str, Any]] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: reports.append(context))
    transport = MqttTransport(host="127.0.0.1", port=1, client_id="t", chunk_size=1024, window=8)
    client = _GoneBroker()
    with pytest.raises(aiomqtt.MqttCodeError, match="not currently connected"):
        await transport._publish_frames(client, "t/x", b"x" * (1000 * frames), b"m" * 16)  # type: ignore[arg-type]
    assert client.published >= min(frames, 8)
    gc.collect()
    await asyncio.sleep(0)
    assert [r.get("message") for r in reports] == []
