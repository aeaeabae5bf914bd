"""A fault-injecting TCP proxy between one site and the broker, on loopback (test support).

``async with FaultProxy(upstream_port) as proxy:`` listens on ``proxy.port``; every
connection to it is piped to the broker, with faults the test changes while traffic
flows:

- ``delay`` and ``jitter`` (seconds, per chunk, order kept), ``bandwidth`` (bytes/s);
- ``partition("up" | "down" | "both")`` / ``heal()``: hold the data of one or both
  directions (a one-way partition: the site talks but hears nothing, or the reverse). As
  with TCP across a real partition, nothing is lost: held data arrives after ``heal()``,
  unless an end gave up on the connection first (MQTT keepalive, a deadline);
  ``stall()`` is ``partition("both")``;
- ``reset()``: abort every open connection (the site sees a connection reset).

Each fault applies to chunks as they pass; counters say how much went through.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Literal, Self

from peers.mqtt import MqttTransport
from peers.transport import presence_topic

Direction = Literal["up", "down", "both"]


class FaultProxy:
    """TCP proxy 127.0.0.1:port → 127.0.0.1:upstream_port with adjustable faults."""

    def __init__(self, upstream_port: int, *, seed: int = 0) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.delay = 0.0
        self.jitter = 0.0
        self.bandwidth: float | None = None
        self._random = random.Random(seed)  # fault timing, not a secret
        self._open = {"up": asyncio.Event(), "down": asyncio.Event()}
        for event in self._open.values():
            event.set()
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.bytes = {"up": 0, "down": 0}
        self.connections = 0
        self.resets = 0

    async def __aenter__(self) -> Self:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._server is not None:
            self._server.close()
        self.reset(count=False)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # ------------------------------------------------------------------ faults

    def partition(self, direction: Direction = "both") -> None:
        """Hold data site→broker (``up``), broker→site (``down``) or both."""
        for side in ("up", "down") if direction == "both" else (direction,):
            self._open[side].clear()

    def stall(self) -> None:
        """Hold every chunk both ways until :meth:`heal` (the connections stay open)."""
        self.partition("both")

    def heal(self) -> None:
        """End every partition and stall: held data flows again, in order."""
        for event in self._open.values():
            event.set()

    def reset(self, *, count: bool = True) -> None:
        """Abort every open connection, both sides (as a TCP reset would)."""
        if count and self._writers:
            self.resets += 1
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    # ------------------------------------------------------------------ piping

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            writer.transport.abort()
            return
        self._writers |= {writer, up_writer}
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, "up")),
            asyncio.create_task(self._pump(up_reader, writer, "down")),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.transport.abort()
            self._tasks.difference_update(pumps)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str
    ) -> None:
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError, OSError):
            gate = self._open[direction]
            while chunk := await reader.read(64 * 1024):
                await gate.wait()
                wait = self.delay + (self._random.uniform(0, self.jitter) if self.jitter else 0)
                if self.bandwidth:
                    wait += len(chunk) / self.bandwidth
                if wait > 0:
                    await asyncio.sleep(wait)
                await gate.wait()
                self.bytes[direction] += len(chunk)
                writer.write(chunk)
                await writer.drain()


def transports_behind(
    proxies: Sequence[FaultProxy], federation: str, *, reconnect_timeout: float = 15.0
) -> Callable[[int], MqttTransport]:
    """Site ``i``'s MQTT transport, connecting through ``proxies[i]``."""
    tag = os.urandom(3).hex()
    return lambda i: MqttTransport(
        host="127.0.0.1",
        port=proxies[i].port,
        client_id=f"{federation}-{i}-{tag}",
        presence_topic=presence_topic(federation, f"site-{i}"),
        chunk_size=64 * 1024,
        reconnect_timeout=reconnect_timeout,
        backoff=(0.05, 0.5),
    )
