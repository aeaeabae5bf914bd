"""The demo's pure-Python fallback broker (amqtt) keeps the Mosquitto setup's guarantees:
TLS, one password per site, no anonymous clients, and a site publishes only as itself."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from peers.config import FederationConfig, load_site
from peers.demo import make_federation, running_broker
from peers.node import PeerNode
from peers.transport import inbox_filter, message_topic

HOST = "127.0.0.1"


@pytest.fixture(scope="module")
def amqtt_federation(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Path, FederationConfig]]:
    root = tmp_path_factory.mktemp("amqtt")
    federation, port = make_federation(root, sites=3, kind="amqtt", threshold=None)
    assert federation.broker.mqtt_version == "3.1.1"
    with running_broker(root / "fed", port, "amqtt"):
        yield root / "fed", federation


def _client(
    directory: Path, federation: FederationConfig, user: str | None, password: str | None = None
) -> aiomqtt.Client:
    if user is not None and password is None:
        password = (directory / "sites" / f"{user}.password").read_text().strip()
    return aiomqtt.Client(
        HOST,
        federation.broker.port,
        identifier=f"{user or 'anon'}-{uuid.uuid4().hex[:8]}",
        username=user,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V311,
        tls_params=aiomqtt.TLSParameters(ca_certs=str(directory / "broker" / "ca.crt")),
        timeout=5,
    )


@pytest.mark.asyncio
@pytest.mark.parametrize(("user", "password"), [(None, None), ("site-0", "wrong"), ("admin", "x")])
async def test_anonymous_and_wrong_credentials_are_refused(
    amqtt_federation: tuple[Path, FederationConfig], user: str | None, password: str | None
) -> None:
    directory, federation = amqtt_federation
    with pytest.raises(aiomqtt.MqttError):
        async with _client(directory, federation, user, password):
            pass


@pytest.mark.asyncio
async def test_a_site_cannot_publish_under_another_sites_name(
    amqtt_federation: tuple[Path, FederationConfig],
) -> None:
    directory, federation = amqtt_federation
    round_id = uuid.uuid4().int % 10**9
    async with (
        _client(directory, federation, "site-2") as receiver,
        _client(directory, federation, "site-0") as sender,
    ):
        await receiver.subscribe(f"mpcagg/v1/{federation.id}/#", qos=1)
        await sender.publish(message_topic(federation.id, round_id, "site-1"), b"forged", qos=1)
        await sender.publish(message_topic(federation.id, round_id, "site-0"), b"own", qos=1)
        received: list[tuple[str, bytes]] = []

        async def collect() -> None:
            async for message in receiver.messages:
                received.append((message.topic.value, bytes(message.payload)))

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(collect(), 1.5)
    assert (message_topic(federation.id, round_id, "site-0"), b"own") in received
    assert all(payload != b"forged" for _, payload in received)


@pytest.mark.asyncio
async def test_a_site_receives_only_its_own_private_messages(
    amqtt_federation: tuple[Path, FederationConfig],
) -> None:
    directory, federation = amqtt_federation
    round_id = uuid.uuid4().int % 10**9
    root = f"mpcagg/v1/{federation.id}"
    to_1 = message_topic(federation.id, round_id, "site-0", recipient="site-1")
    forged = message_topic(federation.id, round_id, "site-2", recipient="site-1")
    broadcast = message_topic(federation.id, round_id, "site-0")
    received: dict[str, list[bytes]] = {"site-1": [], "site-2": []}
    async with (
        _client(directory, federation, "site-0") as sender,
        _client(directory, federation, "site-1") as recipient,
        _client(directory, federation, "site-2") as other,
    ):
        await recipient.subscribe(inbox_filter(federation.id, "site-1"), qos=1)
        await other.subscribe(f"{root}/#", qos=1)
        await other.subscribe(f"{root}/+/#", qos=1)  # passes amqtt's subscription check
        await sender.publish(to_1, b"share for site-1", qos=1)
        await sender.publish(forged, b"forged as site-2", qos=1)
        await sender.publish(broadcast, b"broadcast", qos=1)

        async def collect(client: aiomqtt.Client, into: list[bytes]) -> None:
            async for message in client.messages:
                into.append(bytes(message.payload))

        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(
                asyncio.gather(
                    collect(recipient, received["site-1"]), collect(other, received["site-2"])
                ),
                1.5,
            )
    assert received["site-1"] == [b"share for site-1"]
    assert b"broadcast" in received["site-2"]
    assert set(received["site-2"]) == {b"broadcast"}


@pytest.mark.asyncio
async def test_three_peers_aggregate_through_amqtt_over_mqtt_3_1_1(
    amqtt_federation: tuple[Path, FederationConfig],
) -> None:
    directory, _ = amqtt_federation
    updates = [np.full(50_000, (k + 1) / 8) for k in range(3)]

    async def site(k: int) -> np.ndarray:
        async with PeerNode.from_config(load_site(directory / "sites" / f"site-{k}.toml")) as node:
            result = await node.aggregate(updates[k])
            return result.total

    totals = await asyncio.gather(*(site(k) for k in range(3)))
    for total in totals:
        np.testing.assert_allclose(total, sum(updates), atol=3 * 2.0**-20)
