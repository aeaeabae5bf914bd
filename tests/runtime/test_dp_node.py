"""PeerNode with distributed DP over the in-memory transport (mpc_agg/DP.md §2, §4, §5)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from mpc_agg import dp
from mpc_agg.errors import ProtocolMisuseError
from peers.audit import AuditLog
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import AggregateResult, PeerNode, _privacy_history
from protocols.harness import make_roster
from tests.dp_support import DELTA
from tests.dp_support import dp_settings as _settings
from tests.dp_support import memory as _memory
from tests.runtime.nodes import run_round, running_nodes


@pytest.mark.asyncio
async def test_sites_agree_on_a_noisy_sum_and_report_epsilon() -> None:
    rng = np.random.default_rng(1)
    n, d = 4, 3000
    updates = [rng.normal(size=(d,)) * 0.01 for _ in range(n)]
    settings = _settings(noise_multiplier=0.5)
    async with running_nodes(n, _memory(MemoryBroker()), threshold=3, privacy=settings) as nodes:
        results = await run_round(nodes, updates)
    totals = []
    for result in results:
        assert isinstance(result, AggregateResult), result
        privacy = result.privacy
        assert privacy is not None
        assert privacy.mechanism == "discrete_gaussian"
        assert privacy.min_sites == 3
        assert privacy.epsilon_spent == privacy.epsilon_round > 0
        assert not privacy.clipped
        totals.append(result.total)
    # Every site gets the same noisy sum; the noise has σ = z·C·√(n/T) in float units.
    assert all(np.array_equal(totals[0], t) for t in totals)
    error = totals[0] - sum(updates)
    expected = 0.5 * 1.0 * math.sqrt(n / 3)
    assert abs(error.std() / expected - 1) < 0.1


@pytest.mark.asyncio
async def test_epsilon_accumulates_over_rounds_and_survives_a_restart(tmp_path: Path) -> None:
    settings = _settings(noise_multiplier=2.0)
    broker = MemoryBroker()
    logs = [tmp_path / f"audit-{i}.jsonl" for i in range(3)]
    spent = []
    async with running_nodes(
        3, _memory(broker), privacy=settings, audit=lambda i: AuditLog(logs[i])
    ) as nodes:
        for _ in range(3):
            results = await run_round(nodes, [np.full(50, 0.01)] * 3)
            assert isinstance(results[0], AggregateResult)
            assert results[0].privacy is not None
            spent.append(results[0].privacy.epsilon_spent)
    assert spent[0] < spent[1] < spent[2]
    record = json.loads(logs[0].read_text().splitlines()[-1])["record"]
    assert record["privacy"]["epsilon_spent"] == spent[2]
    assert record["privacy"]["mechanism"] == "discrete_gaussian"
    assert record["privacy"]["cost"]["rho"] > 0
    # What from_config reads back: the ledger continues where it was.
    history = _privacy_history(AuditLog(logs[0]), "fed-test")
    assert len(history) == 3
    assert dp.PrivacyAccountant(delta=DELTA, history=history).epsilon() == spent[2]


@pytest.mark.asyncio
async def test_a_round_over_budget_is_refused_and_nothing_leaves_the_site(tmp_path: Path) -> None:
    settings = _settings(noise_multiplier=2.0)
    one_round = dp.PrivacyAccountant(delta=DELTA).epsilon(
        [
            dp.plan_round(
                settings, vector_length=20, frac_bits=20, min_sites=2, federation="f", round_id=1
            ).cost
        ]
    )
    settings = _settings(noise_multiplier=2.0, epsilon_budget=one_round * 1.2)
    broker = MemoryBroker()
    seen: list[str] = []
    route = broker.route

    def spy(topic: str, payload: bytes) -> None:
        seen.append(topic)
        route(topic, payload)

    broker.route = spy  # type: ignore[method-assign]
    log = tmp_path / "audit-0.jsonl"
    async with running_nodes(
        2,
        _memory(broker),
        privacy=settings,
        audit=lambda i: AuditLog(log) if i == 0 else None,
    ) as nodes:
        results = await run_round(nodes, [np.full(20, 0.01)] * 2)
        assert all(isinstance(r, AggregateResult) for r in results)
        before = len(seen)
        sent_before = nodes[0]._bytes_out_total()
        with pytest.raises(dp.PrivacyBudgetExceededError, match="over the federation's budget"):
            await nodes[0].aggregate(np.full(20, 0.01))
        assert nodes[0]._bytes_out_total() == sent_before
        assert len(seen) == before  # not one message, to anyone
    last = json.loads(log.read_text().splitlines()[-1])["record"]
    assert last["outcome"] == "refused"
    assert "Nothing was sent" in last["reason"]
    assert "privacy" not in last  # a refused round costs nothing


@pytest.mark.asyncio
async def test_local_dp_and_skellam_modes_run() -> None:
    for settings in (_settings(local=True), _settings(mechanism=dp.Mechanism.SKELLAM)):
        async with running_nodes(3, _memory(MemoryBroker()), privacy=settings) as nodes:
            results = await run_round(nodes, [np.full((5, 4), 0.1)] * 3)
        result = results[0]
        assert isinstance(result, AggregateResult), result
        assert result.total.shape == (5, 4)
        assert result.privacy is not None
        assert result.privacy.mechanism == settings.mechanism.value
        assert result.privacy.min_sites == (1 if settings.local else nodes[0].threshold)


@pytest.mark.asyncio
async def test_rotation_pads_on_the_wire_and_returns_the_original_shape() -> None:
    settings = _settings(rotation=True, noise_multiplier=0.05, clip_norm=10.0)
    updates = [np.full((3, 7), 0.2 * (i + 1)) for i in range(3)]
    async with running_nodes(3, _memory(MemoryBroker()), privacy=settings) as nodes:
        results = await run_round(nodes, updates)
    result = results[0]
    assert isinstance(result, AggregateResult), result
    assert result.total.shape == (3, 7)
    assert np.allclose(result.total, sum(updates), atol=2.0)


def test_dp_is_refused_with_robust() -> None:
    roster, keys = make_roster(3)
    with pytest.raises(ProtocolMisuseError, match="secagg only"):
        PeerNode(
            federation="f",
            roster=roster,
            me=0,
            signing_key=keys[0],
            transport=MemoryTransport(MemoryBroker()),
            deadlines=lambda _p: 1.0,
            protocol="robust",
            max_norm=1.0,
            privacy=_settings(),
        )
