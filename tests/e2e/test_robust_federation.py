"""A ``robust`` federation as users run it: ``mpc-agg init --protocol robust``, the broker
(Mosquitto with TLS and the generated ACL) and one ``mpc-agg aggregate`` process per site."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.e2e.federations import cli as _cli
from tests.e2e.federations import run_sites, running_federation

SITES = 5
FRAC_BITS = 20


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Path]:
    """A 5-site robust federation (t = 2, max_norm 1) with short deadlines, broker running."""
    with running_federation(
        tmp_path / "fed",
        *("--sites", str(SITES), "--protocol", "robust", "--max-norm", "1.0"),
        deadline=5.0,
    ) as (root, output):
        assert "robust, threshold t=2, max_norm=1" in output
        yield root


def _run_sites(root: Path, updates: list[np.ndarray]) -> list[tuple[int, str, str]]:
    for k, update in enumerate(updates):
        np.save(root / f"x{k}.npy", update)
    return run_sites(root, SITES)


def _bounded(rng: np.random.Generator, dim: int, norm: float) -> np.ndarray:
    values = rng.normal(0.0, 1.0, dim)
    values *= norm / np.linalg.norm(values)
    return np.asarray(np.trunc(values * 2**FRAC_BITS) / 2**FRAC_BITS)  # grid; norm shrinks


def test_five_site_processes_get_the_exact_sum_with_norm_bound_and_audit(
    federation: Path,
) -> None:
    rng = np.random.default_rng(71)
    updates = [_bounded(rng, 5_000, 0.95) for _ in range(SITES)]
    for code, out, err in _run_sites(federation, updates):
        assert code == 0, err
        assert "sum of 5 sites" in out
    for k in range(SITES):
        assert np.array_equal(np.load(federation / f"sum{k}.npy"), sum(updates))
    reports = [json.loads((federation / f"report{k}.json").read_text()) for k in range(SITES)]
    assert {r["protocol"] for r in reports} == {"robust/3"}
    assert len({r["result_digest"] for r in reports}) == 1
    assert all(r["excluded"] == {} for r in reports)
    fed = str(federation / "federation.toml")
    for k in range(SITES):
        audit = federation / "sites" / f"site-{k}.audit.jsonl"
        record = json.loads(audit.read_text().splitlines()[-1])["record"]
        assert record["protocol"] == "robust/3"
        assert record["parameters"]["threshold"] == 2
        assert record["parameters"]["max_norm"] == 1.0
        assert record["parameters"]["norm_bound"] == 2**FRAC_BITS + 1 + 71  # + ⌈√5000⌉
        verified = subprocess.run(
            _cli("audit", "verify", str(audit), "--federation", fed, "--site", f"site-{k}"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr


def test_an_update_over_max_norm_exits_with_a_clear_error(federation: Path) -> None:
    np.save(federation / "big.npy", np.full(100, 1.0))  # norm 10 > max_norm 1
    done = subprocess.run(
        _cli(
            "aggregate",
            "--config",
            str(federation / "sites" / "site-0.toml"),
            "--input",
            str(federation / "big.npy"),
            "--output",
            str(federation / "s.npy"),
        ),
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert "exceeds the federation's max_norm 1" in done.stderr
    assert not (federation / "s.npy").exists()
