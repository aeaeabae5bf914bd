"""Sites whose ``[dp]`` tables differ (found by an independent DP review at be68d96).

The round bound federation, roster, ring, length and data path, but not the DP
calibration: a site with z = 0.01, or with no ``[dp]`` table, joined the round, added
less noise, and the others reported ε for the full noise. The calibration is now part of
the round's context (secagg SPEC §2.1, DP.md §5.1): such a round aborts before anything is
revealed, naming the mismatch.
"""

from __future__ import annotations

import asyncio
from contextlib import AsyncExitStack

import numpy as np
import pytest

from mpc_agg import dp
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import AggregateResult, PeerNode, RoundAbortedError
from protocols.harness import make_roster

DELTA = 1e-5
GOOD = dp.DpSettings(noise_multiplier=2.0, clip_norm=1.0, delta=DELTA)


async def _round(
    privacy: list[dp.DpSettings | None], updates: list[np.ndarray]
) -> list[AggregateResult | BaseException]:
    roster, keys = make_roster(len(privacy))
    broker = MemoryBroker()
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                PeerNode(
                    federation="fed-mixed",
                    roster=roster,
                    me=i,
                    signing_key=keys[i],
                    transport=MemoryTransport(broker, name=f"site-{i}"),
                    deadlines=lambda _phase: 1.0,
                    threshold=len(privacy),
                    frac_bits=20,
                    ring_bits=64,
                    privacy=p,
                )
            )
            for i, p in enumerate(privacy)
        ]
        return await asyncio.gather(
            *(n.aggregate(u) for n, u in zip(nodes, updates, strict=True)),
            return_exceptions=True,
        )


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
    results = await _round([GOOD, GOOD, odd], [np.zeros(200)] * 3)
    for result in results:
        assert isinstance(result, RoundAbortedError), result
        assert "the sites' round parameters differ" in str(result)
        assert "[dp] table" in str(result)


@pytest.mark.asyncio
async def test_sites_with_the_same_dp_table_still_agree() -> None:
    results = await _round([GOOD, GOOD, GOOD], [np.zeros(200)] * 3)
    assert all(isinstance(r, AggregateResult) for r in results), results
    digests = {r.result_digest for r in results if isinstance(r, AggregateResult)}
    assert len(digests) == 1


async def _encoding_round(frac_bits: list[int]) -> list[AggregateResult | BaseException]:
    roster, keys = make_roster(len(frac_bits))
    broker = MemoryBroker()
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                PeerNode(
                    federation="fed-scale",
                    roster=roster,
                    me=i,
                    signing_key=keys[i],
                    transport=MemoryTransport(broker, name=f"site-{i}"),
                    deadlines=lambda _phase: 1.0,
                    threshold=len(frac_bits),
                    frac_bits=bits,
                )
            )
            for i, bits in enumerate(frac_bits)
        ]
        return await asyncio.gather(
            *(n.aggregate(np.full(50, 0.25)) for n in nodes), return_exceptions=True
        )


@pytest.mark.asyncio
@pytest.mark.parametrize("odd", [16, 24])
async def test_a_site_with_another_fixed_point_scale_aborts_the_round(odd: int) -> None:
    # The same class of defect as the [dp] table, without DP: [encoding] frac_bits sets the
    # scale every site encodes with, and the sum of one site's 2^16-scaled integers with
    # the others' 2^20-scaled ones decoded to a wrong total with no error. A scale other
    # than the default is part of the round's context.
    results = await _encoding_round([20, 20, odd])
    for result in results:
        assert isinstance(result, RoundAbortedError), result
        assert "the sites' round parameters differ" in str(result)


@pytest.mark.asyncio
async def test_sites_with_the_same_scale_agree_on_the_exact_total() -> None:
    for bits in (20, 16):
        results = await _encoding_round([bits, bits, bits])
        for result in results:
            assert isinstance(result, AggregateResult), result
            assert np.allclose(result.total, 0.75)


@pytest.mark.asyncio
async def test_robust_sites_with_another_max_norm_abort_without_blaming_anyone(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # robust's protocol string does not carry max_norm (its norm bound B): sites whose
    # federation.toml differed blamed each other's verifier shares and references ("excluded
    # site-1: its verification reference contradicts the share it dealt") before aborting.
    # max_norm and the length are now part of a robust round's context.
    roster, keys = make_roster(3)
    broker = MemoryBroker()
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                PeerNode(
                    federation="fed-norm",
                    roster=roster,
                    me=i,
                    signing_key=keys[i],
                    transport=MemoryTransport(broker, name=f"site-{i}"),
                    deadlines=lambda _phase: 1.0,
                    threshold=1,
                    protocol="robust",
                    max_norm=norm,
                )
            )
            for i, norm in enumerate([1.0, 1.0, 2.0])
        ]
        results = await asyncio.gather(
            *(n.aggregate(np.full(16, 0.1)) for n in nodes), return_exceptions=True
        )
    for result in results:
        assert isinstance(result, RoundAbortedError), result
        assert "robust's max_norm" in str(result)
    assert not [r.getMessage() for r in caplog.records if "excluded" in r.getMessage()]


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
    roster, keys = make_roster(len(thresholds))
    broker = MemoryBroker()
    extra: dict[str, object] = (
        {"protocol": "robust", "max_norm": 1.0} if protocol == "robust" else {}
    )
    async with AsyncExitStack() as stack:
        nodes = [
            await stack.enter_async_context(
                PeerNode(
                    federation="fed-threshold",
                    roster=roster,
                    me=i,
                    signing_key=keys[i],
                    transport=MemoryTransport(broker, name=f"site-{i}"),
                    deadlines=lambda _phase: 1.0,
                    threshold=t,
                    **extra,  # type: ignore[arg-type]
                )
            )
            for i, t in enumerate(thresholds)
        ]
        results = await asyncio.gather(
            *(n.aggregate(np.full(16, 0.1)) for n in nodes), return_exceptions=True
        )
    for result in results:
        assert isinstance(result, RoundAbortedError), result
        assert "threshold" in str(result)
        assert "the sites' round parameters differ" in str(result)
    assert not [r.getMessage() for r in caplog.records if "excluded" in r.getMessage()]
