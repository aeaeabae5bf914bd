"""``mpc-agg init``: create a federation — identities, roster, broker TLS, passwords, ACL.

Layout written into the target directory (DESIGN §1, §6)::

    federation.toml            shared by every site (roster, broker, deadlines, …)
    sites/site-K.toml          one site's config
    sites/site-K.key           its Ed25519 signing key, hex            (mode 0600)
    sites/site-K.password      its broker password                     (mode 0600)
    broker/ca.crt, ca.key      a self-signed EC P-256 CA               (ca.key 0600)
    broker/server.crt, .key    the broker's certificate, signed by it  (server.key 0600)
    broker/passwd              Mosquitto password file (PBKDF2-SHA512)  (mode 0600)
    broker/admin.password      the operators' ``admin`` account password (mode 0600)
    broker/acl                 Mosquitto ACL
    broker/mosquitto.conf      TLS listener, no anonymous access, absolute paths

Topic scheme the ACL enforces (:mod:`peers.transport`): a site publishes broadcasts on
``mpcagg/v1/{federation}/{round}/{site}``, private messages on
``mpcagg/v1/{federation}/{round}/{site}/{recipient}`` and its presence on
``mpcagg/v1/{federation}/presence/{site}``. The broker lets a site publish only where the
sender segment is its own MQTT username, which :func:`peers.config.load_site` sets to the
site's name; it lets a site read the federation's five-level topics (broadcasts and
presence) and, of the private messages, only those whose last segment is its own name.
Mosquitto grants any subscription and filters each delivery against the ACL, so a site
subscribing to ``…/#`` still receives no other site's private messages. Identity still
comes from the signature inside each envelope, never from the topic (DESIGN §3), and
private payloads are encrypted end to end: the ACL stops a site from crowding another's
topics and keeps other sites' ciphertexts (and their traffic pattern) away from it.

Nothing is overwritten: every file is created exclusively, and a directory that already
holds a ``federation.toml`` is refused. Secrets come from the OS CSPRNG and never appear
on a command line (passwords are hashed with ``mosquitto_passwd -U`` on a 0600 file).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import getpass
import hashlib
import ipaddress
import json
import math
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterable
from contextvars import ContextVar
from pathlib import Path
from typing import Final

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mpc_agg.crypto import SigningKey
from mpc_agg.dp import DpSettings
from mpc_agg.randomness import SystemRandomSource
from peers.config import (
    MQTT_VERSIONS,
    NAME_PATTERN,
    PROTOCOLS,
    ConfigError,
    Deadlines,
    deadline_keys,
    host_problem,
    load_federation,
)
from peers.transport import PREFIX, PRESENCE
from protocols.common import MAX_PEERS
from protocols.robust.params import default_threshold as robust_default_threshold
from protocols.secagg.machine import default_threshold as secagg_default_threshold

#: Username of the operators' read-only account (generated sites are called ``site-K``,
#: so it never clashes with a site).
ADMIN_USER: Final = "admin"
_CA_DAYS: Final = 3650
_SERVER_DAYS: Final = 825
#: Mosquitto 2's default password hash: ``$7$`` = PBKDF2-HMAC-SHA512, 101 iterations,
#: 12-byte salt (mosquitto_passwd.c). Used only when ``mosquitto_passwd`` is absent.
_PBKDF2_ITERATIONS: Final = 101
_PBKDF2_SALT_BYTES: Final = 12


def init_federation(
    directory: Path,
    *,
    sites: int,
    protocol: str = "secagg",
    broker_port: int = 8883,
    broker_host: str = "127.0.0.1",
    threshold: int | None = None,
    federation_id: str | None = None,
    mqtt_version: str = "5",
    max_norm: float | None = None,
    dp: DpSettings | None = None,
    max_abs_value: float = 1.0,
    reduce_scatter: bool = False,
) -> Path:
    """Create a federation of ``sites`` sites in ``directory``; return its federation.toml.

    ``broker_host`` is both the address the broker listens on and the name the sites
    connect to (it goes into the server certificate with ``localhost`` and
    ``127.0.0.1``). ``federation_id`` defaults to a fresh random ``fed-…`` id, so two
    federations on one broker never share topics. ``threshold`` is the protocol's (T for
    ``secagg``, t for ``robust``) and defaults to the protocol's default. ``max_norm``
    (the L2 bound on each site's update) is required with ``protocol="robust"`` and
    refused otherwise. ``dp`` writes a ``[dp]`` table (``secagg`` only); ``max_abs_value``
    is the encoding's bound on each entry of an update; ``reduce_scatter`` selects
    secagg's chunk-owner data path (secagg SPEC §6.7; not with ``dp``). Raises
    :class:`ConfigError` for a directory that already holds a federation, ``ValueError``
    for invalid arguments.
    """
    if not 2 <= sites <= MAX_PEERS:
        raise ValueError(f"sites must be in [2, {MAX_PEERS}], got {sites}")
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    threshold = _check_protocol(protocol, sites=sites, threshold=threshold, max_norm=max_norm)
    if dp is not None and protocol != "secagg":
        raise ValueError(
            f"differential privacy ([dp]) is available with secagg only, not {protocol}"
        )
    if reduce_scatter and (protocol != "secagg" or dp is not None):
        raise ValueError(
            "reduce_scatter is secagg's data path in the 32-bit ring: not with robust or [dp]"
        )
    if not 1 <= broker_port <= 65535:
        raise ValueError(f"broker_port must be in [1, 65535], got {broker_port}")
    problem = host_problem(broker_host)
    if problem:
        raise ValueError(f"broker_host {problem}")
    if mqtt_version not in MQTT_VERSIONS:
        raise ValueError(f"mqtt_version must be one of {', '.join(MQTT_VERSIONS)}")
    fed_id = federation_id if federation_id is not None else f"fed-{secrets.token_hex(4)}"
    if not NAME_PATTERN.fullmatch(fed_id):
        raise ValueError(f"federation_id must match {NAME_PATTERN.pattern}, got {fed_id!r}")

    directory = Path(directory).absolute()
    if "\n" in str(directory):
        raise ValueError("the directory path must not contain a newline")
    federation_file = directory / "federation.toml"
    if federation_file.exists():
        raise ConfigError(federation_file, None, "already exists; refusing to overwrite")
    list(_alt_names(broker_host))  # the certificate's name rules, before anything is written
    created: list[Path] = []
    token = _CREATED.set(created)
    try:
        return _init_files(
            directory,
            sites=sites,
            protocol=protocol,
            threshold=threshold,
            broker_host=broker_host,
            broker_port=broker_port,
            fed_id=fed_id,
            mqtt_version=mqtt_version,
            max_norm=max_norm,
            dp=dp,
            max_abs_value=max_abs_value,
            reduce_scatter=reduce_scatter,
        )
    except BaseException:
        # A failed init leaves nothing behind (so it can simply be run again): what it
        # created goes, newest first; files and folders that were there before stay.
        for path in reversed(created):
            with contextlib.suppress(OSError):
                path.rmdir() if path.is_dir() else path.unlink()
        raise
    finally:
        _CREATED.reset(token)


#: The files and folders the running ``init_federation`` created (for its rollback).
_CREATED: ContextVar[list[Path] | None] = ContextVar("_CREATED", default=None)


def _init_files(
    directory: Path,
    *,
    sites: int,
    protocol: str,
    threshold: int,
    broker_host: str,
    broker_port: int,
    fed_id: str,
    mqtt_version: str,
    max_norm: float | None,
    dp: DpSettings | None,
    max_abs_value: float,
    reduce_scatter: bool,
) -> Path:
    """The files of :func:`init_federation`, its arguments checked."""
    federation_file = directory / "federation.toml"
    site_dir, broker_dir = directory / "sites", directory / "broker"
    for folder in (directory, site_dir, broker_dir):
        missing = [p for p in (folder, *folder.parents) if not p.exists()]
        folder.mkdir(parents=True, exist_ok=True)
        _note_created(*reversed(missing))

    names = [f"site-{k}" for k in range(sites)]
    random_source = SystemRandomSource()
    verify_keys: list[str] = []
    passwords: dict[str, str] = {}
    for name in names:
        key = SigningKey.generate(random_source)
        verify_keys.append(key.public_bytes().hex())
        _write(site_dir / f"{name}.key", key.private_bytes().hex() + "\n", secret=True)
        passwords[name] = secrets.token_urlsafe(24)
        _write(site_dir / f"{name}.password", passwords[name] + "\n", secret=True)
        _write(site_dir / f"{name}.toml", _site_toml(name))
        # an empty audit log: from now on a missing one means a lost one (its round ids
        # and privacy ledger), which PeerNode.from_config refuses to start without
        _write(site_dir / f"{name}.audit.jsonl", "")
    passwords[ADMIN_USER] = secrets.token_urlsafe(24)
    _write(broker_dir / "admin.password", passwords[ADMIN_USER] + "\n", secret=True)

    _write_tls(broker_dir, broker_host)
    _write_password_file(broker_dir / "passwd", passwords)
    _write(broker_dir / "acl", _acl(fed_id, names))
    _write(broker_dir / "mosquitto.conf", _mosquitto_conf(broker_dir, broker_host, broker_port))
    # Written last: its presence marks a complete federation directory.
    _write(
        federation_file,
        _federation_toml(
            fed_id=fed_id,
            protocol=protocol,
            threshold=threshold,
            host=broker_host,
            port=broker_port,
            names=names,
            verify_keys=verify_keys,
            mqtt_version=mqtt_version,
            max_norm=max_norm,
            dp=dp,
            max_abs_value=max_abs_value,
            reduce_scatter=reduce_scatter,
        ),
    )
    load_federation(federation_file)  # what we wrote must load
    return federation_file


def _check_protocol(
    protocol: str, *, sites: int, threshold: int | None, max_norm: float | None
) -> int:
    """The threshold to write (the protocol's default when None); checks ``max_norm``."""
    if protocol != "robust":
        if max_norm is not None:
            raise ValueError(f"max_norm is only for protocol robust, not {protocol}")
        if threshold is None:
            return secagg_default_threshold(sites)
        if not 2 <= threshold <= sites:
            raise ValueError(f"threshold must be in [2, {sites}], got {threshold}")
        return threshold
    if max_norm is None:
        raise ValueError("protocol robust needs max_norm (the L2 bound on each site's update)")
    if isinstance(max_norm, bool) or not (math.isfinite(max_norm) and max_norm > 0):
        raise ValueError(f"max_norm must be a positive finite number, got {max_norm!r}")
    if sites < 3:
        raise ValueError(f"protocol robust needs at least 3 sites (2t + 1 ≤ n), got {sites}")
    if threshold is None:
        return robust_default_threshold(sites)
    if not 1 <= threshold <= (sites - 1) // 2:
        raise ValueError(
            f"threshold must be in [1, {(sites - 1) // 2}] for robust (2t + 1 ≤ n={sites}), "
            f"got {threshold}"
        )
    return threshold


def broker_command(directory: Path) -> list[str]:
    """The command line that starts the federation's Mosquitto broker."""
    conf = (Path(directory) / "broker" / "mosquitto.conf").absolute()
    return [find_program("mosquitto") or "mosquitto", "-c", str(conf)]


# --------------------------------------------------------------------------- files


def _note_created(*paths: Path) -> None:
    created = _CREATED.get()
    if created is not None:
        created.extend(paths)


def _write(path: Path, text: str, *, secret: bool = False) -> None:
    """Create ``path`` exclusively (never overwrite); secrets get mode 0600 from the start."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if secret else 0o644)
    _note_created(path)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        if secret:
            os.fchmod(handle.fileno(), 0o600)
        handle.write(text)


def _toml_string(value: str) -> str:
    # A JSON string with ensure_ascii is a valid TOML basic string.
    return json.dumps(value, ensure_ascii=True)


def _federation_toml(
    *,
    fed_id: str,
    protocol: str,
    threshold: int,
    host: str,
    port: int,
    names: list[str],
    verify_keys: list[str],
    mqtt_version: str,
    max_norm: float | None,
    dp: DpSettings | None = None,
    max_abs_value: float = 1.0,
    reduce_scatter: bool = False,
) -> str:
    if protocol == "secagg":
        deadlines = [
            "advertise_keys = 30.0",
            "share_keys = 30.0",
            "masked_input = 60.0",
            "consistency_check = 30.0",
            "unmask = 30.0",
            "confirm_result = 10.0",
        ]
    else:
        defaults = Deadlines()
        deadlines = [f"{key} = {getattr(defaults, key)!r}" for key in deadline_keys(protocol)]
    robust = []
    if max_norm is not None:  # repr of a float: a TOML float that reads back exactly
        norm = float(max_norm)
        robust = ["[robust]  # L2 bound on each site's update", f"max_norm = {norm!r}", ""]
    lines = [
        "# Shared by every site of the federation; generated by `mpc-agg init`.",
        "[federation]",
        f"id = {_toml_string(fed_id)}",
        f"protocol = {_toml_string(protocol)}",
        f"threshold = {threshold}",
        *(
            ["reduce_scatter = true  # chunk owners, verified sums (secagg SPEC §6.7)"]
            if reduce_scatter
            else []
        ),
        "",
        "[broker]",
        f"host = {_toml_string(host)}",
        f"port = {port}",
        "tls = true",
        'ca_file = "broker/ca.crt"',
        f"mqtt_version = {_toml_string(mqtt_version)}",
        "",
        "[deadlines]  # seconds per phase",
        *deadlines,
        "",
        "[encoding]",
        "frac_bits = 20",
        f"max_abs_value = {float(max_abs_value)!r}",
        "",
        *robust,
        *_dp_toml(dp),
        "[limits]",
        "max_vector_length = 100000000",
        "chunk_size = 1048576",
    ]
    for name, key in zip(names, verify_keys, strict=True):
        lines += ["", "[[sites]]", f"name = {_toml_string(name)}"]
        lines.append(f"verify_key = {_toml_string(key)}")
    return "\n".join(lines) + "\n"


def _dp_toml(dp: DpSettings | None) -> list[str]:
    """The ``[dp]`` table's lines (floats as repr: they read back exactly)."""
    if dp is None:
        return []
    lines = [
        "[dp]  # distributed differential privacy (mpc_agg/DP.md §5)",
        f"mechanism = {_toml_string(dp.mechanism.value)}",
        f"unit = {_toml_string(dp.unit.value)}",
        f"noise_multiplier = {float(dp.noise_multiplier)!r}",
        f"clip_norm = {float(dp.clip_norm)!r}",
        f"delta = {float(dp.delta)!r}",
    ]
    if dp.epsilon_budget is not None:
        lines.append(f"epsilon = {float(dp.epsilon_budget)!r}  # the federation's total budget")
    lines += [
        f"sampling_probability = {float(dp.sampling_probability)!r}",
        *([] if dp.noise_sites is None else [f"noise_sites = {dp.noise_sites}"]),
        f"local = {'true' if dp.local else 'false'}",
        f"rotation = {'true' if dp.rotation else 'false'}",
        "",
    ]
    return lines


def _site_toml(name: str) -> str:
    return "\n".join(
        [
            f"# Private to {name}; keep the .key and .password files secret.",
            'federation = "../federation.toml"',
            f"name = {_toml_string(name)}",
            f"signing_key_file = {_toml_string(name + '.key')}",
            f"password_file = {_toml_string(name + '.password')}",
            f"audit_log = {_toml_string(name + '.audit.jsonl')}",
            "",
        ]
    )


def _acl(fed_id: str, names: Iterable[str]) -> str:
    root = f"{PREFIX}/{fed_id}"
    lines = [
        "# Generated by `mpc-agg init`.",
        "",
        "# A site publishes only under its own sender id: %u is the MQTT username, which",
        "# for a site is its roster name. (Patterns apply to every user.)",
        f"pattern write {root}/+/%u",
        f"pattern write {root}/{PRESENCE}/%u",
        "# Private messages: {round}/{sender}/{recipient}, only as the sender.",
        f"pattern write {root}/+/%u/+",
        "",
        "# A site reads only its own inbox of private messages (last level = recipient).",
        f"pattern read {root}/+/+/%u",
        "",
        "# Operators: read-only access to everything.",
        f"user {ADMIN_USER}",
        "topic read #",
        "topic read $SYS/#",
        "",
        "# Every site reads the broadcasts and presence of the federation (five levels:",
        "# `+` is one level, so this matches no private message).",
    ]
    for name in names:
        lines += [f"user {name}", f"topic read {root}/+/+"]
    return "\n".join(lines) + "\n"


def _mosquitto_conf(broker_dir: Path, host: str, port: int) -> str:
    return "\n".join(
        [
            "# Generated by `mpc-agg init`: TLS only, one account per site, ACL per sender id.",
            "per_listener_settings false",
            "allow_anonymous false",
            f"password_file {broker_dir / 'passwd'}",
            f"acl_file {broker_dir / 'acl'}",
            "persistence false",
            "# A round is bursts of small messages that each wait for the previous ones: with",
            "# Nagle's algorithm a small packet waits for a delayed ACK, ≈ 40 ms per phase.",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "# Keep the identity of whoever starts the broker: the key and password files",
            "# are 0600. (Started as root, Mosquitto would otherwise switch to 'mosquitto'.)",
            f"user {_user_name()}",
            "",
            f"listener {port} {host}",
            f"cafile {broker_dir / 'ca.crt'}",
            f"certfile {broker_dir / 'server.crt'}",
            f"keyfile {broker_dir / 'server.key'}",
            "require_certificate false",
            "",
        ]
    )


# --------------------------------------------------------------------------- TLS


def _user_name() -> str:
    """Name of the account running ``init`` (which owns the broker's secret files)."""
    try:
        import pwd  # noqa: PLC0415 - POSIX only

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError, AttributeError):
        return getpass.getuser()


def _write_tls(broker_dir: Path, host: str) -> None:
    now = dt.datetime.now(dt.UTC)
    start = now - dt.timedelta(minutes=5)  # tolerate small clock skew between machines
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mpc-agg federation"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mpc-agg federation CA"),
        ]
    )
    ca_ski = x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=_CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ca_ski, critical=False)
        .sign(ca_key, hashes.SHA256())
    )

    server_key = ec.generate_private_key(ec.SECP256R1())
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(now + dt.timedelta(days=_SERVER_DAYS))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectAlternativeName(list(_alt_names(host))), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(server_key.public_key()), critical=False
        )
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )

    _write(broker_dir / "ca.crt", ca_cert.public_bytes(serialization.Encoding.PEM).decode())
    _write(broker_dir / "ca.key", _pem_private(ca_key), secret=True)
    _write(broker_dir / "server.crt", server_cert.public_bytes(serialization.Encoding.PEM).decode())
    _write(broker_dir / "server.key", _pem_private(server_key), secret=True)


def _alt_names(host: str) -> Iterable[x509.GeneralName]:
    """``localhost``, ``127.0.0.1`` and ``host`` (as an IP address when it is one)."""
    names: list[x509.GeneralName] = [
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
        x509.IPAddress(ipaddress.IPv6Address("::1")),
    ]
    try:
        extra: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        extra = x509.DNSName(host)
    if extra not in names:
        names.append(extra)
    return names


def _pem_private(key: ec.EllipticCurvePrivateKey) -> str:
    # Unencrypted: the broker must read server.key unattended. ca.key is only needed to
    # issue new certificates; keep it offline in production.
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


# --------------------------------------------------------------------------- passwords


def find_program(name: str) -> str | None:
    """``name`` on PATH, else in the sbin folders Debian and Homebrew install it to."""
    found = shutil.which(name)
    if found:
        return found
    for folder in ("/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"):
        candidate = Path(folder) / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    return None


def _write_password_file(path: Path, passwords: dict[str, str]) -> None:
    """Mosquitto password file for ``passwords`` (username → password), mode 0600.

    With ``mosquitto_passwd`` present: write ``user:password`` lines to a 0600 file and
    hash them in place with ``mosquitto_passwd -U`` (``-b`` would put each password on
    a command line, visible to every local user). Without it: the same ``$7$`` hash
    (PBKDF2-HMAC-SHA512) computed here, so ``init`` works on machines without Mosquitto.
    """
    tool = find_program("mosquitto_passwd")
    if tool is None:
        lines = [f"{user}:{_mosquitto_hash(password)}" for user, password in passwords.items()]
        _write(path, "\n".join(lines) + "\n", secret=True)
        return
    _write(path, "".join(f"{u}:{p}\n" for u, p in passwords.items()), secret=True)
    try:
        subprocess.run(  # noqa: S603 - fixed argv, no shell, no secret on it
            [tool, "-U", str(path)], check=True, capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.SubprocessError) as exc:
        path.unlink()  # never leave a plaintext password file behind
        detail = getattr(exc, "stderr", None) or str(exc)
        raise ConfigError(path, None, f"mosquitto_passwd -U failed: {detail.strip()}") from None
    os.chmod(path, 0o600)


def _mosquitto_hash(password: str) -> str:
    salt = secrets.token_bytes(_PBKDF2_SALT_BYTES)
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, _PBKDF2_ITERATIONS)
    b64 = base64.b64encode
    return f"$7${_PBKDF2_ITERATIONS}${b64(salt).decode()}${b64(digest).decode()}"
