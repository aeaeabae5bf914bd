"""Integration review of SecureAggOptimizer / clipped_gradient_sum (hospital training code).

Each test reproduced a defect an ML-engineer review found at be68d96 (frozen parameters
changed by weight decay, a site that missed a round never rejoining, layouts mixed,
cancellation leaving a FedAvg local step applied, …) and passes since it was fixed; one
pins a behaviour kept by design.
"""

from __future__ import annotations

import asyncio
import copy
import os
import warnings
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pytest
import torch

from mpc_agg.errors import MpcAggError
from mpc_agg.torch import AggregationFailedError, SecureAggOptimizer, clipped_gradient_sum
from peers.mqtt import MqttTransport
from peers.transport import Transport, presence_topic
from tests.runtime.nodes import running_nodes
from tests.torch.test_optimizer import loss_of, make_model, memory_transports, site_batches

F = torch.nn.functional


class Mean:
    """A one-site aggregator: the mean is the site's own vector."""

    def __init__(self) -> None:
        self.sent: list[np.ndarray] = []

    def aggregate(self, update: np.ndarray) -> Any:
        self.sent.append(update.copy())
        return type("R", (), {"total": update, "count": 1})()


def _params(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def _mqtt(federation: str) -> Callable[[int], Transport]:
    tag = os.urandom(4).hex()
    return lambda i: MqttTransport(
        host="127.0.0.1",
        port=1883,
        client_id=f"{federation}-site-{i}-{tag}",
        presence_topic=presence_topic(federation, f"site-{i}"),
        chunk_size=64 * 1024,
    )


# --------------------------------------------------------------------- frozen parameters


def test_frozen_parameters_are_left_alone_like_the_plain_optimizer() -> None:
    """Transfer learning: backbone frozen (requires_grad=False), model.parameters() passed
    to AdamW (default weight_decay=0.01). Plain AdamW never touches a param whose grad is
    None; the wrapper gives it a zero grad, so weight decay shrinks the frozen backbone."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    for p in model[0].parameters():
        p.requires_grad_(False)
    frozen_before = [p.detach().clone() for p in model[0].parameters()]
    opt = SecureAggOptimizer(torch.optim.AdamW(model.parameters(), lr=0.1), Mean())
    for t in range(3):
        opt.zero_grad()
        loss_of(model, site_batches(0, 3)[t]).backward()
        opt.step()
    for before, p in zip(frozen_before, model[0].parameters(), strict=True):
        assert torch.equal(before, p.detach())  # plain torch never changes it
        assert p.grad is None  # nor gives it a .grad


def test_a_site_without_gradients_sends_zeros_and_applies_the_federations_mean() -> None:
    """By design, unlike a plain optimizer's no-op: step() with every gradient None (after
    zero_grad(set_to_none=True)) is still a round. The site contributes zeros and applies
    the mean like every other site, so the sites' models stay identical; here the mean is
    zero and SGD's weight decay acts as on zero gradients."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    twin = copy.deepcopy(model)
    agg = Mean()
    opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1, weight_decay=0.1), agg)
    plain = torch.optim.SGD(twin.parameters(), lr=0.1, weight_decay=0.1)
    opt.zero_grad(set_to_none=True)
    opt.step()
    assert len(agg.sent) == 1
    assert not agg.sent[0].any()
    for p in twin.parameters():
        p.grad = torch.zeros_like(p)
    plain.step()
    assert all(torch.equal(a, b) for a, b in zip(_params(twin), _params(model), strict=True))


# --------------------------------------------------------------------- closures, hooks


class _Aborting:
    def aggregate(self, update: np.ndarray) -> Any:
        raise MpcAggError("round 7 aborted: only 1 of 3 peers advertised keys")


@pytest.mark.parametrize("mode", ["gradient", "delta"])
@pytest.mark.parametrize("fails", [False, True])
def test_step_with_closure_returns_the_loss(
    mode: Literal["gradient", "delta"], fails: bool
) -> None:
    """torch.optim contract: step(closure) returns the closure's loss (it returned None in
    gradient mode), also on a step whose round failed and was skipped (a training loop logs
    `loss = opt.step(closure); loss.item()`)."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    aggregator = _Aborting() if fails else Mean()
    opt = SecureAggOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), aggregator, mode=mode, on_failure="skip"
    )
    x = torch.randn(3, 4)
    losses: list[torch.Tensor] = []

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss: torch.Tensor = model(x).sum()
        loss.backward()
        losses.append(loss)
        return loss

    assert opt.step(closure) is losses[-1]
    assert opt.skipped == int(fails)


def test_step_hooks_registered_on_the_wrapper_run() -> None:
    """register_step_pre_hook/post_hook are inherited and return handles, but never fire."""
    model = torch.nn.Linear(4, 2)
    opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Mean())
    called: list[str] = []
    opt.register_step_pre_hook(lambda *_a: called.append("pre"))
    opt.register_step_post_hook(lambda *_a: called.append("post"))
    model(torch.randn(2, 4)).sum().backward()
    opt.step()
    assert called == ["pre", "post"]


# --------------------------------------------------------------------- rollback


class _Hanging:
    async def aggregate(self, update: np.ndarray) -> Any:
        await asyncio.sleep(30)


class _Interrupted:
    def aggregate(self, update: np.ndarray) -> Any:
        raise KeyboardInterrupt  # Ctrl-C in a notebook while the round blocks


def test_delta_mode_astep_cancelled_by_a_timeout_leaves_the_model_unchanged() -> None:
    """asyncio.wait_for(opt.astep(), t) times out: the local step stays applied."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = SecureAggOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), _Hanging(), mode="delta"
    )
    model(torch.randn(3, 4)).sum().backward()
    before = _params(model)

    async def main() -> None:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(opt.astep(), 0.2)

    asyncio.run(main())
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model), strict=True))
    assert opt.state_dict()["state"] == {}  # no momentum buffer from the undone step
    assert opt.local_steps == 0


def test_delta_mode_keyboard_interrupt_leaves_the_model_unchanged() -> None:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = SecureAggOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), _Interrupted(), mode="delta"
    )
    model(torch.randn(3, 4)).sum().backward()
    before = _params(model)
    with pytest.raises(KeyboardInterrupt):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, _params(model), strict=True))
    assert opt.local_steps == 0


# --------------------------------------------------------------------- dtypes, layouts


def test_sparse_embedding_gradients_work_or_fail_with_a_clear_error() -> None:
    """nn.Embedding(sparse=True): a raw 'reshape is not implemented for sparse tensors'."""
    model = torch.nn.Embedding(10, 3, sparse=True)
    opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Mean())
    model(torch.tensor([1, 2])).sum().backward()
    error: Exception | None = None
    try:
        opt.step()
    except Exception as exc:  # a clear, typed refusal is acceptable
        error = exc
    if error is not None:
        assert isinstance(error, (ValueError, TypeError, MpcAggError)), repr(error)
        assert "sparse" in str(error)
        assert "reshape" not in str(error)


def test_complex_parameters_are_not_silently_truncated() -> None:
    """A complex gradient is cast to float64: the imaginary part is dropped (torch only
    warns) and written back as 0 into .grad, then stepped."""
    p = torch.nn.Parameter(torch.tensor([1 + 2j, 3 - 1j]))
    opt = SecureAggOptimizer(torch.optim.SGD([p], lr=0.1), Mean())
    (p.abs() ** 2).sum().backward()
    grad = p.grad.clone()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            opt.step()
        except (ValueError, TypeError, MpcAggError):
            return  # refusing complex parameters is fine
    assert p.grad is not None
    assert torch.equal(p.grad, grad)


def test_clipping_a_huge_finite_float64_gradient_keeps_its_direction() -> None:
    """sum of squares overflows to inf: the clip scales by C/inf = 0 and sends zeros."""
    p = torch.nn.Parameter(torch.zeros(4, dtype=torch.float64))
    agg = Mean()
    opt = SecureAggOptimizer(torch.optim.SGD([p], lr=0.1), agg, max_grad_norm=1.0)
    p.grad = torch.tensor([1e200, 1.0, 0.0, 0.0], dtype=torch.float64)
    opt.step()
    assert np.linalg.norm(agg.sent[0]) == pytest.approx(1.0)


# --------------------------------------------------------------------- dropout / rejoin


@pytest.mark.asyncio
@pytest.mark.parametrize("miss", ["encoding error", "no step"])
async def test_a_site_that_missed_a_round_rejoins_at_its_next_step(miss: str) -> None:
    """3 sites, T = 2. At the second step site-2's gradient has an entry above
    max_abs_value (EncodingError, the step is skipped), or site-2 does not call step() at
    all (GradScaler found inf, the process was busy): sites 0 and 1 run that round without
    it. Site-2 used to stay one round id behind and abort at every later step, for good.
    Now the optimizer skips the rounds it missed: by itself after an EncodingError
    (nothing was sent), after skip_round() for a step the loop left out."""
    models = [make_model() for _ in range(3)]
    async with running_nodes(3, memory_transports(), threshold=2, deadline=0.5) as nodes:
        opts = [
            SecureAggOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), n, on_failure="skip")
            for m, n in zip(models, nodes, strict=True)
        ]
        batches = [site_batches(k, 1)[0] for k in range(3)]

        async def step(k: int, spike: bool = False) -> None:
            opts[k].zero_grad()
            loss_of(models[k], batches[k]).backward()
            if spike:
                with torch.no_grad():
                    next(models[k].parameters()).grad[0, 0] = 5.0  # above max_abs_value 1
            await opts[k].astep()

        await asyncio.gather(*(step(k) for k in range(3)))
        if miss == "encoding error":
            await asyncio.gather(step(0), step(1), step(2, spike=True))
            assert opts[2].skipped == 1
        else:
            await asyncio.gather(step(0), step(1))
            opts[2].skip_round()
        assert opts[0].rounds == opts[1].rounds == 2
        for _ in range(3):
            await asyncio.gather(*(step(k) for k in range(3)))
    assert opts[2].rounds == 4, f"site-2 rejoined late: {opts[2].skipped} steps skipped"
    assert opts[0].rounds == opts[1].rounds == 5
    last = [o.last_result for o in opts]
    assert last[2].round_id == last[0].round_id == last[1].round_id == 5
    assert last[2].result_digest == last[0].result_digest


# --------------------------------------------------------------------- DP-SGD helper


def test_clipped_gradient_sum_supports_dropout() -> None:
    """A model with nn.Dropout in train mode: vmap raises 'called random operation while in
    randomness error mode' (clipped_gradient_sum does not pass randomness='different')."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Dropout(0.5), torch.nn.Linear(8, 2)
    )
    model.train()
    x, y = torch.randn(5, 4), torch.randint(0, 2, (5,))
    norms = clipped_gradient_sum(model, F.cross_entropy, x, y, max_norm=1.0)
    assert norms.shape == (5,)


# --------------------------------------------------------------------- over Mosquitto


@pytest.mark.asyncio
async def test_frozen_backbone_over_mosquitto_is_unchanged_after_fedsgd() -> None:
    """The frozen-parameter defect end to end: 3 sites over the real broker, AdamW."""
    federation = f"fed-{os.urandom(4).hex()}"
    models = []
    for _ in range(3):
        model = make_model()
        for p in model[0].parameters():
            p.requires_grad_(False)
        models.append(model)
    frozen_before = copy.deepcopy(models[0][0].state_dict())
    async with running_nodes(3, _mqtt(federation), federation=federation, deadline=10.0) as nodes:
        opts = [
            SecureAggOptimizer(torch.optim.AdamW(m.parameters(), lr=0.05), node)
            for m, node in zip(models, nodes, strict=True)
        ]
        batches = [site_batches(k, 2) for k in range(3)]
        for t in range(2):

            async def site(k: int, t: int = t) -> None:
                opts[k].zero_grad()
                loss_of(models[k], batches[k][t]).backward()
                await opts[k].astep()

            await asyncio.gather(*(site(k) for k in range(3)))
    assert all(o.rounds == 2 for o in opts)
    for name, value in models[0][0].state_dict().items():
        assert torch.equal(value, frozen_before[name]), f"frozen {name} changed"


# --------------------------------------------------------------------- FedAvg anchor


@pytest.mark.asyncio
async def test_delta_mode_weights_loaded_after_the_optimizer_are_the_starting_point() -> None:
    """Both sites build model + optimizer, then load the same pretrained weights (order is
    irrelevant for every torch optimizer). The anchor was taken in __init__, so the first
    "change" includes (pretrained - own random init): with lr=0 (no training) the sites end
    the round with different models, neither equal to the pretrained weights."""
    pretrained = make_model(seed=42).state_dict()
    models = [make_model(seed=k) for k in range(2)]
    async with running_nodes(2, memory_transports(), threshold=2, deadline=2.0) as nodes:
        opts = [
            SecureAggOptimizer(torch.optim.SGD(m.parameters(), lr=0.0), n, mode="delta")
            for m, n in zip(models, nodes, strict=True)
        ]
        for m in models:
            m.load_state_dict(pretrained)
        batches = [site_batches(k, 1)[0] for k in range(2)]

        async def step(k: int) -> None:
            opts[k].zero_grad()
            loss_of(models[k], batches[k]).backward()
            await opts[k].astep()

        await asyncio.gather(step(0), step(1))
    for m in models:
        for name, value in m.state_dict().items():
            assert torch.allclose(value, pretrained[name], atol=1e-5), name


@pytest.mark.asyncio
async def test_sites_whose_parameters_are_laid_out_differently_are_refused() -> None:
    """Two sites, same model, param groups listed in a different order (head first at one
    site): same total length, so the round used to succeed and average head and backbone
    gradients into each other. The layout is now the round's context: the round aborts,
    naming the mismatch, and both models are unchanged."""
    async with running_nodes(2, memory_transports(), threshold=2, deadline=1.0) as nodes:
        backbone = [torch.nn.Parameter(torch.zeros(3)) for _ in range(2)]
        head = [torch.nn.Parameter(torch.zeros(3, 1)) for _ in range(2)]
        opt0 = SecureAggOptimizer(
            torch.optim.SGD([{"params": [backbone[0]]}, {"params": [head[0]]}], lr=1.0), nodes[0]
        )
        opt1 = SecureAggOptimizer(
            torch.optim.SGD([{"params": [head[1]]}, {"params": [backbone[1]]}], lr=1.0), nodes[1]
        )
        for k in range(2):
            backbone[k].grad = torch.full((3,), 0.5)
            head[k].grad = torch.full((3, 1), -0.5)
        results = await asyncio.gather(opt0.astep(), opt1.astep(), return_exceptions=True)
    for result in results:
        assert isinstance(result, AggregationFailedError), result
        assert "the sites' round parameters differ" in str(result.cause)
        assert "model's layout" in str(result.cause)
    for k in range(2):
        assert not backbone[k].detach().any()
        assert not head[k].detach().any()
