"""``mpc-agg demo``: a whole federation on this machine.

A broker (Mosquitto when installed, else the pure-Python amqtt broker with the same TLS,
passwords and ACL), a fresh federation from ``mpc-agg init``, and one process per site.

``--task train`` (default): the sites train a small network on scikit-learn's digits,
split non-IID, with :class:`mpc_agg.torch.SecureAggOptimizer` over the broker (FedAvg),
and the same training runs with plaintext averaging for comparison. Per-round loss and
accuracy of both are printed as the rounds complete; a JSON of the numbers and a PNG of
both curves are written to ``--out``.

``--epsilon E`` (with ``--task train``): DP-SGD with distributed differential privacy
instead of FedAvg. Each step every site Poisson-samples its examples, clips each example's
gradient, and the sites aggregate the sums securely while each adds its share of discrete
Gaussian noise, calibrated so that the whole run spends at most ε (δ = ``--delta``) when
only the threshold's number of sites survive (``mpc_agg/DP.md``). ``--epsilon inf`` runs
the same DP-SGD without noise. The baseline is the same DP-SGD, in the clear, without noise.

``--task sum``: each round every site aggregates a public pseudo-random vector and the
result is printed against the plaintext sum (``--broker none`` runs the protocol machines
in memory instead, with dropouts).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib.util
import json
import math
import random
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from mpc_agg.dp import DpSettings, Unit, calibrate_noise_multiplier
from mpc_agg.fixedpoint import FixedPointCodec
from peers.config import DEFAULT_FRAC_BITS, FederationConfig, load_federation, load_site
from peers.embedded_broker import amqtt_available
from peers.init import broker_command, find_program, init_federation
from peers.node import PeerNode, RoundAbortedError
from peers.transport import TransportError
from protocols.harness import Dropout, run_secagg_round
from protocols.secagg.machine import default_threshold
from protocols.secagg.messages import Phase

if TYPE_CHECKING:
    from mpc_agg.torch.digits import DigitsTask, RoundMetrics
    from mpc_agg.torch.optimizer import Aggregator, SecureAggOptimizer

BROKERS = ("auto", "mosquitto", "amqtt", "none")
#: Encoding bound of the noiseless DP-SGD demo (``--epsilon inf``): every training image
#: at one site, each example's gradient clipped to 1.
_SUM_BOUND = 2048.0
_DROPPABLE = (
    Phase.ADVERTISE_KEYS,
    Phase.SHARE_KEYS,
    Phase.MASKED_INPUT,
    Phase.CONSISTENCY_CHECK,
    Phase.UNMASK,
)


class DemoError(Exception):
    """The demo cannot run as asked (exit code 2); the message says why and what to do."""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- broker


def choose_broker(requested: str) -> str:
    """Resolve ``--broker``: ``auto`` is Mosquitto if installed, else amqtt, else none."""
    if requested == "auto":
        if find_program("mosquitto") is not None:
            return "mosquitto"
        return "amqtt" if amqtt_available() else "none"
    if requested == "mosquitto" and find_program("mosquitto") is None:
        raise DemoError("mosquitto is not installed (e.g. `apt install mosquitto`)")
    if requested == "amqtt" and not amqtt_available():
        raise DemoError("amqtt is not installed: pip install 'mpc-agg[demo]'")
    return requested


def describe_broker(kind: str, port: int) -> str:
    """One line for the user: which broker, which guarantees."""
    if kind == "mosquitto":
        return f"mosquitto with TLS + per-site passwords and ACL on 127.0.0.1:{port}"
    why = "" if find_program("mosquitto") else "; mosquitto not found"
    return (
        f"amqtt (pure Python{why}) with TLS + per-site passwords and ACL on "
        f"127.0.0.1:{port}, MQTT 3.1.1"
    )


@contextlib.contextmanager
def running_broker(directory: Path, port: int, kind: str) -> Iterator[None]:
    """Start the federation's broker of ``kind``; wait until it accepts; stop it after."""
    if kind == "mosquitto":
        command = broker_command(directory)
    else:
        command = [sys.executable, "-m", "peers.embedded_broker", str(directory)]
    broker = subprocess.Popen(  # noqa: S603 - our own config, absolute paths
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if broker.poll() is not None:
                stderr = broker.stderr.read().decode() if broker.stderr else ""
                raise TransportError(f"{kind} exited at start: {stderr.strip()[-300:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if time.monotonic() > deadline:
                raise TransportError(f"{kind} did not listen on 127.0.0.1:{port} within 20 s")
            time.sleep(0.05)
        yield
    finally:
        broker.terminate()
        try:
            broker.wait(5)
        except subprocess.TimeoutExpired:
            broker.kill()
            broker.wait()


def make_federation(
    root: Path,
    *,
    sites: int,
    kind: str,
    threshold: int | None,
    protocol: str = "secagg",
    max_norm: float | None = None,
    dp: DpSettings | None = None,
    max_abs_value: float = 1.0,
) -> tuple[FederationConfig, int]:
    """``mpc-agg init`` into ``root/fed`` for a broker of ``kind`` on a free port."""
    port = free_port()
    init_federation(
        root / "fed",
        sites=sites,
        broker_port=port,
        threshold=threshold,
        mqtt_version="5" if kind == "mosquitto" else "3.1.1",
        protocol=protocol,
        max_norm=max_norm,
        dp=dp,
        max_abs_value=max_abs_value,
    )
    return load_federation(root / "fed" / "federation.toml"), port


class SiteProcesses:
    """The demo's site processes: killed after ``timeout`` s, and on exit whatever happened."""

    def __init__(self, root: Path, sites: int, extra: list[str], *, timeout: float) -> None:
        self.processes = [
            subprocess.Popen(  # noqa: S603 - this interpreter, our own module
                [
                    sys.executable,
                    "-m",
                    "peers.cli",
                    "_demo-site",
                    "--config",
                    str(root / "fed" / "sites" / f"site-{k}.toml"),
                    "--index",
                    str(k),
                    "--outdir",
                    str(root),
                    *extra,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for k in range(sites)
        ]
        self._watchdog = threading.Timer(timeout, self.kill)
        self._watchdog.daemon = True
        self._watchdog.start()

    def __enter__(self) -> SiteProcesses:
        return self

    def __exit__(self, *_exc: object) -> None:
        self._watchdog.cancel()
        self.kill()

    def kill(self) -> None:
        """Kill every site still running (idempotent)."""
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(5)

    def collect(self) -> list[tuple[str, str]] | None:
        """Wait for every site: their (stdout, stderr), or ``None`` on a failure.

        The first failed site, its exit code and last stderr line are printed to stderr.
        """
        outputs = [process.communicate() for process in self.processes]
        self._watchdog.cancel()
        failure = site_failure(outputs, self.processes)
        if failure:
            print(f"mpc-agg: {failure}", file=sys.stderr)
            return None
        return outputs


def site_failure(outputs: list[tuple[str, str]], processes: list[subprocess.Popen[str]]) -> str:
    """The first failed site and its last stderr line, or ``""`` when all succeeded."""
    for k, (process, (_, stderr)) in enumerate(zip(processes, outputs, strict=True)):
        if process.returncode != 0:
            code = process.returncode
            last = stderr.strip().splitlines()[-1] if stderr.strip() else ""
            if code == -signal.SIGKILL and not last:
                last = "killed by the demo's watchdog (timeout)"
            return f"site-{k} failed (exit {code}): {last}"
    return ""


# --------------------------------------------------------------------------- entry

#: The demo starts one process per site on this machine.
MAX_DEMO_SITES = 64


def run_demo(args: argparse.Namespace) -> int:
    """``mpc-agg demo``: validate, pick the broker, run the task. Raises :class:`DemoError`."""
    if not 2 <= args.sites <= MAX_DEMO_SITES:
        raise DemoError(f"need --sites in [2, {MAX_DEMO_SITES}] (one process each, here)")
    if args.rounds is not None and args.rounds < 1:
        raise DemoError("need --rounds ≥ 1")
    if args.seed is not None and not 0 <= args.seed < 2**32:
        raise DemoError("need --seed in [0, 2^32)")
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise DemoError("need a --timeout > 0 (seconds)")
    threshold = args.threshold
    robust = getattr(args, "protocol", "secagg") == "robust"
    if robust:
        if args.task != "train":
            raise DemoError("--protocol robust is for the training demo (--task train)")
        if args.sites < 3:
            raise DemoError("robust needs --sites ≥ 3 (2t + 1 live sites with t ≥ 1)")
        if threshold is not None and not (threshold >= 1 and 2 * threshold + 1 <= args.sites):
            raise DemoError(f"robust: --threshold t must satisfy 1 ≤ t and 2t+1 ≤ {args.sites}")
    elif threshold is not None and not 2 <= threshold <= args.sites:
        raise DemoError(f"--threshold must be in [2, {args.sites}]")
    epsilon = getattr(args, "epsilon", None)
    if epsilon is not None:
        if args.task != "train" or robust:
            raise DemoError("--epsilon is for the secagg training demo (--task train)")
        if not epsilon > 0:
            raise DemoError("--epsilon must be > 0 (or inf: DP-SGD without noise)")
        if not 0 < args.delta < 1:
            raise DemoError("--delta must be in (0, 1)")
    if args.in_process:  # the old spelling of `--task sum --broker none`
        args.task, args.broker = "sum", "none"
    kind = choose_broker(args.broker)
    if args.task == "train":
        if kind == "none":
            raise DemoError(
                "the training demo needs a broker: install mosquitto or amqtt "
                "(pip install 'mpc-agg[demo]'), or use --task sum --broker none"
            )
        return train_demo(args, kind)
    if args.dim < 1:
        raise DemoError("need --dim ≥ 1")
    if kind == "none":
        return sum_in_process(args)
    return sum_demo(args, kind)


def run_site(args: argparse.Namespace) -> int:
    """The hidden ``_demo-site`` command: one site process of the demo."""
    if args.task == "train":
        return train_site_process(args)
    return sum_site_process(args)


# --------------------------------------------------------------------------- train


def _task(args: argparse.Namespace, sites: int) -> Any:
    from mpc_agg.torch.digits import DigitsTask  # noqa: PLC0415 - torch is an extra

    return DigitsTask(sites=sites, seed=args.seed, local_steps=args.local_steps)


def train_site_process(args: argparse.Namespace) -> int:
    """One training site: FedAvg through the broker; one JSON line per round on stdout."""
    from mpc_agg.torch.digits import (  # noqa: PLC0415
        DpSgd,
        flat_parameters,
        train_site,
        train_site_dpsgd,
    )
    from peers.background import BackgroundPeer  # noqa: PLC0415

    site = load_site(args.config)
    task = _task(args, site.federation.n)
    started = time.perf_counter()

    def report(metrics: RoundMetrics, optimizer: SecureAggOptimizer) -> None:
        nonlocal started
        result = optimizer.last_result
        line = {
            "round": metrics.round_id,
            "train_loss": metrics.train_loss,
            "test_loss": metrics.test_loss,
            "test_accuracy": metrics.test_accuracy,
            "count": result.count,
            "included": list(result.included),
            "dropped": dict(result.dropped),
            "digest": result.result_digest,
            "seconds": time.perf_counter() - started,
            "aggregate_seconds": sum(result.timings.values()),
            "bytes_in": result.bytes_in,
            "bytes_out": result.bytes_out,
            "epsilon": optimizer.epsilon,
        }
        print(json.dumps(line), flush=True)
        started = time.perf_counter()

    with BackgroundPeer.from_config(site) as peer:
        if getattr(args, "dp", False):
            privacy = peer.privacy
            model = train_site_dpsgd(
                task,
                DpSgd(steps=args.rounds),
                args.index,
                peer,
                report,
                noise_multiplier=None if privacy is None else privacy.noise_multiplier,
            )
        else:
            model = train_site(task, args.index, peer, args.rounds, report)
    np.save(Path(args.outdir) / f"site-{args.index}-final.npy", flat_parameters(model))
    return 0


def train_demo(args: argparse.Namespace, kind: str) -> int:
    """Plaintext baseline in-process, then the secure run through the broker, compared."""
    missing = [name for name in ("torch", "sklearn") if importlib.util.find_spec(name) is None]
    if missing:
        raise DemoError(
            f"the training demo needs torch and scikit-learn ({', '.join(missing)} missing): "
            "pip install 'torch==2.13.0' 'mpc-agg[torch,demo]', or use --task sum"
        )
    n = args.sites
    epsilon = getattr(args, "epsilon", None)
    private = epsilon is not None
    rounds = args.rounds or (100 if private else 20)
    args.seed = args.seed if args.seed is not None else secrets.randbits(31)
    task = _task(args, n)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    schedule = (
        f"{rounds} DP-SGD steps (Poisson sampling, per-example clipping)"
        if private
        else f"{rounds} FedAvg rounds of {task.local_steps} local steps"
    )
    print(
        f"mpc-agg demo: federated training on scikit-learn's digits (1,797 8×8 images), "
        f"{n} sites, non-IID (Dirichlet α={task.alpha}), {schedule}, seed {args.seed}"
    )
    dp_settings = _dp_settings(task, args, rounds) if private else None
    baseline_start = time.perf_counter()
    plain: list[RoundMetrics] = []
    final_plain = train_plaintext(task, rounds, plain.append, dpsgd=private)
    print(
        f"plaintext baseline ({'no noise, ' if private else ''}averaged in the clear, "
        f"in-process): {time.perf_counter() - baseline_start:.1f} s, final accuracy "
        f"{plain[-1].test_accuracy:.1%}"
    )
    with tempfile.TemporaryDirectory(prefix="mpc-agg-demo-") as tmp:
        root = Path(tmp)
        protocol = getattr(args, "protocol", "secagg")
        federation, port = make_federation(
            root,
            sites=n,
            kind=kind,
            threshold=args.threshold,
            protocol=protocol,
            max_norm=task.clip if protocol == "robust" else None,
            dp=dp_settings,
            # DP-SGD without noise sends a sum of clipped examples: an entry may reach
            # (examples at the site) × clip, far above the FedAvg delta's bound of 1.
            max_abs_value=_SUM_BOUND if private else 1.0,
        )
        print(f"broker: {describe_broker(kind, port)}; one process per site")
        if protocol == "robust":
            print(
                f"secure aggregation: robust, threshold t={federation.threshold} "
                f"({2 * federation.threshold + 1} live sites needed), every delta clipped to "
                f"L2 ≤ {task.clip}, its norm proven ≤ max_norm without being revealed, "
                f"encoded with 2^-{federation.encoding.frac_bits}\n"
            )
        elif private:
            from mpc_agg.torch.digits import DpSgd  # noqa: PLC0415 - torch extra

            noise = (
                "no noise (ε = ∞)"
                if dp_settings is None
                else f"discrete Gaussian noise multiplier z={dp_settings.noise_multiplier:.3f} "
                f"(ε ≤ {epsilon:g} at δ={args.delta:g} over {rounds} steps, calibrated for "
                f"{federation.threshold} surviving sites), each site adding 1/"
                f"{federation.threshold} of the variance"
            )
            print(
                f"secure aggregation: secagg, threshold T={federation.threshold}; each example's "
                f"gradient clipped to L2 ≤ {DpSgd().clip}, sampled with q="
                f"{DpSgd().sampling_probability}; {noise}\n"
            )
        else:
            print(
                f"secure aggregation: secagg, threshold T={federation.threshold}, every delta "
                f"clipped to L2 ≤ {task.clip} and encoded with "
                f"2^-{federation.encoding.frac_bits}\n"
            )
        print(
            f"{'round':>7}  {'secure loss':>11} {'acc':>6}   {'plain loss':>10} {'acc':>6}"
            f"   {'s/round':>7}"
        )
        extra = ["--task", "train", "--rounds", str(rounds), "--seed", str(args.seed)]
        extra += ["--local-steps", str(task.local_steps)]
        if private:
            extra.append("--dp")
        with (
            running_broker(root / "fed", port, kind),
            SiteProcesses(root, n, extra, timeout=args.timeout) as sites,
        ):
            secure = _stream_rounds(sites.processes[0], plain, rounds, every=10 if private else 1)
            outputs = sites.collect()
            if outputs is None:
                return 1
            per_site = [[json.loads(x) for x in o.splitlines() if x.strip()] for o, _ in outputs]
            per_site[0] = secure
            finals = [np.load(root / f"site-{k}-final.npy") for k in range(n)]
        return _train_summary(args, out, task, kind, plain, per_site, finals, final_plain)


def _dp_settings(task: DigitsTask, args: argparse.Namespace, rounds: int) -> DpSettings | None:
    """``[dp]`` for ``--epsilon``: z calibrated so that ``rounds`` steps spend ≤ ε."""
    from mpc_agg.torch.digits import DpSgd, make_model  # noqa: PLC0415 - torch extra

    if args.epsilon == float("inf"):
        return None
    dpsgd = DpSgd(steps=rounds, delta=args.delta)
    template = DpSettings(
        noise_multiplier=1.0,
        clip_norm=dpsgd.clip,
        delta=dpsgd.delta,
        epsilon_budget=args.epsilon,
        unit=Unit.EXAMPLE,
        sampling_probability=dpsgd.sampling_probability,
    )
    length = sum(p.numel() for p in make_model(task).parameters())
    threshold = args.threshold if args.threshold is not None else default_threshold(task.sites)
    z = calibrate_noise_multiplier(
        template,
        epsilon=args.epsilon,
        rounds=rounds,
        vector_length=length,
        frac_bits=DEFAULT_FRAC_BITS,
        min_sites=threshold,
    )
    return replace(template, noise_multiplier=z)


def _stream_rounds(
    process: subprocess.Popen[str], plain: list[Any], rounds: int, *, every: int = 1
) -> list[Any]:
    """Print site-0's rounds as they complete (every ``every``-th), next to the baseline."""
    assert process.stdout is not None
    lines = []
    for raw in process.stdout:
        if not raw.strip():
            continue
        line = json.loads(raw)
        lines.append(line)
        r = line["round"]
        if r % every and r != rounds:
            continue
        base = plain[r - 1]
        spent = "" if line.get("epsilon") is None else f"   ε={line['epsilon']:.3f}"
        print(
            f"{r:>3}/{rounds:<3}  {line['test_loss']:11.4f} {line['test_accuracy']:6.1%}   "
            f"{base.test_loss:10.4f} {base.test_accuracy:6.1%}   {line['seconds']:7.2f}{spent}",
            flush=True,
        )
    return lines


def _train_summary(
    args: argparse.Namespace,
    out: Path,
    task: Any,
    kind: str,
    plain: list[Any],
    per_site: list[list[dict[str, Any]]],
    finals: list[NDArray[np.float64]],
    final_plain: NDArray[np.float64],
) -> int:
    secure = per_site[0]
    rounds = len(plain)
    epsilon: float | None = getattr(args, "epsilon", None)
    inf = float("inf")
    agree = all(len({site[r]["digest"] for site in per_site}) == 1 for r in range(rounds)) and all(
        np.array_equal(finals[0], f) for f in finals
    )
    gap = abs(secure[-1]["test_accuracy"] - plain[-1].test_accuracy)
    drift = float(np.max(np.abs(finals[0] - final_plain)))
    seconds = [line["seconds"] for line in secure]
    record = {
        "task": "digits",
        "protocol": getattr(args, "protocol", "secagg"),
        "sites": task.sites,
        "rounds": rounds,
        "seed": args.seed,
        "broker": kind,
        "local_steps": task.local_steps,
        "alpha": task.alpha,
        "lr": task.lr,
        "clip": task.clip,
        "secure": secure,
        "plaintext": [
            {
                "round": m.round_id,
                "train_loss": m.train_loss,
                "test_loss": m.test_loss,
                "test_accuracy": m.test_accuracy,
            }
            for m in plain
        ],
        "final_accuracy_secure": secure[-1]["test_accuracy"],
        "final_accuracy_plaintext": plain[-1].test_accuracy,
        "accuracy_gap_points": 100 * gap,
        "max_parameter_difference": drift,
        "seconds_per_round_median": float(np.median(seconds)),
        "bytes_out_per_site_per_round": float(np.mean([x["bytes_out"] for x in secure])),
        "sites_agree": agree,
        # per round, the result digest every site computed (site-0 first)
        "result_digests": [[site[r]["digest"] for site in per_site] for r in range(rounds)],
        # JSON has no infinity: the noiseless DP-SGD run records the string "inf".
        "epsilon_target": None if epsilon is None else (epsilon if epsilon < inf else "inf"),
        "epsilon_spent": secure[-1].get("epsilon"),
        "delta": None if epsilon is None else args.delta,
    }
    (out / "demo.json").write_text(json.dumps(record, indent=2) + "\n")
    plot = _plot(out / "demo.png", record)
    print(
        f"\nfinal test accuracy: secure {secure[-1]['test_accuracy']:.1%}, plaintext "
        f"{plain[-1].test_accuracy:.1%} (gap {100 * gap:.2f} points); max |parameter "
        f"difference| {drift:.1e}"
    )
    print(
        f"median {np.median(seconds):.2f} s per round (local training + secure aggregation); "
        f"{record['bytes_out_per_site_per_round'] / 1e3:.0f} kB sent per site per round"
    )
    if epsilon is not None:
        spent = record["epsilon_spent"]
        print(
            f"privacy: ε spent {spent:.3f} of {epsilon:g} (δ={args.delta:g}), "
            "from each site's ledger (dp-accounting RDP)"
            if spent is not None
            else "privacy: none (ε = ∞: DP-SGD clipping and sampling without noise)"
        )
    print(
        "every site computed the identical aggregate each round"
        if agree
        else "SITES DISAGREE on an aggregate"
    )
    print(f"wrote {out / 'demo.json'}" + (f" and {plot}" if plot else " (no matplotlib: no plot)"))
    return 0 if agree else 1


def _plot(path: Path, record: dict[str, Any]) -> Path | None:
    try:
        import matplotlib as mpl  # noqa: PLC0415 - the demo extra

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # noqa: PLC0415
        from matplotlib.ticker import MaxNLocator  # noqa: PLC0415
    except ImportError:
        return None
    rounds = [x["round"] for x in record["secure"]]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label, style in (
        ("secure", "secure aggregation", "-"),
        ("plaintext", "plaintext", "--"),
    ):
        left.plot(rounds, [x["test_loss"] for x in record[key]], style, label=label)
        right.plot(rounds, [100 * x["test_accuracy"] for x in record[key]], style, label=label)
    left.set(xlabel="round", ylabel="test loss (cross-entropy)", title="loss")
    right.set(xlabel="round", ylabel="test accuracy (%)", title="accuracy")
    for axis in (left, right):
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))
        axis.grid(alpha=0.3)
        axis.legend()
    fig.suptitle(
        f"FedAvg on digits, {record['sites']} sites over {record['broker']}: "
        f"secure {record['final_accuracy_secure']:.1%} vs plaintext "
        f"{record['final_accuracy_plaintext']:.1%}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------- plaintext baseline


@dataclass(frozen=True, slots=True)
class _Sum:
    total: NDArray[np.float64]
    count: int


class PlaintextAverage:
    """In-the-clear aggregation for the baseline: ``n`` sites on threads meet at a barrier.

    ``for_site(k)`` is site ``k``'s aggregator; every site gets the same sum, added in
    site order.
    """

    def __init__(self, sites: int) -> None:
        self._vectors: list[NDArray[np.float64] | None] = [None] * sites
        self._barrier = threading.Barrier(sites)

    def for_site(self, site: int) -> Aggregator:
        """The aggregator site ``site`` passes to its optimizer."""
        outer = self

        class _Site:
            def aggregate(self, update: NDArray[np.float64]) -> _Sum:
                outer._vectors[site] = update.copy()
                outer._barrier.wait()
                vectors = [v for v in outer._vectors if v is not None]
                total = np.sum(vectors, axis=0)
                outer._barrier.wait()  # nobody overwrites before everyone has summed
                return _Sum(total, len(vectors))

        return _Site()


def train_plaintext(
    task: DigitsTask, rounds: int, report: Callable[[RoundMetrics], None], *, dpsgd: bool = False
) -> NDArray[np.float64]:
    """The baseline: all sites in this process, deltas averaged in the clear.

    ``dpsgd``: the DP-SGD schedule (``rounds`` steps) without noise instead of FedAvg.

    ``report`` gets site 0's metrics after each round (every site holds the same model).
    Returns site 0's final parameters (:func:`flat_parameters`). Raises the first error a
    site thread hit.
    """
    from mpc_agg.torch.digits import (  # noqa: PLC0415 - torch extra
        DpSgd,
        load_split,
        train_site,
        train_site_dpsgd,
    )

    data = load_split(task)
    average = PlaintextAverage(task.sites)
    errors: list[BaseException] = []
    finals: dict[int, NDArray[np.float64]] = {}

    def run(site: int) -> None:
        def on_round(metrics: RoundMetrics, _opt: SecureAggOptimizer) -> None:
            if site == 0:
                report(metrics)

        try:
            from mpc_agg.torch.digits import flat_parameters  # noqa: PLC0415

            aggregator = average.for_site(site)
            if dpsgd:
                model = train_site_dpsgd(
                    task,
                    DpSgd(steps=rounds),
                    site,
                    aggregator,
                    on_round,
                    noise_multiplier=None,
                    data=data,
                )
            else:
                model = train_site(task, site, aggregator, rounds, on_round, data=data)
            finals[site] = flat_parameters(model)
        except BaseException as exc:
            errors.append(exc)
            average._barrier.abort()

    threads = [threading.Thread(target=run, args=(k,)) for k in range(task.sites)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return finals[0]


# --------------------------------------------------------------------------- sum


def demo_update(seed: int, site: int, round_id: int, dim: int, clip: float) -> NDArray[np.float64]:
    """The demo's (public, reproducible) update of ``site`` in ``round_id``."""
    rng = np.random.default_rng([seed, site, round_id])
    return np.clip(rng.normal(0.0, clip / 4, dim), -clip, clip)


def sum_site_process(args: argparse.Namespace) -> int:
    """One sum-demo site: prints one JSON line per round."""

    async def run() -> None:
        async with PeerNode.from_config(load_site(args.config)) as node:
            for round_id in range(1, args.rounds + 1):
                update = demo_update(args.seed, args.index, round_id, args.dim, args.clip)
                started = time.perf_counter()
                try:
                    result = await node.aggregate(update, round_id=round_id)
                except RoundAbortedError as exc:
                    print(json.dumps({"round": round_id, "aborted": exc.reason}), flush=True)
                    continue
                path = Path(args.outdir) / f"{node.name}-round{round_id}.npy"
                np.save(path, result.total)
                line = {
                    "round": round_id,
                    "included": list(result.included),
                    "dropped": dict(result.dropped),
                    "digest": result.result_digest,
                    "seconds": time.perf_counter() - started,
                    "total_file": str(path),
                }
                print(json.dumps(line), flush=True)

    asyncio.run(run())
    return 0


def sum_demo(args: argparse.Namespace, kind: str) -> int:
    """Sum demo through a broker: N site processes, R rounds, each vs. the plaintext sum."""
    n, rounds = args.sites, args.rounds or 3
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    with tempfile.TemporaryDirectory(prefix="mpc-agg-demo-") as tmp:
        root = Path(tmp)
        federation, port = make_federation(root, sites=n, kind=kind, threshold=args.threshold)
        codec = FixedPointCodec(
            frac_bits=federation.encoding.frac_bits,
            n_peers=n,
            max_abs_value=federation.encoding.max_abs_value,
        )
        print(
            f"mpc-agg demo: {n} sites, threshold T={federation.threshold}, {rounds} rounds, "
            f"d={args.dim:,}, seed {seed}"
        )
        print(f"broker: {describe_broker(kind, port)}; one process per site\n")
        extra = ["--task", "sum", "--rounds", str(rounds), "--dim", str(args.dim)]
        extra += ["--seed", str(seed), "--clip", str(federation.encoding.max_abs_value)]
        with (
            running_broker(root / "fed", port, kind),
            SiteProcesses(root, n, extra, timeout=args.timeout) as sites,
        ):
            outputs = sites.collect()
            if outputs is None:
                return 1
            return _print_sum(outputs, n, rounds, seed, args.dim, codec)


def _print_sum(
    outputs: list[tuple[str, str]],
    n: int,
    rounds: int,
    seed: int,
    dim: int,
    codec: FixedPointCodec,
) -> int:
    per_site = [
        [json.loads(line) for line in out.splitlines() if line.strip()] for out, _ in outputs
    ]
    print(f"{'round':>5}  {'included':<40} {'max|secure−plain|':>18}  {'seconds':>7}")
    worst, bad = 0.0, 0
    for r in range(rounds):
        lines = [site_lines[r] for site_lines in per_site]
        if any("aborted" in line for line in lines):
            reasons = {line.get("aborted", "") for line in lines} - {""}
            print(f"{r + 1:>5}  aborted: {'; '.join(sorted(reasons))}")
            bad += 1
            continue
        first = lines[0]
        included = [int(name.split("-")[1]) for name in first["included"]]
        plain = sum(demo_update(seed, k, r + 1, dim, codec.max_abs_value) for k in included)
        secure = np.load(first["total_file"])
        error = float(np.max(np.abs(secure - plain)))
        agree = len({line["digest"] for line in lines}) == 1 and all(
            np.array_equal(np.load(line["total_file"]), secure) for line in lines
        )
        bad += not agree
        worst = max(worst, error)
        flag = "" if agree else "  SITES DISAGREE"
        names = ", ".join(first["included"])
        print(f"{r + 1:>5}  {names:<40} {error:18.3e}  {first['seconds']:7.2f}{flag}")
    bound = n * 2.0**-codec.frac_bits
    if bad:
        return 1
    print(
        f"\nevery site computed the identical sum each round; worst float error {worst:.3e} "
        f"≤ stochastic-rounding bound n·2^-f = {bound:.3e}"
    )
    return 0


def sum_in_process(args: argparse.Namespace) -> int:
    """Sum demo without a broker: the protocol machines wired in memory, with dropouts."""
    n, rounds, dim = args.sites, args.rounds or 3, args.dim
    threshold = args.threshold or default_threshold(n)
    if not 0 <= args.drop <= n - threshold:
        raise DemoError(f"--drop must be in [0, n−T = {n - threshold}]")
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    schedule = random.Random(seed)  # noqa: S311 - picks demo dropouts, not a secret
    rng = np.random.default_rng(seed)
    codec = FixedPointCodec(frac_bits=args.frac_bits, n_peers=n, max_abs_value=args.clip)
    print(
        f"mpc-agg demo: {n} sites, threshold T={threshold}, {rounds} rounds, d={dim:,}, "
        f"fixed point 2^-{args.frac_bits}, seed {seed}"
    )
    print("network: in-process (protocol machines wired in memory, no broker)\n")
    print(f"{'round':>5}  {'included':<24} {'dropped (phase)':<30} {'max|secure−plain|':>18}  time")
    worst, aborted = 0.0, 0
    for round_id in range(1, rounds + 1):
        updates = {p: demo_update(seed, p, round_id, dim, args.clip) for p in range(n)}
        encoded = {p: codec.encode(u, rng).ring for p, u in updates.items()}
        drops = [
            Dropout(p, schedule.choice(_DROPPABLE)) for p in schedule.sample(range(n), args.drop)
        ]
        start = time.perf_counter()
        outcome = run_secagg_round(
            n=n,
            vector_length=dim,
            seed=seed + round_id,
            threshold=threshold,
            inputs=encoded,
            dropouts=drops,
            round_id=round_id,
            federation="demo",
        )
        elapsed = time.perf_counter() - start
        results = outcome.results()
        if not results:
            reasons = {a.reason for a in outcome.aborts().values()}
            print(f"{round_id:>5}  aborted: {'; '.join(sorted(reasons))}")
            aborted += 1
            continue
        digests = {r.result_digest for r in results.values()}
        first = next(iter(results.values()))
        secure = codec.decode(first.total)
        plain = sum(updates[p] for p in first.included)
        error = float(np.max(np.abs(secure - plain)))
        ring_exact = bool((first.total == outcome.expected_total(first.included)).all())
        worst = max(worst, error)
        dropped = ", ".join(f"{d.peer} ({d.phase.name.lower()})" for d in drops) or "-"
        flags = ("" if len(digests) == 1 else "  PEERS DISAGREE") + (
            "" if ring_exact else "  RING SUM WRONG"
        )
        print(
            f"{round_id:>5}  {list(first.included)!s:<24} {dropped:<30} "
            f"{error:18.3e}  {elapsed:.2f}s{flags}"
        )
        if flags:
            return 1
    if aborted:
        return 1
    bound = n * 2.0**-args.frac_bits
    print(
        f"\nall sites agreed every round; the ring sums were bit-exact; worst float error "
        f"{worst:.3e} ≤ stochastic-rounding bound n·2^-f = {bound:.3e}"
    )
    return 0


__all__ = ["BROKERS", "DemoError", "demo_update", "free_port", "run_demo", "run_site"]
