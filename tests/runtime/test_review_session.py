"""Review of 02101e5..1569674 (helper): implicit round ids and the round context.

1569674 had PeerNode follow the other sites' round ids, read from topics and header phase
bytes before any signature. The review found sites in step pushed apart after a round that
aborted at different times (a livelock), and a roster site splitting honest sites with one
junk message per private topic. That heuristic is gone (the node's implicit round is the one
after its own last round, as before); SecureAggOptimizer skips the rounds it knows it missed
instead (tests/torch/test_review_integration.py). These tests keep both attacks out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from peers.memory import MemoryBroker, MemoryTransport
from peers.node import AggregateResult, PeerNode, RoundAbortedError
from peers.transport import Transport, message_topic
from tests.runtime.nodes import on_grid, running_nodes


def _memory(broker: MemoryBroker) -> Callable[[int], Transport]:
    return lambda i: MemoryTransport(broker, name=f"site-{i}")


async def _keep_trying(
    node: PeerNode, rng: np.random.Generator, *, start: float, attempts: int
) -> list[AggregateResult | RoundAbortedError]:
    """A training loop that keeps running: on an abort it simply calls aggregate() again."""
    await asyncio.sleep(start)
    out: list[AggregateResult | RoundAbortedError] = []
    for _ in range(attempts):
        try:
            out.append(await node.aggregate(on_grid(rng, (8,))))
            return out
        except RoundAbortedError as exc:
            out.append(exc)
    return out


@pytest.mark.asyncio
async def test_sites_in_step_stay_in_step_after_a_round_that_aborts_at_different_times() -> None:
    # Three sites, all needed (T = 3). Round 1: site-2 is away; site-0 and site-1 are in
    # step (both on round 1), site-1 started 0.2 s later, so its abort comes 0.2 s later.
    # Each retries at once. With 1569674's heuristic site-1 jumped past site-0's round 2
    # and from then on each site jumped past the other.
    rng = np.random.default_rng(0)
    async with running_nodes(3, _memory(MemoryBroker()), threshold=3, deadline=0.5) as nodes:
        results = await asyncio.gather(
            _keep_trying(nodes[0], rng, start=0.0, attempts=5),
            _keep_trying(nodes[1], rng, start=0.2, attempts=5),
            _keep_trying(nodes[2], rng, start=0.6, attempts=5),  # back from round 2 on
        )
    ids = [[r.round_id for r in site] for site in results]
    # every attempt of every site is the same round id: the sites stay in step (they do
    # not meet here only because each aborts at its own deadline, 0.6 s apart with
    # 0.5 s deadlines; `join_timeout` is for that)
    assert ids[0] == ids[1] == ids[2] == [1, 2, 3, 4, 5], ids


@pytest.mark.asyncio
async def test_one_roster_site_cannot_split_honest_sites_with_private_topics() -> None:
    # T = 2 of 3: site-0 and site-1 complete rounds without site-2. site-2 (malicious, a
    # roster member: it may publish on its own topics) sends each honest site one
    # unsigned junk message on a private topic, with a different round id per recipient.
    # With 1569674's heuristic site-0 "followed" it to round 11 and site-1 to round 21.
    rng = np.random.default_rng(1)
    async with running_nodes(3, _memory(MemoryBroker()), threshold=2, deadline=0.4) as nodes:
        first = await asyncio.gather(*(n.aggregate(on_grid(rng, (8,))) for n in nodes[:2]))
        assert all(r.round_id == 1 for r in first)
        evil = nodes[2]._transport
        await evil.publish(message_topic("fed-test", 11, "site-2", recipient="site-0"), b"x")
        await evil.publish(message_topic("fed-test", 21, "site-2", recipient="site-1"), b"x")
        await asyncio.sleep(0.05)
        second = await asyncio.gather(
            *(n.aggregate(on_grid(rng, (8,))) for n in nodes[:2]), return_exceptions=True
        )
    ids = [r.round_id for r in second if isinstance(r, AggregateResult | RoundAbortedError)]
    assert all(isinstance(r, AggregateResult) for r in second), (ids, second)


def test_equal_dp_settings_give_the_same_round_context() -> None:
    # _round_context hashed repr() of the DpSettings floats: DpSettings that compare equal
    # (2 == 2.0 == np.float64(2.0)) gave different contexts, so sites configured in code
    # (not through federation.toml, whose loader makes floats) aborted every round.
    from mpc_agg import dp  # noqa: PLC0415
    from peers.node import _round_context  # noqa: PLC0415

    def context(settings: dp.DpSettings) -> str:
        plan = dp.plan_round(
            settings, vector_length=100, frac_bits=20, min_sites=3, federation="f", round_id=1
        )
        return _round_context(plan, None, b"")  # default scale and threshold: no settings

    a = dp.DpSettings(noise_multiplier=2.0, clip_norm=1.0, delta=1e-5)
    b = dp.DpSettings(noise_multiplier=2, clip_norm=1, delta=1e-5)
    c = dp.DpSettings(noise_multiplier=np.float64(2.0), clip_norm=1.0, delta=1e-5)
    assert a == b == c
    assert context(a) == context(b) == context(c)
