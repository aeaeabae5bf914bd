"""Review of the concurrent publish path (peers/node.py ``_run`` / ``_perform``).

SPEC §7 ("Minimum counts and aborts"): on entering a phase a machine broadcasts its own
message first and only then replays the messages it buffered for that phase, so a peer
that aborts on a buffered message has still sent its own message of that phase (the
other peers then see its view and abort as well, §6.4). The node must therefore publish
every ``Broadcast``/``Send`` that precedes a ``RoundAborted`` in the machine's effects.

Fixed in ``PeerNode._run`` (publications flushed before an abort is raised; broadcasts
wait for earlier publications); kept as regressions.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import numpy as np
import pytest

from mpc_agg.envelope import parse_envelope
from mpc_agg.randomness import DeterministicRandomSource
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import PeerNode, RoundAbortedError
from peers.transport import PREFIX, Delivery, message_topic
from protocols.common import Broadcast, Effect
from protocols.harness import make_roster
from protocols.secagg.machine import SecAggMachine, SecAggParams
from protocols.secagg.messages import MessageKind, Phase

FEDERATION = "fed-review-abort"
D = 16


def _kind(data: bytes) -> MessageKind:
    return MessageKind(parse_envelope(data, max_payload=1 << 24).kind)


async def _next(deliveries: AsyncIterator[Delivery], timeout: float) -> Delivery | None:
    try:
        return await asyncio.wait_for(anext(deliveries), timeout)
    except TimeoutError:
        return None


@pytest.mark.asyncio
async def test_review_perf_a_view_broadcast_just_before_an_abort_is_published() -> None:
    """Site-0 (a PeerNode) holds site-1's differing view when it closes MASKED_INPUT.

    Its machine returns [PhaseStarted, Broadcast(ConsistencyCheck), RoundAborted]: the
    node must publish that ConsistencyCheck before raising (SPEC §7), as it did when
    publications were awaited one by one.
    """
    roster, keys = make_roster(3)
    broker = MemoryBroker()
    observer = MemoryTransport(broker, name="observer")
    peers = MemoryTransport(broker, name="peers-1-2")
    await observer.__aenter__()
    await peers.__aenter__()
    await observer.subscribe(f"{PREFIX}/{FEDERATION}/1/site-0")
    node = PeerNode(
        federation=FEDERATION,
        roster=roster,
        me=0,
        signing_key=keys[0],
        transport=MemoryTransport(broker, name="site-0"),
        deadlines=lambda _phase: 10.0,
        threshold=2,
    )
    params = SecAggParams(
        federation=FEDERATION,
        round_id=1,
        roster=roster,
        threshold=2,
        vector_length=D,
        ring_bits=node.codec.ring_bits,
        context=node.round_context(D),  # T = 2 of 3 is not the default: in the context
    )
    machines = {
        k: SecAggMachine(
            params, me=k, signing_key=keys[k], randomness=DeterministicRandomSource(f"r/{k}")
        )
        for k in (1, 2)
    }
    withheld: list[bytes] = []  # site-2's MaskedInput, held back from site-0 and site-1
    from_node: list[MessageKind] = []

    async def handle(sender: int, effects: list[Effect]) -> None:
        for effect in effects:
            if not isinstance(effect, Broadcast):
                continue
            if sender == 2 and _kind(effect.data) is MessageKind.MASKED_INPUT:
                withheld.append(effect.data)
                continue
            await peers.publish(message_topic(FEDERATION, 1, f"site-{sender}"), effect.data)
            other = 3 - sender
            await handle(other, machines[other].receive(sender, effect.data))

    async with node:
        round_task = asyncio.ensure_future(node.aggregate(np.zeros(D)))
        deliveries = observer.messages()
        for k in (1, 2):
            await handle(k, machines[k].begin(np.zeros(D, dtype=np.uint64)))
        # relay site-0's messages until site-1 holds site-0's MaskedInput
        while MessageKind.MASKED_INPUT not in from_node:
            delivery = await _next(deliveries, 5.0)
            assert delivery is not None, f"site-0 went quiet after {from_node}"
            from_node.append(_kind(bytes(delivery.payload)))
            for k in (1, 2):
                await handle(k, machines[k].receive(0, delivery.payload))
        assert withheld, "site-2's MaskedInput should have been held back"
        # site-1's MASKED_INPUT deadline: it freezes S = {0, 1} and broadcasts that view,
        # which site-0 (still waiting for site-2's input) buffers
        view_1 = machines[1].deadline(Phase.MASKED_INPUT)
        await handle(1, view_1)
        await asyncio.sleep(0.1)
        # site-2's input reaches site-0 at last: S = {0, 1, 2}, site-0 broadcasts its
        # view, replays site-1's and aborts on the difference
        await peers.publish(message_topic(FEDERATION, 1, "site-2"), withheld[0])
        with pytest.raises(RoundAbortedError, match="different view"):
            await asyncio.wait_for(round_task, 5.0)
        while (delivery := await _next(deliveries, 0.5)) is not None:
            from_node.append(_kind(bytes(delivery.payload)))
    for transport in (observer, peers):
        with contextlib.suppress(Exception):
            await transport.__aexit__(None, None, None)
    assert MessageKind.CONSISTENCY_CHECK in from_node, (
        f"site-0 published {[k.name for k in from_node]}: its ConsistencyCheck, emitted "
        "before its RoundAborted, was cancelled instead of published"
    )


ROBUST_FEDERATION = "fed-review-order"


@pytest.mark.asyncio
async def test_review_perf_robust_private_shares_go_out_before_the_broadcast_announcing_them() -> (
    None
):
    """robust SPEC §4.1: a phase's private sends go out before its broadcast.

    ``RobustMachine._enter``: "a broker keeps one publisher's order, so a holder has the
    share when the announcement arrives" — the runtime has to keep that order. With
    ``[hygiene] publish_jitter`` every publication now sleeps on its own and they race.
    """
    rng = np.random.default_rng(5)
    updates = [np.full(8, 0.25) * rng.choice([-1.0, 1.0], 8) for _ in range(4)]
    broker = MemoryBroker()
    observer = MemoryTransport(broker, name="observer")
    await observer.__aenter__()
    await observer.subscribe(f"{PREFIX}/{ROBUST_FEDERATION}/+/+/#")
    seen: list[tuple[str, MessageKind | int]] = []

    async def watch() -> None:
        async for delivery in observer.messages():
            site = delivery.topic.split("/")[4]
            kind = parse_envelope(delivery.payload, max_payload=1 << 24).kind
            seen.append((site, kind))

    watcher = asyncio.ensure_future(watch())
    roster, keys = make_roster(4)
    async with contextlib.AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                PeerNode(
                    federation=ROBUST_FEDERATION,
                    roster=roster,
                    me=i,
                    signing_key=keys[i],
                    transport=MemoryTransport(broker, name=f"site-{i}"),
                    deadlines=lambda _phase: 5.0,
                    protocol="robust",
                    max_norm=1.0,
                    publish_jitter=0.02,
                )
            )
            for i in range(4)
        ]
        await asyncio.gather(
            *(node.aggregate(u) for node, u in zip(nodes, updates, strict=True)),
            return_exceptions=True,
        )
    await observer.__aexit__(None, None, None)
    await watcher
    # robust kinds: DEAL_INPUT (2) announces the private INPUT_SHARE (3) messages,
    # DEAL_PROOF (5) the private PROOF_SHARE (6) messages
    out_of_order = []
    for site in (f"site-{i}" for i in range(4)):
        kinds = [k for s, k in seen if s == site]
        for broadcast, private in ((2, 3), (5, 6)):
            if broadcast in kinds and private in kinds:
                after = [k for k in kinds[kinds.index(broadcast) :] if k == private]
                if after:
                    out_of_order.append((site, broadcast, len(after)))
    assert not out_of_order, (
        f"(site, announcing broadcast kind, private shares published after it): {out_of_order}"
    )
