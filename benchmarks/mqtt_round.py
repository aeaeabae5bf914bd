"""A round as users run it: ``mpc-agg init`` + ``broker`` + one ``aggregate`` process per site.

Reports wall time, peak RSS of every site process and bytes per site, over Mosquitto with
TLS and the generated ACL. Run::

    .venv/bin/python -m benchmarks.mqtt_round --n 3 --d 10000000 [--dtype float32] \
        [--reduce-scatter]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from typing import Any

import numpy as np

from benchmarks.common import broker_federation, cli, write


def measure(
    n: int, d: int, dtype: str, protocol: str = "secagg", reduce_scatter: bool = False
) -> dict[str, Any]:
    """One round with ``n`` site processes and ``d`` entries of ``dtype``.

    ``robust`` runs with max_norm 1 and every input scaled to L2 norm 0.99;
    ``reduce_scatter`` runs ``secagg``'s chunk-owner data path (SPEC §6.7).
    """
    extra = ["--protocol", "robust", "--max-norm", "1.0"] if protocol == "robust" else []
    with broker_federation(n, d, *extra, reduce_scatter=reduce_scatter) as (root, _broker):
        rng = np.random.default_rng(0)
        for k in range(n):
            values = rng.uniform(-0.5, 0.5, d)
            if protocol == "robust":
                values *= 0.99 / np.linalg.norm(values)
            np.save(root / f"x{k}.npy", values.astype(dtype))
        started = time.perf_counter()
        sites = [
            subprocess.Popen(
                cli(
                    "aggregate",
                    "--config",
                    str(root / "sites" / f"site-{k}.toml"),
                    "--input",
                    str(root / f"x{k}.npy"),
                    "--output",
                    str(root / f"sum{k}.npy"),
                    "--report",
                    str(root / f"report{k}.json"),
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            for k in range(n)
        ]
        for site in sites:
            _, err = site.communicate(timeout=1800)
            if site.returncode != 0:
                raise RuntimeError(err.decode()[-500:])
        wall = time.perf_counter() - started
        reports = [json.loads((root / f"report{k}.json").read_text()) for k in range(n)]
        expected = sum(np.load(root / f"x{k}.npy").astype(np.float64) for k in range(n))
        error = max(
            float(np.max(np.abs(np.load(root / f"sum{k}.npy") - expected))) for k in range(n)
        )
    vector_mb = d * np.dtype(dtype).itemsize / 2**20
    return {
        "protocol": protocol,
        "data_path": "reduce-scatter" if reduce_scatter else "broadcast",
        "n": n,
        "d": d,
        "dtype": dtype,
        "wall_s_all_processes": wall,
        "round_s_by_phase_site0": reports[0]["timings_s"],
        "peak_rss_mb_per_site": [r["peak_rss_mb"] for r in reports],
        "input_vector_mb": vector_mb,
        "peak_rss_in_input_vectors": max(r["peak_rss_mb"] for r in reports) / vector_mb,
        "bytes_out_per_site": [r["bytes_out"] for r in reports],
        "bytes_in_per_site": [r["bytes_in"] for r in reports],
        "max_abs_error_vs_float_sum": error,
        "identical_digests": len({r["result_digest"] for r in reports}) == 1,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--d", type=int, default=10_000_000)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--protocol", choices=["secagg", "robust"], default="secagg")
    parser.add_argument("--reduce-scatter", action="store_true", help="secagg SPEC §6.7")
    args = parser.parse_args()
    if args.reduce_scatter and args.protocol != "secagg":
        parser.error("--reduce-scatter is a secagg data path")
    row = measure(args.n, args.d, args.dtype, args.protocol, args.reduce_scatter)
    prefix = "mqtt_round" if args.protocol == "secagg" else "mqtt_robust"
    suffix = "_rs" if args.reduce_scatter else ""
    path = write(f"{prefix}_n{args.n}_d{args.d}{suffix}", row)
    print(json.dumps(row, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
