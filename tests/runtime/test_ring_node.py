"""PeerNode picks the round's ring (SPEC §2.1): Z_2^32 when the headroom bound fits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from mpc_agg.errors import EncodingError, ProtocolMisuseError
from peers.audit import AuditLog
from peers.memory import MemoryBroker
from peers.node import AggregateResult, PeerNode
from protocols.harness import make_roster
from tests.dp_support import dp_settings
from tests.dp_support import memory as _memory
from tests.runtime.nodes import on_grid, run_round, running_nodes


@pytest.mark.asyncio
async def test_the_default_encoding_sums_in_z_2_32_and_sends_half_the_bytes(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(1)
    d = 20_000
    updates = [on_grid(rng, (d,)) for _ in range(3)]
    logs = [tmp_path / f"{i}.jsonl" for i in range(3)]
    async with running_nodes(
        3, _memory(MemoryBroker()), audit=lambda i: AuditLog(logs[i])
    ) as nodes:
        assert [node.codec.ring_bits for node in nodes] == [32] * 3
        results = await run_round(nodes, updates)
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert np.array_equal(result.total, sum(updates))
        assert 4 * d < result.bytes_out < 5 * d  # one masked input, 4 bytes an entry
    record = json.loads(logs[0].read_text().splitlines()[-1])["record"]
    assert record["parameters"]["ring_bits"] == 32


@pytest.mark.asyncio
async def test_a_sum_near_the_bound_of_z_2_32_is_exact() -> None:
    # max_abs_value 1, frac_bits 20, n = 3: every entry ±1 sums to ±3·2^20 < 2^31
    updates = [np.full(64, 1.0), np.full(64, 1.0), np.full(64, 1.0)]
    async with running_nodes(3, _memory(MemoryBroker())) as nodes:
        results = await run_round(nodes, updates)
        results += await run_round(nodes, [-u for u in updates])
    totals = [r.total for r in results if isinstance(r, AggregateResult)]
    assert len(totals) == 6
    assert all(np.array_equal(t, np.full(64, 3.0)) for t in totals[:3])
    assert all(np.array_equal(t, np.full(64, -3.0)) for t in totals[3:])


@pytest.mark.asyncio
async def test_an_entry_above_max_abs_value_is_refused_not_wrapped() -> None:
    async with running_nodes(3, _memory(MemoryBroker()), deadline=0.5) as nodes:
        with pytest.raises(EncodingError, match="max_abs_value"):
            await nodes[0].aggregate(np.full(8, 2.0))


def test_dp_keeps_the_64_bit_ring_and_refuses_an_explicit_32() -> None:
    roster, keys = make_roster(3)
    common = {
        "federation": "f",
        "roster": roster,
        "me": 0,
        "signing_key": keys[0],
        "transport": _memory(MemoryBroker())(0),
        "deadlines": lambda _phase: 1.0,
    }
    privacy = dp_settings(noise_multiplier=1.0, clip_norm=1.0)
    assert PeerNode(**common, privacy=privacy).codec.ring_bits == 64  # type: ignore[arg-type]
    assert PeerNode(**common, ring_bits=64).codec.ring_bits == 64  # type: ignore[arg-type]
    with pytest.raises(ProtocolMisuseError, match="ring_bits = 32"):
        PeerNode(**common, privacy=privacy, ring_bits=32)  # type: ignore[arg-type]
    # frac_bits 30 does not fit Z_2^32 with n = 3: the node picks 64 by itself
    assert PeerNode(**common, frac_bits=30).codec.ring_bits == 64  # type: ignore[arg-type]
