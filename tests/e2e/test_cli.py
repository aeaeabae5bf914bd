"""The CLI as a user runs it: a subprocess, real arguments, exit codes and output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peers.config import load_federation


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "peers.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_in_process_demo_runs_rounds_and_agrees_with_plaintext() -> None:
    done = _run(
        "demo", "--in-process", "--sites", "4", "--rounds", "2", "--dim", "2000", "--seed", "5"
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("mpc-agg demo: 4 sites, threshold T=3, 2 rounds")
    rows = [line for line in lines if line.strip()[:1].isdigit()]
    assert len(rows) == 2
    assert "all sites agreed every round; the ring sums were bit-exact" in done.stdout


def test_demo_is_reproducible_with_a_seed() -> None:
    args = ("demo", "--in-process", "--sites", "3", "--rounds", "1", "--dim", "500", "--seed", "9")
    first = _run(*args, "--drop", "0")
    second = _run(*args, "--drop", "0")
    assert first.returncode == 0 == second.returncode
    strip = [ln.rsplit(" ", 1)[0] for ln in first.stdout.splitlines()]  # drop timings
    assert strip == [ln.rsplit(" ", 1)[0] for ln in second.stdout.splitlines()]


def test_demo_rejects_impossible_dropouts() -> None:
    done = _run("demo", "--in-process", "--sites", "4", "--drop", "3")
    assert done.returncode == 2
    assert "--drop must be in [0, n−T = 1]" in done.stderr


def test_unknown_command_is_a_usage_error() -> None:
    done = _run("frobnicate")
    assert done.returncode == 2
    assert "invalid choice" in done.stderr


def test_demo_through_mosquitto_with_site_processes() -> None:
    done = _run(
        "demo", "--task", "sum", "--sites", "3", "--rounds", "2", "--dim", "3000", "--seed", "2"
    )
    assert done.returncode == 0, done.stderr
    assert "broker: mosquitto with TLS + per-site passwords and ACL" in done.stdout
    rows = [line for line in done.stdout.splitlines() if line.strip()[:1].isdigit()]
    assert len(rows) == 2
    assert all("site-0, site-1, site-2" in row for row in rows)
    assert "every site computed the identical sum each round" in done.stdout


def test_aggregate_checks_its_output_paths_before_the_round(tmp_path: Path) -> None:
    """A typo in --output must not cost the federation a round: refused before connecting."""
    assert _run("init", str(tmp_path / "fed"), "--sites", "3").returncode == 0
    np.save(tmp_path / "x.npy", np.zeros(4))
    site = tmp_path / "fed" / "sites" / "site-0.toml"
    for output, message in (
        (tmp_path / "missing" / "sum.npy", f"directory {tmp_path / 'missing'} does not exist"),
        (tmp_path, "is a directory"),
    ):
        done = _run(
            "aggregate", "--config", str(site), "--input", str(tmp_path / "x.npy"),
            "--output", str(output),
        )  # fmt: skip
        assert done.returncode == 2
        assert f"--output {output}: {message}" in done.stderr
    assert (tmp_path / "fed" / "sites" / "site-0.audit.jsonl").read_bytes() == b""  # no round


def test_init_robust_writes_the_protocol_threshold_and_max_norm(tmp_path: Path) -> None:
    done = _run(
        "init", str(tmp_path / "fed"), "--sites", "5", "--protocol", "robust",
        "--max-norm", "2.5", "--broker-port", "18883",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].endswith(": 5 sites, robust, threshold t=2, max_norm=2.5")
    fed = load_federation(tmp_path / "fed" / "federation.toml")
    assert (fed.protocol, fed.threshold, fed.max_norm) == ("robust", 2, 2.5)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--protocol", "robust"],
            "mpc-agg: init: --protocol robust needs --max-norm "
            "(the L2 bound on each site's update)",
        ),
        (
            ["--max-norm", "1.0"],
            "mpc-agg: init: --max-norm is only for --protocol robust, not secagg",
        ),
        (
            ["--protocol", "robust", "--max-norm", "nan"],
            "mpc-agg: init: max_norm must be a positive finite number, got nan",
        ),
        (
            ["--protocol", "robust", "--max-norm", "1", "--threshold", "2"],
            "mpc-agg: init: threshold must be in [1, 1] for robust (2t + 1 ≤ n=3), got 2",
        ),
        (["--threshold", "9"], "mpc-agg: init: threshold must be in [2, 3], got 9"),
        (
            ["--noise-multiplier", "1"],
            "mpc-agg: init: --noise-multiplier needs --clip-norm (the L2 clip of each update)",
        ),
        (
            ["--epsilon", "3"],
            "mpc-agg: init: the DP options need --noise-multiplier (and --clip-norm)",
        ),
        (
            ["--noise-multiplier", "-1", "--clip-norm", "1"],
            "mpc-agg: init: noise_multiplier must be finite and > 0, got -1.0",
        ),
        (
            [
                "--protocol",
                "robust",
                "--max-norm",
                "1",
                "--noise-multiplier",
                "1",
                "--clip-norm",
                "1",
            ],
            "mpc-agg: init: differential privacy ([dp]) is available with secagg only, not robust",
        ),
    ],
)
def test_init_bad_arguments_exit_2_with_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    done = _run("init", str(tmp_path / "fed"), "--sites", "3", *args)
    assert done.returncode == 2
    assert done.stderr.splitlines() == [message]
    assert not (tmp_path / "fed").exists()
