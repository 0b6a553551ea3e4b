"""One thin LightningModule per algorithm over the shared RLModule."""
from lightning_trepo.modules.base import RLModule, RolloutConfig, UpdateConfig
from lightning_trepo.modules.grpo import GRPO

__all__ = ["RLModule", "RolloutConfig", "UpdateConfig", "GRPO"]
