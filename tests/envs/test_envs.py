"""Environment interface, tools and the gymnasium-API adapter (no model needed)."""
from __future__ import annotations

import pytest

from lightning_trepo.envs import (
    Calculator,
    EnvError,
    FunctionTool,
    GymTextEnv,
    PythonTool,
    StepResult,
    ToolEnv,
    check_step_result,
)


def shout(text: str) -> str:
    return text.upper()


class GuessEnv:
    """A gymnasium-API text env (duck-typed): guess the secret in options['secret']; reward 1 on a hit."""

    def __init__(self, tries: int = 3) -> None:
        self.tries, self.closed = tries, False

    def reset(self, seed=None, options=None):
        self.secret, self.left = str(options["secret"]), self.tries
        return "guess", {}

    def step(self, action):
        self.left -= 1
        hit = action.strip() == self.secret
        return ("correct" if hit else "wrong"), (1.0 if hit else 0.0), hit, self.left == 0, {}

    def close(self):
        self.closed = True


@pytest.mark.parametrize(("expr", "want"), [
    ("12*(3+4)", "84"),  # 12*7
    ("7/2", "3.5"), ("8/2", "4"),  # a whole quotient prints as an integer
    ("-3**2", "-9"), ("1234*5678", "7006652"),
    ("1/0", "error: ZeroDivisionError"), ("2**1000", "error: ValueError"),  # exponent above max_exponent=64
    ("__import__('os')", "error: ValueError"), ("1+", "error: SyntaxError"), ("True+1", "error: ValueError"),
])
def test_calculator(expr, want):
    assert Calculator()(expr) == want


def test_tool_env_runs_the_first_call_and_ends_on_a_turn_without_one():
    env = ToolEnv([Calculator(), FunctionTool("tests.envs.test_envs:shout", name="up")], max_calls=2)
    env.reset("p", {})
    assert env.step("x <up>ab</up> then <calc>1+1</calc>") == StepResult(observation="AB")
    assert env.step("<calc>6*7</calc>") == StepResult(observation="42")
    assert env.step("<calc>1+1</calc>").done  # third call: max_calls=2 reached, the episode ends
    env.reset("p", {})
    assert env.step("the answer is 42") == StepResult(done=True)  # no call = final answer


def test_tool_env_spawn_is_independent():
    env = ToolEnv([Calculator()], max_calls=1)
    a, b = env.spawn(), env.spawn()
    a.reset("p", {}), b.reset("p", {})
    a.step("<calc>1</calc>")
    assert a.calls == 1 and b.calls == 0


def test_python_tool_runs_in_the_sandbox():
    tool = PythonTool(wall_time=10.0)
    assert tool("print(2**10)") == "1024"
    assert tool("raise ValueError('bad')").startswith("error: ValueError")


def test_function_tool_path_checked():
    with pytest.raises(ValueError, match="package.module:function"):
        FunctionTool("no_colon")


def test_gym_adapter_sums_rewards_and_ends_on_terminated():
    env = GymTextEnv(factory="tests.envs.test_envs:GuessEnv", kwargs={"tries": 3}).spawn()
    env.reset("guess", {"secret": 7})
    assert env.step("3") == StepResult(observation="wrong", done=False, reward=0.0)
    assert env.step(" 7 ") == StepResult(observation="correct", done=True, reward=1.0)  # 0 + 1
    inner = env._env
    env.close()
    assert inner.closed


def test_gym_adapter_ends_on_truncated():
    env = GymTextEnv(factory="tests.envs.test_envs:GuessEnv", kwargs={"tries": 1})
    env.reset("guess", {"secret": 7})
    assert env.step("3") == StepResult(observation="wrong", done=True, reward=0.0)  # out of tries


def test_gym_adapter_needs_one_source():
    with pytest.raises(ValueError, match="exactly one"):
        GymTextEnv()


@pytest.mark.parametrize(("value", "match"), [
    ("text", "returned str, expected a lightning_trepo.envs.StepResult"),
    (StepResult(observation=3), "observation of type int, expected text"),  # type: ignore[arg-type]
    (StepResult(observation="x", reward="1"), "reward of type str"),  # type: ignore[arg-type]
])
def test_check_step_result_names_env_and_episode(value, match):
    with pytest.raises(EnvError, match=rf"environment calc-env \(episode 5\): .*{match}"):
        check_step_result(value, "calc-env", 5)


def test_env_reward_as_a_reward_function():
    # rows 0 and 2 carry the env's reward, row 1 none (NaN: does not apply)
    import torch

    from reward_models import FunctionReward, Samples

    samples = Samples(prompts=["p"] * 3, completions=["a", "b", "c"], completion_ids=None, completion_mask=None,
                      group_index=torch.zeros(3, dtype=torch.long),
                      metadata=[{"env_reward": 1.0}, {}, {"env_reward": 0.25}])
    out = FunctionReward("lightning_trepo.envs.env_reward")(samples).rewards
    assert out[0] == 1.0 and torch.isnan(out[1]) and out[2] == 0.25
