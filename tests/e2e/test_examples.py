"""examples/: the single-site script, and the same script made federated in a few lines."""

from __future__ import annotations

import difflib
import subprocess
import sys
from pathlib import Path

import pytest

from peers.demo import make_federation, running_broker

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _code_lines(path: Path) -> list[str]:
    """The script without its module docstring (which explains how to run it)."""
    text = path.read_text()
    end = text.index('"""', 3) + 3
    return text[end:].splitlines()


def test_the_federated_script_differs_from_the_single_site_one_in_at_most_5_lines() -> None:
    single = _code_lines(EXAMPLES / "train_single.py")
    federated = _code_lines(EXAMPLES / "train_federated.py")
    changed = [
        line
        for line in difflib.unified_diff(single, federated, lineterm="", n=0)
        if line[:1] in "+-" and not line.startswith(("+++", "---")) and line[1:].strip()
    ]
    added = [line for line in changed if line.startswith("+")]
    assert len(added) <= 5, changed
    assert any("SecureAggOptimizer(torch.optim.SGD" in line for line in added)


def test_the_single_site_script_trains(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "train_single.py")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    assert float(done.stdout.split()[-1]) > 0.5


@pytest.mark.slow
def test_three_sites_run_the_federated_script_over_mosquitto(tmp_path: Path) -> None:
    """Every site ends with the same model (same accuracy) after 100 secure steps."""
    _, port = make_federation(tmp_path, sites=3, kind="mosquitto", threshold=None)
    sites = tmp_path / "fed" / "sites"
    with running_broker(tmp_path / "fed", port, "mosquitto"):
        processes = [
            subprocess.Popen(
                [
                    *(sys.executable, str(EXAMPLES / "train_federated.py")),
                    *(str(sites / f"site-{k}.toml"), str(k), "3"),
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                cwd=tmp_path,
            )
            for k in range(3)
        ]
        try:
            outputs = [p.communicate(timeout=240) for p in processes]
        finally:
            for p in processes:
                p.kill()
    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr
    accuracies = {out.split()[-1] for out, _ in outputs}
    assert len(accuracies) == 1  # one shared model
    assert float(accuracies.pop()) > 0.7
