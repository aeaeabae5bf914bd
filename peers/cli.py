"""The ``mpc-agg`` command line.

``init``       create a federation: site keys and configs, Mosquitto TLS + ACL setup
``broker``     run the federation's Mosquitto in the foreground
``aggregate``  run one secure round as one site: ``--input X.npy`` → ``--output SUM.npy``
``audit``      ``audit verify FILE``: check a site's hash-chained audit log
``demo``       a whole federation on this machine: a broker, N site processes, R rounds,
               each result printed next to the plaintext sum

Exit codes: 0 success, 1 round aborted or audit log broken, 2 bad usage or configuration,
3 broker unreachable.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from mpc_agg.errors import MpcAggError
from mpc_agg.fixedpoint import FixedPointCodec
from peers.audit import verify_audit_log
from peers.config import ConfigError, load_federation, load_site
from peers.init import broker_command, find_program, init_federation
from peers.node import AggregateResult, PeerNode, RoundAbortedError
from peers.transport import TransportError
from protocols.harness import Dropout, run_secagg_round
from protocols.secagg.machine import default_threshold
from protocols.secagg.messages import Phase

_DROPPABLE = (
    Phase.ADVERTISE_KEYS,
    Phase.SHARE_KEYS,
    Phase.MASKED_INPUT,
    Phase.CONSISTENCY_CHECK,
    Phase.UNMASK,
)


def _err(message: str) -> None:
    print(f"mpc-agg: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- init / broker


def _init(args: argparse.Namespace) -> int:
    path = init_federation(
        Path(args.directory),
        sites=args.sites,
        protocol=args.protocol,
        broker_port=args.broker_port,
        broker_host=args.broker_host,
        threshold=args.threshold,
    )
    federation = load_federation(path)
    root = Path(args.directory)
    print(f"federation {federation.id}: {federation.n} sites, threshold T={federation.threshold}")
    print(f"  {path}")
    print(f"  {root / 'sites'}/site-K.toml, .key, .password (one set per site; keep them private)")
    print(f"  {root / 'broker'}/mosquitto.conf, acl, passwd, ca.crt, server.crt")
    print(f"next: mpc-agg broker {root}   # then, at each site:")
    print("      mpc-agg aggregate --config sites/site-K.toml --input x.npy --output sum.npy")
    return 0


def _broker(args: argparse.Namespace) -> int:  # noqa: RET503 - execv does not return
    if find_program("mosquitto") is None:
        _err("mosquitto is not installed (e.g. `apt install mosquitto`)")
        return 2
    command = broker_command(Path(args.directory))
    print(f"starting: {' '.join(command)}", flush=True)
    os.execv(command[0], command)  # noqa: S606 - the foreground broker replaces this process


# --------------------------------------------------------------------------- aggregate


def _aggregate(args: argparse.Namespace) -> int:
    site = load_site(args.config)
    if args.round is not None and not 1 <= args.round < 2**64:  # SPEC §2.1; 0 is never run
        _err(f"--round must be in [1, 2^64), got {args.round}")
        return 2
    try:
        update = np.load(args.input, allow_pickle=False)
    except (OSError, ValueError) as exc:
        _err(f"cannot read {args.input}: {exc}")
        return 2
    result = asyncio.run(_one_round(site_path=args.config, update=update, round_id=args.round))
    np.save(args.output, result.total)
    if args.report:
        Path(args.report).write_text(json.dumps(_report(result), indent=2) + "\n")
    print(
        f"{site.name}: round {result.round_id}: sum of {result.count} sites "
        f"({', '.join(result.included)}) written to {args.output}"
    )
    return 0


async def _one_round(
    *, site_path: str, update: NDArray[Any], round_id: int | None
) -> AggregateResult:
    async with PeerNode.from_config(load_site(site_path)) as node:
        return await node.aggregate(update, round_id=round_id)


def _report(result: AggregateResult) -> dict[str, Any]:
    return {
        "protocol": result.protocol,
        "round": result.round_id,
        "count": result.count,
        "included": list(result.included),
        "dropped": dict(result.dropped),
        "excluded": dict(result.excluded),
        "result_digest": result.result_digest,
        "confirmed_by": list(result.confirmed_by),
        "timings_s": dict(result.timings),
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "ignored": dict(result.ignored),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


# --------------------------------------------------------------------------- audit


def _audit(args: argparse.Namespace) -> int:
    verify_key = None
    if args.federation is not None:
        roster = load_federation(args.federation).roster
        try:
            verify_key = roster.verify_key(roster.index_of(args.site))
        except KeyError:
            _err(f"no site named {args.site!r} in {args.federation}")
            return 2
    if not Path(args.file).is_file():  # a typo or a deleted log is not an "ok" empty log
        _err(f"no audit log at {args.file}")
        return 2
    report = verify_audit_log(args.file, verify_key=verify_key)
    if report.ok:
        checked = f"signed by {args.site}" if verify_key else "signatures NOT checked"
        print(f"{args.file}: ok, {report.lines} lines, hash chain intact, {checked}")
        return 0
    print(f"{args.file}: BROKEN at line {report.line_number}: {report.problem}")
    return 1


# --------------------------------------------------------------------------- demo


def demo_update(seed: int, site: int, round_id: int, dim: int, clip: float) -> NDArray[np.float64]:
    """The demo's (public, reproducible) update of ``site`` in ``round_id``."""
    rng = np.random.default_rng([seed, site, round_id])
    return np.clip(rng.normal(0.0, clip / 4, dim), -clip, clip)


def _demo_site(args: argparse.Namespace) -> int:
    """Hidden: one demo site process; prints one JSON line per round."""

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
                line = {
                    "round": round_id,
                    "included": list(result.included),
                    "dropped": dict(result.dropped),
                    "digest": result.result_digest,
                    "seconds": time.perf_counter() - started,
                    "total_file": None,
                }
                path = Path(args.outdir) / f"{node.name}-round{round_id}.npy"
                np.save(path, result.total)
                line["total_file"] = str(path)
                print(json.dumps(line), flush=True)

    asyncio.run(run())
    return 0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def _running_broker(directory: Path, port: int) -> Iterator[None]:
    command = broker_command(directory)
    broker = subprocess.Popen(  # noqa: S603 - our own config, absolute paths
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if broker.poll() is not None:
                stderr = broker.stderr.read().decode() if broker.stderr else ""
                raise TransportError(f"mosquitto exited at start: {stderr.strip()[-300:]}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            time.sleep(0.05)
        yield
    finally:
        broker.terminate()
        try:
            broker.wait(5)
        except subprocess.TimeoutExpired:
            broker.kill()


def _demo(args: argparse.Namespace) -> int:
    if args.in_process:
        return _demo_in_process(args)
    n, rounds = args.sites, args.rounds
    if args.threshold is not None and not 2 <= args.threshold <= n:
        _err(f"--threshold must be in [2, {n}]")
        return 2
    seed = args.seed if args.seed is not None else secrets.randbits(32)
    if find_program("mosquitto") is None:
        print(
            "mosquitto is not installed: running the sites in-process instead "
            "(install mosquitto, e.g. `apt install mosquitto`, for the broker demo)\n"
        )
        return _demo_in_process(args)
    with tempfile.TemporaryDirectory(prefix="mpc-agg-demo-") as tmp:
        root = Path(tmp)
        port = free_port()
        init_federation(root / "fed", sites=n, broker_port=port, threshold=args.threshold)
        federation = load_federation(root / "fed" / "federation.toml")
        codec = FixedPointCodec(
            frac_bits=federation.encoding.frac_bits,
            n_peers=n,
            max_abs_value=federation.encoding.max_abs_value,
        )
        print(
            f"mpc-agg demo: {n} sites, threshold T={federation.threshold}, {rounds} rounds, "
            f"d={args.dim:,}, seed {seed}"
        )
        print(
            f"broker: mosquitto with TLS + per-site ACL on 127.0.0.1:{port}; one process per site\n"
        )
        with _running_broker(root / "fed", port):
            sites = [
                subprocess.Popen(  # noqa: S603
                    [
                        sys.executable,
                        "-m",
                        "peers.cli",
                        "_demo-site",
                        "--config",
                        str(root / "fed" / "sites" / f"site-{k}.toml"),
                        "--index",
                        str(k),
                        "--rounds",
                        str(rounds),
                        "--dim",
                        str(args.dim),
                        "--seed",
                        str(seed),
                        "--clip",
                        str(federation.encoding.max_abs_value),
                        "--outdir",
                        str(root),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                for k in range(n)
            ]
            outputs = [site.communicate(timeout=120 + 30 * rounds) for site in sites]
        return _print_demo(outputs, sites, n, rounds, seed, args, codec)


def _print_demo(
    outputs: list[tuple[str, str]],
    sites: list[subprocess.Popen[str]],
    n: int,
    rounds: int,
    seed: int,
    args: argparse.Namespace,
    codec: FixedPointCodec,
) -> int:
    per_site = [
        [json.loads(line) for line in out.splitlines() if line.strip()] for out, _ in outputs
    ]
    for k, (site, (_, stderr)) in enumerate(zip(sites, outputs, strict=True)):
        if site.returncode != 0:
            last = stderr.strip().splitlines()[-1] if stderr.strip() else str(site.returncode)
            _err(f"site-{k} failed: {last}")
            return 1
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
        plain = sum(demo_update(seed, k, r + 1, args.dim, codec.max_abs_value) for k in included)
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


def _demo_in_process(args: argparse.Namespace) -> int:
    n, rounds, dim = args.sites, args.rounds, args.dim
    threshold = args.threshold or default_threshold(n)
    if not 2 <= threshold <= n:
        _err(f"--threshold must be in [2, {n}]")
        return 2
    if not 0 <= args.drop <= n - threshold:
        _err(f"--drop must be in [0, n−T = {n - threshold}]")
        return 2
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


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="mpc-agg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)

    init = sub.add_parser("init", help="create a federation (keys, configs, broker setup)")
    init.add_argument("directory")
    init.add_argument("--sites", type=int, required=True)
    init.add_argument("--protocol", default="secagg", choices=["secagg"])
    init.add_argument("--broker-port", type=int, default=8883)
    init.add_argument("--broker-host", default="127.0.0.1")
    init.add_argument("--threshold", type=int, default=None)
    init.set_defaults(handler=_init)

    broker = sub.add_parser("broker", help="run the federation's Mosquitto in the foreground")
    broker.add_argument("directory")
    broker.set_defaults(handler=_broker)

    aggregate = sub.add_parser("aggregate", help="run one secure round as one site")
    aggregate.add_argument("--config", required=True, help="the site's TOML file")
    aggregate.add_argument("--input", required=True, help="the update (.npy, float)")
    aggregate.add_argument("--output", required=True, help="where to write the sum (.npy)")
    aggregate.add_argument("--report", default=None, help="write a JSON report of the round")
    aggregate.add_argument(
        "--round",
        type=int,
        default=None,
        help="round number (default: one after the last round in this site's audit log)",
    )
    aggregate.set_defaults(handler=_aggregate)

    audit = sub.add_parser("audit", help="audit-log tools")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser("verify", help="check a site's hash-chained audit log")
    verify.add_argument("file")
    verify.add_argument(
        "--federation", default=None, help="federation.toml: check signatures with the roster key"
    )
    verify.add_argument("--site", default=None, help="the site that wrote the log")
    verify.set_defaults(handler=_audit)

    demo = sub.add_parser("demo", help="a whole federation on this machine, vs. plaintext")
    demo.add_argument("--sites", type=int, default=4, help="number of sites (default 4)")
    demo.add_argument("--rounds", type=int, default=3, help="rounds to run (default 3)")
    demo.add_argument("--dim", type=int, default=100_000, help="update length (default 1e5)")
    demo.add_argument("--threshold", type=int, default=None, help="T (default ⌊2n/3⌋+1)")
    demo.add_argument("--seed", type=int, default=None, help="seed for a reproducible run")
    demo.add_argument("--in-process", action="store_true", help="no broker: machines in memory")
    demo.add_argument("--drop", type=int, default=1, help="[in-process] sites dropping per round")
    demo.add_argument("--frac-bits", type=int, default=24, help="[in-process] fraction bits")
    demo.add_argument("--clip", type=float, default=1.0, help="[in-process] max |coordinate|")
    demo.set_defaults(handler=_demo)

    site = sub.add_parser("_demo-site")  # internal: one site process of `demo`
    site.add_argument("--config", required=True)
    site.add_argument("--index", type=int, required=True)
    site.add_argument("--rounds", type=int, required=True)
    site.add_argument("--dim", type=int, required=True)
    site.add_argument("--seed", type=int, required=True)
    site.add_argument("--clip", type=float, required=True)
    site.add_argument("--outdir", required=True)
    site.set_defaults(handler=_demo_site)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpc-agg`` console script."""
    args = build_parser().parse_args(argv)
    if args.command == "demo" and (args.sites < 2 or args.rounds < 1 or args.dim < 1):
        _err("need --sites ≥ 2, --rounds ≥ 1, --dim ≥ 1")
        return 2
    if args.command == "audit" and (args.federation is None) != (args.site is None):
        _err("audit verify: give both --federation and --site, or neither")
        return 2
    try:
        return int(args.handler(args))
    except ConfigError as exc:
        _err(str(exc))
        return 2
    except RoundAbortedError as exc:
        _err(str(exc))
        return 1
    except TransportError as exc:
        _err(str(exc))
        return 3
    except MpcAggError as exc:
        _err(str(exc))
        return 2


if __name__ == "__main__":
    sys.exit(main())
