"""The typed settings every algorithm shares (they are the YAML schema under ``model.init_args``)."""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

import torch

from lightning_trepo.algorithms.kl import KLKind
from lightning_trepo.algorithms.losses import Aggregation, PolicyLoss
from lightning_trepo.errors import check_choice, require
from lightning_trepo.policy import PolicyConfig, TinyModelConfig
from lightning_trepo.rollout.collect import reward_prompts as reward_prompts  # re-exported: its old home
from lightning_trepo.rollout.decoding import Decoder
from lightning_trepo.rollout.episodes import EpisodeConfig
from lightning_trepo.rollout.plan import SamplingConfig
from reward_models import OverlongPenalty, Reward

KLEstimator = KLKind
BehaviourPass = Literal["auto", "always"]
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
    logprob_batch: int | None = None
    """Most sequences per forward of the rollout's no-grad log-prob passes (behaviour, reference, PPO's values);
    None = ``max_generate_batch``."""
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
    """A response with reward >= this counts as solved: validation accuracy and pass@n; TRePO's ``gate: unsolved``."""
    gather_params: bool = True
    """ZeRO-3 / FSDP2: gather the full policy once per rollout for generation (fast; needs the whole model to fit
    on one GPU next to the KV cache). False: generate with per-layer all-gathers every token (synced_gpus)."""
    offload_reward: bool = False
    """Keep reward models (learned RMs) on the CPU between scoring calls."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling (arXiv 2503.14476 §3.2, verl ``filter_groups``): drop the prompts whose G rewards are all
    equal (zero group-relative advantage) and sample more prompts until the batch has ``data.batch_size`` informative
    ones. Needs group_size >= 2; one extra generate round per refill."""
    max_extra_rounds: int = 4
    """Dynamic sampling: at most this many extra rounds of ``data.batch_size`` prompts per rollout; if the batch is
    still short, the dropped groups fill it (their group-relative advantages are 0) and ``dynamic/filled_frac`` says
    how many. 0 = filter and fill only, never sample more."""
    episode: EpisodeConfig = field(default_factory=EpisodeConfig)
    """Multi-turn episodes (only with ``model.init_args.environment``): max_turns, max_total_tokens, how observations
    are written, the environment's time limit."""

    def __post_init__(self) -> None:
        require(self.group_size >= 1, "rollout.group_size", self.group_size, "an integer >= 1")
        require(self.max_generate_batch >= 1, "rollout.max_generate_batch", self.max_generate_batch, "an integer >= 1")
        require(self.logprob_batch is None or self.logprob_batch >= 1, "rollout.logprob_batch", self.logprob_batch,
                "an integer >= 1, or null (= rollout.max_generate_batch)")
        require(self.val_num_samples >= 0, "rollout.val_num_samples", self.val_num_samples, "an integer >= 0")
        check_choice("rollout.decoder", self.decoder, Decoder)
        require(self.bucket_tokens >= 1, "rollout.bucket_tokens", self.bucket_tokens, "an integer >= 1")
        require(self.max_extra_rounds >= 0, "rollout.max_extra_rounds", self.max_extra_rounds, "an integer >= 0")
        require(not self.dynamic_sampling or self.group_size >= 2, "rollout.dynamic_sampling", self.dynamic_sampling,
                "false with group_size 1", "dynamic sampling drops groups whose G rewards are all equal; a group of "
                "one has no spread to test")

    @property
    def logprob_chunk(self) -> int:
        """Sequences per no-grad log-prob forward: ``logprob_batch``, or ``max_generate_batch`` when unset."""
        return self.logprob_batch or self.max_generate_batch


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
    loss_norm_length: int | None = None
    """The constant L of ``seq_mean_token_sum_norm`` (Dr. GRPO: Σ loss / (N·L); TRL ``max_completion_length``, verl
    ``loss_scale_factor``). None = the most tokens one sample trains: ``rollout.sampling.max_new_tokens``, or for
    multi-turn episodes min(``episode.max_turns`` x ``max_new_tokens``, ``episode.max_total_tokens``); so the scale
    does not change with each batch's padded length."""
    policy_loss: PolicyLoss = "ppo"
    """ppo (token ratio, clipped) | gspo (sequence ratio, GSPO arXiv 2507.18071; use clip ~3e-4/4e-4 and
    seq_mean_token_mean) | cispo (clipped, stop-gradient importance weight, arXiv 2506.13585) | sapo (soft sigmoid
    gate, arXiv 2511.20347). verl ``policy_loss.loss_mode``."""
    dual_clip: float | None = None
    """Dual-clip c > 1 (arXiv 1912.09729; verl ``clip_ratio_c``, default 3 there; TRL ``delta``): for A < 0 the loss
    is capped at -c·A. ppo and gspo only; None = off."""
    sapo_tau_pos: float = 1.0
    """SAPO gate temperature for A > 0."""
    sapo_tau_neg: float = 1.05
    """SAPO gate temperature for A < 0."""
    mask_truncated: bool = False
    """DAPO overlong filtering (TRL ``mask_truncated_completions``): completions without EOS within max_new_tokens
    leave the policy loss (their rows still count in per-row averages)."""
    kl_coef: float = 0.0
    """Weight of the KL to the reference policy; 0 means no reference model is loaded. The initial value when
    ``kl_target`` is set."""
    kl_estimator: KLEstimator = "k3"
    """k1 | k2 | k3 | low_var_kl (verl's clamped k3) | abs, or k1+ | k3+ | low_var_kl+ | abs+ (that value, k2's
    gradient: straight through, as verl) — the per-token estimator of KL(π || π_ref)."""
    kl_target: float | None = None
    """Adaptive KL controller (arXiv 1909.08593, verl ``kl_ctrl.type=adaptive``): after each rollout
    β ← β·(1 + clip(KL/kl_target − 1, ±0.2)·N/kl_horizon), KL the rollout's mean per-sequence token-mean KL of the
    behaviour policy to the reference. None = a fixed ``kl_coef``."""
    kl_horizon: int = 10000
    """Adaptive KL controller: samples over which β may change by at most 20%."""
    behaviour_logprobs: BehaviourPass = "auto"
    """auto: skip the π_old log-prob pass when the update is on-policy (1 epoch, 1 minibatch: the loss pass runs on
    the weights that sampled the rollout, so π_old is its own detached log-probs and the ratio is exactly 1, as in
    TRL); always: compute it every rollout."""
    shared_prompt_pass: bool = True
    """The log-prob passes (loss, behaviour, reference) run each distinct prompt once and share its KV cache (and,
    in the loss pass, its backward) across the rows that sample from it, a group's G samples; the same log-probs and
    gradients up to float rounding. Off without a decoder-only model that keeps a cache, under gradient
    checkpointing, and for the loss pass with sharded parameters (FSDP2, ZeRO-3); false = one full forward per row."""
    length_buckets: int = 3
    """The log-prob passes run the rows in up to this many forwards of whole groups, each padded only to its own
    longest completion, when that saves at least 10% of the padded tokens (one rambling response otherwise makes
    every row pay for its length); the same log-probs up to float rounding. Not for the loss pass with sharded
    parameters (FSDP2, ZeRO-3: one forward per backward). 1 = one forward padded to the longest row."""

    def __post_init__(self) -> None:
        require(self.epochs >= 1, "update.epochs", self.epochs, "an integer >= 1")
        require(self.num_minibatches >= 1, "update.num_minibatches", self.num_minibatches, "an integer >= 1")
        require(self.length_buckets >= 1, "update.length_buckets", self.length_buckets, "an integer >= 1")
        require(0.0 <= self.clip_low < 1.0, "update.clip_low", self.clip_low, "0 <= clip_low < 1",
                "the ratio clip 1 - clip_low must stay positive")
        require(self.clip_high >= 0.0, "update.clip_high", self.clip_high, "a number >= 0")
        require(self.kl_coef >= 0.0, "update.kl_coef", self.kl_coef, "a number >= 0")
        check_choice("update.aggregation", self.aggregation, Aggregation)
        check_choice("update.kl_estimator", self.kl_estimator, KLEstimator)
        check_choice("update.policy_loss", self.policy_loss, PolicyLoss)
        require(self.loss_norm_length is None or self.loss_norm_length >= 1, "update.loss_norm_length",
                self.loss_norm_length, "an integer >= 1, or null (rollout.sampling.max_new_tokens)")
        require(self.dual_clip is None or self.dual_clip > 1.0, "update.dual_clip", self.dual_clip,
                "a number > 1, or null (off)")
        require(self.dual_clip is None or self.policy_loss in ("ppo", "gspo"), "update.dual_clip", self.dual_clip,
                "null with policy_loss cispo or sapo", "dual clip caps the clipped surrogate of ppo / gspo")
        require(self.sapo_tau_pos > 0 and self.sapo_tau_neg > 0, "update.sapo_tau_pos",
                (self.sapo_tau_pos, self.sapo_tau_neg), "sapo_tau_pos > 0 and sapo_tau_neg > 0")
        require(self.kl_target is None or self.kl_target > 0, "update.kl_target", self.kl_target,
                "a number > 0, or null (fixed kl_coef)")
        require(self.kl_target is None or self.kl_coef > 0, "update.kl_coef", self.kl_coef, "a number > 0 with "
                "kl_target set", "the adaptive controller multiplies kl_coef, so it must start above 0")
        require(self.kl_horizon >= 1, "update.kl_horizon", self.kl_horizon, "an integer >= 1")
        check_choice("update.behaviour_logprobs", self.behaviour_logprobs, BehaviourPass)

    def check_fits(self, group_size: int, batch_size: int) -> None:
        """Cross-check with the data: each minibatch needs at least one of the B * G samples of a rollout."""
        samples = group_size * batch_size
        require(self.num_minibatches <= samples, "update.num_minibatches", self.num_minibatches,
                f"at most {samples} (data.batch_size {batch_size} x rollout.group_size {group_size} samples per "
                "rollout)")

    @property
    def steps_per_rollout(self) -> int:
        return self.epochs * self.num_minibatches

    @property
    def on_policy(self) -> bool:
        """One optimizer micro-step per rollout: the loss pass sees exactly the weights that sampled it."""
        return self.steps_per_rollout == 1


# Checkpoints store these configs as hyper-parameters; allow them under torch.load(weights_only=True).
torch.serialization.add_safe_globals([PolicyConfig, TinyModelConfig, SamplingConfig, RolloutConfig, UpdateConfig,
                                    EpisodeConfig])


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
