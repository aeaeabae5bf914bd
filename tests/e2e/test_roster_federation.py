"""Key rotation and revocation as an operator does them, over the federation's Mosquitto."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import aiomqtt
import numpy as np
import pytest

from peers.config import load_federation
from tests.e2e.federations import cli, reload_broker, run_sites, running_federation


def _roster(root: Path, operation: str, site: str) -> None:
    done = subprocess.run(
        cli("roster", operation, str(root), "--site", site),
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "roster digest" in done.stdout


def _change(root: Path) -> None:
    _roster(root, "rotate", "site-0")
    _roster(root, "revoke", "site-3")


def test_after_rotation_and_revocation_the_remaining_sites_aggregate(tmp_path: Path) -> None:
    with running_federation(
        tmp_path / "fed", "--sites", "4", deadline=3.0, before_broker=_change
    ) as (root, _output):
        federation = load_federation(root / "federation.toml")
        assert [e.name for e in federation.roster.entries] == ["site-0", "site-1", "site-2"]
        rng = np.random.default_rng(4)
        updates = [np.round(rng.uniform(-0.5, 0.5, 3000) * 2**20) / 2**20 for _ in range(3)]
        for k, update in enumerate(updates):
            np.save(root / f"x{k}.npy", update)
        for code, stdout, stderr in run_sites(root, 3, timeout=60):
            assert code == 0, stderr
            assert "sum of 3 sites" in stdout
        assert np.array_equal(np.load(root / "sum0.npy"), sum(updates))
        # The revoked site has no site file any more, and its old broker password is refused.
        revoked = root / "sites" / "revoked"
        done = subprocess.run(
            cli(
                "aggregate",
                "--config",
                str(revoked / "site-3.toml"),
                "--input",
                str(root / "x0.npy"),
                "--output",
                str(root / "s.npy"),
            ),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        assert done.returncode == 2
        assert "site-3" in done.stderr
        revoked_password = (revoked / "site-3.password").read_text().strip()
        site_password = (root / "sites" / "site-1.password").read_text().strip()

        async def connect(user: str, password: str) -> None:
            async with aiomqtt.Client(
                "127.0.0.1",
                federation.broker.port,
                username=user,
                password=password,
                identifier=f"check-{user}",
                tls_params=aiomqtt.TLSParameters(ca_certs=str(root / "broker" / "ca.crt")),
            ):
                pass

        asyncio.run(connect("site-1", site_password))  # the check itself works
        with pytest.raises(aiomqtt.MqttError):
            asyncio.run(connect("site-3", revoked_password))


def test_a_site_rotated_after_rounds_goes_on_with_its_audit_log(tmp_path: Path) -> None:
    # Rounds, then `roster rotate` and a broker reload, then rounds again: the rotated
    # site's log records the new key and verifies against the new roster, and its round
    # ids go on with the others'.
    with running_federation(tmp_path / "fed", "--sites", "3", deadline=3.0) as (root, _):
        rng = np.random.default_rng(5)
        for k in range(3):
            np.save(root / f"x{k}.npy", np.round(rng.uniform(-0.5, 0.5, 500) * 2**20) / 2**20)
        for code, stdout, stderr in run_sites(root, 3, timeout=60):
            assert code == 0, stderr
            assert "round 1: sum of 3 sites" in stdout
        done = subprocess.run(
            cli("roster", "rotate", str(root), "--site", "site-0"),
            capture_output=True,
            text=True,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert "rotation recorded in its audit log" in done.stdout
        reload_broker(root)
        for code, stdout, stderr in run_sites(root, 3, timeout=60):
            assert code == 0, stderr
            assert "round 2: sum of 3 sites" in stdout
        verified = subprocess.run(
            cli(
                "audit",
                "verify",
                str(root / "sites" / "site-0.audit.jsonl"),
                "--federation",
                str(root / "federation.toml"),
                "--site",
                "site-0",
            ),
            capture_output=True,
            text=True,
            check=False,
        )
        assert verified.returncode == 0, verified.stdout + verified.stderr
        assert "ok, 5 lines" in verified.stdout  # two a round, and the rotation
