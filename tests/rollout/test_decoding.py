"""Decoders: the static-cache path samples what eager ``generate`` samples; greedy plans keep the rollout's budget."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo.policy import PolicyConfig, TinyModelConfig, load_policy
from lightning_trepo.rollout.decoding import pad_to_buckets, row_bucket
from lightning_trepo.rollout.engine import RolloutEngine, RolloutPlan, SamplingConfig, left_pad


@pytest.fixture(scope="module")
def tiny():
    # random weights: near-uniform next-token distributions, so sampling differences would show at once
    model, tok = load_policy(PolicyConfig(tiny=TinyModelConfig(n_layer=2, n_embd=32, n_head=2, n_positions=96,
                                                               seed=11)))
    return model.eval(), tok


def _prompts(tok, texts):
    return left_pad([tok(t, add_special_tokens=False).input_ids for t in texts], tok.pad_token_id)


@pytest.mark.parametrize("sampling", [
    SamplingConfig(max_new_tokens=56),
    SamplingConfig(max_new_tokens=56, temperature=0.7, top_k=7, top_p=0.9),
    SamplingConfig(max_new_tokens=56, stop_at_eos=False),
])
def test_static_decoder_samples_the_same_tokens_as_eager_generate(tiny, sampling):
    model, tok = tiny
    # 8 rows and prompt width 8 + budget 56 = 64: already on a bucket, so the static path pads nothing and
    # draws from the generator in exactly the same order as eager generate
    ids, mask = _prompts(tok, ["12+7=", "1234567=", "3+4="])
    ids, mask = ids[[0, 1, 2, 0]], mask[[0, 1, 2, 0]]
    out = {}
    for decoder in ("eager", "static"):
        engine = RolloutEngine(tok, decoder=decoder, bucket_tokens=64)
        torch.manual_seed(123)
        out[decoder] = engine.generate(model, ids, mask, sampling, num_return=2)
    assert torch.equal(out["static"].completion_ids, out["eager"].completion_ids)
    assert torch.equal(out["static"].completion_mask, out["eager"].completion_mask)
    if not sampling.stop_at_eos:
        assert out["static"].completion_ids.shape == (8, 56) and bool(out["static"].truncated.all())


def test_bucket_padding_does_not_change_greedy_completions(tiny):
    model, tok = tiny
    ids, mask = _prompts(tok, ["12+7=", "123+45=", "9=", "77+1=", "5+5+5="])  # 5 rows -> 8, width 7 -> 64 - 13
    greedy = SamplingConfig(max_new_tokens=13)
    eager = RolloutEngine(tok, decoder="eager").generate(model, ids, mask, greedy, greedy=True)
    static = RolloutEngine(tok, decoder="static", bucket_tokens=64).generate(model, ids, mask, greedy, greedy=True)
    assert torch.equal(static.completion_ids, eager.completion_ids)


def test_row_buckets_and_token_buckets():
    assert [row_bucket(n) for n in (1, 2, 3, 5, 8, 9, 64, 65, 130)] == [1, 2, 4, 8, 8, 16, 64, 128, 192]
    ids = torch.tensor([[0, 5, 6], [7, 8, 9], [0, 0, 4]])
    mask = (ids != 0).long()
    # width 3 + 7 new tokens = 10 -> 16: six more left pads; 3 rows -> 4: row 0 appended once
    pids, pmask = pad_to_buckets(ids, mask, pad_id=0, new_tokens=7, bucket_tokens=16)
    assert pids.shape == (4, 9) and pmask.shape == (4, 9)
    assert pids[:3, 6:].tolist() == ids.tolist() and pmask[:3, :6].sum() == 0
    assert torch.equal(pids[3], pids[0]) and torch.equal(pmask[3], pmask[0])


def test_auto_decoder_falls_back_to_eager_once_the_fast_path_fails(tiny, monkeypatch):
    model, tok = tiny
    ids, mask = _prompts(tok, ["12+7=", "3+4="])
    engine = RolloutEngine(tok, decoder="auto")
    monkeypatch.setattr(engine, "_use_static", lambda m, i: engine.static_failure is None)
    monkeypatch.setattr(engine, "_use_native", lambda m, i: False)  # the CUDA situation: auto means static

    def broken(*args, **kwargs):
        raise RuntimeError("capture failed")

    monkeypatch.setattr(engine, "_generate_static", broken)
    greedy = SamplingConfig(max_new_tokens=6)
    with pytest.warns(RuntimeWarning, match="capture failed"):
        out = engine.generate(model, ids, mask, greedy, greedy=True)
    expected = RolloutEngine(tok, decoder="eager").generate(model, ids, mask, greedy, greedy=True)
    assert torch.equal(out.completion_ids, expected.completion_ids)
    assert engine.static_failure == "RuntimeError: capture failed"
    forced = RolloutEngine(tok, decoder="static")
    monkeypatch.setattr(forced, "_generate_static", broken)
    with pytest.raises(RuntimeError, match="capture failed"):  # decoder=static never hides a failure
        forced.generate(model, ids, mask, greedy, greedy=True)


def test_unknown_decoder_is_refused(tiny):
    with pytest.raises(ValueError, match="rollout.decoder 'fast'"):
        RolloutEngine(tiny[1], decoder="fast")


def test_greedy_baseline_decodes_within_the_rollout_budget(tiny):
    # the budget (40) exceeds SamplingConfig's default (32): the greedy baseline must run all 40 tokens when EOS does
    # not stop it, exactly like the samples (before the fix it stopped at 32)
    model, tok = tiny
    engine = RolloutEngine(tok, decoder="eager")
    plan = RolloutPlan(group_size=2, sampling=SamplingConfig(max_new_tokens=40, stop_at_eos=False),
                       greedy_baseline=True)
    rollout = engine.rollout(model, plan, ["1+1=", "22+3="], [tok("1+1=").input_ids, tok("22+3=").input_ids],
                             [{}, {}], torch.device("cpu"))
    baseline = rollout.greedy
    assert rollout.completion_ids.shape[1] == 40
    assert baseline.completion_ids.shape == (2, 40) and bool(baseline.truncated.all())


def test_validation_greedy_plan_uses_the_rollout_budget(tmp_path):
    import lightning.pytorch as pl

    from lightning_trepo import GRPO
    from lightning_trepo.data import BuiltinTaskSource
    from reward_models import FunctionReward
    from tests.helpers import datamodule, trainer

    pl.seed_everything(0)
    cfg = dict(group_size=2, sampling=SamplingConfig(max_new_tokens=40, stop_at_eos=False), val_num_samples=0)
    from lightning_trepo import RolloutConfig

    # the shared TINY policy holds 64 positions, too few for 40 new tokens after a prompt
    policy = PolicyConfig(tiny=TinyModelConfig(n_layer=1, n_head=2, n_embd=32, n_positions=96, seed=1))
    module = GRPO(reward=FunctionReward("tests.modules.rewards.length_reward"), policy=policy,
                  rollout=RolloutConfig(**cfg))
    seen = []
    original = module.log_validation
    module.log_validation = lambda rollouts, rewards, n: (seen.extend(rollouts), original(rollouts, rewards, n))
    t = trainer(tmp_path, max_steps=1, val_check_interval=1, check_val_every_n_epoch=None, limit_val_batches=1)
    t.fit(module, datamodule=datamodule(batch_size=2, val_batch_size=2,
                                        val_source=BuiltinTaskSource(task="addition", split="test", size=4)))
    assert seen and all(r.completion_ids.shape[1] == 40 for r in seen)


@pytest.mark.parametrize("max_batch_size", [256, 4])  # 4: calls of 2 prefixes x 2 continuations, 4 + 4 + 2 rows
def test_shared_prefix_continuations_sample_what_repeated_prefixes_sample(tiny, max_batch_size):
    # K continuations of a prefix decoded from ONE prefill (cache repeated row-wise) draw exactly the tokens that K
    # separately prefilled copies draw: same logits, same generator order
    model, tok = tiny
    ids, mask = _prompts(tok, ["12+7=34", "1234567=8", "3+4=", "9+9=1", "77="])
    sampling = SamplingConfig(max_new_tokens=12, temperature=0.9)
    engine = RolloutEngine(tok, decoder="eager", max_batch_size=max_batch_size)
    torch.manual_seed(7)
    shared = engine.generate(model, ids, mask, sampling, num_return=2, share_prefix=True)
    torch.manual_seed(7)
    repeated = engine.generate(model, ids, mask, sampling, num_return=2)
    assert torch.equal(shared.completion_ids, repeated.completion_ids)
    assert shared.completion_ids.shape[0] == 10 and shared.num_calls == repeated.num_calls == (
        1 if max_batch_size == 256 else 3
    )


def test_shared_prefix_prefills_each_prefix_once(tiny, monkeypatch):
    model, tok = tiny
    ids, mask = _prompts(tok, ["12+7=34", "3+4="])
    widths = []
    handle = model.register_forward_pre_hook(lambda m, args, kw: widths.append(tuple(kw["input_ids"].shape)),
                                             with_kwargs=True)
    try:
        RolloutEngine(tok, decoder="eager").generate(model, ids, mask, SamplingConfig(max_new_tokens=3), num_return=4,
                                                     share_prefix=True)
    finally:
        handle.remove()
    # the prefill: 2 prefixes x (7 - 1) tokens; then generate's steps on 8 rows, one token each (the uncached one)
    assert widths[0] == (2, 6) and all(w == (8, 1) for w in widths[1:]) and len(widths) >= 2


def test_auto_decoder_needs_a_compilable_architecture(tiny):
    from lightning_trepo.rollout.decoding import static_cache_unsupported

    model, _ = tiny
    assert static_cache_unsupported(model) is None  # GPT-2 is marked compilable by transformers
    assert "not a Hugging Face generation model" in static_cache_unsupported(torch.nn.Linear(2, 2))
    # on the CPU, auto decodes eagerly even for a compilable model
    assert not RolloutEngine(tiny[1], decoder="auto")._use_static(model, torch.zeros(1, 1, dtype=torch.long))


# ---------------------------------------------------------------- the native decode loop (auto on the CPU)
@pytest.mark.parametrize("stop_at_eos", [True, False])
def test_native_greedy_decoding_is_generates_exactly(tiny, stop_at_eos):
    model, tok = tiny
    ids, mask = _prompts(tok, ["12+7=", "1234567=", "3+4=", "9="])
    greedy = SamplingConfig(max_new_tokens=30, stop_at_eos=stop_at_eos)
    eager = RolloutEngine(tok, decoder="eager").generate(model, ids, mask, greedy, greedy=True)
    native = RolloutEngine(tok, decoder="native").generate(model, ids, mask, greedy, greedy=True)
    assert torch.equal(native.completion_ids, eager.completion_ids)
    assert torch.equal(native.completion_mask, eager.completion_mask)
    assert torch.equal(native.truncated, eager.truncated)


def test_native_shared_prefix_greedy_matches_generate(tiny):
    model, tok = tiny
    ids, mask = _prompts(tok, ["12+7=34", "1234567=8", "3+4="])
    greedy = SamplingConfig(max_new_tokens=9)
    eager = RolloutEngine(tok, decoder="eager").generate(model, ids, mask, greedy, num_return=3, greedy=True)
    native = RolloutEngine(tok, decoder="native").generate(model, ids, mask, greedy, num_return=3, greedy=True,
                                                           share_prefix=True)
    assert torch.equal(native.completion_ids, eager.completion_ids) and native.completion_ids.shape[0] == 9


def test_the_auto_decoder_is_native_on_the_cpu(tiny, monkeypatch):
    model, tok = tiny
    calls = []
    import lightning_trepo.rollout.engine as engine_mod

    monkeypatch.setattr(engine_mod, "native_decode", lambda *a, **k: calls.append(1) or torch.ones(1, 1).long())
    ids, mask = _prompts(tok, ["1+1="])
    RolloutEngine(tok, decoder="auto").generate(model, ids, mask, SamplingConfig(max_new_tokens=2))
    RolloutEngine(tok, decoder="eager").generate(model, ids, mask, SamplingConfig(max_new_tokens=2))
    assert calls == [1]


def test_filter_logits_is_generates_warpers():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    from lightning_trepo.rollout.decoding import filter_logits

    torch.manual_seed(0)
    logits = torch.randn(6, 50) * 3
    logits[0, :5] = 2.0  # ties at the k-th value are kept by both
    for t, k, p in [(1.0, 0, 1.0), (0.7, 7, 1.0), (1.3, 0, 0.8), (0.7, 7, 0.9), (1.0, 3, 0.05)]:
        expected = logits.clone()
        for warper in [TemperatureLogitsWarper(t), *([TopKLogitsWarper(k)] if k else []),
                       *([TopPLogitsWarper(p)] if p < 1 else [])]:
            expected = warper(None, expected)
        got = filter_logits(logits, t, k, p)
        assert torch.equal(torch.isinf(got), torch.isinf(expected)), (t, k, p)
        torch.testing.assert_close(got[~torch.isinf(got)], expected[~torch.isinf(expected)])


def test_inverse_cdf_sampler_draws_from_the_softmax():
    # 4 tokens with probabilities (0.1, 0.0, 0.6, 0.3): 200k draws, each frequency within 5 standard errors
    # (sqrt(p (1 - p) / n) <= 0.0011), the zero-probability (-inf) token never
    from lightning_trepo.rollout.decoding import sample_inverse_cdf

    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    logits = probs.log().expand(200_000, 4)
    torch.manual_seed(1)
    draws = sample_inverse_cdf(logits)
    freq = torch.bincount(draws, minlength=4).double() / draws.numel()
    assert freq[1] == 0
    torch.testing.assert_close(freq, probs.double(), atol=5 * 0.0011, rtol=0)
    # a clearly different law would fail: (0.2, 0, 0.5, 0.3) is 0.1 off on two tokens
    assert (freq - torch.tensor([0.2, 0.0, 0.5, 0.3]).double()).abs().max() > 0.05


def test_native_sampling_matches_the_model_distribution(tiny):
    # the first sampled token of 4,000 rows of one prompt at T = 0.7, top-k 5: the empirical law equals the
    # filtered softmax of the model's next-token logits (total variation < 0.04; sampling noise is ~0.015)
    from lightning_trepo.rollout.decoding import filter_logits

    model, tok = tiny
    ids, mask = _prompts(tok, ["12+7="])
    sampling = SamplingConfig(max_new_tokens=1, temperature=0.7, top_k=5)
    torch.manual_seed(3)
    out = RolloutEngine(tok, decoder="native").generate(model, ids, mask, sampling, num_return=4000)
    with torch.no_grad():
        logits = model(input_ids=ids, attention_mask=mask).logits[0, -1]
    law = filter_logits(logits[None], 0.7, 5, 1.0).softmax(-1)[0]
    freq = torch.bincount(out.completion_ids[:, 0], minlength=law.numel()).float() / 4000
    assert 0.5 * (freq - law).abs().sum() < 0.04
    assert set(out.completion_ids[:, 0].tolist()) <= set(torch.topk(logits, 5).indices.tolist())


def test_native_decoder_failure_falls_back_to_generate_under_auto(tiny, monkeypatch):
    model, tok = tiny
    import lightning_trepo.rollout.engine as engine_mod

    def broken(*a, **k):
        raise RuntimeError("no cache")

    monkeypatch.setattr(engine_mod, "native_decode", broken)
    ids, mask = _prompts(tok, ["12+7="])
    greedy = SamplingConfig(max_new_tokens=6)
    engine = RolloutEngine(tok, decoder="auto")
    with pytest.warns(RuntimeWarning, match="native decode loop failed"):
        out = engine.generate(model, ids, mask, greedy, greedy=True)
    expected = RolloutEngine(tok, decoder="eager").generate(model, ids, mask, greedy, greedy=True)
    assert torch.equal(out.completion_ids, expected.completion_ids)
    assert engine.native_failure == "RuntimeError: no cache"
    with pytest.raises(RuntimeError, match="no cache"):
        RolloutEngine(tok, decoder="native").generate(model, ids, mask, greedy, greedy=True)


def test_native_decoding_drops_rows_that_have_ended():
    # rows that emitted EOS leave the batch (with their cache rows): later forwards run fewer rows, and every row's
    # greedy tokens are still generate's
    model, tok = load_policy(PolicyConfig(model_path="builtin:tiny-arith"))  # trained: it answers, then EOS
    model.eval()
    ids, mask = _prompts(tok, ["12+7=", "3+4=", "55+55=", "8+1=", "70+40=", "1+2="])
    greedy = SamplingConfig(max_new_tokens=30)
    rows: list[int] = []
    hook = model.get_input_embeddings().register_forward_hook(lambda m, i, o: rows.append(i[0].shape[0]))
    native = RolloutEngine(tok, decoder="native").generate(model, ids, mask, greedy, greedy=True)
    hook.remove()
    eager = RolloutEngine(tok, decoder="eager").generate(model, ids, mask, greedy, greedy=True)
    assert torch.equal(native.completion_ids, eager.completion_ids)
    lengths = native.completion_mask.sum(dim=1)
    assert len(set(lengths.tolist())) > 1  # the rows end at different steps
    assert rows == sorted(rows, reverse=True) and rows[0] == 6
    # a row ends at the step it emits EOS (its length), and leaves before the next forward: forward t runs the
    # rows longer than t (the first drop threshold is one row: 6 // 8 = 0 -> 1)
    assert rows == [int((lengths > t).sum()) for t in range(len(rows))]
