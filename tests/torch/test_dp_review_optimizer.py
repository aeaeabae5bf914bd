"""Review of SecureAggOptimizer's DP checks and reporting (mpc_agg/DP.md §5.3).

Written by an adversarial review; both findings were fixed and are regression tests.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest
import torch

from mpc_agg import dp
from mpc_agg.torch import SecureAggOptimizer
from tests.runtime.nodes import running_nodes
from tests.torch.test_optimizer import loss_of, make_model, memory_transports, site_batches


class _ExampleUnitPeer:
    """An aggregator whose federation protects examples (``[dp] unit = "example"``)."""

    privacy = dp.DpSettings(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5, unit=dp.Unit.EXAMPLE)

    def __init__(self) -> None:
        self.sent: list[np.ndarray] = []

    def aggregate(self, update: np.ndarray) -> Any:
        self.sent.append(update)
        return type("R", (), {"total": update, "count": 1, "privacy": None})()


def test_an_example_unit_federation_is_never_fed_an_unclipped_gradient() -> None:
    model = make_model()
    peer = _ExampleUnitPeer()
    opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), peer)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(50.0)  # large gradients
    loss_of(model, site_batches(0, 1)[0]).backward()  # plain backward(): no per-example clip
    with pytest.raises(ValueError, match="example"):
        opt.step()
    # What happened instead: the whole-batch gradient left, far above the clip 0.5.
    assert not peer.sent or float(np.linalg.norm(peer.sent[0])) <= 0.5


@pytest.mark.asyncio
async def test_optimizer_epsilon_includes_rounds_that_failed_after_sending() -> None:
    settings = dp.DpSettings(noise_multiplier=1.0, clip_norm=0.5, delta=1e-5)
    models = [make_model() for _ in range(3)]
    async with running_nodes(3, memory_transports(), privacy=settings, deadline=0.5) as nodes:
        opts = [
            SecureAggOptimizer(
                torch.optim.SGD(m.parameters(), lr=0.05),
                node,
                max_grad_norm=0.5,
                noise_multiplier=1.0,
                on_failure="skip",
            )
            for m, node in zip(models, nodes, strict=True)
        ]
        batch = site_batches(0, 1)[0]

        async def step(k: int) -> None:
            opts[k].zero_grad()
            loss_of(models[k], batch).backward()
            await opts[k].astep()

        await asyncio.gather(*(step(k) for k in range(3)))  # round 1: everyone
        await asyncio.gather(step(0), step(1))  # round 2: site-2 is away, T=3: aborts
        assert opts[0].skipped == 1
        accountant = nodes[0].accountant
        assert accountant is not None
        assert accountant.rounds == 2  # the aborted round was charged
        assert opts[0].epsilon == accountant.epsilon()
