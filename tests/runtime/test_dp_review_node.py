"""Review of the DP runtime (peers/node.py, mpc_agg/DP.md §4.2, §5.2): ledger and audit log.

Written by an adversarial review; every finding here was fixed and is now a regression test.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from mpc_agg import dp
from mpc_agg.errors import EncodingError
from peers.audit import AuditLog
from peers.config import load_site
from peers.init import init_federation
from peers.memory import MemoryBroker
from peers.node import AggregateResult, PeerNode, _privacy_history
from peers.transport import message_topic
from tests.dp_support import dp_settings as _settings
from tests.dp_support import memory as _memory
from tests.runtime.nodes import run_round, running_nodes


def _spy(broker: MemoryBroker) -> list[str]:
    seen: list[str] = []
    route = broker.route

    def spy(topic: str, payload: bytes) -> None:
        seen.append(topic)
        route(topic, payload)

    broker.route = spy  # type: ignore[method-assign]
    return seen


@pytest.mark.asyncio
async def test_a_cancelled_round_that_published_stays_charged_after_a_restart(
    tmp_path: Path,
) -> None:
    broker = MemoryBroker()
    seen = _spy(broker)
    log = tmp_path / "audit-0.jsonl"
    async with running_nodes(
        2,
        _memory(broker),
        threshold=2,
        deadline=30.0,
        privacy=_settings(),
        audit=lambda i: AuditLog(log) if i == 0 else None,
    ) as nodes:
        # Only site-0 starts the round: it publishes, then waits for site-1 (which never comes).
        task = asyncio.create_task(nodes[0].aggregate(np.full(20, 0.01)))
        round_topic = message_topic("fed-test", 1, "site-0")
        for _ in range(200):
            if round_topic in seen:
                break
            await asyncio.sleep(0.01)
        assert round_topic in seen, seen  # the round's first message is out
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert nodes[0].accountant is not None
        assert nodes[0].accountant.rounds == 1  # charged in memory …
    # … but what PeerNode.from_config reads back after a restart:
    history = _privacy_history(AuditLog(log), "fed-test")
    assert len(history) == 1


@pytest.mark.asyncio
async def test_the_audit_log_holds_no_noise_free_bit_of_the_update(tmp_path: Path) -> None:
    logs = [tmp_path / f"audit-{i}.jsonl" for i in range(3)]
    async with running_nodes(
        3, _memory(MemoryBroker()), privacy=_settings(), audit=lambda i: AuditLog(logs[i])
    ) as nodes:
        results = await run_round(nodes, [np.full(50, 10.0), np.zeros(50), np.zeros(50)])
    assert all(isinstance(r, AggregateResult) for r in results), results
    records = [json.loads(p.read_text().splitlines()[-1])["record"] for p in logs]
    # Site 0's update was far over the clip, the others' were not: the log tells them apart.
    assert len({json.dumps(r["privacy"].get("clipped")) for r in records}) == 1


@pytest.mark.asyncio
async def test_refused_and_foreign_records_cost_nothing_and_real_ones_are_read_back(
    tmp_path: Path,
) -> None:
    """Correct behaviour: the ledger read-back counts only this federation's charged rounds."""
    log = AuditLog(tmp_path / "a.jsonl")
    cost = dp.plan_round(
        _settings(), vector_length=10, frac_bits=16, min_sites=2, federation="f", round_id=1
    ).cost
    log.append({"protocol": "p", "federation": "f", "round": 1, "outcome": "refused"})
    log.append(
        {"protocol": "p", "federation": "g", "round": 1, "privacy": {"cost": cost.to_json()}}
    )
    log.append(
        {"protocol": "p", "federation": "f", "round": 2, "privacy": {"cost": cost.to_json()}}
    )
    assert _privacy_history(AuditLog(tmp_path / "a.jsonl"), "f") == (cost,)


def test_a_malformed_privacy_field_is_not_skipped_silently(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "a.jsonl")
    log.append({"protocol": "p", "federation": "f", "round": 1, "privacy": "charged"})
    with pytest.raises(Exception, match="privacy"):
        _privacy_history(AuditLog(tmp_path / "a.jsonl"), "f")


def test_a_rotated_update_fits_the_receivers_message_limit(tmp_path: Path) -> None:
    """Padding past max_vector_length is refused before anything is planned or sent."""
    settings = _settings(rotation=True)
    federation_file = init_federation(tmp_path, sites=3, dp=settings)
    text = federation_file.read_text()
    federation_file.write_text(
        text.replace("max_vector_length = 100000000", "max_vector_length = 3000000")
    )
    site = load_site(tmp_path / "sites" / "site-0.toml")
    node = PeerNode.from_config(site)  # builds its MqttTransport; does not connect
    length = 2_500_000  # ≤ max_vector_length, but the rotation pads it to 2^22
    assert length <= node.max_vector_length
    with pytest.raises(EncodingError, match="pads the update's 2500000 entries to 4194304"):
        node._plan_privacy(1, length)
    assert node.accountant is not None
    assert node.accountant.rounds == 0
    fitting = node._plan_privacy(1, 2_000_000)
    assert fitting is not None
    reassembler = getattr(node._transport, "_reassembler")  # noqa: B009
    assert 8 * fitting.dimension <= reassembler.max_message_bytes
