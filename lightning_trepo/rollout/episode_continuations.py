"""TRePO continuations of multi-turn episodes: from a prefix W_{0,s} (s a turn start) the episode goes on with the
environment, to the same ``max_turns`` / ``max_total_tokens`` limits as the episode itself, so Û(s) estimates
U(W_{0,s}) for the same finite-horizon problem. The environment is rebuilt for each continuation by replaying the
prefix's model turns into a fresh one (environments must be deterministic given the row and the actions, or the
replayed state differs from the one the episode saw)."""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from lightning_trepo.envs.base import Environment
from lightning_trepo.rollout.continuations import Continuations
from lightning_trepo.rollout.engine import RolloutEngine, SamplingConfig
from lightning_trepo.rollout.episodes import EpisodeConfig, EpisodeState, episode_metadata, run_episodes
from lightning_trepo.types import Rollout

EPISODE_KEYS = ("episode_turns", "episode_turn_starts", "final_turn", "env_reward", "episode_error")


def row_columns(metadata: dict[str, Any]) -> dict[str, Any]:
    """The dataset row of an episode's metadata (what the episode added taken out again)."""
    return {k: v for k, v in metadata.items() if k not in EPISODE_KEYS}


def prefix_state(rollout: Rollout, n: int, s: int, tokenizer: Any) -> EpisodeState:
    """Episode n cut at completion position s (0 or a turn start): its ids and loss mask up to s, the turns that
    began before s and their decoded text (what the environment was shown, replayed into a fresh one)."""
    if rollout.loss_mask is None:
        raise ValueError("episode continuations need a multi-turn rollout (loss_mask is None)")
    starts = [t for t in rollout.metadata[n]["episode_turn_starts"] if t < s]
    ids = rollout.completion_ids[n, :s].tolist()
    loss = rollout.loss_mask[n, :s].tolist()
    actions = [tokenizer.decode([i for i, m in zip(ids[a:b], loss[a:b], strict=True) if m], skip_special_tokens=True)
               for a, b in zip(starts, [*starts[1:], s], strict=True)]
    return EpisodeState(ids=ids, loss=loss, turn_starts=starts, actions=actions)


def episode_continuations(engine: RolloutEngine, model: nn.Module, environment: Environment, cfg: EpisodeConfig,
                          rollout: Rollout, anchor_positions: Tensor, rows: Tensor, cols: Tensor, k: int,
                          sampling: SamplingConfig) -> Continuations:
    """``k`` continuations of episode rows[i] from position anchor_positions[rows[i], cols[i]], each played to
    its end with the environment (all of them turn by turn in batched generate calls)."""
    starts = anchor_positions[rows, cols].tolist()
    pairs = [(n, s) for n, s in zip(rows.tolist(), starts, strict=True) for _ in range(k)]
    states = [prefix_state(rollout, n, s, engine.tokenizer) for n, s in pairs]
    prefix_lengths = [len(state.ids) for state in states]
    rows_meta = [row_columns(rollout.metadata[n]) for n, _ in pairs]
    prompt_ids = [rollout.prompt_ids[n][rollout.prompt_mask[n].bool()].tolist() for n, _ in pairs]
    episodes = run_episodes(engine, model, environment, prompt_ids, [rollout.prompts[n] for n, _ in pairs],
                            rows_meta, sampling, cfg, states=states)
    device = rollout.completion_ids.device
    generated = sum(int(episodes.loss_mask[i, p:].sum()) for i, p in enumerate(prefix_lengths))
    ids = episodes.completion_ids.to(device)
    return Continuations(
        sample_index=rows.repeat_interleave(k), anchor_column=cols.repeat_interleave(k), completion_ids=ids,
        completion_mask=episodes.completion_mask.to(device),
        completions=engine.tokenizer.batch_decode(ids, skip_special_tokens=True), generated_tokens=generated,
        num_calls=episodes.num_calls, truncated=episodes.truncated.to(device),
        metadata=[episode_metadata(m, st) for m, st in zip(rows_meta, episodes.states, strict=True)],
    )
