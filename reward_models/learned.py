"""Learned reward model: a local Hugging Face sequence classifier, frozen, batched."""
from __future__ import annotations

import torch
from torch import Tensor

from reward_models.base import OnError, Reward
from reward_models.hf import Dtype, chat_text, check_local_dir, freeze, load_tokenizer, resolve_dtype
from reward_models.types import Samples


class LearnedReward(Reward):
    """``r = logits[label_index]`` of ``AutoModelForSequenceClassification`` on (prompt, completion).

    The text is the RM tokenizer's own chat template over ``[user: prompt, assistant: completion]``
    when it has one (``use_chat_template``), else ``prompt + completion``; ``Samples.prompts`` should
    hold the raw prompt text, not a policy-templated string. Inputs longer than ``max_length`` are
    truncated on the left (the response end is kept). The model is frozen (eval, no grad) and runs
    on the device given by :meth:`to` (the trainer passes the policy's device).
    """

    def __init__(
        self,
        path: str,
        batch_size: int = 8,
        max_length: int = 2048,
        use_chat_template: bool = True,
        label_index: int = 0,
        dtype: Dtype = "float32",
        on_error: OnError = "raise",
        timeout: float | None = None,
    ) -> None:
        """
        Args:
            path: local directory of a saved sequence-classification model and its tokenizer.
            batch_size: texts per forward pass.
            max_length: token limit per text (left truncation).
            use_chat_template: build the text with the RM tokenizer's chat template if it has one.
            label_index: which logit is the reward (0 for a one-label RM).
            dtype: model weights dtype.
            on_error: ``"raise"`` or ``"nan"`` (NaN + ``failed`` metric).
            timeout: seconds per call, None = no limit.
        """
        from transformers import AutoModelForSequenceClassification

        self.path = check_local_dir(path, "LearnedReward")
        if batch_size < 1:
            raise ValueError(f"LearnedReward: batch_size must be >= 1, got {batch_size}")
        self.batch_size, self.max_length, self.use_chat_template = int(batch_size), int(max_length), use_chat_template
        self.set_policy(on_error, timeout)
        self.tokenizer = load_tokenizer(self.path, padding_side="right")
        model = AutoModelForSequenceClassification.from_pretrained(
            self.path, local_files_only=True, dtype=resolve_dtype(dtype, "LearnedReward")
        )
        if model.config.pad_token_id is None:
            model.config.pad_token_id = self.tokenizer.pad_token_id
        if not 0 <= label_index < model.config.num_labels:
            raise ValueError(
                f"LearnedReward: label_index {label_index} out of range for {model.config.num_labels} labels"
            )
        self.label_index = label_index
        self.model = freeze(model)
        self.device = torch.device("cpu")

    def to(self, device: torch.device | str) -> LearnedReward:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def texts(self, samples: Samples) -> list[str]:
        """The exact strings the RM scores."""
        return [
            chat_text(self.tokenizer, [{"role": "user", "content": p}, {"role": "assistant", "content": c}],
                      self.use_chat_template, add_generation_prompt=False)
            for p, c in zip(samples.prompts, samples.completions, strict=True)
        ]

    @torch.inference_mode()
    def score(self, samples: Samples) -> Tensor:
        # an empty text would be a zero-token input: score the pad token instead
        texts, out = [t or self.tokenizer.pad_token for t in self.texts(samples)], []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length)
            logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits
            out.append(logits[:, self.label_index].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
