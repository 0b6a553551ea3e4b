"""The policy: which model to train and how it is loaded (a local Hugging Face causal LM, or the built-in tiny
character model), its tokenizer, and LoRA adapters. Token log-probs of a policy live in
:mod:`lightning_trepo.rollout.logprobs`."""
from lightning_trepo.policy.models import (
    ASSETS,
    AdapterDisabled,
    LoraConfig,
    PolicyConfig,
    TinyModelConfig,
    apply_lora,
    build_char_tokenizer,
    build_tiny_model,
    is_lora,
    load_policy,
    load_tokenizer,
    resolve_model_path,
)

__all__ = [
    "ASSETS",
    "AdapterDisabled",
    "LoraConfig",
    "PolicyConfig",
    "TinyModelConfig",
    "apply_lora",
    "build_char_tokenizer",
    "build_tiny_model",
    "is_lora",
    "load_policy",
    "load_tokenizer",
    "resolve_model_path",
]
