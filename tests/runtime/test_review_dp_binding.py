"""Sites whose round settings differ (found by an independent DP review at be68d96).

The round bound federation, roster, ring, length and data path, but not the DP
calibration: a site with z = 0.01, or with no ``[dp]`` table, joined the round, added
less noise, and the others reported ε for the full noise. The calibration is now part of
the round's context (secagg SPEC §2.1, DP.md §5.1): such a round aborts before anything is
revealed, naming the mismatch. The same held, found while fixing it, for the fixed-point
scale (summed wrongly, without an error), robust's max_norm and the threshold (the sites
excluded each other before aborting).
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack
from typing import Any

import numpy as np
import pytest

from mpc_agg import dp
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import AggregateResult, PeerNode, RoundAbortedError
from protocols.harness import make_roster

DELTA = 1e-5
GOOD = dp.DpSettings(noise_multiplier=2.0, clip_norm=1.0, delta=DELTA)
MISMATCH = "the sites' round parameters differ"


async def _round(sites: list[dict[str, Any]], length: int = 16) -> list[Any]:
    """One round of ``len(sites)`` nodes, each built with its own keyword settings."""
    roster, keys = make_roster(len(sites))
    broker = MemoryBroker()
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                PeerNode(
                    federation="fed-settings",
                    roster=roster,
                    me=i,
                    signing_key=keys[i],
                    transport=MemoryTransport(broker, name=f"site-{i}"),
                    deadlines=lambda _phase: 1.0,
                    **settings,
                )
            )
            for i, settings in enumerate(sites)
        ]
        return await asyncio.gather(
            *(n.aggregate(np.full(length, 0.1)) for n in nodes), return_exceptions=True
        )


def _dp(privacy: dp.DpSettings | None) -> dict[str, Any]:
    return {"threshold": 3, "frac_bits": 20, "ring_bits": 64, "privacy": privacy}


def _all_abort(results: list[Any], *words: str) -> None:
    for result in results:
        assert isinstance(result, RoundAbortedError), result
        assert MISMATCH in str(result)
        for word in words:
            assert word in str(result)


def _nobody_excluded(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r.getMessage() for r in caplog.records if "excluded" in r.getMessage()]


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "odd",
    [
        None,
        dp.DpSettings(noise_multiplier=0.01, clip_norm=1.0, delta=DELTA),
        dp.DpSettings(noise_multiplier=2.0, clip_norm=1.0, delta=DELTA, noise_sites=2),
        dp.DpSettings(noise_multiplier=2.0, clip_norm=2.0, delta=DELTA),
    ],
    ids=["no [dp] table", "z = 0.01", "noise_sites = 2", "clip 2"],
)
async def test_a_site_with_another_dp_table_aborts_the_round(odd: dp.DpSettings | None) -> None:
    _all_abort(await _round([_dp(GOOD), _dp(GOOD), _dp(odd)], length=200), "[dp] table")


@pytest.mark.asyncio
async def test_sites_with_the_same_dp_table_still_agree() -> None:
    results = await _round([_dp(GOOD)] * 3, length=200)
    assert all(isinstance(r, AggregateResult) for r in results), results
    assert len({r.result_digest for r in results}) == 1


@pytest.mark.asyncio
@pytest.mark.parametrize("odd", [16, 24])
async def test_a_site_with_another_fixed_point_scale_aborts_the_round(odd: int) -> None:
    # [encoding] frac_bits sets the scale every site encodes with: the sum of one site's
    # 2^16-scaled integers with the others' 2^20-scaled ones decoded to a wrong total with
    # no error. A scale other than the default is part of the round's context.
    sites = [{"threshold": 3, "frac_bits": bits} for bits in (20, 20, odd)]
    _all_abort(await _round(sites), "fixed-point scale")


@pytest.mark.asyncio
@pytest.mark.parametrize("bits", [20, 16])
async def test_sites_with_the_same_scale_agree_on_the_exact_total(bits: int) -> None:
    results = await _round([{"threshold": 3, "frac_bits": bits}] * 3, length=50)
    for result in results:
        assert isinstance(result, AggregateResult), result
        assert np.allclose(result.total, 0.3, rtol=0, atol=3 * 2.0**-bits)  # 3 roundings


@pytest.mark.asyncio
async def test_robust_sites_with_another_max_norm_abort_without_blaming_anyone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # robust's protocol string does not carry max_norm (its norm bound B): sites whose
    # federation.toml differed excluded each other ("its verification reference
    # contradicts the share it dealt") before aborting. max_norm, d and t are now part of
    # a robust round's context.
    sites = [{"threshold": 1, "protocol": "robust", "max_norm": m} for m in (1.0, 1.0, 2.0)]
    _all_abort(await _round(sites), "robust's max_norm")
    _nobody_excluded(caplog)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    ("protocol", "thresholds"), [("secagg", [3, 3, 2]), ("robust", [2, 2, 1, 2, 2])]
)
async def test_sites_with_another_threshold_abort_without_blaming_anyone(
    protocol: str, thresholds: list[int], caplog: pytest.LogCaptureFixture
) -> None:
    # Neither protocol string carried the threshold: the sites excluded each other
    # ("ShareKeys has 3 commitments, T=2", "malformed VERIFY: field vector has 73 entries,
    # expected 71") before aborting. It is now part of the round's context (secagg: when
    # it is not the default, so default rounds keep their protocol string).
    extra = {"protocol": "robust", "max_norm": 1.0} if protocol == "robust" else {}
    _all_abort(await _round([{"threshold": t, **extra} for t in thresholds]), "threshold")
    _nobody_excluded(caplog)
