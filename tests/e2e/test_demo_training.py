"""`mpc-agg demo` as a user runs it: federated training through a real broker.

Mosquitto (the default) and the pure-Python amqtt fallback each run the whole demo: a
fresh federation, a broker subprocess, one process per site training with
SecureAggOptimizer, and the in-process plaintext baseline it is compared with.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest


def _demo(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], dict]:  # type: ignore[type-arg]
    out = tmp_path / "out"
    done = subprocess.run(
        [sys.executable, "-m", "peers.cli", "demo", "--out", str(out), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    record = json.loads((out / "demo.json").read_text())
    png = (out / "demo.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    return done, record


def test_training_demo_over_mosquitto_matches_plaintext(tmp_path: Path) -> None:
    done, record = _demo(tmp_path, "--sites", "3", "--rounds", "4", "--seed", "11")
    assert "broker: mosquitto with TLS" in done.stdout
    rows = [line for line in done.stdout.splitlines() if "/4 " in line]
    assert len(rows) == 4  # one progress line per round, as it completes
    assert record["sites_agree"] is True
    digests = record["result_digests"]  # per round, one per site, all equal
    assert [len(d) for d in digests] == [3, 3, 3, 3]
    assert all(len(set(d)) == 1 for d in digests)
    assert [d[0] for d in digests] == [x["digest"] for x in record["secure"]]
    assert [x["round"] for x in record["secure"]] == [1, 2, 3, 4]
    assert all(x["count"] == 3 for x in record["secure"])
    # same data, same initialisation, same clipping: only the aggregation differs
    assert record["accuracy_gap_points"] <= 1.0
    assert record["max_parameter_difference"] < 1e-3
    assert record["secure"][-1]["test_accuracy"] > record["secure"][0]["test_accuracy"]


def test_training_demo_with_robust_matches_plaintext(tmp_path: Path) -> None:
    done, record = _demo(
        tmp_path, "--protocol", "robust", "--sites", "3", "--rounds", "3", "--seed", "12"
    )
    assert "secure aggregation: robust, threshold t=1 (3 live sites needed)" in done.stdout
    assert record["protocol"] == "robust"
    assert record["sites_agree"] is True
    assert all(x["count"] == 3 for x in record["secure"])
    assert record["accuracy_gap_points"] <= 1.0
    assert record["max_parameter_difference"] < 1e-3


@pytest.mark.slow
def test_training_demo_over_the_amqtt_fallback(tmp_path: Path) -> None:
    done, record = _demo(
        tmp_path, "--broker", "amqtt", "--sites", "3", "--rounds", "2", "--seed", "3"
    )
    assert "amqtt (pure Python" in done.stdout
    assert record["broker"] == "amqtt"
    assert record["sites_agree"] is True
    assert record["accuracy_gap_points"] <= 1.0


def test_sum_demo_over_the_amqtt_fallback(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            *(sys.executable, "-m", "peers.cli", "demo", "--task", "sum", "--broker", "amqtt"),
            *("--sites", "3", "--rounds", "1", "--dim", "2000", "--seed", "4"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every site computed the identical sum each round" in done.stdout


def test_training_demo_without_a_broker_is_a_usage_error(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "peers.cli", "demo", "--broker", "none"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "needs a broker" in done.stderr


def test_dp_sgd_demo_spends_at_most_its_epsilon(tmp_path: Path) -> None:
    """`demo --epsilon 8`: DP-SGD with distributed noise; the ledger stays within ε."""
    done, record = _demo(
        tmp_path, "--epsilon", "8", "--sites", "3", "--rounds", "6", "--seed", "13"
    )
    assert "DP-SGD steps (Poisson sampling, per-example clipping)" in done.stdout
    assert "discrete Gaussian noise multiplier z=" in done.stdout
    assert "privacy: ε spent" in done.stdout
    assert record["sites_agree"] is True
    assert record["epsilon_target"] == 8.0
    spent = [x["epsilon"] for x in record["secure"]]
    assert all(a < b for a, b in itertools.pairwise(spent))
    assert 0.9 * 8.0 < spent[-1] <= 8.0  # calibrated to spend the budget, never more
    assert len(record["secure"]) == 6


def test_demo_rejects_epsilon_with_the_wrong_task(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "peers.cli", "demo", "--task", "sum", "--epsilon", "1"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 2
    assert "--epsilon is for the secagg training demo" in done.stderr
