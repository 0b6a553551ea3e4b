"""Chunked log-probs from hidden states: the same values and gradients as the full (N, L, V) computation."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightning_trepo.ops import entropy_from_logits, token_logprobs
from lightning_trepo.policy import PolicyConfig, TinyModelConfig, load_policy
from lightning_trepo.rollout.logprobs import (
    chunk_rows,
    completion_logits,
    fused_head_supported,
    linear_token_logprobs,
    sequence_logprobs,
)


def _full(hidden, weight, bias, targets, temperature):
    logits = F.linear(hidden, weight, bias)
    return token_logprobs(logits, targets, temperature), entropy_from_logits(logits, temperature)


@pytest.mark.parametrize("chunk", [1, 3, 7, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_values_and_gradients_equal_the_full_computation(chunk, temperature, with_bias):
    gen = torch.Generator().manual_seed(0)
    hidden = (torch.randn(4, 5, 16, generator=gen) / 4).requires_grad_()  # logits of order 1, as after a final norm
    weight = torch.randn(37, 16, generator=gen).requires_grad_()
    bias = torch.randn(37, generator=gen).requires_grad_() if with_bias else None
    targets = torch.randint(0, 37, (4, 5), generator=gen)
    upstream = torch.randn(4, 5, generator=gen)  # an arbitrary loss Σ c_t · log π_t reaches every path

    lp, ent = linear_token_logprobs(hidden, weight, bias, targets, temperature, chunk=chunk, with_entropy=True)
    grads = torch.autograd.grad((lp * upstream).sum(), [hidden, weight] + ([bias] if with_bias else []))
    ref_lp, ref_ent = _full(hidden, weight, bias, targets, temperature)
    ref_grads = torch.autograd.grad((ref_lp * upstream).sum(), [hidden, weight] + ([bias] if with_bias else []))

    torch.testing.assert_close(lp, ref_lp, atol=1e-6, rtol=0)
    torch.testing.assert_close(ent, ref_ent.detach(), atol=1e-6, rtol=0)
    assert not ent.requires_grad
    for got, want in zip(grads, ref_grads, strict=True):
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_log_probs_of_all_tokens_sum_to_one():
    # exp(log π(v)) over every v of the vocabulary is a distribution (hand check of the log-sum-exp)
    gen = torch.Generator().manual_seed(1)
    hidden, weight = torch.randn(1, 8, generator=gen), torch.randn(11, 8, generator=gen)
    lp, _ = linear_token_logprobs(hidden.expand(11, 8), weight, None, torch.arange(11), temperature=0.5, chunk=4)
    assert float(lp.exp().sum()) == pytest.approx(1.0, abs=1e-6)


def test_chunk_rows_bounds_one_chunk_of_fp32_logits():
    assert chunk_rows(49152, budget_bytes=1 << 28) == (1 << 28) // (4 * 49152)  # 1365 positions of a 49k vocab
    assert chunk_rows(10 ** 9, budget_bytes=16) == 1


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_policy(PolicyConfig(tiny=TinyModelConfig(n_layer=2, n_embd=32, n_head=2, seed=5)))
    return model, tok


def _batch(tok):
    gen = torch.Generator().manual_seed(2)
    prompt_ids = torch.randint(3, 99, (8, 6), generator=gen)
    prompt_mask = torch.ones_like(prompt_ids)
    prompt_mask[0, :2] = 0  # left padding
    completion_ids = torch.randint(3, 99, (8, 16), generator=gen)
    completion_mask = torch.ones_like(completion_ids)
    completion_mask[1, 9:] = 0  # right padding
    return prompt_ids, prompt_mask, completion_ids, completion_mask


def test_policy_logprobs_through_the_head_equal_the_logits_path(tiny):
    model, tok = tiny
    batch = _batch(tok)
    assert fused_head_supported(model) is model.lm_head
    upstream = torch.randn(8, 16, generator=torch.Generator().manual_seed(3))

    model.zero_grad()
    lp, ent = sequence_logprobs(model, *batch, temperature=0.8, with_entropy=True)
    (lp * upstream).sum().backward()
    fused = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    logits = completion_logits(model, *batch)
    ref = token_logprobs(logits, batch[2], 0.8) * batch[3]
    (ref * upstream).sum().backward()

    torch.testing.assert_close(lp, ref, atol=1e-6, rtol=0)
    # entropy ~ log V = 4.6: fp32 rounding of its two terms is relative, hence rtol
    torch.testing.assert_close(ent, entropy_from_logits(logits.detach(), 0.8), atol=1e-6, rtol=1e-6)
    for name, p in model.named_parameters():
        torch.testing.assert_close(fused[name], p.grad, atol=1e-6, rtol=1e-5, msg=name)


def test_no_vocabulary_sized_activation_is_kept_for_backward(tiny):
    model, tok = tiny
    vocab = model.lm_head.weight.shape[0]
    batch = _batch(tok)

    def saved_shapes(fn):
        shapes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: shapes.append(tuple(t.shape)) or t, lambda t: t):
            fn()
        return shapes

    fused = saved_shapes(lambda: sequence_logprobs(model, *batch))
    plain = saved_shapes(lambda: token_logprobs(completion_logits(model, *batch), batch[2]))
    assert any(s[-1] == vocab for s in plain)  # the plain path keeps (N, L, V) logits / log-softmax
    assert not any(len(s) >= 2 and s[-1] == vocab for s in fused)


def test_bf16_autocast_matches_the_logits_path(tiny):
    model, tok = tiny
    batch = _batch(tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lp, _ = sequence_logprobs(model, *batch)
        ref = token_logprobs(completion_logits(model, *batch), batch[2]) * batch[3]
        lp.sum().backward()
    assert lp.dtype == torch.float32
    torch.testing.assert_close(lp, ref, atol=2e-2, rtol=0)  # bf16 logits on both sides, fp32 log-sum-exp
    assert model.lm_head.weight.grad.dtype == torch.float32 and torch.isfinite(model.lm_head.weight.grad).all()
    model.zero_grad()


def test_logprobs_at_a_temperature_are_the_distribution_generate_samples_from():
    # One next token after a fixed prompt, sampled 20000 times at T = 0.5 by the rollout engine. The model's logits are
    # sharpened (LM head x 8) so that T = 0.5 and T = 1 give clearly different distributions; the empirical one must
    # match exp(log-probs at T = 0.5) (total variation within sampling noise) and not the T = 1 one.
    from lightning_trepo.rollout.engine import RolloutEngine, SamplingConfig

    model, tok = load_policy(PolicyConfig(tiny=TinyModelConfig(n_layer=1, n_embd=32, n_head=2, seed=7)))
    with torch.no_grad():
        model.lm_head.weight.mul_(8.0)
    prompt = torch.tensor([tok("12+3=", add_special_tokens=False).input_ids])
    n, vocab = 20000, model.config.vocab_size
    torch.manual_seed(0)
    engine = RolloutEngine(tok, max_batch_size=n, decoder="eager")
    gen = engine.generate(model, prompt, torch.ones_like(prompt), SamplingConfig(temperature=0.5, max_new_tokens=1),
                          num_return=n)
    empirical = torch.bincount(gen.completion_ids[:, 0], minlength=vocab).float() / n

    def distribution(temperature: float) -> torch.Tensor:
        every = torch.arange(vocab)[:, None]
        with torch.no_grad():
            lp, _ = sequence_logprobs(model, prompt.expand(vocab, -1), torch.ones(vocab, prompt.shape[1]), every,
                                      torch.ones_like(every), temperature)
        return lp[:, 0].exp()

    tempered, plain = distribution(0.5), distribution(1.0)
    assert abs(float(tempered.sum()) - 1.0) < 1e-5
    tv = 0.5 * (empirical - tempered).abs().sum()
    assert tv < 0.03, tv  # sampling noise for 20000 draws: about 0.01 (measured 0.006)
    assert 0.5 * (plain - tempered).abs().sum() > 0.3  # the check can tell the temperatures apart (measured 0.56)
    assert 0.5 * (empirical - plain).abs().sum() > 0.3
