"""lightning-trepo: online RL for LLMs from response-level rewards, on PyTorch Lightning."""
from lightning_trepo.data import PromptDataModule
from lightning_trepo.modules import GRPO, PPO, REINFORCE, RLOO, ReMax, RLModule, TRePO, RolloutConfig, UpdateConfig
from lightning_trepo.rollout.engine import RolloutPlan, SamplingConfig
from lightning_trepo.rollout.policy import PolicyConfig, TinyModelConfig
from lightning_trepo.types import LossOutput, Rollout

__all__ = [
    "REINFORCE", "RLOO", "ReMax", "PPO",
    "GRPO", "TRePO", "RLModule", "PromptDataModule", "RolloutConfig", "UpdateConfig", "RolloutPlan", "SamplingConfig",
    "PolicyConfig", "TinyModelConfig", "LossOutput", "Rollout",
]
__version__ = "0.1.0"
