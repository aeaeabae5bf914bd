"""`mpc-agg aggregate` and site loading against bad paths, files and inputs (a CLI attack pass).

Everything here is refused before a broker is needed (or the round is stubbed), in process:
a clear one-line error and an exit code, never a traceback, and nothing of the site's own
(key, audit log, configuration) is ever overwritten.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mpc_agg.dp import DpSettings, plan_round
from mpc_agg.errors import EncodingError, ProtocolMisuseError
from peers import cli
from peers.audit import AuditLog, verify_audit_log
from peers.config import ConfigError, load_site
from peers.init import find_program, init_federation
from peers.memory import MemoryBroker, MemoryTransport
from peers.node import AggregateResult, PeerNode
from peers.roster_ops import revoke_site

ERROR = 2


@pytest.fixture(autouse=True)
def _pytests_heap_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cli, "keep_freed_memory", lambda: None)  # cli.main runs in process


@pytest.fixture
def fed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    init_federation(tmp_path / "fed", sites=3, broker_port=1)  # no broker: nothing connects
    np.save(tmp_path / "x.npy", np.full(10, 0.25))
    monkeypatch.chdir(tmp_path)
    return tmp_path / "fed"


def _aggregate(*extra: str, output: str = "sum.npy") -> list[str]:
    site = "fed/sites/site-0.toml"
    return ["aggregate", "--config", site, "--input", "x.npy", "--output", output, *extra]


@pytest.mark.parametrize(
    ("output", "report", "message"),
    [
        (
            "fed/sites/site-0.audit.jsonl",
            None,
            "--output fed/sites/site-0.audit.jsonl is the audit log",
        ),
        ("sum.npy", "fed/sites/site-0.key", "--report fed/sites/site-0.key is the signing key"),
        ("fed/sites/site-0.password", None, "is the password file"),
        ("fed/sites/site-0.toml", None, "is the site file"),
        ("fed/federation.toml", None, "is federation.toml"),
        ("fed/broker/ca.crt", None, "is the broker's CA"),
        ("x.npy", None, "is --input"),
        ("same.npy", "same.npy", "--report and --output are the same file"),
        ("./sub/../same.npy", "same.npy", "are the same file"),
        ("/dev/null", None, "exists and is not a regular file"),
        ("fed", None, "is a directory"),
        ("nowhere/sum.npy", None, "does not exist"),
    ],
)
def test_outputs_never_land_on_the_sites_own_files(
    fed: Path, capsys: pytest.CaptureFixture[str], output: str, report: str | None, message: str
) -> None:
    (fed.parent / "sub").mkdir()
    own = {p: p.read_bytes() for p in (fed / "sites").iterdir() if p.is_file()}
    extra = ("--report", report) if report else ()
    assert cli.main(_aggregate(*extra, output=output)) == ERROR
    assert message in capsys.readouterr().err
    assert {p: p.read_bytes() for p in (fed / "sites").iterdir() if p.is_file()} == own
    assert not list(fed.parent.glob(".*.npy.*"))  # no staged file left


def _npy_claiming(entries: int) -> bytes:
    header = f"{{'descr': '<f8', 'fortran_order': False, 'shape': ({entries},), }}"
    header += " " * (118 - len(header)) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(80)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "the file is empty"),
        (b"not an array", "not a .npy file: save one array with numpy.save"),
        (_npy_claiming(10**11), ""),  # a header that lies: refused before any allocation
        ("timedelta", "is not floats or integers"),
        ("npz", "an .npz archive"),
        ("long", "the federation allows 1.."),
        ("empty", "0 entries"),
    ],
)
def test_bad_inputs_are_refused_with_one_line(
    fed: Path, capsys: pytest.CaptureFixture[str], content: bytes | str, message: str
) -> None:
    path = fed.parent / "x.npy"
    if content == "timedelta":
        np.save(path, np.arange(5).astype("timedelta64[s]"))
    elif content == "npz":
        with path.open("wb") as handle:
            np.savez(handle, a=np.zeros(3))
    elif content == "long":
        np.save(
            path,
            np.zeros(
                load_site(fed / "sites" / "site-0.toml").federation.limits.max_vector_length + 1,
                dtype=np.int8,
            ),
        )
    elif content == "empty":
        np.save(path, np.zeros(0))
    else:
        assert isinstance(content, bytes)
        path.write_bytes(content)
    assert cli.main(_aggregate()) == ERROR
    err = capsys.readouterr().err
    assert err.startswith("mpc-agg: cannot read x.npy: ")
    assert message in err
    assert "Traceback" not in err


def test_a_round_id_that_leaves_no_next_one_is_refused(
    fed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(_aggregate("--round", str(2**64 - 1))) == ERROR
    assert "--round must be in [1, 2^64 − 1)" in capsys.readouterr().err


@pytest.mark.asyncio
async def test_exhausted_round_ids_are_a_typed_error_not_a_crash(fed: Path) -> None:
    site = load_site(fed / "sites" / "site-0.toml")
    transport = MemoryTransport(MemoryBroker(), name="site-0")
    async with PeerNode.from_config(site, transport=transport) as node:
        node._last_round = 2**64 - 1
        with pytest.raises(ProtocolMisuseError, match="round ids are exhausted"):
            await node.aggregate(np.zeros(3))


def test_a_missing_audit_log_is_a_lost_one_not_a_new_site(
    fed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Deleting the log would restart the round ids and the ε ledger: refused.
    (fed / "sites" / "site-0.audit.jsonl").unlink()
    assert cli.main(_aggregate()) == ERROR
    err = capsys.readouterr().err
    assert "site-0.audit.jsonl not found. It holds this site's round ids and privacy ledger" in err
    with pytest.raises(ConfigError, match="create an empty file"):
        PeerNode.from_config(load_site(fed / "sites" / "site-0.toml"))


@pytest.mark.parametrize(
    "ca", [b"", b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n"]
)
def test_a_ca_file_that_is_no_ca_is_a_configuration_error(
    fed: Path, capsys: pytest.CaptureFixture[str], ca: bytes
) -> None:
    (fed / "broker" / "ca.crt").write_bytes(ca)
    with pytest.raises(ConfigError, match=r"broker.ca_file: .* holds no usable CA certificate"):
        load_site(fed / "sites" / "site-0.toml")
    assert cli.main(_aggregate()) == ERROR
    assert "holds no usable CA certificate" in capsys.readouterr().err


def test_an_audit_log_that_is_not_a_file_is_a_configuration_error(fed: Path) -> None:
    log = fed / "sites" / "site-0.audit.jsonl"
    log.unlink()
    log.mkdir()
    with pytest.raises(ConfigError, match=r"audit_log: .* is not a regular file"):
        load_site(fed / "sites" / "site-0.toml")


def _result(total: Any) -> AggregateResult:
    return AggregateResult(
        total=total, count=3, included=("site-0", "site-1", "site-2"), dropped={}, excluded={},
        protocol="secagg/4", round_id=1, result_digest="ab" * 32, confirmed_by=(), timings={},
        bytes_in=0, bytes_out=0, ignored={},
    )  # fmt: skip


def test_outputs_are_written_whole_or_not_at_all(
    fed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def finished(**_: Any) -> AggregateResult:
        return _result(np.arange(4.0))

    monkeypatch.setattr(cli, "_one_round", finished)
    (fed.parent / "sum.npy").write_bytes(b"the previous sum")
    assert cli.main(_aggregate("--report", "r.json")) == 0
    assert np.array_equal(np.load(fed.parent / "sum.npy"), np.arange(4.0))
    assert '"result_digest"' in (fed.parent / "r.json").read_text()
    assert not list(fed.parent.glob(".*"))
    # the disk fills up as the result is written: one line, exit 2, the old file intact
    (fed.parent / "sum.npy").write_bytes(b"the previous sum")

    def full(*_: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("peers.cli.os.replace", full)
    assert cli.main(_aggregate()) == ERROR
    err = capsys.readouterr().err
    assert "round 1 finished (result digest abab" in err
    assert "could not be written: [Errno 28] No space left on device" in err
    assert (fed.parent / "sum.npy").read_bytes() == b"the previous sum"
    assert not list(fed.parent.glob(".*"))


def test_ctrl_c_is_one_line_and_exit_130(
    fed: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    async def interrupted(**_: Any) -> AggregateResult:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_one_round", interrupted)
    assert cli.main(_aggregate()) == 130
    assert capsys.readouterr().err == "mpc-agg: interrupted\n"
    assert not list(fed.parent.glob(".*"))


def test_a_log_left_by_init_is_used_and_verifies(fed: Path) -> None:
    log = AuditLog(
        fed / "sites" / "site-1.audit.jsonl",
        signing_key=load_site(fed / "sites" / "site-1.toml").signing_key,
    )
    log.append({"round": 1})
    assert verify_audit_log(log.path).lines == 1
    assert os.path.getsize(fed / "sites" / "site-2.audit.jsonl") == 0


# --------------------------------------------------------------------------- init


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--broker-host", "é.example"), "init: "),
        (("--broker-host", "a" * 300), "init: "),
        (("--noise-multiplier", "1", "--clip-norm", "1", "--epsilon", "inf"), "finite"),
    ],
)
def test_a_failed_init_leaves_nothing_and_can_be_run_again(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    target = tmp_path / "fed"
    assert cli.main(["init", str(target), "--sites", "3", *extra]) == ERROR
    assert message in capsys.readouterr().err
    assert not target.exists()
    assert cli.main(["init", str(target), "--sites", "3"]) == 0
    assert (target / "federation.toml").is_file()


def test_init_into_a_file_or_an_unwritable_place_is_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    (tmp_path / "afile").write_text("x")
    for target in (tmp_path / "afile", tmp_path / "afile" / "sub", Path("/proc/mpc-agg-x")):
        assert cli.main(["init", str(target), "--sites", "3"]) == ERROR
        err = capsys.readouterr().err
        assert err.startswith(f"mpc-agg: init: cannot create {target}: ")
        assert "Traceback" not in err
    assert (tmp_path / "afile").read_text() == "x"


def test_a_failed_init_keeps_what_was_there_before(tmp_path: Path) -> None:
    # a folder with the operator's own files: a failure removes only what init made
    target = tmp_path / "fed"
    (target / "sites").mkdir(parents=True)
    (target / "notes.txt").write_text("mine")
    (target / "sites" / "site-2.key").write_text("an old key")  # init will not overwrite it
    with pytest.raises(FileExistsError):
        init_federation(target, sites=3)
    assert sorted(p.relative_to(target).as_posix() for p in target.rglob("*")) == [
        "notes.txt",
        "sites",
        "sites/site-2.key",
    ]


@pytest.mark.parametrize(("noise", "clip"), [("1e300", "1"), ("1", "1e300"), ("1e-300", "1")])
def test_dp_settings_no_sampler_can_meet_are_a_one_line_error(
    tmp_path: Path, noise: str, clip: str
) -> None:
    settings = DpSettings(noise_multiplier=float(noise), clip_norm=float(clip), delta=1e-5)
    with pytest.raises(EncodingError, match="outside what any sampler can draw"):
        plan_round(
            settings, vector_length=100, frac_bits=16, min_sites=2, federation="f", round_id=1
        )


def test_broker_for_a_folder_without_a_federation_is_a_usage_error(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    if find_program("mosquitto") is None:
        pytest.fail("mosquitto must be installed on this machine kind")
    assert cli.main(["broker", str(tmp_path / "nowhere")]) == ERROR
    assert "no broker configuration at" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (("--seed", "-1"), "need --seed in [0, 2^32)"),
        (("--sites", "100000"), "need --sites in [2, 64]"),
        (("--timeout", "0"), "need a --timeout > 0"),
        (("--timeout", "nan"), "need a --timeout > 0"),
    ],
)
def test_demo_arguments_out_of_range_are_one_line(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: tuple[str, ...],
    message: str,
) -> None:
    assert cli.main(["demo", "--out", str(tmp_path / "o"), *extra]) == ERROR
    assert message in capsys.readouterr().err


def test_a_config_that_is_a_device_is_refused_not_read_forever(
    fed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        cli.main(["aggregate", "--config", "/dev/zero", "--input", "x.npy", "--output", "s.npy"])
        == ERROR
    )
    assert "/dev/zero: is not a regular file" in capsys.readouterr().err


@pytest.mark.parametrize(
    "host", ["a\x00b", "a" * 64 + ".example", 'x"y', "h#comment", "\x01", "a b", ""]
)
def test_broker_hosts_a_client_cannot_use_are_refused(
    fed: Path, capsys: pytest.CaptureFixture[str], host: str
) -> None:
    toml = fed / "federation.toml"
    text = toml.read_text()
    toml.write_text(text.replace('host = "127.0.0.1"', f"host = {json.dumps(host)}", 1))
    with pytest.raises(ConfigError, match=r"broker\.host: "):
        load_site(fed / "sites" / "site-0.toml")
    with pytest.raises(ValueError, match="broker_host "):
        init_federation(fed.parent / "other", sites=3, broker_host=host or " ")


def test_revoke_refuses_before_changing_anything_when_revoked_is_a_file(fed: Path) -> None:
    (fed / "sites" / "revoked").write_text("not a folder")
    before = {p: p.read_bytes() for p in fed.rglob("*") if p.is_file()}
    with pytest.raises(ValueError, match="exists and is not a directory"):
        revoke_site(fed, "site-1")
    assert {p: p.read_bytes() for p in fed.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize("kind", ["loop", "long"])
def test_output_paths_that_cannot_be_resolved_are_one_line(
    fed: Path, capsys: pytest.CaptureFixture[str], kind: str
) -> None:
    if kind == "loop":
        (fed.parent / "loop1").symlink_to("loop2")
        (fed.parent / "loop2").symlink_to("loop1")
        output = "loop1/sum.npy"
    else:
        output = "x" * 300 + ".npy"
    assert cli.main(_aggregate(output=output)) == ERROR
    err = capsys.readouterr().err
    assert err.startswith(f"mpc-agg: --output {output}")
    assert "Traceback" not in err


def test_a_header_with_an_impossible_shape_is_one_line(
    fed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (fed.parent / "x.npy").write_bytes(_npy_claiming(2**63))
    assert cli.main(_aggregate()) == ERROR
    assert capsys.readouterr().err.startswith("mpc-agg: cannot read x.npy: ")
