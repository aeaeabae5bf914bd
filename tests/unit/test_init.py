"""``mpc-agg init`` (peers/init.py): files, certificates, ACL, password hashes, refusals."""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import math
import re
import tomllib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from peers import init as init_module
from peers.config import ConfigError, Deadlines, deadline_keys, load_federation
from peers.init import broker_command, init_federation
from peers.transport import message_topic, parse_topic, presence_topic


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("federation")
    init_federation(directory, sites=4, broker_port=18884, federation_id="fed-x", threshold=2)
    return directory


def test_layout_and_parameters(generated: Path) -> None:
    files = {p.relative_to(generated).as_posix() for p in generated.rglob("*") if p.is_file()}
    expected = {"federation.toml"}
    for k in range(4):
        expected |= {f"sites/site-{k}.{ext}" for ext in ("toml", "key", "password", "audit.jsonl")}
    expected |= {
        f"broker/{name}"
        for name in (
            "ca.crt",
            "ca.key",
            "server.crt",
            "server.key",
            "passwd",
            "acl",
            "mosquitto.conf",
            "admin.password",
        )
    }
    assert files == expected
    fed = load_federation(generated / "federation.toml")
    assert (fed.id, fed.threshold, fed.n, fed.broker.port) == ("fed-x", 2, 4, 18884)


def test_server_certificate_is_signed_by_the_ca_for_the_broker_host(generated: Path) -> None:
    ca = x509.load_pem_x509_certificate((generated / "broker" / "ca.crt").read_bytes())
    server = x509.load_pem_x509_certificate((generated / "broker" / "server.crt").read_bytes())
    server.verify_directly_issued_by(ca)
    ca.verify_directly_issued_by(ca)
    assert isinstance(ca.public_key(), ec.EllipticCurvePublicKey)
    assert ca.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert server.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert ipaddress.IPv4Address("127.0.0.1") in san.get_values_for_type(x509.IPAddress)
    eku = server.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_server_certificate_names_a_dns_broker_host(tmp_path: Path) -> None:
    init_federation(tmp_path, sites=2, broker_host="broker.example.org")
    server = x509.load_pem_x509_certificate((tmp_path / "broker" / "server.crt").read_bytes())
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost", "broker.example.org"]


def test_acl_lets_each_site_write_only_under_its_own_name(generated: Path) -> None:
    acl = (generated / "broker" / "acl").read_text().splitlines()
    rules = [line for line in acl if line and not line.startswith("#")]
    assert rules == [
        "pattern write mpcagg/v1/fed-x/+/%u",
        "pattern write mpcagg/v1/fed-x/presence/%u",
        "pattern write mpcagg/v1/fed-x/+/%u/+",
        "pattern read mpcagg/v1/fed-x/+/+/%u",
        "user admin",
        "topic read #",
        "topic read $SYS/#",
        *[r for k in range(4) for r in (f"user site-{k}", "topic read mpcagg/v1/fed-x/+/+")],
    ]
    # The transport's topics are the ones the patterns cover (sender in the fifth level,
    # the recipient of a private message in the sixth).
    assert message_topic("fed-x", 7, "site-1") == "mpcagg/v1/fed-x/7/site-1"
    assert presence_topic("fed-x", "site-1") == "mpcagg/v1/fed-x/presence/site-1"
    private = message_topic("fed-x", 7, "site-1", recipient="site-3")
    assert private == "mpcagg/v1/fed-x/7/site-1/site-3"
    parsed = parse_topic(message_topic("fed-x", 7, "site-1"))
    assert parsed is not None
    assert parsed.site == "site-1"
    parsed = parse_topic(private)
    assert parsed is not None
    assert (parsed.site, parsed.recipient) == ("site-1", "site-3")


def test_the_example_acl_is_what_init_writes() -> None:
    example = Path(__file__).resolve().parents[2] / "configs" / "example"
    # (not load_federation: the example ships without its CA certificate)
    federation = tomllib.loads((example / "federation.toml").read_text())
    names = [site["name"] for site in federation["sites"]]
    acl = init_module._acl(federation["federation"]["id"], names)
    assert (example / "broker" / "acl").read_text() == acl


def test_mosquitto_conf_uses_absolute_paths(generated: Path) -> None:
    conf = (generated / "broker" / "mosquitto.conf").read_text().splitlines()
    broker = generated / "broker"
    for line in (
        "per_listener_settings false",
        "allow_anonymous false",
        f"password_file {broker / 'passwd'}",
        f"acl_file {broker / 'acl'}",
        "listener 18884 127.0.0.1",
        f"cafile {broker / 'ca.crt'}",
        f"certfile {broker / 'server.crt'}",
        f"keyfile {broker / 'server.key'}",
        "require_certificate false",
        "persistence false",
        "log_dest stderr",
    ):
        assert line in conf
    assert broker_command(generated)[1:] == ["-c", str(broker / "mosquitto.conf")]
    assert Path(broker_command(generated)[0]).name == "mosquitto"


def _check_hash(entry: str, password: str) -> None:
    _, algorithm, iterations, salt, digest = entry.split("$")
    assert (algorithm, iterations) == ("7", "101")
    expected = hashlib.pbkdf2_hmac("sha512", password.encode(), base64.b64decode(salt), 101)
    assert base64.b64decode(digest) == expected


def test_password_file_holds_pbkdf2_hashes_of_every_account(generated: Path) -> None:
    entries = dict(
        line.split(":", 1) for line in (generated / "broker" / "passwd").read_text().splitlines()
    )
    assert set(entries) == {"site-0", "site-1", "site-2", "site-3", "admin"}
    for user, entry in entries.items():
        folder = "broker/admin" if user == "admin" else f"sites/{user}"
        password = (generated / f"{folder}.password").read_text().strip()
        assert password not in entry
        _check_hash(entry, password)


def test_python_hash_when_mosquitto_passwd_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(init_module, "find_program", lambda name: None)
    init_federation(tmp_path, sites=2)
    entries = dict(
        line.split(":", 1) for line in (tmp_path / "broker" / "passwd").read_text().splitlines()
    )
    _check_hash(entries["site-1"], (tmp_path / "sites" / "site-1.password").read_text().strip())
    _check_hash(entries["admin"], (tmp_path / "broker" / "admin.password").read_text().strip())


def test_refuses_an_existing_federation(generated: Path) -> None:
    before = (generated / "federation.toml").read_bytes()
    with pytest.raises(ConfigError, match=re.escape("federation.toml: already exists")):
        init_federation(generated, sites=3)
    assert (generated / "federation.toml").read_bytes() == before


def test_never_overwrites_an_existing_file(tmp_path: Path) -> None:
    (tmp_path / "sites").mkdir()
    (tmp_path / "sites" / "site-1.key").write_text("precious")
    with pytest.raises(FileExistsError):
        init_federation(tmp_path, sites=2)
    assert (tmp_path / "sites" / "site-1.key").read_text() == "precious"
    assert not (tmp_path / "federation.toml").exists()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sites": 1}, "sites must be in [2, 1024], got 1"),
        ({"sites": 3, "threshold": 4}, "threshold must be in [2, 3], got 4"),
        ({"sites": 3, "threshold": 1}, "threshold must be in [2, 3], got 1"),
        (
            {"sites": 3, "protocol": "prio3"},
            "protocol must be one of secagg, robust, got 'prio3'",
        ),
        ({"sites": 3, "protocol": "robust"}, "protocol robust needs max_norm"),
        ({"sites": 3, "max_norm": 1.0}, "max_norm is only for protocol robust, not secagg"),
        (
            {"sites": 2, "protocol": "robust", "max_norm": 1.0},
            "protocol robust needs at least 3 sites (2t + 1 ≤ n), got 2",
        ),
        (
            {"sites": 5, "protocol": "robust", "max_norm": 1.0, "threshold": 3},
            "threshold must be in [1, 2] for robust (2t + 1 ≤ n=5), got 3",
        ),
        (
            {"sites": 5, "protocol": "robust", "max_norm": 1.0, "threshold": 0},
            "threshold must be in [1, 2] for robust (2t + 1 ≤ n=5), got 0",
        ),
        *[
            (
                {"sites": 3, "protocol": "robust", "max_norm": bad},
                f"max_norm must be a positive finite number, got {bad!r}",
            )
            for bad in (0.0, -1.0, math.inf, math.nan, True)
        ],
        ({"sites": 3, "broker_port": 0}, "broker_port must be in [1, 65535], got 0"),
        ({"sites": 3, "federation_id": "a/b"}, "federation_id must match"),
    ],
)
def test_invalid_arguments(tmp_path: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        init_federation(tmp_path, **kwargs)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_robust_federation(tmp_path: Path) -> None:
    path = init_federation(
        tmp_path, sites=5, protocol="robust", max_norm=2.5, federation_id="fed-r", broker_port=1
    )
    fed = load_federation(path)
    assert (fed.protocol, fed.threshold, fed.max_norm, fed.n) == ("robust", 2, 2.5, 5)
    assert fed.deadlines == Deadlines()  # the robust defaults, written out
    toml = tomllib.loads(path.read_text())
    assert list(toml["deadlines"]) == list(deadline_keys("robust"))
    assert toml["robust"] == {"max_norm": 2.5}
    assert "robust" not in tomllib.loads(init_federation(tmp_path / "s", sites=3).read_text())


@pytest.mark.parametrize("max_norm", [1e-05, 0.1 + 0.2, 3, 1e16])
def test_robust_max_norm_is_written_exactly(tmp_path: Path, max_norm: float) -> None:
    path = init_federation(tmp_path, sites=3, protocol="robust", max_norm=max_norm, threshold=1)
    fed = load_federation(path)
    assert (fed.threshold, fed.max_norm) == (1, max_norm)
    assert isinstance(fed.max_norm, float)


def test_default_federation_ids_are_random(tmp_path: Path) -> None:
    first = load_federation(init_federation(tmp_path / "a", sites=2)).id
    second = load_federation(init_federation(tmp_path / "b", sites=2)).id
    assert first.startswith("fed-")
    assert first != second
