"""A full in-process ``robust`` round next to a ``secagg`` round at the same n and d.

Every machine call (begin / receive / deadline) is timed with ``time.thread_time`` and
charged to that peer and to the phase the machine was in, so harness overhead (input
generation, message routing) is not counted. Bytes are what each peer puts on the wire: a
broadcast counts once per recipient (what the broker delivers), a private message once.
``--mqtt`` also runs both protocols as users run them (``mpc-agg init`` + ``broker`` + one
``aggregate`` process per site over Mosquitto with TLS, :mod:`benchmarks.mqtt_round`) and
reports the wall-time ratio. Run::

    .venv/bin/python -m benchmarks.robust_round [--n 5] [--d 100000 1000000] [--repeat 2] [--mqtt]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import numpy as np

from benchmarks import mqtt_round
from benchmarks.common import traffic, write
from benchmarks.round_inprocess import BY_PHASE, CPU, instrument
from protocols.harness import random_inputs, run_secagg_round
from protocols.robust.harness import bounded_inputs, default_norm_bound, run_robust_round
from protocols.robust.machine import RobustMachine
from protocols.robust.params import default_threshold
from protocols.secagg.machine import SecAggMachine
from protocols.secagg.machine import default_threshold as secagg_threshold


def _traffic(outcome: Any, n: int) -> tuple[float, float]:
    """Mean bytes sent and received per peer (a broadcast counted once per recipient)."""
    return traffic(outcome, n, broadcast_per_recipient=True)


def _row(protocol: str, n: int, d: int, outcome: Any, wall: float) -> dict[str, Any]:
    per_peer = [CPU[p] for p in range(n)]
    sent, received = _traffic(outcome, n)
    return {
        "protocol": protocol,
        "n": n,
        "d": d,
        "cpu_per_peer_s_mean": sum(per_peer) / n,
        "cpu_per_peer_s_max": max(per_peer),
        "cpu_all_peers_s": sum(per_peer),
        "cpu_by_phase_s_per_peer": {k: v / n for k, v in BY_PHASE.items()},
        "bytes_sent_per_peer": sent,
        "bytes_received_per_peer": received,
        "harness_wall_s": wall,
    }


def measure(n: int, d: int, repeat: int) -> dict[str, Any]:
    """Best of ``repeat`` rounds of each protocol; the robust/secagg CPU ratio."""
    bound = default_norm_bound(d)
    instrument(RobustMachine, SecAggMachine)
    robust_inputs = bounded_inputs(n, d, seed=1, norm_bound=bound)
    secagg_inputs = random_inputs(n, d, seed=1)
    rows: dict[str, dict[str, Any]] = {}
    for protocol in ("robust", "secagg"):
        for attempt in range(repeat):
            CPU.clear()
            BY_PHASE.clear()
            wall = time.perf_counter()
            if protocol == "robust":
                outcome: Any = run_robust_round(
                    n=n, vector_length=d, seed=attempt, norm_bound=bound, inputs=robust_inputs
                )
            else:
                outcome = run_secagg_round(n=n, vector_length=d, seed=attempt, inputs=secagg_inputs)
            wall = time.perf_counter() - wall
            results = outcome.results()
            assert len(results) == n, "every peer must finish"
            for result in results.values():
                expected = outcome.expected_total(result.included)
                assert np.array_equal(result.total, expected)
            row = _row(protocol, n, d, outcome, wall)
            best = rows.get(protocol)
            if best is None or row["cpu_per_peer_s_mean"] < best["cpu_per_peer_s_mean"]:
                rows[protocol] = row
    robust, secagg = rows["robust"], rows["secagg"]
    robust["threshold"] = default_threshold(n)
    robust["norm_bound"] = bound
    secagg["threshold"] = secagg_threshold(n)
    return {
        "n": n,
        "d": d,
        "robust": robust,
        "secagg": secagg,
        "cpu_ratio": robust["cpu_per_peer_s_mean"] / secagg["cpu_per_peer_s_mean"],
        "bytes_sent_ratio": robust["bytes_sent_per_peer"] / secagg["bytes_sent_per_peer"],
    }


def over_mqtt(n: int, d: int) -> dict[str, Any]:
    """Both protocols through the CLI over Mosquitto: wall time, phases, bytes, RSS."""
    robust = mqtt_round.measure(n, d, "float32", "robust")
    secagg = mqtt_round.measure(n, d, "float32", "secagg")
    return {
        "n": n,
        "d": d,
        "robust": robust,
        "secagg": secagg,
        "wall_ratio": robust["wall_s_all_processes"] / secagg["wall_s_all_processes"],
    }


def main_with(
    ns: list[int], ds: list[int], repeat: int, mqtt: bool = False
) -> list[dict[str, Any]]:
    """Measure every (n, d) pair and write results/robust_round.json."""
    rows = [measure(n, d, repeat) for n in ns for d in ds]
    if mqtt:
        for row in rows:
            row["mqtt"] = over_mqtt(row["n"], row["d"])
    path = write("robust_round", {"rows": rows})
    for row in rows:
        robust, secagg = row["robust"], row["secagg"]
        print(
            f"n={row['n']} d={row['d']:,} t={robust['threshold']}: robust "
            f"{robust['cpu_per_peer_s_mean']:.3f} s CPU/peer, secagg "
            f"{secagg['cpu_per_peer_s_mean']:.3f} s → ratio {row['cpu_ratio']:.1f}×; "
            f"sent/peer {robust['bytes_sent_per_peer'] / 1e6:.1f} MB vs "
            f"{secagg['bytes_sent_per_peer'] / 1e6:.1f} MB"
        )
        for phase, seconds in robust["cpu_by_phase_s_per_peer"].items():
            print(f"    {phase:18s} {1e3 * seconds:9.1f} ms/peer")
        if "mqtt" in row:
            over = row["mqtt"]
            print(
                f"    over Mosquitto: robust {over['robust']['wall_s_all_processes']:.2f} s, "
                f"secagg {over['secagg']['wall_s_all_processes']:.2f} s "
                f"→ {over['wall_ratio']:.1f}×"
            )
    print(f"wrote {path}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="*", default=[5])
    parser.add_argument("--d", type=int, nargs="*", default=[100_000, 1_000_000])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--mqtt", action="store_true", help="also run both over Mosquitto")
    args = parser.parse_args()
    main_with(args.n, args.d, args.repeat, args.mqtt)


if __name__ == "__main__":
    main()
