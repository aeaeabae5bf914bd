"""Review of 22acb18: the update handed over to PeerNode, and ChunkSum.summing (SPEC §5.8).

1. ``PeerNode.aggregate`` takes the update in a one-slot list and drops it once encoded;
   ``mpc-agg aggregate`` hands its loaded input over. Checked on every path of
   ``_aggregate`` (plain, reduce-scatter, robust, DP), for 0-d, multi-dimensional,
   Fortran-order, strided, float32 and list inputs (the result keeps the input's shape),
   on the error paths before and after the hand-over (an exception raised after it must
   not pin the input), and through the CLI's ``_aggregate`` with a stand-in node.
2. ``ChunkSum.summing`` against ``from_sums`` of the uint64 sums: block boundaries
   (block = 2^15), |I| = 1, 2, 255, 256, 257 with the high width of ``sum_high_bytes``,
   the fit check at its edge and in a later block, empty chunks, read-only, writable and
   strided parts, and the sealed pieces. On whole reduce-scatter rounds (honest, L < n,
   orphans, forged sums, forged or missing chunks) every peer's wire bytes and outcome
   are compared with the previous commit's owner path (uint64 sums, ``from_sums``, the
   joined encoding), reproduced here by patching ``ChunkSum``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from mpc_agg.codec import InvalidValueError
from mpc_agg.envelope import parse_envelope
from mpc_agg.errors import EncodingError
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.ring import BLOCK
from peers import cli
from peers.audit import AuditLog
from peers.memory import MemoryBroker
from peers.node import AggregateResult, PeerNode, RoundAbortedError
from protocols.common import Broadcast, Send
from protocols.harness import (
    Adversary,
    Dropout,
    Fault,
    FaultKind,
    Outgoing,
    RoundOutcome,
    adopt,
    make_roster,
    resign,
    run_secagg_round,
)
from protocols.secagg.machine import SecAggMachine, SecAggParams
from protocols.secagg.messages import (
    ChunkSum,
    MessageKind,
    Phase,
    sum_high_bytes,
)
from tests.dp_support import dp_settings
from tests.dp_support import memory as _memory
from tests.protocol.test_reduce_scatter import _BadChunk as BadChunk
from tests.runtime.nodes import FRAC_BITS, on_grid, running_nodes

B = BLOCK  # ChunkSum.summing's block
WORD = 0xFFFFFFFF

# =========================================================================== 1. hand-over


class _Released:
    """Set once the watched object is freed (``weakref.finalize``)."""

    def __init__(self, target: object) -> None:
        self.freed = False
        weakref.finalize(target, self._set)

    def _set(self) -> None:
        self.freed = True


class _FloatList(list[float]):
    """A list that can be watched with a weakref (a plain list cannot)."""


async def _until_running(node: PeerNode, first: asyncio.Future[Any]) -> None:
    """Until ``node`` has installed its round (the update encoded and handed to the state)."""
    for _ in range(5000):
        if node._current is not None or first.done():
            return
        await asyncio.sleep(0.001)
    raise AssertionError("the round never started")


async def _handed_over_round(
    n: int,
    make: Callable[[], Any],
    others: Sequence[NDArray[np.float64]],
    **options: Any,
) -> tuple[bool, AggregateResult, list[AggregateResult]]:
    """Site-0 hands over ``make()`` and keeps no reference; is it freed during the round?"""
    options.setdefault("threshold", n)
    async with running_nodes(n, _memory(MemoryBroker()), **options) as nodes:
        handed = make()
        watch = _Released(handed)
        first = asyncio.ensure_future(nodes[0].aggregate(handed))
        del handed
        await _until_running(nodes[0], first)  # the others have not started: it waits
        gc.collect()
        freed_during_round = watch.freed
        rest = await asyncio.gather(
            *(node.aggregate(u) for node, u in zip(nodes[1:], others, strict=True))
        )
        result = await first
    return freed_during_round, result, list(rest)


def _grid(seed: int, shape: tuple[int, ...]) -> NDArray[np.float64]:
    return on_grid(np.random.default_rng(seed), shape)


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "kind", ["2-d", "0-d", "fortran", "strided", "float32", "list", "reduce-scatter"]
)
async def test_the_update_is_let_go_and_the_total_keeps_its_shape(kind: str) -> None:
    other = _grid(1, (6, 5))
    base = _grid(2, (12, 10))  # strided: a view into it; the view itself is handed over
    expected_mine: NDArray[np.float64]
    options: dict[str, Any] = {}
    if kind == "2-d":
        expected_mine = _grid(3, (6, 5))

        def make() -> Any:
            return expected_mine.copy()

    elif kind == "0-d":
        other = np.asarray(0.25)
        expected_mine = np.asarray(-0.125)

        def make() -> Any:
            return np.asarray(-0.125)

    elif kind == "fortran":
        expected_mine = _grid(4, (6, 5))

        def make() -> Any:
            return np.asfortranarray(expected_mine)

    elif kind == "strided":
        expected_mine = base[::2, ::2].copy()

        def make() -> Any:
            view = base[::2, ::2]
            assert not view.flags.c_contiguous
            return view

    elif kind == "float32":
        expected_mine = _grid(5, (6, 5)).astype(np.float32).astype(np.float64)

        def make() -> Any:
            return expected_mine.astype(np.float32)

    elif kind == "list":
        other = _grid(6, (7,))
        expected_mine = _grid(7, (7,))

        def make() -> Any:
            return _FloatList(float(v) for v in expected_mine)

    else:  # the reduce-scatter data path (three sites: chunks of 10 entries)
        options["reduce_scatter"] = True
        expected_mine = _grid(8, (6, 5))

        def make() -> Any:
            return expected_mine.copy()

    n = 3 if kind == "reduce-scatter" else 2
    others = [other] * (n - 1)
    freed, mine, rest = await _handed_over_round(n, make, others, **options)
    assert freed, "the node still holds the handed-over update during the round"
    expected = expected_mine + sum(others)
    for result in (mine, *rest):
        assert result.total.shape == expected.shape
        assert np.array_equal(result.total, expected)
    if kind == "strided":
        assert np.array_equal(base[::2, ::2], expected_mine)  # the input was not written


@pytest.mark.asyncio
async def test_a_robust_round_lets_go_of_the_update() -> None:
    def unit(seed: int) -> NDArray[np.float64]:
        values = _grid(seed, (8, 4))
        scale = 0.5 / float(np.linalg.norm(values))
        return np.asarray(np.floor(values * scale * 2**FRAC_BITS) / 2**FRAC_BITS)

    mine = unit(11)
    others = [unit(12), unit(13)]
    freed, result, rest = await _handed_over_round(
        3, mine.copy, others, protocol="robust", max_norm=1.0, threshold=None
    )
    assert freed, "the robust path (_round_codec) still holds the update"
    for r in (result, *rest):
        assert r.protocol == "robust/3"
        assert r.total.shape == (8, 4)
        assert np.array_equal(r.total, mine + sum(others))


@pytest.mark.asyncio
async def test_a_dp_round_lets_go_of_the_update_and_reshapes_the_noisy_total() -> None:
    shape = (5, 3, 2)  # the rotation pads 30 entries to 32: the total is cut back and reshaped
    rng = np.random.default_rng(21)
    mine = rng.normal(size=shape) * 0.01
    other = rng.normal(size=shape) * 0.01
    freed, result, rest = await _handed_over_round(
        2, mine.copy, [other], privacy=dp_settings(noise_multiplier=0.5)
    )
    assert freed, "the DP path (dp.privatize) still holds the update"
    assert result.privacy is not None
    assert result.total.shape == shape
    assert np.array_equal(result.total, rest[0].total)
    assert np.isfinite(result.total).all()


@pytest.mark.asyncio
async def test_an_abort_after_the_hand_over_does_not_pin_the_update(tmp_path: Path) -> None:
    # the RoundAbortedError's traceback holds _aggregate's frame: the update must not be in it
    log = tmp_path / "site-0.audit.jsonl"
    async with running_nodes(
        3,
        _memory(MemoryBroker()),
        threshold=3,
        deadline=0.1,
        audit=lambda i: AuditLog(log) if i == 0 else None,
    ) as nodes:
        handed = _grid(31, (50,))
        watch = _Released(handed)
        caught: list[BaseException] = []
        try:
            await nodes[0].aggregate(handed)
        except RoundAbortedError as exc:
            caught.append(exc)
        del handed
        gc.collect()
        assert caught, "the round did not abort"
        assert caught[0].__traceback__ is not None  # the frames are still reachable
        assert watch.freed, "the abort's traceback keeps the update alive"
        assert not nodes[0]._busy
        assert nodes[0]._last_round == 1
    assert '"aborted"' in log.read_text()


@pytest.mark.asyncio
async def test_an_error_before_the_hand_over_leaves_the_node_as_it_was() -> None:
    async with running_nodes(2, _memory(MemoryBroker()), threshold=2) as nodes:
        for bad in (np.array([[0.1, np.nan]]), np.array([0.1, 7.0]), np.zeros((0, 3))):
            handed = bad.copy()
            watch = _Released(handed)
            with pytest.raises(EncodingError) as info:
                await nodes[0].aggregate(handed)
            del handed, info  # the exception (and its frames) dropped: nothing else holds it
            gc.collect()
            assert watch.freed
            assert not nodes[0]._busy
            assert nodes[0]._last_round == 0
            assert nodes[0]._current is None
        updates = [_grid(32, (3, 2)), _grid(33, (3, 2))]
        results = await asyncio.gather(
            *(n.aggregate(u) for n, u in zip(nodes, updates, strict=True))
        )
    for result in results:
        assert result.round_id == 1
        assert np.array_equal(result.total, updates[0] + updates[1])


class _StandInNode:
    """What ``peers.cli._one_round`` needs of a PeerNode: checks that no caller frame
    still holds the input while the round would run."""

    freed_in_round: bool | None = None

    @classmethod
    def from_config(cls, site: Any) -> _StandInNode:
        return cls()

    async def __aenter__(self) -> _StandInNode:
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    async def aggregate(self, update: Any, *, round_id: int | None = None) -> Any:
        watch = _Released(update)
        shape = np.asarray(update).shape
        del update
        gc.collect()
        type(self).freed_in_round = watch.freed
        return SimpleNamespace(
            total=np.zeros(shape),
            round_id=round_id or 1,
            count=1,
            included=("site-0",),
            privacy=None,
        )


def test_the_cli_hands_its_loaded_input_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "x.npy"
    np.save(source, np.arange(12, dtype=np.float32).reshape(3, 4))
    site = SimpleNamespace(
        name="site-0",
        path=tmp_path / "site-0.toml",
        federation=SimpleNamespace(
            path=tmp_path / "federation.toml", limits=SimpleNamespace(max_vector_length=1000)
        ),
        signing_key_file=None,
        password_file=None,
        audit_log=tmp_path / "site-0.audit.jsonl",
        broker=SimpleNamespace(ca_file=None),
    )
    monkeypatch.setattr(cli, "load_site", lambda _path: site)
    monkeypatch.setattr(cli, "PeerNode", _StandInNode)
    monkeypatch.setattr(_StandInNode, "freed_in_round", None)
    args = argparse.Namespace(
        config="site-0.toml",
        input=str(source),
        output=str(tmp_path / "sum.npy"),
        report=None,
        round=None,
    )
    assert cli._aggregate(args) == 0
    assert _StandInNode.freed_in_round is True, "the CLI still holds its input for the round"
    assert np.load(tmp_path / "sum.npy").shape == (3, 4)
    assert "written to" in capsys.readouterr().out


# =========================================================================== 2. summing


def _reference(
    parts: Sequence[NDArray[np.uint32]],
    length: int,
    orphans: tuple[tuple[int, NDArray[np.uint32]], ...],
    high_bytes: int,
) -> ChunkSum:
    """The previous commit's owner path: the whole chunk's uint64 sums, then from_sums."""
    sums = np.zeros(length, dtype=np.uint64)
    for part in parts:
        np.add(sums, part, out=sums)
    return ChunkSum.from_sums(missing=(), sums=sums, orphans=orphans, high_bytes=high_bytes)


def _worst_at_edges(count: int, length: int, seed: int) -> NDArray[np.uint32]:
    """``count`` random parts (rows) with 2^32 − 1 in every part around each block edge."""
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, 1 << 32, size=(count, length), dtype=np.uint32)
    for edge in range(0, length + 1, B):
        for k in (edge - 1, edge):
            if 0 <= k < length:
                rows[:, k] = WORD
    if length:
        rows[:, -1] = WORD
    return rows


def _same(summed: ChunkSum, reference: ChunkSum) -> None:
    assert summed.missing == reference.missing == ()
    assert summed.high.dtype == reference.high.dtype
    assert summed.high_bytes == reference.high_bytes
    assert np.array_equal(summed.low, reference.low)
    assert np.array_equal(summed.high, reference.high)
    wire = reference.encode()
    assert summed.encode() == wire
    assert b"".join(bytes(p) for p in summed.encode_parts()) == wire
    assert summed.low.flags.writeable
    assert summed.high.flags.writeable


@pytest.mark.parametrize(
    ("count", "high_bytes", "lengths"),
    [
        (1, 1, (0, 1, B - 1, B, B + 1, 2 * B, 2 * B + 1, 3 * B + 5)),
        (2, 1, (1, B - 1, B, B + 1, 2 * B + 1)),
        (2, 2, (B + 1,)),  # a roster of n > 256 of which two are included
        (255, 1, (B - 1, B + 1)),
        (256, 1, (B, B + 1)),  # the largest high byte: 255
        (256, 2, (B + 1,)),
        (257, 2, (B - 1, B + 1)),
    ],
    ids=lambda v: str(v) if not isinstance(v, tuple) else "L" + ",".join(map(str, v)),
)
def test_summing_is_from_sums_at_every_block_edge(
    count: int, high_bytes: int, lengths: tuple[int, ...]
) -> None:
    assert high_bytes >= sum_high_bytes(count)
    for length in lengths:
        rows = _worst_at_edges(count, length, seed=count * 7 + length)
        parts = list(rows)
        orphans = ((0, rows[0][: min(length, 4)]), (3, np.arange(3, dtype=np.uint32)))
        reference = _reference(parts, length, orphans, high_bytes)
        summed = ChunkSum.summing(
            parts=parts, length=length, orphans=orphans, high_bytes=high_bytes
        )
        _same(summed, reference)
        if length:
            assert int(summed.exact(length - 1, length)[0]) == count * WORD


def test_summing_of_no_parts_and_of_empty_chunks() -> None:
    # |I| = 0 is refused later (§6.4); L < n gives owners with empty chunks
    for length in (0, 1, B + 1):
        _same(
            ChunkSum.summing(parts=[], length=length, orphans=(), high_bytes=1),
            _reference([], length, (), 1),
        )
    empty = [np.zeros(0, dtype=np.uint32)] * 5
    for high_bytes in (1, 2):
        summed = ChunkSum.summing(parts=empty, length=0, orphans=(), high_bytes=high_bytes)
        _same(summed, _reference(empty, 0, (), high_bytes))
        decoded = ChunkSum.decode(summed.encode(), length=0, orphans={}, high_bytes=high_bytes)
        assert decoded.low.size == decoded.high.size == 0
        assert decoded.missing == ()


@pytest.mark.parametrize("where", [0, B - 1, B, 2 * B + 2])
def test_the_fit_check_is_from_sums_in_every_block(where: int) -> None:
    length = 2 * B + 3
    zeros = np.zeros(length, dtype=np.uint32)
    one_full = zeros.copy()
    one_full[where] = WORD
    # 256 words of 2^32 − 1 fit in 4 + 1 bytes (high 255); a 257th does not
    fits = [one_full] * 256
    _same(ChunkSum.summing(parts=fits, length=length, orphans=()), _reference(fits, length, (), 1))
    over = [*fits, one_full]
    with pytest.raises(InvalidValueError, match="does not fit in 5 bytes"):
        _reference(over, length, (), 1)
    with pytest.raises(InvalidValueError, match="does not fit in 5 bytes"):
        ChunkSum.summing(parts=over, length=length, orphans=(), high_bytes=1)
    # just over by one: 256·(2^32 − 1) + 2^8 = 2^40 in that entry only
    nudge = zeros.copy()
    nudge[where] = 256
    with pytest.raises(InvalidValueError, match="does not fit in 5 bytes"):
        ChunkSum.summing(parts=[*fits, nudge], length=length, orphans=(), high_bytes=1)
    nudge[where] = 255
    exact = ChunkSum.summing(parts=[*fits, nudge], length=length, orphans=(), high_bytes=1)
    assert int(exact.exact(where, where + 1)[0]) == (1 << 40) - 1
    assert int(exact.high[where]) == 255


def test_the_two_byte_fit_check_is_from_sums() -> None:
    full = np.full(1, WORD, dtype=np.uint32)
    fits = [full] * (1 << 16)  # Σ = 2^16·(2^32 − 1) < 2^48
    summed = ChunkSum.summing(parts=fits, length=1, orphans=(), high_bytes=2)
    _same(summed, _reference(fits, 1, (), 2))
    assert int(summed.high[0]) == 0xFFFF
    over = [*fits, full]
    with pytest.raises(InvalidValueError, match="does not fit in 6 bytes"):
        _reference(over, 1, (), 2)
    with pytest.raises(InvalidValueError, match="does not fit in 6 bytes"):
        ChunkSum.summing(parts=over, length=1, orphans=(), high_bytes=2)


def test_read_only_writable_and_strided_parts_are_read_not_written() -> None:
    length = B + 9
    rows = _worst_at_edges(4, length, seed=5)
    read_only = np.frombuffer(rows[0].tobytes(), dtype=np.uint32)  # a view of bytes
    assert not read_only.flags.writeable
    writable = np.frombuffer(bytearray(rows[1].tobytes()), dtype=np.uint32)
    strided = np.repeat(rows[2], 2)[::2]  # every other word of a longer vector
    assert not strided.flags.c_contiguous
    big_endian = rows[3].astype(">u4").astype(np.uint32)  # native again: accepted
    parts = [read_only, writable, strided, big_endian]
    before = [p.copy() for p in parts]
    summed = ChunkSum.summing(parts=parts, length=length, orphans=(), high_bytes=1)
    _same(summed, _reference(parts, length, (), 1))
    for part, copy in zip(parts, before, strict=True):
        assert np.array_equal(part, copy)
    summed.low[:] = 0  # its parts are its own: writing them does not reach the inputs
    summed.high[:] = 0
    for part, copy in zip(parts, before, strict=True):
        assert np.array_equal(part, copy)
    with pytest.raises(InvalidValueError, match="uint32 vectors"):
        ChunkSum.summing(parts=[rows[0].astype(">u4")], length=length, orphans=())
    with pytest.raises(InvalidValueError, match="uint32 vectors"):
        ChunkSum.summing(parts=[rows[:, :length].reshape(4, length)], length=length, orphans=())


def test_a_chunk_sum_sealed_from_its_pieces_is_the_one_sealed_whole() -> None:
    roster, keys = make_roster(3)
    params = SecAggParams(
        federation="f",
        round_id=1,
        roster=roster,
        threshold=2,
        vector_length=9,
        ring_bits=32,
        reduce_scatter=True,
    )
    machine = SecAggMachine(params, me=1, signing_key=keys[1], randomness=_source(1))
    for length in (0, 3, B + 1):
        rows = _worst_at_edges(3, length, seed=length)
        orphans = ((2, rows[0][: min(length, 2)]),)
        summed = ChunkSum.summing(parts=list(rows), length=length, orphans=orphans)
        pieces = machine._seal(MessageKind.CHUNK_SUM, summed.encode_parts())
        whole = machine._seal(MessageKind.CHUNK_SUM, summed.encode())
        assert pieces == whole
        payload = parse_envelope(pieces, max_payload=1 << 30).payload
        back = ChunkSum.decode(payload, length=length, orphans={0: 3, 2: min(length, 2)})
        assert np.array_equal(back.sums, _reference(list(rows), length, (), 1).sums)


def _source(seed: int) -> DeterministicRandomSource:
    return DeterministicRandomSource(f"review/{seed}")


# ----------------------------------------------------------- whole rounds, old against new


class _ForgedSum(Adversary):
    """An owner that changes one entry of its chunk sum (low word or high part)."""

    def __init__(self, *, entry: int, high: bool) -> None:
        self.entry, self.high = entry, high

    def outgoing(self, machine: SecAggMachine, kind: MessageKind, data: bytes) -> list[Outgoing]:
        chunks = machine._chunks
        if kind is not MessageKind.CHUNK_SUM or chunks is None:
            return [Outgoing(data)]
        start, stop = chunks.bounds[machine.me]
        others = {o: b - a for o, (a, b) in enumerate(chunks.bounds) if o != machine.me}
        payload = parse_envelope(data, max_payload=1 << 30).payload
        message = ChunkSum.decode(payload, length=stop - start, orphans=others)
        if not message.low.size:
            return [Outgoing(data)]
        low, high = message.low.copy(), message.high.copy()
        if self.high:
            high[self.entry] += 1
        else:
            low[self.entry] ^= np.uint32(1)
        forged = ChunkSum(missing=(), low=low, high=high, orphans=message.orphans)
        sealed = resign(machine, kind, forged.encode())
        chunks.sums[machine.me] = (forged, b"")
        adopt(machine, kind, sealed)
        return [Outgoing(sealed)]


def _scenarios() -> dict[str, Callable[[], RoundOutcome]]:
    def rs(**kwargs: Any) -> RoundOutcome:
        return run_secagg_round(ring_bits=32, reduce_scatter=True, **kwargs)

    drop_chunk = Fault(kind=FaultKind.DROP, sender=1, recipient=3, message=MessageKind.MASKED_CHUNK)
    tamper = Fault(kind=FaultKind.TAMPER, message=MessageKind.MASKED_CHUNK, probability=0.3)
    return {
        "L1-n3": lambda: rs(n=3, vector_length=1, seed=1),
        "L2-n7 (empty chunks)": lambda: rs(n=7, vector_length=2, seed=2),
        "chunks of one block": lambda: rs(n=3, vector_length=3 * B, seed=3),
        "chunks across a block": lambda: rs(n=3, vector_length=3 * (B + 1), seed=4),
        "writable delivery": lambda: rs(n=4, vector_length=101, seed=5, writable=True),
        "orphans, L < n": lambda: rs(
            n=6,
            vector_length=4,
            seed=6,
            threshold=3,
            dropouts=[Dropout(2, Phase.MASKED_INPUT), Dropout(4, Phase.MASKED_INPUT)],
        ),
        "orphan": lambda: rs(
            n=5, vector_length=50, seed=7, dropouts=[Dropout(3, Phase.MASKED_INPUT)]
        ),
        "dropout at CHUNK_SUM": lambda: rs(
            n=5, vector_length=40, seed=8, dropouts=[Dropout(3, Phase.CHUNK_SUM)]
        ),
        "forged low word": lambda: rs(
            n=5, vector_length=100, seed=9, adversaries={2: _ForgedSum(entry=0, high=False)}
        ),
        "forged high part": lambda: rs(
            n=5, vector_length=100, seed=9, adversaries={2: _ForgedSum(entry=7, high=True)}
        ),
        "forged chunk": lambda: rs(n=5, vector_length=140, seed=10, adversaries={4: BadChunk()}),
        "missing chunk": lambda: rs(n=5, vector_length=64, seed=11, faults=[drop_chunk]),
        "tampered chunks": lambda: rs(n=5, vector_length=64, seed=12, faults=[tamper]),
    }


def _signature(outcome: RoundOutcome) -> dict[int, tuple[Any, ...]]:
    """Every peer's outcome and a digest of everything it emitted (wire bytes included)."""
    signature: dict[int, tuple[Any, ...]] = {}
    for peer, record in sorted(outcome.peers.items()):
        emitted = hashlib.sha256()
        for effect in record.effects:
            if isinstance(effect, Broadcast | Send):
                emitted.update(bytes(effect.data))
            else:
                emitted.update(repr(effect).encode())
        if record.result is not None:
            r = record.result
            end: tuple[Any, ...] = (
                "aggregate",
                r.total.tobytes(),
                r.included,
                r.result_digest,
                tuple(sorted(r.dropped.items())),
                tuple(sorted(r.excluded.items())),
            )
        elif record.aborted is not None:
            end = ("aborted", record.aborted.reason)
        else:
            end = ("crashed" if record.crashed else "unfinished",)
        signature[peer] = (*end, emitted.hexdigest())
    return signature


def _previous_owner_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the owner build and seal its ChunkSum as 22acb18~1 did."""
    joined = ChunkSum.encode_parts

    def summing(
        cls: type[ChunkSum],
        *,
        parts: Sequence[NDArray[np.uint32]],
        length: int,
        orphans: tuple[tuple[int, NDArray[np.uint32]], ...],
        high_bytes: int = 1,
    ) -> ChunkSum:
        return _reference(parts, length, orphans, high_bytes)

    def encode_parts(self: ChunkSum) -> tuple[bytes | memoryview, ...]:
        return (b"".join(joined(self)),)  # the old Writer.getvalue(), one bytes payload

    monkeypatch.setattr(ChunkSum, "summing", classmethod(summing))
    monkeypatch.setattr(ChunkSum, "encode_parts", encode_parts)


def test_rounds_are_byte_for_byte_those_of_the_previous_owner_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    scenarios = _scenarios()
    new = {name: _signature(run()) for name, run in scenarios.items()}
    with monkeypatch.context() as patch:
        _previous_owner_path(patch)
        old = {name: _signature(run()) for name, run in scenarios.items()}
    for name in scenarios:
        assert new[name] == old[name], name
    # and the scenarios reach what they are meant to: results, orphans, every abort
    ends = {name: {s[0] for s in sig.values()} - {"crashed"} for name, sig in new.items()}
    for name in ("L1-n3", "L2-n7 (empty chunks)", "chunks across a block", "orphan"):
        assert ends[name] == {"aggregate"}, name
    reasons = {name: {s[1] for s in sig.values() if s[0] == "aborted"} for name, sig in new.items()}
    assert reasons["forged low word"] == {
        "the chunk sum of owner 2 does not match the included peers' checks"
    }
    assert reasons["forged high part"] == reasons["forged low word"]
    assert reasons["forged chunk"] == {"chunk owner 0 lacks the chunks of {4}"}
    # owner 3 closes MASKED_INPUT at the deadline the others close CHUNK_SUM at (harness)
    assert new["missing chunk"][3][:2] == ("aborted", "chunk owner 3 lacks the chunks of {1}")
    assert "chunk owner 3 sent no ChunkSum" in reasons["dropout at CHUNK_SUM"]
