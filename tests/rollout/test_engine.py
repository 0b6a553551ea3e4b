"""Rollout path: masks, padding, batching of generate calls, policy loading."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo.policy import PolicyConfig, TinyModelConfig, load_policy
from lightning_trepo.rollout.engine import (
    RolloutEngine,
    RolloutPlan,
    SamplingConfig,
    completion_mask_from_eos,
    left_pad,
)
from lightning_trepo.rollout.logprobs import sequence_logprobs


@pytest.fixture(scope="module")
def tiny():
    model, tok = load_policy(PolicyConfig(tiny=TinyModelConfig(n_layer=1, n_embd=32, n_head=2, seed=3)))
    return model, tok


def test_completion_mask_includes_first_eos_and_nothing_after():
    # eos = 1. Row 0: EOS at index 1 -> mask 1,1 then 0s. Row 1: no EOS -> all real, truncated.
    # Row 2: EOS first -> only it. Row 3: a second EOS after the first is excluded.
    ids = torch.tensor([[5, 1, 0, 0], [5, 6, 7, 8], [1, 0, 0, 0], [4, 1, 9, 1]])
    mask, truncated = completion_mask_from_eos(ids, [1])
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0], [1, 1, 0, 0]]
    assert truncated.tolist() == [False, True, False, False]


def test_completion_mask_multiple_eos_ids():
    mask, truncated = completion_mask_from_eos(torch.tensor([[3, 7, 2, 2]]), [2, 7])
    assert mask.tolist() == [[1, 1, 0, 0]] and truncated.tolist() == [False]


def test_left_pad():
    ids, mask = left_pad([[4, 5, 6], [7]], pad_id=0)
    assert ids.tolist() == [[4, 5, 6], [0, 0, 7]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


def test_logprobs_invariant_to_prompt_and_completion_padding(tiny):
    model, tok = tiny
    prompt = tok("12+7=", add_special_tokens=False).input_ids
    other = tok("123+456=", add_special_tokens=False).input_ids
    comp = torch.tensor([tok.convert_tokens_to_ids(c) for c in "19"] + [tok.eos_token_id])
    # alone: no padding at all
    p_ids, p_mask = left_pad([prompt], 0)
    alone, _ = sequence_logprobs(model, p_ids, p_mask, comp[None], torch.ones(1, 3, dtype=torch.long))
    # batched next to a longer prompt (3 left pads) and with 4 extra right-padded completion slots
    p_ids, p_mask = left_pad([prompt, other], 0)
    c_ids = torch.zeros(2, 7, dtype=torch.long)
    c_ids[:, :3] = comp
    c_mask = torch.zeros(2, 7, dtype=torch.long)
    c_mask[:, :3] = 1
    batched, _ = sequence_logprobs(model, p_ids, p_mask, c_ids, c_mask)
    torch.testing.assert_close(batched[0, :3], alone[0], atol=1e-5, rtol=0)
    assert batched[0, 3:].abs().max() == 0  # padding contributes exactly nothing


def test_rollout_groups_are_contiguous_and_one_generate_call(tiny):
    model, tok = tiny
    engine = RolloutEngine(tok, max_batch_size=64)
    prompts = ["1+1=", "22+3="]
    ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    plan = RolloutPlan(group_size=3, sampling=SamplingConfig(max_new_tokens=5))
    r = engine.rollout(model, plan, prompts, ids, [{"answer": "2"}, {"answer": "25"}], torch.device("cpu"))
    assert engine.generate_calls == 1
    assert r.completion_ids.shape[0] == 6 and r.completion_ids.shape[1] <= 5
    assert r.group_index.tolist() == [0, 0, 0, 1, 1, 1]
    assert r.prompts == ["1+1="] * 3 + ["22+3="] * 3
    assert [m["answer"] for m in r.metadata] == ["2"] * 3 + ["25"] * 3
    # decoded text is exactly the masked tokens without specials
    for i in range(6):
        toks = r.completion_ids[i][r.completion_mask[i].bool()].tolist()
        assert r.completions[i] == tok.decode(toks, skip_special_tokens=True)
        assert bool(r.truncated[i]) == (tok.eos_token_id not in toks)


def test_generate_chunks_by_max_batch_size(tiny):
    model, tok = tiny
    engine = RolloutEngine(tok, max_batch_size=4)
    ids, mask = left_pad([tok("9+9=", add_special_tokens=False).input_ids] * 5, 0)
    out = engine.generate(model, ids, mask, SamplingConfig(max_new_tokens=3), num_return=2)
    assert out.completion_ids.shape[0] == 10 and out.num_calls == 3  # ceil(10 / 4)


def test_greedy_baseline_is_deterministic(tiny):
    model, tok = tiny
    engine = RolloutEngine(tok)
    prompts = ["3+4="]
    ids = [tok(prompts[0], add_special_tokens=False).input_ids]
    plan = RolloutPlan(group_size=2, sampling=SamplingConfig(max_new_tokens=6), greedy_baseline=True)
    a = engine.rollout(model, plan, prompts, ids, [{}], torch.device("cpu")).greedy
    b = engine.rollout(model, plan, prompts, ids, [{}], torch.device("cpu")).greedy
    assert a.num_samples == 1 and torch.equal(a.completion_ids, b.completion_ids)
    # greedy = argmax at every step: the first generated token is the argmax of the next-token logits
    p_ids, p_mask = left_pad(ids, 0)
    first = model(input_ids=p_ids, attention_mask=p_mask).logits[0, -1].argmax()
    assert a.completion_ids[0, 0] == first


def test_sampling_config_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        SamplingConfig(temperature=0.0)
    with pytest.raises(ValueError, match="top_p"):
        SamplingConfig(top_p=1.5)


def test_missing_model_path_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        load_policy(PolicyConfig(model_path=str(tmp_path / "does-not-exist")))
    with pytest.raises(FileNotFoundError, match="no shipped model"):
        load_policy(PolicyConfig(model_path="builtin:nope"))


def test_local_hf_directory_roundtrip(tiny, tmp_path):
    model, tok = tiny
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    loaded, ltok = load_policy(PolicyConfig(model_path=str(tmp_path / "m")))
    assert ltok.padding_side == "left" and ltok.eos_token_id == tok.eos_token_id
    ids = torch.tensor([tok("5+5=10", add_special_tokens=False).input_ids])
    torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-6, rtol=0)


@pytest.mark.parametrize("decoder", ["native", "eager"])
@pytest.mark.parametrize("share_prefix", [False, True])
def test_row_budgets_generate_only_kept_tokens_and_the_counter_equals_them(tiny, decoder, share_prefix):
    # stop_at_eos False: no row ends early, so row i of prefix p generates exactly budget[p] tokens; the counter sees
    # only those (3 * 2 + 1 * 2 + 5 * 2 = 18), every row cut by its budget is truncated, and nothing past a budget is
    # kept (the ids there are padding). The old path generated all rows to the longest budget (5 * 6 = 30 tokens).
    model, tok = tiny
    engine = RolloutEngine(tok, max_batch_size=4, decoder=decoder)
    prompt = tok("12+34=", add_special_tokens=False).input_ids
    ids, mask = left_pad([prompt, prompt[:-1], prompt], engine.pad_id)
    budget = torch.tensor([3, 1, 5])
    torch.manual_seed(0)
    out = engine.generate(model, ids, mask, SamplingConfig(max_new_tokens=6, stop_at_eos=False), num_return=2,
                          share_prefix=share_prefix, row_budget=budget)
    assert out.completion_mask.sum(-1).tolist() == [3, 3, 1, 1, 5, 5]
    assert engine.generated_tokens == int(out.completion_mask.sum()) == 18
    assert out.truncated.tolist() == [True] * 6
    assert (out.completion_ids[~out.completion_mask.bool()] == engine.pad_id).all()


def test_row_budget_keeps_an_eos_within_it_and_truncates_only_rows_cut_by_it():
    # within_budget: row 0 ended (EOS) at its 2nd token, budget 3: kept, not truncated; row 1 ended at its 4th token,
    # budget 3: cut to 3 tokens and truncated; row 2 never ended: truncated, cut to 2.
    from lightning_trepo.rollout.engine import within_budget

    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]])
    truncated = torch.tensor([False, False, True])
    new_mask, new_trunc = within_budget(mask, truncated, torch.tensor([3, 3, 2]), 4)
    assert new_mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 0, 0]]
    assert new_trunc.tolist() == [False, True, True]
