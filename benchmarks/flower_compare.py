"""Our in-process ``secagg`` round against Flower SecAgg+ (complete graph): CPU per round.

DESIGN §8: total CPU for a round (all peers) at least 5× below Flower SecAgg+ with its
complete graph (num_shares = n) at n = 10, d = 10^6. For each (n, d) this measures, in
one run:

* ours: :func:`benchmarks.round_inprocess.measure` (CPU of every peer's machine calls,
  best of ``--repeat``), for the broadcast and the reduce-scatter data path (secagg SPEC
  §6.7), plus, for a float-in / float-out comparison, the fixed-point
  encode of the n float32 inputs and the n decodes of the result (which the harness round
  skips: it starts from ring vectors);
* the cryptographic floor of our design (:func:`benchmarks.floor.secagg_floor`: the
  primitives a broadcast peer cannot avoid, timed alone): Flower's CPU over n times it is
  the largest ratio our design could show on this machine;
* Flower: ``benchmarks/flower_secaggplus.py`` in the benchmark-only venv ``.venv-flwr``
  (flwr's own ``secaggplus_mod`` and ``SecAggPlusWorkflow``, in-process, every message
  serialised with Flower's serde), once per ``--transport``.

Writes ``benchmarks/results/flower_compare.json`` and ``flower_compare.png``. Run
(``make bench-flower`` creates .venv-flwr first)::

    .venv/bin/python -m benchmarks.flower_compare --n 10 --d 1000000 --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import RESULTS, write
from benchmarks.floor import secagg_floor
from benchmarks.round_inprocess import measure
from mpc_agg.fixedpoint import FixedPointCodec
from peers.config import DEFAULT_FRAC_BITS

ROOT = Path(__file__).resolve().parent.parent
FLOWER_SCRIPT = Path(__file__).resolve().parent / "flower_secaggplus.py"
FLOWER_PYTHON = ROOT / ".venv-flwr" / "bin" / "python"


def encode_decode_cpu(n: int, d: int, repeat: int) -> dict[str, float]:
    """CPU of encoding n float32 inputs and of n decodes of one aggregate (best of repeat)."""
    codec = FixedPointCodec(frac_bits=DEFAULT_FRAC_BITS, n_peers=n, max_abs_value=1.0)
    rng = np.random.default_rng(7)
    inputs = [rng.uniform(-1.0, 1.0, size=d).astype(np.float32) for _ in range(n)]
    encode = decode = float("inf")
    for _ in range(repeat):
        start = time.thread_time()
        encoded = [codec.encode(x, rng) for x in inputs]
        encode = min(encode, time.thread_time() - start)
        start = time.thread_time()
        for _ in range(n):
            codec.decode(encoded[0].ring)
        decode = min(decode, time.thread_time() - start)
    return {"encode_all_s": encode, "decode_all_s": decode}


def source_state() -> dict[str, Any]:
    """Which code "ours" was measured on: the commit, and whether the tree differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=False)
        return done.stdout.rstrip("\n") if done.returncode == 0 else "unknown"

    changed = git(
        "status",
        "--porcelain",
        "--",
        "mpc_agg",
        "protocols",
        "peers",
        "benchmarks/round_inprocess.py",
    )
    return {
        "commit": git("rev-parse", "HEAD").strip(),
        "uncommitted_changes_in": sorted({line[3:] for line in changed.splitlines()}),
    }


def run_flower(python: Path, n: int, d: int, repeat: int, transport: str) -> dict[str, Any]:
    """Run the Flower driver in the benchmark venv; its stdout is one JSON object."""
    command = [
        str(python),
        str(FLOWER_SCRIPT),
        f"--n={n}",
        f"--d={d}",
        f"--repeat={repeat}",
        f"--transport={transport}",
    ]
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"{' '.join(command)} failed with exit code {done.returncode}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def compare(n: int, d: int, repeat: int, transports: list[str], python: Path) -> dict[str, Any]:
    """Both sides at one (n, d), with the ratios."""
    ours = measure(n, d, repeat)
    ours_rs = measure(n, d, repeat, reduce_scatter=True)  # SPEC §6.7
    codec = encode_decode_cpu(n, d, repeat)
    floor = secagg_floor(n, d, max(repeat, 3))
    ours_total = ours["cpu_all_peers_s"]
    ours_float = ours_total + codec["encode_all_s"] + codec["decode_all_s"]
    flower = {t: run_flower(python, n, d, repeat, t) for t in transports}
    ratios = {
        t: {
            # The metric: everything Flower's round spends / everything our peers spend.
            "flower_total_over_ours_total": f["cpu_total_s"] / ours_total,
            # Float in, float out on both sides; Flower without FedAvg re-averaging the n
            # identical copies of the result and without the legacy NumPyClient handler.
            "flower_secagg_only_over_ours_with_encode_decode": f["cpu_total_secagg_only_s"]
            / ours_float,
            "flower_total_over_ours_reduce_scatter_total": f["cpu_total_s"]
            / ours_rs["cpu_all_peers_s"],
            # The most our design could show here: Flower over n peers at the floor.
            "flower_total_over_floor": f["cpu_total_s"] / floor["cpu_all_peers_s"],
        }
        for t, f in flower.items()
    }
    return {
        "n": n,
        "d": d,
        "ours": {**ours, **codec, "cpu_all_peers_with_encode_decode_s": ours_float},
        "ours_reduce_scatter": ours_rs,
        "floor": floor,
        "flower": flower,
        "ratio": ratios,
    }


def plot(path: Path, rows: list[dict[str, Any]]) -> Path:
    """One panel per (n, d): our CPU against Flower's (clients + server stacked)."""
    import matplotlib as mpl  # noqa: PLC0415 - the demo extra, only needed here

    mpl.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415
    from matplotlib.patches import Patch  # noqa: PLC0415

    colours = {
        "our peers (secagg round)": ("tab:blue", ""),
        "our encode + decode (float in / out)": ("lightsteelblue", "//"),
        "Flower clients": ("tab:orange", ""),
        "Flower server": ("navajowhite", "//"),
    }
    fig, axes = plt.subplots(1, len(rows), figsize=(4.5 * len(rows) + 1, 5), squeeze=False)
    for axis, row in zip(axes[0], rows, strict=True):
        ours = row["ours"]
        labels = ["ours"]
        bottom = [ours["cpu_all_peers_s"]]
        top = [ours["encode_all_s"] + ours["decode_all_s"]]
        for transport, flower in row["flower"].items():
            labels.append(f"Flower SecAgg+\n({transport})")
            bottom.append(flower["cpu_clients_s"])
            top.append(flower["cpu_server_s"])
        x = np.arange(len(labels))
        flowers = len(labels) - 1
        axis.bar(x, bottom, color=["tab:blue"] + ["tab:orange"] * flowers)
        axis.bar(
            x,
            top,
            bottom=bottom,
            color=["lightsteelblue"] + ["navajowhite"] * flowers,
            hatch="//",
        )
        for xi, (b, t) in enumerate(zip(bottom, top, strict=True)):
            axis.annotate(f"{b + t:.2f} s", (xi, b + t), ha="center", va="bottom")
        axis.set_xticks(x, labels)
        axis.set_ylim(0, 1.15 * max(b + t for b, t in zip(bottom, top, strict=True)))
        axis.set(
            ylabel="CPU seconds per round, all parties", title=f"n = {row['n']}, d = {row['d']:,}"
        )
        axis.grid(axis="y", alpha=0.3)
    handles = [Patch(facecolor=c, hatch=h, label=label) for label, (c, h) in colours.items()]
    fig.legend(handles=handles, loc="lower center", ncol=2, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _power_of_ten(value: int) -> str:
    """10⁶ for 1000000 (as the README writes sizes); other values with separators."""
    digits = len(str(value)) - 1
    if value >= 10 and value == 10**digits:
        return "10" + str(digits).translate(str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹"))
    return f"{value:,}"


def _seconds(value: float) -> str:
    return f"{value:.2f} s" if value >= 0.1 else f"{value:.3f} s"


def readme_table(rows: list[dict[str, Any]]) -> list[str]:
    """The README's table (pairs are proto / objects, when both transports ran)."""

    def pair(row: dict[str, Any], key: str) -> str:
        return " / ".join(f"{r[key]:.1f}×" for r in row["ratio"].values())

    lines = [
        "| n | d | ours, broadcast (with float encode/decode) | ours, reduce-scatter | "
        + " | ".join(f"Flower `{t}` total" for t in rows[0]["flower"])
        + " | Flower / ours (broadcast) | Flower / ours, float in and out | "
        "Flower / ours (reduce-scatter) | floor of our design | Flower / floor |",
        "|---|---|---|---|" + "---|" * len(rows[0]["flower"]) + "---|---|---|---|---|",
    ]
    for row in rows:
        ours = row["ours"]
        flowers = " | ".join(_seconds(f["cpu_total_s"]) for f in row["flower"].values())
        lines.append(
            f"| {row['n']} | {_power_of_ten(row['d'])} | {_seconds(ours['cpu_all_peers_s'])} "
            f"({_seconds(ours['cpu_all_peers_with_encode_decode_s'])}) | "
            f"{_seconds(row['ours_reduce_scatter']['cpu_all_peers_s'])} | {flowers} | "
            f"{pair(row, 'flower_total_over_ours_total')} | "
            f"{pair(row, 'flower_secagg_only_over_ours_with_encode_decode')} | "
            f"{pair(row, 'flower_total_over_ours_reduce_scatter_total')} | "
            f"{_seconds(row['floor']['cpu_all_peers_s'])} | "
            f"{pair(row, 'flower_total_over_floor')} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, nargs="*", default=[10])
    parser.add_argument("--d", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--transport", nargs="*", choices=("proto", "objects"), default=["proto", "objects"]
    )
    parser.add_argument("--flower-python", type=Path, default=FLOWER_PYTHON)
    args = parser.parse_args()
    if not args.flower_python.exists():
        raise SystemExit(f"{args.flower_python} is missing: run `make bench-flower`")
    rows = [
        compare(n, d, args.repeat, args.transport, args.flower_python)
        for n in args.n
        for d in args.d
    ]
    path = write("flower_compare", {"repeat": args.repeat, "source": source_state(), "rows": rows})
    png = plot(RESULTS / "flower_compare.png", rows)
    for line in readme_table(rows):
        print(line)
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
