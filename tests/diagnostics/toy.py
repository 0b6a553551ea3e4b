"""The enumerable toy MDP of ``lightning_trepo.theory`` as a policy the project's modules can train: a tabular
softmax "causal LM" over the built-in character tokenizer, and its token-sum reward.

Toy token v (0..V-1) is the character ``"a" + v``, EOS is the tokenizer's EOS, and every prompt is the single
character ``">"``. The logits of a position are θ[state] on those V + 1 ids (−1e4 elsewhere), where the state is
the prefix of toy tokens after the prompt, so log π and ∇θ are exactly the toy MDP's. ``generate`` samples the
table directly (the engine's ``generate`` / shared-prefix calls reach it; the KV cache is a no-op).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from torch import Tensor, nn

from lightning_trepo.theory.mdp import ToyMDP
from reward_models import Reward, Samples

PROMPT = ">"
MASKED = -1e4


class _NoCache:
    def batch_repeat_interleave(self, repeats: int) -> None:
        return None


class ToyTokens:
    """The id mapping between the char tokenizer and the toy MDP's tokens and prefixes."""

    def __init__(self, mdp: ToyMDP, tokenizer: Any) -> None:
        self.mdp = mdp
        self.ids = [tokenizer.convert_tokens_to_ids(chr(ord("a") + v)) for v in range(mdp.vocab_size)]
        self.ids.append(tokenizer.eos_token_id)  # toy EOS = vocab_size
        self.to_toy = {i: v for v, i in enumerate(self.ids)}
        self.prompt_id = tokenizer.convert_tokens_to_ids(PROMPT)
        self.index = {p: i for i, p in enumerate(mdp.prefixes)}

    def states(self, ids: Tensor) -> Tensor:
        """(N, T) index of the toy prefix that each position ends (0 where the position is not a live state).

        mdp.prefixes lists prefixes by length k, then in base-V order: index = Σ_{k'<k} V^k' + Σ_i d_i V^(k-i).
        """
        v, max_len = self.mdp.vocab_size, self.mdp.max_len
        n, t = ids.shape
        is_prompt = ids == self.prompt_id
        start = torch.where(is_prompt.any(1), t - 1 - is_prompt.flip(1).long().argmax(1), t)  # last prompt token
        digit = torch.full_like(ids, -1)
        for toy, tok_id in enumerate(self.ids[:-1]):
            digit[ids == tok_id] = toy
        out = torch.zeros_like(ids)
        value = torch.zeros(n, dtype=torch.long)
        alive = torch.zeros(n, dtype=torch.bool)
        length = torch.zeros(n, dtype=torch.long)
        offsets = torch.tensor([sum(v**j for j in range(k)) for k in range(max_len + 1)])
        for j in range(t):
            at_start = start == j
            grow = alive & ~at_start & (digit[:, j] >= 0)
            alive = at_start | grow
            value = torch.where(at_start, 0, torch.where(grow, value * v + digit[:, j].clamp(min=0), value))
            length = torch.where(at_start, 0, length + grow.long())
            alive &= length < max_len
            out[:, j] = torch.where(alive, offsets[length.clamp(max=max_len)] + value, 0)
        return out


class ToyPolicy(nn.Module):
    """Tabular softmax policy θ (S, V+1) in the calling convention of a Hugging Face causal LM."""

    def __init__(self, mdp: ToyMDP, tokenizer: Any) -> None:
        super().__init__()
        self.tokens = ToyTokens(mdp, tokenizer)
        self.vocab = len(tokenizer)
        self.pad_id = tokenizer.pad_token_id
        self.theta = nn.Parameter(mdp.logits.detach().clone())

    def logits(self, ids: Tensor) -> Tensor:
        states = self.tokens.states(ids.cpu()).to(ids.device)
        out = torch.full((*ids.shape, self.vocab), MASKED, dtype=self.theta.dtype, device=ids.device)
        cols = torch.tensor(self.tokens.ids, device=ids.device)
        return out.index_copy(-1, cols, self.theta[states])

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, position_ids: Tensor | None = None,
                past_key_values: Any = None, use_cache: bool = False, logits_to_keep: int = 0) -> SimpleNamespace:
        logits = self.logits(input_ids)
        if logits_to_keep:
            logits = logits[:, -logits_to_keep:]
        return SimpleNamespace(logits=logits, past_key_values=_NoCache() if use_cache else None)

    @torch.no_grad()
    def generate(self, input_ids: Tensor, attention_mask: Tensor, generation_config: Any, synced_gpus: bool = False,
                 past_key_values: Any = None, stopping_criteria: Any = None) -> Tensor:
        cfg = generation_config
        assert (cfg.top_k or 0) == 0 and (cfg.top_p or 1.0) == 1.0, "the toy policy samples the full softmax"
        eos = self.tokens.ids[-1]
        ids, done = input_ids, torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        cols = torch.tensor(self.tokens.ids, device=ids.device)
        for _ in range(cfg.max_new_tokens):
            last = self.theta[self.tokens.states(ids.cpu())[:, -1]].detach()  # (N, V+1): the only live logits
            if cfg.do_sample:
                choice = torch.multinomial(torch.softmax(last / cfg.temperature, dim=-1), 1)
                tok = cols[choice.squeeze(1)]
            else:
                tok = cols[last.argmax(-1)]
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            ids = torch.cat([ids, tok[:, None]], dim=1)
            done |= tok == eos
            if stopping_criteria is not None:  # generate's per-row stopping criteria (the engine's row budgets)
                done |= stopping_criteria(ids, None)
            if bool(done.all()):
                break
        return ids


class ToyReward(Reward):
    """RM(W) = Σ_t r(W_{0,t-1}, w_t) of the toy MDP, read from the completion token ids."""

    def __init__(self, mdp: ToyMDP, tokenizer: Any) -> None:
        self.tokens = ToyTokens(mdp, tokenizer)
        self.table = mdp.token_rewards

    def score(self, samples: Samples) -> Tensor:
        out = []
        for ids, mask in zip(samples.completion_ids.tolist(), samples.completion_mask.tolist(), strict=True):
            prefix: tuple[int, ...] = ()
            total = 0.0
            for tok_id, real in zip(ids, mask, strict=True):
                if not real:
                    break
                tok = self.tokens.to_toy[tok_id]
                total += float(self.table[self.tokens.index[prefix], tok])
                if tok == self.tokens.mdp.eos:
                    break
                prefix = prefix + (tok,)
            out.append(total)
        return torch.tensor(out, dtype=torch.float64)


def toy_batch(tokenizer: Any, num_prompts: int) -> dict[str, Any]:
    """``num_prompts`` copies of the toy's one prompt, in the data module's batch layout."""
    prompt_id = tokenizer.convert_tokens_to_ids(PROMPT)
    return {"prompts": [PROMPT] * num_prompts, "prompt_ids": [[prompt_id]] * num_prompts,
            "metadata": [{} for _ in range(num_prompts)]}
