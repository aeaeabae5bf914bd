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
numpy code keeps its threads. Nested calls change the setting once, at the outermost
level. The setting is process-wide: if two threads of one process run decorated functions
at overlapping times, the restore can happen while the other still runs (it then runs
with the default threads again) — only speed is affected, never a result.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from threadpoolctl import ThreadpoolController

_P = ParamSpec("_P")
_R = TypeVar("_R")

_controller: ThreadpoolController | None = None
_depth = 0


def _blas() -> ThreadpoolController:
    global _controller  # noqa: PLW0603 - one inspection of the loaded libraries per process
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller


def one_blas_thread(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator: run ``function`` with BLAS limited to one thread (see the module)."""

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        global _depth  # noqa: PLW0603 - the nesting depth of decorated calls
        if _depth:
            return function(*args, **kwargs)
        with _blas().limit(limits=1, user_api="blas"):
            _depth += 1
            try:
                return function(*args, **kwargs)
            finally:
                _depth -= 1

    return wrapper
