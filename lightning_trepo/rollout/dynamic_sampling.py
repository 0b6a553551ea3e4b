"""DAPO dynamic sampling on the shared rollout path: keep only informative groups, refill from more prompts.

Yu et al. 2025, https://arxiv.org/abs/2503.14476 §3.2 (verl ``algorithm.filter_groups``). A prompt whose G
rewards are all equal has a zero group-relative advantage on every token (GRPO, RLOO, REINFORCE++-baseline),
so it only dilutes the batch. The plan's ``dynamic_sampling`` makes the module sample a batch, drop such
groups (:func:`~lightning_trepo.algorithms.advantages.informative_groups`), and sample further batches of
prompts until B informative groups are in hand or ``max_extra_rounds`` extra rounds are spent. The first B
informative groups, in sampling order, form the rollout; when the cap is hit first, the dropped groups fill
the remaining places (they contribute 0 to group-relative advantages; verl raises instead), so the batch
keeps its size and every minibatch split still works.

Effect on the estimator: conditioned on "informative", the expected gradient of an unbiased group estimator
(RLOO) is ∇J / p, p = P(a group is informative): exactly proportional to the true gradient, a larger step, no
bias in direction (``lightning-trepo verify-estimators``, row ``rloo_dynamic``).
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_trepo.algorithms.advantages import informative_groups
from lightning_trepo.types import Rollout

Scored = tuple[Rollout, Tensor, dict[str, Tensor]]


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """The samples of several freshly generated rollouts (same G, no log-probs yet) as one, groups renumbered.

    Prompts stay left padded and completions right padded to the widest part; timings add up per phase.
    """
    if len(parts) == 1:
        return parts[0]
    g = parts[0].group_size
    if any(p.group_size != g or p.greedy is not None or p.old_logprobs is not None for p in parts):
        raise ValueError("concat_rollouts: parts must share the group size and carry no baseline or log-probs yet")
    width_p = max(p.prompt_ids.shape[1] for p in parts)
    width_l = max(p.completion_ids.shape[1] for p in parts)
    prompt_ids = torch.cat([F.pad(p.prompt_ids, (width_p - p.prompt_ids.shape[1], 0), value=pad_id) for p in parts])
    prompt_mask = torch.cat([F.pad(p.prompt_mask, (width_p - p.prompt_mask.shape[1], 0)) for p in parts])
    completion_ids = torch.cat([F.pad(p.completion_ids, (0, width_l - p.completion_ids.shape[1]), value=pad_id)
                                for p in parts])
    completion_mask = torch.cat([F.pad(p.completion_mask, (0, width_l - p.completion_mask.shape[1])) for p in parts])
    masks = [p.loss_mask for p in parts]  # multi-turn episodes: the model's tokens among the environment's
    loss_mask = None if any(m is None for m in masks) else \
        torch.cat([F.pad(m, (0, width_l - m.shape[1])) for m in masks if m is not None])
    n = completion_ids.shape[0]
    timings: dict[str, float] = {}
    for p in parts:
        for phase, seconds in p.timings.items():
            timings[phase] = timings.get(phase, 0.0) + seconds
    return Rollout(
        prompt_ids=prompt_ids, prompt_mask=prompt_mask, completion_ids=completion_ids, completion_mask=completion_mask,
        group_index=torch.arange(n // g, device=completion_ids.device).repeat_interleave(g), group_size=g,
        prompts=[x for p in parts for x in p.prompts], completions=[x for p in parts for x in p.completions],
        metadata=[x for p in parts for x in p.metadata], truncated=torch.cat([p.truncated for p in parts]),
        loss_mask=loss_mask, timings=timings,
    )


def select_groups(rollout: Rollout, groups: Tensor) -> Rollout:
    """The samples of the groups ``groups`` (B',) long, in that order, renumbered 0..B'-1."""
    g = rollout.group_size
    index = (groups[:, None] * g + torch.arange(g, device=groups.device)).reshape(-1)
    out = rollout.select(index.to(rollout.completion_ids.device))
    return replace(out, group_index=torch.arange(groups.numel(), device=out.group_index.device).repeat_interleave(g))


def _per_sample(components: list[dict[str, Tensor]], sizes: list[int], index: Tensor) -> dict[str, Tensor]:
    """Concatenate the per-sample reward metrics of the parts and pick ``index``; other metrics: the first part's."""
    out = {}
    for key, first in components[0].items():
        if first.dim() == 1 and all(key in c and c[key].shape == (n,) for c, n in zip(components, sizes, strict=True)):
            out[key] = torch.cat([c[key] for c in components])[index.to(first.device)]
        else:
            out[key] = first
    return out


def dynamic_sampling(
    sample: Callable[[dict[str, Any]], Scored],
    batch: dict[str, Any],
    refill: Iterator[dict[str, Any]] | None,
    max_extra_rounds: int,
    pad_id: int,
    any_rank: Callable[[bool], bool] = lambda flag: flag,
) -> tuple[Rollout, Tensor, dict[str, Tensor], dict[str, Tensor]]:
    """Sample ``batch`` with ``sample`` (generate + score); while fewer than B groups are informative and extra
    rounds remain, sample the next batch of ``refill``. Returns the rollout of B groups, its rewards, its per-sample
    reward metrics and ``dynamic/*`` metrics. ``any_rank`` makes the "sample more" decision collective (ranks that
    generate with sharded parameters must make the same generate calls)."""
    parts: list[Scored] = []
    keep: list[Tensor] = []
    target = len(batch["prompt_ids"])
    rounds = 0
    while True:
        rollout, rewards, components = sample(batch)
        if rollout.greedy is not None:
            raise ValueError("rollout.dynamic_sampling does not combine with a greedy baseline (ReMax)")
        parts.append((rollout, rewards, components))
        keep.append(informative_groups(torch.nan_to_num(rewards.detach(), nan=0.0), rollout.group_size).cpu())
        short = int(torch.cat(keep).sum()) < target
        if not any_rank(short and refill is not None and rounds < max_extra_rounds):
            break
        batch, rounds = next(refill), rounds + 1  # type: ignore[arg-type]
    kept = torch.cat(keep)
    order = torch.cat([kept.nonzero().squeeze(-1), (~kept).nonzero().squeeze(-1)])[:target]  # informative first
    merged = concat_rollouts([p[0] for p in parts], pad_id)
    g = merged.group_size
    index = (order[:, None] * g + torch.arange(g)).reshape(-1)
    rewards = torch.cat([p[1] for p in parts])[index.to(parts[0][1].device)]
    components = _per_sample([p[2] for p in parts], [p[0].num_samples for p in parts], index)
    metrics = {"dynamic/rounds": torch.tensor(float(rounds)),
               "dynamic/informative_frac": kept.float().mean(),
               "dynamic/filled_frac": (~kept[order]).float().mean()}
    return select_groups(merged, order), rewards, components, metrics
