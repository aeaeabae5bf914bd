"""SecureAggOptimizer: equivalence with plaintext FedSGD/FedAvg, rollback, schedulers, state.

Sites are real PeerNodes running the secagg protocol over the in-memory transport; the
synchronous ``step()`` path runs each site's training loop on its own thread with the
peers' event loop on another (BackgroundPeer), as a user's script would.
"""

from __future__ import annotations

import asyncio
import copy
import threading
from collections.abc import Callable
from typing import Any, Literal

import numpy as np
import pytest
import torch

from mpc_agg import dp
from mpc_agg.errors import EncodingError
from mpc_agg.torch import AggregationFailedError, SecureAggOptimizer
from peers.memory import MemoryBroker, MemoryFaults, MemoryTransport
from peers.node import RoundAbortedError
from tests.runtime.nodes import background_peers, running_nodes

N_SITES = 3
FRAC_BITS = 20


def make_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))


def site_batches(site: int, steps: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Non-IID data: each site's inputs are shifted differently."""
    gen = torch.Generator().manual_seed(100 + site)
    return [
        (torch.randn(16, 8, generator=gen) + site, torch.randint(0, 3, (16,), generator=gen))
        for _ in range(steps)
    ]


def loss_of(model: torch.nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return torch.nn.functional.cross_entropy(model(x), y)


def max_param_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    return max(
        float((p.detach() - q.detach()).abs().max())
        for p, q in zip(a.parameters(), b.parameters(), strict=True)
    )


def memory_transports() -> Callable[[int], MemoryTransport]:
    broker = MemoryBroker()
    return lambda i: MemoryTransport(broker, name=f"site-{i}")


# --------------------------------------------------------------------------- equivalence


@pytest.mark.asyncio
async def test_gradient_mode_equals_plaintext_fedsgd_async() -> None:
    """20 steps, 3 sites: secure FedSGD within 1e-5 of plaintext gradient averaging."""
    steps = 20
    batches = [site_batches(k, steps) for k in range(N_SITES)]
    reference = make_model()
    ref_opt = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    for t in range(steps):
        grads = []
        for k in range(N_SITES):
            reference.zero_grad()
            loss_of(reference, batches[k][t]).backward()
            grads.append([p.grad.clone() for p in reference.parameters()])
        for i, p in enumerate(reference.parameters()):
            p.grad = torch.stack([g[i] for g in grads]).sum(0) / N_SITES
        ref_opt.step()

    models = [make_model() for _ in range(N_SITES)]
    async with running_nodes(N_SITES, memory_transports()) as nodes:
        opts = [
            SecureAggOptimizer(torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9), node)
            for m, node in zip(models, nodes, strict=True)
        ]

        async def site(k: int) -> None:
            for t in range(steps):
                opts[k].zero_grad()
                loss_of(models[k], batches[k][t]).backward()
                await opts[k].astep()

        await asyncio.gather(*(site(k) for k in range(N_SITES)))
    worst = max(max_param_diff(model, reference) for model in models)
    print(f"FedSGD, 20 steps, 3 sites: max |secure - plaintext| = {worst:.2e}")
    assert worst <= 1e-5
    assert max_param_diff(models[0], models[1]) == 0.0  # identical sums at every site
    assert all(opt.rounds == steps for opt in opts)
    assert max_param_diff(models[0], make_model()) > 1e-2  # it did train


def run_sites(work: Callable[[int], None], n: int = N_SITES) -> None:
    """Run ``work(k)`` for every site on its own thread (a blocking step() per site)."""
    errors: list[BaseException] = []

    def target(k: int) -> None:
        try:
            work(k)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=target, args=(k,)) for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    if errors:
        raise errors[0]


def test_delta_mode_equals_plaintext_fedavg_sync_threads() -> None:
    """FedAvg with 3 local steps per round through blocking step() calls on threads."""
    local, rounds = 3, 4
    steps = local * rounds
    batches = [site_batches(k, steps) for k in range(N_SITES)]

    reference = make_model()
    for r in range(rounds):
        deltas = []
        start = copy.deepcopy(reference)
        for k in range(N_SITES):
            local_model = copy.deepcopy(start)
            opt = torch.optim.SGD(local_model.parameters(), lr=0.05)
            for t in range(r * local, (r + 1) * local):
                opt.zero_grad()
                loss_of(local_model, batches[k][t]).backward()
                opt.step()
            deltas.append(
                [
                    p.detach() - q.detach()
                    for p, q in zip(local_model.parameters(), start.parameters(), strict=True)
                ]
            )
        with torch.no_grad():
            for i, p in enumerate(reference.parameters()):
                p.add_(sum(d[i] for d in deltas) / N_SITES)

    models = [make_model() for _ in range(N_SITES)]
    with background_peers(N_SITES) as peers:
        opts = [
            SecureAggOptimizer(
                torch.optim.SGD(m.parameters(), lr=0.05), peer, mode="delta", every=local
            )
            for m, peer in zip(models, peers, strict=True)
        ]

        def site(k: int) -> None:
            for t in range(steps):
                opts[k].zero_grad()
                loss_of(models[k], batches[k][t]).backward()
                opts[k].step()

        run_sites(site)
    worst = max(max_param_diff(model, reference) for model in models)
    print(f"FedAvg, 4 rounds x 3 local steps, 3 sites: max |secure - plaintext| = {worst:.2e}")
    assert worst <= 1e-5
    assert [opt.rounds for opt in opts] == [rounds] * N_SITES
    result = opts[0].last_result
    assert result.count == N_SITES
    assert result.protocol == "secagg/4"


# --------------------------------------------------------------------------- rollback


def state_snapshot(model: torch.nn.Module, opt: torch.optim.Optimizer) -> dict[str, Any]:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "opt": copy.deepcopy(opt.state_dict()),
    }


def assert_bit_identical(a: dict[str, Any], b: dict[str, Any]) -> None:
    for x, y in zip(a["params"], b["params"], strict=True):
        assert torch.equal(x, y)
    for x, y in zip(a["grads"], b["grads"], strict=True):
        assert (x is None and y is None) or torch.equal(x, y)
    assert a["opt"]["param_groups"] == b["opt"]["param_groups"]
    assert a["opt"]["state"].keys() == b["opt"]["state"].keys()
    for key, state in a["opt"]["state"].items():
        for name, value in state.items():
            other = b["opt"]["state"][key][name]
            assert torch.equal(value, other) if torch.is_tensor(value) else value == other


@pytest.mark.parametrize("mode", ["gradient", "delta"])
@pytest.mark.asyncio
async def test_aborted_round_leaves_model_and_adam_state_bit_identical(mode: str) -> None:
    """Site-2 vanishes after the first round: the next round aborts mid-way; rollback."""
    models = [make_model() for _ in range(N_SITES)]
    batches = [site_batches(k, 3) for k in range(N_SITES)]
    async with running_nodes(N_SITES, memory_transports(), threshold=3, deadline=0.3) as nodes:
        opts = [
            SecureAggOptimizer(torch.optim.Adam(m.parameters(), lr=0.01), node, mode=mode)  # type: ignore[arg-type]
            for m, node in zip(models, nodes, strict=True)
        ]

        async def step(k: int, t: int) -> None:
            opts[k].zero_grad()
            loss_of(models[k], batches[k][t]).backward()
            await opts[k].astep()

        await asyncio.gather(*(step(k, 0) for k in range(N_SITES)))  # one good round: Adam state
        for k in range(2):
            opts[k].zero_grad()
            loss_of(models[k], batches[k][1]).backward()
        before = [state_snapshot(models[k], opts[k]) for k in range(2)]
        results = await asyncio.gather(*(opts[k].astep() for k in range(2)), return_exceptions=True)
        for k in range(2):
            error = results[k]
            assert isinstance(error, AggregationFailedError)
            assert isinstance(error.cause, RoundAbortedError)
            assert_bit_identical(before[k], state_snapshot(models[k], opts[k]))
            assert opts[k].rounds == 1


def test_skip_on_failure_counts_and_leaves_state() -> None:
    model = make_model()

    class Failing:
        def aggregate(self, update: np.ndarray) -> Any:
            raise RoundAbortedError("ShareKeys: fewer than T peers", round_id=7)

    opt = SecureAggOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), Failing(), on_failure="skip"
    )
    loss_of(model, site_batches(0, 1)[0]).backward()
    before = state_snapshot(model, opt)
    assert opt.step() is None
    assert opt.skipped == 1
    assert opt.rounds == 0
    assert_bit_identical(before, state_snapshot(model, opt))


def test_out_of_range_gradient_is_a_typed_error_and_rolls_back() -> None:
    """An entry above the federation's max_abs_value: EncodingError inside, nothing sent."""
    model = make_model()
    with background_peers(N_SITES) as peers:
        opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), peers[0])
        loss_of(model, site_batches(0, 1)[0]).backward()
        with torch.no_grad():
            next(model.parameters()).grad[0, 0] = 5.0  # max_abs_value is 1.0
        before = state_snapshot(model, opt)
        with pytest.raises(AggregationFailedError, match="max_abs_value") as info:
            opt.step()
        assert isinstance(info.value.cause, EncodingError)
        assert_bit_identical(before, state_snapshot(model, opt))


def test_max_grad_norm_clips_before_encoding() -> None:
    seen: list[np.ndarray] = []

    class Echo:
        def aggregate(self, update: np.ndarray) -> Any:
            seen.append(update.copy())
            return type("R", (), {"total": update * 2, "count": 2})()

    model = make_model()
    opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Echo(), max_grad_norm=0.5)
    loss_of(model, site_batches(0, 1)[0]).backward()
    raw = torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double().numpy()
    assert np.linalg.norm(raw) > 0.5
    opt.step()
    assert np.linalg.norm(seen[0]) == pytest.approx(0.5)
    np.testing.assert_allclose(seen[0], raw * 0.5 / np.linalg.norm(raw))


def test_sync_step_with_a_coroutine_aggregator_is_a_clear_error() -> None:
    class AsyncOnly:
        async def aggregate(self, update: np.ndarray) -> Any:
            raise AssertionError("never awaited")

    model = make_model()
    opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), AsyncOnly())
    loss_of(model, site_batches(0, 1)[0]).backward()
    before = state_snapshot(model, opt)
    with pytest.raises(AggregationFailedError, match="BackgroundPeer") as info:
        opt.step()
    assert isinstance(info.value.cause, TypeError)
    assert_bit_identical(before, state_snapshot(model, opt))


def test_aggregator_returning_the_wrong_length_is_refused() -> None:
    class Short:
        def aggregate(self, update: np.ndarray) -> Any:
            return type("R", (), {"total": update[:-1], "count": 1})()

    model = make_model()
    opt = SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), Short())
    loss_of(model, site_batches(0, 1)[0]).backward()
    with pytest.raises(AggregationFailedError, match="entries"):
        opt.step()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "fedprox"}, "mode"),
        ({"every": 0}, "every"),
        ({"every": 2}, "delta"),
        ({"max_grad_norm": -1.0}, "max_grad_norm"),
        ({"max_grad_norm": float("nan")}, "max_grad_norm"),
        ({"on_failure": "ignore"}, "on_failure"),
        ({"noise_multiplier": 1.0}, "needs max_grad_norm"),
        ({"noise_multiplier": -1.0, "max_grad_norm": 1.0}, "noise_multiplier"),
    ],
)
def test_invalid_arguments(kwargs: dict[str, Any], message: str) -> None:
    model = make_model()
    with pytest.raises(ValueError, match=message):
        SecureAggOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), object(), **kwargs)  # type: ignore[arg-type]


class _LetsGo:
    """An aggregator that drops the update and checks that nobody else still holds it."""

    def __init__(self) -> None:
        self.held: list[bool] = []

    def aggregate(self, update: np.ndarray) -> Any:
        import gc  # noqa: PLC0415 - only here
        import weakref  # noqa: PLC0415

        total = update.copy()
        ref = weakref.ref(update)
        del update
        gc.collect()
        self.held.append(ref() is not None)
        return type("R", (), {"total": total, "count": 1})()


@pytest.mark.parametrize("max_grad_norm", [None, 1e-6])
@pytest.mark.parametrize("mode", ["gradient", "delta"])
def test_the_step_hands_its_vector_over(
    mode: Literal["gradient", "delta"], max_grad_norm: float | None
) -> None:
    # a model-sized float64 copy must not stay in the step while the round runs: the
    # aggregator (PeerNode, BackgroundPeer) lets go of it once it is encoded
    model = make_model()
    probe = _LetsGo()
    opt = SecureAggOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1),
        probe,
        mode=mode,
        max_grad_norm=max_grad_norm,
    )
    loss_of(model, site_batches(0, 1)[0]).backward()
    opt.step()
    loss_of(model, site_batches(0, 1)[0]).backward()
    asyncio.run(opt.astep())
    assert probe.held == [False, False]
    assert opt.rounds == 2


# --------------------------------------------------------------------------- schedulers, state


class Mean:
    """A one-site aggregator: the mean is the site's own vector."""

    def aggregate(self, update: np.ndarray) -> Any:
        return type("R", (), {"total": update, "count": 1})()


def test_lr_scheduler_drives_the_wrapped_optimizer() -> None:
    model = make_model()
    inner = torch.optim.SGD(model.parameters(), lr=0.1)
    opt = SecureAggOptimizer(inner, Mean())
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=2, gamma=0.5)
    batch = site_batches(0, 1)[0]
    lrs = []
    for _ in range(5):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
        scheduler.step()
        lrs.append(inner.param_groups[0]["lr"])
    assert lrs == pytest.approx([0.1, 0.05, 0.05, 0.025, 0.025])
    assert opt.param_groups is inner.param_groups


def test_state_dict_round_trip_and_interchange_with_the_plain_optimizer() -> None:
    model = make_model()
    opt = SecureAggOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), Mean())
    batch = site_batches(0, 1)[0]
    for _ in range(3):
        opt.zero_grad()
        loss_of(model, batch).backward()
        opt.step()
    saved = copy.deepcopy(opt.state_dict())

    plain = torch.optim.Adam(model.parameters(), lr=0.01)
    plain.load_state_dict(saved)  # a wrapped checkpoint loads into the plain optimizer
    wrapped = SecureAggOptimizer(torch.optim.Adam(model.parameters(), lr=0.01), Mean())
    wrapped.load_state_dict(saved)
    for restored in (plain.state_dict(), wrapped.state_dict()):
        assert restored["param_groups"] == saved["param_groups"]
        for key, state in saved["state"].items():
            for name, value in state.items():
                assert torch.equal(restored["state"][key][name], value)
    # the wrapper sees the state the inner optimizer now holds (reassigned by load_state_dict)
    assert wrapped.state is wrapped.original_optimizer.state
    assert len(wrapped.state) == len(list(model.parameters()))


def test_delta_mode_checkpoint_resets_the_anchor() -> None:
    model = make_model()
    opt = SecureAggOptimizer(
        torch.optim.SGD(model.parameters(), lr=0.1), Mean(), mode="delta", every=3
    )
    batch = site_batches(0, 1)[0]
    opt.zero_grad()
    loss_of(model, batch).backward()
    opt.step()
    assert opt.local_steps == 1
    opt.load_state_dict(opt.state_dict())
    assert opt.local_steps == 0
    assert "SecureAggOptimizer(SGD" in repr(opt)


def test_lossy_network_faults_do_not_change_the_result() -> None:
    """Duplicated and reordered messages: the protocol dedups; the step still matches."""
    faults = MemoryFaults(duplicate=0.2, delay=(0.0, 0.02), seed=3)
    models = [make_model() for _ in range(N_SITES)]
    batches = [site_batches(k, 2) for k in range(N_SITES)]
    with background_peers(N_SITES, faults=faults) as peers:
        opts = [
            SecureAggOptimizer(torch.optim.SGD(m.parameters(), lr=0.1), p)
            for m, p in zip(models, peers, strict=True)
        ]

        def site(k: int) -> None:
            for t in range(2):
                opts[k].zero_grad()
                loss_of(models[k], batches[k][t]).backward()
                opts[k].step()

        run_sites(site)
    assert max_param_diff(models[0], models[2]) <= 1e-6


# --------------------------------------------------------------------------- differential privacy


@pytest.mark.asyncio
async def test_dp_training_clips_adds_the_federation_noise_and_reports_epsilon() -> None:
    """Gradient mode with [dp]: the averaged gradient is the clipped mean plus N(0, σ²/n²)."""
    settings = dp.DpSettings(noise_multiplier=0.7, clip_norm=0.5, delta=1e-5)
    models = [make_model() for _ in range(N_SITES)]
    async with running_nodes(N_SITES, memory_transports(), privacy=settings) as nodes:
        opts = [
            SecureAggOptimizer(
                torch.optim.SGD(m.parameters(), lr=0.05),
                node,
                max_grad_norm=0.5,
                noise_multiplier=0.7,
            )
            for m, node in zip(models, nodes, strict=True)
        ]
        batches = [site_batches(k, 3) for k in range(N_SITES)]
        spent = []
        for t in range(3):

            async def site(k: int, t: int = t) -> None:
                opts[k].zero_grad()
                loss_of(models[k], batches[k][t]).backward()
                await opts[k].astep()

            await asyncio.gather(*(site(k) for k in range(N_SITES)))
            spent.append(opts[0].epsilon)
    assert max_param_diff(models[0], models[2]) == 0.0  # every site applied the same noisy mean
    assert all(e is not None for e in spent)
    assert spent[0] < spent[1] < spent[2]  # type: ignore[operator]
    assert nodes[0].accountant is not None
    assert spent[2] == nodes[0].accountant.epsilon()


@pytest.mark.asyncio
async def test_dp_optimizer_refuses_an_aggregator_with_other_or_no_noise() -> None:
    settings = dp.DpSettings(noise_multiplier=0.7, clip_norm=0.5, delta=1e-5)
    async with running_nodes(2, memory_transports(), privacy=settings) as nodes:
        model = make_model()
        before = copy.deepcopy(model.state_dict())
        wrong = SecureAggOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            nodes[0],
            max_grad_norm=1.0,
            noise_multiplier=0.7,
        )
        loss_of(model, site_batches(0, 1)[0]).backward()
        with pytest.raises(ValueError, match=r"clip_norm=0\.5"):
            await wrong.astep()
        plain = SecureAggOptimizer(
            torch.optim.SGD(model.parameters(), lr=0.1),
            Mean(),
            max_grad_norm=1.0,
            noise_multiplier=0.7,
        )
        with pytest.raises(ValueError, match="adds no DP noise"):
            plain.step()
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert nodes[0]._bytes_out_total() == 0
