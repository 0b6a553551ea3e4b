"""One thin LightningModule per algorithm over the shared RLModule."""
from lightning_trepo.modules.base import RLModule, RolloutConfig, UpdateConfig
from lightning_trepo.modules.grpo import GRPO
from lightning_trepo.modules.ppo import PPO
from lightning_trepo.modules.reinforce import REINFORCE
from lightning_trepo.modules.remax import ReMax
from lightning_trepo.modules.rloo import RLOO
from lightning_trepo.modules.trepo import TRePO

__all__ = ["RLModule", "RolloutConfig", "UpdateConfig", "GRPO", "PPO", "REINFORCE", "ReMax", "RLOO", "TRePO"]
