"""Review: CLI exit codes and claims when rounds abort or the audit log is missing."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpc_agg.fixedpoint import FixedPointCodec
from peers import cli, demo
from protocols.harness import Dropout, RoundOutcome, run_secagg_round
from protocols.secagg.messages import Phase


def test_review_broker_demo_with_an_aborted_round_does_not_exit_0(
    capsys: pytest.CaptureFixture[str],
) -> None:
    aborted = json.dumps({"round": 1, "aborted": "only 1 of 3 peers advertised keys"})
    outputs = [(aborted + "\n", "") for _ in range(3)]
    codec = FixedPointCodec(frac_bits=20, n_peers=3, max_abs_value=1.0)
    code = demo._print_sum(outputs, 3, 1, 7, 10, codec)
    out = capsys.readouterr().out
    assert "aborted: only 1 of 3 peers advertised keys" in out
    assert "every site computed the identical sum" not in out
    assert code == 1


def test_review_in_process_demo_with_an_aborted_round_does_not_exit_0(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = run_secagg_round

    def everyone_drops(**kwargs: Any) -> RoundOutcome:
        kwargs["dropouts"] = [Dropout(p, Phase.ADVERTISE_KEYS) for p in range(kwargs["n"])]
        return real(**kwargs)

    monkeypatch.setattr("peers.demo.run_secagg_round", everyone_drops)
    code = cli.main(
        ["demo", "--in-process", "--sites", "3", "--rounds", "1", "--dim", "10", "--drop", "0"]
    )
    out = capsys.readouterr().out
    assert "aborted" in out
    assert "all sites agreed every round" not in out
    assert code == 1


@pytest.mark.parametrize("what", ["missing", "directory"])
def test_review_audit_verify_of_no_log_is_not_ok(
    tmp_path: Path, what: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "site-0.audit.jsonl"
    if what == "directory":
        path.mkdir()
    code = cli.main(["audit", "verify", str(path)])
    captured = capsys.readouterr()
    assert "ok" not in captured.out
    assert code == 2
    assert "no audit log" in captured.err


@pytest.mark.parametrize("round_id", [0, 2**64])
def test_review_aggregate_with_a_round_id_outside_the_range_exits_2(
    tmp_path: Path, round_id: int, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["init", str(tmp_path / "fed"), "--sites", "2", "--broker-port", "1"]) == 0
    np.save(tmp_path / "x.npy", np.zeros(3))
    code = cli.main(
        [
            "aggregate",
            "--config",
            str(tmp_path / "fed" / "sites" / "site-0.toml"),
            "--input",
            str(tmp_path / "x.npy"),
            "--output",
            str(tmp_path / "sum.npy"),
            "--round",
            str(round_id),
        ]
    )
    assert code == 2
    assert "--round" in capsys.readouterr().err


@pytest.mark.parametrize("threshold", ["1", "9"])
def test_review_broker_demo_with_an_impossible_threshold_is_a_usage_error(
    threshold: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["demo", "--sites", "3", "--threshold", threshold]) == 2
    assert "--threshold must be in [2, 3]" in capsys.readouterr().err
