"""One BLAS thread for the exact float products of ``field`` and ``normproof``.

``robust``'s field products (``field.matmul``) and its norm proof's projections are many
BLAS calls of modest size. numpy's OpenBLAS starts a thread per core for each and leaves
the threads busy-waiting after the call returns; on a host where several sites (or a
site and its training job) share the cores, that spinning is pure CPU loss. Measured with
``python -m benchmarks.mqtt_compare --n 5 --d 1000000 --modes robust --repeat 1`` on the
2-core benchmark machine: a ``robust`` round took 10.3 s and 4.0 s CPU per site with
OpenBLAS's default threads, 3.3 s and 1.2 s with one thread.

:func:`one_blas_thread` limits BLAS to one thread while the decorated function runs and
restores the previous setting afterwards (through ``threadpoolctl``), so a caller's own
numpy code keeps its threads. The setting is process-wide, so the decorated calls of all
threads share one count under a lock: the first to enter sets the limit, the last to leave
restores what the process had before (a review showed that per-call limits could leave
the process at one thread when two threads' calls overlapped).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, ParamSpec, TypeVar

from threadpoolctl import ThreadpoolController

_P = ParamSpec("_P")
_R = TypeVar("_R")

_controller: ThreadpoolController | None = None
_lock = threading.Lock()
_depth = 0  # decorated calls running, in every thread (guarded by _lock)
_limiter: AbstractContextManager[Any] | None = None  # the limit in force while _depth > 0


def _blas() -> ThreadpoolController:
    global _controller  # noqa: PLW0603 - one inspection of the loaded libraries per process
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


def _enter() -> None:
    global _depth, _limiter  # noqa: PLW0603 - the process-wide count and limit
    with _lock:
        if _depth == 0:
            limiter = _blas().limit(limits=1, user_api="blas")
            limiter.__enter__()
            _limiter = limiter
        _depth += 1


def _leave() -> None:
    global _depth, _limiter  # noqa: PLW0603 - the process-wide count and limit
    with _lock:
        _depth -= 1
        if _depth == 0 and _limiter is not None:
            limiter, _limiter = _limiter, None
            limiter.__exit__(None, None, None)


def one_blas_thread(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator: run ``function`` with BLAS limited to one thread (see the module)."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        _enter()
        try:
            return function(*args, **kwargs)
        finally:
            _leave()

    return wrapper
