"""Review of the performance commits after 8c21b29 (field.matmul / lincomb / project, the
norm-proof verifier's reused limb buffer, field.random_vector, vss.interpolate's cached
basis, blas.one_blas_thread, robust Output's ciphertext view).

Everything here is checked against a slow reference (Python big integers, or the code as it
was at 8c21b29, copied inline). The review's three findings (all low) are fixed; their
regression tests say "Review finding" in a comment.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mpc_agg import blas
from mpc_agg import field as gf
from mpc_agg import normproof as npf
from mpc_agg.randomness import DeterministicRandomSource
from mpc_agg.vss import Q, _lagrange_basis, interpolate
from protocols.robust.messages import Output

P = gf.P
#: Every limb at its largest for a reduced element: limbs 2^21 − 1, 2^21 − 1, 2^19 − 2.
TOP = (1 << 61) - 1 - (1 << 42)
ADVERSARIAL = [P - 1, TOP, (1 << 21) - 1, (1 << 42) - 1, P - 2]


def _reference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Python big-integer matrix product mod p (object dtype)."""
    left = np.atleast_2d(a).astype(object)
    right = (b.reshape(-1, 1) if b.ndim == 1 else b).astype(object)
    product: np.ndarray = left.dot(right) % P
    return product


# --------------------------------------------------------------------------- 1. matmul


@pytest.mark.parametrize("inner", [0, 1, 511, 512, 513, 2047, 2048, 2049, 4097])
def test_matmul_adversarial_values_every_layout_and_memory_order(inner: int) -> None:
    # both layouts (stacked for inner ≤ 512, blocked above, partial last blocks), the
    # matrix-vector path (cols = 1), empty rows/cols, 1-D factors, and non-C-contiguous
    # inputs (Fortran order, strided views) — none of which test_field_fast covers together
    rng = np.random.default_rng(inner)
    for rows, cols in [(1, 1), (3, 1), (1, 4), (3, 5), (0, 2), (2, 0)]:
        cases = [np.full((rows, inner), v, np.uint64) for v in ADVERSARIAL]
        cases.append(rng.integers(0, P, (rows, inner), dtype=np.uint64))
        for a in cases:
            b = np.full((inner, cols), TOP, np.uint64)
            b[::3] = P - 1
            expected = _reference(a, b)
            got = gf.matmul(a, b)
            assert got.dtype == np.uint64
            assert got.shape == (rows, cols)
            assert (got.astype(object) == expected).all()
            assert (gf.matmul(np.asfortranarray(a), np.asfortranarray(b)) == got).all()
            if rows and cols == 1:
                assert (gf.matmul(a, b[:, 0]) == got[:, 0]).all()
            if rows == 1 and cols:
                assert (gf.matmul(a[0], b) == got[0]).all()
    wide = rng.integers(0, P, (4, 2 * inner + 2), dtype=np.uint64)[::2, ::2]
    tall = rng.integers(0, P, (2 * inner + 2, 3), dtype=np.uint64)[::2]
    assert (gf.matmul(wide, tall).astype(object) == _reference(wide, tall)).all()


@pytest.mark.parametrize(("rows", "cols"), [(2, 2), (2, 1), (1, 3)])
def test_matmul_fold_with_every_limb_at_its_largest_on_matrices(rows: int, cols: int) -> None:
    # the uint64 limb sums are folded every _FOLD_EVERY blocks: cross that twice with a
    # partial last block, on a real matrix (test_field_fast folds only 1-D with p − 1)
    inner = 2 * gf._FOLD_EVERY * gf._MATMUL_BLOCK + 5
    a = np.full((rows, inner), TOP, np.uint64)
    b = np.full((inner, cols), TOP, np.uint64)
    b[-1] = P - 1
    expected = ((inner - 1) * TOP * TOP + TOP * (P - 1)) % P
    assert (gf.matmul(a, b) == expected).all()


def test_combine_at_its_documented_input_bound() -> None:
    # _combine claims exactness for limb sums < 2^62: every sum at 2^62 − 1
    parts = np.full((5, 3), (1 << 62) - 1, dtype=np.uint64)
    parts[:, 1] = [(1 << 62) - 1, 0, (1 << 62) - 1, 0, (1 << 62) - 1]
    parts[:, 2] = [0, (1 << 61), (1 << 61) - 1, 3, (1 << 62) - 2]
    got = gf._combine(parts)
    for column in range(3):
        exact = sum(int(parts[s, column]) << (21 * s) for s in range(5)) % P
        assert int(got[column]) == exact


def test_lincomb_of_no_vectors_keeps_the_length() -> None:
    # Review finding (low, fixed): lincomb(K × 0, 0 × L) returned K × 0 after the
    # sequence-of-vectors change; it is the K × L zero matrix, as matmul returns.
    coefficients = np.zeros((2, 0), dtype=np.uint64)
    vectors = np.zeros((0, 5), dtype=np.uint64)
    assert gf.matmul(coefficients, vectors).shape == (2, 5)
    assert gf.lincomb(coefficients, vectors).shape == (2, 5)


# --------------------------------------------------------------------------- 2. norm-proof


def _old_fold(parts: list[np.ndarray]) -> np.ndarray:
    """normproof._fold as at 8c21b29: Σ_k parts[k]·2^(21k) mod p, a reduce and shift each."""
    total = np.zeros_like(parts[0])
    for k, part in enumerate(parts):
        total = gf.add(total, gf.shift(gf._reduce(part), 21 * k))
    return total


def _old_x_functionals(verifier: npf.Verifier, x: np.ndarray) -> tuple[np.ndarray, int]:
    """Verifier._x_functionals as at 8c21b29 (fresh buffer, nine products)."""
    shape = verifier.shape
    buffer = np.zeros(verifier._padded, dtype=np.uint64)
    buffer[: shape.vector_length] = x
    limbs = np.stack([((buffer >> np.uint64(21 * k)) & np.uint64((1 << 21) - 1)).astype(float)
                      for k in range(3)])  # fmt: skip
    matrix = limbs[:, : shape.calls * shape.wires].reshape(3, shape.calls, shape.wires)
    blocks = limbs.reshape(3, -1, npf._BLOCK)
    u_parts = [np.zeros((shape.points, shape.wires), dtype=np.uint64) for _ in range(5)]
    dot_parts = [np.zeros(blocks.shape[1], dtype=np.uint64) for _ in range(5)]
    for i in range(3):
        for j in range(3):
            u_parts[i + j] += (verifier._lam_data[i] @ matrix[j]).astype(np.uint64)
            dot_parts[i + j] += np.einsum("kb,kb->k", verifier._z[i], blocks[j]).astype(np.uint64)
    return _old_fold(u_parts), int(gf.sum_rows(_old_fold(dot_parts)))


def _verifier(length: int, threshold: int, peers: int | None) -> npf.Verifier:
    shape = npf.NormProofShape.for_round(
        vector_length=length, norm_bound=5, threshold=threshold, peers=peers
    )
    wrap = npf.WrapChallenge(b"w" * 32, shape.repetitions, length)
    challenge = npf.QueryChallenge.from_seed(b"q" * 32, shape)
    return npf.Verifier(shape, challenge, wrap.combined(challenge.wrap_weights))


@pytest.mark.parametrize("length", [1, 7, 2048, 2049, 4096, 4099, 9000])
@pytest.mark.parametrize(("threshold", "peers"), [(1, None), (3, 20)])  # 1 and 2 query points
def test_x_functionals_equal_the_previous_code_and_the_buffer_does_not_leak(
    length: int, threshold: int, peers: int | None
) -> None:
    verifier = _verifier(length, threshold, peers)
    assert verifier.shape.points == (1 if peers is None else 2)
    fresh = _verifier(length, threshold, peers)
    rng = np.random.default_rng(length)
    inputs = [
        np.full(length, P - 1, np.uint64),
        rng.integers(0, P, length, dtype=np.uint64),
        np.full(length, TOP, np.uint64),
        np.zeros(length, np.uint64),  # after the largest values: nothing may remain
        rng.integers(0, P, length, dtype=np.uint64),
    ]
    for x in inputs:
        u, dot = verifier._x_functionals(x)
        u_old, dot_old = _old_x_functionals(fresh, x)
        assert np.array_equal(u, u_old)
        assert dot == dot_old
        assert not verifier._x_limbs[:, length:].any()  # the padding stays zero
    # a share of the wrong length is refused and does not disturb the next query
    if length > 1:
        for wrong in (inputs[0][:-1], np.concatenate([inputs[0], inputs[0][:1]])):
            with pytest.raises(ValueError):
                verifier._x_functionals(wrong)
        u, dot = verifier._x_functionals(inputs[1])
        u_old, dot_old = _old_x_functionals(fresh, inputs[1])
        assert np.array_equal(u, u_old)
        assert dot == dot_old
    # the prefix view of a longer share, as query passes it (input_share[:d])
    share = np.concatenate([inputs[4], np.array([123], np.uint64)])
    u, dot = verifier._x_functionals(share[:length])
    u_old, dot_old = _old_x_functionals(fresh, inputs[4])
    assert np.array_equal(u, u_old)
    assert dot == dot_old


# --------------------------------------------------------------------------- 3. random_vector


class _Recording:
    def __init__(self, seed: int) -> None:
        self._source = DeterministicRandomSource(seed)
        self.draws: list[bytes] = []

    def random_bytes(self, n: int) -> bytes:
        chunk = self._source.random_bytes(n)
        self.draws.append(chunk)
        return chunk


def test_random_vector_is_a_fresh_key_per_call_and_calls_are_unrelated() -> None:
    source = _Recording(5)
    first = gf.random_vector(source, 1 << 15)
    second = gf.random_vector(source, 1 << 15)
    assert [len(d) for d in source.draws] == [32, 32]
    assert source.draws[0] != source.draws[1]
    assert np.array_equal(first, gf.expand(source.draws[0], 1 << 15))
    assert int(first.max()) < P
    assert first.flags.writeable
    assert first.flags.c_contiguous
    # no shared prefix, no equal coordinates beyond chance (2^15 draws in 2^61: none)
    assert not np.intersect1d(first, second).size
    # each bit position is balanced (±6σ), top bit included (61-bit rejection, not 64)
    bits = (first[:, None] >> np.arange(61, dtype=np.uint64)) & np.uint64(1)
    means = bits.mean(axis=0)
    assert np.all(np.abs(means - 0.5) < 6 * 0.5 / np.sqrt(first.size))
    assert gf.random_vector(source, 0).shape == (0,)


# --------------------------------------------------------------------------- 4. vss.interpolate


def _old_interpolate(points: dict[int, int]) -> list[int]:
    """vss.interpolate as at 8c21b29 (basis rebuilt per call, O(T³))."""
    xs = list(points)
    if len(set(xs)) != len(xs):
        raise ValueError("duplicate x")
    coefficients = [0] * len(xs)
    for i, xi in enumerate(xs):
        basis = [1]
        denominator = 1
        for j, xj in enumerate(xs):
            if j == i:
                continue
            basis = [
                ((basis[k - 1] if k > 0 else 0) - xj * (basis[k] if k < len(basis) else 0)) % Q
                for k in range(len(basis) + 1)
            ]
            denominator = denominator * (xi - xj) % Q
        scale = points[xi] * pow(denominator, -1, Q) % Q
        for k, b in enumerate(basis):
            coefficients[k] = (coefficients[k] + scale * b) % Q
    return coefficients


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.integers(min_value=-3 * Q, max_value=3 * Q), min_size=1, max_size=7, unique=True),
    st.lists(st.integers(min_value=-Q, max_value=2 * Q), min_size=7, max_size=7),
)
def test_interpolate_equals_the_previous_code_for_any_x(xs: list[int], ys: list[int]) -> None:
    # unsorted, negative and ≥ Q x, unreduced y: the same coefficients as before, or the
    # same exception type (x equal mod Q)
    points = dict(zip(xs, ys, strict=False))
    try:
        expected: list[int] | type[Exception] = _old_interpolate(points)
    except ValueError:
        expected = ValueError
    if expected is ValueError:
        with pytest.raises(ValueError):
            interpolate(points)
    else:
        assert interpolate(points) == expected
        # the cached basis, reused for a permutation of the same x, follows that order
        assert interpolate(dict(reversed(points.items()))) == expected


def test_lagrange_basis_cache_holds_public_x_only_and_follows_their_order() -> None:
    _lagrange_basis.cache_clear()
    secret_ys = [0xDEADBEEF, 0xC0FFEE, 0x5EC12E7]
    for xs in ([1, 2, 3], [3, 1, 2]):
        interpolate(dict(zip(xs, secret_ys, strict=True)))
    info = _lagrange_basis.cache_info()
    assert (info.misses, info.currsize) == (2, 2)  # one entry per x order, not per x set
    # each row is ℓ_i for the i-th x of the key: ℓ_i(x_j) = [i = j]
    for key in ((1, 2, 3), (3, 1, 2)):
        rows = _lagrange_basis(key)
        for i, row in enumerate(rows):
            values = [sum(c * pow(x, k, Q) for k, c in enumerate(row)) % Q for x in key]
            assert values == [int(i == j) for j in range(len(key))]
        flat = {c for row in rows for c in row}
        assert not flat & set(secret_ys)


# --------------------------------------------------------------------------- 5. one_blas_thread


class _FakeController:
    """A stand-in for threadpoolctl: one process-wide thread count, saved and restored like
    ``ThreadpoolController.limit`` does; ``on_enter`` runs after the limit is applied (where
    the real call is still in ctypes, with the GIL released)."""

    def __init__(self, threads: int) -> None:
        self.threads = threads
        self.on_enter: list[threading.Event] = []

    @contextlib.contextmanager
    def limit(self, *, limits: int, user_api: str) -> Iterator[None]:
        saved = self.threads
        self.threads = limits
        if self.on_enter:
            entered, proceed = self.on_enter.pop(0), self.on_enter.pop(0)
            entered.set()
            assert proceed.wait(5)
        try:
            yield
        finally:
            self.threads = saved


def test_one_blas_thread_overlapping_calls_of_two_threads_restore_the_setting(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Review finding (low, fixed): thread A inside limit() (threads already 1, _depth still
    # 0) when thread B entered made B save 1 as "the caller's setting"; A restored 2 and
    # B then 1, leaving the process at one BLAS thread. Now one count under a lock.
    fake = _FakeController(threads=2)
    monkeypatch.setattr(blas, "_controller", fake)
    monkeypatch.setattr(blas, "_depth", 0)
    a_entering, a_proceed = threading.Event(), threading.Event()
    b_running, a_done = threading.Event(), threading.Event()
    fake.on_enter = [a_entering, a_proceed]

    @blas.one_blas_thread
    def call_a() -> None:
        pass

    @blas.one_blas_thread
    def call_b() -> None:
        b_running.set()
        assert a_done.wait(5)

    def run_a() -> None:
        call_a()
        a_done.set()

    thread_a = threading.Thread(target=run_a)
    thread_a.start()
    assert a_entering.wait(5)
    thread_b = threading.Thread(target=call_b)
    thread_b.start()
    b_running.wait(0.5)  # reached with the reviewed code; a locked version blocks B here
    a_proceed.set()
    thread_a.join(5)
    thread_b.join(5)
    assert blas._depth == 0
    assert fake.threads == 2, "the caller's BLAS setting was not restored"


# --------------------------------------------------------------------------- 6. Output view


def test_output_with_a_ciphertext_view_compares_and_encodes_like_bytes() -> None:
    ciphertext = bytes(range(256)) * 3
    original = Output(view=b"v" * 32, ciphertext=ciphertext)
    wire = original.encode()
    buffer = bytearray(wire)  # a writable envelope buffer, as the reassembler returns
    decoded = Output.decode(memoryview(buffer))
    assert isinstance(decoded.ciphertext, memoryview)
    assert decoded.ciphertext.readonly
    with pytest.raises(TypeError):
        decoded.ciphertext[0] = 1
    assert decoded == original
    assert decoded.encode() == wire
    assert Output.decode(wire) == original
    assert hash(Output.decode(wire)) == hash(original)
    empty = Output.decode(Output(view=b"v" * 32, ciphertext=b"").encode())
    assert not empty.ciphertext  # the machine's "cannot compute one" test still works
    # the view aliases the caller's buffer: correct only while the transport hands each
    # message its own buffer (it does today: peers.chunking reserves one per message)
    buffer[-1] ^= 0xFF
    assert decoded != original


def test_output_decoded_from_a_writable_buffer_is_hashable() -> None:
    # Review finding (low, fixed): a memoryview hashes only if its exporter does, so an
    # Output decoded from the reassembler's numpy buffer raised TypeError on hash(); the
    # ciphertext is now left out of the hash (it still counts for equality).
    wire = Output(view=b"v" * 32, ciphertext=b"c" * 40).encode()
    buffer = np.frombuffer(wire, dtype=np.uint8).copy()  # peers.chunking's buffer type
    decoded = Output.decode(buffer.data)
    assert hash(decoded) == hash(Output.decode(wire))
