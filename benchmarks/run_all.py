"""Run every benchmark the README quotes, with the exact commands it names.

Run: ``make bench`` (or ``.venv/bin/python -m benchmarks.run_all``); each writes its own
``benchmarks/results/*.json`` (and PNG). The Flower comparison needs its own venv:
``make bench-flower``. The 200-round soak is ``python -m tests.soak --rounds 200``.
"""

from __future__ import annotations

import subprocess
import sys

COMMANDS = [
    ["benchmarks.primitives"],
    ["benchmarks.floor", "--n", "10", "--d", "1000000"],
    [
        "benchmarks.round_inprocess",
        "--n",
        "10",
        "--d",
        "100000",
        "1000000",
        "--ring-bits",
        "64",
        "32",
    ],
    ["benchmarks.scaling"],
    ["benchmarks.mqtt_compare", "--n", "3", "5", "10", "--d", "100000", "1000000", "10000000"],
    [
        "benchmarks.mqtt_compare",
        "--n",
        "10",
        "--d",
        "1000000",
        "--repeat",
        "7",
        "--name",
        "mqtt_compare_n10_d1e6",
    ],
    [
        "benchmarks.mqtt_compare",
        "--n",
        "3",
        "5",
        "10",
        "--d",
        "100000",
        "1000000",
        "--modes",
        "robust",
        "--name",
        "mqtt_compare_robust",
    ],
    ["benchmarks.mqtt_round", "--n", "3", "--d", "100000000", "--dtype", "float32"],
    [
        "benchmarks.mqtt_round",
        "--n",
        "3",
        "--d",
        "100000000",
        "--dtype",
        "float32",
        "--reduce-scatter",
    ],
    ["benchmarks.robust_round", "--n", "5", "--d", "100000", "1000000", "--mqtt"],
    ["benchmarks.dp_noise"],
]


def main() -> None:
    for command in COMMANDS:
        line = [sys.executable, "-m", *command]
        print("$ python -m " + " ".join(command), flush=True)
        subprocess.run(line, check=True)


if __name__ == "__main__":
    main()
