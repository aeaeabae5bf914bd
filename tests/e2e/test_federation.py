"""A federation as users run it: ``mpc-agg init``, ``mpc-agg broker`` and one
``mpc-agg aggregate`` process per site, over Mosquitto with TLS and the generated ACL."""

from __future__ import annotations

import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.federations import cli as _cli
from tests.e2e.federations import running_federation, start_sites

SITES = 4
FRAC_BITS = 20


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Path]:
    """A 4-site federation with 2-second deadlines and its broker running."""
    with running_federation(tmp_path / "fed", "--sites", str(SITES), deadline=2.0) as (
        root,
        output,
    ):
        assert "threshold T=3" in output
        yield root


def _inputs(root: Path, dim: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    updates = [
        np.round(rng.uniform(-0.5, 0.5, dim) * 2**FRAC_BITS) / 2**FRAC_BITS for _ in range(SITES)
    ]
    for k, update in enumerate(updates):
        np.save(root / f"x{k}.npy", update)
    return updates


def _start_sites(root: Path) -> list[subprocess.Popen[str]]:
    return start_sites(root, SITES)


def _one_exact_round(root: Path, dim: int, seed: int) -> list[dict[str, object]]:
    """Every site's ``aggregate`` exits 0 with the exact sum and one result digest; reports."""
    updates = _inputs(root, dim, seed=seed)
    sites = _start_sites(root)
    outputs = [site.communicate(timeout=60) for site in sites]
    for site, (stdout, stderr) in zip(sites, outputs, strict=True):
        assert site.returncode == 0, stderr
        assert "sum of 4 sites" in stdout
    for k in range(SITES):
        assert np.array_equal(np.load(root / f"sum{k}.npy"), sum(updates))
    reports: list[dict[str, object]] = [
        json.loads((root / f"report{k}.json").read_text()) for k in range(SITES)
    ]
    assert len({r["result_digest"] for r in reports}) == 1
    return reports


def test_four_site_processes_produce_the_identical_exact_sum(federation: Path) -> None:
    reports = _one_exact_round(federation, 20_000, seed=1)
    assert all(r["included"] == [f"site-{k}" for k in range(SITES)] for r in reports)
    fed = str(federation / "federation.toml")
    for k in range(SITES):
        log = federation / "sites" / f"site-{k}.audit.jsonl"
        verified = subprocess.run(
            _cli("audit", "verify", str(log), "--federation", fed, "--site", f"site-{k}"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout
        assert "ok, 2 lines, hash chain intact, signed by" in verified.stdout  # started + aggregate
    # an edited record — even the last line — fails the signature check and is named
    log = federation / "sites" / "site-0.audit.jsonl"
    log.write_text(log.read_text().replace('"site-0"', '"site-9"', 1))
    broken = subprocess.run(
        _cli("audit", "verify", str(log), "--federation", fed, "--site", "site-0"),
        capture_output=True,
        text=True,
        check=False,
    )
    assert broken.returncode == 1
    assert "BROKEN at line 1" in broken.stdout
    assert "signature does not verify" in broken.stdout


def _wait_for_audit_line(log: Path, timeout: float = 30.0) -> None:
    until = time.monotonic() + timeout
    while not (log.exists() and log.read_text().strip()):
        assert time.monotonic() < until, f"{log} has no line"
        time.sleep(0.01)


@pytest.mark.slow
@pytest.mark.parametrize("seed", [11, 12, 13])
def test_a_site_killed_mid_round_restarts_and_rejoins_at_the_next_round(
    federation: Path, seed: int
) -> None:
    """SIGKILL site-3 at a random moment of round 1, after it has started the round: the
    others give exact sums or clean aborts; restarted, site-3 takes round 2 with them."""
    updates = _inputs(federation, 300_000, seed=seed)
    sites = _start_sites(federation)
    log = federation / "sites" / "site-3.audit.jsonl"
    _wait_for_audit_line(log)  # the round's `started` line: from here on it may have sent
    # a 4-site round of 3·10^5 entries takes ≈ 0.2 s here: kill inside it, not after it
    time.sleep(random.Random(seed).uniform(0.0, 0.1))
    sites[3].send_signal(signal.SIGKILL)
    outputs = [site.communicate(timeout=60) for site in sites[:3]]
    sites[3].wait(10)
    assert sites[3].returncode == -signal.SIGKILL
    for k, (site, (_stdout, stderr)) in enumerate(zip(sites[:3], outputs, strict=True)):
        if site.returncode == 0:
            report = json.loads((federation / f"report{k}.json").read_text())
            assert report["round"] == 1
            included = [int(name.split("-")[1]) for name in report["included"]]
            assert np.array_equal(
                np.load(federation / f"sum{k}.npy"), sum(updates[i] for i in included)
            )
        else:
            assert site.returncode == 1, stderr
            lines = stderr.strip().splitlines()
            assert lines
            assert "aborted" in lines[-1]
    # the killed site's log is intact, and says round 1 started
    records = [json.loads(line)["record"] for line in log.read_text().splitlines()]
    assert (records[0]["round"], records[0]["outcome"]) == (1, "started")
    # round 2: all four, site-3 restarted from its files
    updates = _inputs(federation, 300_000, seed=seed + 100)
    sites = _start_sites(federation)
    for site in sites:
        _, stderr = site.communicate(timeout=60)
        assert site.returncode == 0, stderr
    for k in range(SITES):
        report = json.loads((federation / f"report{k}.json").read_text())
        assert report["round"] == 2
        assert report["included"] == [f"site-{i}" for i in range(SITES)]
        assert np.array_equal(np.load(federation / f"sum{k}.npy"), sum(updates))


def test_round_ids_continue_from_the_audit_log_and_are_never_reused(federation: Path) -> None:
    updates = _inputs(federation, 2_000, seed=5)
    for expected_round in (1, 2):
        sites = _start_sites(federation)
        for site in sites:
            _, stderr = site.communicate(timeout=60)
            assert site.returncode == 0, stderr
        reports = [json.loads((federation / f"report{k}.json").read_text()) for k in range(SITES)]
        assert [r["round"] for r in reports] == [expected_round] * SITES
        assert np.array_equal(np.load(federation / "sum0.npy"), sum(updates))
    reused = subprocess.run(
        _cli(
            "aggregate",
            "--config",
            str(federation / "sites" / "site-0.toml"),
            "--input",
            str(federation / "x0.npy"),
            "--output",
            str(federation / "again.npy"),
            "--round",
            "1",
        ),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert reused.returncode == 2
    assert "never reused" in reused.stderr


def test_a_reduce_scatter_federation_gives_the_identical_exact_sum(tmp_path: Path) -> None:
    """``mpc-agg init --reduce-scatter`` (secagg SPEC §6.7): four ``aggregate`` processes
    over TLS Mosquitto, chunks to their owners, verified sums — the exact sum everywhere,
    and the audit record names the data path."""
    with running_federation(
        tmp_path / "fed", "--sites", str(SITES), "--reduce-scatter", deadline=2.0
    ) as (root, _output):
        assert "reduce_scatter = true" in (root / "federation.toml").read_text()
        _one_exact_round(root, 20_001, seed=5)
        lines = (root / "sites" / "site-0.audit.jsonl").read_text().splitlines()
        records = [json.loads(line)["record"] for line in lines]
        assert [r["parameters"]["reduce_scatter"] for r in records] == [True, True]
