"""Demo accuracy against ε: ``mpc-agg demo --epsilon E`` for E in {1, 3, 8, ∞}, δ = 1e-5.

Each run is the real demo — a Mosquitto broker, one process per site, DP-SGD with the
distributed discrete Gaussian — and its non-private in-process baseline (same clipping
and sampling, no noise). Run: ``.venv/bin/python -m benchmarks.dp_accuracy [--seeds 1 2]``
(writes results/dp_accuracy.json and prints the README table; about 2 min per run).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import write

EPSILONS = (1.0, 3.0, 8.0, math.inf)


def run(epsilon: float, seed: int, rounds: int) -> dict[str, Any]:
    """One demo run; the fields of its demo.json that the table needs."""
    with tempfile.TemporaryDirectory(prefix="dp-accuracy-") as out:
        command = [
            sys.executable, "-m", "peers.cli", "demo", "--epsilon", str(epsilon),
            "--rounds", str(rounds), "--seed", str(seed), "--out", out,
        ]  # fmt: skip
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        record = json.loads((Path(out) / "demo.json").read_text())
    return {
        "epsilon": None if math.isinf(epsilon) else epsilon,
        "seed": seed,
        "rounds": rounds,
        "accuracy_secure": record["final_accuracy_secure"],
        "accuracy_plaintext_no_noise": record["final_accuracy_plaintext"],
        "epsilon_spent": record["epsilon_spent"],
        "seconds_per_round_median": record["seconds_per_round_median"],
        "wall_seconds": time.perf_counter() - started,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[1])
    parser.add_argument("--rounds", type=int, default=100)
    args = parser.parse_args()
    rows = []
    for seed in args.seeds:
        for epsilon in EPSILONS:
            row = run(epsilon, seed, args.rounds)
            print(json.dumps(row), flush=True)
            rows.append(row)
    write(
        "dp_accuracy",
        {
            "command": "python -m benchmarks.dp_accuracy --seeds " + " ".join(map(str, args.seeds)),
            "delta": 1e-5,
            "sites": 4,
            "threshold": 3,
            "rows": rows,
        },
    )
    print("\n| ε (δ = 1e-5) | seed | accuracy (secure, DP) | ε spent | s/round |")
    print("|---|---|---|---|---|")
    for row in rows:
        eps = "∞" if row["epsilon"] is None else f"{row['epsilon']:g}"
        spent = "—" if row["epsilon_spent"] is None else f"{row['epsilon_spent']:.3f}"
        print(
            f"| {eps} | {row['seed']} | {row['accuracy_secure']:.1%} | {spent} | "
            f"{row['seconds_per_round_median']:.2f} |"
        )


if __name__ == "__main__":
    main()
