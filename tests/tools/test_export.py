"""Export to Hugging Face and self-contained checkpoints: a short fit, then the exported directory (or the
checkpoint) reloads with no lightning-trepo argument and computes exactly the trained policy's logits."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from torch import nn

from lightning_trepo import GRPO, UpdateConfig
from lightning_trepo.cli.main import build_cli, main
from lightning_trepo.policy import LoraConfig, PolicyConfig, load_policy
from lightning_trepo.policy.lora_checkpoint import BASE_OMITTED
from lightning_trepo.tools.export import export_checkpoint, find_checkpoint
from reward_models import FunctionReward, NumericAnswer
from tests.helpers import TINY, datamodule, rollout_cfg, trainer

ROOT = Path(__file__).resolve().parents[2]
REWARD = "tests.modules.rewards.length_reward"
LORA = LoraConfig(r=4, alpha=8.0, target_modules=["c_attn", "c_fc"])
IDS = torch.tensor([[5, 6, 7, 8, 9, 10, 11], [12, 13, 3, 40, 41, 42, 43]])


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


def fit(tmp_path: Path, policy: PolicyConfig = TINY) -> tuple[GRPO, Path]:
    """Two SGD steps with a large lr (so the weights move far from the base), then a saved checkpoint."""
    torch.manual_seed(0)
    module = GRPO(reward=FunctionReward(REWARD), policy=policy, rollout=rollout_cfg(group_size=4, max_new_tokens=5),
                  update=UpdateConfig(aggregation="seq_mean_token_mean"),
                  optimizer=lambda p: torch.optim.SGD(p, lr=1.0))
    t = trainer(tmp_path, max_steps=2)
    t.fit(module, datamodule=datamodule(batch_size=2))
    t.save_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
    return module.eval(), tmp_path / "run" / "checkpoints" / "last.ckpt"


def saved_base(tmp_path: Path) -> PolicyConfig:
    """The tiny model saved as a local HF directory: the base a LoRA adapter is loaded onto."""
    model, tok = load_policy(TINY)
    model.save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    return dataclasses.replace(TINY, model_path=str(tmp_path / "base"), lora=LORA)


def test_full_finetune_export_reloads_with_transformers_and_matches_the_trained_logits(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    module, ckpt = fit(tmp_path)
    fresh, _ = load_policy(TINY)
    assert (logits(module.policy) - logits(fresh)).abs().max() > 1e-3  # training moved the weights
    out = export_checkpoint(tmp_path / "run", tmp_path / "hf")  # a run directory: its last.ckpt
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json"} <= set(
        p.name for p in out.iterdir())
    hf = AutoModelForCausalLM.from_pretrained(out)
    torch.testing.assert_close(logits(hf), logits(module.policy), rtol=0, atol=1e-6)
    tok = AutoTokenizer.from_pretrained(out)
    assert tok("12+34=")["input_ids"] == module.tokenizer("12+34=")["input_ids"]
    assert hf.generation_config.eos_token_id == module.tokenizer.eos_token_id == 1


def test_lora_checkpoint_holds_the_adapters_not_the_base_and_reloads(tmp_path):
    policy = dataclasses.replace(TINY, lora=LORA)
    module, ckpt = fit(tmp_path, policy)
    checkpoint = torch.load(ckpt, weights_only=False)
    policy_keys = [k for k in checkpoint["state_dict"] if k.startswith("policy.")]
    assert checkpoint[BASE_OMITTED] and policy_keys and all("lora_" in k for k in policy_keys)
    # c_attn and c_fc of 1 layer, each with lora_A and lora_B: 4 tensors; the 1-layer base has ~17 more
    assert len(policy_keys) == 4
    reloaded = GRPO.load_from_checkpoint(ckpt, reward=FunctionReward(REWARD)).eval()
    torch.testing.assert_close(logits(reloaded.policy), logits(module.policy), rtol=0, atol=0)


def test_lora_export_merged_and_adapter_only_both_match_the_trained_policy(tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    module, ckpt = fit(tmp_path, saved_base(tmp_path))
    trained = logits(module.policy)
    merged = AutoModelForCausalLM.from_pretrained(export_checkpoint(ckpt, tmp_path / "merged"))
    assert not any("lora" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), trained, rtol=1e-5, atol=1e-5)  # merge = W + BA*s: float rounding
    out = export_checkpoint(ckpt, tmp_path / "adapter", adapter_only=True)
    assert (out / "adapter_model.safetensors").is_file() and not (out / "model.safetensors").exists()
    base = AutoModelForCausalLM.from_pretrained(tmp_path / "base")
    adapted = PeftModel.from_pretrained(base, out).eval()
    torch.testing.assert_close(logits(adapted), trained, rtol=0, atol=1e-6)


def test_export_errors_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="holds no"):
        find_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="nope.ckpt"):
        find_checkpoint(tmp_path / "nope.ckpt")
    _, ckpt = fit(tmp_path)
    with pytest.raises(ValueError, match="adapter-only.*LoRA"):
        export_checkpoint(ckpt, tmp_path / "out", adapter_only=True)


def test_cli_fit_writes_the_export_and_its_checkpoint_reloads_without_arguments(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    monkeypatch.chdir(tmp_path)
    chat_tokenizer = ROOT / "examples" / "chat-tokenizer"  # the shipped tiny tokenizer + a chat template
    cli = build_cli(["fit", "--config", str(ROOT / "configs" / "grpo.yaml"), "--trainer.max_steps", "2",
                     "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2",
                     "--model.init_args.policy.tokenizer_path", str(chat_tokenizer),
                     "--trainer.enable_progress_bar", "false", "--export.dir", str(tmp_path / "hf")])
    trained = logits(cli.model.policy.eval())
    hf = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    torch.testing.assert_close(logits(hf), trained, rtol=0, atol=1e-6)
    template = AutoTokenizer.from_pretrained(chat_tokenizer).chat_template
    assert template and AutoTokenizer.from_pretrained(tmp_path / "hf").chat_template == template
    ckpt = find_checkpoint(tmp_path / "runs")
    reloaded = GRPO.load_from_checkpoint(ckpt)  # no reward=: the checkpoint carries the reward tree's config
    assert isinstance(reloaded.reward, NumericAnswer) and reloaded.reward.answer_key == "answer"
    assert reloaded.rollout_cfg.group_size == 2 and reloaded.hparams["optimizer"]["init_args"]["lr"] == 0.0002
    torch.testing.assert_close(logits(reloaded.policy.eval()), trained, rtol=0, atol=0)
    with pytest.raises(SystemExit) as exit_code:  # the console command, from the run directory
        main(["export", str(tmp_path / "runs"), str(tmp_path / "hf2")])
    assert exit_code.value.code == 0
    hf2 = AutoModelForCausalLM.from_pretrained(tmp_path / "hf2")
    torch.testing.assert_close(logits(hf2), trained, rtol=0, atol=1e-6)


def test_cli_lora_checkpoint_reloads_without_arguments(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cli = build_cli(["fit", "--config", str(ROOT / "configs" / "grpo.yaml"), "--trainer.max_steps", "1",
                     "--model.init_args.rollout.group_size", "2", "--data.batch_size", "2",
                     "--model.init_args.policy.lora.r", "2", "--model.init_args.policy.lora.target_modules", "[c_attn]",
                     "--trainer.enable_progress_bar", "false"])
    ckpt = find_checkpoint(tmp_path / "runs")
    assert all("lora_" in k for k in torch.load(ckpt, weights_only=False)["state_dict"] if k.startswith("policy."))
    reloaded = GRPO.load_from_checkpoint(ckpt).eval()  # base from policy.model_path (builtin:tiny-arith)
    assert reloaded.policy_cfg.lora.r == 2
    torch.testing.assert_close(logits(reloaded.policy), logits(cli.model.policy.eval()), rtol=0, atol=0)
