"""measure-variance is exact on the toy MDP: its bootstrap intervals contain the exact variances of
``verify-estimators`` (and exclude 1.5x and 1/1.5x of them), for every estimator a module can run."""
from __future__ import annotations

import os

import pytest
import torch

from lightning_trepo import REINFORCE, PolicyConfig, RolloutConfig, SamplingConfig, UpdateConfig
from lightning_trepo.diagnostics.stats import summarize
from lightning_trepo.diagnostics.variance import build_estimators, measure, parse_estimator
from lightning_trepo.policy import build_char_tokenizer
from lightning_trepo.theory import Config, evaluate, make_toy_mdp
from tests.diagnostics.toy import ToyPolicy, ToyReward, toy_batch

PROMPTS = 16  # independent groups per estimate: each estimate averages 16 draws of verify-estimators
REPEATS = 500  # 99% intervals about +-8% wide here (seeds 0-3 checked at 1000: +-4-7%)
LEVEL = 0.99  # 7 intervals per run of the file: 99% ones keep the family's miss rate near 7%, not 30%, for any seed
WRONG = 1.5  # a clearly wrong variance (x1.5 or /1.5) must fall outside the interval
SEED = int(os.environ.get("VARIANCE_TEST_SEED", "0"))


@pytest.fixture(autouse=True)
def one_thread():
    """The toy's tensors are tiny: one intra-op thread avoids OpenMP overhead (and contention on a shared CPU)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def exact() -> dict[str, float]:
    _, rows = evaluate(Config())  # vocab 2 + EOS, max_len 4, G = 3, M = 1, K = 2
    return {r.key: r.variance for r in rows}


def run(group_size: int, estimators: list[str], aggregation: str = "seq_mean_token_sum") -> dict[str, object]:
    cfg = Config()
    mdp = make_toy_mdp(cfg.vocab_size, cfg.max_len, cfg.seed)
    tok = build_char_tokenizer()
    base = REINFORCE(reward=ToyReward(mdp, tok), policy=PolicyConfig(),
                     rollout=RolloutConfig(group_size=group_size, sampling=SamplingConfig(max_new_tokens=cfg.max_len)),
                     update=UpdateConfig(aggregation=aggregation))  # verify-estimators' default: seq_mean_token_sum
    base.policy = ToyPolicy(mdp, tok)
    modules = build_estimators(base, [parse_estimator(e) for e in estimators])
    m = measure(base, modules, toy_batch(tok, PROMPTS), REPEATS, projection_dim=0, seed=SEED)
    s = summarize(m.grads, m.tokens, resamples=1000, level=LEVEL, seed=SEED)
    return {label: s["variance"][i] for i, label in enumerate(m.labels)} | {"_grads": m.grads}


def check(interval, expected: float) -> None:
    assert interval.contains(expected), (interval, expected)
    assert not interval.contains(WRONG * expected) and not interval.contains(expected / WRONG), (interval, expected)


def test_group_estimators_match_exact_variance(exact):
    """G = 3 shared samples per prompt. RLOO / GRPO: one draw of verify-estimators is one group, so Var = exact / B.
    REINFORCE / ReMax: one draw is one response and an estimate averages B·G of them: Var = exact / (B·G)."""
    got = run(3, ["reinforce", "rloo", "grpo:none", "grpo:group", "remax"])
    check(got["rloo"], exact["rloo"] / PROMPTS)
    check(got["grpo:none"], exact["grpo_none"] / PROMPTS)
    check(got["grpo:group"], exact["grpo_group"] / PROMPTS)
    check(got["reinforce"], exact["reinforce"] / (3 * PROMPTS))
    check(got["remax"], exact["remax"] / (3 * PROMPTS))


def test_trepo_mc_matches_exact_variance(exact):
    """TRePO, M = 1 uniform offset drawn before generation, K = 2 continuations, Û(0) from K fresh samples: the
    offset is shared by the rollout, so G = 1 keeps the B draws of an estimate independent: Var = exact / B."""
    got = run(1, ["trepo:1x2:fresh"])
    check(got["trepo:1x2:fresh"], exact["trepo_mc"] / PROMPTS)
    # and the mean of the unbiased estimator is the exact gradient
    cfg = Config()
    from lightning_trepo.theory import solve
    grad = solve(make_toy_mdp(cfg.vocab_size, cfg.max_len, cfg.seed)).grad
    mean = got["_grads"][0].mean(0)
    assert torch.nn.functional.cosine_similarity(mean, grad, dim=0) > 0.97


def test_length_normalised_reinforce_matches_exact_variance(exact):
    """aggregation seq_mean_token_mean (each response's tokens averaged, the 1/T of verify-estimators'
    reinforce_len line): the meter follows the module's aggregation. Var = exact / (B·G)."""
    got = run(2, ["reinforce"], aggregation="seq_mean_token_mean")
    check(got["reinforce"], exact["reinforce_len"] / (2 * PROMPTS))
