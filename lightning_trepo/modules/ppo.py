"""PPO for RLHF (Schulman et al. 2017; Ouyang et al. 2022): a learned critic approximates Theorem 2's
per-token advantages A_t = U(W_{0,t}) − U(W_{0,t−1}) of arXiv 2506.02553 through GAE.

Per rollout: the behaviour policy's log-probs AND values come from one forward pass; token rewards are
r_t = −β·kl_t plus RM(W) on the last real token; GAE(γ, λ) gives advantages and returns. Per
minibatch: one forward feeds both the LM head (clipped surrogate) and the value head (clipped value
loss); the policy and the critic are trained by the same optimizer (parameter groups).
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import partial
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_trepo.algorithms.advantages import gae, token_level_rewards
from lightning_trepo.algorithms.kl import kl_estimate
from lightning_trepo.algorithms.losses import explained_variance, value_loss
from lightning_trepo.envs import Environment
from lightning_trepo.errors import check_choice, require
from lightning_trepo.modules.base import (
    OptimizerFactory,
    RLModule,
    RolloutConfig,
    UpdateConfig,
    default_optimizer,
)
from lightning_trepo.ops import masked_mean, masked_whiten, pack_by_mask, unpack_by_mask
from lightning_trepo.policy import PolicyConfig
from lightning_trepo.rollout.logprobs import (
    completion_logits,
    fused_head_supported,
    in_buckets,
    row_buckets,
    sequence_logprobs,
)
from lightning_trepo.training.sharding import build_policy
from lightning_trepo.types import Advantages, LossOutput, Rollout
from reward_models import Reward

ValueModel = Literal["head", "separate"]


@dataclass
class TrunkOutput:
    """The separate critic trunk's output in a causal LM's calling convention, so that :func:`completion_logits`
    positions and slices it exactly as the policy's logits."""

    logits: Tensor  # (N, P + L, H) the trunk's last hidden state, where a causal LM would put its logits



def model_token_gae(rewards: Tensor, values: Tensor, mask: Tensor, kl: Tensor | None, kl_coef: float, gamma: float,
                    lam: float) -> tuple[Tensor, Tensor, Tensor]:
    """r_t = −β·kl_t + RM(W)·[t = last model token], then GAE over the model's tokens only: (token rewards,
    advantages, returns), each (N, L). The tokens of ``mask`` are packed together first, so across an episode's
    environment tokens (part of the transition, not actions) V of a turn's last token bootstraps from V at the next
    turn's first token; with a right-padded mask (single turn) packing changes nothing."""
    packed_values, packed = pack_by_mask(values, mask)
    packed_kl = None if kl is None else pack_by_mask(kl, mask)[0]
    token_rewards = token_level_rewards(rewards, packed, packed_kl, kl_coef)
    advantages, returns = gae(token_rewards, packed_values, packed, gamma=gamma, lam=lam)
    return tuple(unpack_by_mask(x, mask) for x in (token_rewards, advantages, returns))  # type: ignore[return-value]

class PPO(RLModule):
    """Proximal Policy Optimization with a critic: GAE advantages, clipped surrogate, clipped value loss.

    ``value_model="head"``: a scalar linear head on the policy's last hidden state (shared trunk; the
    value loss also trains the trunk). ``"separate"``: a copy of the policy's trunk (initialised from
    the policy's weights, without the LM head) with its own scalar head. Either way the critic is a
    registered submodule: it is checkpointed and in the optimizer (its own group, lr ``value_lr``).
    ``update.kl_coef`` weighs the per-token KL penalty IN THE REWARD (not the loss); a reference model
    is loaded only when it is non-zero. ``update.epochs`` / ``num_minibatches`` reuse each rollout.
    """

    def __init__(
        self,
        reward: Reward,
        policy: PolicyConfig = PolicyConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        update: UpdateConfig = UpdateConfig(),
        optimizer: OptimizerFactory = default_optimizer,
        environment: Environment | None = None,
        value_model: ValueModel = "head",
        value_lr: float | None = None,
        vf_coef: float = 0.1,
        value_clip: float | None = 0.2,
        gamma: float = 1.0,
        lam: float = 0.95,
        whiten_advantages: bool = True,
    ) -> None:
        """
        Args:
            value_model: head (value head on the policy trunk) | separate (a copy of the trunk + head).
            value_lr: learning rate of the critic's parameter group; None = the optimizer's lr.
            vf_coef: weight of the value loss in the total loss.
            value_clip: ε of the clipped value loss (|V − V_old| <= ε); None = unclipped ½(V − R)².
            gamma: discount of GAE; 1.0 keeps the gradient of an undiscounted response reward unbiased.
            lam: λ of GAE (1.0 = Monte Carlo returns, 0.0 = one-step TD).
            whiten_advantages: normalise the rollout's advantages to mean 0, std 1 over real tokens.
        """
        check_choice("value_model", value_model, ValueModel)
        require(0.0 <= gamma <= 1.0, "gamma", gamma, "a number in [0, 1]")
        require(0.0 <= lam <= 1.0, "lam", lam, "a number in [0, 1]")
        require(vf_coef >= 0, "vf_coef", vf_coef, "a number >= 0")
        require(value_clip is None or value_clip > 0, "value_clip", value_clip, "a number > 0, or null (unclipped)")
        require(value_lr is None or value_lr >= 0, "value_lr", value_lr, "a number >= 0, or null (the optimizer's lr)")
        super().__init__(reward=reward, policy=policy, rollout=rollout, update=update, optimizer=optimizer,
                         environment=environment)
        self.value_model_kind, self.value_lr, self.vf_coef, self.value_clip = value_model, value_lr, vf_coef, value_clip
        self.gamma, self.lam, self.whiten_advantages = gamma, lam, whiten_advantages
        self.value_head: nn.Linear | None = None  # built with the policy (its hidden size is known then)
        self.critic: nn.Module | None = None  # the separate value trunk

    # ------------------------------------------------------------------ model
    def build_models(self) -> None:
        """Policy (and reference) from the base, then the critic: a zero-initialised scalar head, so V = 0
        at the start and the first advantages are the plain KL-penalised returns. Built here, before
        ``apply_fsdp2``, so FSDP2 shards the critic with the policy."""
        super().build_models()
        device = next(self.policy.parameters()).device
        if self.value_model_kind == "separate":
            # a fresh load rather than a deepcopy: under ZeRO-3 the policy's weights are partitioned
            self.critic = build_policy(self._strategy, replace(self.policy_cfg, lora=None))[0].base_model
        head = nn.Linear(self.policy.config.hidden_size, 1, device=device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        self.value_head = head

    def needs_reference(self) -> bool:
        """The per-token KL penalty in the reward needs π_ref exactly when ``kl_coef`` is non-zero."""
        return self.update_cfg.kl_coef != 0.0

    def kl_in_loss(self) -> bool:
        return False  # PPO puts the KL in the token rewards

    def critic_parameters(self) -> list[nn.Parameter]:
        modules = [m for m in (self.value_head, self.critic) if m is not None]
        return [p for m in modules for p in m.parameters()]

    def param_groups(self) -> list[Any]:
        """Two groups: everything else (policy, and a shared trunk in head mode) and the critic (``value_lr``)."""
        critic = self.critic_parameters()
        ids = {id(p) for p in critic}
        policy = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        group: dict[str, Any] = {"params": [p for p in critic if p.requires_grad]}
        if self.value_lr is not None:
            group["lr"] = self.value_lr
        return [{"params": policy}, group]

    # ------------------------------------------------------------------ forward
    def logprobs_and_values(self, batch: Rollout, with_entropy: bool = False) -> tuple[Tensor, Tensor | None, Tensor]:
        """Token log-probs (N, L), entropy and values V_t (N, L) of the state before token t.

        Head mode runs the policy ONCE with ``output_hidden_states``: its logits feed the log-probs and
        its last hidden state (the one the LM head reads) feeds the value head. With ``update.length_buckets`` > 1
        the rows run in buckets of whole groups, each padded only to its own longest completion (as every other
        algorithm's log-prob passes do); the values are the same up to rounding.
        """
        args = (batch.prompt_ids, batch.prompt_mask, batch.completion_ids, batch.completion_mask)
        buckets = row_buckets(batch.prompt_ids, batch.prompt_mask, batch.completion_mask, self.length_buckets())
        if len(buckets) == 1:
            return self._logprobs_and_values(*args, with_entropy=with_entropy)
        logprobs, entropy, values = in_buckets(partial(self._logprobs_and_values, with_entropy=with_entropy),
                                               buckets, *args)
        return logprobs, entropy, values

    def _logprobs_and_values(self, prompt_ids: Tensor, prompt_mask: Tensor, completion_ids: Tensor,
                             completion_mask: Tensor, with_entropy: bool = False
                             ) -> tuple[Tensor, Tensor | None, Tensor]:
        """:meth:`logprobs_and_values` of one set of rows, in one forward of the policy (and one of the critic)."""
        captured: dict[str, Tensor] = {}

        def policy_forward(**inputs: Any) -> Any:
            out = self.policy(**inputs, output_hidden_states=True)
            captured["hidden"] = out.hidden_states[-1]
            return out

        head_mode = self.value_model_kind == "head"
        args = (prompt_ids, prompt_mask, completion_ids, completion_mask)
        logprobs, entropy = sequence_logprobs(policy_forward if head_mode else self.policy, *args,
                                              self.rollout_cfg.sampling.temperature, with_entropy,
                                              head=fused_head_supported(self.policy),
                                              prompt_cache_kw=self.prompt_cache_kw(self.policy))
        length = completion_ids.shape[1]
        # same positions as the logits: the hidden state that predicts completion token t
        hidden = captured["hidden"][:, -length - 1:-1] if head_mode else completion_logits(self._critic_forward, *args)
        values = self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return logprobs, entropy, values * completion_mask

    def _critic_forward(self, **inputs: Any) -> TrunkOutput:
        """The separate trunk called like a causal LM (:class:`TrunkOutput`)."""
        inputs.pop("logits_to_keep", None)
        return TrunkOutput(logits=self.critic(**inputs).last_hidden_state)

    @torch.no_grad()
    def behaviour_logprobs(self, rollout: Rollout) -> tuple[Tensor, Tensor]:
        """π_old log-probs and the behaviour values V_old (N, L), from one pass, in chunks."""
        index = torch.arange(rollout.num_samples, device=rollout.completion_ids.device)
        parts = [self.logprobs_and_values(rollout.select(i)) for i in index.split(self.rollout_cfg.logprob_chunk)]
        return torch.cat([logprobs for logprobs, _, _ in parts]), torch.cat([values for _, _, values in parts])

    # ------------------------------------------------------------------ algorithm
    def compute_advantages(self, rollout: Rollout, rewards: Tensor) -> Advantages:
        """r_t = −β·kl_t + RM(W)·[t = T]; GAE(γ, λ) → advantages (N, L), returned with the token rewards and the
        value targets (the rollout's ``token_rewards`` and ``returns`` once the base stores them)."""
        update, mask = self.update_cfg, rollout.trained_mask
        kl = None
        if self.kl_coef != 0.0 and rollout.ref_logprobs is not None:
            kl = kl_estimate(rollout.old_logprobs, rollout.ref_logprobs, update.kl_estimator)
        token_rewards, advantages, returns = model_token_gae(rewards.float(), rollout.values, mask, kl, self.kl_coef,
                                                             self.gamma, self.lam)
        metrics = {"value/explained_variance": explained_variance(rollout.values, returns, mask),
                   "value/returns_mean": masked_mean(returns, mask)}
        if kl is not None:
            metrics["kl/token_mean"] = masked_mean(kl, mask)
        advantages = masked_whiten(advantages, mask) if self.whiten_advantages else advantages
        return Advantages(advantages, {k: v.detach().float().cpu() for k, v in metrics.items()}, returns=returns,
                          token_rewards=token_rewards)

    def compute_loss(self, batch: Rollout) -> LossOutput:
        """Clipped surrogate + ``vf_coef`` · clipped value loss, both from one forward of the policy."""
        logprobs, entropy, values = self.logprobs_and_values(batch, with_entropy=self.entropy_logged())
        out = self.policy_loss(batch, logprobs, entropy)
        v = value_loss(values, batch.values, batch.returns, batch.trained_mask, clip=self.value_clip,
                       aggregation=self.update_cfg.aggregation, norm_length=self.loss_norm_length)
        metrics = {**out.metrics, "loss/surrogate": out.loss, "loss/value": v.loss,
                   "value/clip_frac": v.metrics["value_clip_frac"], "value/mean": v.metrics["value_mean"],
                   "value/explained_variance_update": v.metrics["explained_variance"]}
        return LossOutput(loss=out.loss + self.vf_coef * v.loss, metrics=metrics)
