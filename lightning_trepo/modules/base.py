"""RLModule: the Lightning side every algorithm shares.

One training step = (on the first step of a rollout) plan -> collect (generate, score, extend:
:class:`~lightning_trepo.rollout.collect.Collector`) -> log-probs -> advantages, then a loss on one
minibatch of the cached rollout. Multiple policy epochs and minibatches come from the data module
repeating each prompt batch ``steps_per_rollout`` times, so Lightning's automatic optimisation,
``accumulate_grad_batches`` and gradient clipping all keep working.

Subclasses (one per algorithm) override :meth:`rollout_plan`, :meth:`compute_advantages` (which returns
:class:`~lightning_trepo.types.Advantages` and writes nothing) and, if they need to, :meth:`extend_rollout` and
:meth:`compute_loss`.
"""
from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from lightning_trepo.algorithms.kl import kl_estimate
from lightning_trepo.algorithms.losses import aggregate, surrogate_loss, truncated_filtered_mask
from lightning_trepo.envs import Environment
from lightning_trepo.modules.config import (
    OptimizerFactory,
    RolloutConfig,
    UpdateConfig,
    check_reward_fits,
    default_optimizer,
)
from lightning_trepo.modules.controls import RolloutControls
from lightning_trepo.ops import masked_mean
from lightning_trepo.policy import AdapterDisabled, PolicyConfig, load_tokenizer
from lightning_trepo.policy.lora_checkpoint import drop_frozen_base, hparams_ignore, restore_frozen_base
from lightning_trepo.rollout.collect import Collector, score_rollouts
from lightning_trepo.rollout.decoding import cache_argument
from lightning_trepo.rollout.engine import RolloutEngine
from lightning_trepo.rollout.logprobs import prompt_cache_supported, sequence_logprobs
from lightning_trepo.rollout.metrics import RolloutWriter, step_metrics, timed
from lightning_trepo.rollout.plan import RolloutPlan
from lightning_trepo.training.cpu_heap import keep_freed_cpu_memory
from lightning_trepo.training.run_state import decorrelate_rank_rng, load_run_state, save_run_state
from lightning_trepo.training.sharding import (
    build_policy,
    build_reference,
    fully_shard_model,
    gathered_for_generation,
    has_sharded_params,
    on_device,
    params_sharded,
    place_frozen,
    shard_trainable_children,
    unsharded_trainable,
    visiting,
)
from lightning_trepo.types import Advantages, LossOutput, Rollout
from reward_models import Reward, RewardOutput, Samples, TrainerState


class RLModule(LightningModule):
    """Shared base of REINFORCE, RLOO, ReMax, GRPO, PPO and TRePO."""

    def __init__(
        self,
        reward: Reward,
        policy: PolicyConfig = PolicyConfig(),
        rollout: RolloutConfig = RolloutConfig(),
        update: UpdateConfig = UpdateConfig(),
        optimizer: OptimizerFactory = default_optimizer,
        environment: Environment | None = None,
    ) -> None:
        """
        Args:
            reward: the response-level reward tree (``class_path``/``init_args``).
            policy: which model to train and how to load it.
            rollout: samples per prompt and sampling settings.
            update: epochs, minibatches, clipping, loss aggregation and KL.
            optimizer: optimizer factory, e.g. ``{class_path: torch.optim.AdamW, init_args: {lr: 1e-5}}``.
            environment: a text environment (``class_path``/``init_args``, e.g. ``lightning_trepo.envs.ToolEnv``):
                each sample becomes a multi-turn episode (limits in ``rollout.episode``); None = single responses.
        """
        super().__init__()
        if not isinstance(reward, Reward):
            raise TypeError(f"model.init_args.reward must be a reward_models.Reward, got {type(reward).__name__}")
        check_reward_fits(reward, rollout)
        self.save_hyperparameters(ignore=hparams_ignore())  # the CLI config keeps the reward tree: reloads alone
        self.reward = reward
        self.policy_cfg, self.rollout_cfg, self.update_cfg = policy, rollout, update
        self.optimizer_factory = optimizer
        self.environment = environment
        self.tokenizer = load_tokenizer(policy)
        self.policy: torch.nn.Module | None = None
        self._frozen: dict[str, torch.nn.Module] = {}  # reference model: deliberately not a submodule
        self._rollout: Rollout | None = None
        self._rollout_id: int | None = None
        self._engine: RolloutEngine | None = None
        self._writer = RolloutWriter(rollout.log_path) if rollout.log_path else None
        self._t_loss: float | None = None
        self._perm: tuple[Rollout, Tensor] | None = None  # the minibatch permutation of the cached rollout
        self._refill: Iterator[dict[str, Any]] | None = None  # dynamic sampling's stream of extra prompt batches
        if update.kl_target is not None:  # the adaptive KL controller's β is module state: saved in checkpoints
            self.register_buffer("kl_coef_value", torch.tensor(float(update.kl_coef), dtype=torch.float64))
        self.trained_tokens = 0
        """Tokens generated for training so far, summed over ranks (responses, continuations, baselines; not
        validation's): what ``lr_scheduler.total_tokens`` reads. Saved in checkpoints."""
        self.rank_state_restored = False
        """Set by :meth:`on_load_checkpoint`: every rank got its own random streams back from the checkpoint, so
        :meth:`on_fit_start` must not decorrelate the ranks again (that would change a resumed run's rollouts)."""

    # ------------------------------------------------------------------ model lifecycle
    def configure_model(self) -> None:
        """Build the policy (and a frozen reference only when ``kl_coef != 0``) once, inside the strategy's init
        context (ZeRO-3 partitions at construction); under ModelParallelStrategy, shard them with FSDP2."""
        if self.policy is not None:
            return
        self.build_models()
        if self.device_mesh is not None:
            self.apply_fsdp2(self.device_mesh)

    def build_models(self) -> None:
        """Build the policy and the frozen reference; subclasses with more models (a critic) extend this, so that
        :meth:`apply_fsdp2` sees them before the optimizer is made."""
        self.policy, self.tokenizer = build_policy(self._strategy, self.policy_cfg)
        if self.update_cfg.kl_coef != 0.0 or self.needs_reference():
            self._frozen["ref"] = build_reference(self._strategy, self.policy, self.policy_cfg)

    def apply_fsdp2(self, mesh: Any) -> None:
        """ModelParallelStrategy: FSDP2-shard the policy, the frozen reference (each transformer block, then the
        root) and any other child with trainable parameters over ``mesh``. Override to add tensor parallelism."""
        fully_shard_model(self.policy, mesh)
        ref = self._frozen.get("ref")
        if ref is not None and not isinstance(ref, AdapterDisabled):
            fully_shard_model(ref, mesh, offload=self.policy_cfg.offload_reference, frozen=True)
        shard_trainable_children(self, mesh, skip=(self.policy,))

    def needs_reference(self) -> bool:
        """Subclasses that need a reference for reasons other than the KL loss override this."""
        return False

    @property
    def ref_model(self) -> torch.nn.Module | None:
        return self._frozen.get("ref")

    def setup(self, stage: str) -> None:
        # the models are built by Lightning's configure_model call right after this hook, inside the strategy's
        # init contexts (ZeRO-3 zero.Init, FSDP2 mesh); the tokenizer is already loaded
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is not None and hasattr(dm, "connect"):
            self.update_cfg.check_fits(self.rollout_cfg.group_size, dm.batch_size)  # before any model loads
            dm.connect(self.tokenizer, steps_per_rollout=self.update_cfg.steps_per_rollout,
                       use_chat_template=self.policy_cfg.use_chat_template,
                       rank=self.global_rank, world_size=self.trainer.world_size)

    def on_fit_start(self) -> None:
        if self.device.type == "cpu":
            keep_freed_cpu_memory()  # glibc: no fresh mmap + page faults for every large buffer of every step
        strategy = self.trainer.strategy
        plain = unsharded_trainable(self) if self.device_mesh is not None and self.trainer.world_size > 1 else []
        if plain:  # FSDP2 syncs only DTensor gradients: these would silently diverge across ranks
            raise RuntimeError(f"ModelParallelStrategy: trainable parameters {plain[:5]} were not FSDP2-sharded; "
                               "build every trainable module in build_models() so apply_fsdp2() shards it")
        for name, model in list(self._frozen.items()):
            offload = self.policy_cfg.offload_reference and name == "ref"
            self._frozen[name] = place_frozen(strategy, model, self.device, offload=offload)
        self.reward.to("cpu" if self.rollout_cfg.offload_reward else self.device)
        if not self.rank_state_restored:  # a resume got each rank's own stream back
            decorrelate_rank_rng(self.global_rank, self.trainer.world_size)

    @property
    def engine(self) -> RolloutEngine:
        if self._engine is None:
            cfg = self.rollout_cfg
            self._engine = RolloutEngine(self.tokenizer, cfg.max_generate_batch, synced_gpus=self._params_sharded(),
                                         decoder=cfg.decoder, bucket_tokens=cfg.bucket_tokens)
        return self._engine

    @property
    def _strategy(self) -> Any:
        """The trainer's strategy, or None outside a Trainer (modules also work standalone)."""
        return self._trainer.strategy if self._trainer is not None else None

    def _params_sharded(self) -> bool:
        """ZeRO-3 / FSDP shard parameters: every rank must keep stepping generate (synced_gpus)."""
        return params_sharded(self._strategy, self.policy)

    @contextmanager
    def generation_context(self):
        """Around a whole rollout (generation, continuations, log-probs): the sharded policy is gathered once
        (``rollout.gather_params``), else generation runs with ``synced_gpus`` so ranks that stop early keep
        joining the per-layer all-gathers."""
        with gathered_for_generation(self._strategy, self.policy, self.rollout_cfg.gather_params) as gathered:
            sharded = self._params_sharded()
            self.engine.synced_gpus = sharded and not gathered
            self.engine.static_allowed = not sharded  # gathered storage moves every rollout: no fixed graph
            yield gathered

    def configure_optimizers(self) -> Any:
        return self.optimizer_factory(self.param_groups())

    def param_groups(self) -> list[Any]:
        """What the optimizer factory receives: trainable parameters, or parameter-group dicts (PPO's value lr)."""
        return [p for p in self.parameters() if p.requires_grad]

    # ------------------------------------------------------------------ algorithm hooks
    def rollout_plan(self) -> RolloutPlan:
        """What this algorithm needs from the rollout path (default: G samples per prompt)."""
        cfg = self.rollout_cfg
        return RolloutPlan(group_size=cfg.group_size, sampling=cfg.sampling,
                           need_ref_logprobs=self.ref_model is not None, dynamic_sampling=cfg.dynamic_sampling,
                           max_extra_rounds=cfg.max_extra_rounds)

    def compute_advantages(self, rollout: Rollout, rewards: Tensor) -> Advantages:
        """(N,) or (N, L) advantages from the (N,) rewards, the scalar metrics of that computation and any per-token
        targets (:class:`~lightning_trepo.types.Advantages`); reads the rollout, writes nothing. Every algorithm
        overrides this."""
        raise NotImplementedError

    def compute_loss(self, batch: Rollout) -> LossOutput:
        """PPO-clipped surrogate against the behaviour policy (+ optional KL to the reference)."""
        logprobs, entropy = self.policy_logprobs(batch, with_entropy=self.entropy_logged())
        return self.policy_loss(batch, logprobs, entropy)

    def entropy_logged(self) -> bool:
        """Entropy is a metric: compute it only on steps the trainer's logger records (``log_every_n_steps``)."""
        if self._trainer is None:
            return True
        return self.trainer.global_step % max(self.trainer.log_every_n_steps, 1) == 0

    def kl_in_loss(self) -> bool:
        """Whether ``kl_coef`` weighs a KL term in the loss (default) or the algorithm folds it into the reward."""
        return True

    @property
    def kl_coef(self) -> float:
        """β now: ``update.kl_coef``, or the adaptive controller's current value when ``update.kl_target`` is set."""
        value = getattr(self, "kl_coef_value", None)
        return self.update_cfg.kl_coef if value is None else float(value)

    @property
    def loss_norm_length(self) -> int:
        """The constant L of ``seq_mean_token_sum_norm``: ``update.loss_norm_length``, or the most tokens one sample
        trains: the sampling budget, for an episode min(max_turns x max_new_tokens, max_total_tokens)."""
        budget = self.rollout_cfg.sampling.max_new_tokens
        if self.environment is not None:
            episode = self.rollout_cfg.episode
            budget = min(episode.max_turns * budget, episode.max_total_tokens)
        return self.update_cfg.loss_norm_length or budget

    def policy_loss(self, batch: Rollout, logprobs: Tensor, entropy: Tensor | None) -> LossOutput:
        """The ``update.policy_loss`` surrogate (+ KL when :meth:`kl_in_loss`) from already computed log-probs (N, L);
        with ``update.mask_truncated`` truncated completions leave it (DAPO overlong filtering)."""
        update = self.update_cfg
        trained = batch.trained_mask  # multi-turn: the model's tokens only, never the environment's
        mask = truncated_filtered_mask(trained, batch.truncated) if update.mask_truncated else trained
        # no behaviour pass (on-policy): π_old is this very forward, detached, so the ratio is exactly 1
        old = batch.old_logprobs if batch.old_logprobs is not None else logprobs.detach()
        out = surrogate_loss(update.policy_loss, logprobs, old, batch.advantages, mask, clip_low=update.clip_low,
                             clip_high=update.clip_high, dual_clip=update.dual_clip,
                             sapo_tau=(update.sapo_tau_pos, update.sapo_tau_neg), aggregation=update.aggregation,
                             norm_length=self.loss_norm_length)
        loss, metrics = out.loss, dict(out.metrics)
        if batch.ref_logprobs is not None and self.kl_coef != 0.0 and self.kl_in_loss():
            kl_tokens = kl_estimate(logprobs, batch.ref_logprobs, update.kl_estimator)
            kl = aggregate(kl_tokens, mask, update.aggregation, self.loss_norm_length)
            loss = loss + self.kl_coef * kl
            metrics["kl"] = kl
        if entropy is not None:
            metrics["entropy"] = masked_mean(entropy, trained)
        return LossOutput(loss=loss, metrics=metrics)

    # ------------------------------------------------------------------ shared steps
    def policy_logprobs(self, batch: Rollout, with_entropy: bool = False) -> tuple[Tensor, Tensor | None]:
        return sequence_logprobs(self.policy, batch.prompt_ids, batch.prompt_mask, batch.completion_ids,
                                 batch.completion_mask, self.rollout_cfg.sampling.temperature, with_entropy,
                                 prompt_cache_kw=self.prompt_cache_kw(self.policy),
                                 max_buckets=self.length_buckets())

    def length_buckets(self) -> int:
        """``update.length_buckets`` for this pass: 1 for a pass with gradients through sharded parameters (FSDP2 /
        ZeRO-3 gather and free the weights around each forward, so the loss pass stays one forward)."""
        if torch.is_grad_enabled() and (self._params_sharded() or has_sharded_params(self.policy)):
            return 1
        return self.update_cfg.length_buckets

    def prompt_cache_kw(self, model: torch.nn.Module) -> str | None:
        """The KV-cache keyword by which ``model``'s log-prob passes share each prompt across its rows
        (``update.shared_prompt_pass``), or None for one plain forward per row: off, a model that cannot, or a
        pass with gradients through sharded parameters (FSDP2 / ZeRO-3 free the gathered weights the prompt's
        forward saved before the backward reaches them)."""
        inner = model.policy if isinstance(model, AdapterDisabled) else model
        if not self.update_cfg.shared_prompt_pass or not prompt_cache_supported(inner):
            return None
        if torch.is_grad_enabled() and (self._params_sharded() or has_sharded_params(self.policy)):
            return None  # has_sharded_params: FSDP2 frees gathered weights on a single rank too
        return cache_argument(inner)

    @torch.no_grad()
    def no_grad_logprobs(self, model: torch.nn.Module, rollout: Rollout) -> Tensor:
        """Token log-probs (N, L) of ``model`` (the policy for π_old, or the reference) without autograd, once per
        rollout, in chunks of ``rollout.logprob_batch`` sequences."""
        parts = []
        size, cache_kw = self.rollout_cfg.logprob_chunk, self.prompt_cache_kw(model)
        with on_device(model, self.device):  # an offloaded reference visits the device once per rollout
            for start in range(0, rollout.num_samples, size):
                idx = torch.arange(start, min(start + size, rollout.num_samples), device=rollout.completion_ids.device)
                mb = rollout.select(idx)
                lp, _ = sequence_logprobs(model, mb.prompt_ids, mb.prompt_mask, mb.completion_ids, mb.completion_mask,
                                          self.rollout_cfg.sampling.temperature, prompt_cache_kw=cache_kw,
                                          max_buckets=self.update_cfg.length_buckets)
                parts.append(lp)
        return torch.cat(parts)

    # scoring: score_samples is the one call of the reward tree; the collector (rollout/collect.py) receives it
    def score_samples(self, samples: Samples) -> RewardOutput:
        """The one place the reward tree runs (samples, greedy responses, continuations, validation)."""
        samples.trainer_state = TrainerState(global_step=self.global_step, epoch=self.current_epoch,
                                             max_steps=self._trainer.max_steps if self._trainer is not None else -1)
        with visiting(self.reward, self.device, self.rollout_cfg.offload_reward):
            return self.reward(samples)

    def score_rollouts(self, rollouts: list[Rollout]) -> list[tuple[Tensor, dict[str, Tensor]]]:
        """Score several rollouts (samples + ReMax's greedy responses) in ONE reward-tree call, so batch-level
        reward state (normalisation, judge batching) sees them together; rewards and metrics split back."""
        return score_rollouts(self.score_samples, rollouts, self.engine.pad_id, self.device)

    def collector(self, extend: bool = True) -> Collector:
        """The rollout path of this module: its engine, policy and reward call, dynamic sampling's refill stream,
        the ranks' collective flag, (``extend``) :meth:`extend_rollout` after scoring, and the environment that
        makes each sample a multi-turn episode (``rollout.episode`` limits)."""
        return Collector(self.engine, self.policy, self.score_samples, self.device, refill=self.refill_stream,
                         any_rank=self.controls.any_rank, extend=self.extend_rollout if extend else None,
                         environment=self.environment, episode=self.rollout_cfg.episode)

    @property
    def controls(self) -> RolloutControls:
        """The decisions between rollouts that read the trainer (adaptive KL, refill stream, collective flags)."""
        return RolloutControls(self._trainer, self.device)

    def refill_stream(self) -> Iterator[dict[str, Any]] | None:
        """Dynamic sampling's stream of extra prompt batches, made once per module (None without one)."""
        if self._refill is None:
            self._refill = self.controls.refill_stream()
        return self._refill

    def make_rollout(self, batch: dict[str, Any]) -> tuple[Rollout, dict[str, Tensor]]:
        """plan -> collect (generate, score, extend) -> behaviour/ref log-probs -> advantages."""
        plan, calls_before = self.rollout_plan(), self.engine.generate_calls
        collected = self.collector().collect(plan, batch)
        rollout, rewards, components = collected.rollout, collected.rewards, collected.components
        with timed(rollout.timings, "logprobs"):
            rollout.old_logprobs, rollout.values = self.behaviour_logprobs(rollout)
            if plan.need_ref_logprobs and self.ref_model is not None:
                rollout.ref_logprobs = self.no_grad_logprobs(self.ref_model, rollout)
            rollout.rewards = torch.nan_to_num(rewards, nan=0.0)
            advantages = self.compute_advantages(rollout, rollout.rewards)
            advantages.write_into(rollout)
            coef, kl_metrics = self.controls.adaptive_kl(self.update_cfg, self.kl_coef, rollout)
            if coef is not None:  # β is the kl_coef_value buffer: checkpointed
                self.kl_coef_value.fill_(coef)
        if self._writer is not None and self.global_rank == 0:
            self._writer.write(self.global_step, rollout, rewards, components)
        metrics = step_metrics(rollout, rewards, components, self.engine.generate_calls - calls_before)
        rollout, finished = self.finish_rollout(rollout)
        return rollout, {**metrics, **collected.metrics, **advantages.metrics, **kl_metrics, **finished}

    def finish_rollout(self, rollout: Rollout) -> tuple[Rollout, dict[str, Tensor]]:
        """Hook after the advantages (and the rollout log): what the loss trains on, when it is more than the samples
        (TRePO's continuation rows, its step-wide whitening), and its metrics. ``measure-variance`` calls it too.
        Default: the rollout as it is."""
        return rollout, {}

    def behaviour_logprobs(self, rollout: Rollout) -> tuple[Tensor | None, Tensor | None]:
        """π_old log-probs (N, L), once per rollout, and the behaviour values (N, L) of algorithms with a critic
        (None here; PPO overrides this to return both from one pass). None when :meth:`behaviour_pass_needed`
        says the loss pass can stand in for them."""
        if not self.behaviour_pass_needed():
            return None, None
        return self.no_grad_logprobs(self.policy, rollout), None

    def behaviour_pass_needed(self) -> bool:
        """Whether π_old log-probs need a pass of their own before the update: with several epochs or minibatches
        the weights move before the later loss passes, and ``update.behaviour_logprobs: always`` asks for it.
        Subclasses that read π_old before the loss (RLOO's KL in the reward) extend this; the adaptive KL controller
        (``update.kl_target``) reads it after each rollout."""
        update = self.update_cfg
        return update.behaviour_logprobs == "always" or not update.on_policy or update.kl_target is not None

    def extend_rollout(self, plan: RolloutPlan, rollout: Rollout, rewards: Tensor) -> tuple[Rollout, dict[str, Tensor]]:
        """Hook for plans that need more than samples (e.g. ``plan.continuations``, TRePO): the extended rollout (a
        new one; the input is left as it is) and the metrics of the extension. Default: none."""
        return rollout, {}

    def minibatch(self, rollout: Rollout, rollout_step: int) -> Rollout:
        """Minibatch ``rollout_step % num_minibatches`` of a fixed per-rollout permutation of the samples."""
        k = self.update_cfg.num_minibatches
        if k == 1:
            return rollout
        if self._perm is None or self._perm[0] is not rollout:
            self._perm = (rollout, torch.randperm(rollout.num_samples, device=rollout.completion_ids.device))
        chunks = self._perm[1].chunk(k)
        return rollout.select(chunks[rollout_step % k])

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> Tensor:
        step = int(batch.get("rollout_step", 0))
        rollout_id = batch.get("rollout_id")
        if step == 0 or self._rollout is None or rollout_id != self._rollout_id:  # a resume may start mid-rollout
            self._rollout_id = rollout_id
            before = self.engine.generated_tokens
            with self.generation_context():
                self._rollout, metrics = self.make_rollout(batch)
            self.trained_tokens += self.controls.sum_over_ranks(self.engine.generated_tokens - before)
            self.log_metrics(metrics, prog_bar_keys=("reward/total",))
        self._t_loss = time.perf_counter()
        out = self.compute_loss(self.minibatch(self._rollout, step))
        self.log_metrics({**out.metrics, "loss/policy": out.loss.detach()}, prog_bar_keys=("loss/policy",))
        return out.loss

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer: Any, optimizer_closure: Any = None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        # Lightning zeroes gradients only inside the next step's closure, after its rollout and loss forward: free
        # them now, or a model-sized buffer of spent gradients sits beside those activations (0.5 GB for a 135M model)
        optimizer.zero_grad(set_to_none=True)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self._t_loss is not None:
            # forward + backward + optimizer step of this minibatch (the rollout phases are logged apart)
            self.log("time/update", time.perf_counter() - self._t_loss, on_step=True, on_epoch=False, batch_size=1)

    def log_metrics(self, metrics: dict[str, Tensor], prog_bar_keys: tuple[str, ...] = ()) -> None:
        sync = self._trainer is not None and self.trainer.world_size > 1
        for key, value in metrics.items():
            value = torch.as_tensor(value, dtype=torch.float32, device=self.device)
            if value.numel() != 1 or (not sync and not torch.isfinite(value)):
                continue  # with sync_dist each log is a collective: every rank must log the same keys, NaN or not
            reduce = "max" if key.endswith("_max") else "min" if key.endswith("_min") else "mean"
            self.log(key, value, on_step=True, on_epoch=False, prog_bar=key in prog_bar_keys, sync_dist=sync,
                     batch_size=1, reduce_fx=reduce)

    @torch.no_grad()
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        """Held-out prompts: greedy reward and accuracy, and pass@n over ``val_num_samples`` samples.

        Validation leaves training untouched: it samples under a forked RNG (a run with validation draws
        the same training rollouts as one without) and restores any reward state it updated.
        """
        cfg = self.rollout_cfg
        plans = [RolloutPlan(group_size=1, sampling=cfg.sampling, greedy=True)]
        if cfg.val_num_samples > 0:
            plans.append(RolloutPlan(group_size=cfg.val_num_samples, sampling=cfg.sampling))
        rollouts, rewards = self.held_out_rollouts(plans, batch)
        self.log_validation(rollouts, rewards, len(batch["prompt_ids"]))

    @torch.no_grad()
    def held_out_rollouts(self, plans: list[RolloutPlan], batch: dict[str, Any]) -> tuple[list[Rollout], list[Tensor]]:
        """Each plan's rollout of ``batch`` through the module's rollout path (episodes with its environment) and
        their rewards, leaving training untouched: sampled under a forked RNG, reward state restored."""
        reward_state = self.reward.state_dict()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []), \
                self.generation_context():
            collector = self.collector(extend=False)
            rollouts = [collector.generate(plan, batch) for plan in plans]
        scored = self.score_rollouts(rollouts)
        self.reward.load_state_dict(reward_state)
        return rollouts, [rewards for rewards, _ in scored]

    def log_validation(self, rollouts: list[Rollout], rewards: list[Tensor], num_prompts: int) -> None:
        threshold = self.rollout_cfg.val_success_threshold
        solved = [(torch.nan_to_num(r, nan=-math.inf) >= threshold).float() for r in rewards]
        metrics = {"val/reward": rewards[0].nanmean(), "val/accuracy": solved[0].mean(),
                   "val/length": rollouts[0].lengths.float().mean()}
        if len(rollouts) > 1:
            g = rollouts[1].group_size
            metrics[f"val/pass@{g}"] = solved[1].reshape(-1, g).amax(dim=1).mean()
            metrics["val/reward_sampled"] = rewards[1].nanmean()
        for key, value in metrics.items():
            self.log(key, value.float(), on_step=False, on_epoch=True, batch_size=num_prompts,
                     prog_bar=key == "val/accuracy", sync_dist=self.trainer.world_size > 1)

    # ------------------------------------------------------------------ checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # every rank's sampling RNG and reward state, so a resumed run draws the same rollouts as an uninterrupted one
        save_run_state(self, checkpoint)
        drop_frozen_base(self, checkpoint)  # LoRA: adapters only, the base comes from policy.model_path

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.rank_state_restored = load_run_state(self, checkpoint)  # refuses another algorithm / model / group size
        restore_frozen_base(self, checkpoint)

