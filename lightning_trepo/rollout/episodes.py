"""Multi-turn episodes: the policy's turns interleaved with an environment's answers, as ONE token sequence.

Each turn continues from the exact token ids generated so far (prompt + earlier turns + observations); nothing is
ever re-tokenised or re-templated (re-applying a chat template to earlier turns changes their ids and trains on
tokens the policy never sampled, TRL #5224, verl #3960). Per episode the loop keeps

- ``completion_ids``: every model turn and every observation, in order (attended: completion mask 1),
- ``loss_mask``: 1 on the model's sampled tokens, 0 on the environment's (never trained on, never counted as
  generated),
- ``turn_starts``: where each model turn begins (TRePO's ``anchor_mode: turns`` anchors there).

An episode ends when the environment says ``done`` (a :class:`~lightning_trepo.envs.ToolEnv` does on a turn with no
tool call: the final answer), after ``max_turns`` model turns, or when ``max_total_tokens`` completion tokens (model
and environment together) are used up; ended by a limit it counts as truncated, and it always ends on the model's
own tokens (an observation that no turn would read is left out). An environment that raises,
answers something other than text, or takes longer than ``env_timeout_s`` fails ITS episode only: the row keeps its
tokens with loss mask 0 and ``metadata["episode_error"]`` names the environment and the episode.
"""
from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_trepo.envs.base import EnvError, Environment, StepResult, check_step_result
from lightning_trepo.errors import require
from lightning_trepo.rollout.engine import RolloutEngine, RolloutPlan, SamplingConfig, left_pad
from lightning_trepo.types import Rollout


@dataclass
class EpisodeConfig:
    """Limits and formatting of multi-turn episodes (``rollout.episode``); used only with an environment."""

    max_turns: int = 4
    """Most model turns per episode."""
    max_total_tokens: int = 128
    """Most completion tokens per episode, model and environment tokens together; each turn also stays within
    ``rollout.sampling.max_new_tokens``."""
    observation_template: str = "\n{observation}\n"
    """How an observation is written into the episode (``{observation}`` is the environment's text), tokenised on
    its own with no special tokens added. For a chat model, e.g.
    ``"<|im_start|>user\\n{observation}<|im_end|>\\n<|im_start|>assistant\\n"``."""
    env_timeout_s: float = 30.0
    """Seconds one environment call (reset or step) may take before its episode fails."""

    def __post_init__(self) -> None:
        require(self.max_turns >= 1, "rollout.episode.max_turns", self.max_turns, "an integer >= 1")
        require(self.max_total_tokens >= 1, "rollout.episode.max_total_tokens", self.max_total_tokens,
                "an integer >= 1")
        require("{observation}" in self.observation_template, "rollout.episode.observation_template",
                self.observation_template, "a string containing {observation}")
        require(self.env_timeout_s > 0, "rollout.episode.env_timeout_s", self.env_timeout_s, "a number > 0")


@dataclass
class EpisodeState:
    """One episode in progress (or a prefix of a finished one that a TRePO continuation resumes)."""

    ids: list[int] = field(default_factory=list)  # completion tokens so far (model and environment)
    loss: list[int] = field(default_factory=list)  # 1 = sampled by the model, 0 = environment
    turn_starts: list[int] = field(default_factory=list)  # completion position where each model turn began
    actions: list[str] = field(default_factory=list)  # decoded model turns, replayed into a fresh environment
    done: bool = False
    truncated: bool = False
    env_reward: float | None = None
    error: str | None = None


@dataclass
class Episodes:
    """N finished episodes as right-padded tensors."""

    completion_ids: Tensor  # (N, L) model and environment tokens, right padded with the pad id
    completion_mask: Tensor  # (N, L) 1 on every real token (attended)
    loss_mask: Tensor  # (N, L) 1 on the model's sampled tokens only (0 everywhere on a failed episode)
    truncated: Tensor  # (N,) bool, ended by max_turns / max_total_tokens, not by the environment
    states: list[EpisodeState]
    num_calls: int = 0

    @property
    def num_turns(self) -> Tensor:
        return torch.tensor([len(s.turn_starts) for s in self.states], dtype=torch.float)


def call_with_timeout(calls: Sequence[Callable[[], Any]], timeout: float) -> list[tuple[bool, Any]]:
    """Run the calls concurrently in daemon threads; per call (True, value), (False, exception), or
    (False, TimeoutError) when it has not returned within ``timeout`` seconds of the start (it is abandoned)."""
    results: list[tuple[bool, Any]] = [(False, TimeoutError(f"no answer within {timeout:g} s"))] * len(calls)

    def run(i: int, fn: Callable[[], Any]) -> None:
        try:
            results[i] = (True, fn())
        except Exception as err:  # noqa: BLE001 - any failure of a user environment fails its episode only
            results[i] = (False, err)

    threads = [threading.Thread(target=run, args=(i, fn), daemon=True) for i, fn in enumerate(calls)]
    deadline = time.monotonic() + timeout
    for t in threads:
        t.start()
    for t in threads:
        t.join(max(0.0, deadline - time.monotonic()))
    return list(results)  # a call that answers after the deadline changes nothing


def _fail(state: EpisodeState, env: Environment, episode: int, what: str, err: BaseException) -> None:
    state.error = f"environment {env.label} (episode {episode}): {what} failed: {type(err).__name__}: {err}"
    state.done = True


def start_episodes(envs: list[Environment], states: list[EpisodeState], prompts: list[str],
                   metadata: list[dict[str, Any]], timeout: float) -> None:
    """``reset`` each environment on its row, then replay the actions already in its state (a resumed prefix)."""
    def start(i: int) -> Callable[[], None]:
        def run() -> None:
            envs[i].reset(prompts[i], metadata[i])
            for action in states[i].actions:
                check_step_result(envs[i].step(action), envs[i].label, i)
        return run

    for i, (ok, value) in enumerate(call_with_timeout([start(i) for i in range(len(envs))], timeout)):
        if not ok:
            _fail(states[i], envs[i], i, "reset", value)


def _observation_ids(tokenizer: Any, template: str, observation: str) -> list[int]:
    return list(tokenizer(template.format(observation=observation), add_special_tokens=False)["input_ids"])


def _after_turn(state: EpisodeState, result: StepResult, obs_ids: list[int], cfg: EpisodeConfig) -> None:
    """Apply the environment's answer: stop, or append the observation. When no model turn can follow (max_turns
    reached, or no token left after the observation) the episode ends truncated WITHOUT the observation: it would
    be read by the reward alone, which could then take the environment's text for the model's answer."""
    if result.reward is not None:
        state.env_reward = float(result.reward)
    if result.done:
        state.done = True
        return
    if len(state.turn_starts) >= cfg.max_turns or len(state.ids) + len(obs_ids) >= cfg.max_total_tokens:
        state.done = state.truncated = True
        return
    state.ids += obs_ids
    state.loss += [0] * len(obs_ids)


def play_turn(engine: RolloutEngine, model: nn.Module, prompt_ids: list[list[int]], envs: list[Environment],
              states: list[EpisodeState], sampling: SamplingConfig, cfg: EpisodeConfig, greedy: bool = False) -> int:
    """One model turn for every live episode (one batched generate call; ``greedy``: argmax decoding), then every
    environment's answer. Returns the number of generate calls."""
    live = [i for i, s in enumerate(states) if not s.done]
    if not live:
        return 0
    budget = {i: min(sampling.max_new_tokens, cfg.max_total_tokens - len(states[i].ids)) for i in live}
    device = next(model.parameters()).device
    ids, mask = left_pad([prompt_ids[i] + states[i].ids for i in live], engine.pad_id, device)
    row_budget = torch.tensor([budget[i] for i in live], dtype=torch.long)  # each row stops at its own budget
    gen = engine.generate(model, ids, mask, replace(sampling, max_new_tokens=max(budget.values())), greedy=greedy,
                          row_budget=row_budget)
    for row, i in enumerate(live):
        turn = gen.completion_ids[row][gen.completion_mask[row].bool()][: budget[i]].tolist()
        state = states[i]
        state.turn_starts.append(len(state.ids))
        state.ids += turn
        state.loss += [1] * len(turn)
        state.actions.append(engine.tokenizer.decode(turn, skip_special_tokens=True))
    answers = call_with_timeout([lambda i=i: envs[i].step(states[i].actions[-1]) for i in live], cfg.env_timeout_s)
    for i, (ok, value) in zip(live, answers, strict=True):
        try:
            if not ok:
                raise value
            result = check_step_result(value, envs[i].label, i)
            obs_ids = [] if result.done else _observation_ids(engine.tokenizer, cfg.observation_template,
                                                               result.observation)
        except Exception as err:  # noqa: BLE001 - one bad episode fails one row
            _fail(states[i], envs[i], i, "step", err)
            continue
        _after_turn(states[i], result, obs_ids, cfg)
    return gen.num_calls


def run_episodes(engine: RolloutEngine, model: nn.Module, environment: Environment, prompt_ids: list[list[int]],
                 prompts: list[str], metadata: list[dict[str, Any]], sampling: SamplingConfig, cfg: EpisodeConfig,
                 states: list[EpisodeState] | None = None, greedy: bool = False) -> Episodes:
    """Play N episodes to the end, turn by turn in batched generate calls; ``states`` resumes prefixes of earlier
    episodes (their actions are replayed into fresh environments first). Row i is prompt i's episode."""
    n = len(prompt_ids)
    states = states if states is not None else [EpisodeState() for _ in range(n)]
    envs = [environment.spawn() for _ in range(n)]
    start_episodes(envs, states, prompts, metadata, cfg.env_timeout_s)
    for s in states:
        if not s.done and (len(s.turn_starts) >= cfg.max_turns or len(s.ids) >= cfg.max_total_tokens):
            s.done = s.truncated = True
    calls = 0
    try:
        while any(not s.done for s in states):
            calls += play_turn(engine, model, prompt_ids, envs, states, sampling, cfg, greedy)
    finally:
        for env in envs:
            call_with_timeout([env.close], cfg.env_timeout_s)
    return pack_episodes(states, engine.pad_id, calls)


def pack_episodes(states: list[EpisodeState], pad_id: int, num_calls: int = 0) -> Episodes:
    """Right-pad the episodes into (N, L) ids, attention mask and loss mask (a failed episode's loss mask is 0)."""
    width = max([len(s.ids) for s in states] + [1])
    ids = torch.full((len(states), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(states), width), dtype=torch.long)
    loss = torch.zeros((len(states), width), dtype=torch.long)
    for i, s in enumerate(states):
        ids[i, : len(s.ids)] = torch.tensor(s.ids, dtype=torch.long)
        mask[i, : len(s.ids)] = 1
        if s.error is None:
            loss[i, : len(s.ids)] = torch.tensor(s.loss, dtype=torch.long)
    truncated = torch.tensor([s.truncated for s in states], dtype=torch.bool)
    return Episodes(ids, mask, loss, truncated, states, num_calls)


def episode_metadata(row: dict[str, Any], state: EpisodeState) -> dict[str, Any]:
    """The row's columns plus what the episode adds for the reward tree and the rollout log: ``episode_turns``,
    ``episode_turn_starts`` (completion positions), ``final_turn`` (the text of the model's last turn: the answer a
    verifier should read, e.g. ``NumericAnswer(text_key="final_turn")``, since the whole episode also holds the
    environment's text), ``env_reward`` (when the environment gave one) and ``episode_error`` (when it failed)."""
    extra: dict[str, Any] = {"episode_turns": len(state.turn_starts),
                             "episode_turn_starts": list(state.turn_starts),
                             "final_turn": state.actions[-1] if state.actions else ""}
    if state.env_reward is not None:
        extra["env_reward"] = state.env_reward
    if state.error is not None:
        extra["episode_error"] = state.error
    return {**row, **extra}


def episode_rollout(engine: RolloutEngine, model: nn.Module, environment: Environment, cfg: EpisodeConfig,
                    group_size: int, sampling: SamplingConfig, prompts: list[str], prompt_ids: list[list[int]],
                    metadata: list[dict[str, Any]], greedy: bool = False) -> Rollout:
    """``group_size`` episodes per prompt as a Rollout: completion = the whole episode after the prompt,
    ``loss_mask`` = the model's tokens, ``truncated`` = ended by a limit; row n is prompt n // G's."""
    device = next(model.parameters()).device
    rows = [i for i in range(len(prompts)) for _ in range(group_size)]
    episodes = run_episodes(engine, model, environment, [prompt_ids[i] for i in rows], [prompts[i] for i in rows],
                            [metadata[i] for i in rows], sampling, cfg, greedy=greedy)
    p_ids, p_mask = left_pad(prompt_ids, engine.pad_id, device)
    ids = episodes.completion_ids.to(device)
    return Rollout(
        prompt_ids=p_ids.repeat_interleave(group_size, dim=0), prompt_mask=p_mask.repeat_interleave(group_size, dim=0),
        completion_ids=ids, completion_mask=episodes.completion_mask.to(device),
        loss_mask=episodes.loss_mask.to(device), group_index=torch.tensor(rows, device=device), group_size=group_size,
        prompts=[prompts[i] for i in rows], completions=engine.tokenizer.batch_decode(ids, skip_special_tokens=True),
        metadata=[episode_metadata(metadata[i], st) for i, st in zip(rows, episodes.states, strict=True)],
        truncated=episodes.truncated.to(device),
    )


def plan_rollout(engine: RolloutEngine, model: nn.Module, plan: RolloutPlan, prompts: list[str],
                 prompt_ids: list[list[int]], metadata: list[dict[str, Any]], device: torch.device,
                 environment: Environment | None, cfg: EpisodeConfig) -> Rollout:
    """The plan's samples and greedy responses: ``engine.rollout`` without an environment; with one, G episodes per
    prompt (and one greedy episode per prompt for ``plan.greedy_baseline``), seconds in ``timings['generate']``."""
    if environment is None:
        return engine.rollout(model, plan, prompts, prompt_ids, metadata, device)
    t0 = time.perf_counter()
    rollout = episode_rollout(engine, model, environment, cfg, plan.group_size, plan.sampling, prompts, prompt_ids,
                              metadata, greedy=plan.greedy)
    if plan.greedy_baseline:  # ReMax: one greedy episode per prompt
        rollout.greedy = episode_rollout(engine, model, environment, cfg, 1, plan.sampling, prompts, prompt_ids,
                                         metadata, greedy=True)
    rollout.timings["generate"] = time.perf_counter() - t0
    return rollout


__all__ = ["EnvError", "EpisodeConfig", "EpisodeState", "Episodes", "episode_rollout", "pack_episodes", "play_turn",
           "plan_rollout", "run_episodes"]
