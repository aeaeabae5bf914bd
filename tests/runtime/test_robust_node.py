"""PeerNode running ``robust`` over the in-memory transport (SPEC §2.3 data path)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpc_agg.errors import EncodingError, ProtocolMisuseError
from mpc_agg.fixedpoint import FixedPointCodec
from peers.audit import AuditLog
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import AggregateResult, PeerNode, RoundPlan
from peers.transport import Transport
from protocols.harness import make_roster
from protocols.robust.harness import UncheckedDealer
from protocols.robust.machine import RobustMachine
from tests.runtime.nodes import FRAC_BITS, on_grid, run_round, running_nodes


def _memory(broker: MemoryBroker) -> Callable[[int], Transport]:
    return lambda i: MemoryTransport(broker, name=f"site-{i}")


def _unit_norm(rng: np.random.Generator, shape: tuple[int, ...], norm: float) -> np.ndarray:
    """Grid values (2^-20) with L2 norm ≤ ``norm``."""
    values = on_grid(rng, shape)
    scale = norm / max(float(np.linalg.norm(values)), 1e-12)
    return np.asarray(np.floor(values * scale * 2**FRAC_BITS) / 2**FRAC_BITS)


@pytest.mark.asyncio
async def test_five_sites_agree_on_the_exact_sum() -> None:
    rng = np.random.default_rng(61)
    updates = [_unit_norm(rng, (40, 5), 0.9) for _ in range(5)]
    async with running_nodes(5, _memory(MemoryBroker()), protocol="robust", max_norm=1.0) as nodes:
        results = await run_round(nodes, updates)
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert result.protocol == "robust/3"
        assert result.total.shape == (40, 5)
        assert np.array_equal(result.total, sum(updates))
        assert result.included == tuple(f"site-{i}" for i in range(5))
        assert result.excluded == {}
        assert {"ADVERTISE", "VERIFY", "OUTPUT", "CONFIRM"} <= set(result.timings)
    assert len({r.result_digest for r in results if isinstance(r, AggregateResult)}) == 1


@pytest.mark.asyncio
async def test_an_update_over_max_norm_is_refused_before_anything_is_sent() -> None:
    broker = MemoryBroker()
    async with running_nodes(3, _memory(broker), protocol="robust", max_norm=1.0) as nodes:
        with pytest.raises(EncodingError, match="exceeds the federation's max_norm 1"):
            await nodes[0].aggregate(np.full(10, 0.5))
        with pytest.raises(EncodingError, match="NaN"):
            await nodes[0].aggregate(np.array([0.1, np.nan]))
        assert nodes[0]._bytes_out_total() == 0


def test_robust_needs_max_norm_and_secagg_refuses_it() -> None:
    roster, keys = make_roster(3)
    common: dict[str, Any] = {
        "federation": "f",
        "roster": roster,
        "me": 0,
        "signing_key": keys[0],
        "transport": MemoryTransport(MemoryBroker()),
        "deadlines": lambda _p: 1.0,
    }
    with pytest.raises(ProtocolMisuseError, match="max_norm"):
        PeerNode(protocol="robust", **common)
    with pytest.raises(ProtocolMisuseError, match="max_norm"):
        PeerNode(protocol="secagg", max_norm=1.0, **common)
    assert PeerNode(protocol="robust", max_norm=1.0, **common).threshold == 1


def test_frac_bits_are_lowered_to_keep_the_bound_checkable() -> None:
    roster, keys = make_roster(3)
    node = PeerNode(
        federation="f",
        roster=roster,
        me=0,
        signing_key=keys[0],
        transport=MemoryTransport(MemoryBroker()),
        deadlines=lambda _p: 1.0,
        protocol="robust",
        max_norm=1.0,
    )
    assert node._round_codec(np.zeros(100)).frac_bits == 20
    assert node._round_codec(np.zeros(1_000_000)).frac_bits == 16
    with pytest.raises(EncodingError, match="too large to check"):
        PeerNode(
            federation="f",
            roster=roster,
            me=0,
            signing_key=keys[0],
            transport=MemoryTransport(MemoryBroker()),
            deadlines=lambda _p: 1.0,
            protocol="robust",
            max_norm=1e12,
        )._round_codec(np.zeros(10))


class PoisoningNode(PeerNode):
    """A site running modified code: no local norm check, a forged proof."""

    def _round_codec(self, array: np.ndarray) -> FixedPointCodec:
        honest = super()._round_codec(np.zeros(np.asarray(array).size))  # same frac_bits
        return FixedPointCodec(frac_bits=honest.frac_bits, n_peers=5, max_abs_value=100.0)

    def _plan_round(
        self, round_id: int, vector_length: int, codec: FixedPointCodec, context: str = ""
    ) -> RoundPlan:
        plan = super()._plan_round(round_id, vector_length, codec, context)
        machine = plan.machine
        assert isinstance(machine, RobustMachine)
        poisoned = UncheckedDealer(
            machine.params, me=self.me, signing_key=self._signing_key, randomness=self._rng
        )
        return RoundPlan(
            protocol=plan.protocol,
            machine=poisoned,
            threshold=plan.threshold,
            vector_length=plan.vector_length,
            byte_budget=plan.byte_budget,
            message_budget=plan.message_budget,
            codec=plan.codec,
            parameters=plan.parameters,
        )


@pytest.mark.asyncio
async def test_a_poisoned_update_is_excluded_in_the_result_and_the_audit_log(
    tmp_path: Path,
) -> None:
    rng = np.random.default_rng(62)
    updates = [_unit_norm(rng, (64,), 0.8) for _ in range(5)]
    updates[3] = np.full(64, 2.0)  # ‖·‖ = 16 with max_norm 1
    roster, keys = make_roster(5)
    broker = MemoryBroker()
    nodes = [
        (PoisoningNode if i == 3 else PeerNode)(
            federation="fed-test",
            roster=roster,
            me=i,
            signing_key=keys[i],
            transport=MemoryTransport(broker, name=f"site-{i}"),
            deadlines=lambda _p: 5.0,
            frac_bits=FRAC_BITS,
            protocol="robust",
            max_norm=1.0,
            audit=AuditLog(tmp_path / f"site-{i}.jsonl", signing_key=keys[i]),
        )
        for i in range(5)
    ]
    for node in nodes:
        await node.__aenter__()
    try:
        results = await run_round(nodes, updates)
    finally:
        for node in nodes:
            await node.__aexit__(None, None, None)
    honest = [results[i] for i in (0, 1, 2, 4)]
    for result in honest:
        assert isinstance(result, AggregateResult), result
        assert result.included == ("site-0", "site-1", "site-2", "site-4")
        assert result.excluded["site-3"].startswith("input failed the validity check")
        assert np.array_equal(result.total, updates[0] + updates[1] + updates[2] + updates[4])
    lines = (tmp_path / "site-0.jsonl").read_text().splitlines()
    record = json.loads(lines[-1])["record"]
    assert record["protocol"] == "robust/3"
    assert record["excluded"]["site-3"].startswith("input failed the validity check")
    assert record["parameters"]["max_norm"] == 1.0
    assert record["parameters"]["norm_bound"] == (1 << FRAC_BITS) + 1 + 8  # ⌈C(1+2^-30)2^f⌉ + ⌈√64⌉


@pytest.mark.asyncio
async def test_an_update_clipped_to_exactly_max_norm_passes_despite_float_rounding() -> None:
    rng = np.random.default_rng(0)
    for _ in range(1000):  # find a unit vector whose computed norm rounds above 1
        candidate = rng.normal(0.0, 1.0, 300)
        candidate = candidate / np.linalg.norm(candidate)
        if float(np.linalg.norm(candidate)) > 1.0:
            break
    else:
        pytest.skip("no vector with a norm that rounds above 1 found")
    updates = [candidate, *(_unit_norm(rng, (300,), 0.5) for _ in range(2))]
    async with running_nodes(3, _memory(MemoryBroker()), protocol="robust", max_norm=1.0) as nodes:
        results = await run_round(nodes, updates)
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert np.max(np.abs(result.total - sum(updates))) < 3 * 2.0**-FRAC_BITS
