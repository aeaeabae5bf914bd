"""Shared helpers of the protocol tier: exactness checks, wire inspection, adversaries, replay.

Nothing here trusts the machine under test: expected sums are recomputed from the raw
inputs with Python integers, and "what was revealed" is read from the bytes each peer
actually put on the wire (its Unmask ciphertexts, decrypted with the channel keys), and
only then cross-checked against the machine's own record (``SecAggMachine.revealed``).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from mpc_agg.crypto import SigningKey, aead_decrypt, aead_encrypt
from mpc_agg.envelope import parse_envelope
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import RingVector
from mpc_agg.vss import Q, share_secret
from protocols.common import (
    AggregateReady,
    Broadcast,
    Effect,
    MessageIgnored,
    PeerExcluded,
    RoundAborted,
)
from protocols.harness import (
    Adversary,
    Dropout,
    Fault,
    Outgoing,
    RoundOutcome,
    make_roster,
    payload_of,
    random_inputs,
    resign,
    run_secagg_round,
)
from protocols.secagg.machine import SecAggMachine, SecAggParams
from protocols.secagg.messages import (
    BROADCAST_ROUND_KINDS,
    MessageKind,
    Phase,
    RevealedShare,
    ShareKeys,
    ShareKind,
    Unmask,
    decode_revealed,
    decode_share_plaintext,
    encode_revealed,
    encode_share_plaintext,
)

MODULUS = 1 << 64
_E = TypeVar("_E", bound=Effect)


# --------------------------------------------------------------------------- exactness


def plaintext_sum(inputs: Mapping[int, RingVector], included: Iterable[int]) -> RingVector:
    """Σ inputs over ``included`` mod 2^64, computed with Python ints (independent of numpy)."""
    peers = list(included)
    length = len(next(iter(inputs.values())))
    total = [0] * length
    for peer in peers:
        for i, value in enumerate(inputs[peer].tolist()):
            total[i] += value
    return np.array([v % MODULUS for v in total], dtype=np.uint64)


def assert_exact(outcome: RoundOutcome, result: AggregateReady) -> None:
    """``result.total`` is the plaintext ring sum of the inputs of ``result.included``."""
    expected = plaintext_sum(outcome.inputs, result.included)
    assert result.total.dtype == np.uint64
    assert result.total.shape == (outcome.params.vector_length,)
    assert np.array_equal(result.total, expected), f"wrong sum for included={result.included}"
    # the harness's own oracle must agree with the independent one
    assert np.array_equal(outcome.expected_total(result.included), expected)


def assert_correct_or_aborted(outcome: RoundOutcome, peers: Iterable[int]) -> None:
    """Every listed peer either output the exact sum of its included set or aborted."""
    for peer in peers:
        state = outcome.peers[peer]
        assert (state.result is None) != (state.aborted is None), f"peer {peer} did not finish"
        if state.result is not None:
            assert_exact(outcome, state.result)
        else:
            assert state.aborted is not None
            assert state.aborted.reason


def effects_of(outcome: RoundOutcome, peer: int, kind: type[_E]) -> list[_E]:
    """Every effect of type ``kind`` emitted by ``peer``'s machine."""
    return [e for e in outcome.peers[peer].effects if isinstance(e, kind)]


def ignored(outcome: RoundOutcome, peer: int) -> list[MessageIgnored]:
    """MessageIgnored effects of ``peer``."""
    return effects_of(outcome, peer, MessageIgnored)


def exclusions(outcome: RoundOutcome, peer: int) -> list[PeerExcluded]:
    """PeerExcluded effects of ``peer``."""
    return effects_of(outcome, peer, PeerExcluded)


def broadcasts(outcome: RoundOutcome, peer: int, kind: MessageKind) -> list[bytes]:
    """The sealed bytes of every ``kind`` broadcast ``peer``'s machine emitted."""
    return [e.data for e in effects_of(outcome, peer, Broadcast) if e.phase == kind.phase]


def no_result_differs(outcome: RoundOutcome, peers: Iterable[int]) -> None:
    """Integrity: no listed peer output a sum different from the sum of its included set."""
    for peer in peers:
        result = outcome.peers[peer].result
        if result is not None:
            assert_exact(outcome, result)


# --------------------------------------------------------------------------- wire inspection


def unmask_key(machine: SecAggMachine, sender: int, recipient: int) -> tuple[bytes, bytes]:
    """(AEAD key, associated data) of the Unmask ciphertext ``sender`` → ``recipient``.

    ``machine`` is either endpoint (ECDH is symmetric); the harness plays that peer.
    """
    other = recipient if machine.me == sender else sender
    secret = machine._channel_secret(other)
    key = machine._channel_key(b"unmask", sender, recipient, secret)
    return key, machine._info(b"unmask-ad", sender, recipient)


def share_keys_key(machine: SecAggMachine, dealer: int, recipient: int) -> tuple[bytes, bytes]:
    """(AEAD key, associated data) of the ShareKeys ciphertext ``dealer`` → ``recipient``."""
    other = recipient if machine.me == dealer else dealer
    secret = machine._channel_secret(other)
    key = machine._channel_key(b"share-keys", dealer, recipient, secret)
    return key, machine._info(b"share-keys-ad", dealer, recipient)


def revealed_in(machine: SecAggMachine, messages: Iterable[bytes]) -> dict[int, set[ShareKind]]:
    """Owner → kinds of share revealed in sealed Unmask ``messages`` sent by ``machine``.

    Decrypts every per-recipient ciphertext with the sender's channel keys, so this is
    exactly what any recipient (or a coalition of them) learned.
    """
    kinds: dict[int, set[ShareKind]] = {}
    for data in messages:
        if parsed_kind(data) is not MessageKind.UNMASK:
            continue
        message = Unmask.decode(payload_of(data))
        for recipient, ciphertext in message.ciphertexts:
            key, info = unmask_key(machine, machine.me, recipient)
            for share in decode_revealed(aead_decrypt(key, ciphertext, info)):
                kinds.setdefault(share.owner, set()).add(share.kind)
    return kinds


def revealed_on_wire(outcome: RoundOutcome, sender: int) -> dict[int, set[ShareKind]]:
    """Owner → kinds of share that honest ``sender`` revealed in the Unmask it broadcast.

    (For a peer played by an adversary, use :class:`Recorder` to see what it really sent.)
    """
    machine = outcome.machines[sender]
    return revealed_in(machine, broadcasts(outcome, sender, MessageKind.UNMASK))


def unmask_recipients(outcome: RoundOutcome, sender: int) -> set[int]:
    """Peers to which ``sender`` addressed an Unmask ciphertext."""
    recipients: set[int] = set()
    for data in broadcasts(outcome, sender, MessageKind.UNMASK):
        recipients |= {r for r, _ in Unmask.decode(payload_of(data)).ciphertexts}
    return recipients


def assert_never_both_kinds(outcome: RoundOutcome, honest: Iterable[int]) -> None:
    """§6.5 across the honest peers: no owner had both a SELF_MASK and a MASK_KEY revealed."""
    union: dict[int, set[ShareKind]] = {}
    for peer in honest:
        on_wire = revealed_on_wire(outcome, peer)
        recorded = outcome.machines[peer].revealed
        # the machine's own record (§6.5) matches what it put on the wire; a peer that
        # crashed entering UNMASK decided its reveals but never sent them
        if unmask_recipients(outcome, peer):
            assert on_wire == {owner: {kind} for owner, kind in recorded.items()}
        else:
            assert on_wire == {}
        for owner, kinds in on_wire.items():
            assert len(kinds) == 1, f"peer {peer} revealed both kinds for owner {owner}"
        for owner, kind in recorded.items():
            union.setdefault(owner, set()).add(kind)
    both = sorted(owner for owner, kinds in union.items() if len(kinds) > 1)
    assert not both, f"both kinds of share revealed (by different honest peers) for {both}"


# --------------------------------------------------------------------------- adversaries


def reencrypt_share_keys(
    machine: SecAggMachine,
    payload: bytes,
    victim: int,
    rewrite: Callable[[bytes, bytes, bytes], bytes],
) -> bytes:
    """Rebuild the dealer's ShareKeys with the victim's ciphertext replaced by ``rewrite``.

    ``rewrite(key, info, ciphertext)`` returns the new 80-byte ciphertext.
    """
    message = ShareKeys.decode(payload)
    ciphertexts = []
    for recipient, original in message.ciphertexts:
        ciphertext = original
        if recipient == victim:
            key, info = share_keys_key(machine, machine.me, recipient)
            ciphertext = rewrite(key, info, original)
        ciphertexts.append((recipient, ciphertext))
    return ShareKeys(
        mask_key_commitments=message.mask_key_commitments,
        self_mask_commitments=message.self_mask_commitments,
        ciphertexts=tuple(ciphertexts),
    ).encode()


def off_by_one_share(key: bytes, info: bytes, ciphertext: bytes) -> bytes:
    """Decrypts fine, but the mask-key share is value+1: inconsistent with the commitments."""
    mask_share, self_share = decode_share_plaintext(aead_decrypt(key, ciphertext, info))
    return aead_encrypt(key, encode_share_plaintext((mask_share + 1) % Q, self_share), info)


def alternative_share_keys(machine: SecAggMachine, label: str) -> bytes:
    """A second, fully valid ShareKeys payload for the same secrets (fresh polynomials).

    Every recipient would accept it on its own: it matches the advertised mask key and
    every ciphertext decrypts to a share consistent with the new commitments.
    """
    assert machine._mask_key is not None
    holders = sorted(machine._advertised)
    xs = [p + 1 for p in holders]
    rng = DeterministicRandomSource(f"alternative/{label}")
    threshold = machine.params.threshold
    mask_shares, mask_commitments = share_secret(machine._mask_key.scalar, threshold, xs, rng)
    self_shares, self_commitments = share_secret(machine._self_mask_seed, threshold, xs, rng)
    ciphertexts = []
    for peer in holders:
        if peer == machine.me:
            continue
        plaintext = encode_share_plaintext(mask_shares[peer + 1], self_shares[peer + 1])
        key, info = share_keys_key(machine, machine.me, peer)
        ciphertexts.append((peer, aead_encrypt(key, plaintext, info)))
    return ShareKeys(
        mask_key_commitments=mask_commitments.points,
        self_mask_commitments=self_commitments.points,
        ciphertexts=tuple(ciphertexts),
    ).encode()


def rewrite_unmask(
    machine: SecAggMachine,
    payload: bytes,
    change: Callable[[RevealedShare], RevealedShare],
) -> bytes:
    """Rebuild the sender's Unmask with every revealed share passed through ``change``."""
    message = Unmask.decode(payload)
    ciphertexts = []
    for recipient, ciphertext in message.ciphertexts:
        key, info = unmask_key(machine, machine.me, recipient)
        shares = decode_revealed(aead_decrypt(key, ciphertext, info))
        plaintext = encode_revealed([change(s) for s in shares])
        ciphertexts.append((recipient, aead_encrypt(key, plaintext, info)))
    return Unmask(ciphertexts=tuple(ciphertexts)).encode()


@dataclass
class SplitAdversary(Adversary):
    """Equivocation: sends the honest ``kind`` message to ``first_half`` and ``alternative``
    (a validly signed, different message) to everyone else; ``both`` get both versions."""

    kind: MessageKind
    first_half: frozenset[int]
    alternative: Callable[[SecAggMachine, bytes], bytes]
    both: frozenset[int] = frozenset()
    sent: dict[str, bytes] = field(default_factory=dict)

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        if kind != self.kind:
            return [Outgoing(data)]
        other = resign(machine, kind, self.alternative(machine, payload_of(data)))
        self.sent = {"honest": data, "alternative": other}
        wire: list[Outgoing] = []
        for peer in range(machine.params.n):
            if peer == machine.me:
                continue
            if peer in self.both:
                wire += [Outgoing(data, peer), Outgoing(other, peer)]
            elif peer in self.first_half:
                wire.append(Outgoing(data, peer))
            else:
                wire.append(Outgoing(other, peer))
        return wire


@dataclass
class Recorder(Adversary):
    """Wraps an adversary and records the bytes it actually put on the wire."""

    inner: Adversary
    sent: list[bytes] = field(default_factory=list)

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        wire = self.inner.outgoing(machine, kind, data)
        self.sent += [out.data for out in wire]
        return wire

    def injected(self, machine: SecAggMachine) -> list[Outgoing]:
        wire = self.inner.injected(machine)
        self.sent += [out.data for out in wire]
        return wire


# --------------------------------------------------------------------------- transcript


@dataclass(frozen=True, slots=True)
class Transcript:
    """An honest round among peers 0, 1, 2 of a 4-peer roster; peer 3 never speaks.

    Peer 0 is re-created fresh (same randomness) and driven step by step through
    :attr:`schedule`, receiving exactly the recorded messages of peers 1 and 2, so it
    reproduces the recorded run bit for bit. Peer 3 is a *probe*: a roster member with
    a valid signing key whose messages peer 0 has never seen.
    """

    params: SecAggParams
    keys: tuple[SigningKey, ...]
    inputs: dict[int, RingVector]
    messages: dict[tuple[int, MessageKind], bytes]

    def fresh(self, me: int = 0) -> SecAggMachine:
        """A new machine for peer ``me`` with the recorded randomness."""
        return SecAggMachine(
            self.params,
            me=me,
            signing_key=self.keys[me],
            randomness=DeterministicRandomSource(f"transcript/{me}"),
        )

    def probe(self, kind: MessageKind, payload: bytes | None = None) -> bytes:
        """A validly signed ``kind`` message from peer 3 (payload: peer 1's, unless given)."""
        body = payload if payload is not None else payload_of(self.messages[(1, kind)])
        return resign(self.fresh(3), kind, body)

    @property
    def expected(self) -> RingVector:
        """The plaintext sum of peers 0, 1, 2."""
        return plaintext_sum(self.inputs, (0, 1, 2))


#: One step of peer 0's schedule: ("begin",), ("msg", sender, kind) or ("deadline", phase).
Step = tuple[str, int, MessageKind] | tuple[str, Phase] | tuple[str]

SCHEDULE: tuple[Step, ...] = (
    ("begin",),
    *(
        step
        for kind in BROADCAST_ROUND_KINDS
        for step in (
            (("msg", 2, kind), ("msg", 1, kind), ("deadline", Phase.ADVERTISE_KEYS))
            if kind is MessageKind.ADVERTISE_KEYS
            else (("msg", 2, kind), ("msg", 1, kind))
        )
    ),
)


def record_transcript(seed: int = 11, vector_length: int = 16) -> Transcript:
    """Run peers 0, 1, 2 honestly (peer 3 absent) and record every broadcast."""
    roster, keys = make_roster(4, seed="transcript")
    params = SecAggParams(
        federation="transcript",
        round_id=1,
        roster=roster,
        threshold=3,
        vector_length=vector_length,
    )
    inputs = random_inputs(4, vector_length, seed)
    transcript = Transcript(params, tuple(keys), inputs, {})
    machines = {p: transcript.fresh(p) for p in range(3)}
    queue: deque[tuple[int, int, bytes]] = deque()

    def handle(peer: int, effects: Sequence[Effect]) -> None:
        for effect in effects:
            if isinstance(effect, Broadcast):
                transcript.messages[(peer, MessageKind(effect.phase.value))] = effect.data
                queue.extend((peer, r, effect.data) for r in machines if r != peer)
            assert not isinstance(effect, RoundAborted | PeerExcluded), effect

    for peer, machine in machines.items():
        handle(peer, machine.begin(inputs[peer]))
    for _ in range(20):
        while queue:
            sender, recipient, data = queue.popleft()
            handle(recipient, machines[recipient].receive(sender, data))
        if all(m.finished for m in machines.values()):
            break
        for peer, machine in machines.items():
            handle(peer, machine.deadline(machine.phase))
    assert all(m.phase is Phase.DONE for m in machines.values())
    assert len(transcript.messages) == 3 * len(BROADCAST_ROUND_KINDS)
    return transcript


def run_steps(
    transcript: Transcript,
    machine: SecAggMachine,
    steps: Iterable[Step],
    *,
    skip: tuple[int, MessageKind] | None = None,
) -> list[Effect]:
    """Execute ``steps`` on ``machine`` (omitting the message ``skip``); return all effects."""
    effects: list[Effect] = []
    for step in steps:
        if step[0] == "begin":
            effects += machine.begin(transcript.inputs[machine.me])
        elif step[0] == "deadline":
            assert len(step) == 2
            assert isinstance(step[1], Phase)
            effects += machine.deadline(step[1])
        else:
            assert len(step) == 3
            _, sender, kind = step
            if (sender, kind) != skip:
                effects += machine.receive(sender, transcript.messages[(sender, kind)])
    return effects


def drive_to(transcript: Transcript, phase: Phase) -> tuple[SecAggMachine, list[Step]]:
    """A fresh peer 0 in ``phase``; returns it and the steps still to run.

    In an active phase P the machine has everything of earlier kinds and peer 2's kind-P
    message, and waits for peer 1's kind-P message (the next step).
    """
    machine = transcript.fresh(0)
    if phase is Phase.IDLE:
        return machine, list(SCHEDULE)
    if phase is Phase.ABORTED:
        machine.begin(transcript.inputs[0])
        effects = machine.deadline(Phase.ADVERTISE_KEYS)  # only 1 of T=3 advertised
        assert any(isinstance(e, RoundAborted) for e in effects)
        return machine, []
    if phase is Phase.DONE:
        run_steps(transcript, machine, SCHEDULE)
        return machine, []
    stop = SCHEDULE.index(("msg", 1, MessageKind(phase.value)))
    run_steps(transcript, machine, SCHEDULE[:stop])
    assert machine.phase is phase, (machine.phase, phase)
    return machine, list(SCHEDULE[stop:])


def finish(machine: SecAggMachine) -> list[Effect]:
    """Fire deadlines until the machine is finished (each active phase closes on its deadline)."""
    effects: list[Effect] = []
    for _ in range(len(Phase)):
        if machine.finished or machine.phase is Phase.IDLE:
            break
        effects += machine.deadline(machine.phase)
    return effects


def parsed_kind(data: bytes) -> MessageKind:
    """The message kind in a sealed envelope's header."""
    return MessageKind(parse_envelope(data, max_payload=len(data)).kind)


def run_rs_round(
    *,
    n: int,
    vector_length: int,
    seed: int,
    threshold: int | None = None,
    dropouts: Sequence[Dropout] = (),
    faults: Sequence[Fault] = (),
    adversaries: Mapping[int, Adversary] | None = None,
    inputs: Mapping[int, RingVector] | None = None,
    reduce_scatter: bool = True,
) -> RoundOutcome:
    """A ``secagg`` harness round in Z_2^32 on the reduce-scatter data path (SPEC §6.7)."""
    return run_secagg_round(
        n=n,
        vector_length=vector_length,
        seed=seed,
        threshold=threshold,
        dropouts=dropouts,
        faults=faults,
        adversaries=adversaries,
        inputs=inputs,
        ring_bits=32,
        reduce_scatter=reduce_scatter,
    )
