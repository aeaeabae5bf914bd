"""mpc_agg.blas: BLAS runs on one thread inside decorated calls and as before outside."""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_info

from mpc_agg import field as gf
from mpc_agg.blas import one_blas_thread


def _blas_threads() -> list[int]:
    return [int(lib["num_threads"]) for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_one_thread_inside_nested_calls_and_the_caller_s_setting_restored() -> None:
    before = _blas_threads()
    assert before, "numpy's BLAS should be visible to threadpoolctl"
    seen: list[list[int]] = []

    @one_blas_thread
    def inner() -> None:
        seen.append(_blas_threads())

    @one_blas_thread
    def outer() -> None:
        seen.append(_blas_threads())
        inner()
        seen.append(_blas_threads())  # the inner call did not restore the outer's limit

    outer()
    assert seen == [[1] * len(before)] * 3
    assert _blas_threads() == before


def test_setting_restored_when_the_decorated_call_raises() -> None:
    before = _blas_threads()
    try:
        gf.matmul(np.zeros((2, 3), dtype=np.uint64), np.zeros((4, 2), dtype=np.uint64))
    except gf.FieldError:
        pass
    else:  # pragma: no cover - the shapes do not match
        raise AssertionError("matmul should refuse mismatched shapes")
    assert _blas_threads() == before
    # and a product still comes out right under the limit
    a = np.array([[1, 2], [3, gf.P - 1]], dtype=np.uint64)
    b = np.array([[5], [gf.P - 2]], dtype=np.uint64)
    assert gf.matmul(a, b).tolist() == [[(5 + 2 * (gf.P - 2)) % gf.P], [(15 + 2) % gf.P]]
