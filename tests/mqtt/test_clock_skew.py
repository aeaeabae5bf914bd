"""Clock skew on deadlines (issue 8 §1): sites whose timers run fast or slow.

Deadlines are durations on each site's own monotonic clock, so a wall-clock offset
changes nothing; what can differ is the *rate* (a site that fires its deadlines early or
late, e.g. a mis-set configuration or a throttled VM). Over Mosquitto: a site with
deadlines 10× shorter than the others' either keeps up or leaves the round with a reason,
the others' results stay exact, and a round with equal deadlines then succeeds.
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack

import numpy as np
import pytest

from peers.mqtt import MqttTransport
from peers.node import AggregateResult, PeerNode, RoundAbortedError
from peers.transport import presence_topic
from protocols.harness import make_roster
from tests.runtime.nodes import FRAC_BITS, on_grid, run_round


@pytest.mark.asyncio
@pytest.mark.parametrize("fast", [0.02, 0.3])
async def test_a_site_with_fast_deadlines_is_exact_or_aborts_with_a_reason(fast: float) -> None:
    federation = f"fed-{os.urandom(4).hex()}"
    tag = os.urandom(3).hex()
    roster, keys = make_roster(4)
    scale = [1.0, 1.0, 1.0, fast]  # site-3's timers run fast
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                PeerNode(
                    federation=federation,
                    roster=roster,
                    me=i,
                    signing_key=keys[i],
                    transport=MqttTransport(
                        host="127.0.0.1",
                        port=1883,
                        client_id=f"{federation}-{i}-{tag}",
                        presence_topic=presence_topic(federation, f"site-{i}"),
                    ),
                    deadlines=lambda _phase, s=scale[i]: 3.0 * s,  # type: ignore[misc]
                    frac_bits=FRAC_BITS,
                    join_timeout=5.0,
                )
            )
            for i in range(4)
        ]
        rng = np.random.default_rng(11)
        updates = [on_grid(rng, (20_000,)) for _ in range(4)]
        results = await run_round(nodes, updates)
        for result in results:
            if isinstance(result, AggregateResult):
                included = [int(n.split("-")[1]) for n in result.included]
                assert np.array_equal(result.total, sum(updates[k] for k in included))
            else:
                assert isinstance(result, RoundAbortedError), repr(result)
                assert result.reason
        for k in range(3):
            # T = 3: the three on time agree, with or without site-3, or abort because
            # site-3's view, frozen at its early deadline, differs from theirs (SPEC §7)
            if not isinstance(results[k], AggregateResult):
                assert "different view" in str(results[k]), results[k]
        nodes[3]._deadline = lambda _phase: 3.0  # the clock is fixed
        after = [on_grid(rng, (20_000,)) for _ in range(4)]
        again = await run_round(nodes, after)
    for result in again:
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(after))
