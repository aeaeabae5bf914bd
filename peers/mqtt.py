"""MQTT 5 transport on aiomqtt (QoS 1, TLS, per-site credentials, presence, reconnection).

Messages larger than ``chunk_size`` travel as bounded frames (:mod:`peers.chunking`) on the
same topic and are reassembled and digest-checked here, so the node above sees whole
messages; private messages (six-level topics, :func:`peers.transport.message_topic` with a
recipient) are chunked and reassembled exactly like broadcasts, counted against the same
per-sender allowance of partial messages.

Presence: the site registers an MQTT Will that the broker publishes (retained
``offline <session>``) if the connection dies, and publishes a retained ``online <session>``
once its subscriptions are in place; ``session`` is random and fresh per transport (process).
A retained ``online`` may have been left by a process that died without its Will being
published yet, so it proves nothing: a transport answers every *live* ``online`` of a
session it has not seen by announcing itself again, and a peer waiting for the others
counts only announcements published while it was subscribed (``Delivery.retained`` false).

On a lost connection the transport reconnects with exponential backoff, re-subscribes and
carries on; publishing waits for the reconnection. After ``reconnect_timeout`` seconds
without a connection (or of publishes that keep failing) it raises :class:`TransportError`.

With MQTT 5 the subscriptions are ``no_local``: the broker does not send a site its own
publications back (the node ignores them anyway; this saves their bytes and reassembly).
aiomqtt's queue of incoming frames is bounded (``max_queued_frames``, by default as many
frames as the reassembler may hold in partial messages); frames beyond it are dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import TracebackType
from typing import Final, Self

import aiomqtt
from paho.mqtt.subscribeoptions import SubscribeOptions

from peers.chunking import ChunkError, Reassembler, split
from peers.transport import (
    OFFLINE,
    ONLINE,
    BrokerRefusedError,
    Delivery,
    TransportError,
    parse_topic,
    printable,
    split_presence,
)

log = logging.getLogger(__name__)

_PROTOCOLS = {"5": aiomqtt.ProtocolVersion.V5, "3.1.1": aiomqtt.ProtocolVersion.V311}
#: Sessions of other processes remembered as answered (each is answered once).
_ANSWERED_SESSIONS = 1024


#: CONNACK codes that refuse a login for good (retrying the same login cannot succeed):
#: MQTT 3.1.1 return codes 1, 2, 4, 5 and their MQTT 5 reason codes (unsupported protocol
#: version, client identifier not valid, bad user name or password, not authorized,
#: banned, bad authentication method). "Server unavailable" and "busy" are retried.
_REFUSED_V3: Final = frozenset({1, 2, 4, 5})
_REFUSED_V5: Final = frozenset({0x84, 0x85, 0x86, 0x87, 0x8A, 0x8C})


def _permanent_refusal(exc: aiomqtt.MqttError) -> str | None:
    """The broker's reason when ``exc`` is a CONNACK that refuses the login for good."""
    if not isinstance(exc, aiomqtt.MqttCodeError):
        return None
    rc = exc.rc
    if isinstance(rc, int) and not isinstance(rc, bool):
        return str(exc) if rc in _REFUSED_V3 else None
    value = getattr(rc, "value", None)
    return str(exc) if isinstance(value, int) and value in _REFUSED_V5 else None


def _no_delay(client: aiomqtt.Client) -> None:
    """Turn off Nagle's algorithm on the client's socket (paho leaves it on).

    A protocol phase is a burst of small messages (keys, shares, digests, PUBACKs) that each
    wait for the previous phase: with Nagle a small segment waits for the peer's delayed
    ACK, ≈ 40 ms a phase on Linux.
    """
    sock = client._client.socket()  # paho's socket (an SSLSocket under TLS)
    if isinstance(sock, socket.socket) and sock.family in (socket.AF_INET, socket.AF_INET6):
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


#: Pending publishes above which aiomqtt logs a warning (its default is 10).
_PENDING_PUBLISHES_WARNING = 4096
#: Frames taken from aiomqtt's queue before the drain yields to the event loop once.
_DRAIN_TURN = 64


class MqttTransport:
    """A :class:`~peers.transport.Transport` over an MQTT 5 (or 3.1.1) broker."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        client_id: str,
        username: str | None = None,
        password: str | None = None,
        ca_file: Path | None = None,
        presence_topic: str | None = None,
        chunk_size: int = 1 << 20,
        max_message_bytes: int = 1 << 30,
        max_pending_total: int = 64,
        reconnect_timeout: float = 60.0,
        backoff: tuple[float, float] = (0.1, 5.0),
        window: int = 8,
        mqtt_version: str = "5",
        max_queued_frames: int | None = None,
        pad_frames: bool = False,
        verify_digest: bool = True,
    ) -> None:
        self.host = host
        self.port = port
        self.pad_frames = pad_frames
        self.client_id = client_id
        self._username = username
        self._password = password
        self._ca_file = ca_file
        self._presence = presence_topic
        self.chunk_size = chunk_size
        self.reconnect_timeout = reconnect_timeout
        self._backoff = backoff
        self.window = window
        if mqtt_version not in _PROTOCOLS:
            raise ValueError(f"mqtt_version must be one of {', '.join(_PROTOCOLS)}")
        self._protocol = _PROTOCOLS[mqtt_version]
        self._client: aiomqtt.Client | None = None
        self._filters: list[str] = []
        # verify_digest=False: the consumer authenticates every message itself (PeerNode:
        # envelope signatures), so reassembly skips its digest pass (peers/chunking.py).
        self._reassembler = Reassembler(
            max_message_bytes=max_message_bytes,
            max_pending_total=max_pending_total,
            verify_digest=verify_digest,
        )
        # Frames queued between the socket and messages(): no more than the reassembler
        # may hold as partial messages anyway, so a large round always fits.
        frames_per_message = -(-max_message_bytes // chunk_size)
        self.max_queued_frames = (
            max_queued_frames
            if max_queued_frames is not None
            else max(1024, max_pending_total * frames_per_message)
        )
        self.session = os.urandom(8).hex().encode()
        self._answered: set[tuple[str, bytes]] = set()
        self._answers: set[asyncio.Future[None]] = set()
        self.dropped_frames = 0
        self._lock = asyncio.Lock()
        self._generation = 0
        self._closing = False
        self._connected = asyncio.Event()
        self.bytes_out = 0
        self.bytes_in = 0
        self.reconnects = 0

    def __repr__(self) -> str:  # no password
        return f"MqttTransport({self.client_id}@{self.host}:{self.port})"

    @property
    def closing(self) -> bool:
        """True once the context manager is exiting."""
        return self._closing

    # ------------------------------------------------------------------ connection

    def _new_client(self) -> aiomqtt.Client:
        tls_context = None
        if self._ca_file is not None:
            tls_context = ssl.create_default_context(cafile=str(self._ca_file))
        will = (
            aiomqtt.Will(self._presence, self._presence_payload(OFFLINE), qos=1, retain=True)
            if self._presence is not None
            else None
        )
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            identifier=self.client_id,
            protocol=self._protocol,
            will=will,
            tls_context=tls_context,
            keepalive=10,
            timeout=10.0,
            max_queued_incoming_messages=self.max_queued_frames,
        )
        # A round publishes its messages concurrently, each with up to ``window`` frames in
        # flight (a reduce-scatter round: one chunk per peer): aiomqtt's warning above 10
        # pending publishes would fire on every large round and say nothing useful.
        client.pending_calls_threshold = _PENDING_PUBLISHES_WARNING
        return client

    def _presence_payload(self, status: bytes) -> bytes:
        return status + b" " + self.session

    async def _subscribe(self, client: aiomqtt.Client, topic_filter: str) -> None:
        """QoS 1; with MQTT 5 also ``no_local`` (our own publications are not sent back)."""
        if self._protocol == aiomqtt.ProtocolVersion.V5:
            options = SubscribeOptions(qos=1, noLocal=True)
            await client.subscribe(topic_filter, options=options)
        else:
            await client.subscribe(topic_filter, qos=1)

    async def _connect(self) -> None:
        """Connect (with backoff), re-subscribe and announce presence."""
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.reconnect_timeout
        delay = self._backoff[0]
        last: Exception | None = None
        while not self._closing:
            client = self._new_client()
            try:
                await client.__aenter__()
            except aiomqtt.MqttError as exc:
                refusal = _permanent_refusal(exc)
                if refusal is not None:
                    raise BrokerRefusedError(
                        f"the MQTT broker at {self.host}:{self.port} refused the login of "
                        f"{self._username or 'an anonymous client'}: {refusal} (check the "
                        "site's password_file against the broker's password file and ACL; "
                        "a revoked site is refused)"
                    ) from None
                last = exc
                if loop.time() + delay > give_up:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            _no_delay(client)
            try:
                for topic_filter in self._filters:
                    await self._subscribe(client, topic_filter)
                if self._filters:
                    await self._announce(client)
            except aiomqtt.MqttError as exc:  # lost again at once: another attempt
                last = exc
                with contextlib.suppress(aiomqtt.MqttError):
                    await client.__aexit__(None, None, None)
                if loop.time() + delay > give_up:
                    break
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._backoff[1])
                continue
            self._client = client
            self._generation += 1
            self._connected.set()
            return
        raise TransportError(
            f"cannot connect to the MQTT broker at {self.host}:{self.port} as "
            f"{self._username or 'anonymous'} within {self.reconnect_timeout:.0f}s: {last}"
        )

    async def _reconnect(self, generation: int) -> None:
        async with self._lock:
            if generation != self._generation:
                return  # someone else already reconnected
            await self._drop_client()
            self.reconnects += 1
            log.warning("MQTT connection lost; reconnecting (attempt %d)", self.reconnects)
            await self._connect()

    async def _drop_client(self) -> None:
        self._connected.clear()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.__aexit__(None, None, None)

    async def __aenter__(self) -> Self:
        async with self._lock:
            await self._connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closing = True
        for task in list(self._answers):
            task.cancel()
        client = self._client
        if client is not None and self._presence is not None:
            with contextlib.suppress(aiomqtt.MqttError):
                await client.publish(
                    self._presence, self._presence_payload(OFFLINE), qos=1, retain=True
                )
        await self._drop_client()

    # ------------------------------------------------------------------ Transport

    async def publish(self, topic: str, payload: bytes) -> None:
        """Publish ``payload`` as frames of at most ``chunk_size`` bytes (QoS 1).

        Raises :class:`TransportError` when publishing keeps failing for more than
        ``reconnect_timeout`` seconds even though reconnecting works (e.g. a frame larger
        than the broker's ``max_packet_size``: the broker drops the connection each time).
        """
        message_id = os.urandom(16)
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        while True:
            client, generation = self._client, self._generation
            if client is None:
                if self.closing:
                    raise TransportError("publish on a closed MQTT transport")
                await self._wait_connected()
                continue
            try:
                await self._publish_frames(client, topic, payload, message_id)
                return
            except aiomqtt.MqttError as exc:
                if self.closing:
                    raise TransportError("transport closed while publishing") from None
                now = loop.time()
                if failing_since is None:
                    failing_since = now
                elif now - failing_since > self.reconnect_timeout:
                    raise TransportError(
                        f"publishing {len(payload)} bytes on {topic} to {self.host}:{self.port} "
                        f"kept failing for {self.reconnect_timeout:.0f}s: {exc}"
                    ) from None
                await self._reconnect(generation)  # then resend every frame (dedup by index)

    async def _wait_connected(self) -> None:
        """Wait for a reconnection in progress (another task is reconnecting)."""
        try:
            await asyncio.wait_for(self._connected.wait(), self.reconnect_timeout)
        except TimeoutError:
            raise TransportError(
                f"MQTT broker at {self.host}:{self.port} unreachable for "
                f"{self.reconnect_timeout:.0f}s"
            ) from None

    async def _publish_frames(
        self, client: aiomqtt.Client, topic: str, payload: bytes, message_id: bytes
    ) -> None:
        """Keep up to ``window`` frames in flight instead of waiting for each PUBACK."""
        in_flight: set[asyncio.Future[None]] = set()
        unchecked: set[asyncio.Future[None]] = set()  # finished, result not yet taken
        try:
            frames = split(
                payload, chunk_size=self.chunk_size, message_id=message_id, pad=self.pad_frames
            )
            for frame in frames:
                if len(in_flight) >= self.window:
                    unchecked, in_flight = await asyncio.wait(
                        in_flight, return_when=asyncio.FIRST_COMPLETED
                    )
                    while unchecked:
                        unchecked.pop().result()
                in_flight.add(asyncio.ensure_future(client.publish(topic, frame, qos=1)))
                self.bytes_out += len(frame)
            for task in asyncio.as_completed(in_flight):
                await task
        finally:
            # The first failure propagates; the others (a broker gone away fails every
            # frame in flight) are taken here, not reported by asyncio as never retrieved.
            for task in in_flight | unchecked:
                if task.done():
                    if not task.cancelled():
                        task.exception()
                else:
                    task.cancel()

    async def subscribe(self, topic_filter: str, *more: str) -> None:
        """Subscribe with QoS 1 (kept across reconnections); then announce presence.

        ``online`` is published only once every filter of the call is in place (a site
        subscribes to the federation's broadcasts and to its own inbox of private messages
        in one call), so a peer that sees it knows this site will receive what is published
        to it from then on.
        """
        filters = (topic_filter, *more)
        self._filters.extend(filters)
        if self._client is not None:
            for each in filters:
                await self._subscribe(self._client, each)
            await self._announce(self._client)

    async def _announce(self, client: aiomqtt.Client) -> None:
        if self._presence is not None:
            await client.publish(self._presence, self._presence_payload(ONLINE), qos=1, retain=True)

    async def _answer(self, client: aiomqtt.Client, source: str, payload: bytes) -> None:
        """Announce ourselves again to a new session that just came online.

        It did not see our ``online`` live (it was not subscribed yet), and a retained one
        may be stale, so it counts us only once we announce again. Each session is answered
        once (remembered, bounded), so answers cannot go back and forth for ever.
        """
        status, session = split_presence(payload)
        if self._presence is None or status != ONLINE or session in (b"", self.session):
            return
        if (source, session) in self._answered:
            return
        if len(self._answered) >= _ANSWERED_SESSIONS:
            self._answered.clear()
        self._answered.add((source, session))
        # In a task of its own: the reader must never wait for a PUBACK (a publish
        # interrupted by the reader's cancellation could swallow the cancellation on
        # Python 3.11, leaving PeerNode's exit waiting for the reader).
        task = asyncio.ensure_future(self._announce_quietly(client))
        self._answers.add(task)
        task.add_done_callback(self._answers.discard)

    async def _announce_quietly(self, client: aiomqtt.Client) -> None:
        with contextlib.suppress(aiomqtt.MqttError):
            await self._announce(client)

    async def messages(self) -> AsyncIterator[Delivery]:
        """Reassembled messages; survives reconnections; ends when the transport closes."""
        while not self._closing:
            client, generation = self._client, self._generation
            if client is None:
                await self._wait_connected()
                continue
            try:
                async for first in client.messages:
                    for taken, message in enumerate(_with_queued(client, first), 1):
                        delivery = await self._take(client, message)
                        if delivery is not None:
                            yield delivery
                        if taken % _DRAIN_TURN == 0:
                            await asyncio.sleep(0)  # a long drain lets other tasks run too
            except aiomqtt.MqttError:
                if self.closing:
                    return
                await self._reconnect(generation)

    async def _take(self, client: aiomqtt.Client, message: aiomqtt.Message) -> Delivery | None:
        """One frame from the broker: a presence, or a frame to reassemble."""
        payload = message.payload
        topic = message.topic.value
        self.bytes_in += len(payload)
        parsed = parse_topic(topic)
        if parsed is not None and parsed.round_id is None:
            # presence: small, never chunked
            retained = bool(message.retain)
            if not retained:
                source = f"{parsed.federation}/{parsed.site}"
                await self._answer(client, source, bytes(payload))
            return Delivery(topic, bytes(payload), retained=retained)
        # Partial messages are counted per sending site (the broker's ACL
        # confines a site to its own name), not per topic: the round in the
        # topic is the sender's choice.
        source = topic if parsed is None else f"{parsed.federation}/{parsed.site}"
        try:
            whole = self._reassembler.feed(source, bytes(payload))
        except ChunkError as exc:
            self._dropped_frame(topic, exc)
            return None
        return None if whole is None else Delivery(topic, whole)

    def _dropped_frame(self, topic: str, exc: ChunkError) -> None:
        """Log a dropped frame: sender-chosen text escaped, a flood logged sparsely."""
        self.dropped_frames += 1
        count = self.dropped_frames
        level = logging.WARNING if count & (count - 1) == 0 else logging.DEBUG  # 1, 2, 4, …
        log.log(
            level,
            "dropped a malformed frame on %s: %s (%d dropped so far)",
            printable(topic),
            printable(exc),
            count,
        )


def _with_queued(client: aiomqtt.Client, first: aiomqtt.Message) -> Iterator[aiomqtt.Message]:
    """``first``, then every frame already queued behind it, without a wait for each.

    aiomqtt's message iterator takes one frame per turn of the event loop (a task and a
    wait apiece), while paho reads as many frames per turn as it has publications in
    flight. While this site publishes a large message, frames it received piled up
    unread: at d = 10^8 some hundreds of MB of them at the peak (README, Benchmarks).
    Draining the queue each turn keeps it short. The queue is aiomqtt's own (pinned < 3);
    ``len(client.messages)`` is its public size.
    """
    yield first
    queue = getattr(client, "_queue", None)
    if not isinstance(queue, asyncio.Queue):
        return
    while len(client.messages):
        yield queue.get_nowait()
