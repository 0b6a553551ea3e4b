"""The reward layer: response-level rewards composed from auxiliary sub-models.

Importable and useful without ``lightning_trepo``. Leaves score; combinators hold leaves; a YAML
``class_path``/``init_args`` tree is a reward graph. See docs/rewards.md.
"""
from reward_models.base import FunctionReward, Reward, RewardError
from reward_models.combinators import Affine, Clip, FillNaN, Gate, Guard, Max, Min, Normalize, Product, WeightedSum
from reward_models.types import PROMPT_MESSAGES_KEY, RewardOutput, Samples, TrainerState
from reward_models.verifiers import ExactMatch, MultipleChoice, NumericAnswer, RegexMatch

__all__ = [
    "Samples", "RewardOutput", "TrainerState", "PROMPT_MESSAGES_KEY", "Reward", "RewardError", "FunctionReward",
    "WeightedSum", "Product", "Gate", "Min", "Max", "Clip", "Affine", "Normalize", "Guard", "FillNaN",
    "NumericAnswer", "ExactMatch", "RegexMatch", "MultipleChoice",
]

# Leaves that need only the standard library and torch are exported here; model-backed and
# process-backed leaves are imported lazily (no transformers import for a verifier-only tree).
from reward_models.format import JsonFormat, RegexFormat, TagFormat  # noqa: E402
from reward_models.length import LengthPenalty, OverlongPenalty, RepetitionPenalty  # noqa: E402

_LAZY = {"LearnedReward": "reward_models.learned", "JudgeReward": "reward_models.judge",
         "CodeExecution": "reward_models.code", "RemoteReward": "reward_models.remote",
         "MathVerify": "reward_models.mathverify"}
__all__ += ["RegexFormat", "TagFormat", "JsonFormat", "LengthPenalty", "OverlongPenalty", "RepetitionPenalty", *_LAZY]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'reward_models' has no attribute {name!r}")
