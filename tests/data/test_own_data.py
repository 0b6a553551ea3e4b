"""Train on your own data: the shipped example files and the configs/data/*.yaml overlays that read them
(JSONL, parquet, a save_to_disk directory, chat-templated prompts with a system prompt)."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from lightning_trepo.cli.main import TrepoCLI, build_cli
from lightning_trepo.data import HFDatasetSource, JsonlSource, ListSource, PromptDataModule
from lightning_trepo.modules.base import RLModule
from reward_models import NumericAnswer, Samples

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "examples" / "data"
OVERLAYS = sorted((ROOT / "configs" / "data").glob("*.yaml"))
HAS_DATASETS = importlib.util.find_spec("datasets") is not None
spec = importlib.util.spec_from_file_location("make_examples", DATA / "make_examples.py")
make_examples = importlib.util.module_from_spec(spec)
spec.loader.exec_module(make_examples)


def test_shipped_files_hold_the_rows_the_script_writes():
    rows = make_examples.rows()
    assert len(rows) == 64 and set(rows[0]) == {"question", "solution"}
    a, b = (int(x) for x in rows[0]["question"].rstrip("=").split("+"))
    assert int(rows[0]["solution"]) == a + b
    assert JsonlSource(str(DATA / "addition.jsonl")).load() == rows
    assert JsonlSource(str(DATA / "chat.jsonl")).load() == make_examples.chats(rows)
    if HAS_DATASETS:  # the `data` extra
        assert HFDatasetSource(str(DATA / "addition.parquet")).load() == rows
        assert HFDatasetSource(str(DATA / "addition_saved")).load() == rows


def connected(overlay: Path, monkeypatch) -> tuple[TrepoCLI, PromptDataModule]:
    monkeypatch.chdir(ROOT)  # the overlays name files relative to the repository root
    c = TrepoCLI(RLModule, PromptDataModule, subclass_mode_model=True, run=False, auto_configure_optimizers=False,
                 args=["--config", str(ROOT / "configs" / "grpo.yaml"), "--config", str(overlay)])
    c.datamodule.setup("fit")
    c.datamodule.connect(c.model.tokenizer, use_chat_template=c.model.policy_cfg.use_chat_template)
    return c, c.datamodule


@pytest.mark.parametrize("overlay", OVERLAYS, ids=lambda p: p.name)
def test_overlay_reads_its_file_with_the_named_columns(overlay, monkeypatch):
    if "HFDatasetSource" in overlay.read_text() and not HAS_DATASETS:
        pytest.skip("needs the `data` extra")
    c, dm = connected(overlay, monkeypatch)
    data = dm.train_dataset().data
    rows = make_examples.rows()
    meta = dict(data.metadata[1])
    chat = meta.pop("prompt_messages", None)  # the chat a templated prompt came from (TRL passes it to rewards)
    assert len(data) == 64 and meta == {"solution": rows[1]["solution"]}
    assert data.raw_prompts[1] == rows[1]["question"]  # the reward reads the prompt before any template
    if overlay.name == "chat.yaml":  # row 0 has its own system turn; row 1 gets data.system_prompt
        assert chat == [{"role": "system", "content": "Add."}, {"role": "user", "content": rows[1]["question"]}]
        assert data.prompts[0] == f"<system>Add.\n<user>{rows[0]['question']}\n<assistant>"
        assert data.prompts[1] == f"<system>Add.\n<user>{rows[1]['question']}\n<assistant>"
    else:
        assert chat is None and data.prompts[1] == rows[1]["question"]
    # the reward's answer_key names the answer column: the right sum scores 1, a wrong one 0
    assert isinstance(c.model.reward, NumericAnswer) and c.model.reward.answer_key == "solution"
    right, wrong = rows[1]["solution"], str(int(rows[1]["solution"]) + 1)
    samples = Samples(prompts=[rows[1]["question"]] * 2, completions=[right, wrong],
                      completion_ids=torch.zeros(2, 1, dtype=torch.long), completion_mask=torch.ones(2, 1),
                      group_index=torch.zeros(2, dtype=torch.long), metadata=[data.metadata[1]] * 2)
    assert c.model.reward(samples).rewards.tolist() == [1.0, 0.0]


def test_chat_overlay_trains_one_step(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    cli = build_cli(["fit", "--config", str(ROOT / "configs" / "grpo.yaml"), "--config",
                     str(ROOT / "configs" / "data" / "chat.yaml"), "--trainer.max_steps", "1",
                     "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2",
                     "--trainer.logger", "false", "--trainer.enable_checkpointing", "false",
                     "--trainer.enable_progress_bar", "false", "--trainer.default_root_dir", str(tmp_path)])
    assert cli.trainer.global_step == 1
    assert torch.isfinite(cli.trainer.callback_metrics["reward/total"])


def test_system_prompt_needs_a_chat_template(char_tokenizer, chat_tokenizer):
    rows = [{"prompt": "1+1=", "answer": "2"}]
    dm = PromptDataModule(source=ListSource(rows), batch_size=1, system_prompt="be brief")
    dm.connect(chat_tokenizer)
    assert dm.train_dataset().data.prompts == ["<system>be brief\n<user>1+1=\n<assistant>"]
    with pytest.raises(ValueError, match="data.init_args.system_prompt is set but prompts are not chat-templated"):
        PromptDataModule(source=ListSource(rows), batch_size=1, system_prompt="x").connect(char_tokenizer)


def test_jsonl_file_written_here_trains_through_the_console_columns(tmp_path, monkeypatch):
    # a user's own file with other column names, given on the command line only
    path = tmp_path / "mine.jsonl"
    path.write_text("".join(json.dumps({"q": f"{i}+1=", "gold": str(i + 1)}) + "\n" for i in range(4)))
    c = TrepoCLI(RLModule, PromptDataModule, subclass_mode_model=True, run=False, auto_configure_optimizers=False,
                 args=["--config", str(ROOT / "configs" / "grpo.yaml"), "--data.source.class_path",
                       "lightning_trepo.data.JsonlSource", "--data.source.init_args.path", str(path),
                       "--data.prompt_column", "q", "--data.batch_size", "2", "--data.val_source", "null"])
    c.datamodule.connect(c.model.tokenizer)
    data = c.datamodule.train_dataset().data
    assert data.prompts == ["0+1=", "1+1=", "2+1=", "3+1="] and data.metadata[3] == {"gold": "4"}
