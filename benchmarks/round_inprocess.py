"""One full in-process ``secagg`` round: CPU seconds per peer, by phase.

Every machine call (begin / receive / deadline) is timed with ``time.thread_time`` and
charged to that peer and to the phase the machine was in, so harness overhead (input
generation, message routing) is not counted. Run::

    .venv/bin/python -m benchmarks.round_inprocess [--n 10] [--d 1000000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from collections.abc import Callable
from typing import Any

from benchmarks.common import write
from protocols.common import Effect
from protocols.harness import random_inputs, run_secagg_round
from protocols.secagg.machine import SecAggMachine, default_threshold

CPU: defaultdict[int, float] = defaultdict(float)
BY_PHASE: defaultdict[str, float] = defaultdict(float)


def _timed(method: Callable[..., list[Effect]]) -> Callable[..., list[Effect]]:
    def wrapper(self: Any, *args: Any) -> list[Effect]:
        phase = self.phase.name
        start = time.thread_time()
        try:
            return method(self, *args)
        finally:
            spent = time.thread_time() - start
            CPU[self.me] += spent
            BY_PHASE[phase] += spent

    return wrapper


_PATCHED: set[type] = set()


def instrument(*machine_classes: type) -> None:
    """Charge every begin/receive/deadline of these classes to CPU and BY_PHASE (once each)."""
    for cls in machine_classes:
        if cls in _PATCHED:
            continue
        for name in ("begin", "receive", "deadline"):
            setattr(cls, name, _timed(getattr(cls, name)))
        _PATCHED.add(cls)


def measure(
    n: int, d: int, repeat: int, ring_bits: int = 32, reduce_scatter: bool = False
) -> dict[str, Any]:
    """Run ``repeat`` rounds; report the best round's per-peer CPU.

    ``ring_bits`` 32 is what ``PeerNode`` picks with the default encoding (SPEC §2.1);
    ``reduce_scatter`` runs the chunk-owner data path (SPEC §6.7).
    """
    instrument(SecAggMachine)
    inputs = random_inputs(n, d, seed=1)
    best: dict[str, Any] | None = None
    for attempt in range(repeat):
        CPU.clear()
        BY_PHASE.clear()
        wall = time.perf_counter()
        outcome = run_secagg_round(
            n=n,
            vector_length=d,
            seed=attempt,
            inputs=inputs,
            ring_bits=ring_bits,
            reduce_scatter=reduce_scatter,
        )
        wall = time.perf_counter() - wall
        results = outcome.results()
        assert len(results) == n, "every peer must finish"
        for result in results.values():
            assert (result.total == outcome.expected_total(result.included)).all()
        per_peer = [CPU[p] for p in range(n)]
        row = {
            "n": n,
            "d": d,
            "threshold": default_threshold(n),
            "ring_bits": ring_bits,
            "data_path": "reduce-scatter" if reduce_scatter else "broadcast",
            "cpu_per_peer_ms_mean": 1e3 * sum(per_peer) / n,
            "cpu_per_peer_ms_max": 1e3 * max(per_peer),
            "cpu_all_peers_s": sum(per_peer),
            "cpu_by_phase_ms_per_peer": {k: 1e3 * v / n for k, v in BY_PHASE.items()},
            "harness_wall_s": wall,
        }
        if best is None or row["cpu_per_peer_ms_mean"] < best["cpu_per_peer_ms_mean"]:
            best = row
    assert best is not None
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="*", default=[10])
    parser.add_argument("--d", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--ring-bits", type=int, nargs="*", choices=[32, 64], default=[32])
    args = parser.parse_args()
    main_with(args.n, args.d, args.repeat, args.ring_bits)


def main_with(ns: list[int], ds: list[int], repeat: int, rings: list[int] = [32]) -> None:  # noqa: B006
    """Measure every (n, d, ring) and write results/round_inprocess.json."""
    rows = [measure(n, d, repeat, bits) for n in ns for d in ds for bits in rings]
    path = write("round_inprocess", {"rows": rows})
    for row in rows:
        print(
            f"n={row['n']:3d} d={row['d']:>9,d} T={row['threshold']:2d} b={row['ring_bits']}  "
            f"CPU/peer {row['cpu_per_peer_ms_mean']:8.1f} ms (max {row['cpu_per_peer_ms_max']:.1f})"
        )
        for phase, ms in sorted(row["cpu_by_phase_ms_per_peer"].items()):
            print(f"    {phase:20s} {ms:8.2f} ms/peer")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
