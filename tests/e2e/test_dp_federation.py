"""Distributed DP from the command line: `init --noise-multiplier …`, `aggregate`, the budget.

Four site processes over the federation's Mosquitto (TLS, ACL) run one noisy round, each
prints ε and records it; the next round would exceed the ε budget, so every site refuses
it before sending anything (exit 4), and the audit log says so.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from mpc_agg import dp
from tests.e2e.federations import run_sites, running_federation

SITES, DIM = 4, 5000


def _one_round_epsilon() -> float:
    settings = dp.DpSettings(noise_multiplier=1.5, clip_norm=1.0, delta=1e-5)
    plan = dp.plan_round(
        settings, vector_length=DIM, frac_bits=20, min_sites=3, federation="f", round_id=1
    )
    return dp.PrivacyAccountant(delta=1e-5).epsilon([plan.cost])


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Path]:
    budget = f"{1.2 * _one_round_epsilon():.6f}"  # one round fits, two do not
    args = ["--sites", str(SITES), "--noise-multiplier", "1.5", "--clip-norm", "1.0"]
    args += ["--epsilon", budget]
    with running_federation(tmp_path / "fed", *args, deadline=5.0) as (root, output):
        assert "differential privacy (discrete_gaussian, z=1.5, clip 1 per site" in output
        yield root


def _round(root: Path) -> list[tuple[int, str, str]]:
    return run_sites(root, SITES, timeout=60)


def test_a_noisy_round_then_a_refusal_over_budget(federation: Path) -> None:
    rng = np.random.default_rng(3)
    updates = [rng.normal(size=DIM) * (0.5 / np.sqrt(DIM)) for _ in range(SITES)]
    for k, update in enumerate(updates):
        np.save(federation / f"x{k}.npy", update)
    first = _round(federation)
    for code, stdout, stderr in first:
        assert code == 0, stderr
        assert "differential privacy (discrete_gaussian, z=1.5)" in stdout
    reports = [json.loads((federation / f"report{k}.json").read_text()) for k in range(SITES)]
    assert len({r["result_digest"] for r in reports}) == 1
    privacy = reports[0]["privacy"]
    assert (
        privacy["epsilon_spent"]
        == privacy["epsilon_round"]
        == pytest.approx(_one_round_epsilon(), rel=1e-9)
    )
    # The noisy sum: every site the same; noise σ = 1.5·clip·√(4/3) per coordinate.
    sums = [np.load(federation / f"sum{k}.npy") for k in range(SITES)]
    assert all(np.array_equal(sums[0], s) for s in sums)
    error = sums[0] - sum(updates)
    assert abs(error.std() / (1.5 * np.sqrt(4 / 3)) - 1) < 0.05

    second = _round(federation)
    for code, _stdout, stderr in second:
        assert code == 4, stderr
        assert "over the federation's budget" in stderr
        assert "Nothing was sent" in stderr
    log = federation / "sites" / "site-0.audit.jsonl"
    records = [json.loads(line)["record"] for line in log.read_text().splitlines()]
    # charged on disk before the first message, then the outcome, then the refusal
    assert [r["outcome"] for r in records] == ["charged", "aggregate", "refused"]
    assert records[0]["privacy"] == records[1]["privacy"]
    assert records[1]["privacy"]["epsilon_spent"] == privacy["epsilon_spent"]
    assert "clipped" not in records[1]["privacy"]  # a noise-free bit stays out of the log
