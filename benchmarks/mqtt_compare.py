"""Secure against plaintext aggregation over the same broker and the same peer processes.

For every (n, d): ``mpc-agg init`` a federation (TLS, accounts, ACL), start its Mosquitto
with ``mpc-agg broker`` and n :mod:`benchmarks.site_worker` processes. Each repetition
runs one plaintext round (every site publishes its float32 update in the clear and sums
what it receives) and one ``secagg`` round (``PeerNode.aggregate``), in alternating order,
on the same processes and broker; ``--modes robust`` adds a ``robust`` federation of its
own, with its own plaintext rounds (``plain-robust``). Reported per mode: round wall time
(from the command to the last site's answer), CPU per site process, the broker's CPU,
bytes out and in per site, peak RSS per site during the round. Run::

    .venv/bin/python -m benchmarks.mqtt_compare --n 3 5 10 --d 100000 1000000 10000000
    .venv/bin/python -m benchmarks.mqtt_compare --n 3 5 10 --d 100000 1000000 \
        --modes robust --name mqtt_compare_robust

Results: ``benchmarks/results/mqtt_compare.json`` and ``mqtt_compare.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, broker_federation, write

#: plaintext; secagg's broadcast data path; secagg's reduce-scatter data path (SPEC §6.7);
#: robust (its own federation, ``--protocol robust --max-norm 1``, next to its own plaintext)
MODES = ("plain", "secure", "secure-rs", "robust")
_SECAGG_MODES = ("secure", "secure-rs")


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (Linux /proc), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Workers:
    def __init__(self, root: Path, n: int) -> None:
        self.processes = [
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.site_worker",
                    str(root / "sites" / f"site-{k}.toml"),
                    str(root / f"x{k}.npy"),
                    str(root),
                    str(n),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for k in range(n)
        ]

    def all(self, command: dict[str, Any]) -> list[dict[str, Any]]:
        line = json.dumps(command) + "\n"
        for process in self.processes:
            assert process.stdin is not None
            process.stdin.write(line)
            process.stdin.flush()
        answers = []
        for process in self.processes:
            assert process.stdout is not None
            answer = process.stdout.readline()
            if not answer:
                raise RuntimeError(f"a site worker died (exit {process.wait(10)})")
            answers.append(json.loads(answer))
        return answers

    def stop(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                try:
                    assert process.stdin is not None
                    process.stdin.write(json.dumps({"cmd": "exit"}) + "\n")
                    process.stdin.flush()
                    process.wait(30)
                except (OSError, subprocess.TimeoutExpired):
                    process.kill()


def _ratio_key(mode: str) -> str:
    """The row key of a secure mode's wall time over plaintext's."""
    return f"{mode.replace('-', '_')}_over_plain_wall"


def measure(
    n: int, d: int, repeat: int, ring_bits: int | None = None, modes: tuple[str, ...] = MODES
) -> dict[str, Any]:
    """``repeat`` rounds of each mode at (n, d), on the same processes; medians per mode.

    ``ring_bits`` fixes ``[encoding] ring_bits`` (default: the node's own choice; the
    reduce-scatter mode needs 32). ``robust`` needs a federation of its own (the protocol
    is federation-wide) and inputs of L2 norm ≤ ``max_norm``: it runs on a second broker
    and set of site processes, with every input scaled to norm 0.99 and max_norm 1, next
    to a plaintext round of those same inputs on those same processes (``plain-robust``).
    """
    secagg_modes = tuple(m for m in modes if m in _SECAGG_MODES)
    row: dict[str, Any] = {
        "n": n,
        "d": d,
        "dtype": "float32",
        "repeat": repeat,
        "ring_bits": ring_bits or "auto",
    }
    if secagg_modes:
        row.update(_measure_federation(n, d, repeat, ("plain", *secagg_modes), ring_bits))
    for mode in secagg_modes:
        row[_ratio_key(mode)] = (
            row[mode]["round_wall_s_median"] / row["plain"]["round_wall_s_median"]
        )
    if "robust" in modes:
        runs = _measure_federation(
            n, d, repeat, ("plain", "robust"), None, "--protocol", "robust", "--max-norm", "1.0"
        )
        row["plain-robust"], row["robust"] = runs["plain"], runs["robust"]
        row[_ratio_key("robust")] = (
            runs["robust"]["round_wall_s_median"] / runs["plain"]["round_wall_s_median"]
        )
    return row


def _measure_federation(
    n: int, d: int, repeat: int, modes: tuple[str, ...], ring_bits: int | None, *init: str
) -> dict[str, dict[str, Any]]:
    """One federation (``mpc-agg init`` with ``init``), its broker and n site processes:
    ``repeat`` rounds of each mode in alternating order; medians per mode."""
    with broker_federation(n, d, *init, ring_bits=ring_bits) as (root, broker):
        rng = np.random.default_rng(0)
        for k in range(n):
            values = rng.uniform(-0.5, 0.5, d)
            if "robust" in modes:
                values *= 0.99 / np.linalg.norm(values)
            np.save(root / f"x{k}.npy", values.astype(np.float32))
        workers = _Workers(root, n)
        rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in modes}
        try:
            for rep in range(repeat):
                order = modes if rep % 2 == 0 else modes[::-1]
                for mode in order:
                    workers.all({"cmd": "open", "mode": mode})
                    broker_cpu = _cpu_seconds(broker.pid)
                    started = time.perf_counter()
                    answers = workers.all({"cmd": "round", "round": rep})
                    wall = time.perf_counter() - started
                    broker_cpu = _cpu_seconds(broker.pid) - broker_cpu
                    workers.all({"cmd": "close"})
                    rounds[mode].append(
                        {"wall_s": wall, "broker_cpu_s": broker_cpu, "sites": answers}
                    )
        finally:
            workers.stop()
    medians = {}
    for mode in modes:
        runs = rounds[mode]
        sites = [site for run in runs for site in run["sites"]]
        assert all(site["count"] == n for site in sites), f"{mode}: a site missed an update"
        medians[mode] = {
            "round_wall_s_median": statistics.median(run["wall_s"] for run in runs),
            "round_wall_s_all": [run["wall_s"] for run in runs],
            "cpu_per_site_s_median": statistics.median(site["cpu_s"] for site in sites),
            "cpu_all_sites_s_median": statistics.median(
                sum(site["cpu_s"] for site in run["sites"]) for run in runs
            ),
            "broker_cpu_s_median": statistics.median(run["broker_cpu_s"] for run in runs),
            "bytes_out_per_site": statistics.median(site["bytes_out"] for site in sites),
            "bytes_in_per_site": statistics.median(site["bytes_in"] for site in sites),
            "peak_rss_mb_per_site_max": max(site["peak_rss_mb"] for site in sites),
            "max_abs_error_vs_float64_sum": max(site["max_abs_error"] for site in sites),
        }
    return medians


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Bars: median round wall time per (n, d), plaintext vs secure, ratio on top."""
    import matplotlib as mpl  # noqa: PLC0415 - the demo extra, only when plotting

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels = [f"n={r['n']}\nd={r['d']:.0e}" for r in rows]
    x = np.arange(len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(rows)), 4.0))
    labels_of = {
        "plain": "plaintext (float32 in the clear)",
        "secure": "secagg, broadcast",
        "secure-rs": "secagg, reduce-scatter",
        "plain-robust": "plaintext, robust's inputs",
        "robust": "robust",
    }
    modes = [m for m in ("plain", *_SECAGG_MODES, "plain-robust", "robust") if m in rows[0]]
    width = 0.8 / len(modes)
    for k, mode in enumerate(modes):
        values = [r[mode]["round_wall_s_median"] for r in rows]
        offset = (k - (len(modes) - 1) / 2) * width
        ax.bar(x + offset, values, width, label=labels_of[mode])
        if not mode.startswith("plain"):
            for i, r in enumerate(rows):
                ratio = r[_ratio_key(mode)]
                ax.text(x[i] + offset, values[i] * 1.05, f"{ratio:.2f}×", ha="center", fontsize=7)
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_yscale("log")
    ax.set_ylabel("round wall time (s, median)")
    ax.set_title("Same Mosquitto (TLS), same site processes")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="+", default=[10])
    parser.add_argument("--d", type=int, nargs="+", default=[1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--name", default="mqtt_compare")
    parser.add_argument("--ring-bits", type=int, choices=[32, 64], default=None)
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=MODES,
        default=["plain", *_SECAGG_MODES],
        help="plaintext always runs; robust only when named",
    )
    args = parser.parse_args()
    modes = ("plain", *(m for m in MODES if m != "plain" and m in args.modes))
    rows = []
    for n in args.n:
        for d in args.d:
            row = measure(n, d, args.repeat, args.ring_bits, modes)
            rows.append(row)
            parts = [f"n={n:3d} d={d:>10,d}"]
            for mode in (m for m in ("plain", *modes[1:], "plain-robust") if m in row):
                m = row[mode]
                parts.append(
                    f"{mode} {m['round_wall_s_median']:.3f} s, CPU/site "
                    f"{m['cpu_per_site_s_median'] * 1e3:.0f} ms, in "
                    f"{m['bytes_in_per_site'] / 1e6:.1f} MB, "
                    f"RSS {m['peak_rss_mb_per_site_max']:.0f} MB"
                )
            parts += [f"{k} {v:.2f}" for k, v in row.items() if k.endswith("_over_plain_wall")]
            print("  |  ".join(parts), flush=True)
    path = write(args.name, {"rows": rows})
    plot(rows, RESULTS / f"{args.name}.png")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
