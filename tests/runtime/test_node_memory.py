"""PeerNode over the in-memory transport: results, round routing, errors, faults."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import numpy as np
import pytest

from mpc_agg.errors import EncodingError, ProtocolMisuseError
from peers.memory import MemoryBroker, MemoryFaults, MemoryTransport
from peers.node import AggregateResult, RoundAbortedError
from peers.transport import Transport, message_topic
from protocols.common import Roster, RosterEntry
from protocols.harness import make_roster
from tests.runtime.nodes import background_peers, on_grid, run_round, running_nodes


def _memory(broker: MemoryBroker) -> Callable[[int], Transport]:
    return lambda i: MemoryTransport(broker, name=f"site-{i}")


@pytest.mark.asyncio
async def test_four_sites_get_the_exact_sum_in_the_update_shape() -> None:
    rng = np.random.default_rng(1)
    updates = [on_grid(rng, (30, 7)) for _ in range(4)]
    async with running_nodes(4, _memory(MemoryBroker())) as nodes:
        results = await run_round(nodes, updates)
    expected = sum(updates)
    for result in results:
        assert isinstance(result, AggregateResult)
        assert result.total.shape == (30, 7)
        assert np.array_equal(result.total, expected)
        assert result.count == 4
        assert result.included == ("site-0", "site-1", "site-2", "site-3")
        assert result.dropped == {}
        assert result.round_id == 1
        assert result.bytes_out > 30 * 7 * 8
        assert set(result.timings) >= {"ADVERTISE_KEYS", "UNMASK", "CONFIRM_RESULT"}
        assert np.array_equal(result.mean, expected / 4)
    assert len({r.result_digest for r in results if isinstance(r, AggregateResult)}) == 1


@pytest.mark.asyncio
async def test_consecutive_rounds_and_a_late_starter() -> None:
    rng = np.random.default_rng(2)
    async with running_nodes(3, _memory(MemoryBroker()), threshold=2) as nodes:
        first = await run_round(nodes, [on_grid(rng, (50,)) for _ in range(3)])
        assert all(isinstance(r, AggregateResult) and r.round_id == 1 for r in first)
        updates = [on_grid(rng, (50,)) for _ in range(3)]
        early = [
            asyncio.ensure_future(n.aggregate(u))
            for n, u in zip(nodes[:2], updates[:2], strict=True)
        ]
        await asyncio.sleep(0.05)  # site-2 starts round 2 late: its peers' messages wait for it
        late = await nodes[2].aggregate(updates[2])
        results = [*(await asyncio.gather(*early)), late]
    for result in results:
        assert result.round_id == 2
        assert np.array_equal(result.total, sum(updates))


@pytest.mark.asyncio
async def test_a_site_that_never_joins_is_dropped_after_the_deadline() -> None:
    rng = np.random.default_rng(3)
    updates = [on_grid(rng, (40,)) for _ in range(4)]
    async with running_nodes(4, _memory(MemoryBroker()), threshold=3, deadline=0.3) as nodes:
        results = await run_round(nodes[:3], updates[:3])
    for result in results:
        assert isinstance(result, AggregateResult)
        assert result.included == ("site-0", "site-1", "site-2")
        assert result.dropped == {"site-3": "no AdvertiseKeys before the deadline"}
        assert np.array_equal(result.total, sum(updates[:3]))


@pytest.mark.asyncio
async def test_too_few_sites_abort_with_a_reason() -> None:
    rng = np.random.default_rng(4)
    async with running_nodes(4, _memory(MemoryBroker()), threshold=3, deadline=0.2) as nodes:
        results = await run_round(nodes[:2], [on_grid(rng, (10,)) for _ in range(2)])
    for result in results:
        assert isinstance(result, RoundAbortedError)
        assert "only 2 of 4 peers advertised keys" in str(result)
        assert "threshold T=3" in str(result)


@pytest.mark.asyncio
async def test_a_second_concurrent_round_is_refused() -> None:
    async with running_nodes(3, _memory(MemoryBroker()), deadline=0.2) as nodes:
        running = asyncio.ensure_future(nodes[0].aggregate(np.zeros(5)))
        await asyncio.sleep(0.01)
        with pytest.raises(ProtocolMisuseError, match="still running"):
            await nodes[0].aggregate(np.zeros(5))
        with pytest.raises(RoundAbortedError):
            await running
        with pytest.raises(ProtocolMisuseError, match="never reused"):
            await nodes[0].aggregate(np.zeros(5), round_id=1)


@pytest.mark.asyncio
async def test_nan_is_refused_before_anything_is_sent() -> None:
    broker = MemoryBroker()
    transports: list[MemoryTransport] = []

    def make(i: int) -> MemoryTransport:
        transports.append(MemoryTransport(broker, name=f"site-{i}"))
        return transports[-1]

    async with running_nodes(3, make) as nodes:
        with pytest.raises(EncodingError, match="NaN/inf"):
            await nodes[0].aggregate(np.array([0.1, np.nan]))
        with pytest.raises(EncodingError, match="max_abs_value"):
            await nodes[0].aggregate(np.array([0.1, 7.0]))
    assert transports[0].bytes_out == 0


@pytest.mark.asyncio
async def test_a_site_with_a_different_shape_is_not_heard_and_says_why() -> None:
    """The length is bound into every envelope (SPEC §2.1): a site with another one is
    dealt no shares and heard by nobody, so the round cannot split around it."""
    rng = np.random.default_rng(5)
    updates = [on_grid(rng, (20,)) for _ in range(3)] + [on_grid(rng, (21,))]
    async with running_nodes(4, _memory(MemoryBroker()), threshold=3, deadline=0.5) as nodes:
        results = await run_round(nodes, updates)
    for result in results[:3]:
        assert isinstance(result, AggregateResult)
        assert result.dropped == {"site-3": "no AdvertiseKeys before the deadline"}
        assert result.ignored["not for this federation"] >= 1
        assert np.array_equal(result.total, sum(updates[:3]))
    failed = results[3]
    assert isinstance(failed, RoundAbortedError)
    assert "ignored messages: not for this federation" in str(failed)


@pytest.mark.asyncio
async def test_a_site_with_another_roster_is_not_heard_and_says_why() -> None:
    rng = np.random.default_rng(6)
    roster, _ = make_roster(4)
    renamed = (RosterEntry(name="site-zero", verify_key=roster.entries[0].verify_key),)
    other_roster = Roster(renamed + roster.entries[1:])  # same keys, one name differs
    updates = [on_grid(rng, (10,)) for _ in range(4)]
    async with running_nodes(4, _memory(MemoryBroker()), threshold=3, deadline=0.3) as nodes:
        nodes[3].roster = other_roster  # a misconfigured site: a different roster file
        results = await run_round(nodes, updates)
    for result in results[:3]:
        assert isinstance(result, AggregateResult)
        assert result.dropped == {"site-3": "no AdvertiseKeys before the deadline"}
        assert result.ignored["not for this federation"] >= 1
    failed = results[3]
    assert isinstance(failed, RoundAbortedError)
    assert "ignored messages: not for this federation" in str(failed)


@pytest.mark.asyncio
async def test_duplicates_delays_and_reordering_give_the_exact_sum() -> None:
    rng = np.random.default_rng(7)
    updates = [on_grid(rng, (64,)) for _ in range(5)]
    broker = MemoryBroker(MemoryFaults(duplicate=0.3, delay=(0.0, 0.02), seed=3))
    async with running_nodes(5, _memory(broker), threshold=3, deadline=2.0) as nodes:
        results = await run_round(nodes, updates)
    for result in results:
        assert isinstance(result, AggregateResult)
        assert np.array_equal(result.total, sum(updates))


@pytest.mark.asyncio
async def test_tampering_gives_a_correct_sum_or_an_abort_never_a_wrong_sum() -> None:
    rng = np.random.default_rng(8)
    updates = [on_grid(rng, (16,)) for _ in range(4)]
    broker = MemoryBroker(MemoryFaults(tamper=0.05, seed=11))
    async with running_nodes(4, _memory(broker), threshold=3, deadline=0.3) as nodes:
        results = await run_round(nodes, updates)
    for result in results:
        if isinstance(result, AggregateResult):
            included = [int(name.split("-")[1]) for name in result.included]
            assert np.array_equal(result.total, sum(updates[i] for i in included))
        else:
            assert isinstance(result, RoundAbortedError)


@pytest.mark.asyncio
async def test_the_node_lets_go_of_an_update_once_it_is_encoded() -> None:
    # mpc-agg aggregate hands its input over and keeps no reference: the node must not
    # keep one either, or the input stays in memory for the whole round (peak RSS at d = 10^8)
    import gc  # noqa: PLC0415 - only here
    import weakref  # noqa: PLC0415

    rng = np.random.default_rng(9)
    updates = [on_grid(rng, (64,)) for _ in range(2)]
    expected = sum(updates)
    released = asyncio.Event()
    async with running_nodes(2, _memory(MemoryBroker()), threshold=2) as nodes:
        handed = updates.pop(0)
        weakref.finalize(handed, released.set)
        first = asyncio.ensure_future(nodes[0].aggregate(handed))
        del handed
        # site-1 has not started: site-0's round is waiting, with its input encoded
        await asyncio.sleep(0.05)
        gc.collect()
        assert released.is_set(), "the node still holds the update during the round"
        second = await nodes[1].aggregate(updates.pop(0))
        result = await first
    assert np.array_equal(result.total, expected)
    assert np.array_equal(second.total, expected)


def test_a_background_peer_lets_go_of_an_update_once_it_is_encoded() -> None:
    # BackgroundPeer.aggregate blocks its caller's thread for the round: its frame must not
    # keep the update either (a synchronous caller that hands it over frees it)
    import threading  # noqa: PLC0415 - only here
    import weakref  # noqa: PLC0415

    rng = np.random.default_rng(10)
    updates = [on_grid(rng, (48,)) for _ in range(2)]
    expected = sum(updates)
    released = threading.Event()
    results: list[AggregateResult] = []
    with background_peers(2, threshold=2, federation="fed-handover") as (first, second):
        handed = updates.pop(0)
        weakref.finalize(handed, released.set)
        holder = [handed]
        del handed
        thread = threading.Thread(target=lambda: results.append(first.aggregate(holder.pop())))
        thread.start()
        # site-1 has not started: site-0's round waits, with its input encoded
        assert released.wait(5.0), "the background peer still holds the update"
        results.append(second.aggregate(updates.pop(0)))
        thread.join(30)
    assert len(results) == 2
    for result in results:
        assert np.array_equal(result.total, expected)


@pytest.mark.asyncio
async def test_sites_whose_round_ids_drifted_apart_are_told_so_when_the_round_aborts() -> None:
    # site-0 once ran a round the others did not take part in (alone: it aborted), so by
    # default it is a round ahead of them from then on; each abort says why and how to
    # realign, and the sites agree again on the suggested round id.
    rng = np.random.default_rng(9)
    async with running_nodes(3, _memory(MemoryBroker()), threshold=3, deadline=0.6) as nodes:
        with pytest.raises(RoundAbortedError):
            await nodes[0].aggregate(on_grid(rng, (20,)))  # round 1, alone
        results = await run_round(nodes, [on_grid(rng, (20,)) for _ in range(3)])
        ahead, *behind = results
        assert isinstance(ahead, RoundAbortedError)
        assert ahead.round_id == 2
        assert "the latest messages of site-1 (round 1), site-2 (round 1) are for another" in str(
            ahead
        )
        assert "give every site the same round id (`--round 3`" in str(ahead)
        for result in behind:
            assert isinstance(result, RoundAbortedError)
            assert result.round_id == 1
            assert "the latest messages of site-0 (round 2) are for another round than 1" in (
                str(result)
            )
        updates = [on_grid(rng, (20,)) for _ in range(3)]
        again = await asyncio.gather(
            *(n.aggregate(u, round_id=3) for n, u in zip(nodes, updates, strict=True))
        )
    assert all(r.round_id == 3 and np.array_equal(r.total, sum(updates)) for r in again)


@pytest.mark.asyncio
async def test_an_abort_of_sites_in_the_same_round_does_not_blame_round_ids() -> None:
    rng = np.random.default_rng(10)
    async with running_nodes(3, _memory(MemoryBroker()), threshold=3, deadline=0.6) as nodes:
        results = await run_round(nodes[:2], [on_grid(rng, (20,)) for _ in range(2)])
    for result in results:
        assert isinstance(result, RoundAbortedError)
        assert "round ids differ" not in str(result)


@pytest.mark.asyncio
async def test_sites_with_different_update_lengths_are_told_why_the_round_aborts() -> None:
    rng = np.random.default_rng(11)
    async with running_nodes(3, _memory(MemoryBroker()), threshold=3, deadline=0.6) as nodes:
        shapes = [(6,), (10,), (10,)]
        results = await run_round(nodes, [on_grid(rng, shape) for shape in shapes])
    for result in results:
        assert isinstance(result, RoundAbortedError)
        assert "the sites' round parameters differ: update length" in str(result)
    assert "e.g. protocol 'secagg/4 b32 L6' is not 'secagg/4 b32 L10'" in str(results[1])


@pytest.mark.asyncio
async def test_a_forged_far_round_id_is_never_suggested() -> None:
    # The round id in a topic is read before any signature: one junk message claiming a
    # round near 2^64 must not make the abort suggest it (following the advice would use
    # up the site's round ids for good). Nearby drifts are still quoted.
    broker = MemoryBroker()
    rng = np.random.default_rng(12)
    async with running_nodes(3, _memory(broker), threshold=3, deadline=0.4) as nodes:
        junk = MemoryTransport(broker, name="junk")
        async with junk:
            await junk.publish(message_topic("fed-test", 2**64 - 3, "site-2"), b"junk")
            await junk.publish(message_topic("fed-test", 3, "site-1"), b"junk")
            with pytest.raises(RoundAbortedError) as caught:
                await nodes[0].aggregate(on_grid(rng, (5,)))
    message = str(caught.value)
    assert str(2**64 - 3) not in message
    assert str(2**64 - 2) not in message
    assert "site-1 (round 3)" in message
    assert "`--round 4`" in message
