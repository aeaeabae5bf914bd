"""The ``robust`` state machine (SPEC.md in this folder; section numbers refer to it).

Invariants this module maintains (each has a test in ``tests/protocol/robust``):

* Sans-I/O: inputs are :meth:`RobustMachine.begin`, :meth:`~RobustMachine.receive` and
  :meth:`~RobustMachine.deadline`; outputs are :mod:`protocols.common` effects.
* A remote peer's bad bytes never raise out of the machine: they become
  ``MessageIgnored`` (unattributable) or ``PeerExcluded`` (signed, hence attributable).
* Every broadcast carries the sender's view of the previous phase (the digests of the
  broadcasts it accepted); a different view aborts the round (§4.4), so every decision —
  challenges, disputes, the accepted set, the output check — is a function of messages
  all honest peers hold.
* A holder's share is published only when the dealer or the holder is provably
  deviating (a dispute, §6.7): an honest pair never publishes anything about a share
  beyond its verifier values, whose reconstruction is zero-knowledge (§6.5).
* The output is accepted only from holders whose aggregate share is consistent with at
  least t + 1 honest holders (§6.8–§6.10): a wrong share is detected, never decoded into
  a wrong aggregate.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from mpc_agg import field as gf
from mpc_agg import normproof
from mpc_agg.codec import Writer
from mpc_agg.crypto import (
    AgreementKey,
    SigningKey,
    aead_decrypt,
    aead_encrypt,
    blake3_256,
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
from mpc_agg.errors import DecodeError, ProtocolMisuseError, VerificationError
from mpc_agg.randomness import RandomSource
from mpc_agg.ring import RingVector, check_ring_vector
from mpc_agg.shares import DealtShares, deal, evaluation_matrix, expand_seed
from protocols.admission import Action, Equivocated, admit, not_routed
from protocols.common import (
    AggregateReady,
    Broadcast,
    Effect,
    MessageIgnored,
    PeerExcluded,
    PhaseStarted,
    RoundAborted,
    Send,
    format_peers,
)
from protocols.robust.messages import (
    SECRET_SIZE,
    Advertise,
    Agree,
    Challenge,
    Confirm,
    DealInput,
    DealProof,
    Dispute,
    Output,
    OutputVerify,
    Reveal,
    ShareForm,
    SharePayload,
    ShareStatus,
    Verify,
    VerifyEntry,
)
from protocols.robust.params import RobustParams
from protocols.robust.phases import ACTIVE_PHASES, MessageKind, Phase

FieldVector = NDArray[np.uint64]


def _action(phase: Phase, kind: MessageKind) -> Action:
    if phase in (Phase.DONE, Phase.ABORTED):
        return Action.FINISHED
    if phase == Phase.IDLE or kind.phase > phase:
        return Action.BUFFER
    # A private share is still taken one phase later: it is opened when that phase closes.
    if kind.phase == phase or (kind.private and phase == kind.phase + 1):
        return Action.PROCESS
    return Action.LATE


#: §4.2 — the complete transition table: every (phase, message kind) pair.
TRANSITIONS: Mapping[tuple[Phase, MessageKind], Action] = {
    (phase, kind): _action(phase, kind) for phase in Phase for kind in MessageKind
}

_STAGE_INPUT = 1
_STAGE_PROOF = 2
#: Envelope overhead allowance on top of the largest vector message.
_PAYLOAD_SLACK = 1 << 20


@dataclass(slots=True)
class _Dealing:
    """A dealer's own sharing of one stage: recomputable shares (O(d) memory), salts."""

    secret: FieldVector = field(repr=False)
    dealt: DealtShares = field(repr=False)
    salts: dict[int, bytes] = field(repr=False)
    extra: bytes = field(repr=False, default=b"")


@dataclass(slots=True)
class _Opened:
    """What this holder got from one dealer in one stage."""

    status: ShareStatus
    vector: FieldVector | None = field(default=None, repr=False)
    extra: bytes = field(default=b"", repr=False)


@dataclass(slots=True)
class _Resolution:
    """Per dealer after §6.7: its verifier (or why none), and which holders it was checked by."""

    verifier: FieldVector | None = None
    reason: str = ""
    checked_by: set[int] = field(default_factory=set)
    blame: bool = False
    stalled: bool = False  # a live, answering dealer short of confirmations: abort (§6.7)


class RobustMachine:
    """One peer's ``robust`` round (DESIGN §5.2; SPEC §4–§7).

    ``me`` is this peer's roster index; ``signing_key`` its long-term Ed25519 key;
    ``randomness`` supplies every random choice.
    """

    def __init__(
        self,
        params: RobustParams,
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
        self.shape = params.shape
        self.me = me
        self.phase = Phase.IDLE
        self._t = params.threshold
        self._d = params.vector_length
        self._signing_key = signing_key
        self._rng = randomness
        self._context = EnvelopeContext(
            protocol=params.protocol_id,
            federation=params.federation,
            roster_digest=params.roster.digest,
            round_id=params.round_id,
        )
        self._max_payload = (params.n + 2) * 8 * (
            self.shape.input_length + self.shape.proof_length + 8
        ) + _PAYLOAD_SLACK
        self._seen: dict[tuple[MessageKind, int], bytes] = {}
        self._buffer: dict[MessageKind, dict[int, Envelope]] = {k: {} for k in MessageKind}
        self._handled: set[tuple[MessageKind, int]] = set()
        self._live: dict[Phase, dict[int, bytes]] = {}
        self._previous = Phase.IDLE
        self._excluded: dict[int, str] = {}
        self._drop_reasons: dict[int, str] = {}
        # own secrets (§6.1)
        self._encryption_key: AgreementKey | None = None
        self._nonces: list[bytes] = []
        self._x: NDArray[np.int64] | None = None
        self._dealings: dict[int, _Dealing] = {}
        self._holder_points: list[int] = []
        self._withdrawn_reason = ""
        # what others sent
        self._advertised: dict[int, Advertise] = {}
        self._channel_secrets: dict[int, bytes] = {}
        self._deal_input: dict[int, DealInput] = {}
        self._deal_proof: dict[int, DealProof] = {}
        self._private: dict[int, dict[int, bytes]] = {_STAGE_INPUT: {}, _STAGE_PROOF: {}}
        self._opened: dict[int, dict[int, _Opened]] = {_STAGE_INPUT: {}, _STAGE_PROOF: {}}
        self._revealed_nonces: dict[int, dict[int, bytes]] = {0: {}, 1: {}, 2: {}}
        self._wrap_seed = b""
        self._verifier: normproof.Verifier | None = None
        self._verify: dict[int, Verify] = {}
        self._disputes: dict[int, Dispute] = {}
        self._accepted: tuple[int, ...] = ()
        self._output_key = b""
        self._output_ciphertexts: dict[int, bytes | memoryview] = {}
        self._output_shares: dict[int, FieldVector] = {}
        self._output_seed = b""
        self._output_verify: dict[int, OutputVerify] = {}
        self._output_disputes: dict[int, Dispute] = {}
        self._total: NDArray[np.int64] | None = None
        self._result_digest = b""
        self._peer_digests: dict[int, bytes] = {}
        self._handlers: dict[MessageKind, Callable[[int, Envelope, list[Effect]], None]] = {
            MessageKind.ADVERTISE: self._on_advertise,
            MessageKind.DEAL_INPUT: self._on_deal_input,
            MessageKind.INPUT_SHARE: self._on_private_share,
            MessageKind.WRAP_CHALLENGE: self._on_challenge,
            MessageKind.DEAL_PROOF: self._on_deal_proof,
            MessageKind.PROOF_SHARE: self._on_private_share,
            MessageKind.QUERY_CHALLENGE: self._on_challenge,
            MessageKind.QUERY_AGREE: self._on_agree,
            MessageKind.OUTPUT_AGREE: self._on_agree,
            MessageKind.CHECK_AGREE: self._on_agree,
            MessageKind.VERIFY: self._on_verify,
            MessageKind.DISPUTE: self._on_dispute,
            MessageKind.OUTPUT: self._on_output,
            MessageKind.OUTPUT_CHALLENGE: self._on_challenge,
            MessageKind.OUTPUT_VERIFY: self._on_output_verify,
            MessageKind.OUTPUT_DISPUTE: self._on_dispute,
            MessageKind.CONFIRM: self._on_confirm,
        }
        self._finishers: dict[Phase, Callable[[list[Effect]], None]] = {
            Phase.ADVERTISE: self._finish_advertise,
            Phase.DEAL_INPUT: self._finish_deal_input,
            Phase.WRAP_CHALLENGE: self._finish_wrap_challenge,
            Phase.DEAL_PROOF: self._finish_deal_proof,
            Phase.QUERY_CHALLENGE: self._finish_query_challenge,
            Phase.QUERY_AGREE: self._finish_query_agree,
            Phase.OUTPUT_AGREE: self._finish_output_agree,
            Phase.CHECK_AGREE: self._finish_check_agree,
            Phase.VERIFY: self._finish_verify,
            Phase.DISPUTE: self._finish_dispute,
            Phase.OUTPUT: self._finish_output,
            Phase.OUTPUT_CHALLENGE: self._finish_output_challenge,
            Phase.OUTPUT_VERIFY: self._finish_output_verify,
            Phase.OUTPUT_DISPUTE: self._finish_output_dispute,
            Phase.CONFIRM: self._finish_confirm,
        }

    def __repr__(self) -> str:
        return f"RobustMachine(me={self.me}, round={self.params.round_id}, phase={self.phase.name})"

    # ------------------------------------------------------------------ inputs

    def begin(self, update: RingVector) -> list[Effect]:
        """§6.1 — start with this peer's encoded update (two's complement ring words).

        Raises :class:`~mpc_agg.normproof.NormBoundError` if the update's L2 norm on the
        grid exceeds the round's bound B: it could never be accepted.
        """
        if self.phase != Phase.IDLE:
            raise ProtocolMisuseError(f"begin() called in phase {self.phase.name}; once per round")
        check_ring_vector(update, length=self._d, name="update")
        x = update.view(np.int64).copy()
        self._check_input(x)
        self._x = x
        self._encryption_key = AgreementKey.generate(self._rng)
        self._nonces = [self._rng.random_bytes(SECRET_SIZE) for _ in range(3)]
        advertise = Advertise(
            encryption_key=self._encryption_key.public,
            nonce_commitments=tuple(
                self._nonce_commitment(self.me, k, nonce) for k, nonce in enumerate(self._nonces)
            ),
        )
        self._advertised[self.me] = advertise
        effects: list[Effect] = []
        self._enter(Phase.ADVERTISE, effects, advertise.encode())
        self._drive(effects)
        return effects

    def _check_input(self, x: NDArray[np.int64]) -> None:
        """§6.1 — refuse an input that could never be accepted (an adversary skips this)."""
        bound = self.params.norm_bound
        # min/max, not abs: np.abs(INT64_MIN) is negative
        outside = x.size and (int(x.max()) > bound or int(x.min()) < -bound)
        if outside or normproof.squared_norm(x) > bound**2:
            raise normproof.NormBoundError(
                f"the update's L2 norm on the grid exceeds the round's bound B={bound}"
            )

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
        if phase == self.phase and phase in ACTIVE_PHASES:
            self._finishers[phase](effects)
            self._drive(effects)
        return effects

    @property
    def finished(self) -> bool:
        """True once the round produced AggregateReady or RoundAborted."""
        return self.phase in (Phase.DONE, Phase.ABORTED)

    @property
    def accepted(self) -> tuple[int, ...]:
        """§6.7 — the dealers whose inputs are summed (empty before DISPUTE closes)."""
        return self._accepted

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
            max_payload=self._max_payload,
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
        self._handled.add((kind, source))
        try:
            self._handlers[kind](source, envelope, effects)
        except DecodeError as exc:
            self._exclude(source, f"malformed {kind.name}: {exc}", effects)

    def _enter(
        self,
        phase: Phase,
        effects: list[Effect],
        payload: bytes,
        sends: Sequence[tuple[int, bytes]] = (),
    ) -> None:
        """Enter ``phase``: broadcast its message and private sends, then replay buffered ones."""
        if self.phase != Phase.IDLE:
            self._previous = self.phase
        self.phase = phase
        self._handled = set()
        effects.append(PhaseStarted(phase))
        kind = _BROADCAST_KIND[phase]
        private = _PRIVATE_KIND.get(phase)
        # Private shares go out before the broadcast that announces them: a broker keeps
        # one publisher's order, so a holder has the share when the announcement arrives.
        for recipient, body in sends:
            assert private is not None
            effects.append(Send(recipient, self._seal(private, body, recipient), phase))
        data = self._seal(kind, payload, BROADCAST)
        digest = parse_envelope(data, max_payload=self._max_payload).message_digest
        self._seen[(kind, self.me)] = digest
        self._live[phase] = {self.me: digest}
        effects.append(Broadcast(data, phase))
        for buffered_kind in (kind, private):
            if buffered_kind is None:
                continue
            pending = sorted(self._buffer[buffered_kind].items())
            self._buffer[buffered_kind].clear()
            for source, envelope in pending:
                self._dispatch(buffered_kind, source, envelope, effects)
                if self.finished or self.phase != phase:
                    return

    def _drive(self, effects: list[Effect]) -> None:
        """Close every phase whose expected messages have all been handled."""
        while self.phase in ACTIVE_PHASES and self._expected() <= self._handled:
            self._finishers[self.phase](effects)

    def _expected(self) -> set[tuple[MessageKind, int]]:
        """(kind, peer) pairs this machine still waits for in the current phase."""
        kind = _BROADCAST_KIND[self.phase]
        if self.phase == Phase.ADVERTISE:
            peers = set(range(self.params.n))
        else:
            peers = set(self._live.get(self._previous, {}))
        peers.discard(self.me)
        # Private shares are not waited for: a lost one makes this holder an erasure for
        # that dealer (§6.5) instead of holding the whole phase back to its deadline.
        return {(kind, p) for p in peers}

    def _seal(self, kind: MessageKind, payload: bytes, recipient: int) -> bytes:
        return seal_envelope(
            self._context,
            phase=kind.phase,
            kind=kind,
            sender=self.me,
            recipient=recipient,
            payload=payload,
            signing_key=self._signing_key,
        )

    def _exclude(self, peer: int, reason: str, effects: list[Effect]) -> None:
        if peer not in self._excluded and peer != self.me:
            self._excluded[peer] = reason
            effects.append(PeerExcluded(peer, reason, self.phase))

    def _abort(self, reason: str, effects: list[Effect]) -> None:
        effects.append(RoundAborted(reason, self.phase))
        self.phase = Phase.ABORTED
        self._x = None
        self._dealings.clear()

    def _live_or_abort(self, phase: Phase, effects: list[Effect]) -> list[int] | None:
        """§7 — the peers live in ``phase``; abort when fewer than 2t + 1."""
        live = sorted(self._live.get(phase, {}))
        needed = 2 * self._t + 1
        if len(live) < needed:
            self._abort(
                f"only {len(live)} peers live in {phase.name} {format_peers(live)}; "
                f"robust needs 2t+1 = {needed}",
                effects,
            )
            return None
        return live

    def _view(self, phase: Phase) -> bytes:
        """§4.4 — digest of the broadcasts accepted in ``phase``."""
        w = Writer().raw(b"mpc-agg/robust/view/v1\x00").u8(phase)
        items = sorted(self._live.get(phase, {}).items())
        w.seq(items, len(items), lambda w, pd: w.u16(pd[0]).fixed(pd[1], 32))
        return sha256(w.getvalue())

    def _accept_broadcast(
        self, source: int, envelope: Envelope, view: bytes, effects: list[Effect]
    ) -> bool:
        """§4.4 — a broadcast counts if its sender was live and it shares our view."""
        if source not in self._live.get(self._previous, {}):
            effects.append(MessageIgnored(source, f"not live in {self._previous.name}"))
            return False
        if not digests_equal(view, self._view(self._previous)):
            self._abort(
                f"peer {source} reports a different view of {self._previous.name}; "
                "honest peers must agree on every message before they go on",
                effects,
            )
            return False
        self._live[self.phase][source] = envelope.message_digest
        return True

    # ------------------------------------------------------------------ domain separation

    def _info(self, label: bytes, *values: int) -> bytes:
        w = Writer().raw(b"mpc-agg/robust/" + label + b"\x00")
        w.text(self.params.protocol_id, MAX_PROTOCOL_LEN).text(self.params.federation, 128)
        w.fixed(self.params.roster.digest, 32).u64(self.params.round_id)
        for v in values:
            w.u16(v)
        return w.getvalue()

    def _nonce_commitment(self, peer: int, index: int, nonce: bytes) -> bytes:
        return sha256(self._info(b"nonce", peer, index), nonce)

    def _challenge_seed(self, label: bytes, index: int, view_phase: Phase) -> bytes:
        """§6.2 — H(label, context, view of the committed phase, revealed nonces)."""
        nonces = sorted(self._revealed_nonces[index].items())
        return sha256(
            self._info(b"challenge/" + label),
            self._view(view_phase),
            *(p.to_bytes(2, "big") + nonce for p, nonce in nonces),
        )

    def _channel_key(self, label: bytes, sender: int, recipient: int) -> bytes:
        peer = recipient if sender == self.me else sender
        secret = self._channel_secrets.get(peer)
        if secret is None:
            assert self._encryption_key is not None
            secret = self._encryption_key.exchange(self._advertised[peer].encryption_key)
            self._channel_secrets[peer] = secret
        return derive_key(secret, info=self._info(b"channel/" + label, sender, recipient))

    def _share_info(self, stage: int, dealer: int, holder: int) -> bytes:
        return self._info(b"share-seed", stage, dealer, holder)

    def _share_commitment(self, stage: int, dealer: int, holder: int, payload: bytes) -> bytes:
        """§6.1 — C_j = B(Info("share-commitment", s, dealer, j) ‖ payload_j), BLAKE3."""
        return blake3_256(self._info(b"share-commitment", stage, dealer, holder), payload)

    def _output_key_commitment(self, dealer: int, part: bytes) -> bytes:
        return sha256(self._info(b"output-key-part", dealer), part)

    def _length(self, stage: int) -> int:
        return self.shape.input_length if stage == _STAGE_INPUT else self.shape.proof_length

    # ------------------------------------------------------------------ §4.5 agreement gates

    @property
    def quorum(self) -> int:
        """§4.5 — q = ⌊(n + t)/2⌋ + 1: two quorums share more than t peers, so an honest one."""
        return (self.params.n + self._t) // 2 + 1

    def _enter_gate(self, gate: Phase, decided: Phase, effects: list[Effect]) -> None:
        """Announce this peer's view of ``decided`` before releasing what depends on it."""
        self._enter(gate, effects, Agree(view=self._view(decided)).encode())

    def _gate_passed(self, gate: Phase, decided: Phase, effects: list[Effect]) -> bool:
        """§4.5 — a quorum (and 2t + 1) confirmed our view of ``decided``; else abort.

        Every accepted Agree carries our view (a different one aborts on arrival), so the
        count is the number of peers — this one included — that hold the same messages.
        """
        confirmed = sorted(self._live.get(gate, {}))
        needed = max(self.quorum, 2 * self._t + 1)
        if len(confirmed) >= needed:
            return True
        self._abort(
            f"only {len(confirmed)} peers {format_peers(confirmed)} confirmed the view of "
            f"{decided.name}; a quorum of {needed} is needed before anything depending on it "
            "is published",
            effects,
        )
        return False

    def _on_agree(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        self._accept_broadcast(source, envelope, Agree.decode(envelope.payload).view, effects)

    # ------------------------------------------------------------------ §6.1 Advertise

    def _on_advertise(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = Advertise.decode(envelope.payload)
        parse_point(message.encryption_key)
        self._advertised[source] = message
        self._live[Phase.ADVERTISE][source] = envelope.message_digest

    def _finish_advertise(self, effects: list[Effect]) -> None:
        live = self._live_or_abort(Phase.ADVERTISE, effects)
        if live is None:
            return
        assert self._x is not None
        self._holder_points = [p + 1 for p in live]
        mask = gf.random_vector(self._rng, 1)
        secret = np.concatenate([gf.from_signed(self._x), mask])
        part = self._rng.random_bytes(SECRET_SIZE)
        payload, sends = self._deal_stage(_STAGE_INPUT, secret, part)
        message = DealInput(
            view=self._view(Phase.ADVERTISE),
            commitments=payload,
            output_key_commitment=self._output_key_commitment(self.me, part),
        )
        self._deal_input[self.me] = message
        self._enter(Phase.DEAL_INPUT, effects, message.encode(), sends)

    def _seeded_points(self) -> list[int]:
        """§6.1 — the t holders after the dealer (cyclically) receive seeds."""
        others = [x for x in self._holder_points if x != self.me + 1]
        after = [x for x in others if x > self.me + 1] + [x for x in others if x < self.me + 1]
        return after[: self._t]

    def _deal_stage(
        self, stage: int, secret: FieldVector, extra: bytes
    ) -> tuple[tuple[tuple[int, bytes], ...], list[tuple[int, bytes]]]:
        """§6.1 — share ``secret``; return the commitments and the encrypted private sends."""
        points = self._holder_points
        dealt = self._share(stage, secret)
        dealing = _Dealing(
            secret=secret,
            dealt=dealt,
            salts={x - 1: self._rng.random_bytes(SECRET_SIZE) for x in points},
            extra=extra,
        )
        self._dealings[stage] = dealing
        commitments: list[tuple[int, bytes]] = []
        sends: list[tuple[int, bytes]] = []
        label = b"input" if stage == _STAGE_INPUT else b"proof"
        for x in points:
            holder = x - 1
            encoded = self._payload(stage, holder).encode()
            commitments.append((holder, self._share_commitment(stage, self.me, holder, encoded)))
            if holder == self.me:
                self._opened[stage][self.me] = _Opened(
                    ShareStatus.OK, self._dealt_vector(stage, holder), extra
                )
                continue
            key = self._channel_key(label, self.me, holder)
            ad = self._info(label + b"-ad", self.me, holder)
            sends.append((holder, aead_encrypt(key, encoded, ad)))
        return tuple(commitments), sends

    def _share(self, stage: int, secret: FieldVector) -> DealtShares:
        """§6.1 — a fresh degree-t sharing of ``secret`` among the advertised holders.

        (A harness adversary overrides this to deal inconsistent shares.)
        """
        return deal(
            secret,
            points=self._holder_points,
            seeded=self._seeded_points(),
            degree=self._t,
            randomness=self._rng,
            info={x: self._share_info(stage, self.me, x - 1) for x in self._holder_points},
        )

    def _prove(self) -> FieldVector:
        """§6.3 — the validity proof of this peer's input (an adversary overrides it)."""
        assert self._x is not None
        return normproof.prove(self.shape, self._x, self._wrap(), self._rng)

    def _payload(self, stage: int, holder: int) -> SharePayload:
        """The plaintext this dealer sent (or would reveal for) ``holder`` in ``stage``."""
        dealing = self._dealings[stage]
        x = holder + 1
        if x in dealing.dealt.seeds:
            return SharePayload(
                salt=dealing.salts[holder],
                form=ShareForm.SEED,
                seed=dealing.dealt.seeds[x],
                extra=dealing.extra,
            )
        return SharePayload(
            salt=dealing.salts[holder],
            form=ShareForm.VECTOR,
            vector=dealing.dealt.vectors[x],
            extra=dealing.extra,
        )

    def _dealt_vector(self, stage: int, holder: int) -> FieldVector:
        info = self._share_info(stage, self.me, holder)
        return self._dealings[stage].dealt.vector(holder + 1, info, self._length(stage))

    # ------------------------------------------------------------------ §6.1 DealInput

    def _on_deal_input(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = DealInput.decode(envelope.payload)
        if not self._accept_broadcast(source, envelope, message.view, effects):
            return
        holders = [h for h, _ in message.commitments]
        if holders != [x - 1 for x in self._holder_points]:
            self._exclude(source, "DealInput commits to shares for other holders", effects)
            return
        self._deal_input[source] = message

    def _on_private_share(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        stage = _STAGE_INPUT if envelope.kind == MessageKind.INPUT_SHARE else _STAGE_PROOF
        self._private[stage][source] = bytes(envelope.payload)

    def _open(self, stage: int, dealer: int) -> _Opened:
        """§6.5 — decrypt and check this holder's share from ``dealer`` against its commitment."""
        ciphertext = self._private[stage].pop(dealer, None)
        if stage == _STAGE_INPUT:
            commitment = self._deal_input[dealer].commitment_for(self.me)
        else:
            commitment = self._deal_proof[dealer].commitment_for(self.me)
        if ciphertext is None or commitment is None:
            return _Opened(ShareStatus.MISSING)
        label = b"input" if stage == _STAGE_INPUT else b"proof"
        try:
            plaintext = aead_decrypt(
                self._channel_key(label, dealer, self.me),
                ciphertext,
                self._info(label + b"-ad", dealer, self.me),
            )
            payload = SharePayload.decode(plaintext, length=self._length(stage))
        except (VerificationError, DecodeError):
            return _Opened(ShareStatus.BAD)
        return self._check_payload(stage, dealer, self.me, plaintext, payload, commitment)

    def _check_payload(
        self,
        stage: int,
        dealer: int,
        holder: int,
        encoded: bytes,
        payload: SharePayload,
        commitment: bytes,
    ) -> _Opened:
        if not digests_equal(self._share_commitment(stage, dealer, holder, encoded), commitment):
            return _Opened(ShareStatus.BAD)
        if stage == _STAGE_INPUT:
            expected = self._deal_input[dealer].output_key_commitment
            if len(payload.extra) != SECRET_SIZE or not digests_equal(
                self._output_key_commitment(dealer, payload.extra), expected
            ):
                return _Opened(ShareStatus.BAD)
        elif payload.extra:
            return _Opened(ShareStatus.BAD)
        vector = payload.vector
        if vector is None:
            info = self._share_info(stage, dealer, holder)
            vector = expand_seed(payload.seed, info, self._length(stage))
        return _Opened(ShareStatus.OK, vector, payload.extra)

    def _finish_deal_input(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.DEAL_INPUT, effects) is None:
            return
        message = Challenge(view=self._view(Phase.DEAL_INPUT), nonce=self._nonces[0])
        self._revealed_nonces[0][self.me] = self._nonces[0]
        self._enter(Phase.WRAP_CHALLENGE, effects, message.encode())

    # ------------------------------------------------------------------ §6.2 challenges

    def _on_challenge(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = Challenge.decode(envelope.payload)
        index = {
            MessageKind.WRAP_CHALLENGE: 0,
            MessageKind.QUERY_CHALLENGE: 1,
            MessageKind.OUTPUT_CHALLENGE: 2,
        }[MessageKind(envelope.kind)]
        if source not in self._live.get(self._previous, {}):
            effects.append(MessageIgnored(source, f"not live in {self._previous.name}"))
            return
        expected = self._advertised[source].nonce_commitments[index]
        if not digests_equal(self._nonce_commitment(source, index, message.nonce), expected):
            self._exclude(source, "revealed a nonce that does not match its commitment", effects)
            return
        if self._accept_broadcast(source, envelope, message.view, effects):
            self._revealed_nonces[index][source] = message.nonce

    def _finish_wrap_challenge(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.WRAP_CHALLENGE, effects) is None:
            return
        for dealer in sorted(self._deal_input):
            if dealer != self.me:
                self._opened[_STAGE_INPUT][dealer] = self._open(_STAGE_INPUT, dealer)
        self._private[_STAGE_INPUT].clear()
        self._wrap_seed = self._challenge_seed(b"wrap", 0, Phase.DEAL_INPUT)
        withdrawn = False
        try:
            proof = self._prove()
        except normproof.WrapRangeError as exc:
            withdrawn, self._withdrawn_reason = True, str(exc)
        view = self._view(Phase.WRAP_CHALLENGE)
        if withdrawn:
            message = DealProof(view=view, withdrawn=True, commitments=())
            self._deal_proof[self.me] = message
            self._enter(Phase.DEAL_PROOF, effects, message.encode())
            return
        commitments, sends = self._deal_stage(_STAGE_PROOF, proof, b"")
        message = DealProof(view=view, withdrawn=False, commitments=commitments)
        self._deal_proof[self.me] = message
        self._enter(Phase.DEAL_PROOF, effects, message.encode(), sends)

    def _wrap(self) -> normproof.WrapChallenge:
        return normproof.WrapChallenge(self._wrap_seed, self.shape.repetitions, self._d)

    # ------------------------------------------------------------------ §6.3 DealProof

    def _on_deal_proof(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = DealProof.decode(envelope.payload)
        if not self._accept_broadcast(source, envelope, message.view, effects):
            return
        if source not in self._deal_input:
            return  # live, but not a dealer: its input never entered the round
        holders = [h for h, _ in message.commitments]
        if not message.withdrawn and holders != [x - 1 for x in self._holder_points]:
            self._exclude(source, "DealProof commits to shares for other holders", effects)
            return
        self._deal_proof[source] = message

    def _dealers(self) -> list[int]:
        """§6.3 — peers with both stages dealt, not withdrawn, not excluded."""
        return [
            p
            for p in sorted(self._deal_input)
            if p in self._deal_proof
            and not self._deal_proof[p].withdrawn
            and p not in self._excluded
        ]

    def _finish_deal_proof(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.DEAL_PROOF, effects) is None:
            return
        message = Challenge(view=self._view(Phase.DEAL_PROOF), nonce=self._nonces[1])
        self._revealed_nonces[1][self.me] = self._nonces[1]
        self._enter(Phase.QUERY_CHALLENGE, effects, message.encode())

    # ------------------------------------------------------------------ §6.5 Verify

    def _query_setup(self) -> normproof.Verifier:
        seed = self._challenge_seed(b"query", 1, Phase.DEAL_PROOF)
        challenge = normproof.QueryChallenge.from_seed(seed, self.shape)
        combined = self._wrap().combined(challenge.wrap_weights)
        return normproof.Verifier(self.shape, challenge, combined)

    def _finish_query_challenge(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.QUERY_CHALLENGE, effects) is None:
            return
        for dealer in self._dealers():
            if dealer != self.me:
                self._opened[_STAGE_PROOF][dealer] = self._open(_STAGE_PROOF, dealer)
        self._private[_STAGE_PROOF].clear()
        self._verifier = self._query_setup()
        self._enter_gate(Phase.QUERY_AGREE, Phase.QUERY_CHALLENGE, effects)

    def _finish_query_agree(self, effects: list[Effect]) -> None:
        """§4.5 — the gate passed: publish the verifier values (§6.5)."""
        if not self._gate_passed(Phase.QUERY_AGREE, Phase.QUERY_CHALLENGE, effects):
            return
        entries = []
        for dealer in self._dealers():
            first = self._opened[_STAGE_INPUT].get(dealer, _Opened(ShareStatus.MISSING))
            second = self._opened[_STAGE_PROOF].get(dealer, _Opened(ShareStatus.MISSING))
            if ShareStatus.BAD in (first.status, second.status):
                entries.append(VerifyEntry(dealer=dealer, status=ShareStatus.BAD))
            elif first.vector is None or second.vector is None:
                entries.append(VerifyEntry(dealer=dealer, status=ShareStatus.MISSING))
            else:
                values = self._query_values(first.vector, second.vector)
                entries.append(VerifyEntry(dealer=dealer, status=ShareStatus.OK, values=values))
        reference = None
        if self.me in self._dealers():
            reference = np.vstack(
                [
                    self._query_values(
                        self._dealings[_STAGE_INPUT].secret, self._dealings[_STAGE_PROOF].secret
                    ),
                    *(
                        self._query_values(
                            self._dealt_vector(_STAGE_INPUT, x - 1),
                            self._dealt_vector(_STAGE_PROOF, x - 1),
                        )
                        for x in self._reference_points()[1:]
                    ),
                ]
            )
        message = Verify(
            view=self._view(Phase.QUERY_AGREE), entries=tuple(entries), reference=reference
        )
        self._verify[self.me] = message
        self._enter(Phase.VERIFY, effects, message.encode())

    def _query_values(self, first: FieldVector, second: FieldVector) -> FieldVector:
        assert self._verifier is not None
        return self._verifier.query(first, second)

    def _reference_points(self) -> list[int]:
        """§6.5 — a dealer's reference is its verifier polynomial at 0 and the first t holders."""
        return [0, *self._holder_points[: self._t]]

    def _on_verify(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = Verify.decode(
            envelope.payload, verifier_length=self.shape.verifier_length, rows=self._t + 1
        )
        if self._accept_broadcast(source, envelope, message.view, effects):
            self._verify[source] = message

    def _expected_values(self, reference: NDArray[np.uint64]) -> dict[int, FieldVector]:
        """The reference polynomial evaluated at every holder's point (by holder)."""
        matrix = evaluation_matrix(self._reference_points(), self._holder_points)
        rows = gf.matmul(matrix, reference)
        return {x - 1: rows[k] for k, x in enumerate(self._holder_points)}

    def _verify_disputes(self, dealer: int) -> list[int]:
        """§6.6 — holders whose entry about ``dealer`` disagrees with its reference or is BAD."""
        own = self._verify.get(dealer)
        if own is None or own.reference is None:
            return []
        expected = self._expected_values(own.reference)
        disputed = []
        for holder, message in sorted(self._verify.items()):
            entry = message.entry_for(dealer)
            if entry is None or entry.status is ShareStatus.MISSING:
                continue
            if entry.values is None or not np.array_equal(entry.values, expected[holder]):
                disputed.append(holder)
        return disputed

    def _finish_verify(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.VERIFY, effects) is None:
            return
        reveals = []
        if self.me in self._dealers():
            for holder in self._verify_disputes(self.me):
                reveals.append(
                    Reveal(
                        holder=holder,
                        input_payload=self._payload(_STAGE_INPUT, holder).encode(),
                        proof_payload=self._payload(_STAGE_PROOF, holder).encode(),
                    )
                )
        message = Dispute(view=self._view(Phase.VERIFY), reveals=tuple(reveals))
        self._disputes[self.me] = message
        self._enter(Phase.DISPUTE, effects, message.encode())

    # ------------------------------------------------------------------ §6.7 Dispute

    def _on_dispute(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = Dispute.decode(envelope.payload)
        if not self._accept_broadcast(source, envelope, message.view, effects):
            return
        target = self._disputes if envelope.kind == MessageKind.DISPUTE else self._output_disputes
        target[source] = message

    def _revealed(self, stage: int, dealer: int, holder: int, encoded: bytes) -> _Opened:
        """A publicly revealed payload, checked against the dealer's commitment."""
        if stage == _STAGE_INPUT:
            commitment = self._deal_input[dealer].commitment_for(holder)
        else:
            commitment = self._deal_proof[dealer].commitment_for(holder)
        try:
            payload = SharePayload.decode(encoded, length=self._length(stage))
        except DecodeError:
            return _Opened(ShareStatus.BAD)
        if commitment is None:
            return _Opened(ShareStatus.BAD)
        return self._check_payload(stage, dealer, holder, encoded, payload, commitment)

    def _resolve(self, dealer: int, effects: list[Effect]) -> _Resolution:
        """§6.7 — the dealer's verifier after disputes, or the reason it has none."""
        own = self._verify.get(dealer)
        holders = {h: m.entry_for(dealer) for h, m in self._verify.items() if m.entry_for(dealer)}
        if own is None:  # gone before VERIFY
            return self._resolve_without_reference(dealer, holders)
        if own.reference is None:  # live, yet it withholds what would settle complaints
            return _Resolution(reason="published no verification reference", blame=True)
        expected = self._expected_values(own.reference)
        answers = self._disputes.get(dealer)
        resolution = _Resolution()
        proven_liars = 0
        for holder, entry in sorted(holders.items()):
            assert entry is not None
            if entry.status is ShareStatus.MISSING:
                continue
            if entry.values is not None and np.array_equal(entry.values, expected[holder]):
                resolution.checked_by.add(holder)
                continue
            if answers is None:  # gone before DISPUTE: a dropout, not a proven deviation
                return _Resolution(reason=f"dropped before answering the dispute about {holder}")
            reveal = answers.reveal_for(holder)
            if reveal is None:
                return _Resolution(
                    reason=f"did not answer the dispute about holder {holder}", blame=True
                )
            first = self._revealed(_STAGE_INPUT, dealer, holder, reveal.input_payload)
            second = self._revealed(_STAGE_PROOF, dealer, holder, reveal.proof_payload)
            if first.vector is None or second.vector is None:
                return _Resolution(
                    reason=f"revealed a share of holder {holder} that is not the committed one",
                    blame=True,
                )
            true_values = self._query_values(first.vector, second.vector)
            if not np.array_equal(true_values, expected[holder]):
                return _Resolution(
                    reason=f"its verification reference contradicts the share it dealt to {holder}",
                    blame=True,
                )
            if entry.status is ShareStatus.OK:
                self._exclude(
                    holder, f"published a wrong verifier share for dealer {dealer}", effects
                )
                proven_liars += 1
            else:
                resolution.checked_by.add(holder)  # a complaint resolved by the public share
            if holder == self.me:
                self._opened[_STAGE_INPUT][dealer] = first
                self._opened[_STAGE_PROOF][dealer] = second
        # §6.7 pinning: at most t − (proven liars) of the agreeing holders are dishonest, so
        # t + 1 honest ones agree with the reference iff agreeing + proven ≥ 2t + 1.
        if len(resolution.checked_by) + proven_liars < 2 * self._t + 1:
            missing = [
                h for h, e in holders.items() if e is not None and e.status is ShareStatus.MISSING
            ]
            resolution.reason = (
                f"only {len(resolution.checked_by)} holders confirmed the shares of dealer "
                f"{dealer} ({len(missing)} report them missing); 2t+1 needed"
            )
            # The dealer is live and answered: leaving it out would let holders (or the
            # broker) that report shares missing choose whose input is summed. Abort.
            resolution.stalled = True
            return resolution
        resolution.verifier = own.reference[0]
        return resolution

    def _resolve_without_reference(
        self, dealer: int, holders: Mapping[int, VerifyEntry | None]
    ) -> _Resolution:
        """§6.7 — a dealer that published no reference: ≥ 2t+1 holders must agree exactly."""
        values = {
            h + 1: e.values
            for h, e in holders.items()
            if e is not None and e.status is ShareStatus.OK and e.values is not None
        }
        if len(values) < 2 * self._t + 1:
            return _Resolution(reason="dropped before its shares could be verified")
        try:
            verifier, wrong = gf.rs_decode(values, self._t, self._rng)
        except gf.DecodingError:
            return _Resolution(reason="dropped and its holders' verifier shares disagree")
        agreeing = {x - 1 for x in values if x not in wrong}
        if len(agreeing) < 2 * self._t + 1:
            return _Resolution(reason="dropped and fewer than 2t+1 holders agree on its verifier")
        return _Resolution(verifier=verifier, checked_by=agreeing)

    def _finish_dispute(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.DISPUTE, effects) is None:
            return
        accepted = []
        for dealer in self._dealers():
            resolution = self._resolve(dealer, effects)
            if resolution.stalled:
                self._abort(f"cannot verify a live dealer: {resolution.reason}", effects)
                return
            if resolution.verifier is None:
                if resolution.blame:
                    self._exclude(dealer, resolution.reason, effects)
                else:
                    self._drop_reasons[dealer] = resolution.reason
                continue
            failure = normproof.decide(self.shape, resolution.verifier)
            if failure is not None:
                self._exclude(dealer, f"input failed the validity check: {failure}", effects)
                continue
            accepted.append(dealer)
        accepted = [p for p in accepted if p not in self._excluded]
        # t + 2 accepted inputs include at least two honest ones: the aggregate never
        # reveals a single honest input to t colluders (SPEC §6.7, §8).
        needed = self._t + 2
        if len(accepted) < needed:
            self._abort(
                f"only {len(accepted)} inputs accepted {format_peers(accepted)}; "
                f"t+2 = {needed} needed",
                effects,
            )
            return
        self._accepted = tuple(accepted)
        self._enter_gate(Phase.OUTPUT_AGREE, Phase.DISPUTE, effects)

    def _finish_output_agree(self, effects: list[Effect]) -> None:
        """§4.5 — the gate passed: publish this holder's encrypted aggregate share (§6.8)."""
        if not self._gate_passed(Phase.OUTPUT_AGREE, Phase.DISPUTE, effects):
            return
        ciphertext = b""
        parts = [self._opened[_STAGE_INPUT].get(p) for p in self._accepted]
        if all(o is not None and o.vector is not None for o in parts):
            self._output_key = sha256(
                self._info(b"output-key"), *(o.extra for o in parts if o is not None)
            )
            total = np.zeros(self.shape.input_length, dtype=np.uint64)
            for opened in parts:
                assert opened is not None
                assert opened.vector is not None
                total = gf.add(total, opened.vector)
            self._output_shares[self.me] = total
            ciphertext = aead_encrypt(
                self._output_share_key(self.me),
                np.ascontiguousarray(total, dtype="<u8").tobytes(),
                self._info(b"output-ad", self.me),
            )
        message = Output(view=self._view(Phase.OUTPUT_AGREE), ciphertext=ciphertext)
        self._enter(Phase.OUTPUT, effects, message.encode())

    def _output_share_key(self, holder: int) -> bytes:
        return derive_key(self._output_key, info=self._info(b"output-share", holder))

    # ------------------------------------------------------------------ §6.8 Output

    def _on_output(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = Output.decode(envelope.payload)
        if self._accept_broadcast(source, envelope, message.view, effects) and message.ciphertext:
            self._output_ciphertexts[source] = message.ciphertext

    def _finish_output(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.OUTPUT, effects) is None:
            return
        if not self._output_key:
            missing = [
                p
                for p in self._accepted
                if getattr(self._opened[_STAGE_INPUT].get(p), "vector", None) is None
            ]
            self._abort(
                f"this peer holds no input share of accepted dealers {format_peers(missing)}",
                effects,
            )
            return
        for holder, ciphertext in sorted(self._output_ciphertexts.items()):
            try:
                plaintext = aead_decrypt(
                    self._output_share_key(holder), ciphertext, self._info(b"output-ad", holder)
                )
            except VerificationError:
                self._exclude(holder, "its output share does not decrypt", effects)
                continue
            if len(plaintext) != 8 * self.shape.input_length:
                self._exclude(holder, "its output share has the wrong length", effects)
                continue
            vector = np.frombuffer(plaintext, dtype="<u8").astype(np.uint64)
            if int(vector.max()) >= gf.P:
                self._exclude(holder, "its output share is not reduced modulo p", effects)
                continue
            self._output_shares[holder] = vector
        self._output_ciphertexts.clear()
        # Every decrypted share counts, an excluded peer's too: the check below (and §6.9)
        # catches a wrong one, and the decision must not depend on whom this peer excluded.
        shares = {h + 1: v for h, v in self._output_shares.items()}
        if len(shares) >= 2 * self._t + 1 and self._consistent(shares):
            self._finish_total(shares, effects)
            return
        message = Challenge(view=self._view(Phase.OUTPUT), nonce=self._nonces[2])
        self._revealed_nonces[2][self.me] = self._nonces[2]
        self._enter(Phase.OUTPUT_CHALLENGE, effects, message.encode())

    def _consistent(self, shares: Mapping[int, FieldVector]) -> bool:
        """§6.8 — whether all shares' aggregate parts lie on one degree-t polynomial.

        Checked on a random projection drawn here, after every share was fixed: a share
        off the polynomial in any coordinate is caught except with probability 1/p.
        """
        weights = gf.random_vector(self._rng, self._d)
        points = sorted(shares)
        projected = gf.project([shares[x][: self._d] for x in points], weights)
        basis = points[: self._t + 1]
        others = points[self._t + 1 :]
        if not others:
            return True
        matrix = evaluation_matrix(basis, others)
        predicted = gf.matmul(matrix, projected[: self._t + 1])
        return bool(np.array_equal(predicted, projected[self._t + 1 :]))

    def _finish_total(self, shares: Mapping[int, FieldVector], effects: list[Effect]) -> None:
        basis = sorted(shares)[: self._t + 1]
        coefficients = np.array(gf.lagrange_at(basis, 0), dtype=np.uint64).reshape(1, -1)
        stacked = [shares[x][: self._d] for x in basis]
        self._total = gf.to_signed(gf.lincomb(coefficients, stacked)[0])
        included = ",".join(str(p) for p in self._accepted).encode()
        total = np.ascontiguousarray(self._total, dtype="<i8")
        self._result_digest = blake3_mac(
            self._output_key, b"mpc-agg/robust/result/v2\x00" + included, total.view(np.uint8).data
        )
        message = Confirm(view=self._view(self.phase), digest=self._result_digest)
        self._enter(Phase.CONFIRM, effects, message.encode())

    # ------------------------------------------------------------------ §6.9 output check

    def _finish_output_challenge(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.OUTPUT_CHALLENGE, effects) is None:
            return
        self._output_seed = self._challenge_seed(b"output", 2, Phase.OUTPUT)
        self._enter_gate(Phase.CHECK_AGREE, Phase.OUTPUT_CHALLENGE, effects)

    def _finish_check_agree(self, effects: list[Effect]) -> None:
        """§4.5 — the gate passed: publish the output projections (§6.9)."""
        if not self._gate_passed(Phase.CHECK_AGREE, Phase.OUTPUT_CHALLENGE, effects):
            return
        rho = self._output_projection()
        projections = []
        for dealer in self._accepted:
            opened = self._opened[_STAGE_INPUT].get(dealer)
            if opened is not None and opened.vector is not None:
                projections.append((dealer, gf.inner(rho, opened.vector)))
        reference: tuple[int, ...] = ()
        if self.me in self._accepted:
            secret = self._dealings[_STAGE_INPUT].secret
            reference = (
                gf.inner(rho, secret),
                *(
                    gf.inner(rho, self._dealt_vector(_STAGE_INPUT, x - 1))
                    for x in self._reference_points()[1:]
                ),
            )
        message = OutputVerify(
            view=self._view(Phase.CHECK_AGREE),
            projections=tuple(projections),
            reference=reference,
        )
        self._output_verify[self.me] = message
        self._enter(Phase.OUTPUT_VERIFY, effects, message.encode())

    def _output_projection(self) -> FieldVector:
        """§6.9 — ρ* over (x ‖ mask): random on x, 1 on the mask coordinate."""
        key = derive_key(self._output_seed, info=b"mpc-agg/robust/output-projection/v1")
        rho = gf.expand(key, self.shape.input_length)
        rho[-1] = 1
        return rho

    def _on_output_verify(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = OutputVerify.decode(envelope.payload)
        if not self._accept_broadcast(source, envelope, message.view, effects):
            return
        if message.reference and len(message.reference) != self._t + 1:
            self._exclude(source, "OutputVerify reference has the wrong size", effects)
            return
        self._output_verify[source] = message

    def _output_expected(self, dealer: int) -> dict[int, int] | None:
        message = self._output_verify.get(dealer)
        if message is None or not message.reference:
            return None
        reference = np.array(message.reference, dtype=np.uint64)
        matrix = evaluation_matrix(self._reference_points(), self._holder_points)
        values = gf.matmul(matrix, reference)
        return {x - 1: int(values[k]) for k, x in enumerate(self._holder_points)}

    def _finish_output_verify(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.OUTPUT_VERIFY, effects) is None:
            return
        reveals = []
        expected = self._output_expected(self.me) if self.me in self._accepted else None
        if expected is not None:
            for holder, theirs in sorted(self._output_verify.items()):
                claimed = dict(theirs.projections).get(self.me)
                if claimed is not None and claimed != expected[holder]:
                    reveals.append(
                        Reveal(
                            holder=holder,
                            input_payload=self._payload(_STAGE_INPUT, holder).encode(),
                        )
                    )
        message = Dispute(view=self._view(Phase.OUTPUT_VERIFY), reveals=tuple(reveals))
        self._output_disputes[self.me] = message
        self._enter(Phase.OUTPUT_DISPUTE, effects, message.encode())

    def _finish_output_dispute(self, effects: list[Effect]) -> None:
        if self._live_or_abort(Phase.OUTPUT_DISPUTE, effects) is None:
            return
        rho = self._output_projection()
        verified: dict[int, dict[int, int]] = {h: {} for h in self._output_verify}
        for dealer in self._accepted:
            for holder, value in self._verified_projections(dealer, rho, effects).items():
                verified.setdefault(holder, {})[dealer] = value
        good: dict[int, FieldVector] = {}
        for holder, share in sorted(self._output_shares.items()):
            if holder in self._excluded:
                continue
            values = verified.get(holder, {})
            if set(values) != set(self._accepted):
                continue
            if sum(values.values()) % gf.P != gf.inner(rho, share):
                self._exclude(holder, "published a wrong aggregate share", effects)
                continue
            good[holder + 1] = share
        if len(good) < self._t + 1:
            self._abort(
                f"only {len(good)} aggregate shares could be verified; t+1 = {self._t + 1} needed",
                effects,
            )
            return
        if not self._consistent(good):
            self._abort("verified aggregate shares are inconsistent", effects)
            return
        self._finish_total(good, effects)

    def _verified_projections(
        self, dealer: int, rho: FieldVector, effects: list[Effect]
    ) -> dict[int, int]:
        """§6.10 — holders' projections of ``dealer``'s share that are known to be right."""
        claimed = {
            h: dict(m.projections)[dealer]
            for h, m in self._output_verify.items()
            if dealer in dict(m.projections)
        }
        # A holder that published its aggregate share holds every accepted dealer's share
        # (§6.8), so an OutputVerify of it without this dealer's projection is provably
        # deviating: excluded, and it counts towards pinning like a proven liar (§6.10).
        omitted = sorted(
            h
            for h, m in self._output_verify.items()
            if h in self._output_shares and h != self.me and dealer not in dict(m.projections)
        )
        for holder in omitted:
            self._exclude(
                holder, f"published its output share but no output projection for {dealer}", effects
            )
        expected = self._output_expected(dealer)
        if expected is not None:
            answers = self._output_disputes.get(dealer)
            result: dict[int, int] = {}
            reference_ok = True
            proven_liars = 0
            for holder, value in sorted(claimed.items()):
                if value == expected[holder]:
                    result[holder] = value
                    continue
                reveal = None if answers is None else answers.reveal_for(holder)
                opened = (
                    None
                    if reveal is None
                    else self._revealed(_STAGE_INPUT, dealer, holder, reveal.input_payload)
                )
                if opened is None or opened.vector is None:
                    reference_ok = False
                    break
                true_value = gf.inner(rho, opened.vector)
                if true_value != expected[holder]:
                    reference_ok = False
                    break
                self._exclude(holder, f"published a wrong output projection for {dealer}", effects)
                proven_liars += 1
            if not reference_ok and answers is not None:  # gone: a dropout, not a deviation
                self._exclude(dealer, "its output-check reference is wrong", effects)
            elif len(result) + proven_liars + len(omitted) >= 2 * self._t + 1:  # as in §6.7
                return result
        # §6.10 fallback: ≥ 2t+1 holders must agree on one polynomial
        points = {h + 1: np.array([v], dtype=np.uint64) for h, v in claimed.items()}
        if len(points) < 2 * self._t + 1:
            return {}
        try:
            _, wrong = gf.rs_decode(points, self._t, self._rng)
        except gf.DecodingError:
            return {}
        if len(points) - len(wrong) < 2 * self._t + 1:
            return {}
        return {x - 1: int(v[0]) for x, v in points.items() if x not in wrong}

    # ------------------------------------------------------------------ §6.11 Confirm

    def _on_confirm(self, source: int, envelope: Envelope, effects: list[Effect]) -> None:
        message = Confirm.decode(envelope.payload)
        if source not in self._live.get(self._previous, {}):
            effects.append(MessageIgnored(source, f"not live in {self._previous.name}"))
            return
        self._live[Phase.CONFIRM][source] = envelope.message_digest
        if digests_equal(message.view, self._view(self._previous)):
            self._peer_digests[source] = message.digest
        else:  # it decided on other messages (a broker fault can do that): report, not blame
            self._peer_digests[source] = b""

    def _finish_confirm(self, effects: list[Effect]) -> None:
        assert self._total is not None
        agreeing = tuple(
            sorted(
                p
                for p, d in self._peer_digests.items()
                if d and digests_equal(d, self._result_digest)
            )
        )
        disagreeing = tuple(sorted(set(self._peer_digests) - set(agreeing)))
        for peer in disagreeing:
            if self._peer_digests[peer]:  # same messages, another result: it deviated
                self._exclude(peer, "published a different result digest", effects)
        dropped = {
            peer: self._drop_reason(peer)
            for peer in range(self.params.n)
            if peer not in self._accepted and peer not in self._excluded
        }
        effects.append(
            AggregateReady(
                total=self._total.view(np.uint64),
                included=self._accepted,
                dropped=dropped,
                excluded=dict(self._excluded),
                result_digest=self._result_digest,
                confirmed_by=agreeing,
                disagreeing=disagreeing,
            )
        )
        self.phase = Phase.DONE

    def _drop_reason(self, peer: int) -> str:
        if peer in self._drop_reasons:
            return self._drop_reasons[peer]
        if peer not in self._advertised:
            return "no Advertise before the deadline"
        if peer not in self._deal_input:
            return "no DealInput before the deadline"
        if peer not in self._deal_proof:
            return "no DealProof before the deadline"
        if self._deal_proof[peer].withdrawn:
            return "withdrew its input (a random projection left its range; p ≤ 2^-45)"
        return "not included"


_BROADCAST_KIND = {
    Phase.ADVERTISE: MessageKind.ADVERTISE,
    Phase.DEAL_INPUT: MessageKind.DEAL_INPUT,
    Phase.WRAP_CHALLENGE: MessageKind.WRAP_CHALLENGE,
    Phase.DEAL_PROOF: MessageKind.DEAL_PROOF,
    Phase.QUERY_CHALLENGE: MessageKind.QUERY_CHALLENGE,
    Phase.QUERY_AGREE: MessageKind.QUERY_AGREE,
    Phase.OUTPUT_AGREE: MessageKind.OUTPUT_AGREE,
    Phase.CHECK_AGREE: MessageKind.CHECK_AGREE,
    Phase.VERIFY: MessageKind.VERIFY,
    Phase.DISPUTE: MessageKind.DISPUTE,
    Phase.OUTPUT: MessageKind.OUTPUT,
    Phase.OUTPUT_CHALLENGE: MessageKind.OUTPUT_CHALLENGE,
    Phase.OUTPUT_VERIFY: MessageKind.OUTPUT_VERIFY,
    Phase.OUTPUT_DISPUTE: MessageKind.OUTPUT_DISPUTE,
    Phase.CONFIRM: MessageKind.CONFIRM,
}
_PRIVATE_KIND = {
    Phase.DEAL_INPUT: MessageKind.INPUT_SHARE,
    Phase.DEAL_PROOF: MessageKind.PROOF_SHARE,
}
