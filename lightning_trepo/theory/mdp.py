"""An enumerable token MDP: every response, its probability, reward, U(prefix) and score, exactly.

States are prefixes of ordinary tokens (ids 0..V-1); EOS has id V. A response W = (w_1..w_T) ends at
the first EOS or is truncated at ``max_len``. The policy is tabular: logits θ[prefix, token]. Token
rewards r(prefix, token) are random and RM(W) = Σ_t r(W_{0,t-1}, w_t), the paper's assumption
(https://arxiv.org/abs/2506.02553, §2). Everything is float64 and computed by enumeration.

Multi-turn episodes (:func:`make_toy_episode_mdp`): after the model writes the ``call_token``, the next token is the
ENVIRONMENT's, drawn from a fixed table p_env(o | prefix) that does not depend on θ (never EOS), and the model's turn
resumes after it. π(W) = Π_model π_θ(w_t | ·) · Π_env p_env(w_t | ·), so env tokens have zero score and U(prefix)
averages over the environment too: the paper's trajectory theorem with the environment inside the transition.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

DTYPE = torch.float64


@dataclass(frozen=True)
class ToyMDP:
    """A tabular softmax policy over prefixes and the token rewards r(prefix, token)."""

    vocab_size: int  # ordinary tokens; EOS = vocab_size
    max_len: int
    prefixes: tuple[tuple[int, ...], ...]  # non-terminal states, shortest first
    logits: Tensor  # (S, vocab_size + 1) θ, the policy parameters
    token_rewards: Tensor  # (S, vocab_size + 1) r(prefix, token)
    env_logits: Tensor | None = None  # (S, vocab_size + 1) the environment's fixed logits (EOS column -inf)
    call_token: int | None = None  # a model token after which the environment answers with one token

    @property
    def eos(self) -> int:
        return self.vocab_size

    @property
    def num_params(self) -> int:
        return self.logits.numel()


@dataclass(frozen=True)
class ExactSolution:
    """Every response W of a ToyMDP with its exact quantities. W responses, L = max_len, D = #θ."""

    tokens: Tensor  # (W, L) long, right padded with EOS
    mask: Tensor  # (W, L) float64, 1 on real tokens (EOS included)
    lengths: Tensor  # (W,) long, T
    states: Tensor  # (W, L) long, index of the prefix W_{0,t-1} before token t (0 on padding)
    prob: Tensor  # (W,) π(W)
    reward: Tensor  # (W,) RM(W)
    prefix_values: Tensor  # (W, L+1) U(W_{0,t}) for t = 0..L (RM(W) for t >= T)
    prefix_vars: Tensor  # (W, L+1) Var(RM | W_{0,t}) (0 for t >= T)
    scores: Tensor  # (W, L, D) ∇θ log π(w_t | W_{0,t-1}) (0 on padding)
    objective: Tensor  # () J = E[RM]
    grad: Tensor  # (D,) ∇J, by autograd of J = Σ_W π(W) RM(W)
    greedy_reward: Tensor  # () RM of the greedy (argmax) response
    env_mask: Tensor | None = None  # (W, L) bool, True on environment tokens (episode MDPs), None otherwise


def make_toy_mdp(vocab_size: int = 2, max_len: int = 4, seed: int = 0, logit_scale: float = 1.0) -> ToyMDP:
    """Random logits θ ~ N(0, logit_scale²) and token rewards r ~ U[0, 1) over all prefixes."""
    if vocab_size < 1 or max_len < 1:
        raise ValueError(f"need vocab_size >= 1 and max_len >= 1, got {vocab_size}, {max_len}")
    prefixes = tuple(p for k in range(max_len) for p in itertools.product(range(vocab_size), repeat=k))
    gen = torch.Generator().manual_seed(seed)
    shape = (len(prefixes), vocab_size + 1)
    logits = torch.randn(shape, generator=gen, dtype=DTYPE) * logit_scale
    rewards = torch.rand(shape, generator=gen, dtype=DTYPE)
    return ToyMDP(vocab_size, max_len, prefixes, logits, rewards)


def make_toy_episode_mdp(vocab_size: int = 2, max_len: int = 4, seed: int = 0, call_token: int = 0,
                         logit_scale: float = 1.0) -> ToyMDP:
    """:func:`make_toy_mdp` plus an environment: after ``call_token`` one env token o ~ softmax(env_logits[prefix])
    over the ordinary tokens (random fixed logits, EOS excluded)."""
    base = make_toy_mdp(vocab_size, max_len, seed, logit_scale)
    gen = torch.Generator().manual_seed(seed + 7919)
    env = torch.randn(base.logits.shape, generator=gen, dtype=DTYPE) * logit_scale
    env[:, base.eos] = -torch.inf
    return ToyMDP(vocab_size, max_len, base.prefixes, base.logits, base.token_rewards, env, call_token)


def env_positions(mdp: ToyMDP, response: tuple[int, ...]) -> list[bool]:
    """Which tokens of ``response`` are the environment's: the one right after a MODEL ``call_token``."""
    out: list[bool] = []
    for t in range(len(response)):
        out.append(mdp.call_token is not None and t > 0 and not out[t - 1] and response[t - 1] == mdp.call_token)
    return out


def enumerate_responses(mdp: ToyMDP) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """All responses: (tokens (W, L), mask (W, L), lengths (W,), states (W, L)); episode MDPs leave out the ones
    with EOS on an environment position (probability 0)."""
    index = {p: i for i, p in enumerate(mdp.prefixes)}
    responses = [p + (mdp.eos,) for p in mdp.prefixes]
    responses += list(itertools.product(range(mdp.vocab_size), repeat=mdp.max_len))
    responses = [w for w in responses if not any(e and x == mdp.eos for e, x in zip(env_positions(mdp, w), w,
                                                                                    strict=True))]
    length = mdp.max_len
    tokens = torch.full((len(responses), length), mdp.eos, dtype=torch.long)
    states = torch.zeros((len(responses), length), dtype=torch.long)
    for n, w in enumerate(responses):
        tokens[n, : len(w)] = torch.tensor(w)
        states[n, : len(w)] = torch.tensor([index[tuple(w[:t])] for t in range(len(w))])
    lengths = torch.tensor([len(w) for w in responses])
    mask = (torch.arange(length)[None, :] < lengths[:, None]).to(DTYPE)
    return tokens, mask, lengths, states


def token_logprob_table(logits: Tensor, tokens: Tensor, states: Tensor, mask: Tensor) -> Tensor:
    """log π(w_t | W_{0,t-1}) per response and position, 0 on padding: (W, L), differentiable in θ.

    Kept in float64 (``ops.token_logprobs`` computes in float32, too coarse for 1e-10 checks).
    """
    logp = torch.log_softmax(logits[states], dim=-1)
    return logp.gather(-1, tokens.unsqueeze(-1)).squeeze(-1) * mask


def prefix_moments(
    prob: Tensor, reward: Tensor, states: Tensor, lengths: Tensor, num_states: int
) -> tuple[Tensor, Tensor]:
    """U(W_{0,t}) = E[RM | prefix] and Var(RM | prefix) for t = 0..L, by enumeration: (W, L+1) each."""
    n, length = states.shape
    before_end = torch.arange(length)[None, :] < lengths[:, None]
    weight = (prob[:, None] * before_end).reshape(-1)
    flat = states.reshape(-1)
    mass = torch.zeros(num_states, dtype=DTYPE).index_add_(0, flat, weight)
    first = torch.zeros(num_states, dtype=DTYPE).index_add_(0, flat, weight * reward.repeat_interleave(length))
    second = torch.zeros(num_states, dtype=DTYPE).index_add_(0, flat, weight * reward.repeat_interleave(length) ** 2)
    u_state, m2_state = first / mass, second / mass
    var_state = (m2_state - u_state**2).clamp(min=0)
    ended = reward[:, None].expand(n, length + 1)
    pad = torch.cat([before_end, torch.zeros(n, 1, dtype=torch.bool)], dim=1)
    padded_states = torch.cat([states, torch.zeros(n, 1, dtype=torch.long)], dim=1)
    values = torch.where(pad, u_state[padded_states], ended)
    variances = torch.where(pad, var_state[padded_states], torch.zeros_like(ended))
    return values, variances


def greedy_response_reward(mdp: ToyMDP) -> Tensor:
    """RM of the argmax response (ReMax's baseline): deterministic, independent of the samples."""
    index = {p: i for i, p in enumerate(mdp.prefixes)}
    prefix: tuple[int, ...] = ()
    total = torch.zeros((), dtype=DTYPE)
    while len(prefix) < mdp.max_len:
        s = index[prefix]
        token = int(mdp.logits[s].argmax())
        total = total + mdp.token_rewards[s, token]
        if token == mdp.eos:
            break
        prefix = prefix + (token,)
    return total


def env_logprob_table(mdp: ToyMDP, tokens: Tensor, states: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """(env mask (W, L) bool, log p_env(w_t | W_{0,t-1}) on env tokens and 0 elsewhere (W, L)): constants in θ."""
    rows = [env_positions(mdp, tuple(w[: int(n)])) + [False] * (tokens.shape[1] - int(n))
            for w, n in zip(tokens.tolist(), mask.sum(-1).long().tolist(), strict=True)]
    env = torch.tensor(rows, dtype=torch.bool).reshape(tokens.shape)
    if mdp.env_logits is None or not env.any():
        return env, torch.zeros_like(mask)
    logp = torch.log_softmax(mdp.env_logits[states], dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    return env, torch.where(env, logp, torch.zeros_like(logp))


def solve(mdp: ToyMDP) -> ExactSolution:
    """Enumerate every response and compute π(W), RM(W), U, Var(RM | prefix), scores and ∇J exactly."""
    tokens, mask, lengths, states = enumerate_responses(mdp)
    env, env_logp = env_logprob_table(mdp, tokens, states, mask)
    model_mask = mask * (~env).to(DTYPE)  # the policy's tokens: only these depend on θ
    theta = mdp.logits.detach().clone().requires_grad_(True)
    logp = token_logprob_table(theta, tokens, states, model_mask) + env_logp
    prob = logp.sum(-1).exp()
    reward = (mdp.token_rewards[states, tokens] * mask).sum(-1)
    objective = (prob * reward).sum()
    (grad,) = torch.autograd.grad(objective, theta)
    jac = torch.autograd.functional.jacobian(
        lambda th: token_logprob_table(th, tokens, states, model_mask), mdp.logits, vectorize=True
    )
    scores = jac.reshape(*tokens.shape, -1)
    values, variances = prefix_moments(prob.detach(), reward, states, lengths, len(mdp.prefixes))
    return ExactSolution(
        tokens=tokens, mask=mask, lengths=lengths, states=states, prob=prob.detach(), reward=reward,
        prefix_values=values, prefix_vars=variances, scores=scores, objective=objective.detach(),
        grad=grad.reshape(-1), greedy_reward=greedy_response_reward(mdp),
        env_mask=env if mdp.env_logits is not None else None,
    )
