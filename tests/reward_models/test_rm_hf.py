"""Learned RM and judge with tiny hand-weighted models saved to tmp_path."""
import math

import pytest
import torch
from rm_helpers import assert_close, nan, samples
from rm_tiny_hf import save_bang_rm, save_parrot_lm, save_random_rm

from reward_models import RewardError
from reward_models.judge import JudgeReward, fill_template, parse_score
from reward_models.learned import LearnedReward

BANG = 1 / math.sqrt(0.5 + 1e-5)  # LayerNorm of [1, -1, 0, 0]: mean 0, var 2/4, GPT-2 eps 1e-5


@pytest.fixture(scope="module")
def bang_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("bang_rm")
    save_bang_rm(path)
    return path


def test_learned_reward_scores_last_real_token(bang_dir):
    rm = LearnedReward(str(bang_dir), batch_size=2)
    s = samples(["wow!", "no", "a much longer completion!", "", "!?"], prompts=["q: "] * 5)
    # text = prompt + completion (no chat template); the score reads the last non-pad token,
    # so right padding in a batch of mixed lengths does not matter
    assert_close(rm(s).rewards, [BANG, 0, BANG, 0, 0], atol=1e-5)
    assert all(not p.requires_grad for p in rm.model.parameters()) and not rm.model.training


def test_learned_reward_uses_chat_template(tmp_path):
    template = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    save_bang_rm(tmp_path, chat_template=template)
    rm = LearnedReward(str(tmp_path))
    s = samples(["hi!"], prompts=["q"])
    assert rm.texts(s) == ["<user>q<assistant>hi!"]
    assert_close(rm(s).rewards, [BANG], atol=1e-5)
    assert LearnedReward(str(tmp_path), use_chat_template=False).texts(s) == ["qhi!"]


def test_learned_reward_batching_is_invariant(tmp_path):
    save_random_rm(tmp_path)
    s = samples(["short", "a little longer one", "x" * 40, ""], prompts=["p: ", "q: ", "r", ""])
    batched = LearnedReward(str(tmp_path), batch_size=4, label_index=1)(s).rewards
    single = torch.cat(
        [LearnedReward(str(tmp_path), batch_size=1, label_index=1)(s.select([i])).rewards for i in range(4)]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=0)


def test_learned_reward_errors(tmp_path, bang_dir):
    with pytest.raises(FileNotFoundError, match="not a local model directory"):
        LearnedReward(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="label_index 1 out of range"):
        LearnedReward(str(bang_dir), label_index=1)
    rm = LearnedReward(str(bang_dir)).to("cpu")
    assert rm.device == torch.device("cpu")


@pytest.mark.parametrize(
    "text, low, high, expected",
    [
        ("Score: 7", None, None, 7.0),
        ("score = -2.5 because", None, None, -2.5),
        ("SCORE 10", 0, 10, 1.0),  # (10 - 0) / 10
        ("Score: 4", 2, 6, 0.5),  # (4 - 2) / (6 - 2)
        ("Score: 11", 0, 10, None),  # out of range
        ("I think it is good", None, None, None),
        ("", None, None, None),
    ],
)
def test_parse_score(text, low, high, expected):
    from reward_models.judge import DEFAULT_PATTERN

    assert parse_score(text, DEFAULT_PATTERN, low, high) == expected


def test_fill_template():
    assert fill_template("{prompt}|{completion}|{ref}", "p", "c", {"ref": 1}, 0) == "p|c|1"
    with pytest.raises(KeyError, match="field 'ref' not in row 3"):
        fill_template("{ref}", "p", "c", {}, 3)


@pytest.fixture(scope="module")
def parrot7(tmp_path_factory):
    path = tmp_path_factory.mktemp("parrot7")
    save_parrot_lm(path, "7")
    return path


def test_judge_parses_generated_score(parrot7):
    judge = JudgeReward(str(parrot7), template="Q {prompt} A {completion} ref {ref}", pattern=r"(\d)", low=0, high=10,
                        max_new_tokens=3, batch_size=2)
    s = samples(["x", "a longer answer", ""], [{"ref": 1}] * 3)
    out = judge(s)
    # the parrot always answers "777"; first digit 7 rescaled (7 - 0) / 10
    assert judge.last_outputs == ["777"] * 3
    assert_close(out.rewards, [0.7, 0.7, 0.7])
    assert_close(out.metrics["failed"], [0, 0, 0])


def test_judge_unparsable_answer_is_nan_and_failed(parrot7):
    judge = JudgeReward(str(parrot7), max_new_tokens=2)  # default pattern wants "Score: <n>"
    out = judge(samples(["x"]))
    assert_close(out.rewards, [nan])
    assert_close(out.metrics["failed"], [1])
    with pytest.raises(RewardError, match=r"template field 'ref' not in row 0"):
        JudgeReward(str(parrot7), template="{ref}")(samples(["x"]))
    with pytest.raises(ValueError, match="low < high"):
        JudgeReward(str(parrot7), low=1)
