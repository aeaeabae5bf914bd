"""Torch integration (the ``torch`` extra): the only package that imports torch.

:mod:`mpc_agg.torch.optimizer` holds :class:`SecureAggOptimizer`; :mod:`mpc_agg.torch.digits`
is the demo's federated training task (scikit-learn's digits, split non-IID).
"""

from mpc_agg.torch.optimizer import (
    AggregateOutcome,
    AggregationFailedError,
    Aggregator,
    SecureAggOptimizer,
)

__all__ = ["AggregateOutcome", "AggregationFailedError", "Aggregator", "SecureAggOptimizer"]
