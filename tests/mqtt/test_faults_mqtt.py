"""Over a real Mosquitto: forged messages, and the broker restarted in the middle of a round."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from mpc_agg.crypto import SigningKey
from mpc_agg.envelope import BROADCAST, EnvelopeContext, seal_envelope
from mpc_agg.randomness import DeterministicRandomSource
from peers.demo import free_port
from peers.mqtt import MqttTransport
from peers.node import AggregateResult, RoundAbortedError
from peers.transport import Transport, message_topic, presence_topic
from protocols.harness import make_roster
from protocols.secagg.machine import protocol_id
from protocols.secagg.messages import AdvertiseKeys, MessageKind
from tests.runtime.nodes import on_grid, run_round, running_nodes


def _transports(port: int, federation: str) -> Callable[[int], Transport]:
    tag = os.urandom(3).hex()
    return lambda i: MqttTransport(
        host="127.0.0.1",
        port=port,
        client_id=f"{federation}-{i}-{tag}",
        presence_topic=presence_topic(federation, f"site-{i}"),
        chunk_size=256 * 1024,
        reconnect_timeout=20.0,
        backoff=(0.05, 0.5),
    )


@pytest.mark.asyncio
async def test_a_message_forged_by_a_broker_level_client_is_rejected() -> None:
    federation = f"fed-{os.urandom(3).hex()}"
    roster, _ = make_roster(3)
    forger_key = SigningKey.generate(DeterministicRandomSource("forger"))
    rng = np.random.default_rng(31)
    updates = [on_grid(rng, (1000,)) for _ in range(3)]
    async with (
        running_nodes(
            3, _transports(1883, federation), federation=federation, threshold=2
        ) as nodes,
        MqttTransport(host="127.0.0.1", port=1883, client_id=f"{federation}-admin") as admin,
    ):
        context = EnvelopeContext(
            # the round's ring, length and context (T = 2 of 3; SPEC §2.1)
            protocol=protocol_id(32, 1000, context=nodes[0].round_context(1000)),
            federation=federation,
            roster_digest=roster.digest,
            round_id=1,
        )
        forged = seal_envelope(
            context,
            phase=MessageKind.ADVERTISE_KEYS.phase,
            kind=MessageKind.ADVERTISE_KEYS,
            sender=1,
            recipient=BROADCAST,
            payload=AdvertiseKeys(
                encryption_key=b"\x04" + bytes(64), mask_key=b"\x04" + b"\x01" * 64
            ).encode(),
            signing_key=forger_key,
        )
        # an administrator of the broker publishes on site-1's topic, before site-1 does
        await admin.publish(message_topic(federation, 1, "site-1"), forged)
        await asyncio.sleep(0.2)
        results = await run_round(nodes, updates)
    for k in (0, 2):
        result = results[k]
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(updates))
        assert result.ignored.get("forged or corrupted ADVERTISE_KEYS", 0) == 1


@pytest.fixture
def restartable_broker(
    tmp_path: Path,
) -> Iterator[tuple[int, Callable[[], None], Callable[[], None]]]:
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    process: list[subprocess.Popen[bytes]] = []

    def start() -> None:
        process.append(subprocess.Popen(["mosquitto", "-c", str(conf)], stderr=subprocess.DEVNULL))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("mosquitto did not start")

    def kill() -> None:
        process[-1].kill()
        process[-1].wait(5)

    start()
    try:
        yield port, start, kill
    finally:
        for p in process:
            if p.poll() is None:
                p.kill()
                p.wait(5)


@pytest.mark.asyncio
@pytest.mark.slow
async def test_broker_restart_mid_round_then_the_next_round_succeeds(
    restartable_broker: tuple[int, Callable[[], None], Callable[[], None]],
) -> None:
    port, start, kill = restartable_broker
    federation = f"fed-{os.urandom(3).hex()}"
    rng = np.random.default_rng(41)
    first = [on_grid(rng, (400_000,)) for _ in range(3)]
    second = [on_grid(rng, (1000,)) for _ in range(3)]
    async with running_nodes(
        3, _transports(port, federation), federation=federation, threshold=2, deadline=4.0
    ) as nodes:
        round_one = asyncio.ensure_future(run_round(nodes, first))
        await asyncio.sleep(0.3)
        kill()
        await asyncio.sleep(0.5)
        start()
        outcomes = await round_one
        for outcome in outcomes:
            if isinstance(outcome, AggregateResult):
                included = [int(name.split("-")[1]) for name in outcome.included]
                assert np.array_equal(outcome.total, sum(first[i] for i in included))
            else:
                assert isinstance(outcome, RoundAbortedError), outcome
        await asyncio.sleep(1.0)  # every node is subscribed and online again
        results = await run_round(nodes, second)
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(second))
        assert result.round_id == 2
    assert sum(n._transport.reconnects for n in nodes) >= 3  # type: ignore[attr-defined]
