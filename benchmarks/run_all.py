"""Run every benchmark and print a Markdown summary for the README.

Run: ``make bench`` (or ``.venv/bin/python -m benchmarks.run_all``).
"""

from __future__ import annotations

import json

from benchmarks import primitives, robust_round, round_inprocess
from benchmarks.common import RESULTS


def main() -> None:
    primitives.main()
    round_inprocess.main_with([10], [100_000, 1_000_000], repeat=3)
    robust_round.main_with([5], [100_000, 1_000_000], repeat=2, mqtt=True)
    prim = json.loads((RESULTS / "primitives.json").read_text())["results"]
    rounds = json.loads((RESULTS / "round_inprocess.json").read_text())["rows"]
    print("\n| primitive (d = 10^6 where it applies) | result |\n|---|---|")
    for key, value in prim.items():
        print(f"| `{key}` | {value:.3f} |")
    print("\n| n | d | T | CPU per peer (mean) | max | all peers |\n|---|---|---|---|---|---|")
    for row in rounds:
        print(
            f"| {row['n']} | {row['d']:,} | {row['threshold']} | "
            f"{row['cpu_per_peer_ms_mean']:.1f} ms | {row['cpu_per_peer_ms_max']:.1f} ms | "
            f"{row['cpu_all_peers_s']:.2f} s |"
        )


if __name__ == "__main__":
    main()
