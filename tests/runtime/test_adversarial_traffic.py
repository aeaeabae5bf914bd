"""Adversarial traffic at the transport boundary (issue 8 §2), one test and one reason each.

Three sites run rounds over the in-memory broker; an attacker with broker-level access
publishes on the round's topics. Each case must leave the honest sites' round exact and
be counted in ``AggregateResult.ignored`` — and in the audit log — under a named reason:

| case | reason |
|---|---|
| replay of the previous round | ``not for this round`` (the envelope names its round) |
| replay from another federation | ``not for this federation`` (federation, roster digest) |
| truncated or padded messages | ``malformed message`` |
| fuzzed payloads (hypothesis) | ``malformed message`` |
| a message signed by a removed site | ``forged or corrupted ADVERTISE_KEYS`` |
| a flood on one site's topic | ``over the per-site limit`` (``[limits] messages_per_site``) |
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mpc_agg.crypto import SigningKey
from mpc_agg.envelope import EnvelopeContext, parse_envelope, seal_envelope
from mpc_agg.randomness import DeterministicRandomSource
from peers.audit import AuditLog
from peers.config import load_federation
from peers.init import init_federation
from peers.memory import MemoryBroker
from peers.node import OVER_LIMIT, AggregateResult
from peers.transport import message_topic
from protocols.harness import make_roster
from protocols.secagg.messages import MessageKind
from tests.dp_support import memory
from tests.runtime.nodes import on_grid, run_round, running_nodes

Recorded = list[tuple[str, bytes]]
Inject = Callable[[MemoryBroker, Recorded, int], None]


def _recording(broker: MemoryBroker) -> Recorded:
    recorded: Recorded = []
    route = broker.route

    def spy(topic: str, payload: bytes) -> None:
        recorded.append((topic, payload))
        route(topic, payload)

    broker.route = spy  # type: ignore[method-assign]
    return recorded


async def _attacked_round(
    inject: Inject,
    *,
    federation: str = "fed-adv",
    tmp_path: Path | None = None,
    threshold: int | None = None,
    honest: tuple[int, ...] = (0, 1, 2),
) -> list[AggregateResult]:
    """Round 1 clean (recorded), round 2 with ``inject`` right after it starts.

    The ``honest`` sites' results must be the exact sum of what they include.
    """
    broker = MemoryBroker()
    recorded = _recording(broker)
    rng = np.random.default_rng(5)
    audits = [None if tmp_path is None else AuditLog(tmp_path / f"a{i}.jsonl") for i in range(3)]
    async with running_nodes(
        3,
        memory(broker),
        federation=federation,
        deadline=2.0,
        audit=lambda i: audits[i],
        threshold=threshold,
    ) as nodes:
        first = await run_round(nodes, [on_grid(rng, (64,)) for _ in range(3)])
        assert all(isinstance(r, AggregateResult) for r in first), first
        updates = [on_grid(rng, (64,)) for _ in range(3)]
        work = asyncio.ensure_future(run_round(nodes, updates))
        await asyncio.sleep(0)  # the round has started at every site
        inject(broker, list(recorded), 2)
        results = await work
    out = []
    for k in honest:
        result = results[k]
        assert isinstance(result, AggregateResult), result
        included = [int(name.split("-")[1]) for name in result.included]
        assert np.array_equal(result.total, sum(updates[i] for i in included))
        out.append(result)
    return out


def _reasons(results: list[AggregateResult]) -> set[str]:
    return {reason for result in results for reason in result.ignored}


@pytest.mark.asyncio
async def test_replay_of_the_previous_round_is_ignored_by_its_round_binding() -> None:
    def replay(broker: MemoryBroker, recorded: Recorded, round_id: int) -> None:
        for topic, payload in recorded:
            parts = topic.split("/")
            parts[3] = str(round_id)
            broker.route("/".join(parts), payload)

    assert _reasons(await _attacked_round(replay)) == {"not for this round"}


@pytest.mark.asyncio
async def test_replay_from_another_federation_is_ignored() -> None:
    other_broker = MemoryBroker()
    other = _recording(other_broker)
    rng = np.random.default_rng(6)
    async with running_nodes(3, memory(other_broker), federation="fed-other") as nodes:
        await run_round(nodes, [on_grid(rng, (64,)) for _ in range(3)])
        await run_round(nodes, [on_grid(rng, (64,)) for _ in range(3)])

    def replay(broker: MemoryBroker, _recorded: Recorded, round_id: int) -> None:
        for topic, payload in other:
            parts = topic.split("/")
            if parts[3] == str(round_id):
                parts[2] = "fed-adv"
                broker.route("/".join(parts), payload)

    # The envelope names its federation (and roster): the binding check refuses it.
    assert _reasons(await _attacked_round(replay)) == {"not for this federation"}


@pytest.mark.asyncio
async def test_truncated_and_oversize_messages_are_ignored() -> None:
    def mangle(broker: MemoryBroker, recorded: Recorded, round_id: int) -> None:
        for topic, payload in recorded[:6]:
            parts = topic.split("/")
            parts[3] = str(round_id)
            broker.route("/".join(parts), payload[: len(payload) // 2])
            broker.route("/".join(parts), payload + b"\x00" * 17)

    assert _reasons(await _attacked_round(mangle)) == {"malformed message"}


@pytest.mark.asyncio
async def test_a_flood_from_one_site_is_cut_at_its_limit(tmp_path: Path) -> None:
    def flood(broker: MemoryBroker, _recorded: Recorded, round_id: int) -> None:
        topic = message_topic("fed-adv", round_id, "site-1")
        for i in range(200):
            broker.route(topic, bytes([i % 256]) * 512)

    results = await _attacked_round(flood, threshold=2, honest=(0, 2), tmp_path=tmp_path)
    assert OVER_LIMIT in _reasons(results)
    # …and the audit log says so, with the counts.
    record = json.loads((tmp_path / "a0.jsonl").read_text().splitlines()[-1])["record"]
    assert record["outcome"] == "aggregate"
    assert record["ignored"][OVER_LIMIT] >= 100


@pytest.mark.asyncio
async def test_a_message_signed_by_a_removed_site_is_refused_as_forged() -> None:
    """A site removed from the roster keeps its old key: it cannot speak for any slot."""
    _roster, keys = make_roster(3)
    removed = SigningKey.generate(DeterministicRandomSource("removed site"))
    assert removed.public_bytes() not in {k.public_bytes() for k in keys}

    def impersonate(broker: MemoryBroker, recorded: Recorded, round_id: int) -> None:
        first = next(p for t, p in recorded if t.endswith("/1/site-1"))
        original = parse_envelope(first, max_payload=1 << 20)
        context = EnvelopeContext(
            protocol=original.protocol,
            federation="fed-adv",
            roster_digest=original.roster_digest,
            round_id=round_id,
        )
        forged = seal_envelope(
            context,
            phase=MessageKind.ADVERTISE_KEYS.phase,
            kind=MessageKind.ADVERTISE_KEYS,
            sender=1,
            recipient=original.recipient,
            payload=bytes(original.payload),
            signing_key=removed,
        )
        broker.route(message_topic("fed-adv", round_id, "site-1"), forged)

    reasons = _reasons(await _attacked_round(impersonate, honest=(0, 2)))
    assert reasons == {"forged or corrupted ADVERTISE_KEYS"}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(payloads=st.lists(st.binary(max_size=2048), min_size=1, max_size=8))
def test_fuzzed_payloads_on_a_site_topic_never_change_the_sum(payloads: list[bytes]) -> None:
    def fuzz(broker: MemoryBroker, _recorded: Recorded, round_id: int) -> None:
        for payload in payloads:
            broker.route(message_topic("fed-adv", round_id, "site-2"), payload)

    results = asyncio.run(_attacked_round(fuzz, threshold=2, honest=(0, 1)))
    assert _reasons(results) <= {"malformed message", OVER_LIMIT}


@pytest.mark.asyncio
async def test_the_per_site_message_limit_comes_from_the_config(tmp_path: Path) -> None:
    """[limits] messages_per_site: what one sender may cost a site per round."""
    path = init_federation(tmp_path, sites=3)
    text = path.read_text().replace(
        "chunk_size = 1048576", "chunk_size = 1048576\nmessages_per_site = 12"
    )
    path.write_text(text)
    limits = load_federation(path).limits
    assert (limits.messages_per_site, limits.held_messages_per_site) == (12, 12)
    broker = MemoryBroker()
    rng = np.random.default_rng(8)
    updates = [on_grid(rng, (64,)) for _ in range(3)]
    async with running_nodes(3, memory(broker), federation="fed-adv", threshold=2) as nodes:
        for node in nodes:
            node.messages_per_site = limits.messages_per_site
        work = asyncio.ensure_future(run_round(nodes, updates))
        await asyncio.sleep(0)
        for i in range(40):
            broker.route(message_topic("fed-adv", 1, "site-1"), bytes([i]) * 64)
        results = await work
    for k in (0, 2):
        result = results[k]
        assert isinstance(result, AggregateResult), result
        included = [int(name.split("-")[1]) for name in result.included]
        assert np.array_equal(result.total, sum(updates[i] for i in included))
        # 40 forged frames plus site-1's own messages, at most 12 of them read
        assert result.ignored[OVER_LIMIT] >= 28
