"""Out to Hugging Face: a trained policy as a ``save_pretrained`` directory, and what checkpoints carry to reload.

    lightning-trepo export runs/lightning_trepo/version_0 out/my-policy            # merged weights
    lightning-trepo export runs/.../checkpoints/last.ckpt out/adapter --adapter-only  # PEFT adapter only

The directory holds safetensors weights, ``config.json``, ``generation_config.json``, the tokenizer and its chat
template, so ``AutoModelForCausalLM.from_pretrained(out)`` (or ``peft.AutoPeftModelForCausalLM`` for an adapter)
loads it with no lightning-trepo installed. ``fit`` writes the same directory at the end of training when the
config sets ``export.dir``.

Checkpoints: under LightningCLI the module's hyper-parameters are the parsed config (the reward tree's
``class_path``/``init_args`` included), so ``GRPO.load_from_checkpoint(path)`` needs no arguments. With LoRA a
single-file checkpoint holds the trainable parameters only; the frozen base is rebuilt from ``policy.model_path``.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lightning_trepo.policy import LoraConfig, PolicyConfig, TinyModelConfig, is_lora, load_policy
from lightning_trepo.policy.lora_checkpoint import BASE_OMITTED


@dataclasses.dataclass
class ExportConfig:
    """``export:`` in a fit config: write the trained policy as a Hugging Face directory when fit ends."""

    dir: str | None = None
    """Output directory (created; existing files are overwritten); None = no export."""
    adapter_only: bool = False
    """LoRA: save the PEFT adapter (``adapter_model.safetensors``) instead of weights merged into the base."""


# ---------------------------------------------------------------------------------------------- checkpoint hooks
# ---------------------------------------------------------------------------------------------- reading checkpoints
def find_checkpoint(path: str | Path) -> Path:
    """A ``.ckpt`` file or sharded checkpoint directory as is; a run directory -> its newest ``last*.ckpt``
    (else its newest ``*.ckpt``)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {str(path)!r} does not exist")
    if path.is_file() or _is_sharded_dir(path):
        return path
    found = sorted(path.rglob("last*.ckpt"), key=lambda p: p.stat().st_mtime) or \
        sorted(path.rglob("*.ckpt"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"{str(path)!r} holds no *.ckpt checkpoint (looked recursively for last.ckpt first)")
    return found[-1]


def _is_sharded_dir(path: Path) -> bool:
    return path.is_dir() and ((path / "meta.pt").is_file() or (path / "latest").is_file()
                              or (path / "checkpoint").is_dir())


def load_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint as one dict with a full ``state_dict``: a single file, a ModelParallelStrategy (FSDP2)
    distributed-checkpoint directory, or a DeepSpeed directory (consolidated to fp32 with DeepSpeed's own tool)."""
    import lightning_trepo.modules.config  # noqa: F401  (allows the config dataclasses under weights_only loads)

    if path.is_file():
        return torch.load(path, map_location="cpu", weights_only=False)
    if (path / "meta.pt").is_file():  # ModelParallelStrategy (FSDP2): torch.distributed.checkpoint shards + meta.pt
        from lightning.fabric.utilities.load import _load_distributed_checkpoint

        return _load_distributed_checkpoint(path)  # the full state_dict and meta.pt's entries, on the CPU
    import tempfile

    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    with tempfile.TemporaryDirectory() as tmp:  # DeepSpeed ZeRO-2/3: consolidated to fp32 by DeepSpeed's tool
        return convert_zero_checkpoint_to_fp32_state_dict(str(path), str(Path(tmp) / "consolidated.pt"))


def policy_config(hparams: dict[str, Any], source: str) -> PolicyConfig:
    """``policy`` of the checkpoint's hyper-parameters (a dataclass, or the plain dict LightningCLI saved)."""
    cfg = hparams.get("policy", PolicyConfig())
    if isinstance(cfg, dict):
        fields = {f.name for f in dataclasses.fields(PolicyConfig)}
        unknown = sorted(set(cfg) - fields)
        if unknown:
            raise ValueError(f"{source}: hyper-parameter policy has unknown keys {unknown}")
        cfg = dict(cfg)
        cfg["tiny"] = TinyModelConfig(**cfg.get("tiny") or {})
        cfg["lora"] = LoraConfig(**cfg["lora"]) if cfg.get("lora") else None
        cfg = PolicyConfig(**cfg)
    if not isinstance(cfg, PolicyConfig):
        raise ValueError(f"{source}: hyper-parameter policy is a {type(cfg).__name__}, expected a PolicyConfig")
    return dataclasses.replace(cfg, gradient_checkpointing=False)


def policy_from_checkpoint(path: str | Path) -> tuple[nn.Module, Any, PolicyConfig]:
    """``(policy, tokenizer, policy config)`` with the checkpoint's trained weights (LoRA: still a PEFT model)."""
    ckpt = find_checkpoint(path)
    checkpoint = load_checkpoint(ckpt)
    cfg = policy_config(checkpoint.get("hyper_parameters", {}), str(ckpt))
    model, tokenizer = load_policy(cfg)
    state = {k.removeprefix("policy."): v for k, v in checkpoint["state_dict"].items() if k.startswith("policy.")}
    if not state:
        raise ValueError(f"{ckpt}: its state_dict holds no policy.* weights")
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = {n for n, p in model.named_parameters(remove_duplicate=False) if not p.requires_grad}
    allowed = frozen if checkpoint.get(BASE_OMITTED) else set()
    bad_missing = [k for k in missing if k not in allowed]
    if bad_missing or unexpected:
        raise ValueError(f"{ckpt}: policy weights do not match policy config {cfg.model_path or 'tiny'} "
                         f"(missing {bad_missing[:5]}, unexpected {list(unexpected)[:5]})")
    return model.eval(), tokenizer, cfg


# ---------------------------------------------------------------------------------------------- writing
def save_hf(model: nn.Module, tokenizer: Any, out_dir: str | Path, adapter_only: bool = False,
            base_path: str | None = None) -> Path:
    """Write ``model`` (merging LoRA adapters unless ``adapter_only``) and ``tokenizer`` with ``save_pretrained``.
    ``model`` is changed in place when merged: pass a copy of a model that is still in use."""
    out = Path(out_dir).expanduser()
    if adapter_only and not is_lora(model):
        raise ValueError("export --adapter-only / export.adapter_only needs a LoRA policy (policy.lora is None)")
    if adapter_only and base_path is None:
        raise ValueError("export --adapter-only: the policy was the random built-in model (policy.model_path: null), "
                         "so there is no base directory an adapter could be loaded onto; export merged weights")
    if adapter_only:
        for cfg in model.peft_config.values():
            cfg.base_model_name_or_path = base_path
    elif is_lora(model):
        model = model.merge_and_unload()
    _align_generation_config(model, tokenizer)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
    return out


def _align_generation_config(model: nn.Module, tokenizer: Any) -> None:
    """EOS / pad ids of the generation config and model config follow the tokenizer training used."""
    for cfg in (getattr(model, "generation_config", None), getattr(model, "config", None)):
        if cfg is None:
            continue
        cfg.eos_token_id = tokenizer.eos_token_id
        cfg.pad_token_id = tokenizer.pad_token_id


def _base_path(cfg: PolicyConfig) -> str | None:
    from lightning_trepo.policy import resolve_model_path

    return str(Path(resolve_model_path(cfg.model_path)).resolve()) if cfg.model_path else None


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, adapter_only: bool = False) -> Path:
    """A checkpoint file, sharded checkpoint directory or run directory -> a Hugging Face directory."""
    ckpt = find_checkpoint(checkpoint)
    model, tokenizer, cfg = policy_from_checkpoint(ckpt)
    return save_hf(model, tokenizer, out_dir, adapter_only, _base_path(cfg))


def export_module(module: Any, out_dir: str | Path, adapter_only: bool = False) -> Path:
    """The live (unsharded) policy of a trained module -> a Hugging Face directory (LoRA is merged in a copy)."""
    if module.policy is None:
        raise ValueError("export: the module has no policy yet (it is built by configure_model)")
    model = copy.deepcopy(module.policy) if is_lora(module.policy) and not adapter_only else module.policy
    return save_hf(model, module.tokenizer, out_dir, adapter_only, _base_path(module.policy_cfg))


def export_trained(trainer: Any, module: Any, out_dir: str | Path, adapter_only: bool = False) -> Path | None:
    """``export.dir`` after fit, on rank 0: the live policy, or for a sharded one (FSDP2 / ZeRO-3) the ``last.ckpt``
    directory SaveOnTrainEnd just wrote (its save ends once every rank's shard is on disk)."""
    if not module._params_sharded():
        return export_module(module, out_dir, adapter_only) if trainer.is_global_zero else None
    callback = trainer.checkpoint_callback
    if callback is None or callback.dirpath is None:
        raise RuntimeError("export.dir: a sharded policy (FSDP2 / ZeRO-3) is exported from its last.ckpt, but "
                           "checkpointing is off (trainer.enable_checkpointing: false)")
    if not trainer.is_global_zero:
        return None
    return export_checkpoint(Path(callback.dirpath) / "last.ckpt", out_dir, adapter_only)


def export_main(argv: list[str] | None = None) -> int:
    """``lightning-trepo export CHECKPOINT OUT_DIR [--adapter-only]``."""
    parser = argparse.ArgumentParser(
        prog="lightning-trepo export",
        description="Write a trained policy as a Hugging Face save_pretrained directory (safetensors weights, "
                    "config, generation config, tokenizer and chat template); LoRA adapters are merged unless "
                    "--adapter-only.")
    parser.add_argument("checkpoint", help="a .ckpt file, a sharded checkpoint directory (FSDP2 / DeepSpeed), or a "
                                           "run directory (its newest last.ckpt is used)")
    parser.add_argument("out_dir", help="output directory (created)")
    parser.add_argument("--adapter-only", action="store_true",
                        help="LoRA: save the PEFT adapter (loads with peft.AutoPeftModelForCausalLM) instead of "
                             "merged weights")
    args = parser.parse_args(argv)
    ckpt = find_checkpoint(args.checkpoint)
    out = export_checkpoint(ckpt, args.out_dir, args.adapter_only)
    print(f"exported {ckpt} -> {out}")
    return 0
