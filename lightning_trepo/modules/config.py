"""The typed settings every algorithm shares (they are the YAML schema under ``model.init_args``)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from lightning_trepo.errors import check_choice, require
from lightning_trepo.policy import PolicyConfig, TinyModelConfig
from lightning_trepo.rollout.decoding import Decoder
from lightning_trepo.rollout.engine import SamplingConfig
from reward_models import OverlongPenalty, Reward

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum", "seq_mean_token_sum_norm"]
KLEstimator = Literal["k1", "k2", "k3"]
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

    def __post_init__(self) -> None:
        require(self.group_size >= 1, "rollout.group_size", self.group_size, "an integer >= 1")
        require(self.max_generate_batch >= 1, "rollout.max_generate_batch", self.max_generate_batch, "an integer >= 1")
        require(self.val_num_samples >= 0, "rollout.val_num_samples", self.val_num_samples, "an integer >= 0")
        check_choice("rollout.decoder", self.decoder, Decoder)
        require(self.bucket_tokens >= 1, "rollout.bucket_tokens", self.bucket_tokens, "an integer >= 1")


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
    aggregation: Aggregation = "token_mean"
    """How per-token losses become one number: token_mean | seq_mean_token_mean | seq_mean_token_sum |
    seq_mean_token_sum_norm."""
    kl_coef: float = 0.0
    """Weight of the KL to the reference policy; 0 means no reference model is loaded."""
    kl_estimator: KLEstimator = "k3"
    """k1 | k2 | k3 (per-token estimator of KL(π || π_ref))."""

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "update.epochs", self.epochs, "an integer >= 1")
        require(self.num_minibatches >= 1, "update.num_minibatches", self.num_minibatches, "an integer >= 1")
        require(0.0 <= self.clip_low < 1.0, "update.clip_low", self.clip_low, "0 <= clip_low < 1",
                "the ratio clip 1 - clip_low must stay positive")
        require(self.clip_high >= 0.0, "update.clip_high", self.clip_high, "a number >= 0")
        require(self.kl_coef >= 0.0, "update.kl_coef", self.kl_coef, "a number >= 0")
        check_choice("update.aggregation", self.aggregation, Aggregation)
        check_choice("update.kl_estimator", self.kl_estimator, KLEstimator)

    def check_fits(self, group_size: int, batch_size: int) -> None:
        """Cross-check with the data: each minibatch needs at least one of the B * G samples of a rollout."""
        samples = group_size * batch_size
        require(self.num_minibatches <= samples, "update.num_minibatches", self.num_minibatches,
                f"at most {samples} (data.batch_size {batch_size} x rollout.group_size {group_size} samples per "
                "rollout)")

    @property
    def steps_per_rollout(self) -> int:
        return self.epochs * self.num_minibatches


# Checkpoints store these configs as hyper-parameters; allow them under torch.load(weights_only=True).
torch.serialization.add_safe_globals([PolicyConfig, TinyModelConfig, SamplingConfig, RolloutConfig, UpdateConfig])


def reward_prompts(batch: dict[str, Any]) -> list[str]:
    """Prompt texts the reward tree reads: before the chat template when the data module provides them."""
    return batch.get("raw_prompts") or batch["prompts"]


def check_reward_fits(reward: Reward, rollout: RolloutConfig, path: tuple[str, ...] = ()) -> None:
    """Settings of the reward tree that must agree with the rollout's: DAPO's overlong penalty measures against the
    generation budget, so each ``OverlongPenalty.max_length`` must equal ``rollout.sampling.max_new_tokens`` (a
    longer one never reaches its full penalty, a shorter one punishes every response the budget allows)."""
    if isinstance(reward, OverlongPenalty):
        budget, where = rollout.sampling.max_new_tokens, "/".join(("reward", *path))
        require(reward.max_length == budget, "rollout.sampling.max_new_tokens", budget,
                f"{reward.max_length}, the max_length of the OverlongPenalty at {where}",
                "DAPO's overlong penalty measures against the generation budget: set both alike")
    for name, child in reward.children().items():
        check_reward_fits(child, rollout, (*path, name))
