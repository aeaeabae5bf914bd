"""PeerNode over the real Mosquitto at 127.0.0.1:1883 (started by the machine before CI)."""

from __future__ import annotations

import os
from collections.abc import Callable

import numpy as np
import pytest

from peers.mqtt import MqttTransport
from peers.node import AggregateResult
from peers.transport import Transport, presence_topic
from tests.runtime.nodes import on_grid, run_round, running_nodes

HOST, PORT = "127.0.0.1", 1883


def _mqtt(federation: str) -> Callable[[int], Transport]:
    tag = os.urandom(4).hex()
    return lambda i: MqttTransport(
        host=HOST,
        port=PORT,
        client_id=f"{federation}-site-{i}-{tag}",
        presence_topic=presence_topic(federation, f"site-{i}"),
        chunk_size=64 * 1024,
    )


@pytest.mark.asyncio
async def test_four_sites_over_mosquitto_agree_on_the_exact_sum() -> None:
    federation = f"fed-{os.urandom(4).hex()}"  # a unique topic tree per test run
    rng = np.random.default_rng(21)
    updates = [on_grid(rng, (50_000,)) for _ in range(4)]
    async with running_nodes(4, _mqtt(federation), federation=federation, deadline=10.0) as nodes:
        results = await run_round(nodes, updates)
        second = await run_round(nodes, updates[::-1])
        presence = dict(nodes[0].presence)
    for result in [*results, *second]:
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(updates))
        assert result.count == 4
        # 4 bytes per coordinate for the masked input (Z_2^32), split into 64 KiB chunks
        assert 50_000 * 4 < result.bytes_out < 50_000 * 5
    assert [r.round_id for r in second if isinstance(r, AggregateResult)] == [2] * 4
    assert presence.get("site-1") == b"online"


@pytest.mark.asyncio
async def test_robust_over_mosquitto_excludes_a_poisoned_update() -> None:
    from contextlib import AsyncExitStack  # noqa: PLC0415 - local to this test

    from peers.node import PeerNode  # noqa: PLC0415
    from protocols.harness import make_roster  # noqa: PLC0415
    from tests.runtime.test_robust_node import PoisoningNode  # noqa: PLC0415

    federation = f"fed-{os.urandom(4).hex()}"
    rng = np.random.default_rng(22)
    updates = []
    for _ in range(5):
        values = rng.normal(0.0, 1.0, 20_000)
        values *= 0.9 / np.linalg.norm(values)
        updates.append(np.trunc(values * 2**16) / 2**16)  # exact at the round's frac_bits
    updates[1] = np.full(20_000, 0.5)  # norm ≈ 70 ≫ max_norm 1
    roster, keys = make_roster(5)
    transport = _mqtt(federation)
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                (PoisoningNode if i == 1 else PeerNode)(
                    federation=federation,
                    roster=roster,
                    me=i,
                    signing_key=keys[i],
                    transport=transport(i),
                    deadlines=lambda _p: 10.0,
                    protocol="robust",
                    max_norm=1.0,
                    join_timeout=10.0,
                )
            )
            for i in range(5)
        ]
        results = await run_round(nodes, updates)
    expected = updates[0] + updates[2] + updates[3] + updates[4]
    for i in (0, 2, 3, 4):
        result = results[i]
        assert isinstance(result, AggregateResult), result
        assert result.included == ("site-0", "site-2", "site-3", "site-4")
        assert "site-1" in result.excluded
        assert np.array_equal(result.total, expected)


@pytest.mark.asyncio
async def test_a_round_over_the_dp_budget_publishes_nothing_at_the_broker() -> None:
    """DP.md §5.2 over Mosquitto: a listener on the federation's topics sees no message."""
    import asyncio  # noqa: PLC0415 - local to this test

    import aiomqtt  # noqa: PLC0415

    from mpc_agg import dp  # noqa: PLC0415
    from peers.transport import federation_filter, parse_topic  # noqa: PLC0415

    federation = f"fed-{os.urandom(4).hex()}"
    settings = dp.DpSettings(noise_multiplier=2.0, clip_norm=1.0, delta=1e-5)
    one_round = dp.PrivacyAccountant(delta=1e-5).epsilon(
        [
            dp.plan_round(
                settings, vector_length=1000, frac_bits=20, min_sites=2, federation="x", round_id=1
            ).cost
        ]
    )
    settings = dp.DpSettings(
        noise_multiplier=2.0, clip_norm=1.0, delta=1e-5, epsilon_budget=1.2 * one_round
    )
    seen: list[tuple[int | None, str]] = []
    async with aiomqtt.Client(HOST, PORT, identifier=f"listener-{federation}") as listener:
        await listener.subscribe(federation_filter(federation))

        async def listen() -> None:
            async for message in listener.messages:
                parsed = parse_topic(str(message.topic))
                if parsed is not None:
                    seen.append((parsed.round_id, parsed.site))

        task = asyncio.create_task(listen())
        try:
            async with running_nodes(
                2, _mqtt(federation), federation=federation, deadline=10.0, privacy=settings
            ) as nodes:
                first = await run_round(nodes, [np.full(1000, 0.01)] * 2)
                assert all(isinstance(r, AggregateResult) for r in first), first
                await asyncio.sleep(0.5)
                before = len(seen)
                with pytest.raises(dp.PrivacyBudgetExceededError):
                    await nodes[0].aggregate(np.full(1000, 0.01))
                await asyncio.sleep(1.0)  # anything published would have arrived by now
                after = seen[before:]
        finally:
            task.cancel()
    assert any(r == 1 and s == "site-0" for r, s in seen[:before])  # the listener works
    assert [m for m in after if m[0] is not None] == []  # no round message at all
