"""Gradient variance of every estimator on real rollouts, with the algorithms' own code (``measure-variance``).

The policy is held fixed on a fixed batch of B prompts. Each repeat r draws ONE shared rollout of G samples per
prompt and hands it to every estimator's LightningModule: GRPO, RLOO and REINFORCE use the samples as they are,
ReMax adds the greedy response (the policy is fixed, so it is decoded once and scored with every repeat's
samples), TRePO samples its continuations on top of the same samples, PPO reads its critic. Each module then
runs its own hooks (``rollout_plan``, ``extend_rollout``, ``behaviour_logprobs``, ``compute_advantages``,
``policy_loss`` / ``compute_loss``) and the estimate is g_r = −∇θ loss over the policy's trainable parameters
(autograd, no optimizer step). Modules that keep the base ``compute_loss`` share one forward pass per repeat.
Figures and intervals come from :mod:`lightning_trepo.diagnostics.stats`. https://arxiv.org/abs/2506.02553
"""
from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lightning_trepo.diagnostics.stats import CountSketch, flatten
from lightning_trepo.modules.base import RLModule
from lightning_trepo.rollout.plan import RolloutPlan
from lightning_trepo.types import Rollout

DEFAULT_ESTIMATORS = ("reinforce", "rloo", "grpo", "remax", "trepo:1x1", "trepo:2x2", "trepo:4x2")


@dataclass(frozen=True)
class EstimatorSpec:
    """One estimator to measure: a module class and the ``__init__`` arguments that differ from the config's."""

    label: str
    cls: type
    init: dict[str, Any] = field(default_factory=dict)


def parse_estimator(text: str) -> EstimatorSpec:
    """``reinforce | rloo | remax | ppo | trepo | grpo[:group|batch|none] | trepo:MxK[:loo|fresh]`` -> EstimatorSpec.
    A bare name is that algorithm with the config's own settings when the config is that algorithm (e.g. ``trepo``
    with ``configs/smollm2_trepo.yaml``: its boundary anchors, gate and continuation rows), else its defaults."""
    from lightning_trepo.modules import GRPO, PPO, REINFORCE, RLOO, ReMax, TRePO

    name, _, arg = text.strip().lower().partition(":")
    plain = {"reinforce": REINFORCE, "rloo": RLOO, "remax": ReMax, "ppo": PPO, "trepo": TRePO}
    if name in plain and not arg:
        return EstimatorSpec(name, plain[name])
    if name == "grpo":
        if arg not in ("", "group", "batch", "none"):
            raise ValueError(f"estimator {text!r}: grpo takes :group, :batch or :none (the advantage_scale)")
        return EstimatorSpec(text.strip(), GRPO, {"advantage_scale": arg} if arg else {})
    if name == "trepo":
        sizes, _, start = arg.partition(":")
        m, sep, k = sizes.partition("x")
        if not (sep and m.isdigit() and k.isdigit()) or start not in ("", "loo", "fresh"):
            raise ValueError(f"estimator {text!r}: write trepo:MxK[:loo|fresh], e.g. trepo:2x2 "
                             "(M anchors, K continuations each)")
        init: dict[str, Any] = {"num_anchors": int(m), "num_continuations": int(k)}
        if start:
            init["start_value"] = start
        return EstimatorSpec(text.strip(), TRePO, init)
    raise ValueError(f"estimator {text!r} is not one of reinforce, rloo, remax, ppo, trepo, grpo[:scale], "
                     "trepo:MxK[:start]")


def build_estimators(base: RLModule, specs: Sequence[EstimatorSpec]) -> list[tuple[str, RLModule]]:
    """One module per spec, all sharing ``base``'s policy, tokenizer, reference and reward tree (nothing loads
    twice). A spec of ``base``'s own class with no overrides is ``base`` itself (its configured settings);
    PPO only comes from a PPO config (its critic is part of the checkpoint)."""
    from lightning_trepo.modules import PPO

    out = []
    for spec in specs:
        if spec.cls is PPO and not isinstance(base, PPO):
            raise ValueError(f"estimator {spec.label!r} needs a critic: use a config whose model.class_path is "
                             f"lightning_trepo.PPO (this one is {type(base).__name__})")
        if type(base) is spec.cls and not spec.init:
            out.append((spec.label, base))
            continue
        module = spec.cls(reward=base.reward, policy=base.policy_cfg, rollout=base.rollout_cfg,
                          update=base.update_cfg, optimizer=base.optimizer_factory, **spec.init)
        module.policy, module.tokenizer, module._frozen = base.policy, base.tokenizer, base._frozen
        out.append((spec.label, module.to(base.device)))
    return out


@dataclass
class Measurement:
    """R repeated gradient estimates of E estimators on one batch of prompts."""

    labels: list[str]
    grads: Tensor  # (E, R, d) float64, −∇loss (projected, or every trainable parameter)
    tokens: Tensor  # (E, R) generated tokens each estimate cost (samples + greedy + continuations)
    num_params: int  # trainable parameters of the policy
    projection_dim: int  # d when projected, 0 when every parameter is kept
    seconds: dict[str, float] = field(default_factory=dict)  # wall-clock per phase


@dataclass
class _Shared:
    """What every estimator of one repeat reads: the samples, their rewards and the greedy baseline."""

    rollout: Rollout
    rewards: Tensor  # (N,) raw rewards (NaN = does not apply)
    greedy: Rollout | None
    greedy_rewards: Tensor | None


def _timed(seconds: dict[str, float], key: str, start: float) -> None:
    seconds[key] = seconds.get(key, 0.0) + time.perf_counter() - start


def shared_rollout(base: RLModule, batch: dict[str, Any], greedy: Rollout | None, seconds: dict[str, float]) -> _Shared:
    """G samples per prompt from the fixed policy (the plan every estimator shares), collected by the rollout path
    and scored in one reward call with the greedy responses (when ReMax is measured), with behaviour and reference
    log-probs."""
    cfg = base.rollout_cfg
    plan = RolloutPlan(group_size=cfg.group_size, sampling=cfg.sampling, need_ref_logprobs=base.ref_model is not None,
                       greedy_baseline=greedy is not None)
    with base.generation_context():
        collected = base.collector(extend=False).collect(plan, batch, greedy=greedy)
    rollout = dataclasses.replace(collected.rollout, greedy=None, greedy_rewards=None)  # the estimators' own view
    for phase in ("generate", "score"):
        seconds[phase] = seconds.get(phase, 0.0) + rollout.timings.get(phase, 0.0)
    t0 = time.perf_counter()
    rollout.old_logprobs = base.no_grad_logprobs(base.policy, rollout)
    if base.ref_model is not None:
        rollout.ref_logprobs = base.no_grad_logprobs(base.ref_model, rollout)
    _timed(seconds, "logprobs", t0)
    return _Shared(rollout, collected.rewards, collected.rollout.greedy, collected.rollout.greedy_rewards)


def greedy_responses(base: RLModule, batch: dict[str, Any]) -> Rollout:
    """ReMax's baseline: one greedy response per prompt within the samples' length budget (fixed policy: once)."""
    plan = RolloutPlan(group_size=1, sampling=base.rollout_cfg.sampling, greedy=True)
    with base.generation_context():
        return base.collector(extend=False).generate(plan, batch)


def estimator_rollout(module: RLModule, shared: _Shared, seconds: dict[str, float], label: str) -> tuple[Rollout, int]:
    """The module's own view of the shared samples, as its ``make_rollout`` would build it: its plan (TRePO draws
    its anchor offsets here), the greedy baseline if planned, ``extend_rollout`` (continuations), behaviour
    values (PPO), advantages. Returns the rollout and the generated tokens this estimate cost."""
    t0 = time.perf_counter()
    plan = module.rollout_plan()
    base = shared.rollout
    if plan.group_size != base.group_size:
        raise ValueError(f"estimator {label!r} plans {plan.group_size} samples per prompt, the shared rollout has "
                         f"{base.group_size}")
    rollout = dataclasses.replace(base, timings={})
    tokens = int(base.completion_mask.sum())
    if plan.greedy_baseline:
        if shared.greedy is None:
            raise RuntimeError(f"estimator {label!r} plans a greedy baseline that was not decoded")
        rollout.greedy, rollout.greedy_rewards = shared.greedy, shared.greedy_rewards
        tokens += int(shared.greedy.completion_mask.sum())
    before = module.engine.generated_tokens
    with module.generation_context():
        rollout, _ = module.extend_rollout(plan, rollout, shared.rewards)
    tokens += module.engine.generated_tokens - before
    if type(module).behaviour_logprobs is not RLModule.behaviour_logprobs:  # PPO: log-probs and critic values
        rollout.old_logprobs, rollout.values = module.behaviour_logprobs(rollout)
    rollout.rewards = torch.nan_to_num(shared.rewards, nan=0.0)
    module.compute_advantages(rollout, rollout.rewards).write_into(rollout)
    rollout, _ = module.finish_rollout(rollout)  # what its loss trains on: e.g. TRePO's continuation rows
    _timed(seconds, f"advantages/{label}", t0)
    return rollout, tokens


def measured_parameters(policy: torch.nn.Module, pattern: str | None = None) -> list[torch.nn.Parameter]:
    """θ: the policy's trainable parameters, or those whose name matches the regex ``pattern`` (a subset is also
    cheaper: backward stops below the lowest measured layer)."""
    params = [p for n, p in policy.named_parameters() if p.requires_grad and (not pattern or re.search(pattern, n))]
    if not params:
        raise ValueError(f"--params {pattern!r} matches no trainable parameter of the policy")
    return params


def estimate_gradients(base: RLModule, modules: Sequence[RLModule], rollouts: Sequence[Rollout],
                       project: Callable[[Sequence[Tensor]], Tensor],
                       params: Sequence[torch.nn.Parameter]) -> list[Tensor]:
    """g = −∇θ loss of each module on its rollout, projected. Modules with the base ``compute_loss`` whose rollout
    is exactly the shared samples reuse one forward pass of them through their own ``policy_loss``; a rollout with
    rows of its own (TRePO's trained continuations) runs its own."""
    samples = min(r.num_samples for r in rollouts)
    shared = [type(m).compute_loss is RLModule.compute_loss and r.num_samples == samples
              for m, r in zip(modules, rollouts, strict=True)]
    first = next((r for r, s in zip(rollouts, shared, strict=True) if s), None)
    logprobs = base.policy_logprobs(first)[0] if first is not None else None
    out = []
    for i, (module, rollout) in enumerate(zip(modules, rollouts, strict=True)):
        if shared[i]:
            loss = module.policy_loss(rollout, logprobs, None).loss
        else:
            loss = module.compute_loss(rollout).loss
        keep = any(shared[i + 1:])
        grads = torch.autograd.grad(loss, params, retain_graph=keep, allow_unused=True)
        out.append(-project([g if g is not None else torch.zeros_like(p) for g, p in zip(grads, params, strict=True)]))
    return out


def measure(base: RLModule, estimators: Sequence[tuple[str, RLModule]], batch: dict[str, Any], repeats: int,
            projection_dim: int = 0, seed: int = 0, progress: Callable[[str], None] | None = None,
            params: str | None = None) -> Measurement:
    """``repeats`` independent shared rollouts on ``batch``; every estimator's gradient on each (see module doc).

    ``projection_dim`` 0 keeps every trainable parameter (small models); d > 0 keeps a count sketch of d
    coordinates (:class:`CountSketch`, unbiased for every figure). ``params``: a regex on parameter names that
    restricts θ (default: every trainable parameter of the policy).
    """
    if repeats < 2:
        raise ValueError(f"repeats must be >= 2 (a variance needs two estimates), got {repeats}")
    labels = [label for label, _ in estimators]
    modules = [m for _, m in estimators]
    theta = measured_parameters(base.policy, params)
    project = CountSketch([p.shape for p in theta], projection_dim, seed) if projection_dim > 0 else flatten
    seconds: dict[str, float] = {}
    torch.manual_seed(seed)
    greedy = None
    if any(m.rollout_plan().greedy_baseline for m in modules):
        t0 = time.perf_counter()
        greedy = greedy_responses(base, batch)
        _timed(seconds, "generate_greedy", t0)
    grads: list[list[Tensor]] = [[] for _ in modules]
    tokens = torch.zeros(len(modules), repeats)
    start = time.perf_counter()
    for r in range(repeats):
        shared = shared_rollout(base, batch, greedy, seconds)
        views = [estimator_rollout(m, shared, seconds, label) for label, m in estimators]
        t0 = time.perf_counter()
        for e, g in enumerate(estimate_gradients(base, modules, [v for v, _ in views], project, theta)):
            grads[e].append(g)
            tokens[e, r] = views[e][1]
        _timed(seconds, "backward", t0)
        if progress is not None:
            progress(f"repeat {r + 1}/{repeats}: {time.perf_counter() - start:.0f} s")
    seconds["total"] = time.perf_counter() - start
    return Measurement(labels, torch.stack([torch.stack(g) for g in grads]), tokens,
                       sum(p.numel() for p in theta), projection_dim, seconds)
