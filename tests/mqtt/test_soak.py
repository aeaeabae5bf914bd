"""A short soak in CI (tests/soak.py): 20 rounds, 10 of them faulted, over Mosquitto."""

from __future__ import annotations

import pytest

from tests.soak import soak


@pytest.mark.slow
@pytest.mark.asyncio
async def test_short_soak_has_no_wrong_result_no_hang_and_always_recovers() -> None:
    report = await soak(20, seed=5)
    assert report.rounds == 20
    assert report.wrong == 0
    assert report.hangs == 0
    assert report.unrecovered == 0
    assert sum(report.faults.values()) == 20
    assert report.faults["none"] == 10


@pytest.mark.slow
@pytest.mark.asyncio
async def test_sites_that_crash_mid_round_rejoin_at_the_next_round() -> None:
    """Every other round one site dies mid-round and is rebuilt from its key and audit
    log; the clean round after it must succeed at all four sites."""
    report = await soak(8, seed=3, faults=["crash"])
    assert report.faults["crash"] == 4
    assert report.ok, report.to_json()
    assert report.complete["none"] == 4
