"""Shared test builders: a tiny policy config, a built-in-task data module and a small trainer."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_trepo import PolicyConfig, PromptDataModule, RolloutConfig, SamplingConfig, TinyModelConfig
from lightning_trepo.data import BuiltinTaskSource
from lightning_trepo.types import Rollout

TINY = PolicyConfig(tiny=TinyModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=64, seed=1))


def rollout_cfg(group_size: int = 4, max_new_tokens: int = 4, **kw: Any) -> RolloutConfig:
    return RolloutConfig(group_size=group_size, sampling=SamplingConfig(max_new_tokens=max_new_tokens), **kw)


def datamodule(batch_size: int = 2, **kw: Any) -> PromptDataModule:
    return PromptDataModule(source=BuiltinTaskSource(task="addition", size=64, seed=0), batch_size=batch_size,
                            max_prompt_length=32, **kw)


def trainer(tmp_path, max_steps: int = 2, **kw: Any) -> pl.Trainer:
    defaults: dict[str, Any] = dict(max_steps=max_steps, accelerator="cpu", devices=1, logger=False,
                                    enable_checkpointing=False, enable_progress_bar=False,
                                    enable_model_summary=False, default_root_dir=str(tmp_path),
                                    num_sanity_val_steps=0)
    defaults.update(kw)
    return pl.Trainer(**defaults)


def policy_params(module: pl.LightningModule) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.policy.state_dict().items()}


def tiny_rollout(completion_mask: list[list[int]], group_size: int, prompt_len: int = 3, seed: int = 0) -> Rollout:
    """A hand-made rollout for the built-in char model: random prompt/completion ids (vocab 3..98), the
    given right-padded completion mask (padding holds the pad id 0), G samples per prompt contiguous."""
    mask = torch.tensor(completion_mask, dtype=torch.long)
    n, length = mask.shape
    gen = torch.Generator().manual_seed(seed)
    prompt_ids = torch.randint(3, 99, (n // group_size, prompt_len), generator=gen).repeat_interleave(group_size, 0)
    completion_ids = torch.randint(3, 99, (n, length), generator=gen) * mask
    return Rollout(prompt_ids=prompt_ids, prompt_mask=torch.ones_like(prompt_ids), completion_ids=completion_ids,
                   completion_mask=mask, group_index=torch.arange(n) // group_size, group_size=group_size,
                   prompts=[f"p{i // group_size}" for i in range(n)], completions=[f"c{i}" for i in range(n)],
                   metadata=[{} for _ in range(n)], truncated=mask[:, -1].bool())
