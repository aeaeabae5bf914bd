"""The demo's federated training task: scikit-learn's handwritten digits, split non-IID.

Everything a site does in ``mpc-agg demo`` except talking to the network: the data split,
the model, the local steps and the evaluation. The same :func:`train_site` runs with a
secure aggregator (a :class:`peers.background.BackgroundPeer` over the broker) and with
the demo's plaintext averaging (``peers.demo.train_plaintext``: sites in threads, deltas
averaged in the clear), so the two training curves differ only by the aggregation
(DESIGN §9).

The data ships with scikit-learn (1,797 8×8 images, nothing is downloaded). A fixed 20 %
stratified test split is held out; the rest is split across the sites with a Dirichlet
(α) label distribution per class, so sites see different mixes of digits. Training is
FedAvg: each round every site takes ``local_steps`` SGD steps on minibatches of its own
data, and the parameter deltas — clipped to L2 norm ``clip`` — are averaged.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray

from mpc_agg.torch.optimizer import Aggregator, SecureAggOptimizer

Dataset = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True, slots=True, kw_only=True)
class DigitsTask:
    """The training configuration every site and the plaintext baseline share."""

    sites: int
    seed: int = 0
    alpha: float = 0.5
    """Dirichlet concentration of the label split (smaller: more skewed sites)."""
    local_steps: int = 20
    batch_size: int = 32
    lr: float = 0.3
    momentum: float = 0.5
    hidden: int = 64
    clip: float = 1.0
    """L2 bound on each site's delta per round (keeps every entry encodable)."""


@dataclass(frozen=True, slots=True)
class RoundMetrics:
    """What a site reports after a round (the global model is the same at every site)."""

    round_id: int
    train_loss: float
    test_loss: float
    test_accuracy: float


def load_split(task: DigitsTask) -> tuple[list[Dataset], Dataset]:
    """The sites' training sets (non-IID) and the common test set."""
    from sklearn.datasets import load_digits  # noqa: PLC0415 - the demo extra
    from sklearn.model_selection import train_test_split  # noqa: PLC0415

    digits = load_digits()
    x = np.asarray(digits.data, dtype=np.float32) / 16.0
    y = np.asarray(digits.target, dtype=np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=0.2, random_state=task.seed, stratify=y
    )
    parts = _dirichlet_split(y_train, task.sites, task.alpha, task.seed, task.batch_size)
    sites = [(torch.from_numpy(x_train[p]), torch.from_numpy(y_train[p])) for p in parts]
    return sites, (torch.from_numpy(x_test), torch.from_numpy(y_test))


def _dirichlet_split(
    labels: NDArray[np.int64], sites: int, alpha: float, seed: int, minimum: int
) -> list[NDArray[np.int64]]:
    """Indices per site: per class, proportions drawn from Dir(α).

    Redrawn until every site holds at least ``minimum`` examples. (The split is public:
    numpy's RNG is fine here.)
    """
    rng = np.random.default_rng(seed)
    for _ in range(1000):
        parts: list[list[int]] = [[] for _ in range(sites)]
        for label in np.unique(labels):
            members = rng.permutation(np.flatnonzero(labels == label))
            shares = rng.dirichlet(np.full(sites, alpha))
            cuts = (np.cumsum(shares)[:-1] * members.size).astype(int)
            for k, piece in enumerate(np.split(members, cuts)):
                parts[k].extend(piece.tolist())
        if min(len(p) for p in parts) >= minimum:
            return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]
    raise ValueError(f"cannot give each of {sites} sites {minimum} examples; use fewer sites")


def make_model(task: DigitsTask) -> torch.nn.Module:
    """A two-layer perceptron, identically initialised at every site (from the seed).

    torch's default ``Linear`` initialisation (uniform in ±1/√fan_in for weights and
    biases) drawn from a generator of our own: the global one is neither read nor changed,
    so sites running as threads cannot disturb each other.
    """
    model = torch.nn.Sequential(
        torch.nn.Linear(64, task.hidden), torch.nn.ReLU(), torch.nn.Linear(task.hidden, 10)
    )
    generator = torch.Generator().manual_seed(task.seed)
    with torch.no_grad():
        for layer in model.modules():
            if not isinstance(layer, torch.nn.Linear):
                continue
            bound = 1.0 / float(layer.in_features) ** 0.5
            layer.weight.uniform_(-bound, bound, generator=generator)
            layer.bias.uniform_(-bound, bound, generator=generator)
    return model


def evaluate(model: torch.nn.Module, data: Dataset) -> tuple[float, float]:
    """Mean cross-entropy and accuracy of ``model`` on ``data``."""
    x, y = data
    with torch.no_grad():
        logits = model(x)
        loss = float(torch.nn.functional.cross_entropy(logits, y))
        accuracy = float((logits.argmax(dim=1) == y).float().mean())
    return loss, accuracy


def train_site(
    task: DigitsTask,
    site: int,
    aggregator: Aggregator,
    rounds: int,
    report: Callable[[RoundMetrics, SecureAggOptimizer], None],
    *,
    data: tuple[list[Dataset], Dataset] | None = None,
) -> torch.nn.Module:
    """Train ``site``'s copy of the model for ``rounds`` FedAvg rounds through ``aggregator``.

    ``report`` is called after each round with the round's metrics and the optimizer
    (whose ``last_result`` is the aggregator's result). Batches are drawn from a generator
    seeded by (seed, site, round), so the secure and plaintext runs see the same data.
    """
    sites_data, test = data if data is not None else load_split(task)
    x, y = sites_data[site]
    model = make_model(task)
    optimizer = SecureAggOptimizer(
        torch.optim.SGD(model.parameters(), lr=task.lr, momentum=task.momentum),
        aggregator,
        mode="delta",
        every=task.local_steps,
        max_grad_norm=task.clip,
    )
    for round_id in range(1, rounds + 1):
        generator = torch.Generator().manual_seed(
            (task.seed * 1_000_003 + site * 10_007 + round_id) % (1 << 62)
        )
        losses = []
        for _ in range(task.local_steps):
            index = torch.randint(0, x.shape[0], (task.batch_size,), generator=generator)
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[index]), y[index])
            loss.backward()  # type: ignore[no-untyped-call]
            losses.append(float(loss.detach()))
            optimizer.step()
        test_loss, accuracy = evaluate(model, test)
        report(RoundMetrics(round_id, float(np.mean(losses)), test_loss, accuracy), optimizer)
    return model


def flat_parameters(model: torch.nn.Module) -> NDArray[np.float64]:
    """All parameters of ``model`` as one float64 vector (in ``parameters()`` order)."""
    return np.concatenate([p.detach().reshape(-1).double().numpy() for p in model.parameters()])


@dataclass(frozen=True, slots=True, kw_only=True)
class DpSgd:
    """DP-SGD on the digits task (``mpc-agg demo --epsilon``; ``mpc_agg/DP.md`` §5.3).

    Each step every site Poisson-samples its examples with ``sampling_probability``,
    sums their gradients each clipped to ``clip``, and the sites aggregate the sums
    securely with the federation's noise; the update is the aggregate divided by the
    expected batch size over all sites. One step is one secure aggregation round.
    """

    steps: int = 100
    sampling_probability: float = 0.1
    clip: float = 1.0
    lr: float = 1.0
    momentum: float = 0.5
    delta: float = 1e-5


def train_site_dpsgd(
    task: DigitsTask,
    dpsgd: DpSgd,
    site: int,
    aggregator: Aggregator,
    report: Callable[[RoundMetrics, SecureAggOptimizer], None],
    *,
    noise_multiplier: float | None,
    data: tuple[list[Dataset], Dataset] | None = None,
) -> torch.nn.Module:
    """DP-SGD at ``site``: per-example clipping, Poisson sampling from the OS CSPRNG.

    ``noise_multiplier`` is the federation's (``None``: no noise, the non-private
    baseline with the same clipping and sampling). The sampling is secret — the privacy
    amplification assumes nobody knows which examples took part — so it is drawn from
    ``os.urandom``, never from a seeded generator.
    """
    from mpc_agg.randomness import SystemRandomSource  # noqa: PLC0415
    from mpc_agg.torch.privacy import clipped_gradient_sum  # noqa: PLC0415

    sites_data, test = data if data is not None else load_split(task)
    x, y = sites_data[site]
    # float64 throughout: the per-example clipped sum must be exact to float64 for the
    # sensitivity bound (mpc_agg/DP.md §2.1).
    model = make_model(task).double()
    x, test = x.double(), (test[0].double(), test[1])
    optimizer = SecureAggOptimizer(
        torch.optim.SGD(model.parameters(), lr=dpsgd.lr, momentum=dpsgd.momentum),
        aggregator,
        mode="gradient",
        max_grad_norm=dpsgd.clip,
        noise_multiplier=noise_multiplier,
        # q · (the training set over all sites): the expected examples per step
        expected_batch_size=max(
            1, round(dpsgd.sampling_probability * sum(len(xs) for xs, _ in sites_data))
        ),
    )
    randomness = SystemRandomSource()
    threshold = np.uint64(min(dpsgd.sampling_probability, 1.0) * 2.0**64 - 1)
    for step in range(1, dpsgd.steps + 1):
        draws = np.frombuffer(randomness.random_bytes(8 * x.shape[0]), dtype="<u8")
        index = torch.from_numpy(np.flatnonzero(draws < threshold))
        optimizer.zero_grad()
        clipped_gradient_sum(
            model, torch.nn.functional.cross_entropy, x[index], y[index], max_norm=dpsgd.clip
        )
        optimizer.step()
        with torch.no_grad():
            train_loss = float(torch.nn.functional.cross_entropy(model(x), y))
        test_loss, accuracy = evaluate(model, test)
        report(RoundMetrics(step, train_loss, test_loss, accuracy), optimizer)
    return model
