"""A federation as ``mpc-agg init`` makes it, with its broker running (e2e fixtures)."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from peers.demo import free_port


def cli(*args: str) -> list[str]:
    """The command line of ``mpc-agg`` with ``args``, run by this interpreter."""
    return [sys.executable, "-m", "peers.cli", *args]


@contextmanager
def running_federation(
    root: Path,
    *init_args: str,
    deadline: float,
    before_broker: Callable[[Path], None] | None = None,
) -> Iterator[tuple[Path, str]]:
    """``mpc-agg init root *init_args`` with every phase deadline set to ``deadline``
    seconds, then ``mpc-agg broker`` until the block ends; yields (root, init's stdout).

    ``before_broker(root)`` runs between the two (e.g. a roster change)."""
    port = free_port()
    done = subprocess.run(
        cli("init", str(root), "--broker-port", str(port), *init_args),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    toml = root / "federation.toml"
    # every "name = N.0" line of the [deadlines] table is a deadline
    head, table, tail = toml.read_text().partition("[deadlines]")
    body, bracket, rest = tail.partition("\n[")
    body = re.sub(r"(?m)^(\w+) = \d+\.0$", rf"\1 = {deadline}", body)
    toml.write_text(head + table + body + bracket + rest)
    if before_broker is not None:
        before_broker(root)
    broker = subprocess.Popen(
        cli("broker", str(root)), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        until = time.monotonic() + 10
        while time.monotonic() < until:
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        else:
            pytest.fail("broker did not start")
        _BROKERS[root] = broker
        yield root, done.stdout
    finally:
        _BROKERS.pop(root, None)
        broker.send_signal(signal.SIGTERM)
        broker.wait(10)


#: The running broker (``mpc-agg broker`` execs Mosquitto) of each running federation.
_BROKERS: dict[Path, subprocess.Popen[bytes]] = {}


def reload_broker(root: Path) -> None:
    """What the operator does after a roster change: ``kill -HUP`` the federation's broker."""
    _BROKERS[root].send_signal(signal.SIGHUP)
    time.sleep(0.5)  # Mosquitto rereads its password and ACL files on its next loop


def start_sites(root: Path, sites: int) -> list[subprocess.Popen[str]]:
    """``mpc-agg aggregate`` for site-0 … site-{n-1}: ``x{k}.npy`` → ``sum{k}.npy`` + report."""
    return [
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
            text=True,
        )
        for k in range(sites)
    ]


def run_sites(root: Path, sites: int, *, timeout: float = 120) -> list[tuple[int, str, str]]:
    """:func:`start_sites` and wait: (exit code, stdout, stderr) per site."""
    started = start_sites(root, sites)
    outputs = [site.communicate(timeout=timeout) for site in started]
    return [(site.returncode, out, err) for site, (out, err) in zip(started, outputs, strict=True)]
