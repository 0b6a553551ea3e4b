"""What a checkpoint of a LoRA policy carries: the hyper-parameters that rebuild the module, and the adapters
without the frozen base (``RLModule``'s checkpoint hooks call these). A single-file checkpoint of a LoRA policy
holds the trainable parameters only; the frozen base is rebuilt from ``policy.model_path`` on load.
"""
from __future__ import annotations

from typing import Any

from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

from lightning_trepo.policy.models import is_lora

BASE_OMITTED = "lora_frozen_base_omitted"
"""Checkpoint key: True when the frozen base weights of a LoRA policy were left out of ``state_dict``."""


def hparams_ignore() -> list[str]:
    """What ``save_hyperparameters`` leaves out. Under LightningCLI the hyper-parameters are the parsed config, where
    the reward tree and the optimizer are plain ``class_path``/``init_args`` dicts: keep them, so the checkpoint
    rebuilds the module by itself. Built in Python they are live objects: leave them out (pass ``reward=`` again)."""
    return [] if _given_hyperparameters.get() is not None else ["reward", "optimizer", "environment"]


def _frozen_policy_keys(module: Any) -> set[str]:
    return {f"policy.{name}" for name, p in module.policy.named_parameters(remove_duplicate=False)
            if not p.requires_grad}


def drop_frozen_base(module: Any, checkpoint: dict[str, Any]) -> None:
    """``on_save_checkpoint``: a LoRA policy's frozen base weights stay out of a single-file checkpoint
    (sharded FSDP2 / ZeRO-3 checkpoints are left whole: their loaders expect every key)."""
    state = checkpoint.get("state_dict")
    sharded = module._params_sharded() or module.device_mesh is not None  # ModelParallelStrategy, even on 1 device
    if module.policy is None or not is_lora(module.policy) or state is None or sharded:
        return
    for key in _frozen_policy_keys(module):
        state.pop(key, None)
    checkpoint[BASE_OMITTED] = True


def restore_frozen_base(module: Any, checkpoint: dict[str, Any]) -> None:
    """``on_load_checkpoint``: fill the omitted base weights from the policy just built from ``policy.model_path``,
    and keep the saved config entries (reward tree, optimizer, class path) so a re-saved checkpoint has them too."""
    saved = checkpoint.get("hyper_parameters") or {}
    for key in ("reward", "optimizer", "_class_path", "_instantiator"):
        if key not in module.hparams and isinstance(saved.get(key), (dict, str)):
            module.hparams[key] = saved[key]
    state = checkpoint.get("state_dict")
    if not checkpoint.get(BASE_OMITTED) or state is None:
        return
    if module.policy is None or not is_lora(module.policy):
        raise ValueError("checkpoint holds LoRA adapters only (its frozen base was omitted) but the module's policy "
                         "has no LoRA adapters: keep model.init_args.policy.lora as it was in training")
    current = module.state_dict()
    for key in _frozen_policy_keys(module):
        state.setdefault(key, current[key])
