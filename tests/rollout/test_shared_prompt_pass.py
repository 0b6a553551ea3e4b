"""The shared-prompt log-prob pass: each distinct prompt runs once, its KV cache is gathered to its rows, and the
log-probs, entropy and gradients equal one full forward per row."""
from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lightning_trepo.modules.config import UpdateConfig
from lightning_trepo.policy import PolicyConfig, TinyModelConfig, load_policy
from lightning_trepo.rollout.decoding import cache_argument
from lightning_trepo.rollout.logprobs import prompt_cache_supported, sequence_logprobs, shared_prompt_groups


def test_groups_are_the_distinct_prompts_with_their_first_row():
    ids = torch.tensor([[5, 6], [7, 8], [5, 6], [5, 6], [7, 8], [9, 9]])
    first, inverse = shared_prompt_groups(ids, torch.ones_like(ids))
    # every row's group holds its own prompt, and each group's representative is its first row
    assert torch.equal(ids[first][inverse], ids)
    assert sorted(first.tolist()) == [0, 1, 5]
    assert inverse[0] == inverse[2] == inverse[3] and inverse[1] == inverse[4] and len(set(inverse.tolist())) == 3


def test_no_groups_when_nothing_is_shared_or_nothing_precedes_the_last_token():
    ids = torch.tensor([[5, 6], [7, 8]])
    assert shared_prompt_groups(ids, torch.ones_like(ids)) is None
    single = torch.tensor([[5], [5]])
    assert shared_prompt_groups(single, torch.ones_like(single)) is None


def test_the_same_ids_under_another_padding_are_another_prompt():
    ids = torch.tensor([[0, 6], [0, 6]])  # token 0 is a real token in row 1, padding in row 0
    mask = torch.tensor([[0, 1], [1, 1]])
    assert shared_prompt_groups(ids, mask) is None


def _llama():
    torch.manual_seed(0)
    return LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                        tie_word_embeddings=True))


def _gpt2():
    return load_policy(PolicyConfig(tiny=TinyModelConfig(n_layer=2, n_embd=32, n_head=2, seed=5)))[0]


def _batch():
    """8 rows from 3 prompts in a scrambled order: one unpadded, one left padded by 2, one with a single real token
    (its shared prefix is all padding); ragged completions."""
    gen = torch.Generator().manual_seed(2)
    prompts = torch.randint(3, 99, (3, 6), generator=gen)
    masks = torch.ones_like(prompts)
    masks[1, :2] = 0
    masks[2, :5] = 0
    rows = torch.tensor([0, 0, 1, 2, 1, 0, 2, 1])
    completions = torch.randint(3, 99, (8, 7), generator=gen)
    completion_mask = torch.ones_like(completions)
    completion_mask[1, 4:] = 0
    completion_mask[3, 1:] = 0
    return prompts[rows], masks[rows], completions, completion_mask


@pytest.mark.parametrize("build", [_gpt2, _llama], ids=["gpt2", "llama"])
def test_shared_pass_equals_one_forward_per_row(build):
    model = build()
    batch = _batch()
    upstream = torch.randn(8, 7, generator=torch.Generator().manual_seed(3))
    results = []
    for cache_kw in (None, cache_argument(model)):
        model.zero_grad()
        logprobs, entropy = sequence_logprobs(model, *batch, temperature=0.9, with_entropy=True,
                                              prompt_cache_kw=cache_kw)
        (logprobs * upstream).sum().backward()
        results.append((logprobs.detach(), entropy, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (plain, plain_entropy, plain_grads), (shared, shared_entropy, shared_grads) = results
    assert (plain != 0).sum() == batch[3].sum()  # every real completion token has a log-prob, padding has none
    torch.testing.assert_close(shared, plain, atol=2e-6, rtol=0)
    torch.testing.assert_close(shared_entropy, plain_entropy, atol=2e-6, rtol=1e-6)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(shared_grads[name], grad, atol=1e-5, rtol=1e-5, msg=name)


def test_each_distinct_prompt_runs_once():
    model = _llama()
    prompt_ids, prompt_mask, completions, completion_mask = _batch()
    seen: list[tuple[int, ...]] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    sequence_logprobs(model, prompt_ids, prompt_mask, completions, completion_mask,
                      prompt_cache_kw=cache_argument(model))
    hook.remove()
    # 3 distinct prompts x their 5 columns before the last token, then 8 rows x (last prompt token + 7 completion)
    assert seen == [(3, 5), (8, 8)]


def test_unshared_batches_take_one_plain_forward():
    model = _llama()
    prompt_ids, prompt_mask, completions, completion_mask = (t[[0, 2, 3]] for t in _batch())  # 3 distinct prompts
    seen: list[tuple[int, ...]] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape)))
    sequence_logprobs(model, prompt_ids, prompt_mask, completions, completion_mask,
                      prompt_cache_kw=cache_argument(model))
    hook.remove()
    assert seen == [(3, 13)]


def test_gradient_checkpointing_turns_the_shared_pass_off():
    model = _llama()
    assert prompt_cache_supported(model)
    model.gradient_checkpointing_enable()  # a re-run layer in backward would append to the cache a second time
    assert not prompt_cache_supported(model)


def test_the_module_asks_for_it_unless_switched_off():
    from lightning_trepo import GRPO
    from reward_models import FunctionReward
    from tests.helpers import TINY

    def module(**update):
        m = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=TINY,
                 update=UpdateConfig(**update))
        m.configure_model()
        return m

    on = module()
    assert on.prompt_cache_kw(on.policy) == cache_argument(on.policy)
    off = module(shared_prompt_pass=False)
    assert off.prompt_cache_kw(off.policy) is None
