"""Worker of test_export_sharded.py: one GRPO step on 2 gloo ranks under a sharding strategy; SaveOnTrainEnd writes
the sharded ``checkpoints/last.ckpt`` directory, rank 0 saves the full policy weights gathered in memory, then
``export_trained`` (what ``export.dir`` runs after fit) writes ``hf_after_fit``.

    python -m tests.distributed.export_worker fsdp2|zero3 OUT_DIR
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch

from lightning_trepo.tools.export import export_trained
from lightning_trepo.training.callbacks import SaveOnTrainEnd
from tests.distributed.workers import PER_RANK_BATCH, quiet_trainer, sharded_grpo
from tests.helpers import datamodule


class SaveShardedAndFull(pl.Callback):
    """On train end (still inside the strategy): the gathered full policy weights."""

    def __init__(self, out: Path, gather: Any) -> None:
        self.out, self.gather = out, gather

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        full = self.gather(pl_module.policy)
        if trainer.is_global_zero:
            torch.save(full, self.out / "full_policy.pt")


def fsdp2_full(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(policy, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def zero3_full(policy: torch.nn.Module) -> dict[str, torch.Tensor]:
    import deepspeed

    with deepspeed.zero.GatheredParameters(list(policy.parameters())):
        return {k: v.detach().clone().cpu() for k, v in policy.state_dict().items()}


def main(scenario: str, out: Path) -> None:
    if scenario == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        strategy, gather = ModelParallelStrategy(), fsdp2_full
    else:
        from benchmarks.cpu_deepspeed import CPUDeepSpeedStrategy

        strategy, gather = CPUDeepSpeedStrategy(stage=3, logging_batch_size_per_gpu=1), zero3_full
    pl.seed_everything(0)
    trainer = quiet_trainer(devices=2, strategy=strategy, max_steps=1, enable_checkpointing=True,
                            default_root_dir=str(out), callbacks=[SaveShardedAndFull(out, gather), SaveOnTrainEnd()])
    module = sharded_grpo()
    trainer.fit(module, datamodule=datamodule(batch_size=PER_RANK_BATCH))
    export_trained(trainer, module, out / "hf_after_fit")


if __name__ == "__main__":
    torch.set_num_threads(1)
    Path(sys.argv[2]).mkdir(parents=True, exist_ok=True)
    main(sys.argv[1], Path(sys.argv[2]))
