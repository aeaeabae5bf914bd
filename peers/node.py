"""``PeerNode``: one site's runtime — a transport, protocol machines, deadlines, results.

``await node.aggregate(update)`` encodes a float array (any shape) to fixed point, runs one
``secagg`` round with the other sites over the node's transport, and returns the decoded
sum of the included sites' updates with everything a site needs to audit the round. The
machine does the protocol (sans-I/O); this class only moves bytes, arms one timer per
phase and turns effects into a result.

Messages are routed by the round number in their topic: the current round's go to its
machine, messages for a later round are held (bounded) until that round starts — a fast
site may begin round r+1 before a slow one has finished round r — and older ones are
dropped. The hold is bounded per roster site (the sender in the topic, which the broker's
ACL enforces): at most ``_EARLY_ROUNDS`` future rounds of ``_EARLY_LIMIT_PER_PEER``
messages each, so one site flooding future rounds cannot push out another site's messages;
topics of sites outside the roster are never held. Private messages (six-level topics
addressed to this site) are routed exactly like broadcasts, with the topic's sender
segment as the claimed sender; a private message addressed to another site is ignored.

Backpressure: each round accepts at most :attr:`RoundPlan.message_budget` messages and
:attr:`RoundPlan.byte_budget` bytes per sending site, broadcasts and private messages
together (all topics outside the roster share one allowance); the protocol sets both when
the round is planned (``secagg``: ``_ROUND_LIMIT_PER_PEER`` messages and
``_byte_budget(...)`` bytes: two masked inputs, an Unmask and 1 MiB); the excess is dropped
and counted in ``ignored`` as ``over the per-site limit``. A site flooding its own topics
therefore holds a bounded amount of memory and queues at most that many messages ahead of
the others'.

Text another party chose (protocol reasons quoting a payload) goes into log lines and
``ignored`` keys only through :func:`~peers.transport.printable`, and ``ignored`` keeps at
most ``_IGNORED_REASONS`` distinct reasons (the rest are counted as ``other``).

Protocols: :meth:`PeerNode._plan_round` is the one place that knows which protocol runs;
it builds the round's machine and budgets as a :class:`RoundPlan`. The machine may return
``Broadcast`` effects (published on the site's broadcast topic) and ``Send`` effects
(published on the recipient's private topic, which the broker lets only the recipient read).

Presence: only a site's ``online`` published while we were subscribed counts in
:meth:`PeerNode.wait_for_peers` (a retained one may come from a dead process; live peers
announce themselves again when we come online), and an ``offline`` of an earlier session of
a site whose newer session is online (its late Will) is ignored.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
import json
import logging
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import Any, Protocol, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from mpc_agg import dp
from mpc_agg.crypto import SigningKey
from mpc_agg.errors import EncodingError, MpcAggError, ProtocolMisuseError
from mpc_agg.fixedpoint import FixedPointCodec, sum_of_squares
from mpc_agg.normproof import max_norm_bound
from mpc_agg.randomness import RandomSource, SystemRandomSource
from mpc_agg.ring import RingVector
from peers.audit import AuditLog
from peers.config import DEFAULT_FRAC_BITS, ConfigError, SiteConfig
from peers.mqtt import MqttTransport
from peers.transport import (
    ONLINE,
    Delivery,
    Transport,
    TransportError,
    federation_filter,
    inbox_filter,
    message_topic,
    parse_topic,
    presence_topic,
    printable,
    split_presence,
)
from protocols.common import (
    AggregateReady,
    Broadcast,
    Effect,
    MessageIgnored,
    PeerExcluded,
    PhaseStarted,
    Roster,
    RoundAborted,
    Send,
)
from protocols.robust.machine import RobustMachine
from protocols.robust.params import NORM_TOLERANCE, RobustParams, grid_norm_bound
from protocols.robust.params import PROTOCOL as ROBUST_PROTOCOL
from protocols.robust.params import default_threshold as robust_threshold
from protocols.secagg.machine import PROTOCOL, SecAggMachine, SecAggParams, default_threshold

log = logging.getLogger(__name__)

#: Messages held per site and future round (a round needs about 6 per peer).
_EARLY_LIMIT_PER_PEER = 12
#: Future rounds held per site (the lowest round ids win).
_EARLY_ROUNDS = 2
#: Messages accepted per site and round (a round needs about 6; the rest: QoS 1 duplicates).
_ROUND_LIMIT_PER_PEER = 24
#: The ``ignored`` key of messages dropped over a per-site limit.
OVER_LIMIT = "over the per-site limit"
#: Distinct reasons kept in ``ignored``; the rest are counted under ``other``.
_IGNORED_REASONS = 16
#: Protocols PeerNode can run (``robust`` is configurable but not wired in yet).
RUNTIME_PROTOCOLS = ("secagg", "robust")
#: Messages accepted per site and round in ``robust`` (14 kinds, QoS 1 duplicates).
_ROBUST_MESSAGES_PER_PEER = 48
#: Randomness for jitter and shuffling (the OS CSPRNG: an observer must not predict them).
_SYSTEM_RANDOM = random.SystemRandom()
#: Phase names (every protocol's ``Phase`` enum has them) that arm no deadline.
_UNTIMED_PHASES = frozenset({"IDLE", "DONE", "ABORTED"})


def site_transport(site: SiteConfig) -> MqttTransport:
    """The MQTT transport of ``site`` as its config describes it.

    Broker, TLS, account, chunking and limits; one client id per federation, site and
    process.
    """
    federation = site.federation
    broker = site.broker
    # The largest message: a masked input (secagg); a dispute revealing up to n share
    # vectors (robust, only when a peer deviates).
    largest = (federation.n + 2) if federation.protocol == "robust" else 1
    return MqttTransport(
        host=broker.host,
        port=broker.port,
        client_id=f"{federation.id}-{site.name}-{os.getpid()}",
        username=broker.username,
        password=broker.password,
        ca_file=broker.ca_file if broker.tls else None,
        presence_topic=presence_topic(federation.id, site.name),
        chunk_size=federation.limits.chunk_size,
        max_message_bytes=largest * 8 * federation.limits.max_vector_length + (1 << 22),
        # every other site's masked input may be in flight at once (4 per site)
        max_pending_total=max(64, 4 * federation.n),
        mqtt_version=broker.mqtt_version,
        pad_frames=federation.hygiene.pad_frames,
        # every message the node accepts is a signed envelope whose signature covers its
        # payload's digest (SPEC §4.3): reassembly need not hash it a second time
        verify_digest=False,
    )


def _privacy_history(audit: AuditLog, federation: str) -> tuple[dp.RoundCost, ...]:
    """The privacy cost of every round this site's audit log records for ``federation``.

    A round leaves a ``charged`` record before its first message and an outcome record
    at its end, both with the cost: each round id counts once, so a round whose process
    died after sending is still counted (``mpc_agg/DP.md`` §4.2). A malformed ``privacy``
    field stops the node rather than undercount.
    """
    costs: dict[object, dp.RoundCost] = {}
    for record in audit.records(federation):
        if "privacy" not in record:
            continue
        privacy = record["privacy"]
        cost = privacy.get("cost") if isinstance(privacy, dict) else None
        if not isinstance(cost, dict):
            raise ConfigError(audit.path, "privacy.cost", "malformed record in the audit log")
        round_id = record.get("round")
        if type(round_id) is not int:
            raise ConfigError(audit.path, "round", "a privacy record without its round id")
        try:
            costs[round_id] = dp.RoundCost.from_json(cost)
        except ValueError as exc:
            raise ConfigError(audit.path, "privacy.cost", str(exc)) from None
    return tuple(costs.values())


def _privacy_record(dp_round: dp.DpRound, report: PrivacyReport) -> dict[str, object]:
    """The audit log's ``privacy`` field: parameters, the round's cost and ε spent."""
    return {
        **dp_round.describe(),
        "epsilon_budget": report.epsilon_budget,
        "epsilon_round": report.epsilon_round,
        "epsilon_spent": report.epsilon_spent,
        # not ``clipped``: whether ‖x‖ > clip_norm is a noise-free bit of the update
        "cost": dp_round.cost.to_json(),
    }


def _byte_budget(vector_length: int, ring_bits: int, n: int) -> int:
    """Bytes accepted per site and round.

    Two masked inputs (4 or 8 bytes an entry), an n × n Unmask (48·n², as secagg's
    max_payload) and 1 MiB.
    """
    return 2 * (ring_bits // 8) * vector_length + 48 * n * n + (1 << 20)


async def _settle(tasks: set[asyncio.Future[None]], *, wait: bool) -> None:
    """Drop finished publications from ``tasks``, raising the first failure.

    With ``wait``, first wait for all of them.
    """
    if wait and tasks:
        await asyncio.wait(tasks)
    for task in [t for t in tasks if t.done()]:
        tasks.discard(task)
        task.result()


def _note_ignored(ignored: Counter[str], reason: str, count: int = 1) -> None:
    """Count ``reason`` (up to its first colon, escaped, capped) in a bounded counter."""
    key = printable(reason.partition(":")[0], 80)
    if key not in ignored and len(ignored) >= _IGNORED_REASONS:
        key = "other"
    ignored[key] += count


#: The largest round-id difference the abort message quotes as a drift between sites.
_DRIFT_WINDOW = 1000


class RoundAbortedError(MpcAggError):
    """The round ended without a result; ``reason`` says why in one line."""

    def __init__(self, reason: str, *, round_id: int) -> None:
        super().__init__(f"round {round_id} aborted: {reason}")
        self.reason = reason
        self.round_id = round_id


@dataclass(frozen=True, slots=True, kw_only=True)
class AggregateResult:
    """What one round produced at this site."""

    total: NDArray[np.float64] = field(repr=False)
    """Sum of the included sites' updates, decoded, in the update's shape."""
    count: int
    included: tuple[str, ...]
    dropped: Mapping[str, str]
    excluded: Mapping[str, str]
    protocol: str
    round_id: int
    result_digest: str
    confirmed_by: tuple[str, ...]
    timings: Mapping[str, float]
    bytes_in: int
    bytes_out: int
    ignored: Mapping[str, int]
    privacy: PrivacyReport | None = None
    """The round's differential privacy (``None`` without ``[dp]``)."""

    @property
    def mean(self) -> NDArray[np.float64]:
        """``total / count``: the average update of the included sites."""
        return self.total / self.count


@dataclass(frozen=True, slots=True, kw_only=True)
class PrivacyReport:
    """What a round spent (``mpc_agg/DP.md`` §4): this site's ledger after the round."""

    mechanism: str
    noise_multiplier: float
    clip_norm: float
    delta: float
    epsilon_round: float
    """ε(δ) of this round alone."""
    epsilon_spent: float
    """ε(δ) of every round this site has taken part in, this one included."""
    epsilon_budget: float | None
    clipped: bool
    """This site's update was longer than ``clip_norm`` and was scaled down to it."""
    min_sites: int
    """The fewest sites whose noise the sum is calibrated to carry (1: local DP)."""


class RoundMachine(Protocol):
    """What PeerNode drives: one round's sans-I/O protocol machine (``secagg``, ``robust``).

    ``phase`` in :meth:`deadline` is the machine's own ``Phase`` member, exactly as its
    ``PhaseStarted`` effect reported it.
    """

    def begin(self, update: RingVector) -> list[Effect]:
        """Start the round with this site's encoded update."""
        ...

    def receive(self, sender: int | None, data: bytes | memoryview) -> list[Effect]:
        """One incoming message; ``sender`` is the topic's (untrusted) claim."""
        ...

    def deadline(self, phase: Any) -> list[Effect]:
        """The deadline of ``phase`` passed."""
        ...


@dataclass(frozen=True, slots=True, kw_only=True)
class RoundPlan:
    """How one round runs: the protocol's machine and its per-sender budgets.

    Built by :meth:`PeerNode._plan_round`, the one place that depends on the protocol.
    ``byte_budget`` and ``message_budget`` bound what this site accepts from one sending
    site in the round, broadcasts and private messages together (``robust`` would pass
    ``RobustParams.max_bytes_per_sender``).
    """

    protocol: str
    """Protocol and version, e.g. ``secagg/1`` (result and audit log)."""
    machine: RoundMachine
    threshold: int
    vector_length: int
    byte_budget: int
    message_budget: int = _ROUND_LIMIT_PER_PEER
    codec: FixedPointCodec
    """The round's fixed-point encoding (``robust`` may lower ``frac_bits`` to fit B)."""
    parameters: Mapping[str, object] = field(default_factory=dict)
    """Protocol parameters beyond n, t and d, for the audit log."""
    privacy: Mapping[str, object] | None = None
    """The round's DP parameters and ε spent, for the audit log (``None`` without DP)."""


@dataclass(slots=True)
class _Round:
    round_id: int
    machine: RoundMachine
    byte_limit: int
    message_limit: int = _ROUND_LIMIT_PER_PEER
    inbox: asyncio.Queue[tuple[int | None, bytes | memoryview]] = field(
        default_factory=asyncio.Queue
    )
    deadline_at: float | None = None
    deadline_phase: enum.IntEnum | None = None
    ignored: Counter[str] = field(default_factory=Counter)
    # accepted messages and bytes per claimed sender (None: topics outside the roster)
    received: Counter[int | None] = field(default_factory=Counter)
    received_bytes: Counter[int | None] = field(default_factory=Counter)
    flooding: set[int | None] = field(default_factory=set)
    shuffled: list[tuple[int | None, bytes | memoryview]] = field(default_factory=list)
    # the first context mismatch (protocol, ring, length, data path, round context such as
    # the [dp] table or the caller's layout, roster), for the abort
    mismatch: str | None = None
    # the encoded update until the machine has taken its own copy (then freed: d = 10^8)
    update: NDArray[np.uint64] | None = None
    # publications in flight: started in the machine's order, awaited together, so a phase
    # with n − 1 private messages costs one broker round trip, not n − 1
    publishing: set[asyncio.Future[None]] = field(default_factory=set)
    last_broadcast: asyncio.Future[None] | None = None


@dataclass(slots=True)
class _Held:
    """Messages held for one future round from one site (bounded in count and bytes)."""

    #: (arrival, message)
    messages: list[tuple[int, bytes | memoryview]] = field(default_factory=list)
    size: int = 0
    dropped: int = 0

    def __len__(self) -> int:
        return len(self.messages)


def _round_context(dp_round: dp.DpRound | None, caller: bytes | None, settings: bytes) -> str:
    """The round's context (SPEC §2.1): ``""`` or a digest every site must share.

    It covers the DP calibration (DP.md §5.1), the caller's context bytes and ``settings``,
    what else the sites must share that the protocol string lacks
    (:meth:`PeerNode._round_settings`); none of them: ``""``, so such rounds keep their
    protocol string. Numbers are hashed as float64 values (``float.hex``), so settings
    that compare equal (2, 2.0, ``np.float64(2.0)``) give the same context.
    """
    if dp_round is None and caller is None and not settings:
        return ""
    calibration = b""
    if dp_round is not None:
        table = dp_round.settings
        calibration = json.dumps(
            {
                "mechanism": table.mechanism.value,
                "noise_multiplier": float(table.noise_multiplier).hex(),
                "clip_norm": float(table.clip_norm).hex(),
                "delta": float(table.delta).hex(),
                "unit": table.unit.value,
                "sampling_probability": float(table.sampling_probability).hex(),
                "local": bool(table.local),
                "rotation": bool(table.rotation),
                "min_sites": int(dp_round.min_sites),
                "frac_bits": int(dp_round.frac_bits),
                "dimension": int(dp_round.dimension),
                "sigma_squared": int(dp_round.sigma_squared),
                "skellam_mu": float(dp_round.skellam_mu).hex(),
            },
            sort_keys=True,
        ).encode()
    digest = hashlib.sha256(b"mpc-agg/round-context/v1\x00")
    for part in (calibration, settings, b"" if caller is None else bytes(caller)):
        digest.update(len(part).to_bytes(8, "big") + part)
    return "x" + digest.hexdigest()[:16]


class PeerNode:
    """One site's peer: ``async with PeerNode(...) as node: await node.aggregate(x)``."""

    def __init__(
        self,
        *,
        federation: str,
        roster: Roster,
        me: int,
        signing_key: SigningKey,
        transport: Transport,
        deadlines: Callable[[enum.IntEnum], float] | Mapping[enum.IntEnum, float],
        threshold: int | None = None,
        frac_bits: int = 20,
        max_abs_value: float = 1.0,
        ring_bits: int | None = None,
        max_vector_length: int = 100_000_000,
        randomness: RandomSource | None = None,
        audit: AuditLog | None = None,
        join_timeout: float = 0.0,
        last_round: int = 0,
        protocol: str = "secagg",
        max_norm: float | None = None,
        privacy: dp.DpSettings | None = None,
        privacy_history: tuple[dp.RoundCost, ...] = (),
        publish_jitter: float = 0.0,
        shuffle: bool = False,
        messages_per_site: int | None = None,
        held_messages_per_site: int = _EARLY_LIMIT_PER_PEER,
        reduce_scatter: bool = False,
    ) -> None:
        if protocol not in RUNTIME_PROTOCOLS:
            raise ProtocolMisuseError(
                f"protocol {protocol!r} is not available in PeerNode yet "
                f"(available: {', '.join(RUNTIME_PROTOCOLS)})"
            )
        if (protocol == "robust") != (max_norm is not None):
            raise ProtocolMisuseError("max_norm is required with robust and only with robust")
        if privacy is not None and protocol != "secagg":
            raise ProtocolMisuseError("differential privacy is available with secagg only")
        if not (publish_jitter >= 0 and np.isfinite(publish_jitter)):
            raise ProtocolMisuseError(f"publish_jitter must be >= 0 s, got {publish_jitter}")
        self.protocol = protocol
        self.max_norm = max_norm
        self.privacy = privacy
        #: Side-channel hygiene: the largest random pause before each publish (seconds),
        #: and whether queued messages are processed in random order.
        self.publish_jitter = publish_jitter
        self.shuffle = shuffle
        #: Per-sender bounds (``[limits]``): messages per round (None: the protocol's
        #: default) and messages held per future round.
        self.messages_per_site = messages_per_site
        self.held_messages_per_site = held_messages_per_site
        #: ε spent by this site so far (``mpc_agg/DP.md`` §4); ``None`` without DP.
        self.accountant = (
            None
            if privacy is None
            else dp.PrivacyAccountant(delta=privacy.delta, history=privacy_history)
        )
        self.federation = federation
        self.roster = roster
        self.me = me
        self.name = roster.name(me)
        self._signing_key = signing_key
        self._transport = transport
        self._deadline = deadlines if callable(deadlines) else deadlines.__getitem__
        if threshold is None:
            chooser = robust_threshold if protocol == "robust" else default_threshold
            threshold = chooser(len(roster))
        self.threshold = threshold
        codec = FixedPointCodec(
            frac_bits=frac_bits, n_peers=len(roster), max_abs_value=max_abs_value
        )
        # secagg sums in Z_2^32 (4 bytes an entry on the wire) whenever the headroom bound
        # allows and no noise needs the wider ring (SPEC §2.1); robust has its own field.
        if ring_bits is None:
            small = protocol == "secagg" and privacy is None and codec.fits_ring(32)
            ring_bits = 32 if small else 64
        elif ring_bits == 32 and (protocol != "secagg" or privacy is not None):
            raise ProtocolMisuseError("ring_bits = 32 is for secagg without [dp] only")
        if reduce_scatter and ring_bits != 32:
            raise ProtocolMisuseError(
                "reduce_scatter needs secagg in the 32-bit ring (no [dp], and the encoding's "
                "headroom bound must fit 32 bits)"
            )
        self.reduce_scatter = reduce_scatter
        self.codec = replace(codec, ring_bits=ring_bits)
        self.max_vector_length = max_vector_length
        self._rng = randomness or SystemRandomSource()
        self.audit = audit
        self.join_timeout = join_timeout
        self._presence_changed = asyncio.Event()
        self._current: _Round | None = None
        self._last_round = last_round
        # the round id of each roster site's latest message since the last round ended
        # (see _drift_hint)
        self._latest_round: dict[int, int] = {}
        self._joined = False
        # (round, claimed sender) -> messages held for that round
        self._early: dict[tuple[int, int], _Held] = {}
        self._arrivals = 0
        self._busy = False
        self._reader: asyncio.Task[None] | None = None
        self._reader_error: BaseException | None = None
        self.presence: dict[str, bytes] = {}  # roster site -> b"online" / b"offline"
        self._live: dict[str, bytes] = {}  # site -> session seen coming online live
        self._site_names = frozenset(e.name for e in roster.entries)
        self._bytes_in = 0

    @classmethod
    def from_config(cls, site: SiteConfig, *, transport: Transport | None = None) -> PeerNode:
        """A node for ``site`` (its broker, deadlines, encoding, limits and audit log).

        Raises :class:`~peers.config.ConfigError` for a protocol the runtime cannot run yet.
        """
        federation = site.federation
        if federation.protocol not in RUNTIME_PROTOCOLS:
            raise ConfigError(
                federation.path,
                "federation.protocol",
                f"{federation.protocol!r} is not available in the runtime yet "
                f"(available: {', '.join(RUNTIME_PROTOCOLS)})",
            )
        robust = federation.protocol == "robust"
        # Round ids are never reused (SPEC §2.1): continue after the last one this site
        # recorded, across process restarts too. A missing log is a lost one, not a new
        # site's (init creates it empty): starting afresh would reuse round ids and forget
        # the privacy already spent.
        if not site.audit_log.is_file():
            raise ConfigError(
                site.path,
                "audit_log",
                f"{os.path.normpath(site.audit_log)} not found. It holds this site's round "
                "ids and privacy ledger (mpc-agg init creates it empty): restore it; only "
                "for a site that never ran a round, create an empty file",
            )
        audit = AuditLog(site.audit_log, signing_key=site.signing_key)
        if transport is None:
            transport = site_transport(site)
        return cls(
            federation=federation.id,
            roster=federation.roster,
            me=site.index,
            signing_key=site.signing_key,
            transport=transport,
            deadlines=federation.deadlines.for_phase,
            threshold=federation.threshold,
            frac_bits=federation.encoding.frac_bits,
            max_abs_value=federation.encoding.max_abs_value,
            ring_bits=federation.encoding.ring_bits,
            max_vector_length=federation.limits.max_vector_length,
            audit=audit,
            last_round=audit.last_round(federation.id),
            join_timeout=(
                federation.deadlines.advertise if robust else federation.deadlines.advertise_keys
            ),
            protocol=federation.protocol,
            max_norm=federation.max_norm,
            privacy=federation.dp,
            privacy_history=_privacy_history(audit, federation.id),
            publish_jitter=federation.hygiene.publish_jitter,
            shuffle=federation.hygiene.shuffle,
            messages_per_site=federation.limits.messages_per_site,
            held_messages_per_site=federation.limits.held_messages_per_site,
            reduce_scatter=federation.reduce_scatter,
        )

    async def wait_for_peers(self, timeout: float) -> set[str]:
        """Wait until every other site announced itself online (or ``timeout``); return them.

        MQTT does not keep messages for subscribers that are not there yet, so starting a
        round before the others subscribed would lose our first message to them. Only an
        ``online`` published while we were subscribed counts: a retained one may have been
        left by a process that is gone (live sites announce themselves again for us).
        """
        others = {self.roster.name(i) for i in range(len(self.roster))} - {self.name}
        loop = asyncio.get_running_loop()
        give_up = loop.time() + timeout
        while True:
            online = others & self._live.keys()
            remaining = give_up - loop.time()
            if online == others or remaining <= 0 or self._reader_error is not None:
                return online  # (a dead transport: the round reports it at once)
            self._presence_changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._presence_changed.wait(), remaining)

    async def __aenter__(self) -> Self:
        await self._transport.__aenter__()
        try:
            # One call: presence is announced once both are in place.
            await self._transport.subscribe(
                federation_filter(self.federation), inbox_filter(self.federation, self.name)
            )
            self._reader = asyncio.get_running_loop().create_task(self._read())
        except BaseException:  # do not leak the connection
            await self._transport.__aexit__(*sys.exc_info())
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        reader = self._reader
        if reader is not None:
            reader.cancel()
            # Bounded: on Python 3.11 a cancellation racing a completed wait_for inside a
            # library can be swallowed; closing the transport below then ends the reader.
            await asyncio.wait({reader}, timeout=2.0)
        await self._transport.__aexit__(exc_type, exc, tb)
        if reader is not None:
            if not reader.done():  # the closed transport ends its message iterator
                reader.cancel()
                await asyncio.wait({reader}, timeout=2.0)
            if reader.done() and not reader.cancelled():
                reader.result()  # as awaiting it did: _read keeps Exceptions for rounds

    # ------------------------------------------------------------------ reading

    async def _read(self) -> None:
        try:
            async for delivery in self._transport.messages():
                parsed = parse_topic(delivery.topic)
                if parsed is None or parsed.federation != self.federation:
                    continue
                if parsed.round_id is None:
                    if parsed.site in self._site_names:  # bounded: roster sites only
                        self._on_presence(parsed.site, delivery)
                    continue
                if parsed.recipient is not None and parsed.recipient != self.name:
                    continue  # another site's private message: never ours to read
                try:
                    claimed: int | None = self.roster.index_of(parsed.site)
                except KeyError:
                    claimed = None
                if claimed == self.me:
                    continue  # our own publication echoed by the broker
                self._bytes_in += len(delivery.payload)
                self._route(parsed.round_id, claimed, delivery.payload)
        except Exception as exc:  # surfaced by aggregate(), never swallowed
            self._reader_error = exc
        else:
            self._reader_error = TransportError("the transport stopped delivering messages")
        self._presence_changed.set()  # a wait for the peers ends now, not at its timeout
        if self._current is not None:
            self._current.inbox.put_nowait((None, b""))

    def _on_presence(self, site: str, delivery: Delivery) -> None:
        """Record a roster site's presence (``status`` or ``status session``)."""
        status, session = split_presence(bytes(delivery.payload))
        live = self._live.get(site)
        if status != ONLINE and session and live is not None and live != session:
            return  # the Will (or goodbye) of an earlier session of a site that is back
        self.presence[site] = status[:16]
        if status != ONLINE:
            self._live.pop(site, None)
        elif not delivery.retained:
            self._live[site] = session
        self._presence_changed.set()

    def _route(self, round_id: int, claimed: int | None, data: bytes | memoryview) -> None:
        current = self._current
        if claimed is not None:  # bounded by the roster; for a round-id mismatch's abort
            self._latest_round[claimed] = round_id
        if current is not None and round_id == current.round_id:
            self._admit(current, claimed, data)
        elif round_id > self._last_round and claimed is not None:
            key = (round_id, claimed)
            held = self._early.get(key)
            if held is None:
                rounds = [k for k in self._early if k[1] == claimed]
                if len(rounds) >= _EARLY_ROUNDS:
                    highest = max(rounds)
                    if highest < key:
                        return
                    del self._early[highest]
                held = self._early[key] = _Held()
            size = held.size + len(data)
            if len(held.messages) < self.held_messages_per_site and size <= self._early_byte_limit:
                self._arrivals += 1
                held.messages.append((self._arrivals, data))
                held.size = size
            else:
                held.dropped += 1

    @property
    def _early_byte_limit(self) -> int:
        # The round's length and plan are not known yet: at most what secagg accepts for
        # the longest update (a round's first messages are far below it in any protocol).
        return _byte_budget(self.max_vector_length, 64, len(self.roster))

    def _admit(self, state: _Round, claimed: int | None, data: bytes | memoryview) -> None:
        """Queue ``data`` for the round unless its sender is over its per-round limit."""
        count = state.received[claimed] + 1
        size = state.received_bytes[claimed] + len(data)
        if count <= state.message_limit and size <= state.byte_limit:
            state.received[claimed] = count
            state.received_bytes[claimed] = size
            state.inbox.put_nowait((claimed, data))
            return
        _note_ignored(state.ignored, OVER_LIMIT)
        if claimed not in state.flooding:  # one line per site and round, not per message
            state.flooding.add(claimed)
            log.warning(
                "round %d: %s sent more than %d messages or %d bytes; dropping the excess",
                state.round_id,
                "sites outside the roster" if claimed is None else self.roster.name(claimed),
                state.message_limit,
                state.byte_limit,
            )

    def _drift_hint(self, state: _Round) -> str:
        """Why an abort may be a round-id mismatch, when it looks like one; else ``""``.

        Roster sites whose latest message since the last round ended was for another round
        id: by default each site continues after the last round in its *own* audit log, so
        a site that ran a round the others did not (alone, or while they were down) is
        ahead of them from then on, and every round aborts until they agree again.
        """
        # The round id is read from the topic, before any signature: a forged one far away
        # must not make the hint suggest burning the 64-bit round ids (a drift is a few
        # rounds; beyond the window, the ids are not quoted).
        drifted = {
            site: other
            for site, other in self._latest_round.items()
            if other != state.round_id and abs(other - state.round_id) <= _DRIFT_WINDOW
        }
        if not drifted:
            return ""
        sites = ", ".join(
            f"{self.roster.name(site)} (round {other})" for site, other in sorted(drifted.items())
        )
        ahead = max(state.round_id, *drifted.values()) + 1
        return (
            f"; the latest messages of {sites} are for another round than {state.round_id}: "
            "if the sites' round ids differ (each continues after the last round in its own "
            f"audit log), give every site the same round id (`--round {ahead}`, or "
            "aggregate(round_id=…))"
        )

    def _take_early(self, state: _Round) -> None:
        """Admit the held messages of the round in arrival order; drop older rounds'."""
        taken: list[tuple[int, int, bytes | memoryview]] = []
        for key in [k for k in self._early if k[0] <= state.round_id]:
            held = self._early.pop(key)
            if key[0] == state.round_id:
                taken.extend((arrival, key[1], data) for arrival, data in held.messages)
                if held.dropped:
                    _note_ignored(state.ignored, OVER_LIMIT, held.dropped)
        for _, claimed, data in sorted(taken, key=lambda t: t[0]):
            self._admit(state, claimed, data)

    # ------------------------------------------------------------------ rounds

    @property
    def last_round(self) -> int:
        """The id of this node's last round (started, whatever its outcome; 0: none yet)."""
        return self._last_round

    async def aggregate(
        self, update: ArrayLike, *, round_id: int | None = None, context: bytes | None = None
    ) -> AggregateResult:
        """Run one secure aggregation round with ``update``; return the decoded sum.

        ``round_id``: by default the round after this node's last one (:attr:`last_round`).
        ``context``: bytes every site must pass alike (e.g. the layout of the model's
        parameters, which ``SecureAggOptimizer`` passes): bound into the round with the DP
        calibration, so sites that differ hear nothing from each other and the round aborts
        naming the mismatch (SPEC §2.1) instead of summing unlike vectors.

        Raises :class:`RoundAbortedError` when the round aborts (the reason names the
        phase and the peers), :class:`EncodingError` for NaN/inf or out-of-range input,
        :class:`ProtocolMisuseError` for a second concurrent round or a reused round, and
        :class:`~peers.transport.TransportError` when the transport fails (once the task
        reading incoming messages has died, every later round fails at once with its error).

        Once ``update`` is encoded the node holds no reference to it: a caller that drops
        its own (as ``mpc-agg aggregate`` does) does not keep it in memory for the round.
        """
        if self._busy:
            raise ProtocolMisuseError("a round is still running; one round at a time per node")
        if self._reader_error is not None:
            raise self._reader_error
        self._busy = True  # before the first await: wait_for_peers() may take a while
        # Handed over in a one-slot list, which _aggregate empties: once the update is
        # encoded the node holds no reference to it, so a caller that keeps none either
        # (the CLI) does not have it in memory for the round (peak RSS at large d)
        handover = [update]
        del update
        try:
            return await self._aggregate(handover, round_id, context)
        finally:
            self._busy = False

    async def _aggregate(
        self, handover: list[ArrayLike], round_id: int | None, context: bytes | None
    ) -> AggregateResult:
        round_id = self._last_round + 1 if round_id is None else round_id
        if round_id >= 1 << 64:
            raise ProtocolMisuseError(
                f"round ids are exhausted: the last round was {self._last_round} and ids are "
                "64-bit (SPEC §2.1)"
            )
        if round_id <= self._last_round:
            raise ProtocolMisuseError(
                f"round {round_id} is not after the last round {self._last_round}; "
                "round ids are never reused"
            )
        array = np.asarray(handover.pop())
        shape = array.shape
        if array.size == 0 or array.size > self.max_vector_length:
            raise EncodingError(
                f"update has {array.size} entries; allowed 1..{self.max_vector_length}"
            )
        dp_round = self._plan_privacy(round_id, array.size)
        privatized: dp.Privatized | None = None
        if dp_round is None:
            codec = self._round_codec(array)
            ring = codec.encode(array, np.random.default_rng(), clip_norm=None).ring
        else:
            codec = FixedPointCodec(
                frac_bits=dp_round.frac_bits,
                n_peers=len(self.roster),
                max_abs_value=dp_round.settings.clip_norm,
            )
            privatized = dp.privatize(
                dp_round,
                array,
                randomness=self._rng,
                rounding=np.random.default_rng(),
                n_peers=len(self.roster),
            )
            ring = privatized.ring
        del array  # encoded: the ring vector (or the privatized one) is what the round uses
        length = ring.shape[0]
        settings = self._round_settings(length, codec.frac_bits)
        plan = self._plan_round(
            round_id, length, codec, _round_context(dp_round, context, settings)
        )
        report: PrivacyReport | None = None
        # On disk before the first message (and before waiting for the peers): a site
        # killed from here on restarts at the next round id, as the others do, and never
        # sends a second, different input under this one; a crash after sending cannot
        # un-spend ε.
        if dp_round is not None and privatized is not None:
            report = self._spend_privacy(dp_round, privatized)
            plan = replace(plan, privacy=_privacy_record(dp_round, report))
            self._record(round_id, plan, {"outcome": "charged"})
        else:
            self._record(round_id, plan, {"outcome": "started"})
        if self.join_timeout > 0 and not self._joined:
            self._joined = True
            try:
                await self.wait_for_peers(self.join_timeout)
            except BaseException as exc:
                self._last_round = round_id  # recorded as started: never used again
                if isinstance(exc, Exception):
                    reason = f"{type(exc).__name__}: {exc}"
                    self._record(round_id, plan, {"outcome": "failed", "reason": reason})
                else:  # cancelled (a timeout, Ctrl-C) while waiting for the peers
                    self._record(round_id, plan, {"outcome": "cancelled"})
                raise
        state = _Round(
            round_id,
            plan.machine,
            byte_limit=plan.byte_budget,
            message_limit=plan.message_budget,
            update=ring,
        )
        del ring, privatized  # the state holds the only reference, until begin()
        self._current = state
        self._last_round = round_id
        self._take_early(state)
        if self._reader_error is not None:  # died while we waited for the peers
            state.inbox.put_nowait((None, b""))
        bytes_out_before = self._bytes_out_total()
        bytes_in_before = self._bytes_in
        try:
            ready, ignored, timings = await self._run(state)
        except RoundAbortedError as exc:
            self._record(round_id, plan, {"outcome": "aborted", "reason": exc.reason})
            raise
        except Exception as exc:  # transport lost, reader died: the round still leaves a line
            reason = f"{type(exc).__name__}: {exc}"
            self._record(round_id, plan, {"outcome": "failed", "reason": reason})
            raise
        except BaseException:  # cancelled (a timeout, Ctrl-C): the round still leaves a line
            self._record(round_id, plan, {"outcome": "cancelled"})
            raise
        finally:
            self._current = None
            self._latest_round.clear()
        if dp_round is None:
            # the ring total is this round's own array: its buffer becomes the floats
            total = plan.codec.decode(ready.total, overwrite=True).reshape(shape)
        else:
            total = dp.decode(dp_round, ready.total).reshape(shape)
        names = self.roster.name
        self._record(
            round_id,
            plan,
            {
                "outcome": "aggregate",
                "participants": [names(p) for p in ready.included],
                "dropped": {names(p): r for p, r in ready.dropped.items()},
                "excluded": {names(p): r for p, r in ready.excluded.items()},
                "result_digest": ready.result_digest.hex(),
                "confirmed_by": [names(p) for p in ready.confirmed_by],
                # messages dropped in this round, by reason (bounded, printable keys)
                "ignored": dict(ignored),
            },
        )
        return AggregateResult(
            total=total,
            count=len(ready.included),
            included=tuple(names(p) for p in ready.included),
            dropped={names(p): r for p, r in ready.dropped.items()},
            excluded={names(p): r for p, r in ready.excluded.items()},
            protocol=plan.protocol,
            round_id=round_id,
            result_digest=ready.result_digest.hex(),
            confirmed_by=tuple(names(p) for p in ready.confirmed_by),
            timings=timings,
            bytes_in=self._bytes_in - bytes_in_before,
            bytes_out=self._bytes_out_total() - bytes_out_before,
            ignored=dict(ignored),
            privacy=report,
        )

    def _plan_privacy(self, round_id: int, vector_length: int) -> dp.DpRound | None:
        """The round's DP calibration; refuse the round if it would exceed the ε budget.

        Runs before anything of the round is sent (``mpc_agg/DP.md`` §5.2): a refused
        round raises :class:`~mpc_agg.dp.PrivacyBudgetExceededError` and leaves an audit
        line with outcome ``refused``, and no message.
        """
        settings, accountant = self.privacy, self.accountant
        if settings is None or accountant is None:
            return None
        dp_round = dp.plan_round(
            settings,
            vector_length=vector_length,
            frac_bits=self.codec.frac_bits,
            min_sites=self.threshold,
            federation=self.federation,
            round_id=round_id,
        )
        if dp_round.dimension > self.max_vector_length:
            raise EncodingError(
                f"the rotation pads the update's {vector_length} entries to "
                f"{dp_round.dimension}, above the federation's max_vector_length "
                f"{self.max_vector_length} (the other sites would refuse it); nothing was sent"
            )
        budget = settings.epsilon_budget
        if budget is not None:
            would_be = accountant.epsilon([dp_round.cost])
            if would_be > budget:
                spent = accountant.epsilon()
                reason = (
                    f"round {round_id} would bring ε to {would_be:.4g} (δ={settings.delta:g}), "
                    f"over the federation's budget {budget:g}; ε spent so far {spent:.4g} "
                    f"over {accountant.rounds} rounds. Nothing was sent"
                )
                self._last_round = round_id
                self._append_audit(PROTOCOL, round_id, {"outcome": "refused", "reason": reason})
                raise dp.PrivacyBudgetExceededError(
                    reason, spent=spent, would_be=would_be, budget=budget
                )
        return dp_round

    def _spend_privacy(self, dp_round: dp.DpRound, privatized: dp.Privatized) -> PrivacyReport:
        """Charge the round to this site's ledger before its first message (§4.2)."""
        accountant = self.accountant
        assert accountant is not None
        settings = dp_round.settings
        return PrivacyReport(
            mechanism=settings.mechanism.value,
            noise_multiplier=settings.noise_multiplier,
            clip_norm=settings.clip_norm,
            delta=settings.delta,
            epsilon_round=dp.PrivacyAccountant(delta=settings.delta).epsilon([dp_round.cost]),
            epsilon_spent=accountant.spend(dp_round.cost),
            epsilon_budget=settings.epsilon_budget,
            clipped=privatized.clipped,
            min_sites=dp_round.min_sites,
        )

    def round_context(self, vector_length: int, context: bytes | None = None) -> str:
        """SPEC §2.1 — the context a round of ``vector_length`` entries has at this node.

        The suffix of the round's protocol string (``""`` or ``"x"`` and 16 hex digits),
        for a tool or test that builds the other peers' machines itself.
        """
        dp_round = None
        if self.privacy is not None:
            dp_round = dp.plan_round(
                self.privacy,
                vector_length=vector_length,
                frac_bits=self.codec.frac_bits,
                min_sites=self.threshold,
                federation=self.federation,
                round_id=self._last_round + 1,
            )
        if dp_round is None:
            frac_bits = self._round_codec(np.zeros(vector_length)).frac_bits
        else:
            frac_bits = dp_round.frac_bits
        return _round_context(dp_round, context, self._round_settings(vector_length, frac_bits))

    def _round_settings(self, vector_length: int, frac_bits: int) -> bytes:
        """What else the sites of a round must share that its protocol string lacks.

        The fixed-point scale 2^frac_bits when it is not the default (a site encoding at
        another scale was summed with the others, wrongly, without an error). ``robust``:
        max_norm (its norm bound B), the length and t. ``secagg``: T when it is not the
        default. Defaults add nothing, so such rounds keep their protocol string. Sites
        whose max_norm or threshold differed used to blame each other ("ShareKeys has 3
        commitments, T=2", "malformed VERIFY", "its verification reference contradicts
        the share it dealt") before aborting.
        """
        settings = b"" if frac_bits == DEFAULT_FRAC_BITS else b"frac_bits=%d" % frac_bits
        if self.protocol == "robust":
            assert self.max_norm is not None
            norm = float(self.max_norm).hex().encode()
            return settings + b";robust max_norm=%s L=%d t=%d" % (
                norm,
                vector_length,
                self.threshold,
            )
        if self.threshold != default_threshold(len(self.roster)):
            settings += b";T=%d" % self.threshold
        return settings

    def _round_codec(self, array: NDArray[Any]) -> FixedPointCodec:
        """The encoding of this round's update (``robust``: checks and fits the norm bound).

        ``robust`` (SPEC §2.3) needs the update's L2 norm ≤ ``max_norm`` — nothing is
        clipped silently: a larger update raises :class:`EncodingError` — and lowers
        ``frac_bits`` to the largest value for which the grid bound B is checkable at this
        vector length.
        """
        if self.protocol != "robust":
            return self.codec
        assert self.max_norm is not None
        values = np.asarray(array, dtype=np.float64).reshape(-1)
        if not np.isfinite(values).all():
            raise EncodingError("update contains NaN or infinite values")
        norm = math.sqrt(sum_of_squares(values))  # not BLAS (fixedpoint.sum_of_squares)
        if norm > self.max_norm * (1.0 + NORM_TOLERANCE):
            raise EncodingError(
                f"update L2 norm {norm:.6g} exceeds the federation's max_norm "
                f"{self.max_norm:.6g}; clip it first (e.g. SecureAggOptimizer max_grad_norm)"
            )
        d = values.shape[0]
        largest = max_norm_bound(d)
        frac_bits = self.codec.frac_bits
        while frac_bits > 0 and grid_norm_bound(self.max_norm, frac_bits, d) > largest:
            frac_bits -= 1
        if grid_norm_bound(self.max_norm, frac_bits, d) > largest:
            raise EncodingError(
                f"max_norm {self.max_norm:.6g} is too large to check for d={d} "
                f"(the grid bound B must stay ≤ {largest}); scale the update down"
            )
        return FixedPointCodec(
            frac_bits=frac_bits, n_peers=len(self.roster), max_abs_value=self.max_norm
        )

    def _plan_round(
        self, round_id: int, vector_length: int, codec: FixedPointCodec, context: str = ""
    ) -> RoundPlan:
        """The machine and per-sender budgets of round ``round_id`` for ``self.protocol``.

        The one protocol-dependent step of a round: each protocol builds its machine and
        passes its own budgets.
        """
        if self.protocol == "robust":
            assert self.max_norm is not None
            bound = grid_norm_bound(self.max_norm, codec.frac_bits, vector_length)
            robust = RobustParams(
                federation=self.federation,
                round_id=round_id,
                roster=self.roster,
                threshold=self.threshold,
                vector_length=vector_length,
                norm_bound=bound,
                context=context,
            )
            return RoundPlan(
                protocol=ROBUST_PROTOCOL,
                machine=RobustMachine(
                    robust, me=self.me, signing_key=self._signing_key, randomness=self._rng
                ),
                threshold=robust.threshold,
                vector_length=vector_length,
                byte_budget=robust.max_bytes_per_sender,
                message_budget=self.messages_per_site or _ROBUST_MESSAGES_PER_PEER,
                codec=codec,
                parameters={"max_norm": self.max_norm, "norm_bound": bound, "context": context},
            )
        params = SecAggParams(
            federation=self.federation,
            round_id=round_id,
            roster=self.roster,
            threshold=self.threshold,
            vector_length=vector_length,
            ring_bits=codec.ring_bits,
            reduce_scatter=self.reduce_scatter,
            context=context,
        )
        machine = SecAggMachine(
            params, me=self.me, signing_key=self._signing_key, randomness=self._rng
        )
        return RoundPlan(
            protocol=PROTOCOL,
            machine=machine,
            threshold=params.threshold,
            vector_length=params.vector_length,
            byte_budget=_byte_budget(params.vector_length, params.ring_bits, params.n),
            message_budget=self.messages_per_site or _ROUND_LIMIT_PER_PEER,
            codec=codec,
            parameters={
                "ring_bits": params.ring_bits,
                "reduce_scatter": params.reduce_scatter,
                "context": context,
            },
        )

    def _append_audit(self, protocol: str, round_id: int, fields: Mapping[str, object]) -> None:
        """Append one line about ``round_id`` to the audit log (if any), with who and where."""
        if self.audit is None:
            return
        self.audit.append(
            {
                "protocol": protocol,
                "federation": self.federation,
                "round": round_id,
                "site": self.name,
                "roster_digest": self.roster.digest.hex(),
                **fields,
            }
        )

    def _record(self, round_id: int, plan: RoundPlan, outcome: Mapping[str, object]) -> None:
        """Append the round to the audit log (DESIGN §9): parameters, roster, outcome."""
        self._append_audit(
            plan.protocol,
            round_id,
            {
                "parameters": {
                    "n": len(self.roster),
                    "threshold": plan.threshold,
                    "vector_length": plan.vector_length,
                    "frac_bits": plan.codec.frac_bits,
                    "max_abs_value": plan.codec.max_abs_value,
                    **plan.parameters,
                },
                **({} if plan.privacy is None else {"privacy": plan.privacy}),
                **outcome,
            },
        )

    def _bytes_out_total(self) -> int:
        return int(getattr(self._transport, "bytes_out", 0))

    async def _run(self, state: _Round) -> tuple[AggregateReady, Counter[str], dict[str, float]]:
        loop = asyncio.get_running_loop()
        ignored = state.ignored
        timings: dict[str, float] = {}
        started: dict[str, float | str] = {"at": time.perf_counter(), "phase": "IDLE"}
        assert state.update is not None
        pending = state.machine.begin(state.update)
        state.update = None  # the machine keeps its own copy
        try:
            while True:
                for effect in pending:
                    outcome = await self._perform(state, effect, ignored, timings, started)
                    if outcome is not None:
                        # everything this site had to say is out before the round ends
                        await _settle(state.publishing, wait=True)
                        return outcome, ignored, timings
                pending = []
                await _settle(state.publishing, wait=False)  # a failed publish fails the round
                pending = await self._next_effects(state, loop)
        except RoundAbortedError:
            # What the machine said before aborting (e.g. its view, SPEC §7) still goes out:
            # the others judge the round by it. Bounded by the phase's deadline.
            phase = state.deadline_phase
            flush = self._deadline(phase) if phase is not None else 5.0
            if state.publishing:
                await asyncio.wait(state.publishing, timeout=flush)
            raise
        finally:
            for task in state.publishing:
                task.cancel()
                if task.done() and not task.cancelled():
                    task.exception()  # retrieved: the round already ended with its own error

    async def _next_effects(self, state: _Round, loop: asyncio.AbstractEventLoop) -> list[Effect]:
        """Wait for the next message or deadline; return what the machine makes of it.

        A publication of this round that fails meanwhile raises its error at once.
        """
        getter: asyncio.Future[Any] = asyncio.ensure_future(self._next(state))
        try:
            while not getter.done():
                timeout = (
                    None if state.deadline_at is None else max(0.0, state.deadline_at - loop.time())
                )
                waiting: set[asyncio.Future[Any]] = {getter, *state.publishing}
                done, _ = await asyncio.wait(
                    waiting,
                    timeout=timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if not done:  # the phase's deadline
                    phase = state.deadline_phase
                    state.deadline_at = None
                    if phase is not None:
                        return state.machine.deadline(phase)
                await _settle(state.publishing, wait=False)
        finally:
            if not getter.done():
                getter.cancel()  # cancelled inside inbox.get(): no message is lost
        claimed, data = getter.result()
        if self._reader_error is not None:
            raise self._reader_error
        return state.machine.receive(claimed, data)

    async def _next(self, state: _Round) -> tuple[int | None, bytes | memoryview]:
        """The next message to process: arrival order, or with ``shuffle`` a random one.

        Shuffling takes every message queued at that moment and processes them in a
        uniformly random order (``random.SystemRandom``), so the order of processing —
        and its timing — does not follow the order in which sites' messages arrived.
        """
        if not self.shuffle:
            return await state.inbox.get()
        if not state.shuffled:
            state.shuffled.append(await state.inbox.get())
            while not state.inbox.empty():
                state.shuffled.append(state.inbox.get_nowait())
            _SYSTEM_RANDOM.shuffle(state.shuffled)
        return state.shuffled.pop()

    async def _publish(
        self, topic: str, data: bytes, after: Collection[asyncio.Future[None]]
    ) -> None:
        """Publish once every publication in ``after`` is out (whatever their outcome)."""
        if after:
            await asyncio.wait(after)
        if self.publish_jitter > 0:
            # A random pause before each publish blurs when this site finished each step.
            await asyncio.sleep(_SYSTEM_RANDOM.uniform(0.0, self.publish_jitter))
        await self._transport.publish(topic, data)

    def _private_topic(self, state: _Round, effect: Send) -> str:
        """Topic of a ``Send``: ``…/{round}/{me}/{recipient}``, readable by the recipient only."""
        recipient = effect.recipient
        if not 0 <= recipient < len(self.roster) or recipient == self.me:
            raise ProtocolMisuseError(
                f"round {state.round_id}: the machine sent a private message to peer "
                f"{recipient}; recipients are the other roster sites"
            )
        return message_topic(
            self.federation, state.round_id, self.name, recipient=self.roster.name(recipient)
        )

    async def _perform(
        self,
        state: _Round,
        effect: Effect,
        ignored: Counter[str],
        timings: dict[str, float],
        started: dict[str, float | str],
    ) -> AggregateReady | None:
        loop = asyncio.get_running_loop()
        # Order as the machine emitted them, where it matters: a broadcast goes out after
        # every earlier publication (robust's shares before the broadcast announcing them),
        # a private message after the latest broadcast; private messages of one batch go
        # out together.
        if isinstance(effect, Broadcast):
            topic = message_topic(self.federation, state.round_id, self.name)
            task = asyncio.ensure_future(self._publish(topic, effect.data, set(state.publishing)))
            state.publishing.add(task)
            state.last_broadcast = task
        elif isinstance(effect, Send):
            latest = state.last_broadcast
            after = () if latest is None else (latest,)
            topic = self._private_topic(state, effect)
            state.publishing.add(asyncio.ensure_future(self._publish(topic, effect.data, after)))
        elif isinstance(effect, PhaseStarted):
            now = time.perf_counter()
            previous = str(started["phase"])
            timings[previous] = now - float(started["at"])
            started.update(at=now, phase=effect.phase.name)
            phase = effect.phase
            if phase.name in _UNTIMED_PHASES:
                state.deadline_at = None
            else:
                state.deadline_at = loop.time() + self._deadline(phase)
                state.deadline_phase = phase
        elif isinstance(effect, MessageIgnored):
            _note_ignored(ignored, effect.reason)
            if state.mismatch is None and effect.reason.startswith("not for this federation"):
                state.mismatch = printable(effect.reason.partition(": ")[2], 160)
            log.debug(
                "round %d: ignored a message from %s: %s",
                state.round_id,
                effect.sender,
                printable(effect.reason),
            )
        elif isinstance(effect, PeerExcluded):
            log.warning(
                "round %d: excluded %s: %s",
                state.round_id,
                self.roster.name(effect.peer),
                printable(effect.reason),
            )
        elif isinstance(effect, RoundAborted):
            detail = ""
            if ignored:
                detail = "; ignored messages: " + ", ".join(
                    f"{reason} ×{count}" for reason, count in ignored.most_common(3)
                )
            if state.mismatch is not None:
                detail += (
                    f"; e.g. {state.mismatch} (the sites' round parameters differ: update "
                    "length, ring, fixed-point scale, data path, roster, threshold, robust's "
                    "max_norm, [dp] table or the caller's context, such as the model's layout)"
                )
            detail += self._drift_hint(state)
            raise RoundAbortedError(
                f"{printable(effect.reason, 500)} (phase {effect.phase.name}){detail}",
                round_id=state.round_id,
            )
        elif isinstance(effect, AggregateReady):
            now = time.perf_counter()
            timings[str(started["phase"])] = now - float(started["at"])
            return effect
        return None
