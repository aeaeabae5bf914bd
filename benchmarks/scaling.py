"""Scaling curves of an in-process ``secagg`` round: CPU and bytes per peer against n and d.

Every peer's machine runs in this process (``protocols.harness.run_secagg_round``, the
ring the runtime picks by default, Z_2^32); CPU is charged per peer as in
:mod:`benchmarks.round_inprocess`, bytes are the sealed envelopes each peer emits (its
broadcasts once, as it publishes them, plus its private messages) and receives (every
other peer's broadcasts and the private messages addressed to it). Run::

    .venv/bin/python -m benchmarks.scaling [--n 3 5 10 20 30 50] [--d 100000]
                                           [--d-curve 10000 100000 1000000 10000000]

Results: ``benchmarks/results/scaling.json`` and ``scaling.png``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from benchmarks.common import RESULTS, traffic, write
from benchmarks.round_inprocess import CPU, instrument
from protocols.harness import random_inputs, run_secagg_round
from protocols.secagg.machine import SecAggMachine, default_threshold


def measure(n: int, d: int, ring_bits: int = 32) -> dict[str, Any]:
    """One round at (n, d): CPU per peer, bytes out and in per peer, harness wall time."""
    instrument(SecAggMachine)
    CPU.clear()
    inputs = random_inputs(n, d, seed=n)
    started = time.perf_counter()
    outcome = run_secagg_round(n=n, vector_length=d, seed=n, inputs=inputs, ring_bits=ring_bits)
    wall = time.perf_counter() - started
    results = outcome.results()
    assert len(results) == n, "every peer must finish"
    for result in results.values():
        assert (result.total == outcome.expected_total(result.included)).all()
    sent, received = traffic(outcome, n, broadcast_per_recipient=False)
    per_peer = [CPU[p] for p in range(n)]
    return {
        "n": n,
        "d": d,
        "threshold": default_threshold(n),
        "ring_bits": ring_bits,
        "cpu_per_peer_ms_mean": 1e3 * sum(per_peer) / n,
        "cpu_all_peers_s": sum(per_peer),
        "bytes_out_per_peer_mean": sent,
        "bytes_in_per_peer_mean": received,
        "harness_wall_s": wall,
    }


def plot(by_n: list[dict[str, Any]], by_d: list[dict[str, Any]], path: Path) -> None:
    """Two panels: CPU and MB per peer against n (fixed d) and against d (fixed n)."""
    import matplotlib as mpl  # noqa: PLC0415 - the demo extra, only when plotting

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.0))
    for ax, rows, key, label in (
        (axes[0], by_n, "n", f"sites n (d = {by_n[0]['d']:,})"),
        (axes[1], by_d, "d", f"vector length d (n = {by_d[0]['n']})"),
    ):
        x = [r[key] for r in rows]
        ax.plot(x, [r["cpu_per_peer_ms_mean"] for r in rows], "o-", label="CPU per peer (ms)")
        ax.plot(x, [r["bytes_in_per_peer_mean"] / 1e6 for r in rows], "s--", label="MB in per peer")
        ax.plot(
            x, [r["bytes_out_per_peer_mean"] / 1e6 for r in rows], "^:", label="MB out per peer"
        )
        ax.set_xlabel(label)
        if key == "d":
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("secagg in process, Z_2^32, no dropouts")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[3, 5, 10, 20, 30, 50])
    parser.add_argument("--d", type=int, default=100_000)
    parser.add_argument(
        "--d-curve", type=int, nargs="+", default=[10_000, 100_000, 1_000_000, 10_000_000]
    )
    parser.add_argument("--d-curve-n", type=int, default=10)
    args = parser.parse_args()
    by_n = []
    for n in args.n:
        by_n.append(measure(n, args.d))
        print(_line(by_n[-1]), flush=True)
    by_d = []
    for d in args.d_curve:
        by_d.append(measure(args.d_curve_n, d))
        print(_line(by_d[-1]), flush=True)
    path = write("scaling", {"by_n": by_n, "by_d": by_d})
    plot(by_n, by_d, RESULTS / "scaling.png")
    print(f"wrote {path}")


def _line(row: dict[str, Any]) -> str:
    return (
        f"n={row['n']:3d} d={row['d']:>10,d}  CPU/peer {row['cpu_per_peer_ms_mean']:8.1f} ms  "
        f"in {row['bytes_in_per_peer_mean'] / 1e6:8.2f} MB  "
        f"out {row['bytes_out_per_peer_mean'] / 1e6:8.2f} MB  wall {row['harness_wall_s']:.1f} s"
    )


if __name__ == "__main__":
    main()
