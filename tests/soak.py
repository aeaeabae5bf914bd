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
- ``flood``: 300 frames of 8 kB on one site's topic.

Run ``python -m tests.soak --rounds 200`` for the table in ``docs/soak.md``; the CI runs a
short soak (``tests/mqtt/test_soak.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field

import aiomqtt
import numpy as np
from numpy.typing import NDArray

from peers.node import AggregateResult, PeerNode, RoundAbortedError
from peers.transport import TransportError, message_topic, parse_topic
from tests.netfaults import FaultProxy, transports_behind
from tests.runtime.nodes import on_grid, run_round, running_nodes

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


@asynccontextmanager
async def _federation(
    n: int, deadline: float
) -> AsyncIterator[
    tuple[str, list[PeerNode], list[FaultProxy], aiomqtt.Client, list[tuple[str, bytes]]]
]:
    federation = f"soak-{os.urandom(4).hex()}"
    captured: list[tuple[str, bytes]] = []
    async with AsyncExitStack() as stack:
        proxies = [await stack.enter_async_context(FaultProxy(BROKER[1], seed=i)) for i in range(n)]

        nodes = await stack.enter_async_context(
            running_nodes(
                n,
                transports_behind(proxies, federation, reconnect_timeout=30.0),
                federation=federation,
                deadline=deadline,
            )
        )
        admin = await stack.enter_async_context(
            aiomqtt.Client(*BROKER, identifier=f"{federation}-admin")
        )
        await admin.subscribe(f"mpcagg/v1/{federation}/#")

        async def listen() -> None:
            async for message in admin.messages:
                if isinstance(message.payload, bytes):
                    captured.append((str(message.topic), message.payload))

        task = asyncio.create_task(listen())
        try:
            yield federation, nodes, proxies, admin, captured
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
    rng: random.Random,
) -> None:
    """Apply ``fault`` to the round that is starting (or has just started)."""
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


def _heal(proxies: Sequence[FaultProxy]) -> None:
    for proxy in proxies:
        proxy.heal()
        proxy.delay = proxy.jitter = 0.0
        proxy.bandwidth = None


async def soak(rounds: int, *, seed: int = 0, n: int = 4, d: int = 5000) -> SoakReport:
    """Run ``rounds`` rounds (faults on even ones); return the counts."""
    rng = random.Random(seed)  # which fault when: not a secret
    data = np.random.default_rng(seed)
    report = SoakReport()
    started = time.perf_counter()
    async with _federation(n, deadline=3.0) as (federation, nodes, proxies, admin, captured):
        previous: list[tuple[str, bytes]] = []
        for r in range(rounds):
            fault = rng.choice(FAULTS) if r % 2 == 0 else "none"
            updates: list[NDArray[np.float64]] = [on_grid(data, (d,)) for _ in range(n)]
            round_id = max(node._last_round for node in nodes) + 1
            captured.clear()
            work = asyncio.ensure_future(run_round(nodes, updates))
            await _inject(
                fault,
                federation=federation,
                round_id=round_id,
                n=n,
                proxies=proxies,
                admin=admin,
                previous=previous,
                rng=rng,
            )
            try:
                results = await asyncio.wait_for(work, ROUND_TIMEOUT)
            except TimeoutError:
                report.hangs += 1
                break
            _heal(proxies)
            report.rounds += 1
            report.faults[fault] += 1
            errors = [x for x in results if not isinstance(x, AggregateResult)]
            for result in results:
                if isinstance(result, AggregateResult):
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
            previous = [(t, p) for t, p in captured if t.split("/")[3] == str(round_id)]
            if fault != "none":
                await asyncio.sleep(1.0)  # held frames of the faulted round drain
    report.seconds = time.perf_counter() - started
    return report


def markdown(report: SoakReport) -> str:
    """The docs table."""
    lines = [
        "| fault | rounds | every site got the sum | some sites aborted |",
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
    args = parser.parse_args()
    report = asyncio.run(soak(args.rounds, seed=args.seed))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report.to_json(), handle, indent=2)
    print(markdown(report))
    raise SystemExit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
