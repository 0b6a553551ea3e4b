"""lightning-trepo: online RL for LLMs from response-level rewards, on PyTorch Lightning.

Names are resolved lazily (PEP 562) so ``import lightning_trepo`` and the tool subcommands
(``verify-estimators``, ``score``) start without importing Lightning or transformers.
"""
from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "REINFORCE": "lightning_trepo.modules", "RLOO": "lightning_trepo.modules", "ReMax": "lightning_trepo.modules",
    "PPO": "lightning_trepo.modules", "GRPO": "lightning_trepo.modules", "TRePO": "lightning_trepo.modules",
    "RLModule": "lightning_trepo.modules", "RolloutConfig": "lightning_trepo.modules",
    "UpdateConfig": "lightning_trepo.modules", "PromptDataModule": "lightning_trepo.data",
    "RolloutPlan": "lightning_trepo.rollout.engine", "SamplingConfig": "lightning_trepo.rollout.engine",
    "PolicyConfig": "lightning_trepo.policy", "TinyModelConfig": "lightning_trepo.policy",
    "LossOutput": "lightning_trepo.types", "Rollout": "lightning_trepo.types",
}
__all__ = list(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lightning_trepo' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
