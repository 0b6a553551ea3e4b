"""Per-rank entry point of the 2-process resume test: ``python -m tests.distributed.resume_worker <outdir>``.

Three DDP fits in one launch: 4 steps straight; 2 steps that leave a periodic checkpoint (the "killed" run);
and a resume of that checkpoint to step 4. Sampling draws from each rank's global torch RNG and the reward keeps
per-rank running statistics (``Normalize(mode="running")``), so only per-rank state in the checkpoint makes the
resumed run equal the straight one. Writes ``<outdir>/<run>_rank<r>.pt`` with the weights and the reward state.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import lightning.pytorch as pl
import torch

from lightning_trepo import GRPO
from lightning_trepo.training.checkpoints import PeriodicCheckpoint
from reward_models import FunctionReward, Normalize
from tests.helpers import TINY, datamodule, rollout_cfg


def fit(out: Path, run: str, max_steps: int, ckpt_path: str | None = None) -> None:
    pl.seed_everything(5)
    module = GRPO(reward=Normalize(FunctionReward("tests.modules.rewards.length_reward"), mode="running"),
                  policy=TINY, rollout=rollout_cfg(group_size=2, max_new_tokens=4),
                  optimizer=lambda p: torch.optim.AdamW(p, lr=1e-2))
    trainer = pl.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=max_steps, logger=False,
                         enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                         callbacks=[PeriodicCheckpoint(every_n_steps=2, keep_last=5, dirpath=str(out / run))])
    trainer.fit(module, datamodule=datamodule(batch_size=2), ckpt_path=ckpt_path)
    rank = int(os.environ.get("RANK", 0))
    torch.save({"params": {k: v.detach().clone() for k, v in module.policy.state_dict().items()},
                "reward": module.reward.state_dict()}, out / f"{run}_rank{rank}.pt")


def main(out: Path) -> None:
    fit(out, "straight", 4)
    fit(out, "killed", 2)
    fit(out, "resumed", 4, ckpt_path=str(out / "killed" / "step=000002.ckpt"))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
