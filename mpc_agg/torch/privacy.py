"""Per-example gradient clipping for DP-SGD with secure aggregation (``mpc_agg/DP.md`` §5.3).

With ``[dp] unit = "example"`` the guarantee protects one training example: each site
sends the *sum* of its examples' gradients, each clipped to ``clip_norm``, and the
federation adds noise calibrated to that clip (Abadi et al., CCS 2016, with the noise
distributed across sites). :func:`clipped_gradient_sum` computes that sum with
``torch.func`` (one vectorised backward pass over the batch, no hooks and nothing
attached to the parameters) and writes it into ``.grad``;
``SecureAggOptimizer(..., expected_batch_size=B)`` then divides the aggregate by the
expected number of examples per round across all sites.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def clipped_gradient_sum(
    model: torch.nn.Module,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    *,
    max_norm: float,
) -> torch.Tensor:
    """Set every parameter's ``.grad`` to ``Σ_i clip(∇ loss(model(x_i), y_i), max_norm)``.

    ``loss_fn`` gets a batch of one (``model(x_i[None])``, ``y_i[None]``). An empty batch
    (Poisson sampling may draw none) gives zero gradients. Returns the per-example L2
    norms before clipping. Raises ``ValueError`` for a non-positive ``max_norm`` or
    mismatched batch sizes.

    The sum is formed in float64 and stored in the parameters' dtype: use float64
    parameters (``model.double()``) for the exact sensitivity bound of ``mpc_agg/DP.md``
    §2.1; with float32 the stored sum is rounded to float32, which can move a neighbouring
    sum by up to √d·ulp(max|sum|)/2 beyond the clip (small, but not in the bound).
    """
    if not max_norm > 0:
        raise ValueError(f"max_norm must be positive, got {max_norm}")
    if inputs.shape[0] != targets.shape[0]:
        raise ValueError(f"{inputs.shape[0]} inputs but {targets.shape[0]} targets")
    named = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if inputs.shape[0] == 0:
        for p in named.values():
            p.grad = torch.zeros_like(p)
        return torch.zeros(0)
    params = {name: p.detach() for name, p in named.items()}
    buffers = {name: b.detach() for name, b in model.named_buffers()}

    def one(
        p: dict[str, torch.Tensor], b: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor
    ) -> torch.Tensor:
        out = torch.func.functional_call(model, (p, b), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    # randomness="different": each example draws its own dropout mask, as in a batch
    per_example = torch.func.vmap(
        torch.func.grad(one), in_dims=(None, None, 0, 0), randomness="different"
    )(params, buffers, inputs, targets)
    squared = sum(g.reshape(g.shape[0], -1).pow(2).sum(dim=1) for g in per_example.values())
    assert isinstance(squared, torch.Tensor)
    norms = squared.sqrt()
    factors = (max_norm / norms.clamp_min(1e-12)).clamp(max=1.0)
    for name, p in named.items():
        # Summed in float64: the node's sensitivity bound c + √d (DP.md §2.1) assumes the
        # sum is exact to float64; a float32 model stores it rounded (see the docstring).
        g = per_example[name].to(torch.float64)
        p.grad = torch.einsum("i,i...->...", factors.to(torch.float64), g).to(p.dtype)
    return norms.detach()
