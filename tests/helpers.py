"""Shared test builders: a tiny policy config, a built-in-task data module and a small trainer."""
from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch

from lightning_trepo import PolicyConfig, PromptDataModule, RolloutConfig, SamplingConfig, TinyModelConfig
from lightning_trepo.data import BuiltinTaskSource

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
