"""Security review of the reduce-scatter data path (SPEC §6.7): attacks and regressions.

Every test names the attack it mounts. Findings 1 and 2 of the review (camps from
differing dealer sets; an honest sender blamed for a ChunkSum built on another survivor
set) failed here first; one chunk per roster entry and a no-blame abort on differing
orphan sets fixed them (SPEC §6.7).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from functools import cache

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from mpc_agg.codec import Writer
from mpc_agg.crypto import AgreementKey
from mpc_agg.envelope import BROADCAST, parse_envelope
from mpc_agg.errors import VerificationError
from mpc_agg.prg import MaskTerm, apply_masks
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import RingVector
from mpc_agg.vss import recover
from protocols.common import AggregateReady, Broadcast, Effect, PeerExcluded, Send
from protocols.harness import (
    Adversary,
    Dropout,
    Fault,
    FaultKind,
    Outgoing,
    RoundOutcome,
    adopt,
    make_roster,
    random_inputs,
    resign,
)
from protocols.secagg.machine import SecAggMachine, SecAggParams
from protocols.secagg.messages import (
    ChunkSum,
    ConsistencyCheck,
    MaskedChunk,
    MaskedHeader,
    MessageKind,
    Phase,
    ShareKind,
)
from tests.protocol.support import run_rs_round

# --------------------------------------------------------------------------- helpers


def _payload(data: bytes) -> bytes:
    return bytes(parse_envelope(data, max_payload=len(data)).payload)


def _nothing_revealed(outcome: RoundOutcome, honest: Sequence[int]) -> None:
    for peer in honest:
        assert outcome.machines[peer].revealed == {}, peer


def _exact_or_aborted(outcome: RoundOutcome, honest: Sequence[int]) -> None:
    totals = set()
    for peer in honest:
        po = outcome.peers[peer]
        assert po.result is not None or po.aborted is not None, peer
        if po.result is not None:
            expected = outcome.expected_total(po.result.included)
            assert np.array_equal(po.result.total, expected), peer
            totals.add(po.result.total.tobytes())
    assert len(totals) <= 1


def _never_both_kinds(outcome: RoundOutcome, honest: Sequence[int]) -> None:
    kinds: dict[int, set[ShareKind]] = {}
    for peer in honest:
        for owner, kind in outcome.machines[peer].revealed.items():
            kinds.setdefault(owner, set()).add(kind)
    both = sorted(owner for owner, ks in kinds.items() if len(ks) > 1)
    assert not both, f"honest peers revealed both share kinds of {both}"


class _Tap(Adversary):
    """An honest peer whose every outgoing message an observing broker records."""

    def __init__(self, wire: list[tuple[int, int | None, bytes]]) -> None:
        self.wire = wire

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        self.wire.append((machine.me, None, data))
        return [Outgoing(data)]

    def outgoing_private(
        self, machine: SecAggMachine, kind: MessageKind, data: bytes, recipient: int
    ) -> list[Outgoing]:
        self.wire.append((machine.me, recipient, data))
        return [Outgoing(data, recipient)]


def _kind(data: bytes) -> int:
    return parse_envelope(data, max_payload=len(data)).kind


# --------------------------------------------------------------------------- 1. camps


_Wire = list[tuple[int, int | None, bytes]]


def _camp_round(reduce_scatter: bool, threshold: int = 3) -> tuple[RoundOutcome, _Wire]:
    """n = 6, T = 3 (allowed: 2 ≤ T ≤ n). Honest X = {0, 1}, honest Y = {2, 3}; colluders
    d = 5 and e = 4. d's ShareKeys reaches X before its deadline and Y ∪ {e} after it (a
    straggler, or d timing its publication; the broker only observes and delivers)."""
    wire: list[tuple[int, int | None, bytes]] = []
    faults = [
        Fault(kind=FaultKind.DELAY, sender=5, recipient=r, message=MessageKind.SHARE_KEYS)
        for r in (2, 3, 4)
    ]
    outcome = run_rs_round(
        n=6,
        vector_length=60,
        seed=21,
        threshold=threshold,
        faults=faults,
        adversaries={p: _Tap(wire) for p in range(6)},
        reduce_scatter=reduce_scatter,
    )
    return outcome, wire


def _coalition_recovers(
    outcome: RoundOutcome, wire: list[tuple[int, int | None, bytes]], victim: int
) -> NDArray[np.uint32] | None:
    """What colluders d = 5 and e = 4 plus the observing broker learn of ``victim``'s input."""
    d, e = outcome.machines[5], outcome.machines[4]
    dealer = d._dealers[victim]
    try:
        s = recover(d._pool.get((ShareKind.MASK_KEY, victim), {}), dealer.mask_key_commitments)
        b = recover(e._pool.get((ShareKind.SELF_MASK, victim), {}), dealer.self_mask_commitments)
    except VerificationError:  # fewer than T valid shares: nothing learned
        return None
    # the victim's masked input, from the wire: its chunks, its own chunk from its ChunkSum
    header = next(
        MaskedHeader.decode(_payload(x), chunks=5)
        for p, r, x in wire
        if p == victim and _kind(x) == MessageKind.MASKED_INPUT
    )
    owners = sorted(set(range(6)) - {5})  # the victim's (camp Y's) owners
    bounds = [(k * 60 // 5, (k + 1) * 60 // 5) for k in range(5)]
    y = np.zeros(60, dtype=np.uint32)
    chunks: dict[tuple[int, int], NDArray[np.uint32]] = {}
    for p, r, x in wire:
        if _kind(x) == MessageKind.MASKED_CHUNK and r is not None and p in (2, 3, 4):
            k = owners.index(r)
            chunks[(p, r)] = MaskedChunk.decode(
                _payload(x), length=bounds[k][1] - bounds[k][0]
            ).words
    for r in owners:
        if r != victim:
            a, z = bounds[owners.index(r)]
            y[a:z] = chunks[(victim, r)]
    a, z = bounds[owners.index(victim)]
    own_sum = next(
        ChunkSum.decode(_payload(x), length=z - a, orphans={0: 12, 1: 12}).sums
        for p, r, x in wire
        if p == victim and _kind(x) == MessageKind.CHUNK_SUM
    )
    others = sum(chunks[(p, victim)].astype(np.uint64) for p in (2, 3, 4) if p != victim)
    y[a:z] = (own_sum - others).astype(np.uint32)
    terms = [MaskTerm(d._self_mask_key(victim, b.secret), -1)]
    key = AgreementKey(s.secret)
    for v in header.mask_set:
        secret = key.exchange(d._advertised[v].mask_key)
        terms.append(MaskTerm(d._pair_mask_key(victim, v, secret), -1 if victim < v else 1))
    apply_masks(y, terms)
    return y


def test_camps_from_one_late_share_keys_reveal_no_honest_input() -> None:
    """Attack: split honest peers' *dealer sets* with one late ShareKeys (no broker help).

    In a reduce-scatter round the chunk count m = |dealers| is part of every header, and a
    header with another m fails to decode: the sender is excluded and is not a survivor, so
    its differing ConsistencyCheck is ignored (§6.4: 'from a peer outside my survivor set').
    X (which did not wait for d) closes MASKED_INPUT before Y's headers arrive; Y rejects
    X's headers (6 chunks, 5 owners) instead of holding them in S, so it never compares
    views with X. In a broadcast round Y would hold X's inputs and abort on X's views.
    Camp X = {0, 1, 5} and camp Y = {2, 3, 4} each see only themselves, each confirm T = 3
    views and finish. X reveals MASK_KEY shares of 2 and 3 (dropped dealers there), Y
    reveals their SELF_MASK shares: colluders 5 (in X) and 4 (in Y) with the observing
    broker recover honest inputs, with c = 2 < T (§3.2 P1).
    """
    outcome, wire = _camp_round(reduce_scatter=True)
    victim = 2
    recovered = _coalition_recovers(outcome, wire, victim)
    x = outcome.inputs[victim].astype(np.uint32)
    assert recovered is None or not np.array_equal(recovered, x), "victim's input recovered"
    _never_both_kinds(outcome, [0, 1, 2, 3])


def test_camps_from_one_late_share_keys_abort_in_a_broadcast_round() -> None:
    """Control for the camp attack: the broadcast path hears every honest peer's view and
    aborts, so no honest input is recovered and no owner's two share kinds are revealed."""
    outcome, _ = _camp_round(reduce_scatter=False)
    _never_both_kinds(outcome, [0, 1, 2, 3])
    _exact_or_aborted(outcome, [0, 1, 2, 3])


def test_one_straggling_share_keys_cannot_split_honest_peers_into_two_results() -> None:
    """Integrity/agreement: same schedule, everybody honest (peer 5 merely straggles).

    §6.7 claims 'honest peers that finish agree on the total'; here {0, 1, 5} output
    x_0 + x_1 + x_5 and {2, 3, 4} output x_2 + x_3 + x_4.
    """
    outcome, _ = _camp_round(reduce_scatter=True)
    results = {(r.included, r.total.tobytes()) for r in outcome.results().values()}
    assert len(results) <= 1, sorted(r[0] for r in results)


# --------------------------------------------------------------------------- a small network


class _Net:
    """Machines wired by hand: deliver until quiet, fire deadlines one peer at a time."""

    def __init__(self, *, n: int, vector_length: int, seed: int, threshold: int) -> None:
        roster, keys = make_roster(n)
        self.params = SecAggParams(
            federation="review",
            round_id=1,
            roster=roster,
            threshold=threshold,
            vector_length=vector_length,
            ring_bits=32,
            reduce_scatter=True,
        )
        self.keys = keys
        self.seed = seed
        self.machines = {p: self.fresh(p) for p in range(n)}
        self.inputs = random_inputs(n, vector_length, seed)
        self.queue: deque[tuple[int, int, bytes]] = deque()
        self.effects: dict[int, list[Effect]] = {p: [] for p in range(n)}
        self.wire: list[tuple[int, int, bytes]] = []
        self.drop: Callable[[int, int, bytes], bool] = lambda s, r, d: False

    def fresh(self, me: int) -> SecAggMachine:
        root = DeterministicRandomSource(f"review/{self.seed}")
        forks = [root.fork(f"peer/{p}") for p in range(me + 1)]
        return SecAggMachine(self.params, me=me, signing_key=self.keys[me], randomness=forks[me])

    def handle(self, peer: int, effects: Sequence[Effect]) -> None:
        self.effects[peer].extend(effects)
        for effect in effects:
            if isinstance(effect, Broadcast):
                for r in self.machines:
                    if r != peer:
                        self.queue.append((peer, r, effect.data))
            elif isinstance(effect, Send):
                self.queue.append((peer, effect.recipient, effect.data))

    def begin(self) -> None:
        for p, m in self.machines.items():
            self.handle(p, m.begin(self.inputs[p]))

    def pump(self) -> None:
        while self.queue:
            s, r, data = self.queue.popleft()
            if self.drop(s, r, data):
                continue
            self.wire.append((s, r, data))
            self.handle(r, self.machines[r].receive(s, data))

    def deadline(self, peer: int) -> None:
        m = self.machines[peer]
        self.handle(peer, m.deadline(m.phase))
        self.pump()

    def finish(self) -> None:
        for _ in range(20):
            self.pump()
            live = [p for p, m in self.machines.items() if not m.finished]
            if not live:
                return
            for p in live:
                self.deadline(p)


# --------------------------------------------------------------------------- 2. false blame


def test_a_chunk_sum_from_another_survivor_set_blames_nobody() -> None:
    """False blame: peer 6's header reaches everyone but peer 5 (in time).

    5 closes MASKED_INPUT on its deadline with 6 outside S, so its honest ChunkSum carries
    its part of the orphaned chunk 6. Every other peer decodes that against *its* S (where
    6 survived), emits PeerExcluded(5, 'malformed CHUNK_SUM …') and aborts with 'owner 5
    sent no ChunkSum'. A broadcast round reports the same situation as a differing view and
    blames nobody; an operator reading the audit log here would blame an honest site.
    """
    net = _Net(n=7, vector_length=70, seed=31, threshold=5)
    net.drop = lambda s, r, d: s == 6 and r == 5 and _kind(d) == MessageKind.MASKED_INPUT
    net.begin()
    net.pump()
    assert net.machines[5].phase is Phase.MASKED_INPUT
    assert net.machines[0].phase is Phase.CHUNK_SUM
    net.deadline(5)  # 5's deadline fires first
    net.finish()
    for peer in range(7):
        blamed = [e for e in net.effects[peer] if isinstance(e, PeerExcluded)]
        assert not blamed, (peer, blamed)


# --------------------------------------------------------------------------- 3. crash fuzz


@cache
def _recorded() -> _Net:
    net = _Net(n=4, vector_length=10, seed=41, threshold=3)
    net.begin()
    net.finish()
    assert all(m.phase is Phase.DONE for m in net.machines.values())
    return net


def _in_phase(phase: Phase) -> SecAggMachine:
    """A fresh peer 0 that has everything but peer 3's messages from ``phase`` on."""
    net = _recorded()
    machine = net.fresh(0)
    machine.begin(net.inputs[0])
    for s, r, data in net.wire:
        if r == 0 and not (s == 3 and MessageKind(_kind(data)).phase >= phase):
            machine.receive(s, data)
    assert machine.phase is phase, machine.phase
    return machine


def _real(sender: int, kind: MessageKind) -> bytes:
    return next(
        _payload(d) for s, r, d in _recorded().wire if s == sender and r == 0 and _kind(d) == kind
    )


_U16 = st.integers(0, 1100)
_WORDS = st.lists(st.integers(0, (1 << 32) - 1), max_size=12)


@st.composite
def _chunk_sum_payload(draw: st.DrawFn) -> bytes:
    w = Writer()
    missing = draw(st.lists(_U16, max_size=4))
    w.u32(len(missing))
    for p in missing:
        w.u16(p)
    low = draw(st.lists(st.integers(0, (1 << 32) - 1), max_size=6))
    high = draw(st.lists(st.integers(0, 255), min_size=len(low), max_size=len(low) + 1))
    w.ring_vector32(np.array(low, dtype=np.uint32), 1 << 31)  # §5.8: low words, high bytes
    w.small_words(np.array(high, dtype=np.uint8), 1, 1 << 31)
    orphans = draw(st.lists(st.tuples(st.integers(0, 5), _WORDS), max_size=3))
    w.u32(draw(st.sampled_from([len(orphans), len(orphans) + 1, 0xFFFFFFFF])))
    for owner, words in orphans:
        w.u16(owner).ring_vector32(np.array(words, dtype=np.uint32), 1 << 31)
    return w.getvalue()


@st.composite
def _consistency_payload(draw: st.DrawFn) -> bytes:
    real = ConsistencyCheck.decode(_real(3, MessageKind.CONSISTENCY_CHECK))
    checks = draw(
        st.one_of(
            st.just(real.checks),
            st.lists(st.integers(0, (1 << 64) - 1), max_size=15).map(tuple),
        )
    )
    chunk_sums = draw(st.sampled_from([real.chunk_sums, (), real.chunk_sums[:-1]]))
    return replace(real, checks=checks, chunk_sums=chunk_sums).encode()


@st.composite
def _header_payload(draw: st.DrawFn) -> bytes:
    real = MaskedHeader.decode(_real(3, MessageKind.MASKED_INPUT), chunks=4)
    count = draw(st.integers(1, 6))
    digests = tuple(draw(st.binary(min_size=32, max_size=32)) for _ in range(count))
    mask_set = draw(st.sampled_from([real.mask_set, (), (0,), (0, 1, 2, 3), (0, 1000)]))
    return replace(real, chunk_digests=digests, mask_set=mask_set).encode()


def _mutated(data: bytes) -> st.SearchStrategy[bytes]:
    positions = st.integers(0, max(len(data) - 1, 0))
    return st.one_of(
        st.tuples(positions, st.integers(0, 255)).map(
            lambda pv: data[: pv[0]] + bytes([pv[1]]) + data[pv[0] + 1 :]
        ),
        positions.map(lambda p: data[:p]),
        st.binary(max_size=16).map(lambda extra: data + extra),
    )


def _payloads(kind: MessageKind) -> st.SearchStrategy[bytes]:
    structured: dict[MessageKind, st.SearchStrategy[bytes]] = {
        MessageKind.CHUNK_SUM: _chunk_sum_payload(),
        MessageKind.CONSISTENCY_CHECK: _consistency_payload(),
        MessageKind.MASKED_INPUT: _header_payload(),
        MessageKind.MASKED_CHUNK: _WORDS.map(
            lambda ws: Writer().ring_vector32(np.array(ws, dtype=np.uint32), 1 << 31).getvalue()
        ),
    }
    real = _real(3, kind)
    return st.one_of(structured[kind], _mutated(real), st.binary(max_size=200))


_FUZZ = settings(
    max_examples=120,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@pytest.mark.parametrize(
    ("phase", "kind"),
    [
        (Phase.MASKED_INPUT, MessageKind.MASKED_INPUT),
        (Phase.MASKED_INPUT, MessageKind.MASKED_CHUNK),
        (Phase.CHUNK_SUM, MessageKind.CHUNK_SUM),
        (Phase.CONSISTENCY_CHECK, MessageKind.CONSISTENCY_CHECK),
    ],
    ids=lambda v: v.name,
)
def test_signed_garbage_in_the_reduce_scatter_phases_never_raises(
    phase: Phase, kind: MessageKind
) -> None:
    """Crash hunt: peer 3 signs arbitrary, mutated and structurally odd kind-3/4/5/8
    payloads in the phase that processes them; the machine must turn them into effects,
    finish on its deadlines, and any aggregate it outputs must be exact."""
    net = _recorded()

    @_FUZZ
    @given(payload=_payloads(kind))
    def run(payload: bytes) -> None:
        machine = _in_phase(phase)
        recipient = 0 if kind is MessageKind.MASKED_CHUNK else BROADCAST
        data = net.fresh(3)._seal(kind, payload, recipient)
        effects = machine.receive(3, data)
        for _ in range(len(Phase)):
            if machine.finished:
                break
            effects += machine.deadline(machine.phase)
        assert machine.finished
        for effect in effects:
            if isinstance(effect, AggregateReady):
                total = np.zeros(10, dtype=np.uint64)
                for p in effect.included:
                    np.add(total, net.inputs[p], out=total)
                expected = total.astype(np.uint32).view(np.int32).astype(np.int64)
                assert np.array_equal(effect.total.view(np.int64), expected)

    run()


# --------------------------------------------------------------------------- 4. regressions


def _rewrite(machine: SecAggMachine, kind: MessageKind, payload: bytes) -> bytes:
    forged = resign(machine, kind, payload)
    adopt(machine, kind, forged)
    return forged


class _Owner(Adversary):
    """Peer that (optionally) omits peer 0 from its header's mask set, so it is a survivor
    outside I (§6.4 step 4), and (optionally) rewrites its ChunkSum."""

    def __init__(
        self,
        *,
        asymmetric: bool = False,
        sums: Callable[[RingVector, int], None] | None = None,
        orphans: Mapping[int, int] | None = None,
        orphan_flip: bool = False,
    ) -> None:
        self.asymmetric = asymmetric
        self.sums = sums
        self.orphans = dict(orphans or {})
        self.orphan_flip = orphan_flip

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        chunks = machine._chunks
        if chunks is None:
            return [Outgoing(data)]
        if kind is MessageKind.MASKED_INPUT and self.asymmetric:
            header = MaskedHeader.decode(_payload(data), chunks=machine.params.n)
            header = replace(header, mask_set=tuple(p for p in header.mask_set if p != 0))
            return [Outgoing(_rewrite(machine, kind, header.encode()))]
        if kind is MessageKind.CHUNK_SUM and (self.sums is not None or self.orphan_flip):
            start, stop = chunks.bounds[machine.me]
            message = ChunkSum.decode(_payload(data), length=stop - start, orphans=self.orphans)
            sums = message.sums.copy()
            if self.sums is not None:
                self.sums(sums, len(machine._agree([]).included))
            orphans = message.orphans
            if self.orphan_flip:
                owner, words = orphans[0]
                flipped = words.copy()
                flipped[0] ^= np.uint32(1)
                orphans = ((owner, flipped), *orphans[1:])
            forged_message = ChunkSum.from_sums(
                missing=message.missing,
                sums=sums,
                orphans=orphans,
                high_bytes=message.high_bytes,
            )
            chunks.sums[machine.me] = (forged_message, b"")
            return [Outgoing(_rewrite(machine, kind, forged_message.encode()))]
        return [Outgoing(data)]


def _add_one(sums: RingVector, included: int) -> None:
    sums[0] += np.uint64(1)


def _over_limit(sums: RingVector, included: int) -> None:
    sums[0] = np.uint64(included * 0xFFFFFFFF + 1)


def test_a_wrong_sum_from_a_survivor_outside_i_aborts_before_any_reveal() -> None:
    """Integrity: the owner of a chunk is a survivor but not included (it omitted a pairwise
    mask): its wrong sum is still checked, by the included peers' honest checks."""
    outcome = run_rs_round(
        n=7, vector_length=70, seed=51, adversaries={6: _Owner(asymmetric=True, sums=_add_one)}
    )
    honest = range(6)
    assert not outcome.results()
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert "chunk sum of owner 6 does not match" in aborted.reason, aborted.reason
    _nothing_revealed(outcome, list(honest))


def test_chunk_sums_above_the_bound_exclude_the_owner_and_abort() -> None:
    """Integrity: sums above |I|·(2^32 − 1) would let e exceed 2^42 and weaken the checks;
    they are refused outright (§6.7), before any reveal."""
    outcome = run_rs_round(
        n=5, vector_length=50, seed=52, adversaries={1: _Owner(sums=_over_limit)}
    )
    honest = [0, 2, 3, 4]
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert "impossible sums" in aborted.reason, aborted.reason
        assert any(isinstance(e, PeerExcluded) and e.peer == 1 for e in outcome.peers[peer].effects)
    _nothing_revealed(outcome, honest)


def test_a_forged_orphan_part_aborts_before_any_reveal() -> None:
    """Integrity: an included peer publishes a wrong part of an orphaned chunk (its owner
    5 sent no header); the part is checked against the sender's header digest."""
    outcome = run_rs_round(
        n=7,
        vector_length=70,
        seed=53,
        dropouts=[Dropout(5, Phase.MASKED_INPUT)],
        adversaries={2: _Owner(orphans={5: 10}, orphan_flip=True)},
    )
    honest = [0, 1, 3, 4, 6]
    for peer in honest:
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert "part of orphaned chunk 5" in aborted.reason, aborted.reason
    _nothing_revealed(outcome, honest)


class _SplitChecks(Adversary):
    """An included peer that shows wrong chunk checks to ``victims`` and its real ones to
    everybody else (the checks are not part of the view, so the views still agree)."""

    def __init__(self, victims: Sequence[int]) -> None:
        self.victims = tuple(victims)

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        if kind is not MessageKind.CONSISTENCY_CHECK:
            return [Outgoing(data)]
        real = ConsistencyCheck.decode(_payload(data))
        checks = ((real.checks[0] + 1) % (1 << 64), *real.checks[1:])
        forged = resign(machine, kind, replace(real, checks=checks).encode())
        others = [p for p in range(machine.params.n) if p not in self.victims and p != machine.me]
        return [Outgoing(forged, v) for v in self.victims] + [Outgoing(data, p) for p in others]


def test_equivocated_checks_split_outcomes_but_never_totals() -> None:
    """Equivocation of the unsigned-by-view part: peers shown wrong checks abort before
    revealing anything; the others finish with the exact sum (same view, same sums)."""
    outcome = run_rs_round(n=7, vector_length=70, seed=54, adversaries={4: _SplitChecks([0, 1])})
    for peer in (0, 1):
        aborted = outcome.peers[peer].aborted
        assert aborted is not None
        assert "does not match the included peers' checks" in aborted.reason, aborted.reason
    _nothing_revealed(outcome, [0, 1])
    honest = [0, 1, 2, 3, 5, 6]
    _exact_or_aborted(outcome, honest)
    _never_both_kinds(outcome, honest)
    assert set(outcome.results()) >= {2, 3, 5, 6}


class _ReplayChunk(Adversary):
    """Also sends its chunk for owner 0 to owner 1 (a chunk replayed to another owner)."""

    def outgoing_private(
        self, machine: SecAggMachine, kind: MessageKind, data: bytes, recipient: int
    ) -> list[Outgoing]:
        if kind is MessageKind.MASKED_CHUNK and recipient == 0:
            return [Outgoing(data, 0), Outgoing(data, 1)]
        return [Outgoing(data, recipient)]


def test_a_chunk_replayed_to_another_owner_is_ignored() -> None:
    """Admission: a MaskedChunk names its owner; a copy delivered to another owner is
    ignored (not equivocation, not a chunk of the wrong length), and the round is exact."""
    outcome = run_rs_round(n=5, vector_length=50, seed=55, adversaries={4: _ReplayChunk()})
    assert set(outcome.results()) == set(range(5))
    _exact_or_aborted(outcome, range(5))
    assert not any(isinstance(e, PeerExcluded) for e in outcome.peers[1].effects)


def test_a_survivor_outside_i_that_stops_before_its_check_does_not_abort() -> None:
    """SPEC §6.7 mismatch: 'a survivor that stops before sending … its ConsistencyCheck
    aborts the round' holds only for survivors in I. Peer 6 is a survivor outside I
    (asymmetric mask set); it sends its ChunkSum, stops, and the others finish exactly."""
    outcome = run_rs_round(
        n=7,
        vector_length=70,
        seed=56,
        dropouts=[Dropout(6, Phase.CONSISTENCY_CHECK)],
        adversaries={6: _Owner(asymmetric=True)},
    )
    honest = list(range(6))
    assert set(outcome.results()) == set(honest), outcome.aborts()
    _exact_or_aborted(outcome, honest)
    assert all(r.included == tuple(honest) for r in outcome.results().values())


def test_camps_need_a_threshold_of_at_most_half_the_roster() -> None:
    """Scope of finding 1: with the default T = ⌊2n/3⌋ + 1 (here 5) neither camp of three
    reaches T, so both abort and no owner's two share kinds are revealed."""
    outcome, _ = _camp_round(reduce_scatter=True, threshold=5)
    _never_both_kinds(outcome, [0, 1, 2, 3])
    assert not outcome.results()
