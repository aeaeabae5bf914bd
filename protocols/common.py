"""Types shared by every protocol: the roster, effects, and per-round context.

Effects are what a machine asks its runtime to do or tells it happened. Notifications
are past tense (``PeerExcluded``, ``AggregateReady``, ``RoundAborted``), requests are
imperative nouns (``Send``, ``Broadcast``). A remote peer's bad message is data: it
becomes ``MessageIgnored`` (unattributable: malformed, forged, replayed) or
``PeerExcluded`` (attributable: validly signed but wrong). API misuse raises.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from mpc_agg.codec import Writer
from mpc_agg.crypto import ED25519_PUBLIC_SIZE, VerifyKey, sha256
from mpc_agg.ring import RingVector

MAX_PEERS = 1024
MAX_NAME_LEN = 64


@dataclass(frozen=True, slots=True, kw_only=True)
class RosterEntry:
    """One site: a display name and its long-term Ed25519 public key."""

    name: str
    verify_key: bytes

    def __post_init__(self) -> None:
        if not self.name or len(self.name.encode()) > MAX_NAME_LEN:
            raise ValueError(f"site name must be 1..{MAX_NAME_LEN} bytes: {self.name!r}")
        if len(self.verify_key) != ED25519_PUBLIC_SIZE:
            raise ValueError(f"site {self.name!r}: verify key must be 32 bytes")


@dataclass(frozen=True, slots=True)
class Roster:
    """The ordered list of sites; a site's index is its peer id on the wire."""

    entries: tuple[RosterEntry, ...]
    _keys: tuple[VerifyKey, ...] = field(init=False, repr=False, compare=False)
    _digest: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not 2 <= len(self.entries) <= MAX_PEERS:
            raise ValueError(f"a roster needs 2..{MAX_PEERS} sites, got {len(self.entries)}")
        names = [e.name for e in self.entries]
        if len(set(names)) != len(names):
            raise ValueError("site names in a roster must be unique")
        keys = [e.verify_key for e in self.entries]
        if len(set(keys)) != len(keys):
            raise ValueError("two sites in the roster share a verify key")
        object.__setattr__(self, "_keys", tuple(VerifyKey(k) for k in keys))
        writer = Writer().raw(b"mpc-agg/roster/v1")

        def _entry(w: Writer, e: RosterEntry) -> None:
            w.text(e.name, MAX_NAME_LEN).fixed(e.verify_key, ED25519_PUBLIC_SIZE)

        writer.seq(self.entries, MAX_PEERS, _entry)
        object.__setattr__(self, "_digest", sha256(writer.getvalue()))

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def digest(self) -> bytes:
        """SHA-256 of the canonical roster encoding (pinned in every envelope)."""
        return self._digest

    def verify_key(self, index: int) -> VerifyKey:
        """The parsed verify key of site ``index``."""
        return self._keys[index]

    def index_of(self, name: str) -> int:
        """The peer id of the site called ``name``."""
        for i, entry in enumerate(self.entries):
            if entry.name == name:
                return i
        raise KeyError(f"no site named {name!r} in the roster")

    def name(self, index: int) -> str:
        """Display name of site ``index``."""
        return self.entries[index].name


# --------------------------------------------------------------------------- effects


class Effect:
    """Base class of everything a machine returns."""

    __slots__ = ()


@dataclass(frozen=True, slots=True)
class Broadcast(Effect):
    """Publish ``data`` (a sealed envelope) to every peer."""

    data: bytes = field(repr=False)
    phase: enum.IntEnum

    def __repr__(self) -> str:
        return f"Broadcast(phase={self.phase.name}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class Send(Effect):
    """Deliver ``data`` (a sealed envelope) to one peer."""

    recipient: int
    data: bytes = field(repr=False)
    phase: enum.IntEnum

    def __repr__(self) -> str:
        return f"Send(to={self.recipient}, phase={self.phase.name}, {len(self.data)} bytes)"


@dataclass(frozen=True, slots=True)
class PhaseStarted(Effect):
    """The machine entered ``phase``; the runtime should arm that phase's deadline."""

    phase: enum.IntEnum


@dataclass(frozen=True, slots=True)
class MessageIgnored(Effect):
    """An incoming message was dropped without blaming anyone (malformed, forged, late…)."""

    sender: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class PeerExcluded(Effect):
    """``peer`` provably deviated; it is excluded from this round at this machine."""

    peer: int
    reason: str
    phase: enum.IntEnum


@dataclass(frozen=True, slots=True, eq=False)
class AggregateReady(Effect):
    """The round finished: ``total`` is the ring sum of the inputs of ``included``."""

    total: RingVector = field(repr=False)
    included: tuple[int, ...]
    dropped: Mapping[int, str]
    excluded: Mapping[int, str]
    result_digest: bytes = field(repr=False)
    confirmed_by: tuple[int, ...]
    disagreeing: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class RoundAborted(Effect):
    """The round ended without a result; ``reason`` says why (no secret in it)."""

    reason: str
    phase: enum.IntEnum


def format_peers(peers: Sequence[int]) -> str:
    """Render a set of peer ids for a reason string."""
    return "{" + ", ".join(str(p) for p in sorted(peers)) + "}"


_CONTEXT = re.compile(r"x[0-9a-f]{16}")


def check_context(context: str) -> None:
    """Raise ``ValueError`` unless ``context`` is ``""`` or ``"x"`` and 16 hex digits.

    A round's context (secagg and robust SPEC §2.1) is appended to the protocol string
    bound into every envelope and key derivation: the runtime's digest of what else the
    sites must agree on (DP calibration, the caller's layout).
    """
    if context and not _CONTEXT.fullmatch(context):
        raise ValueError(f"a round context is 'x' and 16 hex digits, got {context!r}")
