"""The ``secagg`` state machine (SPEC.md in this folder; section numbers refer to it).

Invariants this module maintains (each has a test in ``tests/protocol``):

* Sans-I/O: inputs are :meth:`SecAggMachine.begin`, :meth:`~SecAggMachine.receive` and
  :meth:`~SecAggMachine.deadline`; outputs are :mod:`protocols.common` effects. No clock,
  socket, event loop or ambient randomness.
* A remote peer's bad bytes never raise out of the machine: they become
  ``MessageIgnored`` (unattributable) or ``PeerExcluded`` (signed, hence attributable).
* Legal (phase × message kind) pairs are one table, :data:`TRANSITIONS`.
* The view is frozen when the ConsistencyCheck is sent (§6.4); anything that arrives later
  for an earlier phase is ignored, so a peer declared dropped can never be unmasked twice.
* For every owner, this machine reveals shares of at most one kind per round (§6.5).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
from numpy.typing import NDArray

from mpc_agg.codec import Writer
from mpc_agg.crypto import (
    AgreementKey,
    SigningKey,
    aead_decrypt,
    aead_encrypt,
    blake3_mac,
    derive_key,
    digests_equal,
    parse_point,
    sha256,
)
from mpc_agg.envelope import (
    BROADCAST,
    MAX_PROTOCOL_LEN,
    Envelope,
    EnvelopeContext,
    parse_envelope,
    seal_envelope,
)
from mpc_agg.errors import (
    DecodeError,
    EncodingError,
    ProtocolMisuseError,
    VerificationError,
)
from mpc_agg.prg import (
    CHUNK_WORDS,
    MaskTerm,
    apply_masks,
    keystream_blocks,
    mask_info,
    mask_key,
)
from mpc_agg.randomness import RandomSource, random_below
from mpc_agg.ring import (
    RING_BITS_CHOICES,
    RingVector,
    check_ring_vector,
    narrow32,
    signed_limit,
    widen32_in_place,
)
from mpc_agg.vss import (
    Commitments,
    InsufficientSharesError,
    Q,
    encode_scalar,
    prove_dleq,
    recover,
    share_secret,
    shared_point,
    verify_dleq,
    verify_share,
)
from protocols.admission import Action, Equivocated, admit, not_routed
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
    check_context,
    format_peers,
)
from protocols.secagg.messages import (
    CHECKS_PER_CHUNK,
    AdvertiseKeys,
    ChunkSum,
    Complaint,
    ConsistencyCheck,
    MaskedChunk,
    MaskedHeader,
    MaskedInput,
    MessageKind,
    Phase,
    ResultDigest,
    RevealedShare,
    ShareKeys,
    ShareKind,
    Unmask,
    chunk_digest,
    decode_revealed,
    decode_share_plaintext,
    encode_revealed,
    encode_share_plaintext,
    sum_high_bytes,
)

PROTOCOL = "secagg/4"


def protocol_id(
    ring_bits: int, vector_length: int, reduce_scatter: bool = False, context: str = ""
) -> str:
    """§2.1 — the protocol name bound into every envelope and key derivation of a round.

    The version, the ring, L, the data path and the round's context (the runtime's digest
    of its DP calibration and of the caller's layout, if any): a site configured with other
    values hears nothing (and is dealt nothing) instead of splitting the round.
    """
    return (
        f"{PROTOCOL} b{ring_bits} L{vector_length}"
        + (" rs" if reduce_scatter else "")
        + (f" {context}" if context else "")
    )


def chunk_bounds(vector_length: int, owners: int) -> list[tuple[int, int]]:
    """§6.7 — [start, stop) of each owner's chunk: L cut into ``owners`` near-equal parts."""
    return [(k * vector_length // owners, (k + 1) * vector_length // owners) for k in range(owners)]


#: Envelope overhead allowance on top of the masked vector (header, mask set, complaints).
_PAYLOAD_SLACK = 1 << 20


_ACTIVE = (
    Phase.ADVERTISE_KEYS,
    Phase.SHARE_KEYS,
    Phase.MASKED_INPUT,
    Phase.CHUNK_SUM,
    Phase.CONSISTENCY_CHECK,
    Phase.UNMASK,
    Phase.CONFIRM_RESULT,
)


def _action(phase: Phase, kind: MessageKind) -> Action:
    if phase in (Phase.DONE, Phase.ABORTED):
        return Action.FINISHED
    if phase == Phase.IDLE or kind.phase > phase:
        return Action.BUFFER
    if kind.phase == phase:
        return Action.PROCESS
    return Action.LATE


#: §4.2 — the complete transition table: every (phase, message kind) pair.
TRANSITIONS: Mapping[tuple[Phase, MessageKind], Action] = {
    (phase, kind): _action(phase, kind) for phase in Phase for kind in MessageKind
}


def default_threshold(n: int) -> int:
    """§2 — the default T = ⌊2n/3⌋ + 1 (privacy against an active broker when c < n/3)."""
    return max(2, (2 * n) // 3 + 1)


@dataclass(frozen=True, slots=True, kw_only=True)
class SecAggParams:
    """§2 — parameters every peer of a round must agree on."""

    federation: str
    round_id: int
    roster: Roster
    threshold: int
    vector_length: int
    ring_bits: int = 64
    """The ring of the sum, Z_2^64 or Z_2^32 (§2.1): with 32 every masked input travels as
    4 bytes an entry, and every input entry must lie in [−2^31, 2^31)."""
    reduce_scatter: bool = False
    """§6.7 — masked inputs travel as chunks to their owners, who publish verified chunk
    sums: each peer receives about 3·L words instead of n·L. Needs ``ring_bits = 32``."""
    context: str = ""
    """§2.1 — ``""`` or ``"x"`` and 16 hex digits: what else the sites must agree on (the
    runtime's digest of the round's DP calibration and the caller's layout)."""

    def __post_init__(self) -> None:
        n = len(self.roster)
        check_context(self.context)
        if self.ring_bits not in RING_BITS_CHOICES:
            raise ValueError(f"ring_bits must be one of {RING_BITS_CHOICES}, got {self.ring_bits}")
        if self.reduce_scatter and self.ring_bits != 32:
            raise ValueError("reduce_scatter needs ring_bits = 32 (exact u64 chunk sums, §6.7)")
        if not 2 <= self.threshold <= n:
            raise ValueError(f"threshold T={self.threshold} must be in [2, n={n}]")
        if not 1 <= self.vector_length <= 1 << 31:
            raise ValueError(f"vector_length must be in [1, 2^31], got {self.vector_length}")
        if not 0 <= self.round_id < 1 << 64:
            raise ValueError("round_id must fit in 64 bits")

    @property
    def n(self) -> int:
        """Roster size."""
        return len(self.roster)

    @property
    def protocol_id(self) -> str:
        """§2.1 — :func:`protocol_id` of this round."""
        return protocol_id(self.ring_bits, self.vector_length, self.reduce_scatter, self.context)

    @property
    def max_payload(self) -> int:
        """Largest envelope payload accepted: the masked vector or an n×n Unmask, plus slack.

        Reduce-scatter: a ChunkSum (5- or 6-byte sums of one chunk, orphaned chunks) stays
        under 8·L.
        """
        words = (8 if self.reduce_scatter else self.ring_bits // 8) * self.vector_length
        return max(words, 48 * self.n * self.n) + _PAYLOAD_SLACK


@dataclass(slots=True)
class _Dealer:
    """A peer whose ShareKeys passed every public check (§6.2)."""

    message: ShareKeys
    digest: bytes
    mask_key_commitments: Commitments
    self_mask_commitments: Commitments


@dataclass(slots=True)
class _Input:
    message: MaskedInput | MaskedHeader
    digest: bytes


@dataclass(slots=True)
class _Chunks:
    """§6.7 — this peer's state of a reduce-scatter round.

    Peer k owns chunk k, [bounds[k][0], bounds[k][1]): one chunk per roster entry.
    """

    bounds: list[tuple[int, int]]
    own: NDArray[np.uint32] | None
    """This peer's whole masked input, until its checks are computed."""
    received: dict[int, tuple[NDArray[np.uint32], bytes]] = field(default_factory=dict)
    """Chunks for this owner with their payload digests (verified by admission)."""
    handled: set[int] = field(default_factory=set)
    sums: dict[int, tuple[ChunkSum, bytes]] = field(default_factory=dict)
    masked_total: NDArray[np.uint32] | None = None
    """Σ over the included inputs of every chunk, mod 2^32 (owner order)."""
    expected: NDArray[np.uint64] | None = None
    """⟨r, sums⟩ per chunk and check, what the included peers' checks must add up to."""
    checks: dict[int, tuple[int, ...]] = field(default_factory=dict)
    included: tuple[int, ...] = ()
    """I as this peer's frozen view determines it (§6.4), from MASKED_INPUT close on."""
    orphans: tuple[int, ...] = ()
    """Owners outside S: their chunks are summed from the included peers' parts."""


@dataclass(slots=True)
class _Agreement:
    """What §6.4 fixes once the view is confirmed: who is included, who is unmasked how."""

    included: tuple[int, ...]
    dropped_dealers: tuple[int, ...]
    guilty: dict[int, str] = field(default_factory=dict)


class SecAggMachine:
    """One peer's ``secagg`` round (DESIGN §5.1; SPEC §4–§7).

    ``me`` is this peer's roster index; ``signing_key`` its long-term Ed25519 key;
    ``randomness`` supplies every random choice (keys, seeds, polynomial coefficients,
    proof nonces).
    """

    def __init__(
        self,
        params: SecAggParams,
        *,
        me: int,
        signing_key: SigningKey,
        randomness: RandomSource,
    ) -> None:
        if not 0 <= me < params.n:
            raise ProtocolMisuseError(f"peer index {me} is not in the roster (n={params.n})")
        if signing_key.public_bytes() != params.roster.entries[me].verify_key:
            raise ProtocolMisuseError("signing key does not match this peer's roster entry")
        self.params = params
        self.me = me
        self.phase = Phase.IDLE
        self._signing_key = signing_key
        self._rng = randomness
        self._context = EnvelopeContext(
            protocol=params.protocol_id,
            federation=params.federation,
            roster_digest=params.roster.digest,
            round_id=params.round_id,
        )
        self._seen: dict[tuple[MessageKind, int], bytes] = {}
        self._buffer: dict[MessageKind, dict[int, Envelope]] = {k: {} for k in MessageKind}
        self._handled: set[int] = set()
        self._excluded: dict[int, str] = {}
        # §5.1
        self._encryption_key: AgreementKey | None = None
        self._mask_key: AgreementKey | None = None
        self._self_mask_seed = 0
        self._input: RingVector | NDArray[np.uint32] | None = None
        self._advertised: dict[int, AdvertiseKeys] = {}
        self._channel_secrets: dict[int, bytes] = {}
        # §5.2
        self._dealers: dict[int, _Dealer] = {}
        self._held_mask_key: dict[int, int] = {}
        self._held_self_mask: dict[int, int] = {}
        self._complaints: dict[int, Complaint] = {}
        # §5.3 / §5.4
        self._inputs: dict[int, _Input] = {}
        self._view: ConsistencyCheck | None = None
        self._confirmed: set[int] = set()
        # §5.5 / §5.6
        self._agreement: _Agreement | None = None
        self._pool: dict[tuple[ShareKind, int], dict[int, int]] = {}
        self._total: RingVector | None = None
        self._result_digest = b""
        self._peer_digests: dict[int, bytes] = {}
        self._not_included: dict[int, str] = {}
        self._revealed: dict[int, ShareKind] = {}
        self._chunks: _Chunks | None = None
        self._handlers: dict[MessageKind, Callable[[int, Envelope, list[Effect]], None]] = {
            MessageKind.ADVERTISE_KEYS: self._on_advertise_keys,
            MessageKind.SHARE_KEYS: self._on_share_keys,
            MessageKind.MASKED_INPUT: self._on_masked_input,
            MessageKind.MASKED_CHUNK: self._on_masked_chunk,
            MessageKind.CHUNK_SUM: self._on_chunk_sum,
            MessageKind.CONSISTENCY_CHECK: self._on_consistency_check,
            MessageKind.UNMASK: self._on_unmask,
            MessageKind.RESULT_DIGEST: self._on_result_digest,
        }
        self._finishers: dict[Phase, Callable[[list[Effect]], None]] = {
            Phase.ADVERTISE_KEYS: self._finish_advertise_keys,
            Phase.SHARE_KEYS: self._finish_share_keys,
            Phase.MASKED_INPUT: self._finish_masked_input,
            Phase.CHUNK_SUM: self._finish_chunk_sum,
            Phase.CONSISTENCY_CHECK: self._finish_consistency_check,
            Phase.UNMASK: self._finish_unmask,
            Phase.CONFIRM_RESULT: self._finish_confirm_result,
        }

    def __repr__(self) -> str:
        return f"SecAggMachine(me={self.me}, round={self.params.round_id}, phase={self.phase.name})"

    # ------------------------------------------------------------------ inputs

    def begin(self, update: RingVector) -> list[Effect]:
        """§6.1 — start the round with this peer's encoded update (a uint64 ring vector)."""
        if self.phase != Phase.IDLE:
            raise ProtocolMisuseError(f"begin() called in phase {self.phase.name}; once per round")
        check_ring_vector(update, length=self.params.vector_length, name="update")
        bits = self.params.ring_bits
        if bits == 64:
            self._input = update.copy(order="C")
        else:  # b = 32: the machine works on 32-bit words (x mod 2^32), masks included (§6.3)
            words, low, high = narrow32(update)
            if update.size and (low < -(1 << (bits - 1)) or high > signed_limit(bits)):
                raise EncodingError(
                    f"update entries span [{low}, {high}], outside the round's ring Z_2^{bits} "
                    f"([−2^{bits - 1}, 2^{bits - 1})); nothing was wrapped"
                )
            self._input = words
        self._encryption_key = AgreementKey.generate(self._rng)
        self._mask_key = AgreementKey.generate(self._rng)
        self._self_mask_seed = 1 + random_below(self._rng, Q - 1)
        advertise = AdvertiseKeys(
            encryption_key=self._encryption_key.public, mask_key=self._mask_key.public
        )
        self._advertised[self.me] = advertise
        effects: list[Effect] = []
        self._enter(Phase.ADVERTISE_KEYS, effects, advertise.encode())
        self._drive(effects)
        return effects

    def receive(self, sender: int | None, data: bytes | memoryview) -> list[Effect]:
        """Process one incoming message; ``sender`` is the transport's (untrusted) claim."""
        effects: list[Effect] = []
        envelope = self._admit(sender, data, effects)
        if envelope is None:
            return effects
        kind = MessageKind(envelope.kind)
        action = TRANSITIONS[(self.phase, kind)]
        source = envelope.sender
        ignored = not_routed(action, kind, source)
        if ignored is not None:
            effects.append(ignored)
        elif action is Action.BUFFER:
            self._buffer[kind][source] = envelope
        else:
            self._dispatch(kind, source, envelope, effects)
            self._drive(effects)
        return effects

    def deadline(self, phase: Phase) -> list[Effect]:
        """§7 — the runtime's timer for ``phase`` fired; close it with what has arrived."""
        effects: list[Effect] = []
        if phase == self.phase and phase in _ACTIVE:
            self._finishers[phase](effects)
            self._drive(effects)
        return effects

    @property
    def revealed(self) -> Mapping[int, ShareKind]:
        """§6.5 — the kind of share this machine revealed for each owner (at most one)."""
        return dict(self._revealed)

    @property
    def finished(self) -> bool:
        """True once the round produced AggregateReady or RoundAborted."""
        return self.phase in (Phase.DONE, Phase.ABORTED)

    # ------------------------------------------------------------------ plumbing

    def _admit(
        self, sender: int | None, data: bytes | memoryview, effects: list[Effect]
    ) -> Envelope | None:
        """§4.3 — admission (:func:`protocols.admission.admit`); equivocation aborts."""
        outcome = admit(
            data,
            sender,
            me=self.me,
            roster=self.params.roster,
            context=self._context,
            max_payload=self.params.max_payload,
            kinds=MessageKind,
            recipient_of=lambda kind: self.me if kind.private else BROADCAST,
            seen=self._seen,
            effects=effects,
        )
        if isinstance(outcome, Equivocated):
            name = outcome.kind.name
            self._exclude(outcome.sender, f"equivocation: two different signed {name}", effects)
            if not self.finished:
                self._abort(f"peer {outcome.sender} equivocated in {name}", effects)
            return None
        return outcome

    def _dispatch(
        self, kind: MessageKind, source: int, envelope: Envelope, effects: list[Effect]
    ) -> None:
        # A peer this machine excluded is still heard: a private blame (§6.3) must not
        # change this machine's view, which has to match every other honest peer's.
        if kind is MessageKind.MASKED_CHUNK:
            if self._chunks is None:
                effects.append(MessageIgnored(source, "MaskedChunk in a broadcast round"))
                return
            self._chunks.handled.add(source)
        else:
            self._handled.add(source)
        try:
            self._handlers[kind](source, envelope, effects)
        except DecodeError as exc:
            self._exclude(source, f"malformed {kind.name}: {exc}", effects)

    def _enter(
        self,
        phase: Phase,
        effects: list[Effect],
        payload: bytes | Sequence[bytes | memoryview],
        sends: Sequence[Send] = (),
    ) -> Envelope:
        """Enter ``phase``; send its messages *before* replaying buffered ones.

        ``sends`` (a reduce-scatter round's chunks) go before the broadcast, so a peer that
        stops while sending them has broadcast nothing. Returns the broadcast message as
        parsed (its digest; its payload, a view into the bytes being published). Replaying
        after sending guarantees that a machine which aborts on a buffered message has sent
        nothing after its RoundAborted.
        """
        self.phase = phase
        self._handled = set()
        effects.append(PhaseStarted(phase))
        effects.extend(sends)
        broadcast, sealed = self._broadcast(MessageKind(phase.value), payload)
        effects.append(broadcast)
        self._replay_buffer(phase, effects)
        return sealed

    def _replay_buffer(self, phase: Phase, effects: list[Effect]) -> None:
        if phase not in _ACTIVE:
            return
        kinds = [MessageKind(phase.value)]
        if phase == Phase.MASKED_INPUT:
            kinds.append(MessageKind.MASKED_CHUNK)
        for kind in kinds:
            buffered = self._buffer[kind]
            pending = sorted(buffered.items())
            buffered.clear()
            for source, envelope in pending:
                self._dispatch(kind, source, envelope, effects)
                if self.finished:
                    return

    def _drive(self, effects: list[Effect]) -> None:
        """Close every phase whose expected messages have all been handled."""
        while self.phase in _ACTIVE and self._expected() <= self._handled:
            if (
                self.phase == Phase.MASKED_INPUT
                and self._chunks is not None
                and not self._expected() <= self._chunks.handled
            ):
                return  # reduce-scatter: the header and the chunk of every dealer (§6.7)
            self._finishers[self.phase](effects)

    def _expected(self) -> set[int]:
        """Peers whose message for the current phase this machine still waits for."""
        if self.phase == Phase.ADVERTISE_KEYS:
            peers = set(range(self.params.n))
        elif self.phase == Phase.SHARE_KEYS:
            peers = set(self._advertised)
        elif self.phase == Phase.MASKED_INPUT:
            peers = set(self._dealers)
        elif self.phase in (Phase.CHUNK_SUM, Phase.CONSISTENCY_CHECK):
            peers = set(self._inputs)
        else:
            peers = set(self._confirmed)
        return peers - {self.me}

    def _seal(
        self,
        kind: MessageKind,
        payload: bytes | Sequence[bytes | memoryview],
        recipient: int = BROADCAST,
    ) -> bytes:
        """Sign ``payload`` as this peer's message of ``kind`` in this round."""
        return seal_envelope(
            self._context,
            phase=kind.phase,
            kind=kind,
            sender=self.me,
            recipient=recipient,
            payload=payload,
            signing_key=self._signing_key,
        )

    def _broadcast(
        self, kind: MessageKind, payload: bytes | Sequence[bytes | memoryview]
    ) -> tuple[Broadcast, Envelope]:
        data = self._seal(kind, payload)
        sealed = parse_envelope(data, max_payload=self.params.max_payload)
        self._seen[(kind, self.me)] = sealed.message_digest
        return Broadcast(data, kind.phase), sealed

    def _exclude(self, peer: int, reason: str, effects: list[Effect]) -> None:
        if peer not in self._excluded and peer != self.me:
            self._excluded[peer] = reason
            effects.append(PeerExcluded(peer, reason, self.phase))

    def _short_of_threshold(
        self, count: int, what: str, peers: Sequence[int], effects: list[Effect]
    ) -> bool:
        """Abort with the one reason format of every threshold check when count < T."""
        if count >= self.params.threshold:
            return False
        self._abort(
            f"only {count} {what} {format_peers(peers)}; threshold T={self.params.threshold}",
            effects,
        )
        return True

    def _abort(self, reason: str, effects: list[Effect]) -> None:
        effects.append(RoundAborted(reason, self.phase))
        self.phase = Phase.ABORTED
        self._input = None
        self._chunks = None

    # ------------------------------------------------------------------ keys & channels

    def _info(self, label: bytes, *peers: int) -> bytes:
        w = Writer().raw(b"mpc-agg/secagg/" + label + b"\x00")
        w.text(self.params.protocol_id, MAX_PROTOCOL_LEN).text(self.params.federation, 128)
        w.fixed(self.params.roster.digest, 32).u64(self.params.round_id)
        for p in peers:
            w.u16(p)
        return w.getvalue()

    def _channel_secret(self, peer: int) -> bytes:
        """§6.2 — x-coordinate of ECDH(own encryption key, peer's encryption key)."""
        secret = self._channel_secrets.get(peer)
        if secret is None:
            assert self._encryption_key is not None
            secret = self._encryption_key.exchange(self._advertised[peer].encryption_key)
            self._channel_secrets[peer] = secret
        return secret

    def _channel_key(self, label: bytes, sender: int, recipient: int, secret: bytes) -> bytes:
        return derive_key(secret, info=self._info(b"channel/" + label, sender, recipient))

    def _pair_mask_key(self, a: int, b: int, secret: bytes) -> bytes:
        info = mask_info(
            protocol=self.params.protocol_id,
            federation=self.params.federation,
            round_id=self.params.round_id,
            purpose="pairwise-mask",
            parties=(min(a, b), max(a, b)),
        )
        return mask_key(secret, info)

    def _self_mask_key(self, owner: int, seed: int) -> bytes:
        info = mask_info(
            protocol=self.params.protocol_id,
            federation=self.params.federation,
            round_id=self.params.round_id,
            purpose="self-mask",
            parties=(owner,),
        )
        return mask_key(encode_scalar(seed), info)

    # ------------------------------------------------------------------ §6.1 AdvertiseKeys

    def _on_advertise_keys(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = AdvertiseKeys.decode(envelope.payload)
        parse_point(message.encryption_key)
        parse_point(message.mask_key)
        self._advertised[source] = message

    def _finish_advertise_keys(self, effects: list[Effect]) -> None:
        holders = sorted(self._advertised)
        if self._short_of_threshold(
            len(holders), f"of {self.params.n} peers advertised keys", holders, effects
        ):
            return
        assert self._mask_key is not None
        xs = [p + 1 for p in holders]
        mask_shares, mask_commitments = share_secret(
            self._mask_key.scalar, self.params.threshold, xs, self._rng
        )
        self_shares, self_commitments = share_secret(
            self._self_mask_seed, self.params.threshold, xs, self._rng
        )
        ciphertexts = []
        for peer in holders:
            plaintext = encode_share_plaintext(mask_shares[peer + 1], self_shares[peer + 1])
            if peer == self.me:
                continue
            info = self._info(b"share-keys-ad", self.me, peer)
            key = self._channel_key(b"share-keys", self.me, peer, self._channel_secret(peer))
            ciphertexts.append((peer, aead_encrypt(key, plaintext, info)))
        message = ShareKeys(
            mask_key_commitments=mask_commitments.points,
            self_mask_commitments=self_commitments.points,
            ciphertexts=tuple(ciphertexts),
        )
        self._held_mask_key[self.me] = mask_shares[self.me + 1]
        self._held_self_mask[self.me] = self_shares[self.me + 1]
        own = _Dealer(message, b"", mask_commitments, self_commitments)
        self._dealers[self.me] = own
        own.digest = self._enter(Phase.SHARE_KEYS, effects, message.encode()).message_digest

    # ------------------------------------------------------------------ §6.2 ShareKeys

    def _on_share_keys(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        if source not in self._advertised:
            effects.append(MessageIgnored(source, "ShareKeys from a peer whose keys I lack"))
            return
        message = ShareKeys.decode(envelope.payload)
        problem = self._public_share_keys_problem(source, message)
        if problem is not None:
            self._exclude(source, problem, effects)
            return
        mask_commitments = Commitments(message.mask_key_commitments)
        self_commitments = Commitments(message.self_mask_commitments)
        try:
            decoded_mask = mask_commitments.decoded()
            decoded_self = self_commitments.decoded()
        except DecodeError as exc:
            self._exclude(source, f"ShareKeys commitment is not a curve point: {exc}", effects)
            return
        self._dealers[source] = _Dealer(
            message, envelope.message_digest, mask_commitments, self_commitments
        )
        ciphertext = message.ciphertext_for(self.me)
        if ciphertext is None:
            return  # the dealer did not know our keys in time: we simply hold no share
        info = self._info(b"share-keys-ad", source, self.me)
        key = self._channel_key(b"share-keys", source, self.me, self._channel_secret(source))
        try:
            mask_share, self_share = decode_share_plaintext(aead_decrypt(key, ciphertext, info))
        except (VerificationError, DecodeError):
            self._complain(source, "its share ciphertext to me does not decrypt", effects)
            return
        x = self.me + 1
        if not (
            verify_share(decoded_mask, x, mask_share) and verify_share(decoded_self, x, self_share)
        ):
            self._complain(source, "its share to me does not match its commitments", effects)
            return
        self._held_mask_key[source] = mask_share
        self._held_self_mask[source] = self_share

    def _public_share_keys_problem(self, source: int, message: ShareKeys) -> str | None:
        """§6.2 checks anyone can make on a ShareKeys message (so every peer agrees)."""
        t = self.params.threshold
        if len(message.mask_key_commitments) != t:
            return f"ShareKeys has {len(message.mask_key_commitments)} commitments, T={t}"
        if not digests_equal(message.mask_key_commitments[0], self._advertised[source].mask_key):
            return "mask-key commitment C_0 is not the advertised mask key"
        recipients = [r for r, _ in message.ciphertexts]
        if any(r >= self.params.n or r == source for r in recipients):
            return "ShareKeys addresses a peer outside the roster or itself"
        if len(recipients) + 1 < t:
            return f"shares dealt to {len(recipients) + 1} peers, fewer than T={t}"
        return None

    def _complain(self, accused: int, what: str, effects: list[Effect]) -> None:
        """§6.3 — blame the dealer locally and prepare a publicly verifiable complaint."""
        assert self._encryption_key is not None
        other = self._advertised[accused].encryption_key
        point = shared_point(self._encryption_key.scalar, other)
        proof = prove_dleq(
            self._encryption_key.scalar,
            other,
            point,
            self._info(b"complaint", self.me, accused),
            self._rng,
        )
        self._complaints[accused] = Complaint(accused=accused, shared_point=point, proof=proof)
        self._exclude(accused, f"invalid share: {what}", effects)

    def _finish_share_keys(self, effects: list[Effect]) -> None:
        dealers = sorted(self._dealers)
        mask_set = tuple(p for p in dealers if p != self.me and p not in self._complaints)
        if self._short_of_threshold(
            len(mask_set) + 1, "peers dealt valid shares", dealers, effects
        ):
            return
        assert self._input is not None
        assert self._mask_key is not None
        terms = [MaskTerm(self._self_mask_key(self.me, self._self_mask_seed), +1)]
        for peer in mask_set:
            secret = self._mask_key.exchange(self._advertised[peer].mask_key)
            terms.append(
                MaskTerm(self._pair_mask_key(self.me, peer, secret), _gamma(self.me, peer))
            )
        masked = self._input
        self._input = None
        apply_masks(masked, terms)
        if self.params.reduce_scatter:
            self._send_chunks(mask_set, masked, effects)
            return
        message = MaskedInput(
            mask_set=mask_set,
            complaints=tuple(self._complaints[p] for p in sorted(self._complaints)),
            masked=masked,
            ring_bits=self.params.ring_bits,
        )
        own = _Input(message, b"")
        self._inputs[self.me] = own
        payload = message.encode_parts()  # joined once, into the sealed message
        del masked, message
        sealed = self._enter(Phase.MASKED_INPUT, effects, payload)
        own.digest = sealed.message_digest
        # This peer's masked vector is kept as a view into the message it broadcasts: one
        # copy of it while that message is being published, not two (peak memory at large L)
        own.message = MaskedInput.decode(
            sealed.payload,
            vector_length=self.params.vector_length,
            ring_bits=self.params.ring_bits,
        )

    def _send_chunks(
        self,
        mask_set: tuple[int, ...],
        masked: RingVector | NDArray[np.uint32],
        effects: list[Effect],
    ) -> None:
        """§6.7 — send chunk k of the masked input to peer k, then broadcast the header.

        One chunk per roster entry, whatever this peer's view: every peer cuts the vector
        alike, so a header or a chunk never fails to decode because views differ (views
        that differ make the consistency check abort, as in a broadcast round). Chunks of
        peers that are not dealers here are not sent: they are orphans (§6.7).
        """
        assert masked.dtype == np.uint32
        words: NDArray[np.uint32] = masked.view(np.uint32)
        bounds = chunk_bounds(self.params.vector_length, self.params.n)
        self._chunks = chunks = _Chunks(bounds=bounds, own=words)
        digests = []
        sends = []
        for owner, (start, stop) in enumerate(bounds):
            part = words[start:stop]
            if owner == self.me or owner not in self._dealers:
                digests.append(chunk_digest(part))
                if owner == self.me:
                    chunks.received[self.me] = (part, digests[-1])
                continue
            data = self._seal(MessageKind.MASKED_CHUNK, MaskedChunk(words=part).encode(), owner)
            # the header lists H(payload), which the envelope signs: no second hash
            digests.append(parse_envelope(data, max_payload=len(data)).payload_digest)
            sends.append(Send(owner, data, Phase.MASKED_INPUT))
        header = MaskedHeader(
            mask_set=mask_set,
            complaints=tuple(self._complaints[p] for p in sorted(self._complaints)),
            chunk_digests=tuple(digests),
        )
        own = _Input(header, b"")
        self._inputs[self.me] = own
        own.digest = self._enter(Phase.MASKED_INPUT, effects, header.encode(), sends).message_digest

    # ------------------------------------------------------------------ §6.3 MaskedInput

    def _on_masked_input(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        if source not in self._dealers:
            effects.append(MessageIgnored(source, "MaskedInput from a peer that dealt no shares"))
            return
        message: MaskedInput | MaskedHeader
        if self._chunks is not None:
            message = MaskedHeader.decode(envelope.payload, chunks=self.params.n)
        else:
            message = MaskedInput.decode(
                envelope.payload,
                vector_length=self.params.vector_length,
                ring_bits=self.params.ring_bits,
            )
        named = set(message.mask_set) | {c.accused for c in message.complaints}
        if any(p >= self.params.n or p == source for p in named):
            self._exclude(source, "MaskedInput names a peer outside the roster or itself", effects)
            return
        self._inputs[source] = _Input(message, envelope.message_digest)

    def _on_masked_chunk(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        chunks = self._chunks
        assert chunks is not None  # _dispatch ignores chunks in a broadcast round
        if source not in self._dealers:
            effects.append(MessageIgnored(source, "MaskedChunk from a peer that dealt no shares"))
            return
        start, stop = chunks.bounds[self.me]
        words = MaskedChunk.decode(envelope.payload, length=stop - start).words
        chunks.received[source] = (words, envelope.payload_digest)

    def _finish_masked_input(self, effects: list[Effect]) -> None:
        survivors = sorted(self._inputs)
        if self._short_of_threshold(len(survivors), "masked inputs arrived", survivors, effects):
            return
        view = ConsistencyCheck(
            advertised=tuple(
                (p, self._seen[(MessageKind.ADVERTISE_KEYS, p)]) for p in sorted(self._advertised)
            ),
            dealers=tuple((p, self._dealers[p].digest) for p in sorted(self._dealers)),
            inputs=tuple((p, self._inputs[p].digest) for p in survivors),
        )
        self._view = view
        self._confirmed = {self.me}
        chunks = self._chunks
        if chunks is not None:
            message = self._chunk_sum(effects)
            # the replay inside _enter may abort (and drop the chunk state): keep a reference
            chunks.sums[self.me] = (
                message,
                self._enter(Phase.CHUNK_SUM, effects, message.encode_parts()).message_digest,
            )
            return
        self._enter(Phase.CONSISTENCY_CHECK, effects, view.encode())

    # ------------------------------------------------------------------ §6.7 ChunkSum

    def _chunk_sum(self, effects: list[Effect]) -> ChunkSum:
        """§6.7 — sum this peer's chunk over the included inputs its view determines."""
        chunks = self._chunks
        assert chunks is not None
        included = self._agree(effects).included
        chunks.included = included
        chunks.orphans = tuple(o for o in range(self.params.n) if o not in self._inputs)
        start, stop = chunks.bounds[self.me]
        missing = []
        for p in included:
            received = chunks.received.get(p)
            header = self._inputs[p].message
            assert isinstance(header, MaskedHeader)
            if received is None or not digests_equal(received[1], header.chunk_digests[self.me]):
                missing.append(p)
        orphans = []
        if self.me in included and chunks.own is not None:
            for owner in chunks.orphans:
                a, b = chunks.bounds[owner]
                orphans.append((owner, chunks.own[a:b]))
        high_bytes = sum_high_bytes(self.params.n)
        if missing:
            message = ChunkSum.from_sums(
                missing=tuple(missing),
                sums=np.zeros(0, dtype=np.uint64),
                orphans=tuple(orphans),
                high_bytes=high_bytes,
            )
        else:  # split as summed, a block at a time: no 8-byte sums of the whole chunk
            message = ChunkSum.summing(
                parts=[chunks.received[p][0] for p in included],
                length=stop - start,
                orphans=tuple(orphans),
                high_bytes=high_bytes,
            )
        chunks.received = {}  # summed: only the orphans' chunks are needed again
        return message

    def _on_chunk_sum(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        chunks = self._chunks
        if chunks is None or source not in self._inputs:
            effects.append(MessageIgnored(source, "ChunkSum from a peer outside my survivor set"))
            return
        start, stop = chunks.bounds[source]
        lengths = {owner: b - a for owner, (a, b) in enumerate(chunks.bounds) if owner != source}
        message = ChunkSum.decode(
            envelope.payload,
            length=stop - start,
            orphans=lengths,
            high_bytes=sum_high_bytes(self.params.n),
        )
        theirs = tuple(o for o, _ in message.orphans)
        mine = chunks.orphans if source in chunks.included else ()
        if theirs != mine:
            # its survivor set (or included set) differs from mine: its view will too, and
            # a differing view means no agreement — no blame, the network may have split
            self._abort(
                f"peer {source} published parts of orphaned chunks {format_peers(theirs)}, "
                f"I expected {format_peers(mine)}: our survivor sets differ",
                effects,
            )
            return
        chunks.sums[source] = (message, envelope.message_digest)

    def _finish_chunk_sum(self, effects: list[Effect]) -> None:
        """§6.7 — assemble the masked total from the owners' sums; compute this peer's checks."""
        chunks = self._chunks
        assert chunks is not None
        included = chunks.included  # fixed with the view at MASKED_INPUT close
        own = chunks.own
        assert own is not None
        if not included:  # |I| < T is refused at CONSISTENCY_CHECK close; nothing to sum here
            self._abort("no included input to sum (§6.4)", effects)
            return
        top = len(included) - 1  # Σ of |I| words < 2^32 is at most top·2^32 + (2^32 − |I|)
        sums: list[ChunkSum] = []  # exact, per chunk, for the checks (low and high parts)
        digests = []
        for owner, (start, stop) in enumerate(chunks.bounds):
            if owner in self._inputs:
                record = chunks.sums.get(owner)
                if record is None:
                    self._abort(f"chunk owner {owner} sent no ChunkSum", effects)
                    return
                message, digest = record
                if message.missing:
                    self._abort(
                        f"chunk owner {owner} lacks the chunks of {format_peers(message.missing)}",
                        effects,
                    )
                    return
                above = (message.high > top) | (
                    (message.high == top) & (message.low > np.uint32(0xFFFFFFFF - top))
                )
                if above.any():
                    self._exclude(owner, "ChunkSum above |I|·(2^32 − 1)", effects)
                    self._abort(f"chunk owner {owner} published impossible sums", effects)
                    return
                del above
                chunk = message
                digests.append((owner, digest))
            else:
                parts = []
                for p in included:  # an orphaned chunk: every included peer sent its part
                    part = self._orphan_part(p, owner)
                    if part is None:
                        self._abort(
                            f"peer {p} did not publish its part of orphaned chunk {owner}", effects
                        )
                        return
                    parts.append(part)
                # summed here as an owner sums (2-byte high parts: any roster size fits)
                chunk = ChunkSum.summing(parts=parts, length=stop - start, orphans=(), high_bytes=2)
            sums.append(chunk)
        key = sha256(
            b"mpc-agg/secagg/chunk-checks/v1",
            self._info(b"chunk-checks"),
            *(o.to_bytes(2, "big") + d for o, d in digests),
        )
        mine, expected = _chunk_checks(key, chunks.bounds, own, sums)
        # checked: this peer's masked input is needed no more, and its buffer takes the
        # masked total (mod 2^32: the cast keeps the low 32 bits), not a new one
        for (start, stop), chunk in zip(chunks.bounds, sums, strict=True):
            own[start:stop] = chunk.low
        chunks.masked_total = own
        chunks.sums = {}
        chunks.expected = expected
        chunks.own = None
        chunks.checks[self.me] = mine
        assert self._view is not None
        self._view = replace(self._view, chunk_sums=tuple(digests))
        self._enter(Phase.CONSISTENCY_CHECK, effects, replace(self._view, checks=mine).encode())

    def _orphan_part(self, peer: int, owner: int) -> NDArray[np.uint32] | None:
        """``peer``'s part of the orphaned chunk of ``owner``, checked against its header."""
        chunks = self._chunks
        assert chunks is not None
        if peer == self.me:
            a, b = chunks.bounds[owner]
            return None if chunks.own is None else chunks.own[a:b]
        sent = chunks.sums.get(peer)
        if sent is None:
            return None
        part = dict(sent[0].orphans).get(owner)
        header = self._inputs[peer].message
        assert isinstance(header, MaskedHeader)
        if part is None or not digests_equal(chunk_digest(part), header.chunk_digests[owner]):
            return None
        return part

    # ------------------------------------------------------------------ §6.4 ConsistencyCheck

    def _on_consistency_check(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        view = ConsistencyCheck.decode(envelope.payload)
        if source not in self._inputs:
            effects.append(MessageIgnored(source, "view from a peer outside my survivor set"))
            return
        assert self._view is not None
        chunks = self._chunks
        if chunks is None and view.checks:
            raise DecodeError("chunk checks in a broadcast round")
        if chunks is not None and len(view.checks) != CHECKS_PER_CHUNK * len(chunks.bounds):
            raise DecodeError(f"{len(view.checks)} chunk checks, expected 3 per chunk")
        if view.same_view(self._view):
            self._confirmed.add(source)
            if chunks is not None:
                chunks.checks[source] = view.checks
            return
        self._abort(
            f"peer {source} reports a different view ({_describe_difference(self._view, view)}); "
            f"honest peers must agree before anything is unmasked",
            effects,
        )

    def _finish_consistency_check(self, effects: list[Effect]) -> None:
        confirmed = sorted(self._confirmed)
        if self._short_of_threshold(len(confirmed), "peers confirmed the view", confirmed, effects):
            return
        agreement = self._agree(effects)
        if self._short_of_threshold(
            len(agreement.included), "inputs can be included", agreement.included, effects
        ):
            return
        if self._chunks is not None and not self._chunks_verified(agreement.included, effects):
            return
        self._agreement = agreement
        reveals: list[RevealedShare] = []
        for owner in agreement.included:
            if owner in self._held_self_mask:
                value = self._held_self_mask[owner]
                reveals.append(RevealedShare(owner=owner, kind=ShareKind.SELF_MASK, value=value))
        for owner in agreement.dropped_dealers:
            if owner in self._held_mask_key:
                value = self._held_mask_key[owner]
                reveals.append(RevealedShare(owner=owner, kind=ShareKind.MASK_KEY, value=value))
        # §6.5 never both: the two owner sets are disjoint by construction; check anyway.
        for share in reveals:
            if self._revealed.setdefault(share.owner, share.kind) is not share.kind:
                raise AssertionError("refusing to reveal both kinds of share for one owner")
        for share in reveals:
            self._pool.setdefault((share.kind, share.owner), {})[self.me + 1] = share.value
        plaintext = encode_revealed(reveals)
        ciphertexts = []
        for peer in sorted(self._confirmed - {self.me} - set(agreement.guilty)):
            info = self._info(b"unmask-ad", self.me, peer)
            key = self._channel_key(b"unmask", self.me, peer, self._channel_secret(peer))
            ciphertexts.append((peer, aead_encrypt(key, plaintext, info)))
        self._enter(Phase.UNMASK, effects, Unmask(ciphertexts=tuple(ciphertexts)).encode())

    def _chunks_verified(self, included: tuple[int, ...], effects: list[Effect]) -> bool:
        """§6.7 — every owner's sum must match the included peers' checks before any reveal."""
        chunks = self._chunks
        assert chunks is not None
        assert chunks.expected is not None
        acc = np.zeros_like(chunks.expected)
        for p in included:
            checks = chunks.checks.get(p)
            if checks is None:
                self._abort(
                    f"peer {p}'s chunk checks are missing (it did not confirm the view); "
                    "the chunk sums cannot be verified",
                    effects,
                )
                return False
            np.add(acc, np.array(checks, dtype=np.uint64).reshape(acc.shape), out=acc)
        for owner in range(self.params.n):
            if owner in self._inputs and not np.array_equal(acc[owner], chunks.expected[owner]):
                self._abort(
                    f"the chunk sum of owner {owner} does not match the included peers' checks",
                    effects,
                )
                return False
        return True

    def _agree(self, effects: list[Effect]) -> _Agreement:
        """§6.4 — derive the included set deterministically from the agreed view."""
        guilty: dict[int, str] = {}
        for complainer in sorted(self._inputs):
            for complaint in self._inputs[complainer].message.complaints:
                culprit, reason = self._judge(complainer, complaint)
                guilty.setdefault(culprit, reason)
        for peer, reason in guilty.items():
            self._exclude(peer, reason, effects)
        candidates = [p for p in sorted(self._inputs) if p not in guilty]
        sets = {p: set(self._inputs[p].message.mask_set) for p in candidates}
        self._not_included = {}
        for p in list(candidates):
            strangers = sets[p] - set(self._dealers)
            if strangers:
                self._not_included[p] = (
                    f"masked with peers outside the view {format_peers(list(strangers))}"
                )
        candidates = [p for p in candidates if p not in self._not_included]
        for u in candidates:
            missing = [v for v in candidates if u in sets[v] and v not in sets[u]]
            if missing:
                self._not_included[u] = (
                    f"did not mask with {format_peers(missing)} although they masked with it"
                )
        included = tuple(p for p in candidates if p not in self._not_included)
        dropped = (
            sorted(set().union(*(sets[p] for p in included)) - set(included)) if included else []
        )
        return _Agreement(included=included, dropped_dealers=tuple(dropped), guilty=guilty)

    def _judge(self, complainer: int, complaint: Complaint) -> tuple[int, str]:
        """§6.3 — decide a complaint publicly: return (the guilty peer, the reason)."""
        accused = complaint.accused
        dealer = self._dealers.get(accused)
        if dealer is None or accused not in self._advertised:
            return complainer, f"complaint against {accused}, who dealt no shares in the view"
        context = self._info(b"complaint", complainer, accused)
        if not verify_dleq(
            self._advertised[complainer].encryption_key,
            self._advertised[accused].encryption_key,
            complaint.shared_point,
            complaint.proof,
            context,
        ):
            return complainer, f"complaint against {accused} with an invalid proof"
        ciphertext = dealer.message.ciphertext_for(complainer)
        if ciphertext is None:
            return complainer, f"complaint against {accused} about a share never sent"
        secret = complaint.shared_point[1:33]
        key = self._channel_key(b"share-keys", accused, complainer, secret)
        info = self._info(b"share-keys-ad", accused, complainer)
        guilty_reason = f"dealt an invalid share to {complainer} (verified complaint)"
        try:
            mask_share, self_share = decode_share_plaintext(aead_decrypt(key, ciphertext, info))
        except (VerificationError, DecodeError):
            return accused, guilty_reason
        x = complainer + 1
        valid = verify_share(dealer.mask_key_commitments.decoded(), x, mask_share) and verify_share(
            dealer.self_mask_commitments.decoded(), x, self_share
        )
        if valid:
            return complainer, f"false complaint against {accused} (the share is valid)"
        return accused, guilty_reason

    # ------------------------------------------------------------------ §6.5 Unmask

    def _on_unmask(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        if source not in self._confirmed:
            effects.append(
                MessageIgnored(source, "Unmask from a peer that did not confirm my view")
            )
            return
        message = Unmask.decode(envelope.payload)
        ciphertext = message.ciphertext_for(self.me)
        if ciphertext is None:
            return
        info = self._info(b"unmask-ad", source, self.me)
        key = self._channel_key(b"unmask", source, self.me, self._channel_secret(source))
        try:
            shares = decode_revealed(aead_decrypt(key, ciphertext, info))
        except VerificationError:
            self._exclude(source, "Unmask ciphertext to me does not decrypt", effects)
            return
        assert self._agreement is not None
        included = set(self._agreement.included)
        dropped = set(self._agreement.dropped_dealers)
        for share in shares:
            expected = (
                ShareKind.SELF_MASK
                if share.owner in included
                else ShareKind.MASK_KEY
                if share.owner in dropped
                else None
            )
            if share.kind is not expected:
                self._exclude(
                    source,
                    f"revealed a {share.kind.name} share of {share.owner}, "
                    "which the agreed view does not call for",
                    effects,
                )
                return
        for share in shares:
            self._pool.setdefault((share.kind, share.owner), {})[source + 1] = share.value

    def _finish_unmask(self, effects: list[Effect]) -> None:
        agreement = self._agreement
        assert agreement is not None
        terms: list[MaskTerm] = []
        seeds: list[int] = []
        for owner in agreement.included:
            seed = self._reconstruct(ShareKind.SELF_MASK, owner, effects)
            if seed is None:
                return
            seeds.append(seed)
            terms.append(MaskTerm(self._self_mask_key(owner, seed), -1))
        for owner in agreement.dropped_dealers:
            scalar = self._reconstruct(ShareKind.MASK_KEY, owner, effects)
            if scalar is None:
                return
            key = AgreementKey(scalar)
            for u in agreement.included:
                if owner in self._inputs[u].message.mask_set:
                    secret = key.exchange(self._advertised[u].mask_key)
                    terms.append(MaskTerm(self._pair_mask_key(u, owner, secret), -_gamma(u, owner)))
        wide: RingVector | None = None
        words: RingVector | NDArray[np.uint32]
        if self._chunks is not None:  # §6.7: the verified chunk sums, mod 2^32
            assert self._chunks.masked_total is not None
            words = self._chunks.masked_total
            self._chunks = None
            apply_masks(words, terms)
        else:
            words, wide = self._unmasked_sum(agreement.included, terms)
        self._result_digest = result_digest(agreement.included, words, seeds)
        # b = 32: sign-extended to 64-bit words, as lift() reads them (§6.6)
        if wide is not None:
            self._total = widen32_in_place(wide)
        elif words.dtype == np.uint32:
            self._total = words.view(np.int32).astype(np.int64).view(np.uint64)
        else:
            self._total = words.view(np.uint64)
        del words, wide
        self._peer_digests = {}
        self._enter(
            Phase.CONFIRM_RESULT, effects, ResultDigest(digest=self._result_digest).encode()
        )

    def _unmasked_sum(
        self, included: tuple[int, ...], terms: Sequence[MaskTerm]
    ) -> tuple[RingVector | NDArray[np.uint32], RingVector | None]:
        """§6.5 — Σ_{u ∈ I} y_u minus the masks, in one pass; the masked vectors are released.

        Returns the sum in the round's ring and, when b = 32 and the sum was taken in the
        first half of a new 64-bit array, that array, for :func:`widen32_in_place` once the
        digest is taken (no second L-entry array). The sum and the unmasking are one chunk
        by chunk pass (:func:`apply_masks` with ``sources``), in place in a received vector
        when the transport handed over a writable buffer (``peers.chunking``: a message
        reassembled from frames), else in that new array. Either way no masked vector
        outlives the sum, so they are never alive together with the 64-bit total (peak
        memory at large L).
        """
        vectors = []
        for u in included:
            message = self._inputs[u].message
            assert isinstance(message, MaskedInput)
            vectors.append(message.masked)
        for record in self._inputs.values():
            if isinstance(record.message, MaskedInput):
                record.message = replace(record.message, masked=record.message.masked[:0].copy())
        writable = [v for v in vectors if v.flags.writeable and v.flags.c_contiguous]
        if writable:
            words = writable[0]
            apply_masks(words, terms, sources=vectors)
            return words, None
        length = self.params.vector_length
        wide = np.empty(length, dtype=np.uint64)
        if not vectors:  # unreachable (|I| ≥ T ≥ 1), but never a total of uninitialised words
            wide.fill(0)
        if self.params.ring_bits == 64:
            apply_masks(wide, terms, sources=vectors)
            return wide, None
        apply_masks(wide.view(np.uint32)[:length], terms, sources=vectors)
        return wide.view(np.uint32)[:length], wide

    def _reconstruct(self, kind: ShareKind, owner: int, effects: list[Effect]) -> int | None:
        dealer = self._dealers[owner]
        commitments = (
            dealer.self_mask_commitments
            if kind is ShareKind.SELF_MASK
            else dealer.mask_key_commitments
        )
        shares = self._pool.get((kind, owner), {})
        try:
            recovery = recover(shares, commitments)
        except InsufficientSharesError as exc:
            self._blame_share_liars(kind, owner, exc.invalid_xs, effects)
            self._abort(f"cannot reconstruct the {kind.name} of peer {owner}: {exc}", effects)
            return None
        self._blame_share_liars(kind, owner, recovery.invalid_xs, effects)
        return recovery.secret

    def _blame_share_liars(
        self, kind: ShareKind, owner: int, invalid_xs: tuple[int, ...], effects: list[Effect]
    ) -> None:
        for x in invalid_xs:
            self._exclude(x - 1, f"revealed an invalid {kind.name} share of peer {owner}", effects)

    # ------------------------------------------------------------------ §6.6 ResultDigest

    def _on_result_digest(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        if source not in self._confirmed:
            effects.append(MessageIgnored(source, "ResultDigest from a peer outside the view"))
            return
        self._peer_digests[source] = ResultDigest.decode(envelope.payload).digest

    def _finish_confirm_result(self, effects: list[Effect]) -> None:
        agreement = self._agreement
        assert agreement is not None
        assert self._total is not None
        agreeing = tuple(
            sorted(
                p for p, d in self._peer_digests.items() if digests_equal(d, self._result_digest)
            )
        )
        disagreeing = tuple(sorted(set(self._peer_digests) - set(agreeing)))
        for peer in disagreeing:
            self._exclude(peer, "published a different result digest", effects)
        dropped: dict[int, str] = {}
        for peer in range(self.params.n):
            if peer in agreement.included or peer in self._excluded:
                continue
            dropped[peer] = self._drop_reason(peer)
        effects.append(
            AggregateReady(
                total=self._total,
                included=agreement.included,
                dropped=dropped,
                excluded=dict(self._excluded),
                result_digest=self._result_digest,
                confirmed_by=agreeing,
                disagreeing=disagreeing,
            )
        )
        self.phase = Phase.DONE

    def _drop_reason(self, peer: int) -> str:
        if peer not in self._advertised:
            return "no AdvertiseKeys before the deadline"
        if peer not in self._dealers:
            return "no ShareKeys before the deadline"
        if peer not in self._inputs:
            return "no MaskedInput before the deadline"
        return self._not_included.get(peer, "not included")


def _chunk_checks(
    key: bytes,
    bounds: Sequence[tuple[int, int]],
    own: NDArray[np.uint32],
    sums: Sequence[ChunkSum],
) -> tuple[tuple[int, ...], NDArray[np.uint64]]:
    """§6.7 — this peer's checks ⟨r_kj, y_k⟩ and the expected ⟨r_kj, S_k⟩, mod 2^64.

    r_kj = the first |chunk k| u64 words of AES-256-CTR(KDF(key, u16(k) ‖ u8(j))), for every
    chunk k and check j < 3; ``sums[k]`` = S_k, the exact sums of chunk k. Returns (own
    checks, chunk-major; expected, shape (m, 3)). The r_kj are expanded block by block
    (memory O(block) at any L), the exact sums rebuilt from their low and high parts a block
    at a time (:meth:`ChunkSum.exact`), and the inner products taken by ``einsum``, which
    wraps mod 2^64 as ``dot`` does and is faster on integers.
    """
    m = len(bounds)
    mask = (1 << 64) - 1
    mine = np.zeros((m, CHECKS_PER_CHUNK), dtype=np.uint64)
    expected = np.zeros((m, CHECKS_PER_CHUNK), dtype=np.uint64)
    for k, (start, stop) in enumerate(bounds):
        streams = [
            keystream_blocks(
                derive_key(
                    key, info=b"mpc-agg/secagg/chunk-check/v1" + k.to_bytes(2, "big") + bytes([j])
                ),
                stop - start,
            )
            for j in range(CHECKS_PER_CHUNK)
        ]
        ours = [0] * CHECKS_PER_CHUNK
        theirs = [0] * CHECKS_PER_CHUNK
        for offset in range(start, stop, CHUNK_WORDS):
            end = min(offset + CHUNK_WORDS, stop)
            y = own[offset:end].astype(np.uint64)
            s = sums[k].exact(offset - start, end - start)
            for j, stream in enumerate(streams):
                r = next(stream)
                ours[j] += int(np.einsum("i,i->", r, y))
                theirs[j] += int(np.einsum("i,i->", r, s))
        mine[k] = [v & mask for v in ours]
        expected[k] = [v & mask for v in theirs]
    return tuple(int(v) for v in mine.ravel()), expected


def _gamma(u: int, v: int) -> int:
    """§6.3 — sign of the pairwise mask between u and v in u's masked input."""
    return 1 if u < v else -1


def result_digest(
    included: tuple[int, ...], words: RingVector | NDArray[np.uint32], seeds: list[int]
) -> bytes:
    """§6.6 — keyed digest of the included set and the aggregate, in the round's b-bit words.

    The key is derived from the reconstructed self-mask seeds of the included peers, which
    only peers learn (they travel encrypted), so the broker cannot test guesses of a
    low-entropy aggregate against the published digest. ``words`` are uint32 in a Z_2^32
    round (half the bytes to MAC), uint64 otherwise.
    """
    if words.dtype not in (np.uint32, np.uint64) or words.ndim != 1:
        raise ValueError("the total must be a 1-D vector of uint32 or uint64 words")
    key = sha256(b"mpc-agg/secagg/result-key/v1", *(encode_scalar(s) for s in seeds))
    header = Writer().raw(b"mpc-agg/secagg/result/v3")
    header.seq(included, len(included), Writer.u16).u8(8 * words.itemsize).u64(words.shape[0])
    little = words.astype(words.dtype.newbyteorder("<"), copy=False)
    return blake3_mac(key, header.getvalue(), little.view(np.uint8).data)


def _describe_difference(mine: ConsistencyCheck, theirs: ConsistencyCheck) -> str:
    parts = []
    for label, a, b in (
        ("advertised keys", dict(mine.advertised), dict(theirs.advertised)),
        ("dealers", dict(mine.dealers), dict(theirs.dealers)),
        ("inputs", dict(mine.inputs), dict(theirs.inputs)),
    ):
        only_mine = sorted(set(a) - set(b))
        only_theirs = sorted(set(b) - set(a))
        differ = sorted(p for p in set(a) & set(b) if a[p] != b[p])
        if only_mine:
            parts.append(f"{label} only I have {format_peers(only_mine)}")
        if only_theirs:
            parts.append(f"{label} only they have {format_peers(only_theirs)}")
        if differ:
            parts.append(f"{label} with different digests {format_peers(differ)}")
    return "; ".join(parts) or "identical sets"
