"""FunctionReward runs TRL reward functions unchanged: TRL's own rewards and user functions written for TRL.

Expected values of TRL's functions are the outputs documented in their docstrings (trl 1.16.0).
"""
from __future__ import annotations

import asyncio
import re
import threading
from pathlib import Path

import pytest
import rm_trl_functions
import torch
import yaml
from rm_helpers import assert_close, nan

from reward_models import PROMPT_MESSAGES_KEY, FunctionReward, RewardError, Samples, TrainerState
from reward_models.config import build_reward

pytest.importorskip("trl.rewards", reason="needs the test extra: pip install 'lightning-trepo[trl]'")

REWARDS_DOC = Path(__file__).resolve().parents[2] / "docs" / "rewards.md"


def chat_samples(completions: list[str], metadata: list[dict] | None = None, ids: list[list[int]] | None = None,
                 pad: int = 0, state: TrainerState | None = None) -> Samples:
    """Samples as the trainer builds them for chat prompts: each row's metadata carries its prompt messages;
    token ids right padded with ``pad`` up to the longest, mask 1 on the real tokens."""
    n = len(completions)
    metadata = [dict(m) for m in (metadata or [{}] * n)]
    for i, row in enumerate(metadata):
        row[PROMPT_MESSAGES_KEY] = [{"role": "system", "content": "think"}, {"role": "user", "content": f"q{i}"}]
    kwargs = {}
    if ids is not None:
        width = max(len(row) for row in ids)
        kwargs["completion_ids"] = torch.tensor([row + [pad] * (width - len(row)) for row in ids])
        kwargs["completion_mask"] = torch.tensor([[1] * len(row) + [0] * (width - len(row)) for row in ids])
    return Samples(prompts=[f"q{i}" for i in range(n)], completions=completions, metadata=metadata,
                   trainer_state=state, **kwargs)


THINK = [
    "<think>\nThis is my reasoning.\n</think>\nThis is my answer.",
    "<think>\nThis is my reasoning.\nThis is my answer.",
]


def test_think_format_reward_gets_conversational_completions():
    # TRL docstring: [1.0, 0.0]. Before FunctionReward passed messages, this raised "string indices must be integers"
    assert_close(FunctionReward("trl.rewards.think_format_reward")(chat_samples(THINK)).rewards, [1, 0])
    plain = Samples(prompts=["q0", "q1"], completions=THINK)  # no chat: strings, unless forced
    assert_close(FunctionReward("trl.rewards.think_format_reward", conversational=True)(plain).rewards, [1, 0])
    with pytest.raises(
        RewardError, match=r"FunctionReward\(trl.rewards.think_format_reward\).*TypeError: string indices"
    ):
        FunctionReward("trl.rewards.think_format_reward", conversational=False)(chat_samples(THINK))


def test_accuracy_reward_with_math_verify():
    pytest.importorskip("math_verify")
    completions = [r"My answer is \boxed{\frac{1}{3}}", r"My answer is \boxed{\frac{1}{2}}", r"\boxed{1}"]
    metadata = [{"solution": r"\frac{1}{3}"}, {"solution": r"\frac{1}{3}"}, {"solution": "no math here"}]
    out = FunctionReward("trl.rewards.accuracy_reward")(chat_samples(completions, metadata))
    # TRL docstring: [1.0, 0.0]; a gold solution math-verify cannot parse -> None -> NaN ("does not apply")
    assert_close(out.rewards, [1, 0, nan])


def test_soft_overlong_punishment_factory_counts_real_tokens_only():
    reward = FunctionReward("trl.rewards.get_soft_overlong_punishment",
                            factory_args={"max_completion_len": 100, "soft_punish_cache": 20})
    # lengths 90, 70, 100, 101 padded to 101 with mask: (80 - 90) / 20 = -0.5 (TRL docstring), 70 <= 80 -> 0,
    # (80 - 100) / 20 = -1, 101 > 100 -> -1. Padding counted would give -1 for all four.
    ids = [[1] * 90, [1] * 70, [1] * 100, [1] * 101]
    assert_close(reward(chat_samples(["a", "b", "c", "d"], ids=ids)).rewards, [-0.5, 0, -1, -1])


def test_repetition_penalty_factory_from_yaml():
    reward = build_reward(yaml.safe_load("""
        class_path: reward_models.FunctionReward
        init_args:
          fn: trl.rewards.get_repetition_penalty_reward
          factory_args: {ngram_size: 2, max_penalty: -1.0}
    """))
    # TRL docstring: [[1, 2, 3, 4], [5, 5, 5, 5, 5]] -> [0.0, -0.75] (4 bigrams, 1 distinct: 1 - 1/4).
    # Padded with 3 to width 6 the first row would read 1,2,3,4,3,3 (a repeated bigram) if padding leaked.
    assert_close(reward(chat_samples(["a", "b"], ids=[[1, 2, 3, 4], [5, 5, 5, 5, 5]], pad=3)).rewards, [0, -0.75])


def test_cosine_scaled_reward_factory():
    pytest.importorskip("math_verify")
    reward = FunctionReward("trl.rewards.get_cosine_scaled_reward", factory_args={"max_len": 100})
    samples = chat_samples([r"\boxed{\frac{1}{3}}", r"\boxed{\frac{1}{2}}"], [{"solution": r"\frac{1}{3}"}] * 2,
                           ids=[[1] * 50, [1] * 50])
    # TRL docstring: half of max_len -> cos(pi/2) = 0 -> midpoints 0.75 (correct) and -0.75 (wrong)
    assert_close(reward(samples).rewards, [0.75, -0.75])


def test_factory_errors_name_the_factory():
    with pytest.raises(ValueError, match=r"factory 'trl.rewards.get_repetition_penalty_reward'.*max_penalty 1.0"):
        FunctionReward("trl.rewards.get_repetition_penalty_reward", factory_args={"max_penalty": 1.0})
    with pytest.raises(TypeError, match="returned int, not a function"):
        FunctionReward("rm_trl_functions.not_a_function_factory", factory_args={})


def test_function_gets_every_trl_argument():
    rm_trl_functions.CALLS.clear()
    samples = chat_samples(["x", "yz"], [{"solution": "1", "level": 3}, {"solution": "2"}], ids=[[7, 8], [9, 9, 9]],
                           state=TrainerState(global_step=5, epoch=1, max_steps=10))
    out = FunctionReward("rm_trl_functions.record")(samples)
    assert_close(out.rewards, [2 + 5, 3 + 5])  # len(completion_ids) + global_step
    (call,) = rm_trl_functions.CALLS
    assert call["prompts"] == [samples.prompt_messages[0], samples.prompt_messages[1]]
    assert call["completions"] == [[{"role": "assistant", "content": "x"}], [{"role": "assistant", "content": "yz"}]]
    assert call["completion_ids"] == [[7, 8], [9, 9, 9]]
    assert call["solution"] == ["1", "2"] and call["level"] == [3, None]  # every column, None where absent
    assert PROMPT_MESSAGES_KEY not in call  # the chat is the prompt, not a column
    assert (call["trainer_state"].global_step, call["trainer_state"].epoch, call["trainer_state"].max_steps) == (
        5,
        1,
        10,
    )
    assert callable(call["log_extra"]) and callable(call["log_metric"])


def test_plain_prompts_stay_strings_and_state_defaults_outside_training():
    rm_trl_functions.CALLS.clear()
    samples = Samples(prompts=["a", "b"], completions=["c", "d"], completion_ids=torch.tensor([[4, 0], [5, 6]]),
                      completion_mask=torch.tensor([[1, 0], [1, 1]]))
    assert_close(FunctionReward("rm_trl_functions.record")(samples).rewards, [1, 2])  # step 0 outside training
    assert rm_trl_functions.CALLS[0]["prompts"] == ["a", "b"] and rm_trl_functions.CALLS[0]["completions"] == ["c", "d"]
    forced = FunctionReward("rm_trl_functions.record", conversational=True)
    forced(samples)
    assert rm_trl_functions.CALLS[1]["prompts"] == [
        [{"role": "user", "content": "a"}],
        [{"role": "user", "content": "b"}],
    ]


def test_trainer_state_without_kwargs_signature():
    reward = FunctionReward("rm_trl_functions.warmup_weighted", kwargs={"warmup_steps": 4})
    samples = Samples(prompts=["p"], completions=["c"], trainer_state=TrainerState(global_step=1))
    assert_close(reward(samples).rewards, [0.25])  # min(1, 1 / 4)
    samples.trainer_state = TrainerState(global_step=9)
    assert_close(reward(samples).rewards, [1.0])


def test_completion_ids_required_but_absent_is_a_clear_error():
    with pytest.raises(RewardError, match="takes completion_ids but these samples carry no token ids"):
        FunctionReward("rm_trl_functions.record")(Samples(prompts=["p"], completions=["c"]))


def test_async_functions_are_awaited():
    samples = Samples(prompts=["p", "p"], completions=["abc", "de"])
    assert_close(FunctionReward("rm_trl_functions.async_length")(samples).rewards, [3, 2])
    assert_close(FunctionReward("rm_trl_functions.AsyncCallable", factory_args={})(samples).rewards, [-1, -1])

    async def inside_a_running_loop():  # e.g. a reward scored from async server code
        return FunctionReward("rm_trl_functions.async_length")(samples)

    assert_close(asyncio.run(inside_a_running_loop()).rewards, [3, 2])


def test_log_metric_becomes_a_metric_of_the_node():
    out = FunctionReward("rm_trl_functions.with_metric")(Samples(prompts=["p"] * 3, completions=["a", "b", "c"]))
    assert_close(out.metrics["seen"], [3, 3, 3])


def test_docs_trl_example_builds_and_scores():
    """The YAML of docs/rewards.md's "Bring your TRL reward functions" section."""
    pytest.importorskip("math_verify")
    text = REWARDS_DOC.read_text()
    section = text[text.index("## Bring your TRL reward functions"):]
    block = re.search(r"```yaml\n(.*?)```", section, re.DOTALL).group(1)
    reward = build_reward(yaml.safe_load(block))
    completions = ["<think>\nok\n</think>\n\\boxed{4}", "no think \\boxed{4}"]
    samples = chat_samples(completions, [{"solution": "4"}] * 2, ids=[[1] * 10, [1] * 10])
    out = reward(samples)
    assert_close(out.metrics["format"], [1, 0])  # the second has no <think> block
    assert_close(out.metrics["accuracy"], [1, 1])  # \boxed{4} against solution 4
    assert_close(out.metrics["overlong"], [0, 0])  # 10 tokens <= 512 - 128


def test_trainer_state_and_chat_travel_to_a_remote_reward():
    from reward_models.remote import RemoteReward, RewardServer

    rm_trl_functions.CALLS.clear()
    srv = RewardServer(FunctionReward("rm_trl_functions.record"), "127.0.0.1", 0)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        samples = chat_samples(["x", "yz"], ids=[[7, 8], [9, 9, 9]], state=TrainerState(global_step=4, epoch=2))
        out = RemoteReward(srv.url)(samples)
    finally:
        srv.shutdown()
        srv.server_close()
    assert_close(out.rewards, [2 + 4, 3 + 4])  # len(completion_ids) + global_step, computed on the server
    (call,) = rm_trl_functions.CALLS
    assert call["prompts"] == samples.prompt_messages and call["trainer_state"].epoch == 2
