"""One site of :mod:`benchmarks.mqtt_compare`: the same process runs secure and plaintext rounds.

Started as ``python -m benchmarks.site_worker SITE_TOML INPUT.npy ALL_INPUTS_DIR N``; reads
one JSON command per line on stdin and answers one JSON line on stdout:

- ``{"cmd": "open", "mode": "secure" | "secure-rs" | "robust" | "plain"}`` connects:
  ``secure`` builds the site's :class:`~peers.node.PeerNode` from its config (TLS, account,
  ACL, audit log), ``secure-rs`` the same with ``reduce_scatter`` (secagg SPEC §6.7),
  ``robust`` the same for a federation made with ``--protocol robust``, ``plain``
  opens the same kind of MQTT connection (:func:`peers.node.site_transport`) and
  subscribes to the federation's broadcasts. Answers once every other site is online.
- ``{"cmd": "round", "round": K}`` runs one round and answers with its wall time, CPU
  time of this process, bytes in and out, peak RSS during the round and the error
  against the exact float64 sum of every input.
- ``{"cmd": "close"}`` disconnects; ``{"cmd": "exit"}`` ends the process.

Plaintext: each site publishes its float update's bytes on its own broadcast topic (the
ACL allows nothing else) and adds up what the others publish, in the update's dtype. Only
one mode is connected at a time, so neither sees the other's traffic.
"""

from __future__ import annotations

import asyncio
import contextlib
import cProfile
import json
import os
import resource
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from peers.allocator import keep_freed_memory
from peers.config import SiteConfig, load_site
from peers.node import PeerNode, site_transport
from peers.transport import Delivery, federation_filter, message_topic, parse_topic

#: Plaintext rounds use round ids from here on: far from the secure rounds' ids.
PLAIN_ROUNDS = 10**12


def _reset_peak_rss() -> None:
    """Reset the kernel's peak-RSS mark of this process (Linux ≥ 4.0)."""
    with contextlib.suppress(OSError):
        Path("/proc/self/clear_refs").write_text("5")


def _peak_rss_mb() -> float:
    """Peak RSS since the last reset (VmHWM), in MiB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class _Site:
    def __init__(
        self, site: SiteConfig, update: NDArray[Any], expected: NDArray[np.float64]
    ) -> None:
        self.site = site
        self.update = update
        self.expected = expected
        self.node: PeerNode | None = None
        self.plain: Any = None
        self._deliveries: AsyncIterator[Delivery] | None = None

    async def open(self, mode: str) -> dict[str, Any]:
        timeout = 60.0
        if mode in ("secure", "secure-rs", "robust"):
            site = self.site
            if mode == "secure-rs":  # secagg's reduce-scatter data path (SPEC §6.7)
                site = replace(site, federation=replace(site.federation, reduce_scatter=True))
            self.node = await PeerNode.from_config(site).__aenter__()
            online = await self.node.wait_for_peers(timeout)
        else:
            transport = site_transport(self.site)
            await transport.__aenter__()
            await transport.subscribe(federation_filter(self.site.federation.id))
            self.plain = transport
            self._deliveries = transport.messages()
            # the node's presence logic is not running: the parent waits for every
            # site's "ready" before the round, and QoS 1 subscriptions are in place now
            online = set()
        return {"ready": True, "online": len(online)}

    async def close(self) -> dict[str, Any]:
        if self.node is not None:
            await self.node.__aexit__(None, None, None)
            self.node = None
        if self.plain is not None:
            await self.plain.__aexit__(None, None, None)
            self.plain = None
            self._deliveries = None
        return {"closed": True}

    async def round(self, round_no: int) -> dict[str, Any]:
        _reset_peak_rss()
        cpu, wall = time.process_time(), time.perf_counter()
        if self.node is not None:
            transport = self.node._transport
            before = (getattr(transport, "bytes_out", 0), getattr(transport, "bytes_in", 0))
            result = await self.node.aggregate(self.update)
            total = np.asarray(result.total, dtype=np.float64)
            count = result.count
        else:
            transport = self.plain
            before = (transport.bytes_out, transport.bytes_in)
            total, count = await self._plain_round(round_no)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        return {
            "wall_s": wall,
            "cpu_s": cpu,
            "bytes_out": getattr(transport, "bytes_out", 0) - before[0],
            "bytes_in": getattr(transport, "bytes_in", 0) - before[1],
            "peak_rss_mb": _peak_rss_mb(),
            "count": count,
            "max_abs_error": float(np.max(np.abs(total - self.expected))),
        }

    async def _plain_round(self, round_no: int) -> tuple[NDArray[np.float64], int]:
        site, n = self.site, self.site.federation.n
        round_id = PLAIN_ROUNDS + round_no
        topic = message_topic(site.federation.id, round_id, site.name)
        # published while the others' updates are received, as PeerNode publishes its
        # messages: waiting for our own publication first would leave theirs queued
        publishing = asyncio.ensure_future(self.plain.publish(topic, self.update.tobytes()))
        total = self.update.copy()
        seen = {site.name}
        assert self._deliveries is not None
        try:
            while len(seen) < n:
                delivery = await anext(self._deliveries)
                parsed = parse_topic(delivery.topic)
                if parsed is None or parsed.round_id != round_id or parsed.site in seen:
                    continue
                seen.add(parsed.site)
                total += np.frombuffer(delivery.payload, dtype=self.update.dtype)
        except BaseException:
            publishing.cancel()
            raise
        await publishing
        return total.astype(np.float64), len(seen)


async def main(argv: list[str]) -> None:
    config, update_path, inputs_dir, n = argv
    keep_freed_memory()  # as the mpc-agg command does (peers/allocator.py)
    update = np.load(update_path)
    expected = sum(
        (np.load(Path(inputs_dir) / f"x{k}.npy").astype(np.float64) for k in range(int(n))),
        start=np.zeros(update.shape),
    )
    site = _Site(load_site(config), update, expected)
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        command = json.loads(line)
        if command["cmd"] == "open":
            answer = await site.open(command["mode"])
        elif command["cmd"] == "round":
            profile = os.environ.get("MPC_AGG_BENCH_PROFILE")  # a directory: cProfile dumps
            if profile:
                profiler = cProfile.Profile(time.process_time)  # CPU, not wall
                profiler.enable()
            answer = await site.round(command["round"])
            if profile:
                profiler.disable()
                mode = "secure" if site.node is not None else "plain"
                name = Path(config).stem
                profiler.dump_stats(Path(profile) / f"{name}-{mode}-{command['round']}.prof")
        elif command["cmd"] == "close":
            answer = await site.close()
        else:
            await site.close()
            break
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
