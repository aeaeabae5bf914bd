"""Torch integration (the ``torch`` extra): the only package that imports torch.

:mod:`mpc_agg.torch.optimizer` holds :class:`SecureAggOptimizer`; :mod:`mpc_agg.torch.digits`
is the demo's federated training task (scikit-learn's digits, split non-IID);
:mod:`mpc_agg.torch.privacy` computes per-example clipped gradient sums for DP-SGD.
"""

from mpc_agg.torch.optimizer import (
    AggregateOutcome,
    AggregationFailedError,
    Aggregator,
    SecureAggOptimizer,
)
from mpc_agg.torch.privacy import clipped_gradient_sum

__all__ = [
    "AggregateOutcome",
    "AggregationFailedError",
    "Aggregator",
    "SecureAggOptimizer",
    "clipped_gradient_sum",
]
