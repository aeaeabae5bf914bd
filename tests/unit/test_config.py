"""Federation and site configuration (peers/config.py): round trip and every rejection."""

from __future__ import annotations

import enum
import math
import os
import stat
from pathlib import Path

import pytest

from mpc_agg.dp import DpSettings, Mechanism, Unit
from mpc_agg.errors import MpcAggError
from peers.config import (
    BrokerConfig,
    ConfigError,
    Deadlines,
    load_federation,
    load_site,
)
from peers.init import init_federation
from protocols.robust.params import default_threshold as robust_default_threshold
from protocols.robust.phases import ACTIVE_PHASES as ROBUST_ACTIVE_PHASES
from protocols.robust.phases import Phase as RobustPhase
from protocols.secagg.machine import default_threshold
from protocols.secagg.messages import Phase

FED_ID = "fed-test"
PORT = 18883

posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One generated federation, read-only for the tests that only load it."""
    directory = tmp_path_factory.mktemp("federation")
    init_federation(directory, sites=3, broker_port=PORT, federation_id=FED_ID)
    return directory


@pytest.fixture
def fed_dir(tmp_path: Path) -> Path:
    """A fresh federation each test may edit."""
    init_federation(tmp_path, sites=3, broker_port=PORT, federation_id=FED_ID)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} not found exactly once in {path}"
    path.write_text(text.replace(old, new))


def _error(path: Path, *, site: bool = False) -> ConfigError:
    load = load_site if site else load_federation
    with pytest.raises(ConfigError) as info:
        load(path)
    return info.value


# --------------------------------------------------------------------------- round trip


def test_generated_federation_round_trips(generated: Path) -> None:
    fed = load_federation(generated / "federation.toml")
    assert fed.id == FED_ID
    assert fed.protocol == "secagg"
    assert fed.threshold == 3 == default_threshold(3)
    assert fed.broker == BrokerConfig(
        host="127.0.0.1",
        port=PORT,
        tls=True,
        ca_file=(generated / "broker" / "ca.crt").resolve(),
        username=None,
        password=None,
    )
    assert fed.deadlines == Deadlines(
        advertise_keys=30.0,
        share_keys=30.0,
        masked_input=60.0,
        consistency_check=30.0,
        unmask=30.0,
        confirm_result=10.0,
    )
    assert (fed.encoding.frac_bits, fed.encoding.max_abs_value) == (20, 1.0)
    assert (fed.limits.max_vector_length, fed.limits.chunk_size) == (100_000_000, 1 << 20)
    assert [e.name for e in fed.roster.entries] == ["site-0", "site-1", "site-2"]
    assert fed.n == 3
    assert fed.path == (generated / "federation.toml").absolute()


@pytest.mark.parametrize("k", [0, 1, 2])
def test_generated_sites_round_trip(generated: Path, k: int) -> None:
    site_file = generated / "sites" / f"site-{k}.toml"
    site = load_site(site_file)
    assert site.name == f"site-{k}"
    assert site.index == k
    assert site.federation == load_federation(generated / "federation.toml")
    assert site.signing_key.public_bytes() == site.federation.roster.entries[k].verify_key
    password = (generated / "sites" / f"site-{k}.password").read_text().strip()
    assert len(password) >= 32
    assert site.broker.username == f"site-{k}"
    assert site.broker.password == password
    assert (site.broker.host, site.broker.port, site.broker.tls) == ("127.0.0.1", PORT, True)
    assert site.audit_log == (generated / "sites" / f"site-{k}.audit.jsonl").resolve()
    assert site.path == site_file.absolute()


def test_sites_have_distinct_keys_and_passwords(generated: Path) -> None:
    sites = [load_site(generated / "sites" / f"site-{k}.toml") for k in range(3)]
    assert len({s.signing_key.private_bytes() for s in sites}) == 3
    assert len({s.broker.password for s in sites}) == 3


def test_secrets_never_appear_in_repr(generated: Path) -> None:
    site = load_site(generated / "sites" / "site-0.toml")
    password = site.broker.password
    assert password
    private_hex = site.signing_key.private_bytes().hex()
    for text in (repr(site), str(site), repr(site.broker), str(site.broker)):
        assert password not in text
        assert private_hex not in text
        assert private_hex[:16] not in text
    assert "username='site-0'" in repr(site.broker)


def test_deadline_for_every_phase(generated: Path) -> None:
    deadlines = load_federation(generated / "federation.toml").deadlines
    expected = {
        Phase.ADVERTISE_KEYS: 30.0,
        Phase.SHARE_KEYS: 30.0,
        Phase.MASKED_INPUT: 60.0,
        Phase.CONSISTENCY_CHECK: 30.0,
        Phase.UNMASK: 30.0,
        Phase.CONFIRM_RESULT: 10.0,
    }
    assert {p: deadlines.for_phase(p) for p in expected} == expected
    distinct = Deadlines(
        advertise_keys=1.0,
        share_keys=2.0,
        masked_input=3.0,
        consistency_check=4.0,
        unmask=5.0,
        confirm_result=6.0,
    )
    assert [distinct.for_phase(p) for p in expected] == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    for phase in (Phase.IDLE, Phase.DONE, Phase.ABORTED):
        with pytest.raises(ValueError, match=f"phase {phase.name} has no deadline"):
            deadlines.for_phase(phase)


def test_optional_sections_take_defaults(tmp_path: Path, generated: Path) -> None:
    keys = [
        e.verify_key.hex() for e in load_federation(generated / "federation.toml").roster.entries
    ]
    path = tmp_path / "federation.toml"
    path.write_text(
        f"""
[federation]
id = "tiny"
[broker]
host = "broker.example.org"
port = 1883
tls = false
[[sites]]
name = "a"
verify_key = "{keys[0]}"
[[sites]]
name = "b"
verify_key = "{keys[1]}"
"""
    )
    fed = load_federation(path)
    assert fed.protocol == "secagg"
    assert fed.threshold == 2
    assert fed.broker == BrokerConfig(host="broker.example.org", port=1883, tls=False, ca_file=None)
    assert fed.deadlines == Deadlines()
    assert {
        fed.deadlines.for_phase(p)
        for p in Phase
        if p not in (Phase.IDLE, Phase.DONE, Phase.ABORTED)
    } == {30.0}
    assert (fed.encoding.frac_bits, fed.encoding.max_abs_value) == (20, 1.0)
    assert (fed.limits.max_vector_length, fed.limits.chunk_size) == (100_000_000, 1 << 20)


def test_tls_requires_a_ca_file(fed_dir: Path) -> None:
    path = fed_dir / "federation.toml"
    _edit(path, 'ca_file = "broker/ca.crt"\n', "")
    assert str(_error(path)) == (
        f"{path}: broker.ca_file: is required when tls = true (the CA that signs the broker)"
    )
    _edit(path, "tls = true", "tls = false")
    assert load_federation(path).broker.ca_file is None


def test_config_error_is_an_mpc_agg_error_with_file_and_key(fed_dir: Path) -> None:
    _edit(fed_dir / "federation.toml", "port = 18883", "port = 0")
    error = _error(fed_dir / "federation.toml")
    assert isinstance(error, MpcAggError)
    assert error.file == fed_dir / "federation.toml"
    assert error.key == "broker.port"
    assert error.problem == "must be in [1, 65535], got 0"


# --------------------------------------------------------------------------- robust

#: Every robust deadline, distinct, in the order of the phases.
ROBUST_DEADLINES = {
    "advertise": 1.0,
    "deal_input": 2.0,
    "wrap_challenge": 3.0,
    "deal_proof": 4.0,
    "query_challenge": 5.0,
    "query_agree": 6.0,
    "verify": 7.0,
    "dispute": 8.0,
    "output_agree": 9.0,
    "output": 10.0,
    "output_challenge": 11.0,
    "check_agree": 12.0,
    "output_verify": 13.0,
    "output_dispute": 14.0,
    "confirm": 15.0,
}


def _make_robust(path: Path, *, threshold: str = "threshold = 1\n") -> None:
    """Turn a generated secagg federation.toml into a robust one (t = 1, max_norm 1.5)."""
    text = path.read_text().replace('protocol = "secagg"', 'protocol = "robust"')
    text = text.replace("threshold = 3\n", threshold)
    start, end = text.index("[deadlines]"), text.index("[encoding]")
    deadlines = "".join(f"{name} = {value}\n" for name, value in ROBUST_DEADLINES.items())
    text = text[:start] + "[deadlines]\n" + deadlines + "\n" + text[end:]
    path.write_text(text.replace("[limits]\n", "[robust]\nmax_norm = 1.5\n\n[limits]\n"))


@pytest.fixture
def robust_dir(fed_dir: Path) -> Path:
    _make_robust(fed_dir / "federation.toml")
    return fed_dir


def test_robust_federation_loads(robust_dir: Path) -> None:
    fed = load_federation(robust_dir / "federation.toml")
    assert (fed.protocol, fed.threshold, fed.max_norm) == ("robust", 1, 1.5)
    assert [fed.deadlines.for_phase(p) for p in ROBUST_ACTIVE_PHASES] == list(
        ROBUST_DEADLINES.values()
    )
    assert fed.deadlines == Deadlines(**ROBUST_DEADLINES)
    assert load_site(robust_dir / "sites" / "site-1.toml").federation == fed


def test_secagg_federation_has_no_max_norm(generated: Path) -> None:
    assert load_federation(generated / "federation.toml").max_norm is None


@pytest.mark.parametrize("n", [3, 4, 5, 7, 10])
def test_robust_default_threshold_is_the_protocols(tmp_path: Path, n: int) -> None:
    init_federation(tmp_path, sites=n, federation_id=FED_ID)
    path = tmp_path / "federation.toml"
    threshold = f"threshold = {default_threshold(n)}\n"
    _edit(path, threshold, "threshold = 3\n")  # what _make_robust looks for
    _make_robust(path, threshold="")
    fed = load_federation(path)
    assert fed.threshold == robust_default_threshold(n) == (n - 1) // 2
    assert 2 * fed.threshold + 1 <= n


def test_robust_needs_three_sites(tmp_path: Path) -> None:
    init_federation(tmp_path, sites=2, federation_id=FED_ID)
    path = tmp_path / "federation.toml"
    _edit(path, "threshold = 2\n", "threshold = 3\n")
    _make_robust(path, threshold="")
    assert str(_error(path)) == (
        f"{path}: federation.protocol: robust needs at least 3 sites (1 ≤ t and 2t + 1 ≤ n), "
        "got n=2"
    )


def test_robust_optional_deadlines_take_their_defaults(robust_dir: Path) -> None:
    path = robust_dir / "federation.toml"
    for name, value in ROBUST_DEADLINES.items():
        _edit(path, f"{name} = {value}\n", "")
    fed = load_federation(path)
    assert fed.deadlines == Deadlines()
    defaults = {p.name.lower(): fed.deadlines.for_phase(p) for p in ROBUST_ACTIVE_PHASES}
    assert defaults == {
        **dict.fromkeys(ROBUST_DEADLINES, 30.0),
        "deal_input": 60.0,
        "output": 60.0,
        "confirm": 10.0,
    }


#: (text to replace, replacement, dotted key, message after the key) in a robust federation
ROBUST_ERRORS = [
    ("threshold = 1", "threshold = 0", "federation.threshold", "must be in [1, 1] for robust"),
    (
        "threshold = 1",
        "threshold = 2",
        "federation.threshold",
        "must be in [1, 1] for robust (1 ≤ t and 2t + 1 ≤ n=3), got 2",
    ),
    (
        "[robust]\nmax_norm = 1.5\n",
        "",
        "robust",
        'is required when protocol = "robust": a [robust] table with max_norm, '
        "the L2 bound on each site's update",
    ),
    ("max_norm = 1.5\n", "", "robust.max_norm", "is required"),
    *[
        (
            "max_norm = 1.5",
            f"max_norm = {bad}",
            "robust.max_norm",
            f"must be a positive finite number (the L2 bound on each site's update), got {shown}",
        )
        for bad, shown in [
            ("0", "0"),
            ("-1.5", "-1.5"),
            ("nan", "nan"),
            ("inf", "inf"),
            ('"1.5"', "'1.5'"),
            ("true", "True"),
        ]
    ],
    ("max_norm = 1.5\n", "max_norm = 1.5\nmin_norm = 0.1\n", "robust.min_norm", "unknown key"),
    (
        "confirm = 15.0\n",
        "confirm = 15.0\nmasked_input = 5.0\n",
        "deadlines.masked_input",
        "is a deadline of protocol secagg; this federation runs robust",
    ),
    ("verify = 7.0", "verify = -7.0", "deadlines.verify", "must be a positive number of seconds"),
    ("confirm = 15.0\n", "confirm = 15.0\nreveal = 1.0\n", "deadlines.reveal", "unknown key"),
]


@pytest.mark.parametrize(("old", "new", "key", "problem"), ROBUST_ERRORS, ids=lambda v: v)
def test_robust_federation_error_names_file_and_key(
    robust_dir: Path, old: str, new: str, key: str, problem: str
) -> None:
    path = robust_dir / "federation.toml"
    _edit(path, old, new)
    message = str(_error(path))
    assert message.startswith(f"{path}: {key}: ")
    assert problem in message


def test_robust_that_is_not_a_table(robust_dir: Path) -> None:
    path = robust_dir / "federation.toml"
    _edit(path, "[robust]\nmax_norm = 1.5\n", "")
    _edit(path, "[federation]\n", "robust = 1.5\n[federation]\n")
    assert str(_error(path)) == f"{path}: robust: must be a table, got 1.5"


def test_deadlines_of_the_two_protocols_never_collide() -> None:
    deadlines = Deadlines(advertise_keys=1.0, advertise=2.0, confirm_result=3.0, confirm=4.0)
    # equal as integers (both are phase 1), distinct deadlines: looked up by protocol and name
    assert int(Phase.ADVERTISE_KEYS) == int(RobustPhase.ADVERTISE)
    assert deadlines.for_phase(Phase.ADVERTISE_KEYS) == 1.0
    assert deadlines.for_phase(RobustPhase.ADVERTISE) == 2.0
    assert deadlines.for_phase(Phase.CONFIRM_RESULT) == 3.0
    assert deadlines.for_phase(RobustPhase.CONFIRM) == 4.0
    for phase in (RobustPhase.IDLE, RobustPhase.DONE, RobustPhase.ABORTED):
        with pytest.raises(ValueError, match=f"phase {phase.name} has no deadline"):
            deadlines.for_phase(phase)

    class Other(enum.IntEnum):
        ADVERTISE = 1

    with pytest.raises(ValueError, match="Other is not the Phase enum of a protocol"):
        deadlines.for_phase(Other.ADVERTISE)


def test_every_deadline_field_times_exactly_one_phase() -> None:
    timed = [p.name.lower() for p in Phase if p not in (Phase.IDLE, Phase.DONE, Phase.ABORTED)]
    timed += [p.name.lower() for p in ROBUST_ACTIVE_PHASES]
    assert sorted(timed) == sorted(Deadlines.__dataclass_fields__)


# --------------------------------------------------------------------------- federation.toml

#: (text to replace, replacement, dotted key, message after the key)
FEDERATION_ERRORS = [
    (
        "share_keys = 30.0",
        "share_keys = -1",
        "deadlines.share_keys",
        "must be a positive number of seconds, got -1",
    ),
    (
        "unmask = 30.0",
        "unmask = 0",
        "deadlines.unmask",
        "must be a positive number of seconds, got 0",
    ),
    (
        "masked_input = 60.0",
        "masked_input = nan",
        "deadlines.masked_input",
        "must be a positive number of seconds, got nan",
    ),
    (
        "confirm_result = 10.0",
        "confirm_result = inf",
        "deadlines.confirm_result",
        "must be a positive number of seconds, got inf",
    ),
    (
        "advertise_keys = 30.0",
        'advertise_keys = "30"',
        "deadlines.advertise_keys",
        "must be a positive number of seconds, got '30'",
    ),
    (
        "consistency_check = 30.0",
        "consistency_check = true",
        "deadlines.consistency_check",
        "must be a positive number of seconds, got True",
    ),
    ("threshold = 3", "threshold = 1", "federation.threshold", "must be in [2, n=3], got 1"),
    ("threshold = 3", "threshold = 4", "federation.threshold", "must be in [2, n=3], got 4"),
    ("threshold = 3", "threshold = 2.5", "federation.threshold", "must be an integer, got 2.5"),
    ("threshold = 3", "threshold = true", "federation.threshold", "must be an integer, got True"),
    (
        'id = "fed-test"',
        'id = "fed/test"',
        "federation.id",
        "must match [A-Za-z0-9._-]{1,64}, got 'fed/test'",
    ),
    (
        'id = "fed-test"',
        'id = "' + "f" * 65 + '"',
        "federation.id",
        "must match [A-Za-z0-9._-]{1,64}, got '" + "f" * 65 + "'",
    ),
    ('id = "fed-test"\n', "", "federation.id", "is required"),
    (
        'protocol = "secagg"',
        'protocol = "prio3"',
        "federation.protocol",
        "must be one of secagg, robust, got 'prio3'",
    ),
    (
        'protocol = "secagg"',
        'protocol = "robust"',  # threshold = 3 is a secagg T: robust needs 2t + 1 ≤ n
        "federation.threshold",
        "must be in [1, 1] for robust (1 ≤ t and 2t + 1 ≤ n=3), got 3",
    ),
    (
        "[limits]\n",
        "[robust]\nmax_norm = 1.0\n\n[limits]\n",
        "robust",
        'is only for protocol = "robust"; this federation runs secagg',
    ),
    (
        "unmask = 30.0\n",
        "unmask = 30.0\ndeal_input = 5.0\n",
        "deadlines.deal_input",
        "is a deadline of protocol robust; this federation runs secagg",
    ),
    ("unmask = 30.0\n", "unmask = 30.0\nunmasking = 5.0\n", "deadlines.unmasking", "unknown key"),
    ("port = 18883", "port = 0", "broker.port", "must be in [1, 65535], got 0"),
    ("port = 18883", "port = 65536", "broker.port", "must be in [1, 65535], got 65536"),
    ("port = 18883", 'port = "8883"', "broker.port", "must be an integer, got '8883'"),
    ('host = "127.0.0.1"\n', "", "broker.host", "is required"),
    ('host = "127.0.0.1"', 'host = "my host"', "broker.host", "must be a host name or IP address"),
    ("tls = true", 'tls = "yes"', "broker.tls", "must be true or false, got 'yes'"),
    ("tls = true", "tls = false", "broker.ca_file", "is set but tls = false"),
    ('ca_file = "broker/ca.crt"', 'ca_file = "broker/none.crt"', "broker.ca_file", "not found"),
    ("frac_bits = 20", "frac_bits = 53", "encoding.frac_bits", "must be in [0, 52], got 53"),
    ("frac_bits = 20", "frac_bits = -1", "encoding.frac_bits", "must be in [0, 52], got -1"),
    (
        "max_abs_value = 1.0",
        "max_abs_value = 0.0",
        "encoding.max_abs_value",
        "must be a positive finite number, got 0.0",
    ),
    (
        "max_abs_value = 1.0",
        "max_abs_value = -inf",
        "encoding.max_abs_value",
        "must be a positive finite number, got -inf",
    ),
    (
        "max_abs_value = 1.0",
        "max_abs_value = 1e10",
        "encoding.max_abs_value",
        "max_abs_value 10000000000.0 × 2^20",
    ),
    (
        "max_vector_length = 100000000",
        "max_vector_length = 0",
        "limits.max_vector_length",
        "must be in [1, 2147483648], got 0",
    ),
    (
        "max_vector_length = 100000000",
        "max_vector_length = 2147483649",
        "limits.max_vector_length",
        "must be in [1, 2147483648], got 2147483649",
    ),
    (
        "chunk_size = 1048576",
        "chunk_size = -5",
        "limits.chunk_size",
        "must be in [1, 267386880], got -5",
    ),
    ('name = "site-1"', 'name = "site-0"', "sites[1].name", "duplicate site name 'site-0'"),
    ('name = "site-2"', 'name = "site 2"', "sites[2].name", "must match [A-Za-z0-9._-]{1,64}"),
    ('name = "site-2"\n', "", "sites[2].name", "is required"),
    ("[broker]\n", "[broker]\ncolour = 1\n", "broker.colour", "unknown key"),
    ("[limits]\n", "[limits]\nmax_vector_lenght = 5\n", "limits.max_vector_lenght", "unknown key"),
    ("[federation]\n", "[federation]\nthreshhold = 2\n", "federation.threshhold", "unknown key"),
    ("[encoding]\n", "[encodings]\n", "encodings", "unknown key"),
    ('name = "site-0"\n', 'name = "site-0"\nrole = "leader"\n', "sites[0].role", "unknown key"),
]


@pytest.mark.parametrize(("old", "new", "key", "problem"), FEDERATION_ERRORS, ids=lambda v: v)
def test_federation_error_names_file_and_key(
    fed_dir: Path, old: str, new: str, key: str, problem: str
) -> None:
    path = fed_dir / "federation.toml"
    _edit(path, old, new)
    message = str(_error(path))
    assert message.startswith(f"{path}: {key}: ")
    assert problem in message


def test_federation_error_message_matches_documented_form(fed_dir: Path) -> None:
    path = fed_dir / "federation.toml"
    _edit(path, "share_keys = 30.0", "share_keys = -1")
    assert str(_error(path)) == (
        f"{path}: deadlines.share_keys: must be a positive number of seconds, got -1"
    )


def test_verify_key_errors(fed_dir: Path) -> None:
    path = fed_dir / "federation.toml"
    keys = [e.verify_key.hex() for e in load_federation(path).roster.entries]
    original = path.read_text()

    path.write_text(original.replace(keys[0], keys[0][:-2]))
    message = str(_error(path))
    assert message.startswith(f"{path}: sites[0].verify_key: must be 64 hex characters")

    path.write_text(original.replace(keys[1], "zz" + keys[1][2:]))
    assert str(_error(path)).startswith(f"{path}: sites[1].verify_key: must be 64 hex")

    path.write_text(original.replace(keys[2], keys[0]))
    assert str(_error(path)) == (
        f"{path}: sites[2].verify_key: same key as sites[0]; keys must be unique"
    )


def test_section_that_is_not_a_table(fed_dir: Path) -> None:
    path = fed_dir / "federation.toml"
    _edit(path, "[deadlines]  # seconds per phase\n", "[other]\n")
    _edit(path, "[federation]\n", "deadlines = 5\n[federation]\n")
    assert str(_error(path)) == f"{path}: deadlines: must be a table, got 5"


def test_roster_needs_two_sites(fed_dir: Path) -> None:
    path = fed_dir / "federation.toml"
    text = path.read_text()
    path.write_text(text[: text.index('[[sites]]\nname = "site-1"')])
    assert str(_error(path)) == f"{path}: sites: needs 2..1024 [[sites]] entries, got 1"
    path.write_text(text[: text.index("[[sites]]")])
    assert str(_error(path)) == f"{path}: sites: is required"


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "federation.toml"
    path.write_text("[federation\nid = 1\n")
    message = str(_error(path))
    assert message.startswith(f"{path}: invalid TOML: ")
    assert str(_error(tmp_path / "absent.toml")) == f"{tmp_path / 'absent.toml'}: file not found"


def test_relative_paths_are_relative_to_the_naming_file(
    fed_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(fed_dir / "sites")
    fed = load_federation(Path("../federation.toml"))
    assert fed.broker.ca_file == (fed_dir / "broker" / "ca.crt").resolve()
    site = load_site(Path("site-0.toml"))
    assert site.federation.broker.ca_file == fed.broker.ca_file
    assert math.isclose(site.federation.deadlines.masked_input, 60.0)


# --------------------------------------------------------------------------- site file


def test_site_name_not_in_roster(fed_dir: Path) -> None:
    site = fed_dir / "sites" / "site-0.toml"
    _edit(site, 'name = "site-0"', 'name = "site-9"')
    message = str(_error(site, site=True))
    assert message.startswith(f"{site}: name: no site named 'site-9' in the roster of ")
    assert message.endswith(str(fed_dir / "federation.toml"))


def test_signing_key_must_match_roster(fed_dir: Path) -> None:
    sites = fed_dir / "sites"
    (sites / "site-0.key").write_text((sites / "site-1.key").read_text())
    message = str(_error(sites / "site-0.toml", site=True))
    assert message.startswith(f"{sites / 'site-0.toml'}: signing_key_file: ")
    assert str(sites / "site-0.key") in message
    assert str(fed_dir / "federation.toml") in message
    assert "sites[0].verify_key" in message
    assert "does not match" in message


def test_federation_errors_surface_through_load_site(fed_dir: Path) -> None:
    _edit(fed_dir / "federation.toml", "unmask = 30.0", "unmask = -3.5")
    message = str(_error(fed_dir / "sites" / "site-1.toml", site=True))
    assert message == (
        f"{fed_dir / 'federation.toml'}: deadlines.unmask: "
        "must be a positive number of seconds, got -3.5"
    )


@posix_only
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o620, 0o602], ids=oct)
def test_key_file_accessible_by_others_is_refused(fed_dir: Path, mode: int) -> None:
    key = fed_dir / "sites" / "site-0.key"
    key.chmod(mode)
    message = str(_error(fed_dir / "sites" / "site-0.toml", site=True))
    assert message.startswith(f"{fed_dir / 'sites' / 'site-0.toml'}: signing_key_file: ")
    assert f"{key} has mode {mode:04o}" in message
    assert f"chmod 600 {key}" in message
    key.chmod(0o600)
    assert load_site(fed_dir / "sites" / "site-0.toml").name == "site-0"


@posix_only
def test_password_file_accessible_by_others_is_refused(fed_dir: Path) -> None:
    password = fed_dir / "sites" / "site-2.password"
    password.chmod(0o644)
    message = str(_error(fed_dir / "sites" / "site-2.toml", site=True))
    assert message.startswith(f"{fed_dir / 'sites' / 'site-2.toml'}: password_file: ")
    assert "mode 0644" in message
    assert password.read_text().strip() not in message


def test_malformed_key_file_is_not_echoed(fed_dir: Path) -> None:
    key = fed_dir / "sites" / "site-0.key"
    secret = key.read_text().strip()
    key.write_text(secret[:-1] + "g\n")
    message = str(_error(fed_dir / "sites" / "site-0.toml", site=True))
    assert "must hold 64 hex characters" in message
    assert secret[:-1] not in message
    assert secret[:8] not in message


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        (
            'signing_key_file = "site-0.key"',
            'signing_key_file = "nope.key"',
            "signing_key_file",
            "not found",
        ),
        (
            'password_file = "site-0.password"',
            'password_file = "nope"',
            "password_file",
            "not found",
        ),
        ('federation = "../federation.toml"', 'federation = "fed.toml"', "federation", "not found"),
        ('federation = "../federation.toml"\n', "", "federation", "is required"),
        (
            'audit_log = "site-0.audit.jsonl"',
            'audit_log = "logs/a.jsonl"',
            "audit_log",
            "not found",
        ),
        (
            'audit_log = "site-0.audit.jsonl"',
            "audit_log = 3",
            "audit_log",
            "must be a string, got 3",
        ),
        ('name = "site-0"', 'name = "site-0"\nindex = 0', "index", "unknown key"),
    ],
    ids=lambda v: v,
)
def test_site_error_names_file_and_key(
    fed_dir: Path, old: str, new: str, key: str, problem: str
) -> None:
    site = fed_dir / "sites" / "site-0.toml"
    _edit(site, old, new)
    message = str(_error(site, site=True))
    assert message.startswith(f"{site}: {key}: ")
    assert problem in message


def test_site_without_password_file_connects_without_credentials(fed_dir: Path) -> None:
    site_file = fed_dir / "sites" / "site-1.toml"
    _edit(site_file, 'password_file = "site-1.password"\n', "")
    site = load_site(site_file)
    assert (site.broker.username, site.broker.password) == (None, None)


def test_empty_password_file_is_refused(fed_dir: Path) -> None:
    (fed_dir / "sites" / "site-1.password").write_text("\n")
    message = str(_error(fed_dir / "sites" / "site-1.toml", site=True))
    assert (
        message == f"{fed_dir / 'sites' / 'site-1.toml'}: password_file: the password file is empty"
    )


def test_generated_secret_files_are_private(generated: Path) -> None:
    if os.name != "posix":
        pytest.skip("POSIX file modes")
    private = [
        "sites/site-0.key",
        "sites/site-2.password",
        "broker/ca.key",
        "broker/server.key",
        "broker/passwd",
        "broker/admin.password",
    ]
    for name in private:
        assert stat.S_IMODE((generated / name).stat().st_mode) == 0o600, name


# --------------------------------------------------------------------------- [dp]

_DP = (
    "[dp]\nnoise_multiplier = 1.1\nclip_norm = 0.5\ndelta = 1e-5\nepsilon = 8.0\n"
    'unit = "example"\nsampling_probability = 0.1\nnoise_sites = 2\n\n[limits]\n'
)


def test_dp_table_loads_and_is_optional(fed_dir: Path, generated: Path) -> None:
    assert load_federation(generated / "federation.toml").dp is None
    path = fed_dir / "federation.toml"
    _edit(path, "[limits]\n", _DP)
    settings = load_federation(path).dp
    assert settings == DpSettings(
        noise_multiplier=1.1,
        clip_norm=0.5,
        delta=1e-5,
        epsilon_budget=8.0,
        unit=Unit.EXAMPLE,
        sampling_probability=0.1,
        noise_sites=2,
    )
    assert settings is not None
    assert settings.mechanism is Mechanism.DISCRETE_GAUSSIAN


@pytest.mark.parametrize(
    ("old", "new", "key", "problem"),
    [
        ("noise_multiplier = 1.1\n", "", "dp.noise_multiplier", "required"),
        ("delta = 1e-5", "delta = 1.5", "dp.delta", "(0, 1)"),
        ("epsilon = 8.0", "epsilon = -1", "dp.epsilon", "positive"),
        ('unit = "example"', 'unit = "user"', "dp.unit", "site, example"),
        ("noise_sites = 2", "noise_sites = 4", "dp.noise_sites", "threshold=3"),
        ("sampling_probability = 0.1", "sampling_probability = 2.0", "dp.sampling_prob", "(0, 1]"),
        (
            "clip_norm = 0.5\n",
            'clip_norm = 0.5\nmechanism = "laplace"\n',
            "dp.mechanism",
            "skellam",
        ),
        ("clip_norm = 0.5\n", "clip_norm = 0.5\nextra = 1\n", "dp.extra", "unknown key"),
        (
            "clip_norm = 0.5\n",
            'clip_norm = 0.5\nmechanism = "skellam"\n',
            "dp.sampling_probability",
            "discrete Gaussian only",
        ),
    ],
)
def test_dp_table_rejects_bad_values(
    fed_dir: Path, old: str, new: str, key: str, problem: str
) -> None:
    path = fed_dir / "federation.toml"
    _edit(path, "[limits]\n", _DP)
    _edit(path, old, new)
    error = _error(path)
    assert key in str(error)
    assert problem in str(error)


def test_dp_is_refused_with_robust(fed_dir: Path) -> None:
    path = fed_dir / "federation.toml"
    _make_robust(path)
    _edit(path, "[limits]\n", _DP)
    assert "only available with protocol" in str(_error(path))


def test_init_writes_a_dp_table_that_reads_back(tmp_path: Path) -> None:
    settings = DpSettings(
        noise_multiplier=0.9,
        clip_norm=2.0,
        delta=1e-6,
        epsilon_budget=3.0,
        mechanism=Mechanism.SKELLAM,
        local=True,
        rotation=True,
    )
    path = init_federation(tmp_path, sites=4, dp=settings)
    assert load_federation(path).dp == settings
    with pytest.raises(ValueError, match="secagg only"):
        init_federation(tmp_path / "r", sites=3, protocol="robust", max_norm=1.0, dp=settings)
