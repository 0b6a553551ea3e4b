"""The typed settings every algorithm shares (they are the YAML schema under ``model.init_args``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

from lightning_trepo.algorithms.kl import kl_estimate
from lightning_trepo.algorithms.losses import aggregate
from lightning_trepo.rollout.decoding import Decoder
from lightning_trepo.rollout.engine import SamplingConfig
from lightning_trepo.rollout.policy import PolicyConfig, TinyModelConfig

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]


def default_optimizer(params: Iterable[torch.nn.Parameter]) -> torch.optim.Optimizer:
    """AdamW(lr=1e-5, weight_decay=0), the usual RLHF default."""
    return torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0)


@dataclass
class RolloutConfig:
    """How each batch of prompts becomes a rollout."""

    group_size: int = 4
    """G: samples per prompt."""
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    """Sampling settings of the behaviour policy."""
    max_generate_batch: int = 256
    """Most sequences per generate call (memory bound); more become extra calls."""
    decoder: Decoder = "auto"
    """auto: a static KV cache with the decode step compiled into a CUDA graph on CUDA (unsharded parameters),
    eager ``generate`` elsewhere; eager: always plain ``generate``; static: the static cache everywhere."""
    bucket_tokens: int = 64
    """Static decoder: pad prompt + budget to a multiple of this (rows to powers of two) so shapes repeat."""
    log_path: str | None = None
    """Append every rollout (prompt, completion, metadata, reward) to this JSONL file; off when None."""
    val_num_samples: int = 4
    """Validation: sampled responses per held-out prompt for pass@n (0 = greedy only)."""
    val_success_threshold: float = 1.0
    """Validation: a response with reward >= this counts as solved (accuracy, pass@n)."""
    gather_params: bool = True
    """ZeRO-3 / FSDP2: gather the full policy once per rollout for generation (fast; needs the whole model to fit
    on one GPU next to the KV cache). False: generate with per-layer all-gathers every token (synced_gpus)."""
    offload_reward: bool = False
    """Keep reward models (learned RMs) on the CPU between scoring calls."""


@dataclass
class UpdateConfig:
    """How a rollout becomes gradient steps."""

    epochs: int = 1
    """μ: policy epochs over each rollout."""
    num_minibatches: int = 1
    """Minibatches per epoch (each one optimizer micro-step)."""
    clip_low: float = 0.2
    """PPO ratio clip below 1 (ratio >= 1 - clip_low)."""
    clip_high: float = 0.2
    """PPO ratio clip above 1 (ratio <= 1 + clip_high); DAPO's clip-higher uses ~0.28."""
    aggregation: str = "token_mean"
    """token_mean | seq_mean_token_mean | seq_mean_token_sum | seq_mean_token_sum_norm."""
    kl_coef: float = 0.0
    """Weight of the KL to the reference policy; 0 means no reference model is loaded."""
    kl_estimator: str = "k3"
    """k1 | k2 | k3 (per-token estimator of KL(π || π_ref))."""

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.num_minibatches < 1:
            raise ValueError("update.epochs and update.num_minibatches must be >= 1")
        aggregate(torch.zeros(1, 1), torch.ones(1, 1), self.aggregation)  # raises naming the valid modes
        kl_estimate(torch.zeros(1), torch.zeros(1), self.kl_estimator)

    @property
    def steps_per_rollout(self) -> int:
        return self.epochs * self.num_minibatches


# Checkpoints store these configs as hyper-parameters; allow them under torch.load(weights_only=True).
torch.serialization.add_safe_globals([PolicyConfig, TinyModelConfig, SamplingConfig, RolloutConfig, UpdateConfig])


def reward_prompts(batch: dict[str, Any]) -> list[str]:
    """Prompt texts the reward tree reads: before the chat template when the data module provides them."""
    return batch.get("raw_prompts") or batch["prompts"]
