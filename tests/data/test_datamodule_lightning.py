"""The data module inside Lightning and jsonargparse: connect from setup, exact mid-epoch resume, YAML."""
from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from jsonargparse import ActionConfigFile, ArgumentParser

from lightning_trepo.data import BuiltinTaskSource, JsonlSource, ListSource, PromptDataModule


class Recorder(pl.LightningModule):
    """Connects the data module like an RL module does and records what each step received."""

    def __init__(self, tokenizer) -> None:
        super().__init__()
        self.tokenizer = tokenizer
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen: list[tuple[list[int], int, int]] = []

    def setup(self, stage: str) -> None:
        world = self.trainer.world_size
        self.trainer.datamodule.connect(self.tokenizer, steps_per_rollout=2, rank=self.global_rank, world_size=world)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.seen.append((batch["row"], batch["rollout_step"], batch["rollout_id"]))
        return (self.weight - 1.0).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def fit(tokenizer, max_steps: int, tmp_path: Path, ckpt_path: str | None = None) -> Recorder:
    # 12 rows, batch 3, 2 steps per rollout: 8 training steps per epoch, so 10 steps cross an epoch
    dm = PromptDataModule(source=ListSource([{"prompt": f"q{i}", "a": i} for i in range(12)]), batch_size=3, seed=5)
    model = Recorder(tokenizer)
    checkpoints = pl.callbacks.ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=3, save_top_k=-1)
    trainer = pl.Trainer(
        max_steps=max_steps, accelerator="cpu", devices=1, logger=False, callbacks=[checkpoints],
        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
    )
    trainer.fit(model, datamodule=dm, ckpt_path=ckpt_path)
    assert trainer.num_training_batches == 8
    return model


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_lightning_resume_mid_epoch_equals_the_uninterrupted_run(char_tokenizer, tmp_path: Path) -> None:
    full = fit(char_tokenizer, 10, tmp_path / "full").seen
    assert len(full) == 10 and [s for _, s, _ in full] == [0, 1] * 5
    assert len({rid for _, _, rid in full}) == 5  # rollout ids 0..3 in epoch 0, then 4 in epoch 1
    for step in (3, 6):  # mid-rollout (step 3) and mid-epoch before an epoch boundary (step 6)
        (ckpt,) = (tmp_path / "full").glob(f"*step={step}.ckpt")
        resumed = fit(char_tokenizer, 10, tmp_path / f"resumed{step}", ckpt_path=str(ckpt)).seen
        assert resumed == full[step:]


def test_yaml_schema_accepts_sources_by_class_path(tmp_path: Path) -> None:
    parser = ArgumentParser(exit_on_error=False)
    parser.add_argument("--config", action=ActionConfigFile)
    parser.add_class_arguments(PromptDataModule, "data")
    default = parser.instantiate(parser.parse_args([])).data
    assert isinstance(default.source, BuiltinTaskSource) and default.val_source is None
    assert "class_path: lightning_trepo.data.BuiltinTaskSource" in parser.dump(parser.parse_args([]))
    config = tmp_path / "data.yaml"
    config.write_text(
        "data:\n"
        "  source: {class_path: lightning_trepo.data.JsonlSource, init_args: {path: train.jsonl}}\n"
        "  val_source: {class_path: lightning_trepo.data.BuiltinTaskSource, init_args: {split: test, size: 50}}\n"
        "  overlong_prompt: truncate_left\n"
    )
    dm = parser.instantiate(parser.parse_args(["--config", str(config)])).data
    assert isinstance(dm.source, JsonlSource) and dm.source.path == "train.jsonl"
    assert dm.val_source.split == "test" and dm.val_source.size == 50
    with pytest.raises(Exception, match="overlong_prompt"):  # a value outside the Literal is rejected
        parser.parse_args(["--data.overlong_prompt", "drop"])
