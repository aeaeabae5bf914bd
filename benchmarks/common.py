"""Shared helpers: machine facts and result files (benchmarks/results/*.json)."""

from __future__ import annotations

import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import cryptography
import numpy

RESULTS = Path(__file__).resolve().parent / "results"


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": numpy.__version__,
        "cryptography": cryptography.__version__,
        "date": time.strftime("%Y-%m-%d"),
    }


def best_of(fn: Callable[[], object], repeat: int = 5) -> tuple[float, float]:
    """(best, median) wall seconds of ``fn`` over ``repeat`` runs after one warm-up."""
    fn()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times), statistics.median(times)


def cli(*args: str) -> list[str]:
    """The command line of ``mpc-agg`` with ``args``, run by this interpreter."""
    return [sys.executable, "-m", "peers.cli", *args]


@contextmanager
def broker_federation(
    n: int, d: int, *init_args: str, ring_bits: int | None = None, reduce_scatter: bool = False
) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """A federation as users make it (``mpc-agg init``: TLS, accounts, ACL) for updates of
    ``d`` entries, and its Mosquitto (``mpc-agg broker``) until the block ends.

    Yields the federation's folder (temporary) and the broker's process.
    ``ring_bits`` sets ``[encoding] ring_bits`` (default: the node's own choice);
    ``reduce_scatter`` sets ``[federation] reduce_scatter`` (secagg SPEC §6.7).
    """
    from peers.demo import free_port  # noqa: PLC0415 - keep this module light

    with tempfile.TemporaryDirectory(prefix="mpc-agg-bench-") as tmp:
        root = Path(tmp) / "fed"
        port = free_port()
        subprocess.run(
            cli("init", str(root), "--sites", str(n), "--broker-port", str(port), *init_args),
            check=True,
            capture_output=True,
        )
        toml = root / "federation.toml"
        text = toml.read_text().replace(
            "max_vector_length = 100000000", f"max_vector_length = {max(d, 1)}"
        )
        if ring_bits is not None:
            text = text.replace("[encoding]\n", f"[encoding]\nring_bits = {ring_bits}\n")
        if reduce_scatter:
            text = text.replace("[federation]\n", "[federation]\nreduce_scatter = true\n")
        toml.write_text(text)
        broker = subprocess.Popen(
            cli("broker", str(root)), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            time.sleep(0.5)
            yield root, broker
        finally:
            broker.send_signal(signal.SIGTERM)
            broker.wait(10)


def traffic(outcome: Any, n: int, *, broadcast_per_recipient: bool) -> tuple[float, float]:
    """Mean bytes of sealed envelopes sent and received per peer in a harness round.

    A broadcast counts once per recipient on the sending side with
    ``broadcast_per_recipient`` (a peer-to-peer network), else once (a publish to a broker).
    """
    from protocols.common import Broadcast, Send  # noqa: PLC0415 - keep this module light

    sent = [0] * n
    received = [0] * n
    for peer, record in outcome.peers.items():
        for effect in record.effects:
            if isinstance(effect, Broadcast):
                sent[peer] += len(effect.data) * ((n - 1) if broadcast_per_recipient else 1)
                for other in range(n):
                    if other != peer:
                        received[other] += len(effect.data)
            elif isinstance(effect, Send):
                sent[peer] += len(effect.data)
                received[effect.recipient] += len(effect.data)
    return sum(sent) / n, sum(received) / n


def write(name: str, payload: dict[str, Any]) -> Path:
    """Write ``benchmarks/results/{name}.json`` with the machine facts attached."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **payload}, indent=2) + "\n")
    return path
