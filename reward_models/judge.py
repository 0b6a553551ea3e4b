"""Generative judge: a local Hugging Face causal LM prompted with a template; the score is parsed."""
from __future__ import annotations

import math
import re
from typing import Any

import torch

from reward_models.base import OnError, Reward
from reward_models.hf import Dtype, chat_text, check_local_dir, freeze, load_tokenizer, resolve_dtype
from reward_models.types import RewardOutput, Samples

DEFAULT_TEMPLATE = (
    "Rate the response to the question on a scale from 0 to 10.\n\nQuestion:\n{prompt}\n\n"
    "Response:\n{completion}\n\nReply with 'Score: <number>'."
)
DEFAULT_PATTERN = r"(?i)score\s*[:=]?\s*(-?\d+(?:\.\d+)?)"


def parse_score(
    text: str, pattern: str | re.Pattern[str], low: float | None = None, high: float | None = None
) -> float | None:
    """The number in the first match of ``pattern`` (its group 1 if it has one), or None.

    With ``low`` and ``high`` set, a score outside ``[low, high]`` is None and an inside one is
    rescaled: ``(s − low) / (high − low)`` ∈ [0, 1].
    """
    regex = re.compile(pattern) if isinstance(pattern, str) else pattern
    match = regex.search(text)
    if match is None:
        return None
    try:
        value = float(match.group(1 if regex.groups else 0))
    except ValueError:
        return None
    if not math.isfinite(value):
        return None
    if low is not None and high is not None:
        if not low <= value <= high:
            return None
        return (value - low) / (high - low)
    return value


def fill_template(template: str, prompt: str, completion: str, metadata: dict[str, Any], row: int) -> str:
    """``template.format(prompt=..., completion=..., **metadata)``; a missing field names the row."""
    fields = {**metadata, "prompt": prompt, "completion": completion}
    try:
        return template.format_map(fields)
    except KeyError as err:
        raise KeyError(f"JudgeReward: template field {err} not in row {row} (fields: {sorted(fields)})") from None


class JudgeReward(Reward):
    """Score = number parsed from a local causal LM's greedy answer to ``template``.

    ``template`` may use ``{prompt}``, ``{completion}`` and any metadata field (literal braces as
    ``{{ }}``); it is sent as a user turn through the judge's chat template when it has one. An
    answer that does not parse (or falls outside ``[low, high]``) scores NaN with ``failed = 1``;
    ``last_outputs`` keeps the raw answers of the last call for inspection.
    """

    def __init__(
        self,
        path: str,
        template: str = DEFAULT_TEMPLATE,
        pattern: str = DEFAULT_PATTERN,
        low: float | None = None,
        high: float | None = None,
        max_new_tokens: int = 32,
        batch_size: int = 4,
        max_length: int = 4096,
        use_chat_template: bool = True,
        system: str | None = None,
        dtype: Dtype = "float32",
        on_error: OnError = "raise",
        timeout: float | None = None,
    ) -> None:
        """
        Args:
            path: local directory of a saved causal LM and its tokenizer.
            template: judge prompt with ``{prompt}``, ``{completion}`` and metadata fields.
            pattern: regex whose group 1 (or whole match) is the score.
            low: lowest valid score; with ``high`` the score is rescaled to [0, 1].
            high: highest valid score.
            max_new_tokens: greedy tokens generated per answer.
            batch_size: judge prompts per generate call.
            max_length: token limit of a judge prompt (left truncation).
            use_chat_template: wrap the prompt in the judge tokenizer's chat template if it has one.
            system: optional system message.
            dtype: model weights dtype.
            on_error: ``"raise"`` or ``"nan"`` (NaN + ``failed`` for the whole batch).
            timeout: seconds per call, None = no limit.
        """
        from transformers import AutoModelForCausalLM

        if (low is None) != (high is None) or (low is not None and high is not None and not low < high):
            raise ValueError(f"JudgeReward: set both low < high or neither, got low={low}, high={high}")
        self.path = check_local_dir(path, "JudgeReward")
        self.template, self.regex, self.low, self.high = template, re.compile(pattern), low, high
        self.max_new_tokens, self.batch_size, self.max_length = int(max_new_tokens), int(batch_size), int(max_length)
        self.use_chat_template, self.system = use_chat_template, system
        self.set_policy(on_error, timeout)
        self.tokenizer = load_tokenizer(self.path, padding_side="left")
        model = AutoModelForCausalLM.from_pretrained(
            self.path, local_files_only=True, dtype=resolve_dtype(dtype, "JudgeReward")
        )
        self.model = freeze(model)
        self.device = torch.device("cpu")
        self.last_outputs: list[str] = []

    def to(self, device: torch.device | str) -> JudgeReward:
        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def prompts(self, samples: Samples) -> list[str]:
        """The exact strings the judge is given."""
        out = []
        for i, (p, c, meta) in enumerate(zip(samples.prompts, samples.completions, samples.metadata, strict=True)):
            messages = [{"role": "system", "content": self.system}] if self.system else []
            messages.append({"role": "user", "content": fill_template(self.template, p, c, meta, i)})
            out.append(chat_text(self.tokenizer, messages, self.use_chat_template, add_generation_prompt=True))
        return out

    @torch.inference_mode()
    def generate(self, prompts: list[str]) -> list[str]:
        """Greedy answers, batched with left padding."""
        answers: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            enc = self.tokenizer(prompts[start : start + self.batch_size], return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length).to(self.device)
            out = self.model.generate(**enc, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      pad_token_id=self.tokenizer.pad_token_id)
            answers += self.tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        return answers

    def forward(self, samples: Samples) -> RewardOutput:
        self.last_outputs = self.generate(self.prompts(samples)) if len(samples) else []
        scores = [parse_score(text, self.regex, self.low, self.high) for text in self.last_outputs]
        rewards = torch.tensor([math.nan if s is None else s for s in scores], dtype=torch.float32)
        return RewardOutput(rewards, {"failed": torch.tensor([float(s is None) for s in scores])})
