"""``SecureAggOptimizer``: secure aggregation inside an existing torch training loop.

The only module of the package that imports torch (the ``torch`` extra). It wraps any
``torch.optim.Optimizer`` (DESIGN §4): ::

    opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), peer)
    ...
    loss.backward()
    opt.step()          # the gradients of every site, securely averaged, then SGD

``peer`` is anything with ``aggregate(update) -> result`` where ``result`` has ``total``
(the sum of the accepted sites' vectors) and ``count`` (how many sites): a
:class:`peers.background.BackgroundPeer` for the synchronous :meth:`step` (the peer's
event loop runs on its own thread), or a :class:`peers.node.PeerNode` — whose
``aggregate`` is a coroutine — for ``await opt.astep()``.

Modes:

* ``"gradient"``: every ``step()`` flattens the gradients into one float64 vector, clips
  its L2 norm to ``max_grad_norm`` (if set), aggregates, writes ``total / count`` back into
  the ``.grad`` fields and calls the wrapped optimizer's step.
* ``"delta"`` (FedAvg): ``step()`` is the wrapped optimizer's local step; every ``every``-th
  step the change of the parameters since the last synchronisation (clipped to
  ``max_grad_norm``) is aggregated and the parameters become the anchor plus the average
  change. Optimizer state (momentum, Adam moments) stays local.

Differential privacy (``mpc_agg/DP.md`` §5.3): ``noise_multiplier`` states the noise the
training code relies on. The noise itself is added by the peer, in the integer domain, as
the federation's ``[dp]`` table says (every site must add the same); the optimizer clips
to ``max_grad_norm`` and refuses to step unless the aggregator's ``privacy`` settings have
this noise multiplier and ``clip_norm == max_grad_norm``. :attr:`epsilon` is the ε spent
so far, from the last round's result. DP-SGD (``[dp] unit = "example"``): the gradients
are sums of per-example gradients each clipped to ``max_grad_norm``
(:func:`mpc_agg.torch.privacy.clipped_gradient_sum`), the optimizer does not clip their
sum, and ``expected_batch_size`` — the expected number of examples per round over all
sites — replaces the number of sites as the divisor.

Rollback: when the aggregation fails — the round aborts, the transport fails, an entry is
out of the encodable range — the parameters, their gradients and the optimizer state are
exactly what they were before ``step()`` and :class:`AggregationFailedError` is raised
(``on_failure="raise"``), or the step is skipped and counted (``on_failure="skip"``). Both
are logged. A step whose update cannot be encoded sends nothing while the other sites run
the round: the next step takes the round after it (:attr:`missed_rounds`), as it does after
:meth:`skip_round` for a step the training loop leaves out (``GradScaler``).

``param_groups``, ``state``, ``defaults``, ``state_dict``, ``load_state_dict``,
``zero_grad`` and ``add_param_group`` are the wrapped optimizer's, so LR schedulers and
checkpoints work unchanged (``state_dict()`` is the wrapped optimizer's own and loads into
it without the wrapper). A closure, if given, is evaluated once before the aggregation;
optimizers that call it several times per step (LBFGS) are not supported.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any, Literal, Protocol, cast

import numpy as np
import torch
from numpy.typing import NDArray

from mpc_agg.errors import EncodingError, MpcAggError
from mpc_agg.fixedpoint import sum_of_squares

log = logging.getLogger(__name__)

Mode = Literal["gradient", "delta"]
OnFailure = Literal["raise", "skip"]


class AggregationFailedError(MpcAggError):
    """A secure aggregation inside ``step()`` failed; the model and optimizer are unchanged.

    ``cause`` is the underlying error (e.g. ``RoundAbortedError`` with its reason).
    """

    def __init__(self, message: str, *, cause: BaseException) -> None:
        super().__init__(message)
        self.cause = cause


class AggregateOutcome(Protocol):
    """What an aggregator returns: the sum over the accepted sites and their number."""

    @property
    def total(self) -> NDArray[np.float64]:
        """Sum of the accepted sites' vectors."""

    @property
    def count(self) -> int:
        """Number of accepted sites."""


class Aggregator(Protocol):
    """``aggregate(vector)``: synchronous, or a coroutine (only for :meth:`astep`)."""

    def aggregate(self, update: NDArray[np.float64]) -> Any:
        """Aggregate ``update`` with the other sites; an :class:`AggregateOutcome`."""


@dataclass(slots=True)
class _Snapshot:
    """Everything ``step()`` may change, to restore it bit for bit."""

    params: list[torch.Tensor]
    grads: list[torch.Tensor | None]
    optimizer_state: dict[str, Any]


class SecureAggOptimizer(torch.optim.Optimizer):
    """Wrap ``optimizer`` so that each step uses the securely aggregated update.

    Raises ``ValueError`` for an invalid mode, ``every``, ``max_grad_norm`` or
    ``on_failure``.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        aggregator: Aggregator,
        *,
        mode: Mode = "gradient",
        every: int = 1,
        max_grad_norm: float | None = None,
        on_failure: OnFailure = "raise",
        noise_multiplier: float | None = None,
        expected_batch_size: int | None = None,
    ) -> None:
        if mode not in ("gradient", "delta"):
            raise ValueError(f"mode must be 'gradient' or 'delta', got {mode!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"every must be a positive integer, got {every!r}")
        if mode == "gradient" and every != 1:
            raise ValueError("every > 1 needs mode='delta' (local steps between rounds)")
        if max_grad_norm is not None and not (max_grad_norm > 0 and np.isfinite(max_grad_norm)):
            raise ValueError(f"max_grad_norm must be a positive number, got {max_grad_norm!r}")
        if noise_multiplier is not None:
            if not (noise_multiplier > 0 and np.isfinite(noise_multiplier)):
                raise ValueError(
                    f"noise_multiplier must be a positive number, got {noise_multiplier!r}"
                )
            if max_grad_norm is None:
                raise ValueError(
                    "noise_multiplier needs max_grad_norm: the noise is calibrated to the clip"
                )
        if expected_batch_size is not None:
            if isinstance(expected_batch_size, bool) or not (
                isinstance(expected_batch_size, int) and expected_batch_size >= 1
            ):
                raise ValueError(
                    f"expected_batch_size must be a positive integer, got {expected_batch_size!r}"
                )
            if mode != "gradient":
                raise ValueError("expected_batch_size is for mode='gradient' (DP-SGD)")
        if on_failure not in ("raise", "skip"):
            raise ValueError(f"on_failure must be 'raise' or 'skip', got {on_failure!r}")
        # Deliberately no super().__init__(): param_groups and state are the wrapped
        # optimizer's (properties below), only the hook registries are our own.
        self.original_optimizer = optimizer
        self.aggregator = aggregator
        self.mode: Mode = mode
        self.every = every
        self.max_grad_norm = max_grad_norm
        self.on_failure: OnFailure = on_failure
        self.noise_multiplier = noise_multiplier
        self.expected_batch_size = expected_batch_size
        self._privacy_checked = False
        # the parameters' layout, passed as the round's context to an aggregator that
        # takes one (PeerNode, BackgroundPeer): sites whose layouts differ abort the round
        # instead of averaging one site's head into another's backbone
        self._passes_context = _takes_keyword(aggregator, "context")
        self._layout = b""
        # rounds this site sat out since its last one (an update that could not be
        # encoded, skip_round()): the next round id skips them, so the site rejoins the
        # others instead of running every later round one id behind (PeerNode's default
        # is the round after its own last one)
        self._passes_round = _takes_keyword(aggregator, "round_id") and hasattr(
            aggregator, "last_round"
        )
        self.missed_rounds = 0
        """Rounds the other sites ran without this one since its last round."""
        self._optimizer_step_pre_hooks = OrderedDict()
        self._optimizer_step_post_hooks = OrderedDict()
        self._optimizer_state_dict_pre_hooks = OrderedDict()
        self._optimizer_state_dict_post_hooks = OrderedDict()
        self._optimizer_load_state_dict_pre_hooks = OrderedDict()
        self._optimizer_load_state_dict_post_hooks = OrderedDict()
        self.local_steps = 0
        """Local steps since the last synchronisation (delta mode)."""
        self.rounds = 0
        """Successful aggregation rounds."""
        self.skipped = 0
        """Steps skipped after a failed aggregation (``on_failure="skip"``)."""
        self.last_result: Any = None
        """The aggregator's result of the last successful round."""
        # delta mode: the trainable parameters and their values at the start of the
        # synchronisation period (taken at its first local step, so weights loaded after
        # the optimizer was built are the starting point)
        self._anchor: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    # ------------------------------------------------------------------ forwarding

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's parameter groups (schedulers change ``lr`` here)."""
        return self.original_optimizer.param_groups

    @param_groups.setter
    def param_groups(self, value: list[dict[str, Any]]) -> None:
        self.original_optimizer.param_groups = value

    @property
    def state(self) -> Any:
        """The wrapped optimizer's per-parameter state."""
        return self.original_optimizer.state

    @state.setter
    def state(self, value: Any) -> None:
        self.original_optimizer.state = value

    @property
    def defaults(self) -> dict[str, Any]:
        """The wrapped optimizer's defaults."""
        return self.original_optimizer.defaults

    @defaults.setter
    def defaults(self, value: dict[str, Any]) -> None:
        self.original_optimizer.defaults = value

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's ``state_dict()`` (loads into it without the wrapper)."""
        return self.original_optimizer.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load into the wrapped optimizer (delta mode: the parameters become the anchor)."""
        self.original_optimizer.load_state_dict(state_dict)
        if self.mode == "delta":
            self._anchor = None  # a new period starts at the next step
            self.local_steps = 0

    def zero_grad(self, set_to_none: bool = True) -> None:
        """The wrapped optimizer's ``zero_grad``."""
        self.original_optimizer.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Add a group to the wrapped optimizer (and, in delta mode, to the anchor)."""
        self.original_optimizer.add_param_group(param_group)
        if self.mode == "delta":
            self._anchor = None  # a new period starts at the next step
            self.local_steps = 0

    def __repr__(self) -> str:
        return (
            f"SecureAggOptimizer({type(self.original_optimizer).__name__}, mode={self.mode!r}, "
            f"every={self.every}, max_grad_norm={self.max_grad_norm}, "
            f"noise_multiplier={self.noise_multiplier})"
        )

    # ------------------------------------------------------------------ steps

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """One training step with securely aggregated gradients or deltas (synchronous).

        Returns the closure's loss, if a closure was given. Step hooks registered on this
        wrapper (``register_step_pre_hook``/``register_step_post_hook``) run around it.
        """
        closure = self._pre_hooks(closure)
        gen = self._step(closure)
        with torch.no_grad():
            try:
                request = next(gen)
                while True:
                    outcome, error = None, None
                    try:
                        outcome = self._call_sync(request)  # empties the hand-over list
                    except Exception as exc:  # to the generator: rollback, raise or skip
                        error = exc
                    except BaseException as exc:  # Ctrl-C: roll back, then re-raised
                        gen.throw(exc)
                    request = gen.send((outcome, error))
            except StopIteration as stop:
                loss = stop.value
        self._post_hooks(closure)
        return loss

    async def astep(self, closure: Callable[[], Any] | None = None) -> Any:
        """:meth:`step` for an aggregator whose ``aggregate`` is a coroutine.

        Cancelling it (``asyncio.wait_for``'s timeout, task cancellation) rolls the step
        back exactly as a failed round does, then lets the cancellation through.
        """
        closure = self._pre_hooks(closure)
        gen = self._step(closure)
        try:
            with torch.no_grad():
                request = next(gen)
            while True:
                outcome, error = None, None
                try:
                    # handed over (the list is emptied): the step holds no reference to
                    # the vector while the round runs
                    result = self._aggregate(request)
                    outcome = await result if inspect.isawaitable(result) else result
                except Exception as exc:
                    error = exc
                except BaseException as exc:  # cancelled: roll back, then re-raised
                    with torch.no_grad():
                        gen.throw(exc)
                with torch.no_grad():
                    request = gen.send((outcome, error))
        except StopIteration as stop:
            loss = stop.value
        self._post_hooks(closure)
        return loss

    def _pre_hooks(self, closure: Callable[[], Any] | None) -> Callable[[], Any] | None:
        """Run this wrapper's step pre-hooks (torch's contract); the closure they leave."""
        args: tuple[Any, ...] = (self,)
        kwargs: dict[str, Any] = {} if closure is None else {"closure": closure}
        for hook in list(self._optimizer_step_pre_hooks.values()):
            result = hook(self, args, kwargs)
            if result is not None:
                if not (isinstance(result, tuple) and len(result) == 2):
                    raise RuntimeError(
                        f"a step pre-hook must return None or (args, kwargs), got {result!r}"
                    )
                args, kwargs = result
        if len(args) > 1:
            return cast("Callable[[], Any] | None", args[1])
        return cast("Callable[[], Any] | None", kwargs.get("closure"))

    def _post_hooks(self, closure: Callable[[], Any] | None) -> None:
        kwargs: dict[str, Any] = {} if closure is None else {"closure": closure}
        for hook in list(self._optimizer_step_post_hooks.values()):
            hook(self, (self,), kwargs)

    def skip_round(self) -> None:
        """Record that the other sites run a round without this one.

        For a step the training loop skips on purpose — ``GradScaler`` found inf and did
        not call :meth:`step`; a site that waits a round out — so that the next step takes
        part in the others' next round instead of one they have finished. A step whose
        update cannot be encoded (``EncodingError``: nothing was sent) counts by itself.
        """
        self.missed_rounds += 1

    def _aggregate(self, request: list[NDArray[np.float64]]) -> Any:
        """Hand the vector over (popped in the call: no frame of ours keeps it)."""
        options: dict[str, Any] = {}
        if self._passes_context:
            options["context"] = self._layout
        if self._passes_round and self.missed_rounds:
            last = int(cast("Any", self.aggregator).last_round)
            options["round_id"] = last + 1 + self.missed_rounds
        if options:
            return cast("Any", self.aggregator).aggregate(request.pop(), **options)
        return self.aggregator.aggregate(request.pop())

    def _call_sync(self, request: list[NDArray[np.float64]]) -> Any:
        result = self._aggregate(request)  # handed over, as in astep
        if inspect.isawaitable(result):
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError(
                "the aggregator's aggregate() is a coroutine: wrap the PeerNode in "
                "peers.background.BackgroundPeer for step(), or use `await opt.astep()`"
            )
        return result

    def _step(
        self, closure: Callable[[], Any] | None
    ) -> Generator[list[NDArray[np.float64]], tuple[Any, BaseException | None], Any]:
        """The step as a generator: yields the vector to aggregate, receives the outcome.

        Shared by :meth:`step` and :meth:`astep` so both roll back identically (also when
        the caller throws a cancellation in at the yield). The vector is yielded in a
        one-slot list that the caller empties when it hands the vector to the aggregator:
        the step keeps only its length, so an aggregator that lets go of it once encoded
        (``PeerNode``, ``BackgroundPeer``) does not hold a model-sized float64 copy
        through the round.

        Only trainable parameters (``requires_grad``) take part: a frozen one is never
        given a gradient or changed, as with the plain optimizer.
        """
        self._check_privacy()
        params = self._trainable()
        self._check_tensors(params)
        self._layout = _layout(params)
        loss: Any = None
        if self.mode == "delta":
            if self.local_steps == 0 or self._anchor is None:
                self._anchor = [(p, p.detach().clone()) for p in params]
                self.local_steps = 0
            elif [id(p) for p, _ in self._anchor] != [id(p) for p in params]:
                self._anchor, self.local_steps = None, 0
                raise ValueError(
                    "the trainable parameters changed within a synchronisation period "
                    "(requires_grad switched, or parameters added): the local steps since "
                    "the last round are not aggregated; the next step starts a new period"
                )
            if self.local_steps + 1 < self.every:
                loss = self.original_optimizer.step(closure)
                self.local_steps += 1  # after the step: a closure that raised is no step
                return loss
            snapshot = self._snapshot()
            loss = self.original_optimizer.step(closure)
            self.local_steps += 1
            vector = self._flatten([p.detach() - a for p, a in self._anchor])
        else:
            if closure is not None:
                with torch.enable_grad():
                    loss = closure()
            # Nothing is written before the aggregate succeeds: no snapshot to restore.
            snapshot = None
            # A trainable parameter without a gradient at this site (an unused branch)
            # contributes zeros and gets the federation's mean like every other site:
            # the sites' models stay identical.
            grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
            vector = self._flatten(grads)
            del grads
        length = vector.shape[0]
        request = [self._clip(vector)]
        del vector
        try:
            outcome, error = yield request
        except BaseException:  # thrown in by step()/astep(): Ctrl-C, a cancelled round
            self._undo_local_step(snapshot)
            self.missed_rounds = 0  # the node used the round id up
            raise
        # EncodingError: refused before anything was sent, the others run the round alone
        self.missed_rounds = self.missed_rounds + 1 if isinstance(error, EncodingError) else 0
        if error is None:
            try:
                mean = self._mean(outcome, length)
            except (MpcAggError, ValueError, TypeError) as exc:
                error = exc
        if error is not None:
            self._undo_local_step(snapshot)
            self._failed(error)
            return loss  # the closure's, as torch's step returns it
        self.rounds += 1
        self.last_result = outcome
        if self.mode == "delta":
            assert self._anchor is not None
            for (param, anchor), change in zip(
                self._anchor, self._unflatten(mean, params), strict=True
            ):
                param.copy_(anchor + change)
            self._anchor = None  # the next period starts from the averaged parameters
            self.local_steps = 0
            return loss
        for param, grad in zip(params, self._unflatten(mean, params), strict=True):
            if param.grad is None:
                param.grad = grad.clone()
            else:
                param.grad.copy_(grad)
        self.original_optimizer.step()
        return loss

    @property
    def epsilon(self) -> float | None:
        """ε spent so far by this site, ``None`` without DP.

        From the aggregator's ledger when it has one (``PeerNode``/``BackgroundPeer``:
        rounds that failed after sending count too), else the last result's.
        """
        accountant = getattr(self.aggregator, "accountant", None)
        if accountant is not None:
            return float(accountant.epsilon())
        privacy = getattr(self.last_result, "privacy", None)
        return None if privacy is None else float(privacy.epsilon_spent)

    # ------------------------------------------------------------------ helpers

    def _check_privacy(self) -> None:
        """The step fits the aggregator's DP settings (once, before the first step).

        Run whether or not ``noise_multiplier`` was given: a federation that protects
        examples must never be fed a gradient that was not clipped per example.
        """
        if self._privacy_checked:
            return
        settings = getattr(self.aggregator, "privacy", None)
        if settings is None:
            if self.noise_multiplier is not None:
                raise ValueError(
                    f"noise_multiplier={self.noise_multiplier} but the aggregator adds no DP "
                    "noise: give the federation a [dp] table (mpc_agg/DP.md §5)"
                )
            self._privacy_checked = True
            return
        clip = float(settings.clip_norm)
        if getattr(settings, "unit", "site") == "example":
            if self.mode != "gradient" or self.expected_batch_size is None:
                raise ValueError(
                    "the federation's [dp] unit is 'example' (DP-SGD): use mode='gradient' "
                    "with expected_batch_size, and put per-example clipped gradient sums in "
                    "the .grad fields (clipped_gradient_sum)"
                )
            if self.max_grad_norm is None or not math.isclose(self.max_grad_norm, clip):
                raise ValueError(
                    f"the federation's clip_norm is {clip}: pass max_grad_norm={clip} and "
                    f"clip every example to it (clipped_gradient_sum(..., max_norm={clip}))"
                )
        elif self.expected_batch_size is not None:
            raise ValueError(
                "expected_batch_size (DP-SGD) needs the federation's [dp] unit = 'example'; "
                "this federation protects whole sites"
            )
        if self.noise_multiplier is not None and not (
            math.isclose(float(settings.noise_multiplier), self.noise_multiplier, rel_tol=1e-9)
            and self.max_grad_norm is not None
            and math.isclose(clip, self.max_grad_norm, rel_tol=1e-9)
        ):
            raise ValueError(
                f"the federation adds noise_multiplier={settings.noise_multiplier} with "
                f"clip_norm={settings.clip_norm}; this optimizer was given noise_multiplier="
                f"{self.noise_multiplier}, max_grad_norm={self.max_grad_norm}: every site "
                "must use the federation's values"
            )
        self._privacy_checked = True

    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _trainable(self) -> list[torch.Tensor]:
        """The parameters that take part in a round: those with ``requires_grad``."""
        return [p for p in self._params() if p.requires_grad]

    def _check_tensors(self, params: list[torch.Tensor]) -> None:
        """Refuse, before anything changes, what cannot be flattened into real entries."""
        if not params:
            raise ValueError("the optimizer has no trainable parameters (requires_grad)")
        for index, p in enumerate(params):
            where = f"parameter {index} (shape {tuple(p.shape)})"
            if p.is_complex():
                raise EncodingError(
                    f"{where} is complex ({p.dtype}): only real parameters can be aggregated"
                )
            if p.device.type == "meta":
                raise EncodingError(f"{where} is on the 'meta' device and holds no values")
            grad = p.grad
            if self.mode == "gradient" and grad is not None and grad.layout != torch.strided:
                raise EncodingError(
                    f"{where} has a sparse gradient ({grad.layout}), which is not supported: "
                    "use dense gradients (e.g. nn.Embedding(sparse=False)), or mode='delta'"
                )

    def _flatten(self, tensors: list[torch.Tensor]) -> NDArray[np.float64]:
        flat = torch.cat([t.detach().reshape(-1).to(torch.float64) for t in tensors])
        return flat.cpu().numpy()

    def _unflatten(
        self, vector: NDArray[np.float64], params: list[torch.Tensor]
    ) -> list[torch.Tensor]:
        out, offset = [], 0
        for param in params:
            size = param.numel()
            piece = torch.from_numpy(vector[offset : offset + size]).reshape(param.shape)
            out.append(piece.to(dtype=param.dtype, device=param.device))
            offset += size
        return out

    def _clip(self, vector: NDArray[np.float64]) -> NDArray[np.float64]:
        if self.max_grad_norm is None or self.expected_batch_size is not None:
            return vector  # DP-SGD: each example was clipped, their sum is not
        norm = math.sqrt(sum_of_squares(vector))  # not BLAS (fixedpoint.sum_of_squares)
        if math.isinf(norm) and np.isfinite(vector).all():
            # Σ x² overflowed, the entries did not: the norm of the rescaled vector
            top = float(np.abs(vector).max())
            norm = top * math.sqrt(sum_of_squares(vector / top))
        if norm > self.max_grad_norm:
            vector = vector * (self.max_grad_norm / norm)
        return vector

    def _mean(self, outcome: Any, length: int) -> NDArray[np.float64]:
        total = np.asarray(outcome.total, dtype=np.float64).reshape(-1)
        count = int(outcome.count)
        if total.shape[0] != length or count < 1:
            raise ValueError(
                f"the aggregator returned {total.shape[0]} entries from {count} sites; "
                f"expected {length} entries from at least one site"
            )
        if self.expected_batch_size is not None:
            return total / self.expected_batch_size
        return total / count

    def _snapshot(self) -> _Snapshot:
        params = self._params()
        return _Snapshot(
            params=[p.detach().clone() for p in params],
            grads=[None if p.grad is None else p.grad.detach().clone() for p in params],
            optimizer_state=copy.deepcopy(self.original_optimizer.state_dict()),
        )

    def _undo_local_step(self, snapshot: _Snapshot | None) -> None:
        """Delta mode: put back what the local step before a failed round changed."""
        if snapshot is not None:
            self._restore(snapshot)
            self.local_steps -= 1

    def _restore(self, snapshot: _Snapshot) -> None:
        self.original_optimizer.load_state_dict(snapshot.optimizer_state)
        for param, value, grad in zip(self._params(), snapshot.params, snapshot.grads, strict=True):
            param.copy_(value)
            if grad is None:
                param.grad = None
            elif param.grad is None:
                param.grad = grad
            else:
                param.grad.copy_(grad)

    def _failed(self, error: BaseException) -> None:
        message = f"secure aggregation failed ({type(error).__name__}: {error})"
        if self.on_failure == "skip":
            self.skipped += 1
            log.warning("%s; step skipped, model and optimizer state unchanged", message)
            return
        log.error("%s; model and optimizer state unchanged", message)
        raise AggregationFailedError(
            message + "; model and optimizer state unchanged", cause=error
        ) from error


__all__ = [
    "AggregateOutcome",
    "AggregationFailedError",
    "Aggregator",
    "SecureAggOptimizer",
]


def _takes_keyword(aggregator: Aggregator, name: str) -> bool:
    """Whether ``aggregator.aggregate`` accepts keyword ``name`` (PeerNode: both)."""
    try:
        parameters = inspect.signature(aggregator.aggregate).parameters
    except (TypeError, ValueError):
        return False
    return name in parameters or any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()
    )


def _layout(params: list[torch.Tensor]) -> bytes:
    """The trainable parameters' shapes in order: what every site must flatten alike."""
    shapes = ";".join(",".join(str(size) for size in p.shape) for p in params)
    return b"mpc-agg/torch-layout/v1\x00" + shapes.encode()
