"""Soak: many ``secagg`` rounds over Mosquitto with random faults (issue 8 §6).

Four sites, each behind its own :class:`tests.netfaults.FaultProxy`, and a broker-level
client that can inject traffic. Even rounds get one random fault, odd rounds none. Counted:

- a round is **correct** when every result it gave is the exact sum of the sites it
  includes (anything else is a *wrong* result: there must be none);
- a round that gave no result somewhere is counted by the reasons given;
- a round that did not end within 90 s is a *hang* (there must be none);
- every clean round after a faulted one must succeed at all four sites.

Faults:

- ``delay``: 20 ms ± 40 ms on every link;
- ``slow-link``: one site at 1 MB/s;
- ``reset``: one site's connection reset mid-round;
- ``stall``: one site's link held both ways for 4 s;
- ``partition-up``, ``partition-down``: the same, one way;
- ``reset-all``: every connection reset at once (as a broker restart would look);
- ``garbage``: random payloads published on every site's topics of the round;
- ``replay``: the previous round's frames published again on this round's topics;
- ``flood``: 300 frames of 8 kB on one site's topic;
- ``crash``: one site dies mid-round (its link frozen, its round task cancelled, its
  connection reset without a goodbye) and a new node is built from the same key and audit
  log, as a restarted process would be; it must rejoin at the next round. (A real SIGKILL
  of an ``mpc-agg aggregate`` process has its own test in ``tests/e2e/test_federation.py``.)

Run ``python -m tests.soak --rounds 200`` for the table in ``docs/soak.md``; the CI runs a
short soak (``tests/mqtt/test_soak.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiomqtt
import numpy as np
from numpy.typing import NDArray

from peers.audit import AuditLog
from peers.node import AggregateResult, PeerNode, RoundAbortedError
from peers.transport import TransportError, message_topic, parse_topic
from protocols.harness import make_roster
from tests.netfaults import FaultProxy, transports_behind
from tests.runtime.nodes import FRAC_BITS, on_grid

BROKER = ("127.0.0.1", 1883)
FAULTS = (
    "delay",
    "slow-link",
    "reset",
    "stall",
    "partition-up",
    "partition-down",
    "reset-all",
    "garbage",
    "replay",
    "flood",
    "crash",
)
ROUND_TIMEOUT = 90.0


@dataclass
class SoakReport:
    """What the soak saw; ``ok`` when nothing wrong, hung or unrecovered happened."""

    rounds: int = 0
    faults: Counter[str] = field(default_factory=Counter)
    complete: Counter[str] = field(default_factory=Counter)  # every site gave a result
    partial: Counter[str] = field(default_factory=Counter)  # some sites aborted
    aborted_reasons: Counter[str] = field(default_factory=Counter)
    wrong: int = 0
    hangs: int = 0
    unrecovered: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.wrong == 0 and self.hangs == 0 and self.unrecovered == 0

    def to_json(self) -> dict[str, object]:
        return {
            "rounds": self.rounds,
            "faults": dict(self.faults),
            "complete": dict(self.complete),
            "partial": dict(self.partial),
            "aborted_reasons": dict(self.aborted_reasons),
            "wrong": self.wrong,
            "hangs": self.hangs,
            "unrecovered": self.unrecovered,
            "seconds": self.seconds,
        }


def _reason(error: BaseException) -> str:
    """A short, stable key for an abort: the reason's first clause, without numbers."""
    text = error.reason if isinstance(error, RoundAbortedError) else f"{type(error).__name__}"
    head = text.split(";")[0].split(":")[0]
    return "".join("N" if c.isdigit() else c for c in head)[:70]


class _Federation:
    """The soak's sites, each behind its own proxy, with an audit log, restartable."""

    def __init__(self, n: int, deadline: float, root: Path, stack: AsyncExitStack) -> None:
        self.id = f"soak-{os.urandom(4).hex()}"
        self.n = n
        self.deadline = deadline
        self.root = root
        self.roster, self.keys = make_roster(n)
        self.stack = stack
        self.proxies: list[FaultProxy] = []
        self.nodes: list[PeerNode] = []
        self.captured: list[tuple[str, bytes]] = []

    def _node(self, i: int) -> PeerNode:
        audit = AuditLog(self.root / f"site-{i}.audit.jsonl", signing_key=self.keys[i])
        return PeerNode(
            federation=self.id,
            roster=self.roster,
            me=i,
            signing_key=self.keys[i],
            # a fresh client id each time (as a restarted process would have)
            transport=transports_behind(self.proxies, self.id, reconnect_timeout=30.0)(i),
            deadlines=lambda _phase: self.deadline,
            frac_bits=FRAC_BITS,
            audit=audit,
            last_round=audit.last_round(self.id),  # as PeerNode.from_config does
        )

    async def start(self) -> None:
        for i in range(self.n):
            self.proxies.append(await self.stack.enter_async_context(FaultProxy(BROKER[1], seed=i)))
        for i in range(self.n):
            self.nodes.append(await self._node(i).__aenter__())
        self.stack.push_async_callback(self._close_all)

    async def _close_all(self) -> None:
        for node in self.nodes:
            await node.__aexit__(None, None, None)

    async def restart(self, i: int) -> None:
        """Site ``i`` after a crash: drop its connection without a goodbye, build anew."""
        old = self.nodes[i]
        self.proxies[i].reset()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(old.__aexit__(None, None, None), 10.0)
        self.proxies[i].heal()
        self.nodes[i] = await self._node(i).__aenter__()


@asynccontextmanager
async def _federation(n: int, deadline: float) -> AsyncIterator[tuple[_Federation, aiomqtt.Client]]:
    with tempfile.TemporaryDirectory(prefix="soak-") as root:
        async with AsyncExitStack() as stack:
            fed = _Federation(n, deadline, Path(root), stack)
            await fed.start()
            admin = await stack.enter_async_context(
                aiomqtt.Client(*BROKER, identifier=f"{fed.id}-admin")
            )
            await admin.subscribe(f"mpcagg/v1/{fed.id}/#")

            async def listen() -> None:
                async for message in admin.messages:
                    if isinstance(message.payload, bytes):
                        fed.captured.append((str(message.topic), message.payload))

            task = asyncio.create_task(listen())
            try:
                yield fed, admin
            finally:
                task.cancel()


async def _inject(
    fault: str,
    *,
    federation: str,
    round_id: int,
    n: int,
    proxies: Sequence[FaultProxy],
    admin: aiomqtt.Client,
    previous: Sequence[tuple[str, bytes]],
    tasks: Sequence[asyncio.Future[AggregateResult]],
    rng: random.Random,
) -> int | None:
    """Apply ``fault`` to the round that is starting (or has just started); return the
    site that crashed, if any."""
    victim = rng.randrange(n)
    loop = asyncio.get_running_loop()
    if fault == "delay":
        for proxy in proxies:
            proxy.delay, proxy.jitter = 0.02, 0.04
    elif fault == "slow-link":
        proxies[victim].bandwidth = 1e6
    elif fault == "reset":
        loop.call_later(rng.uniform(0.05, 0.4), proxies[victim].reset)
    elif fault == "reset-all":

        def reset_all() -> None:
            for proxy in proxies:
                proxy.reset()

        loop.call_later(rng.uniform(0.05, 0.4), reset_all)
    elif fault in ("stall", "partition-up", "partition-down"):
        direction = {"stall": "both", "partition-up": "up", "partition-down": "down"}[fault]
        proxies[victim].partition(direction)  # type: ignore[arg-type]
        loop.call_later(4.0, proxies[victim].heal)
    elif fault == "garbage":
        await asyncio.sleep(0.05)
        for k in range(n):
            topic = message_topic(federation, round_id, f"site-{k}")
            for size in (0, 1, 57, 4096):
                await admin.publish(topic, rng.randbytes(size), qos=1)
    elif fault == "replay":
        await asyncio.sleep(0.05)
        for topic, payload in previous:
            parsed = parse_topic(topic)
            if parsed is None or parsed.round_id is None:
                continue
            parts = topic.split("/")
            parts[3] = str(round_id)
            await admin.publish("/".join(parts), payload, qos=1)
    elif fault == "flood":
        topic = message_topic(federation, round_id, f"site-{victim}")
        for _ in range(300):
            await admin.publish(topic, rng.randbytes(8192), qos=0)
    elif fault == "crash":
        await asyncio.sleep(rng.uniform(0.05, 0.6))
        proxies[victim].stall()  # frozen from here on: nothing more in or out
        tasks[victim].cancel()
        return victim
    return None


def _heal(proxies: Sequence[FaultProxy]) -> None:
    for proxy in proxies:
        proxy.heal()
        proxy.delay = proxy.jitter = 0.0
        proxy.bandwidth = None


async def soak(
    rounds: int, *, seed: int = 0, n: int = 4, d: int = 5000, faults: Sequence[str] = FAULTS
) -> SoakReport:
    """Run ``rounds`` rounds (one of ``faults`` on even ones); return the counts."""
    unknown = set(faults) - set(FAULTS)
    if unknown:
        raise ValueError(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    rng = random.Random(seed)  # which fault when: not a secret
    data = np.random.default_rng(seed)
    report = SoakReport()
    started = time.perf_counter()
    async with _federation(n, deadline=3.0) as (fed, admin):
        previous: list[tuple[str, bytes]] = []
        for r in range(rounds):
            fault = rng.choice(faults) if r % 2 == 0 else "none"
            updates: list[NDArray[np.float64]] = [on_grid(data, (d,)) for _ in range(n)]
            round_id = max(node._last_round for node in fed.nodes) + 1
            fed.captured.clear()
            tasks = [
                asyncio.ensure_future(node.aggregate(u))
                for node, u in zip(fed.nodes, updates, strict=True)
            ]
            work = asyncio.gather(*tasks, return_exceptions=True)
            crashed = await _inject(
                fault,
                federation=fed.id,
                round_id=round_id,
                n=n,
                proxies=fed.proxies,
                admin=admin,
                previous=previous,
                tasks=tasks,
                rng=rng,
            )
            try:
                results = await asyncio.wait_for(work, ROUND_TIMEOUT)
            except TimeoutError:
                report.hangs += 1
                break
            if crashed is not None:
                await fed.restart(crashed)
            _heal(fed.proxies)
            report.rounds += 1
            report.faults[fault] += 1
            errors = [
                x
                for k, x in enumerate(results)
                if not isinstance(x, AggregateResult) and k != crashed
            ]
            for result in results:
                if isinstance(result, AggregateResult):
                    if result.round_id != round_id:
                        report.wrong += 1  # the sites must agree on the round
                    included = [int(name.split("-")[1]) for name in result.included]
                    if not np.array_equal(result.total, sum(updates[k] for k in included)):
                        report.wrong += 1
            for error in errors:
                if not isinstance(error, RoundAbortedError | TransportError):
                    raise error  # a crash, not a reasoned abort: let the soak fail loudly
                report.aborted_reasons[_reason(error)] += 1
            (report.partial if errors else report.complete)[fault] += 1
            if fault == "none" and errors:
                report.unrecovered += 1
            previous = [(t, p) for t, p in fed.captured if t.split("/")[3] == str(round_id)]
            if fault != "none":
                await asyncio.sleep(1.0)  # held frames of the faulted round drain
    report.seconds = time.perf_counter() - started
    return report


def markdown(report: SoakReport) -> str:
    """The docs table."""
    lines = [
        "| fault | rounds | every live site got the sum | some sites aborted |",
        "|---|---|---|---|",
    ]
    for fault in ("none", *FAULTS):
        if report.faults[fault]:
            lines.append(
                f"| {fault} | {report.faults[fault]} | {report.complete[fault]} | "
                f"{report.partial[fault]} |"
            )
    lines += ["", "| abort reason (per site) | count |", "|---|---|"]
    lines += [f"| {reason} | {count} |" for reason, count in report.aborted_reasons.most_common()]
    lines += [
        "",
        f"Wrong results: **{report.wrong}**. Hangs: **{report.hangs}**. Clean rounds after a "
        f"fault that did not succeed at every site: **{report.unrecovered}**. "
        f"{report.rounds} rounds in {report.seconds:.0f} s.",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default=None, help="write the counts here")
    parser.add_argument("--faults", nargs="+", default=list(FAULTS), choices=FAULTS)
    args = parser.parse_args()
    report = asyncio.run(soak(args.rounds, seed=args.seed, faults=args.faults))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_json(), handle, indent=2)
    print(markdown(report))
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
