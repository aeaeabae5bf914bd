"""The broker set-up `mpc-agg init` writes, against a real Mosquitto (DESIGN §6).

A federation is generated into a temporary directory, its ``mosquitto.conf`` is started
as a subprocess on a free port, and real MQTT 5 clients (aiomqtt over TLS) check what
the password file, the ACL and the TLS listener allow and refuse.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from peers import init as init_module
from peers.config import load_federation, load_site
from peers.demo import free_port
from peers.init import broker_command, init_federation
from peers.mqtt import MqttTransport
from peers.node import AggregateResult
from peers.transport import (
    BrokerRefusedError,
    TransportError,
    federation_filter,
    inbox_filter,
    message_topic,
    presence_topic,
)
from tests.runtime.relay import PRIVATE, RelayNode
from tests.runtime.relay import PROTOCOL as RELAY_PROTOCOL

HOST = "127.0.0.1"
#: How long a subscriber waits to be sure a denied message was not delivered.
QUIET = 1.0
RECEIVE_TIMEOUT = 5.0


@dataclass(frozen=True)
class Broker:
    directory: Path
    port: int
    federation: str
    ca_file: Path

    def password(self, user: str) -> str:
        folder = "broker" if user == "admin" else "sites"
        return (self.directory / folder / f"{user}.password").read_text().strip()

    def client(
        self,
        user: str | None,
        password: str | None = None,
        *,
        tls: bool = True,
        ca_file: Path | None = None,
        timeout: float = 5,
    ) -> aiomqtt.Client:
        if user is not None and password is None:
            password = self.password(user)
        tls_params = aiomqtt.TLSParameters(ca_certs=str(ca_file or self.ca_file)) if tls else None
        return aiomqtt.Client(
            HOST,
            self.port,
            identifier=f"{user or 'anonymous'}-{uuid.uuid4().hex[:8]}",
            username=user,
            password=password,
            protocol=aiomqtt.ProtocolVersion.V5,
            tls_params=tls_params,
            timeout=timeout,
        )


def _wait_for_tls(port: int, ca_file: Path, process: subprocess.Popen[bytes], log: Path) -> None:
    """Return once the broker completes a TLS handshake on ``port`` (fail after 10 s)."""
    context = ssl.create_default_context(cafile=str(ca_file))
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            pytest.fail(f"mosquitto exited with {process.returncode}: {log.read_text()}")
        try:
            with (
                socket.create_connection((HOST, port), timeout=1) as raw,
                context.wrap_socket(raw, server_hostname=HOST),
            ):
                return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"mosquitto did not accept TLS on port {port}: {log.read_text()}")
            time.sleep(0.05)


@contextlib.contextmanager
def _running_broker(directory: Path, **init_options: object) -> Iterator[Broker]:
    port = free_port()
    init_federation(directory, sites=3, broker_port=port, **init_options)  # type: ignore[arg-type]
    federation = load_federation(directory / "federation.toml")
    assert federation.broker.ca_file is not None
    log = directory / "mosquitto.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            broker_command(directory), stdout=log_file, stderr=subprocess.STDOUT
        )
    try:
        _wait_for_tls(port, federation.broker.ca_file, process, log)
        yield Broker(directory, port, federation.id, federation.broker.ca_file)
    finally:
        process.terminate()
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    with _running_broker(tmp_path_factory.mktemp("federation")) as running:
        yield running


def _round() -> int:
    """A round id no other test uses, so tests never see each other's messages."""
    return uuid.uuid4().int % 10**12


async def _next_message(client: aiomqtt.Client) -> aiomqtt.Message:
    async with asyncio.timeout(RECEIVE_TIMEOUT):
        return await anext(aiter(client.messages))


async def _message_within(client: aiomqtt.Client, seconds: float) -> aiomqtt.Message | None:
    try:
        async with asyncio.timeout(seconds):
            return await anext(aiter(client.messages))
    except TimeoutError:
        return None


async def _subscribe(client: aiomqtt.Client, topic: str) -> None:
    granted = await client.subscribe(topic, qos=1)
    codes = [code if isinstance(code, int) else code.value for code in granted]
    assert codes == [1], f"subscription to {topic} not granted: {granted}"


# --------------------------------------------------------------------------- tests


def test_site_config_matches_the_running_broker(broker: Broker) -> None:
    site = load_site(broker.directory / "sites" / "site-0.toml")
    assert (site.broker.host, site.broker.port, site.broker.tls) == (HOST, broker.port, True)
    assert site.broker.password == broker.password("site-0")


@pytest.mark.asyncio
async def test_site_publishes_under_its_own_name_and_peers_receive(broker: Broker) -> None:
    topic = message_topic(broker.federation, _round(), "site-0")
    async with broker.client("site-1") as receiver, broker.client("site-0") as sender:
        await _subscribe(receiver, "mpcagg/v1/#")
        await sender.publish(topic, b"masked input", qos=1)
        message = await _next_message(receiver)
    assert message.topic.value == topic
    assert message.payload == b"masked input"


@pytest.mark.asyncio
async def test_site_publishes_presence_and_messages_and_peers_receive(broker: Broker) -> None:
    round_id = _round()
    topics = [
        presence_topic(broker.federation, "site-2"),
        message_topic(broker.federation, round_id, "site-2"),
    ]
    async with broker.client("site-0") as receiver, broker.client("site-2") as sender:
        await _subscribe(receiver, f"mpcagg/v1/{broker.federation}/#")
        for i, topic in enumerate(topics):
            await sender.publish(topic, f"{i}".encode(), qos=1)
        received = [await _next_message(receiver) for _ in topics]
    assert [(m.topic.value, m.payload) for m in received] == [
        (topic, f"{i}".encode()) for i, topic in enumerate(topics)
    ]


#: Topics site-0 must not publish on ({root} = mpcagg/v1/{federation}).
FORGED_TOPICS = [
    "{root}/{round}/site-1",  # another site's sender id
    "{root}/presence/site-1",  # another site's presence
    "{root}/{round}/site-1/to/site-0",
    "{root}/{round}/site-1/site-0",  # a private message under another site's sender id
    "{root}/{round}/site-1/site-2",
    "{root}/presence/site-1/site-0",
    # below our own private topics: not part of the scheme ({root}/{round}/site-0/x is a
    # private message from site-0 to x, which site-0 may send)
    "{root}/{round}/site-0/site-1/extra",
    "{root}/{round}/site-0x",  # a longer name that starts with ours is not ours
    "mpcagg/v1/other-federation/{round}/site-0",  # another federation
    "mpcagg/v1/{round}",
    "elsewhere/site-0",
]


@pytest.mark.asyncio
async def test_publishing_outside_its_own_sender_id_is_not_delivered(broker: Broker) -> None:
    round_id = _round()
    root = f"mpcagg/v1/{broker.federation}"
    allowed_topic = message_topic(broker.federation, round_id, "site-0")
    async with broker.client("admin") as receiver, broker.client("site-0") as sender:
        await _subscribe(receiver, "#")
        # Mosquitto drops each ACL-denied publish (MQTT 5 PUBACK: "not authorized") and
        # keeps the connection. Messages of one publisher arrive in order, so the allowed
        # sentinel sent last arriving first shows none of the forged ones got through.
        for forged in FORGED_TOPICS:
            topic = forged.format(root=root, round=round_id)
            await sender.publish(topic, f"forged {topic}".encode(), qos=1)
        await sender.publish(allowed_topic, b"sentinel", qos=1)
        first = await _next_message(receiver)
        assert (first.topic.value, first.payload) == (allowed_topic, b"sentinel")
        late = await _message_within(receiver, QUIET)
        assert late is None, f"denied message delivered: {late.topic.value} {late.payload!r}"


@pytest.mark.asyncio
async def test_admin_reads_everything_but_cannot_publish_as_a_site(broker: Broker) -> None:
    round_id = _round()
    published = [
        ("site-0", message_topic(broker.federation, round_id, "site-0")),
        ("site-1", presence_topic(broker.federation, "site-1")),
        ("site-2", message_topic(broker.federation, round_id + 1, "site-2")),
    ]
    async with (
        broker.client("admin") as admin,
        broker.client("site-0") as site0,
        broker.client("site-1") as site1,
        broker.client("site-2") as site2,
    ):
        await _subscribe(admin, "#")
        senders = {"site-0": site0, "site-1": site1, "site-2": site2}
        for user, topic in published:
            await senders[user].publish(topic, user.encode(), qos=1)
        received = [await _next_message(admin) for _ in published]
        assert sorted((m.topic.value, m.payload) for m in received) == sorted(
            (topic, user.encode()) for user, topic in published
        )

        await _subscribe(site1, f"mpcagg/v1/{broker.federation}/#")
        await admin.publish(message_topic(broker.federation, round_id, "site-0"), b"admin", qos=1)
        await site0.publish(message_topic(broker.federation, round_id, "site-0"), b"real", qos=1)
        message = await _next_message(site1)
        assert message.payload == b"real"


async def _payloads_until(client: aiomqtt.Client, sentinel: bytes) -> list[bytes]:
    """Payloads received up to ``sentinel`` and during QUIET seconds after it."""
    payloads: list[bytes] = []
    while sentinel not in payloads:
        payloads.append(bytes((await _next_message(client)).payload))
    while (late := await _message_within(client, QUIET)) is not None:
        payloads.append(bytes(late.payload))
    return payloads


@pytest.mark.asyncio
async def test_a_private_message_reaches_its_recipient_and_no_other_site(broker: Broker) -> None:
    round_id = _round()
    root = f"mpcagg/v1/{broker.federation}"
    async with (
        broker.client("site-0") as site0,
        broker.client("site-1") as site1,
        broker.client("site-2") as site2,
        broker.client("admin") as admin,
    ):
        # Mosquitto grants every subscription and checks each delivery against the ACL:
        # however site-1 subscribes, site-2's inbox is not delivered to it.
        for wide in ("#", f"{root}/#", f"{root}/+/+/+", inbox_filter(broker.federation, "site-2")):
            await _subscribe(site1, wide)
        await _subscribe(site2, federation_filter(broker.federation))
        await _subscribe(site2, inbox_filter(broker.federation, "site-2"))
        await _subscribe(admin, f"{root}/#")
        to_2 = message_topic(broker.federation, round_id, "site-0", recipient="site-2")
        to_1 = message_topic(broker.federation, round_id, "site-0", recipient="site-1")
        await site0.publish(to_2, b"share for site-2", qos=1)
        await site0.publish(to_1, b"share for site-1", qos=1)
        await site0.publish(message_topic(broker.federation, round_id, "site-0"), b"bc", qos=1)
        at_1 = await _payloads_until(site1, b"bc")
        at_2 = await _payloads_until(site2, b"bc")
        at_admin = await _payloads_until(admin, b"bc")
    assert set(at_1) == {b"share for site-1", b"bc"}  # (once per matching subscription)
    assert at_2 == [b"share for site-2", b"bc"]
    assert at_admin == [b"share for site-2", b"share for site-1", b"bc"]  # operators read all


@pytest.mark.asyncio
async def test_a_site_cannot_send_a_private_message_as_another_site(broker: Broker) -> None:
    round_id = _round()
    async with broker.client("site-2") as site2, broker.client("site-1") as site1:
        await _subscribe(site2, inbox_filter(broker.federation, "site-2"))
        forged = message_topic(broker.federation, round_id, "site-0", recipient="site-2")
        own = message_topic(broker.federation, round_id, "site-1", recipient="site-2")
        await site1.publish(forged, b"forged as site-0", qos=1)  # dropped by the broker
        await site1.publish(own, b"from site-1", qos=1)
        received = await _payloads_until(site2, b"from site-1")
    assert received == [b"from site-1"]


@pytest.mark.asyncio
async def test_peer_nodes_send_private_messages_through_the_generated_broker(
    broker: Broker,
) -> None:
    """PeerNode + MqttTransport with TLS, passwords and the ACL: Send reaches its recipient."""
    sites = [load_site(broker.directory / "sites" / f"site-{k}.toml") for k in range(3)]
    updates = [np.full(200_000, (k + 1) / 8) for k in range(3)]  # 1.6 MB: two 1 MiB frames

    async def run(k: int) -> tuple[AggregateResult, list[tuple[int | None, bytes]]]:
        async with RelayNode.from_config(sites[k]) as node:
            assert isinstance(node, RelayNode)
            node._deadline = lambda _phase: 30.0  # the relay has no [deadlines] keys
            result = await node.aggregate(updates[k])
            return result, node.machines[0].received

    outcomes = await asyncio.wait_for(asyncio.gather(*(run(k) for k in range(3))), 60)
    for k, (result, received) in enumerate(outcomes):
        assert result.protocol == RELAY_PROTOCOL
        assert np.array_equal(result.total, updates[(k - 1) % 3])
        assert [s for s, kind in received if kind == PRIVATE] == [(k - 1) % 3]


@pytest.mark.asyncio
async def test_anonymous_client_is_refused(broker: Broker) -> None:
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed"):
        async with broker.client(None):
            pass


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("user", "password"),
    [("site-0", "wrong password"), ("site-0", ""), ("site-7", "x"), ("admin", "site-0")],
)
async def test_wrong_credentials_are_refused(broker: Broker, user: str, password: str) -> None:
    if password == "site-0":
        password = broker.password("site-0")  # a real password, for the wrong account
    with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed|[Bb]ad user name"):
        async with broker.client(user, password):
            pass


@pytest.mark.asyncio
@pytest.mark.parametrize("mqtt_version", ["5", "3.1.1"])
async def test_a_refused_login_fails_at_once_with_a_typed_error(
    broker: Broker, mqtt_version: str
) -> None:
    # A wrong password (or a revoked account) is not an unreachable broker: the transport
    # raises BrokerRefusedError on the first CONNACK instead of retrying for 60 s.
    site = load_site(broker.directory / "sites" / "site-0.toml")
    assert site.broker.ca_file is not None
    transport = MqttTransport(
        host=HOST,
        port=broker.port,
        client_id=f"refused-{uuid.uuid4().hex[:8]}",
        username="site-0",
        password="not the password",
        ca_file=site.broker.ca_file,
        presence_topic=presence_topic(broker.federation, "site-0"),
        mqtt_version=mqtt_version,
        reconnect_timeout=60.0,
    )
    started = time.monotonic()
    with pytest.raises(BrokerRefusedError, match="refused the login of site-0") as caught:
        async with transport:
            pass
    assert time.monotonic() - started < 10
    assert isinstance(caught.value, TransportError)
    assert "not the password" not in str(caught.value)


def test_aggregate_with_a_refused_login_exits_2_at_once(broker: Broker, tmp_path: Path) -> None:
    sites = broker.directory / "sites"
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not the password\n")
    wrong.chmod(0o600)
    config = tmp_path / "site-0.toml"
    text = (sites / "site-0.toml").read_text()
    text = text.replace('password_file = "site-0.password"', f'password_file = "{wrong}"')
    for name in ("federation", "signing_key_file", "audit_log"):  # relative to sites/
        text = text.replace(f'{name} = "', f'{name} = "{sites}/', 1)
    config.write_text(text)
    np.save(tmp_path / "x.npy", np.zeros(10))
    started = time.monotonic()
    done = subprocess.run(
        [
            sys.executable, "-m", "peers.cli", "aggregate", "--config", str(config),
            "--input", str(tmp_path / "x.npy"), "--output", str(tmp_path / "sum.npy"),
        ],
        capture_output=True, text=True, check=False, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "refused the login of site-0" in done.stderr
    assert time.monotonic() - started < 20


@pytest.mark.asyncio
async def test_plain_tcp_to_the_tls_port_fails(broker: Broker) -> None:
    # Mosquitto answers the plaintext CONNECT with a TLS alert and a reset ("wrong version
    # number"); paho reports no CONNACK within the timeout.
    async with asyncio.timeout(15):
        with pytest.raises(aiomqtt.MqttError):
            async with broker.client("site-0", tls=False, timeout=2):
                pass


@pytest.mark.asyncio
async def test_broker_certificate_from_another_ca_is_rejected(
    broker: Broker, tmp_path: Path
) -> None:
    init_federation(tmp_path, sites=2)  # an unrelated CA
    with pytest.raises(aiomqtt.MqttError, match="CERTIFICATE_VERIFY_FAILED"):
        async with broker.client("site-0", ca_file=tmp_path / "broker" / "ca.crt"):
            pass


@pytest.mark.asyncio
async def test_python_password_hashes_work_with_mosquitto(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    find_program = init_module.find_program
    monkeypatch.setattr(
        init_module,
        "find_program",
        lambda name: None if name == "mosquitto_passwd" else find_program(name),
    )
    directory = tmp_path / "federation"
    with _running_broker(directory) as running:
        topic = message_topic(running.federation, _round(), "site-1")
        async with running.client("site-0") as receiver, running.client("site-1") as sender:
            await _subscribe(receiver, f"mpcagg/v1/{running.federation}/#")
            await sender.publish(topic, b"ok", qos=1)
            assert (await _next_message(receiver)).payload == b"ok"
        with pytest.raises(aiomqtt.MqttError, match=r"[Nn]ot authori[sz]ed"):
            async with running.client("site-0", "wrong"):
                pass
