"""Synchronous use of a :class:`~peers.node.PeerNode`: its event loop on its own thread.

Training loops are synchronous; the peer is asyncio. :class:`BackgroundPeer` owns a
thread running an event loop, enters the node there, and offers a blocking
``aggregate(update)`` — what :class:`mpc_agg.torch.SecureAggOptimizer` calls in ``step()``
(DESIGN §4). Several peers may share one :class:`EventLoopThread` (e.g. sites wired to
one in-memory broker in a test). Interrupting a blocked call (Ctrl-C) cancels the round.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from numpy.typing import ArrayLike

from mpc_agg.dp import DpSettings, PrivacyAccountant
from peers.config import SiteConfig, load_site
from peers.node import AggregateResult, PeerNode

T = TypeVar("T")


class EventLoopThread:
    """An asyncio event loop running on a daemon thread until :meth:`close`."""

    def __init__(self, name: str = "mpc-agg-peer") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()
        self.loop.close()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and block until it finishes; return its result.

        Raises what the coroutine raised. Interrupted (e.g. ``KeyboardInterrupt``) or
        timed out, the coroutine is cancelled before the exception propagates.
        """
        if threading.current_thread() is self._thread:
            raise RuntimeError("EventLoopThread.run() called from its own loop thread")
        if not self._thread.is_alive():
            raise RuntimeError("the event loop thread has been closed")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout)
        except BaseException:
            future.cancel()
            concurrent.futures.wait([future], timeout=5)
            raise

    def close(self) -> None:
        """Stop the loop and join the thread (idempotent)."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join()


class BackgroundPeer:
    """A :class:`PeerNode` usable from synchronous code: ``with BackgroundPeer(...) as peer``.

    ``node`` is a ``PeerNode`` or a function that builds one (called on the loop thread).
    ``loop`` shares an existing :class:`EventLoopThread`; without it the peer owns one and
    closes it on exit.
    """

    def __init__(
        self,
        node: PeerNode | Callable[[], PeerNode],
        *,
        loop: EventLoopThread | None = None,
        timeout: float | None = None,
    ) -> None:
        self._factory = node if callable(node) and not isinstance(node, PeerNode) else None
        self._node = node if isinstance(node, PeerNode) else None
        self._owns_loop = loop is None
        self._loop = loop
        self.timeout = timeout
        self._closed = False

    @classmethod
    def from_config(cls, config: SiteConfig, **kwargs: Any) -> Self:
        """A background peer for one site configuration (see :meth:`PeerNode.from_config`)."""
        return cls(lambda: PeerNode.from_config(config), **kwargs)

    @classmethod
    def open(cls, site_file: str | Path, **kwargs: Any) -> Self:
        """Start the peer of the site described by ``site_file`` (from ``mpc-agg init``).

        For scripts that do not want a ``with`` block: the peer is connected when this
        returns and is closed when the interpreter exits (or by :meth:`close`). Raises
        :class:`~peers.config.ConfigError` for a bad file and
        :class:`~peers.transport.TransportError` when the broker is unreachable.
        """
        peer = cls.from_config(load_site(site_file), **kwargs)
        peer.__enter__()
        atexit.register(peer.close)
        return peer

    def close(self) -> None:
        """Leave the federation: close the node and the loop thread (idempotent)."""
        if self._loop is not None and not self._closed:
            self.__exit__(None, None, None)

    @property
    def node(self) -> PeerNode:
        """The running node (after ``__enter__``)."""
        if self._node is None:
            raise RuntimeError("BackgroundPeer is not started: use it in a `with` block")
        return self._node

    @property
    def privacy(self) -> DpSettings | None:
        """The node's differential privacy settings (``[dp]``), once started."""
        return self.node.privacy

    @property
    def accountant(self) -> PrivacyAccountant | None:
        """The node's ε ledger (``None`` without ``[dp]``), once started."""
        return self.node.accountant

    def __enter__(self) -> Self:
        if self._loop is None:
            self._loop = EventLoopThread()
        try:
            if self._node is None:
                assert self._factory is not None
                self._node = self._loop.run(self._build())
            self._loop.run(self._node.__aenter__())
        except BaseException:
            if self._owns_loop:
                self._loop.close()
            raise
        return self

    async def _build(self) -> PeerNode:
        assert self._factory is not None
        return self._factory()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._loop is not None
        self._closed = True
        try:
            if self._node is not None:
                self._loop.run(self._node.__aexit__(exc_type, exc, tb))
        finally:
            if self._owns_loop:
                self._loop.close()

    @property
    def last_round(self) -> int:
        """The node's :attr:`~peers.node.PeerNode.last_round`."""
        return self.node.last_round

    def aggregate(
        self, update: ArrayLike, *, round_id: int | None = None, context: bytes | None = None
    ) -> AggregateResult:
        """Blocking :meth:`PeerNode.aggregate` (same arguments, same errors)."""
        if self._loop is None:
            raise RuntimeError("BackgroundPeer is not started: use it in a `with` block")
        # the coroutine holds the only reference of ours: PeerNode lets go of it once it is
        # encoded (a caller that keeps none does not hold the update for the round)
        round_ = self.node.aggregate(update, round_id=round_id, context=context)
        del update
        return self._loop.run(round_, self.timeout)
