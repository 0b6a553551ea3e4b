"""Held-out evaluation of a policy: greedy accuracy and pass@k (unbiased estimator of Chen et al. 2021).

Used by ``make demo``, ``scripts/pretrain_tiny.py`` and ``benchmarks/learning.py``; independent of
Lightning (plain ``model`` + ``tokenizer`` + ``Reward``), so it also scores a saved HF directory::

    from lightning_trepo.tools.evaluation import evaluate_policy, heldout_rows
    result = evaluate_policy(model, tokenizer, heldout_rows("addition", 500), NumericAnswer(), num_samples=8)
    result.greedy_accuracy, result.pass_at_k[8]

A response counts as *solved* when its reward is ``>= threshold`` (NaN never solves), the same rule
as ``RLModule.validation_step`` (``rollout.val_success_threshold``).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightning_trepo.data.encoding import encode_rows
from lightning_trepo.data.tasks import generate_task
from lightning_trepo.rollout.engine import RolloutEngine, SamplingConfig, left_pad
from reward_models import Reward, Samples

__all__ = ["EvalResult", "evaluate_policy", "heldout_rows", "pass_at_k", "mean_pass_at_k"]


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from ``c`` correct out of ``n`` samples: ``1 - C(n-c, k) / C(n, k)``.

    Chen et al. 2021 (Codex, arXiv 2107.03374, eq. 1), computed as the stable product
    ``1 - prod_{i=n-c+1}^{n} (1 - k / i)``. Needs ``0 <= c <= n`` and ``1 <= k <= n``.
    """
    if not (0 <= c <= n) or not (1 <= k <= n):
        raise ValueError(f"pass_at_k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    prod = 1.0
    for i in range(n - c + 1, n + 1):
        prod *= 1.0 - k / i
    return 1.0 - prod


def mean_pass_at_k(correct_counts: Sequence[int], n: int, k: int) -> float:
    """Mean over prompts of :func:`pass_at_k` (``n`` samples each, ``correct_counts[i]`` solved)."""
    if not correct_counts:
        return float("nan")
    return sum(pass_at_k(n, int(c), k) for c in correct_counts) / len(correct_counts)


def heldout_rows(task: str = "addition", size: int = 500, seed: int = 0, digits: int = 2,
                 split: str = "test") -> list[dict[str, Any]]:
    """The first ``size`` rows of a built-in task's held-out split (deterministic)."""
    return generate_task(task, split, size=size, seed=seed, digits=digits)


@dataclass
class EvalResult:
    """Held-out scores of one policy on a list of rows."""

    greedy_accuracy: float
    """Share of prompts whose greedy response is solved."""
    greedy_reward: float
    """Mean reward of the greedy responses (NaN rewards ignored)."""
    pass_at_k: dict[int, float]
    """k -> unbiased pass@k over ``num_samples`` sampled responses per prompt."""
    sampled_accuracy: float
    """Share of sampled responses that are solved (= pass@1 estimate)."""
    num_prompts: int
    num_samples: int
    generated_tokens: int
    """Tokens generated for this evaluation (greedy + sampled)."""
    records: list[dict[str, Any]] = field(default_factory=list)
    """Per prompt: prompt, answer, greedy completion and reward, sampled completions and rewards."""

    def as_dict(self) -> dict[str, float]:
        """Flat metrics (``greedy_accuracy``, ``greedy_reward``, ``pass@k``, ...) for tables and JSON."""
        out = {"greedy_accuracy": self.greedy_accuracy, "greedy_reward": self.greedy_reward,
               "sampled_accuracy": self.sampled_accuracy}
        out.update({f"pass@{k}": v for k, v in sorted(self.pass_at_k.items())})
        out.update(num_prompts=float(self.num_prompts), num_samples=float(self.num_samples))
        return out


def _score(reward: Reward, prompts: list[str], completions: list[str], metadata: list[dict]) -> torch.Tensor:
    out = reward(Samples(prompts=prompts, completions=completions, metadata=metadata))
    return out.rewards.detach().float().cpu()


def _solved(rewards: torch.Tensor, threshold: float) -> torch.Tensor:
    return torch.nan_to_num(rewards, nan=-math.inf) >= threshold


@torch.no_grad()
def evaluate_policy(
    model: nn.Module,
    tokenizer: Any,
    rows: list[dict[str, Any]],
    reward: Reward,
    *,
    num_samples: int = 8,
    ks: Sequence[int] = (1, 8),
    sampling: SamplingConfig | None = None,
    threshold: float = 1.0,
    batch_size: int = 64,
    use_chat_template: bool | None = None,
    max_new_tokens: int | None = None,
    seed: int | None = 0,
) -> EvalResult:
    """Greedy accuracy and pass@k of ``model`` on ``rows`` (dicts with ``prompt`` + metadata columns).

    Args:
        num_samples: n sampled responses per prompt for pass@k (0: greedy only).
        ks: the k of pass@k; values above ``num_samples`` are skipped.
        sampling: sampling settings of the n samples (default: temperature 1, 32 new tokens).
        threshold: a response with reward >= threshold is solved.
        batch_size: prompts per generate call (each sampled ``num_samples`` times).
        use_chat_template: wrap prompts in the tokenizer's chat template (None: when it has one).
        max_new_tokens: overrides ``sampling.max_new_tokens`` (greedy responses use it too).
        seed: seeds the sampling (restored afterwards) so repeated evaluations are comparable.
    """
    sampling = sampling or SamplingConfig()
    if max_new_tokens is not None:
        sampling = SamplingConfig(temperature=sampling.temperature, top_p=sampling.top_p, top_k=sampling.top_k,
                                  max_new_tokens=max_new_tokens, stop_at_eos=sampling.stop_at_eos)
    # Greedy = top-1 sampling with the same length budget as the samples (argmax; no RNG dependence).
    greedy_cfg = SamplingConfig(temperature=1.0, top_k=1, max_new_tokens=sampling.max_new_tokens,
                                stop_at_eos=sampling.stop_at_eos)
    template = bool(getattr(tokenizer, "chat_template", None)) if use_chat_template is None else use_chat_template
    encoded = encode_rows(rows, tokenizer, prompt_column="prompt", messages_column="messages",
                          use_chat_template=template, max_prompt_length=10**6, overlong_prompt="error",
                          source="evaluation rows")
    engine = RolloutEngine(tokenizer, max_batch_size=max(batch_size * max(num_samples, 1), 1))
    records: list[dict[str, Any]] = []
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(seed)
        for start in range(0, len(encoded), batch_size):
            part = slice(start, min(start + batch_size, len(encoded)))
            records += _evaluate_batch(engine, model, reward, encoded.prompts[part], encoded.prompt_ids[part],
                                       encoded.metadata[part], greedy_cfg, sampling, num_samples)
    greedy = torch.tensor([r["greedy_reward"] for r in records])
    sampled = torch.tensor([x for r in records for x in r["sample_rewards"]])
    counts = [int(_solved(torch.tensor(r["sample_rewards"]), threshold).sum()) for r in records]
    nan = float("nan")
    return EvalResult(
        greedy_accuracy=float(_solved(greedy, threshold).float().mean()) if len(greedy) else nan,
        greedy_reward=float(greedy.nanmean()) if len(greedy) else nan,
        pass_at_k={k: mean_pass_at_k(counts, num_samples, k) for k in ks if 1 <= k <= num_samples},
        sampled_accuracy=float(_solved(sampled, threshold).float().mean()) if len(sampled) else nan,
        num_prompts=len(records), num_samples=num_samples, generated_tokens=engine.generated_tokens,
        records=records,
    )


def _evaluate_batch(engine: RolloutEngine, model: nn.Module, reward: Reward, prompts: list[str],
                    prompt_ids: list[list[int]], meta: list[dict], greedy_cfg: SamplingConfig,
                    sampling: SamplingConfig, num_samples: int) -> list[dict[str, Any]]:
    """One record per prompt: greedy completion and reward, ``num_samples`` sampled completions and rewards."""
    decode = engine.tokenizer.batch_decode
    ids, mask = left_pad(prompt_ids, engine.pad_id, next(model.parameters()).device)
    g_text = decode(engine.generate(model, ids, mask, greedy_cfg).completion_ids, skip_special_tokens=True)
    g_rew = _score(reward, prompts, g_text, meta)
    s_text: list[str] = []
    s_rew = torch.zeros(0)
    if num_samples > 0:
        rep = lambda xs: [x for x in xs for _ in range(num_samples)]  # noqa: E731
        sampled = engine.generate(model, ids, mask, sampling, num_return=num_samples)
        s_text = decode(sampled.completion_ids, skip_special_tokens=True)
        s_rew = _score(reward, rep(prompts), s_text, rep(meta))
    n = num_samples
    return [{"prompt": prompts[i], "answer": meta[i].get("answer"), "greedy": g_text[i],
             "greedy_reward": float(g_rew[i]), "samples": s_text[i * n:(i + 1) * n],
             "sample_rewards": s_rew[i * n:(i + 1) * n].tolist()} for i in range(len(prompts))]

