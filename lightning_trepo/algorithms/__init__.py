"""Pure tensor maths of every algorithm: advantages, anchors (TRePO), losses and KL estimators.

Imports only torch and ``lightning_trepo.types`` / ``lightning_trepo.ops``; no Lightning, no state.
"""
from lightning_trepo.algorithms.advantages import (
    GRPO_SCALES,
    gae,
    grpo_advantages,
    leave_one_out_mean,
    reinforce_advantages,
    remax_advantages,
    rloo_advantages,
    segment_advantages,
    token_level_rewards,
)
from lightning_trepo.algorithms.anchors import (
    OFFSET_MODES,
    anchor_positions_from_offsets,
    boundary_anchor_positions,
    build_anchor_values,
    continuation_means,
    fixed_anchor_offsets,
)
from lightning_trepo.algorithms.kl import KL_KINDS, kl_estimate, kl_penalized_rewards
from lightning_trepo.algorithms.losses import (
    AGGREGATIONS,
    aggregate,
    clipped_surrogate_loss,
    explained_variance,
    policy_gradient_loss,
    value_loss,
)

__all__ = [
    "AGGREGATIONS",
    "GRPO_SCALES",
    "KL_KINDS",
    "OFFSET_MODES",
    "aggregate",
    "anchor_positions_from_offsets",
    "boundary_anchor_positions",
    "build_anchor_values",
    "clipped_surrogate_loss",
    "continuation_means",
    "explained_variance",
    "fixed_anchor_offsets",
    "gae",
    "grpo_advantages",
    "kl_estimate",
    "kl_penalized_rewards",
    "leave_one_out_mean",
    "policy_gradient_loss",
    "reinforce_advantages",
    "remax_advantages",
    "rloo_advantages",
    "segment_advantages",
    "token_level_rewards",
    "value_loss",
]
