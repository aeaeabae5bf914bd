"""The ``mpc-agg`` command line.

``init``       create a federation: site keys and configs, Mosquitto TLS + ACL setup
``broker``     run the federation's Mosquitto in the foreground
``aggregate``  run one secure round as one site: ``--input X.npy`` → ``--output SUM.npy``
``audit``      ``audit verify FILE``: check a site's hash-chained audit log; ``audit rotate``:
               record a rotated key in it (a log kept outside the federation folder)
``roster``     ``roster rotate|revoke DIR --site NAME``: a site's new key, or its removal
``demo``       a whole federation on this machine: a broker and one process per site train
               a model with secure aggregation, beside the same training in the clear
               (``--task sum``: R rounds of sums, each checked against the plaintext sum)

Exit codes: 0 success, 1 round aborted or audit log broken, 2 bad usage or configuration
(a login the broker refuses, or an output that cannot be written, included), 3 broker
unreachable, 4 the round would exceed the federation's ε budget (nothing sent), 130
interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import resource
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np
from numpy.typing import NDArray

from mpc_agg.crypto import VerifyKey
from mpc_agg.dp import DpSettings, Mechanism, PrivacyBudgetExceededError, Unit
from mpc_agg.errors import MpcAggError
from peers.allocator import keep_freed_memory
from peers.audit import AuditError, AuditLog, verify_audit_log
from peers.config import (
    PROTOCOLS,
    ConfigError,
    SiteConfig,
    load_federation,
    load_signing_key,
    load_site,
)
from peers.demo import BROKERS, DemoError, run_demo, run_site
from peers.init import broker_command, find_program, init_federation
from peers.node import AggregateResult, PeerNode, RoundAbortedError
from peers.roster_ops import revoke_site, rotate_site_key
from peers.transport import BrokerRefusedError, TransportError


def _err(message: str) -> None:
    print(f"mpc-agg: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- init / broker


def _init(args: argparse.Namespace) -> int:
    if args.protocol == "robust" and args.max_norm is None:
        _err("init: --protocol robust needs --max-norm (the L2 bound on each site's update)")
        return 2
    if args.protocol != "robust" and args.max_norm is not None:
        _err(f"init: --max-norm is only for --protocol robust, not {args.protocol}")
        return 2
    dp_flags = (args.clip_norm, args.epsilon, args.delta, args.dp_mechanism, args.dp_unit)
    if args.noise_multiplier is None and any(flag is not None for flag in dp_flags):
        _err("init: the DP options need --noise-multiplier (and --clip-norm)")
        return 2
    try:
        privacy = None
        if args.noise_multiplier is not None:
            if args.clip_norm is None:
                _err("init: --noise-multiplier needs --clip-norm (the L2 clip of each update)")
                return 2
            privacy = DpSettings(
                noise_multiplier=args.noise_multiplier,
                clip_norm=args.clip_norm,
                delta=1e-5 if args.delta is None else args.delta,
                epsilon_budget=args.epsilon,
                mechanism=Mechanism(args.dp_mechanism or Mechanism.DISCRETE_GAUSSIAN),
                unit=Unit(args.dp_unit or Unit.SITE),
            )
        path = init_federation(
            Path(args.directory),
            sites=args.sites,
            protocol=args.protocol,
            broker_port=args.broker_port,
            broker_host=args.broker_host,
            threshold=args.threshold,
            max_norm=args.max_norm,
            dp=privacy,
            reduce_scatter=args.reduce_scatter,
        )
    except ConfigError:
        raise  # reported by main()
    except ValueError as exc:  # a bad argument: one line, exit 2
        _err(f"init: {exc}")
        return 2
    except OSError as exc:  # not a directory, not writable, …: nothing was left behind
        _err(f"init: cannot create {args.directory}: {exc.strerror or exc}")
        return 2
    federation = load_federation(path)
    root = Path(args.directory)
    if federation.protocol == "robust":
        detail = f"robust, threshold t={federation.threshold}, max_norm={federation.max_norm}"
    else:
        detail = f"threshold T={federation.threshold}"
    if federation.dp is not None:
        settings = federation.dp
        budget = (
            "no ε budget"
            if settings.epsilon_budget is None
            else (f"ε budget {settings.epsilon_budget:g}")
        )
        detail += (
            f", differential privacy ({settings.mechanism.value}, z={settings.noise_multiplier:g}, "
            f"clip {settings.clip_norm:g} per {settings.unit.value}, {budget}, "
            f"δ={settings.delta:g})"
        )
    print(f"federation {federation.id}: {federation.n} sites, {detail}")
    print(f"  {path}")
    print(f"  {root / 'sites'}/site-K.toml, .key, .password (one set per site; keep them private)")
    print(f"  {root / 'broker'}/mosquitto.conf, acl, passwd, ca.crt, server.crt")
    print(f"next: mpc-agg broker {root}   # then, at each site:")
    print(
        f"      mpc-agg aggregate --config {root / 'sites' / 'site-K.toml'} "
        "--input x.npy --output sum.npy"
    )
    return 0


def _broker(args: argparse.Namespace) -> int:  # noqa: RET503 - execv does not return
    if find_program("mosquitto") is None:
        _err("mosquitto is not installed (e.g. `apt install mosquitto`)")
        return 2
    conf = Path(args.directory) / "broker" / "mosquitto.conf"
    if not conf.is_file():
        _err(f"no broker configuration at {conf} (is {args.directory} made by mpc-agg init?)")
        return 2
    command = broker_command(Path(args.directory))
    print(f"starting: {' '.join(command)}", flush=True)
    os.execv(command[0], command)  # noqa: S606 - the foreground broker replaces this process


# --------------------------------------------------------------------------- aggregate


def _aggregate(args: argparse.Namespace) -> int:
    site = load_site(args.config)
    # SPEC §2.1: 0 is never run, and an id must leave room for the next one
    if args.round is not None and not 1 <= args.round < 2**64 - 1:
        _err(f"--round must be in [1, 2^64 − 1) (a later round needs an id), got {args.round}")
        return 2
    update = _read_update(args.input, site.federation.limits.max_vector_length)
    if isinstance(update, str):
        _err(f"cannot read {args.input}: {update}")
        return 2
    # Outputs are checked before the round, by creating them: a typo must not waste the
    # other sites' round, and no output may land on one of the site's own files.
    targets = {"--output": args.output, "--report": args.report}
    problem = _output_problem(site, args.input, targets)
    if problem:
        _err(problem)
        return 2
    staged: dict[str, tuple[Path, Path]] = {}
    try:
        for option, target in targets.items():
            if target is not None:
                try:
                    staged[option] = (_stage_output(Path(target)), Path(target))
                except OSError as exc:
                    _err(f"{option} {target}: cannot be written: {exc.strerror or exc}")
                    return 2
        # handed over (PeerNode.aggregate keeps no reference once it has encoded it): the
        # input is not in memory for the round (peak RSS at large d)
        handover = [update]
        del update
        result = asyncio.run(
            _one_round(site_path=args.config, handover=handover, round_id=args.round)
        )
        try:  # exactly these paths (np.save(str) would add .npy)
            _write_whole(staged["--output"], "wb", lambda out: np.save(out, result.total))
            if "--report" in staged:
                report = json.dumps(_report(result), indent=2) + "\n"
                _write_whole(staged["--report"], "w", lambda out: out.write(report))
        except OSError as exc:
            _err(
                f"round {result.round_id} finished (result digest {result.result_digest}) but "
                f"its output could not be written: {exc}"
            )
            return 2
    finally:
        for temp, _target in staged.values():
            temp.unlink(missing_ok=True)
    print(
        f"{site.name}: round {result.round_id}: sum of {result.count} sites "
        f"({', '.join(result.included)}) written to {args.output}"
    )
    if result.privacy is not None:
        p = result.privacy
        budget = "" if p.epsilon_budget is None else f" of the budget {p.epsilon_budget:g}"
        print(
            f"{site.name}: differential privacy ({p.mechanism}, z={p.noise_multiplier:g}): "
            f"ε {p.epsilon_round:.4g} this round, {p.epsilon_spent:.4g} spent{budget} "
            f"(δ={p.delta:g})"
        )
    return 0


def _read_update(path: str, max_length: int) -> NDArray[Any] | str:
    """The update in ``path`` (a .npy of floats or integers), or why it cannot be used.

    The header is read first (memory-mapped, nothing loaded): a file whose header claims
    more entries than the federation allows, or a dtype that is not numbers, is refused
    before anything is allocated; pickles are never loaded.
    """
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
        if magic != b"\x93NUMPY":
            kind = "an .npz archive" if magic.startswith(b"PK") else "not a .npy file"
            return f"{'the file is empty' if not magic else kind}: save one array with numpy.save"
        mapped = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError, OverflowError) as exc:
        return str(exc) or type(exc).__name__
    if mapped.dtype.kind not in "fiu":
        return f"dtype {mapped.dtype} is not floats or integers"
    if not 1 <= mapped.size <= max_length:
        return f"{mapped.size} entries; the federation allows 1..{max_length}"
    del mapped  # unmapped before the data is read (its pages would count twice at d = 10^8)
    try:
        return np.asarray(np.load(path, allow_pickle=False))
    except (OSError, ValueError, EOFError, MemoryError) as exc:
        return str(exc) or type(exc).__name__


def _output_problem(site: SiteConfig, source: str, targets: dict[str, str | None]) -> str:
    """Why the ``--output``/``--report`` paths cannot be used (``""`` when they can)."""
    own = {
        "the site file": site.path,
        "federation.toml": site.federation.path,
        "the signing key": site.signing_key_file,
        "the password file": site.password_file,
        "the audit log": site.audit_log,
        "the broker's CA": site.broker.ca_file,
        "--input": Path(source),
    }
    seen: dict[Path, str] = {}
    for option, target in targets.items():
        if target is None:
            continue
        path = Path(target).absolute()
        try:
            resolved = path.resolve()
        except (OSError, RuntimeError) as exc:  # a symlink loop, a name too long, …
            return f"{option} {target}: {exc}"
        for name, file in own.items():
            if file is not None and file.absolute().resolve() == resolved:
                return f"{option} {target} is {name}; refusing to overwrite it"
        if resolved in seen:
            return f"{option} and {seen[resolved]} are the same file, {target}"
        seen[resolved] = option
        try:
            if path.is_dir():
                return f"{option} {target}: is a directory"
            if path.exists() and not path.is_file():
                return f"{option} {target}: exists and is not a regular file"
            if not path.parent.is_dir():
                return f"{option} {target}: directory {path.parent} does not exist"
        except OSError as exc:  # a name too long, …
            return f"{option} {target}: {exc.strerror or exc}"
    return ""


def _stage_output(target: Path) -> Path:
    """An empty file beside ``target``, renamed onto it once written (raises OSError)."""
    fd, name = tempfile.mkstemp(dir=target.absolute().parent, prefix=f".{target.name}.")
    os.close(fd)
    return Path(name)


def _write_whole(staged: tuple[Path, Path], mode: str, write: Callable[[IO[Any]], object]) -> None:
    """Write the staged file, make it durable, then rename it onto its target."""
    temp, target = staged
    with temp.open(mode) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temp, target)


async def _one_round(
    *, site_path: str, handover: list[NDArray[Any]], round_id: int | None
) -> AggregateResult:
    async with PeerNode.from_config(load_site(site_path)) as node:
        return await node.aggregate(handover.pop(), round_id=round_id)


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
        "peak_rss_mb": _peak_rss_mb(),
        "privacy": None if result.privacy is None else dataclasses.asdict(result.privacy),
    }


def _peak_rss_mb() -> float:
    """Peak resident set of the current process, in MiB.

    ``VmHWM`` belongs to the process's own address space; ``ru_maxrss`` survives
    ``execve`` on Linux and would report the parent's peak when that was larger.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --------------------------------------------------------------------------- roster


def _roster(args: argparse.Namespace) -> int:
    operation = rotate_site_key if args.operation == "rotate" else revoke_site
    try:
        change = operation(Path(args.directory), args.site)
    except (ValueError, AuditError) as exc:
        _err(f"roster {args.operation}: {exc}")
        return 2
    print(f"federation {change.federation.id}: {change.detail}")
    print(f"  roster digest {change.old_digest[:16]}… → {change.new_digest[:16]}…")
    print(
        "next: give every site the new federation.toml, and reload the broker's password "
        "and ACL files (kill -HUP the mosquitto process); messages under the old roster "
        "are refused from now on"
    )
    return 0


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


def _audit_rotate(args: argparse.Namespace) -> int:
    site = load_site(args.config)  # the new key, checked against the roster
    if not site.audit_log.is_file():
        _err(f"no audit log at {site.audit_log}: nothing to record")
        return 2
    if verify_audit_log(site.audit_log, verify_key=VerifyKey(site.signing_key.public_bytes())).ok:
        print(f"{site.audit_log}: already verifies under {site.name}'s current key; unchanged")
        return 0
    previous = load_signing_key(args.previous_key)
    try:
        log = AuditLog(site.audit_log, signing_key=previous)
        log.rotate_key(site.signing_key)
    except AuditError as exc:
        _err(f"audit rotate: {exc}")
        return 1
    print(
        f"{site.audit_log}: rotation to {site.name}'s current key recorded "
        f"(line {log.lines}); the earlier lines verify under the key it names"
    )
    return 0


# --------------------------------------------------------------------------- demo


def _demo(args: argparse.Namespace) -> int:
    try:
        return run_demo(args)
    except DemoError as exc:
        _err(str(exc))
        return 2


def _demo_site(args: argparse.Namespace) -> int:
    return run_site(args)


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The argument parser (exposed for tests and docs)."""
    parser = argparse.ArgumentParser(
        prog="mpc-agg", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="{init,broker,aggregate,audit,roster,demo}"
    )

    init = sub.add_parser("init", help="create a federation (keys, configs, broker setup)")
    init.add_argument("directory")
    init.add_argument("--sites", type=int, required=True)
    init.add_argument("--protocol", default="secagg", choices=PROTOCOLS)
    init.add_argument("--broker-port", type=int, default=8883)
    init.add_argument("--broker-host", default="127.0.0.1")
    init.add_argument(
        "--threshold",
        type=int,
        default=None,
        help="secagg: T (default ⌊2n/3⌋+1); robust: t, with 2t+1 ≤ n (default ⌊(n−1)/2⌋)",
    )
    init.add_argument(
        "--max-norm",
        type=float,
        default=None,
        help="robust only (required): the L2 bound on each site's update, in float units",
    )
    init.add_argument(
        "--reduce-scatter",
        action="store_true",
        help="secagg: chunk owners with verified sums, ≈ 3·d words in per site instead of "
        "(n−1)·d; a site stopping mid-round aborts it (SPEC §6.7)",
    )
    dp = init.add_argument_group("differential privacy (secagg; writes [dp], mpc_agg/DP.md)")
    dp.add_argument("--noise-multiplier", type=float, default=None, help="z: noise σ = z·clip")
    dp.add_argument("--clip-norm", type=float, default=None, help="L2 clip (per site/example)")
    dp.add_argument("--epsilon", type=float, default=None, help="the federation's ε budget")
    dp.add_argument("--delta", type=float, default=None, help="δ (default 1e-5)")
    dp.add_argument(
        "--dp-mechanism",
        choices=[m.value for m in Mechanism],
        default=None,
        help="default discrete_gaussian (exact sampler)",
    )
    dp.add_argument(
        "--dp-unit",
        choices=[u.value for u in Unit],
        default=None,
        help="what is protected (default site)",
    )
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
    rotate = audit_sub.add_parser(
        "rotate",
        help="after `roster rotate`, at a site whose audit log is kept elsewhere: record the "
        "new key in the log (signed by the new key, naming the old one)",
    )
    rotate.add_argument("--config", required=True, help="the site's TOML file (with the new key)")
    rotate.add_argument(
        "--previous-key", required=True, help="the site's key file from before the rotation"
    )
    rotate.set_defaults(handler=_audit_rotate)

    roster = sub.add_parser("roster", help="key management: rotate a site's key, revoke a site")
    roster.add_argument("operation", choices=["rotate", "revoke"])
    roster.add_argument("directory", help="the federation directory (from mpc-agg init)")
    roster.add_argument("--site", required=True, help="the site's name, e.g. site-2")
    roster.set_defaults(handler=_roster)

    demo = sub.add_parser(
        "demo",
        help="a whole federation on this machine: secure FedAvg training (or sums) vs plaintext",
    )
    demo.add_argument("--task", choices=["train", "sum"], default="train", help="default train")
    demo.add_argument("--sites", type=int, default=4, help="number of sites (default 4)")
    demo.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds (default 20 for train, 100 with --epsilon, 3 for sum)",
    )
    demo.add_argument(
        "--protocol",
        choices=["secagg", "robust"],
        default="secagg",
        help="[train] robust: every delta's L2 norm is checked without being revealed",
    )
    demo.add_argument("--threshold", type=int, default=None, help="T (default ⌊2n/3⌋+1); robust: t")
    demo.add_argument("--seed", type=int, default=None, help="seed for a reproducible run")
    demo.add_argument(
        "--broker",
        choices=BROKERS,
        default="auto",
        help="auto: mosquitto if installed, else amqtt (pure Python); none: --task sum only",
    )
    demo.add_argument("--timeout", type=float, default=600.0, help="kill the sites after (s)")
    demo.add_argument("--out", default="mpc-agg-demo", help="[train] where demo.json/.png go")
    demo.add_argument("--local-steps", type=int, default=20, help="[train] steps per round")
    demo.add_argument("--dim", type=int, default=100_000, help="[sum] update length (1e5)")
    demo.add_argument("--in-process", action="store_true", help="same as --task sum --broker none")
    demo.add_argument("--drop", type=int, default=1, help="[sum, none] sites dropping per round")
    demo.add_argument("--frac-bits", type=int, default=24, help="[sum, none] fraction bits")
    demo.add_argument("--clip", type=float, default=1.0, help="[sum, none] max |coordinate|")
    demo.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="[train] DP-SGD with distributed DP spending at most ε (inf: no noise)",
    )
    demo.add_argument("--delta", type=float, default=1e-5, help="[train --epsilon] δ (1e-5)")
    demo.set_defaults(handler=_demo)

    site = sub.add_parser("_demo-site")  # internal: one site process of `demo`
    site.add_argument("--task", choices=["train", "sum"], required=True)
    site.add_argument("--config", required=True)
    site.add_argument("--index", type=int, required=True)
    site.add_argument("--rounds", type=int, required=True)
    site.add_argument("--seed", type=int, required=True)
    site.add_argument("--outdir", required=True)
    site.add_argument("--dim", type=int, default=0)
    site.add_argument("--clip", type=float, default=1.0)
    site.add_argument("--local-steps", type=int, default=20)
    site.add_argument("--dp", action="store_true")
    site.set_defaults(handler=_demo_site)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``mpc-agg`` console script."""
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # reuse a round's vector buffers instead of page-faulting them in
    if (
        args.command == "audit"
        and args.audit_command == "verify"
        and (args.federation is None) != (args.site is None)
    ):
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
    except BrokerRefusedError as exc:  # credentials or a revoked site: configuration
        _err(str(exc))
        return 2
    except TransportError as exc:
        _err(str(exc))
        return 3
    except PrivacyBudgetExceededError as exc:
        _err(str(exc))
        return 4
    except MpcAggError as exc:
        _err(str(exc))
        return 2
    except KeyboardInterrupt:  # Ctrl-C: the round (if any) is recorded as cancelled
        _err("interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
