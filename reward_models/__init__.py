"""The reward layer: response-level rewards composed from auxiliary sub-models.

Importable and useful without ``lightning_trepo``. Leaves score; combinators hold leaves; a YAML
``class_path``/``init_args`` tree is a reward graph. See docs/rewards.md.
"""
from reward_models.base import FunctionReward, Reward, RewardError
from reward_models.combinators import Affine, Clip, Gate, Guard, Max, Min, Normalize, Product, WeightedSum
from reward_models.types import RewardOutput, Samples
from reward_models.verifiers import ExactMatch, MultipleChoice, NumericAnswer, RegexMatch

__all__ = [
    "Samples", "RewardOutput", "Reward", "RewardError", "FunctionReward",
    "WeightedSum", "Product", "Gate", "Min", "Max", "Clip", "Affine", "Normalize", "Guard",
    "NumericAnswer", "ExactMatch", "RegexMatch", "MultipleChoice",
]
