"""Federation and site configuration: TOML files → validated, frozen dataclasses.

Two files (DESIGN §1, §6). ``federation.toml`` is shared by every site and fixes what all
peers must agree on: the federation id, the protocol and its threshold, the broker, the
phase deadlines, the fixed-point encoding, size limits, the roster (site names and
their long-term Ed25519 verify keys) and, for ``robust``, the ``[robust]`` table
(``max_norm``: the L2 bound on each site's update) and, optionally, ``[dp]`` (distributed
differential privacy: mechanism, noise multiplier, clip norm, δ and the ε budget; see
``mpc_agg/DP.md`` §5). A site file (``site-0.toml``) is private to one
site: which federation file to use, the site's name, and where its secrets and audit
log live.

Invariants:

- Every value is checked when loaded; nothing is clipped or defaulted silently. A bad
  value, a missing required key and an *unknown* key all raise :class:`ConfigError`,
  whose message names the file and the dotted key, e.g.
  ``federation.toml: deadlines.share_keys: must be a positive number of seconds, got -1``.
- Relative paths are relative to the directory of the file that names them; the
  dataclasses hold absolute paths.
- Secrets (the signing key, the broker password) are read from files that must not be
  accessible by group or others, are never echoed in an error message, and never appear
  in a ``repr``.
- A site's signing key must match the verify key the roster lists for that site.
- Settings of the other protocol are errors too: a ``[robust]`` table or a robust phase's
  deadline in a ``secagg`` federation (and the reverse) would silently do nothing.
"""

from __future__ import annotations

import enum
import ipaddress
import math
import os
import re
import ssl
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

from mpc_agg.crypto import SigningKey, VerifyKey
from mpc_agg.dp import DpSettings, Mechanism, Unit
from mpc_agg.errors import EncodingError, MpcAggError
from mpc_agg.fixedpoint import FixedPointCodec
from protocols.common import MAX_PEERS, Roster, RosterEntry
from protocols.robust.params import default_threshold as robust_default_threshold
from protocols.robust.phases import ACTIVE_PHASES as ROBUST_ACTIVE_PHASES
from protocols.robust.phases import Phase as RobustPhase
from protocols.secagg.machine import default_threshold as secagg_default_threshold
from protocols.secagg.messages import Phase as SecAggPhase

#: Federation ids and site names: they become MQTT topic segments and usernames, so no
#: ``/``, ``+``, ``#`` or whitespace.
NAME_PATTERN: Final = re.compile(r"[A-Za-z0-9._-]{1,64}")
#: Protocols a federation can name.
PROTOCOLS: Final = ("secagg", "robust")
#: Seconds per phase when ``[deadlines]`` leaves one out (unless :class:`Deadlines` says
#: otherwise for a phase).
DEFAULT_DEADLINE: Final = 30.0
DEFAULT_FRAC_BITS: Final = 20
DEFAULT_MAX_ABS_VALUE: Final = 1.0
DEFAULT_MAX_VECTOR_LENGTH: Final = 100_000_000
DEFAULT_CHUNK_SIZE: Final = 1 << 20
#: The secagg machine accepts vectors of at most 2^31 coordinates (SecAggParams).
MAX_VECTOR_LENGTH: Final = 1 << 31
#: MQTT's largest packet is 256 MiB − 1; leave room for the envelope and topic.
MAX_CHUNK_SIZE: Final = 255 * (1 << 20)
#: Key and password files are tiny; refuse anything larger than this before parsing.
_MAX_SECRET_FILE = 4096


class ConfigError(MpcAggError, ValueError):
    """A configuration file is missing, malformed, or holds an invalid value.

    ``file`` is the offending file, ``key`` the dotted key inside it (``None`` when the
    problem concerns the whole file).
    """

    def __init__(self, file: Path | str, key: str | None, problem: str) -> None:
        self.file = Path(file)
        self.key = key
        self.problem = problem
        shown = os.path.normpath(file)
        super().__init__(f"{shown}: {key}: {problem}" if key else f"{shown}: {problem}")


# --------------------------------------------------------------------------- dataclasses


MQTT_VERSIONS = ("5", "3.1.1")


@dataclass(frozen=True, slots=True, kw_only=True)
class BrokerConfig:
    """How to reach the MQTT broker (DESIGN §6).

    ``ca_file`` is the CA bundle that signs the broker's certificate (required with
    ``tls``, ``None`` without). ``username``/``password`` are ``None`` in a
    :class:`FederationConfig` and filled in a :class:`SiteConfig`. ``mqtt_version`` is
    ``"5"`` (default) or ``"3.1.1"`` for a broker that speaks only the older protocol
    (the demo's pure-Python fallback broker).
    """

    host: str
    port: int
    tls: bool
    ca_file: Path | None
    mqtt_version: str = "5"
    username: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True, kw_only=True)
class Deadlines:
    """Seconds each phase may last before the machine's ``deadline(phase)``.

    One field per phase that waits, for both protocols: ``secagg``'s phases
    (``advertise_keys`` … ``confirm_result``) and ``robust``'s (``advertise`` …
    ``confirm``); a federation's ``[deadlines]`` sets those of its own protocol.
    """

    # secagg (protocols.secagg.messages.Phase)
    advertise_keys: float = DEFAULT_DEADLINE
    share_keys: float = DEFAULT_DEADLINE
    masked_input: float = DEFAULT_DEADLINE
    chunk_sum: float = DEFAULT_DEADLINE
    consistency_check: float = DEFAULT_DEADLINE
    unmask: float = DEFAULT_DEADLINE
    confirm_result: float = DEFAULT_DEADLINE
    # robust (protocols.robust.phases.Phase); the phases moving vectors get longer
    advertise: float = DEFAULT_DEADLINE
    deal_input: float = 60.0
    wrap_challenge: float = DEFAULT_DEADLINE
    deal_proof: float = DEFAULT_DEADLINE
    query_challenge: float = DEFAULT_DEADLINE
    query_agree: float = DEFAULT_DEADLINE
    verify: float = DEFAULT_DEADLINE
    dispute: float = DEFAULT_DEADLINE
    output_agree: float = DEFAULT_DEADLINE
    output: float = 60.0
    output_challenge: float = DEFAULT_DEADLINE
    check_agree: float = DEFAULT_DEADLINE
    output_verify: float = DEFAULT_DEADLINE
    output_dispute: float = DEFAULT_DEADLINE
    confirm: float = 10.0

    def for_phase(self, phase: enum.IntEnum) -> float:
        """The deadline of ``phase`` (a ``secagg`` or ``robust`` ``Phase``) in seconds.

        Looked up by protocol and phase name, never by value (phase numbers of the two
        protocols overlap). Phases without a deadline raise ``ValueError``.
        """
        protocol = _PHASE_PROTOCOLS.get(type(phase))
        if protocol is None:
            raise ValueError(
                f"phase {phase.name} has no deadline: {type(phase).__qualname__} is not the "
                f"Phase enum of a protocol ({', '.join(PROTOCOLS)})"
            )
        name = _DEADLINE_FIELDS.get((protocol, phase.name))
        if name is None:
            raise ValueError(f"phase {phase.name} has no deadline")
        seconds: float = getattr(self, name)
        return seconds


#: The Phase enum of each protocol.
_PHASE_PROTOCOLS: Final[Mapping[type[enum.IntEnum], str]] = {
    SecAggPhase: "secagg",
    RobustPhase: "robust",
}
_SECAGG_UNTIMED = (SecAggPhase.IDLE, SecAggPhase.DONE, SecAggPhase.ABORTED)
#: (protocol, phase name) → the :class:`Deadlines` field (and ``[deadlines]`` key).
_DEADLINE_FIELDS: Final[Mapping[tuple[str, str], str]] = {
    **{("secagg", p.name): p.name.lower() for p in SecAggPhase if p not in _SECAGG_UNTIMED},
    **{("robust", p.name): p.name.lower() for p in ROBUST_ACTIVE_PHASES},
}
#: ``[deadlines]`` key → the protocol whose phase it times.
_DEADLINE_PROTOCOL: Final[Mapping[str, str]] = {
    name: protocol for (protocol, _), name in _DEADLINE_FIELDS.items()
}


def deadline_keys(protocol: str) -> tuple[str, ...]:
    """The ``[deadlines]`` keys of ``protocol``, in phase order."""
    return tuple(name for name, owner in _DEADLINE_PROTOCOL.items() if owner == protocol)


@dataclass(frozen=True, slots=True, kw_only=True)
class EncodingConfig:
    """Fixed-point encoding shared by all sites (DESIGN §4)."""

    frac_bits: int = DEFAULT_FRAC_BITS
    max_abs_value: float = DEFAULT_MAX_ABS_VALUE
    #: The ring of the sum, 32 or 64 bits; ``None``: 32 whenever the headroom bound
    #: n · (⌈max_abs_value·2^frac_bits⌉ + 1) fits it and no DP noise is added, else 64.
    ring_bits: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Limits:
    """Size limits: longest accepted update, MQTT chunk size in bytes, and per-sender bounds.

    ``messages_per_site``: messages accepted from one site in one round (``None``: the
    protocol's default, 24 for ``secagg`` and 48 for ``robust``); ``held_messages_per_site``:
    messages held from one site for each of the next rounds. Each bounds the memory and
    the CPU one sender can cost a site per round.
    """

    max_vector_length: int = DEFAULT_MAX_VECTOR_LENGTH
    chunk_size: int = DEFAULT_CHUNK_SIZE
    messages_per_site: int | None = None
    held_messages_per_site: int = 12


@dataclass(frozen=True, slots=True, kw_only=True)
class Hygiene:
    """Side-channel hygiene (``[hygiene]``): what the broker can learn from sizes and timing.

    ``pad_frames`` fills every frame to ``chunk_size`` (all frames on the wire have one
    size; costs up to a chunk per message), ``publish_jitter`` waits a random time up to
    that many seconds before each publish (costs latency), ``shuffle`` processes queued
    messages in random order.
    """

    pad_frames: bool = False
    publish_jitter: float = 0.0
    shuffle: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FederationConfig:
    """Everything the sites of one federation agree on (``federation.toml``).

    ``threshold`` is the protocol's: T for ``secagg`` (shares needed to recover), t for
    ``robust`` (colluding peers tolerated; 2t + 1 ≤ n). ``max_norm`` is ``robust``'s
    L2 bound on each site's update in float units (``[robust] max_norm``), ``None`` for
    ``secagg``.
    """

    id: str
    protocol: str
    threshold: int
    broker: BrokerConfig
    deadlines: Deadlines
    encoding: EncodingConfig
    limits: Limits
    roster: Roster
    path: Path
    max_norm: float | None = None
    dp: DpSettings | None = None
    """``[dp]``: distributed differential privacy, ``None`` when the table is absent."""
    hygiene: Hygiene = field(default_factory=Hygiene)
    """``[hygiene]``: padding, publish jitter and shuffled processing (all off by default)."""
    reduce_scatter: bool = False
    """``[federation] reduce_scatter``: secagg's chunk-owner data path (SPEC §6.7)."""

    @property
    def n(self) -> int:
        """Number of sites in the roster."""
        return len(self.roster)


@dataclass(frozen=True, slots=True, kw_only=True)
class SiteConfig:
    """One site's view: the federation plus its identity, credentials and audit log."""

    federation: FederationConfig
    name: str
    index: int
    signing_key: SigningKey = field(repr=False)
    broker: BrokerConfig
    audit_log: Path
    path: Path
    signing_key_file: Path | None = None
    """The key file (``None`` when built in code); a CLI output must never overwrite it."""
    password_file: Path | None = None


# --------------------------------------------------------------------------- reading


class _Table:
    """A TOML table being read: typed getters, and an error for every key left unread."""

    def __init__(self, file: Path, prefix: str, data: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.data = data
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str, problem: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), problem)

    def _get(self, name: str, *, required: bool) -> Any:
        self.seen.add(name)
        if name not in self.data:
            if required:
                raise self.error(name, "is required")
            return None
        return self.data[name]

    def string(
        self, name: str, *, default: str | None = None, pattern: re.Pattern[str] | None = None
    ) -> str:
        value = self._get(name, required=default is None)
        if value is None:
            assert default is not None
            return default
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {_show(value)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise self.error(name, f"must match {pattern.pattern}, got {value!r}")
        if pattern is None and not value.strip():
            raise self.error(name, "must not be empty")
        return value

    def optional_string(self, name: str) -> str | None:
        value = self._get(name, required=False)
        if value is None:
            return None
        if not isinstance(value, str) or not value.strip():
            raise self.error(name, f"must be a non-empty string, got {_show(value)}")
        return value

    def integer(self, name: str, *, low: int, high: int, default: int | None = None) -> int:
        value = self._get(name, required=default is None)
        if value is None:
            assert default is not None
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {_show(value)}")
        if not low <= value <= high:
            raise self.error(name, f"must be in [{low}, {high}], got {value}")
        return value

    def optional_integer(self, name: str) -> int | None:
        value = self._get(name, required=False)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            raise self.error(name, f"must be an integer, got {_show(value)}")
        return value

    def positive(self, name: str, *, what: str, default: float | None) -> float:
        """A positive finite number; required when ``default`` is None."""
        value = self._get(name, required=default is None)
        if value is None:
            assert default is not None
            return default
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
            or value <= 0
        ):
            raise self.error(name, f"must be a positive {what}, got {_show(value)}")
        return float(value)

    def optional_positive(self, name: str, *, what: str) -> float | None:
        """:meth:`positive`, or ``None`` when the key is absent."""
        if name not in self.data:
            self.seen.add(name)
            return None
        return self.positive(name, what=what, default=None)

    def optional_integer_in(self, name: str, *, low: int, high: int) -> int | None:
        """:meth:`integer`, or ``None`` when the key is absent."""
        if name not in self.data:
            self.seen.add(name)
            return None
        return self.integer(name, low=low, high=high)

    def boolean(self, name: str, *, default: bool) -> bool:
        value = self._get(name, required=False)
        if value is None:
            return default
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_show(value)}")
        return value

    def table(self, name: str, *, required: bool) -> _Table:
        value = self._get(name, required=required)
        if value is None:
            value = {}
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table, got {_show(value)}")
        return _Table(self.file, self.key(name), value)

    def tables(self, name: str) -> list[_Table]:
        value = self._get(name, required=True)
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(name, f"must be an array of tables ([[{name}]]), got {_show(value)}")
        return [_Table(self.file, f"{self.key(name)}[{i}]", v) for i, v in enumerate(value)]

    def finish(self) -> None:
        unknown = sorted(set(self.data) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _show(value: object) -> str:
    """A short rendering of a (non-secret) TOML value for an error message."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


#: A federation.toml of 1024 sites is about 150 kB; anything far larger is not one.
_MAX_CONFIG_FILE = 1 << 22


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            info = os.fstat(handle.fileno())
            if not stat.S_ISREG(info.st_mode):  # /dev/zero would be read forever
                raise ConfigError(path, None, "is not a regular file")
            if info.st_size > _MAX_CONFIG_FILE:
                raise ConfigError(path, None, f"is larger than {_MAX_CONFIG_FILE} bytes")
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(path, None, "file not found") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(path, None, f"invalid TOML: {exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(path, None, "invalid TOML: not UTF-8") from None


def _relative(base: Path, value: str) -> Path:
    """``value`` resolved against the directory of the file ``base`` that names it."""
    return (base.parent / Path(value).expanduser()).resolve()


def _read_secret(table: _Table, name: str, path: Path) -> str:
    """Text of a secret file whose mode grants nothing to group or others."""
    try:
        info = path.stat()
    except FileNotFoundError:
        raise table.error(name, f"file {os.path.normpath(path)} not found") from None
    except OSError as exc:
        raise table.error(name, f"cannot read {os.path.normpath(path)}: {exc.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        raise table.error(name, f"{os.path.normpath(path)} is not a regular file")
    mode = stat.S_IMODE(info.st_mode)
    if os.name == "posix" and mode & 0o077:
        raise table.error(
            name,
            f"{os.path.normpath(path)} has mode {mode:04o}; a secret file must not be "
            f"accessible by group or others (run: chmod 600 {os.path.normpath(path)})",
        )
    if info.st_size > _MAX_SECRET_FILE:
        raise table.error(name, f"{os.path.normpath(path)} is larger than {_MAX_SECRET_FILE} bytes")
    try:
        return path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        # The content is secret: say what is wrong, never what is there.
        raise table.error(name, f"{os.path.normpath(path)} is not readable ASCII text") from None


# --------------------------------------------------------------------------- federation


def host_problem(host: str) -> str:
    """Why ``host`` is not a host name or IP address a client can connect to (``""`` if it is).

    Printable, no spaces, quotes or ``#`` (``mosquitto.conf`` syntax), and IDNA-encodable
    (labels of 1..63 characters, 253 in all).
    """
    if not host or not host.isprintable() or any(c.isspace() or c in "\"'#" for c in host):
        return f"must be a host name or IP address, got {host!r}"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            encoded = host.encode("idna")
        except UnicodeError as exc:
            return f"is not a valid host name ({exc}): {host!r}"
        if len(encoded) > 253:
            return f"is longer than 253 characters: {host[:40]!r}…"
    return ""


def _broker(table: _Table) -> BrokerConfig:
    host = table.string("host")
    problem = host_problem(host)
    if problem:
        raise table.error("host", problem)
    port = table.integer("port", low=1, high=65535)
    tls = table.boolean("tls", default=True)
    ca_value = table.optional_string("ca_file")
    ca_file = None
    if ca_value is not None:
        if not tls:
            raise table.error("ca_file", "is set but tls = false; enable tls or remove ca_file")
        ca_file = _relative(table.file, ca_value)
        if not ca_file.is_file():
            raise table.error("ca_file", f"file {os.path.normpath(ca_file)} not found")
        try:  # what the transport will do: a file that is not a CA fails here, not mid-round
            ssl.create_default_context(cafile=str(ca_file))
        except (ssl.SSLError, OSError, ValueError) as exc:
            raise table.error(
                "ca_file", f"{os.path.normpath(ca_file)} holds no usable CA certificate ({exc})"
            ) from None
    elif tls:
        # Explicit even for a public CA (point it at the system bundle): the transport
        # enables TLS from this file, so a missing one must not mean "no TLS".
        raise table.error("ca_file", "is required when tls = true (the CA that signs the broker)")
    mqtt_version = table.string("mqtt_version", default="5")
    if mqtt_version not in MQTT_VERSIONS:
        raise table.error(
            "mqtt_version", f"must be one of {', '.join(MQTT_VERSIONS)}, got {mqtt_version!r}"
        )
    table.finish()
    return BrokerConfig(host=host, port=port, tls=tls, ca_file=ca_file, mqtt_version=mqtt_version)


def _deadlines(table: _Table, protocol: str) -> Deadlines:
    defaults = Deadlines()
    seconds: dict[str, float] = {}
    for name, owner in _DEADLINE_PROTOCOL.items():
        if owner == protocol:
            default = getattr(defaults, name)
            seconds[name] = table.positive(name, what="number of seconds", default=default)
        elif name in table.data:
            raise table.error(
                name, f"is a deadline of protocol {owner}; this federation runs {protocol}"
            )
    table.finish()
    return replace(defaults, **seconds)


def _threshold(fed: _Table, protocol: str, n: int) -> int:
    threshold = fed.optional_integer("threshold")
    if protocol == "robust":
        # t colluding peers tolerated, 2t + 1 live peers needed (SPEC §2.2)
        if n < 3:
            raise fed.error(
                "protocol", f"robust needs at least 3 sites (1 ≤ t and 2t + 1 ≤ n), got n={n}"
            )
        if threshold is None:
            return robust_default_threshold(n)
        if not 1 <= threshold <= (n - 1) // 2:
            raise fed.error(
                "threshold",
                f"must be in [1, {(n - 1) // 2}] for robust (1 ≤ t and 2t + 1 ≤ n={n}), "
                f"got {threshold}",
            )
        return threshold
    if threshold is None:
        return secagg_default_threshold(n)
    if not 2 <= threshold <= n:
        raise fed.error("threshold", f"must be in [2, n={n}], got {threshold}")
    return threshold


def _max_norm(root: _Table, protocol: str) -> float | None:
    """``[robust] max_norm``: required with ``robust``, and no ``[robust]`` table otherwise."""
    if protocol != "robust":
        if "robust" in root.data:
            raise root.error(
                "robust", f'is only for protocol = "robust"; this federation runs {protocol}'
            )
        return None
    if "robust" not in root.data:
        raise root.error(
            "robust",
            'is required when protocol = "robust": a [robust] table with max_norm, '
            "the L2 bound on each site's update",
        )
    table = root.table("robust", required=True)
    max_norm = table.positive(
        "max_norm", what="finite number (the L2 bound on each site's update)", default=None
    )
    table.finish()
    return max_norm


def _dp(root: _Table, protocol: str, threshold: int) -> DpSettings | None:
    """``[dp]`` (``mpc_agg/DP.md`` §5): optional; only with ``secagg``."""
    if "dp" not in root.data:
        return None
    table = root.table("dp", required=True)
    if protocol != "secagg":
        raise root.error(
            "dp",
            f'is only available with protocol = "secagg" (this federation runs {protocol}: '
            "its norm check would have to cover the noise, see mpc_agg/DP.md §6)",
        )
    mechanism = table.string("mechanism", default=Mechanism.DISCRETE_GAUSSIAN.value)
    if mechanism not in {m.value for m in Mechanism}:
        raise table.error(
            "mechanism",
            f"must be one of {', '.join(m.value for m in Mechanism)}, got {mechanism!r}",
        )
    noise_multiplier = table.positive(
        "noise_multiplier", what="number (noise std / L2 sensitivity)", default=None
    )
    clip_norm = table.positive("clip_norm", what="number (L2 clip of each update)", default=None)
    delta = table.positive("delta", what="number in (0, 1)", default=None)
    if not delta < 1:
        raise table.error("delta", f"must be in (0, 1), got {delta}")
    budget = table.optional_positive("epsilon", what="number (the total ε budget)")
    rate = table.positive("sampling_probability", what="number in (0, 1]", default=1.0)
    if rate > 1:
        raise table.error("sampling_probability", f"must be in (0, 1], got {rate}")
    local = table.boolean("local", default=False)
    rotation = table.boolean("rotation", default=False)
    noise_sites = table.optional_integer("noise_sites")
    if noise_sites is not None and not 1 <= noise_sites <= threshold:
        raise table.error(
            "noise_sites",
            f"must be in [1, threshold={threshold}] (the fewest honest sites whose noise the "
            f"guarantee relies on), got {noise_sites}",
        )
    unit = table.string("unit", default=Unit.SITE.value)
    if unit not in {u.value for u in Unit}:
        raise table.error(
            "unit", f"must be one of {', '.join(u.value for u in Unit)}, got {unit!r}"
        )
    table.finish()
    try:
        return DpSettings(
            noise_multiplier=noise_multiplier,
            clip_norm=clip_norm,
            delta=delta,
            epsilon_budget=budget,
            mechanism=Mechanism(mechanism),
            local=local,
            rotation=rotation,
            sampling_probability=rate,
            unit=Unit(unit),
            noise_sites=noise_sites,
        )
    except ValueError as exc:
        raise table.error("sampling_probability", str(exc)) from None


def _hygiene(table: _Table) -> Hygiene:
    jitter = table._get("publish_jitter", required=False)
    if jitter is None:
        jitter = 0.0
    elif (
        isinstance(jitter, bool)
        or not isinstance(jitter, int | float)
        or not (math.isfinite(jitter) and 0 <= jitter <= 60)
    ):
        raise table.error(
            "publish_jitter", f"must be a number of seconds in [0, 60], got {_show(jitter)}"
        )
    hygiene = Hygiene(
        pad_frames=table.boolean("pad_frames", default=False),
        publish_jitter=float(jitter),
        shuffle=table.boolean("shuffle", default=False),
    )
    table.finish()
    return hygiene


def _encoding(table: _Table, n: int) -> EncodingConfig:
    frac_bits = table.integer("frac_bits", low=0, high=52, default=DEFAULT_FRAC_BITS)
    max_abs = table.positive("max_abs_value", what="finite number", default=DEFAULT_MAX_ABS_VALUE)
    ring_bits = table.optional_integer_in("ring_bits", low=32, high=64)
    table.finish()
    if ring_bits not in (None, 32, 64):
        raise table.error("ring_bits", f"must be 32 or 64, got {ring_bits}")
    try:  # the codec's static headroom check: n · max|value| · 2^frac_bits must fit
        FixedPointCodec(
            frac_bits=frac_bits, n_peers=n, max_abs_value=max_abs, ring_bits=ring_bits or 64
        )
    except EncodingError as exc:
        raise table.error("ring_bits" if ring_bits else "max_abs_value", str(exc)) from None
    return EncodingConfig(frac_bits=frac_bits, max_abs_value=max_abs, ring_bits=ring_bits)


def _limits(table: _Table) -> Limits:
    limits = Limits(
        max_vector_length=table.integer(
            "max_vector_length", low=1, high=MAX_VECTOR_LENGTH, default=DEFAULT_MAX_VECTOR_LENGTH
        ),
        chunk_size=table.integer(
            "chunk_size", low=1, high=MAX_CHUNK_SIZE, default=DEFAULT_CHUNK_SIZE
        ),
        messages_per_site=table.optional_integer_in("messages_per_site", low=12, high=10_000),
        held_messages_per_site=table.integer(
            "held_messages_per_site", low=6, high=10_000, default=12
        ),
    )
    table.finish()
    return limits


def _roster(tables: list[_Table], root: _Table) -> Roster:
    if not 2 <= len(tables) <= MAX_PEERS:
        raise root.error("sites", f"needs 2..{MAX_PEERS} [[sites]] entries, got {len(tables)}")
    entries: list[RosterEntry] = []
    names: dict[str, int] = {}
    keys: dict[bytes, int] = {}
    for i, table in enumerate(tables):
        name = table.string("name", pattern=NAME_PATTERN)
        if name in names:
            raise table.error("name", f"duplicate site name {name!r} (also sites[{names[name]}])")
        hex_key = table.string("verify_key")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", hex_key):
            raise table.error(
                "verify_key",
                f"must be 64 hex characters (an Ed25519 public key), got {_show(hex_key)}",
            )
        raw = bytes.fromhex(hex_key)
        try:
            VerifyKey(raw)
        except MpcAggError as exc:
            raise table.error("verify_key", str(exc)) from None
        if raw in keys:
            raise table.error("verify_key", f"same key as sites[{keys[raw]}]; keys must be unique")
        table.finish()
        names[name], keys[raw] = i, i
        entries.append(RosterEntry(name=name, verify_key=raw))
    return Roster(tuple(entries))


def load_federation(path: Path | str) -> FederationConfig:
    """Read and validate ``federation.toml``; raise :class:`ConfigError` on any problem."""
    path = Path(path)
    root = _Table(path, "", _read_toml(path))
    # Read the roster first: n is needed to check the threshold and the encoding headroom.
    roster = _roster(root.tables("sites"), root)
    n = len(roster)
    fed = root.table("federation", required=True)
    fed_id = fed.string("id", pattern=NAME_PATTERN)
    protocol = fed.string("protocol", default="secagg")
    if protocol not in PROTOCOLS:
        raise fed.error("protocol", f"must be one of {', '.join(PROTOCOLS)}, got {protocol!r}")
    threshold = _threshold(fed, protocol, n)
    reduce_scatter = fed.boolean("reduce_scatter", default=False)
    fed.finish()
    broker = _broker(root.table("broker", required=True))
    deadlines = _deadlines(root.table("deadlines", required=False), protocol)
    encoding_table = root.table("encoding", required=False)
    encoding = _encoding(encoding_table, n)
    limits = _limits(root.table("limits", required=False))
    max_norm = _max_norm(root, protocol)
    dp = _dp(root, protocol, threshold)
    if encoding.ring_bits == 32 and (protocol != "secagg" or dp is not None):
        raise encoding_table.error(
            "ring_bits",
            "32 is for secagg without [dp] only (DP noise and robust's field need the "
            "64-bit ring); remove the key or set 64",
        )
    if reduce_scatter:
        _check_reduce_scatter(fed, protocol, encoding, dp is not None, n)
    hygiene = _hygiene(root.table("hygiene", required=False))
    root.finish()
    return FederationConfig(
        id=fed_id,
        protocol=protocol,
        threshold=threshold,
        broker=broker,
        deadlines=deadlines,
        encoding=encoding,
        limits=limits,
        roster=roster,
        path=path.absolute(),
        max_norm=max_norm,
        dp=dp,
        hygiene=hygiene,
        reduce_scatter=reduce_scatter,
    )


def _check_reduce_scatter(
    fed: _Table, protocol: str, encoding: EncodingConfig, dp: bool, n: int
) -> None:
    """Reduce-scatter is secagg's data path in the 32-bit ring (SPEC §6.7)."""
    if protocol != "secagg" or dp or encoding.ring_bits == 64:
        raise fed.error(
            "reduce_scatter",
            "is for secagg in the 32-bit ring: not with robust, [dp] or ring_bits = 64",
        )
    try:
        FixedPointCodec(
            frac_bits=encoding.frac_bits,
            n_peers=n,
            max_abs_value=encoding.max_abs_value,
            ring_bits=32,
        )
    except EncodingError as exc:
        raise fed.error(
            "reduce_scatter", f"needs the 32-bit ring, which is too small: {exc}"
        ) from None


# --------------------------------------------------------------------------- site


def _signing_key(table: _Table, key_file: Path) -> SigningKey:
    text = _read_secret(table, "signing_key_file", key_file)
    if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        raise table.error(
            "signing_key_file",
            f"{os.path.normpath(key_file)} must hold 64 hex characters "
            "(a 32-byte Ed25519 private key)",
        )
    return SigningKey(bytes.fromhex(text))


def load_signing_key(path: Path | str) -> SigningKey:
    """A site's Ed25519 key file as ``mpc-agg init`` writes it: 64 hex characters, mode 0600.

    For a key outside a site file (``mpc-agg audit rotate --previous-key``); raises
    :class:`ConfigError` as a site file's ``signing_key_file`` would.
    """
    path = Path(path)
    return _signing_key(_Table(path, "", {}), path)


def load_site(path: Path | str) -> SiteConfig:
    """Read a site file and the federation file it names; validate both and their match.

    ``password_file`` is optional: without it the site connects without credentials
    (only for a broker that allows anonymous clients, e.g. a local demo).
    """
    path = Path(path)
    site = _Table(path, "", _read_toml(path))
    federation_path = _relative(path, site.string("federation"))
    name = site.string("name", pattern=NAME_PATTERN)
    key_file = _relative(path, site.string("signing_key_file"))
    password_value = site.optional_string("password_file")
    audit_log = _relative(path, site.string("audit_log", default=f"{name}.audit.jsonl"))
    site.finish()

    if not federation_path.is_file():
        raise site.error("federation", f"file {os.path.normpath(federation_path)} not found")
    federation = load_federation(federation_path)
    try:
        index = federation.roster.index_of(name)
    except KeyError:
        raise site.error(
            "name", f"no site named {name!r} in the roster of {os.path.normpath(federation_path)}"
        ) from None
    signing_key = _signing_key(site, key_file)
    if signing_key.public_bytes() != federation.roster.entries[index].verify_key:
        raise site.error(
            "signing_key_file",
            f"the key in {os.path.normpath(key_file)} does not match the verify_key of site "
            f"{name!r} (sites[{index}].verify_key) in {os.path.normpath(federation_path)}",
        )
    password = None
    password_file = None if password_value is None else _relative(path, password_value)
    if password_file is not None:
        password = _read_secret(site, "password_file", password_file)
        if not password:
            raise site.error("password_file", "the password file is empty")
    if not audit_log.parent.is_dir():
        raise site.error("audit_log", f"directory {os.path.normpath(audit_log.parent)} not found")
    if audit_log.exists() and not audit_log.is_file():
        raise site.error("audit_log", f"{os.path.normpath(audit_log)} is not a regular file")
    broker = replace(
        federation.broker,
        username=name if password is not None else None,
        password=password,
    )
    return SiteConfig(
        federation=federation,
        name=name,
        index=index,
        signing_key=signing_key,
        broker=broker,
        audit_log=audit_log,
        path=path.absolute(),
        signing_key_file=key_file,
        password_file=password_file,
    )
