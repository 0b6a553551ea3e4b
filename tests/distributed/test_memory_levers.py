"""Memory levers on one process: LoRA (reference = adapter-disabled policy), gradient checkpointing,
reference and reward offload, and the FSDP2 block finder. Every lever must leave the update unchanged
(or, for LoRA, restricted to the adapters). Single-process unit tests (about 3 s together): not marked
``distributed``, so the quick selection runs them."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from lightning_trepo import GRPO, UpdateConfig
from lightning_trepo.policy import AdapterDisabled, LoraConfig, load_policy
from lightning_trepo.rollout.logprobs import sequence_logprobs
from lightning_trepo.training.sharding import Offloaded, transformer_blocks
from reward_models import FunctionReward
from tests.distributed.workers import REWARD, SeededGRPO, quiet_trainer
from tests.helpers import TINY, datamodule, rollout_cfg

LORA = dataclasses.replace(TINY, lora=LoraConfig(r=4, alpha=8.0, target_modules=["c_attn", "c_fc"]))
IDS = torch.tensor([[5, 6, 7, 8, 9, 10]])


def logits(model: nn.Module) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=IDS, attention_mask=torch.ones_like(IDS)).logits


def grpo(policy=TINY, kl_coef: float = 0.1, seeded: bool = False, **update) -> GRPO:
    cls = SeededGRPO if seeded else GRPO
    return cls(reward=FunctionReward(REWARD), policy=policy, rollout=rollout_cfg(group_size=4, max_new_tokens=5),
               update=UpdateConfig(kl_coef=kl_coef, aggregation="seq_mean_token_mean", **update),
               optimizer=lambda p: torch.optim.SGD(p, lr=0.5))


def fit(module: GRPO, steps: int = 1, **kw) -> GRPO:
    torch.manual_seed(0)
    trainer = quiet_trainer(devices=1, max_steps=steps, **kw)
    trainer.fit(module, datamodule=datamodule(batch_size=2))
    module.trainer_optimizer = trainer.optimizers[0]
    return module


# ---------------------------------------------------------------------------------------------- LoRA
def test_lora_reference_is_the_adapter_disabled_policy_not_a_copy():
    module = grpo(LORA)
    module.configure_model()
    ref = module.ref_model
    assert isinstance(ref, AdapterDisabled) and ref.policy is module.policy
    assert list(ref.parameters()) == [] and not any("_frozen" in k for k in module.state_dict())  # no second copy
    trainable = [n for n, p in module.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    base = load_policy(TINY)[0]
    torch.testing.assert_close(logits(ref), logits(base), atol=0, rtol=0)  # adapters off = the base model
    torch.testing.assert_close(logits(module.policy), logits(base), atol=1e-6, rtol=0)  # B = 0 at init: KL = 0


def test_lora_trains_only_the_adapters_and_the_reference_stays_the_base_model():
    module = grpo(LORA)
    module.configure_model()
    before = {n: p.detach().clone() for n, p in module.policy.named_parameters()}
    fit(module, steps=2)
    in_optimizer = {id(p) for g in module.trainer_optimizer.param_groups for p in g["params"]}
    after = dict(module.policy.named_parameters())
    for name, p in after.items():
        assert (id(p) in in_optimizer) == ("lora_" in name), name
        if "lora_" not in name:
            assert torch.equal(p, before[name]), f"frozen base weight {name} moved"
    assert any(not torch.equal(after[n], before[n]) for n in after if "lora_B" in n)
    base = load_policy(TINY)[0]
    torch.testing.assert_close(logits(module.ref_model), logits(base), atol=0, rtol=0)
    assert (logits(module.policy) - logits(base)).abs().max() > 1e-5  # the policy itself moved


def test_lora_config_validates():
    with pytest.raises(ValueError, match="policy.lora.r"):
        LoraConfig(r=0)


# ---------------------------------------------------------------------------------------------- checkpointing
def test_gradient_checkpointing_recomputes_and_gives_the_same_gradients():
    grads, calls = {}, {}
    for gc in (False, True):
        model, _ = load_policy(dataclasses.replace(TINY, gradient_checkpointing=gc))
        mlp, count = model.transformer.h[0].mlp, [0]
        inner = mlp.forward

        def counted(*a, _inner=inner, _count=count, **k):
            _count[0] += 1
            return _inner(*a, **k)

        mlp.forward = counted
        mask = torch.ones_like(IDS)
        lp, _ = sequence_logprobs(model, IDS[:, :3], mask[:, :3], IDS[:, 3:], mask[:, 3:])
        lp.sum().backward()
        grads[gc] = {n: p.grad.clone() for n, p in model.named_parameters()}
        calls[gc] = count[0]
    assert calls == {False: 1, True: 2}  # the block's forward is replayed in backward
    for n in grads[False]:
        torch.testing.assert_close(grads[True][n], grads[False][n], atol=1e-6, rtol=1e-5)


def test_gradient_checkpointing_trains_like_without_it():
    plain = fit(grpo(kl_coef=0.0, seeded=True), gradient_clip_val=1.0)
    ckpt = fit(grpo(dataclasses.replace(TINY, gradient_checkpointing=True), kl_coef=0.0, seeded=True),
               gradient_clip_val=1.0)
    init = load_policy(TINY)[0].state_dict()
    a, b = plain.policy.state_dict(), ckpt.policy.state_dict()
    assert max((a[k] - init[k]).abs().max() for k in a) > 1e-4
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)


def test_lora_with_gradient_checkpointing_reaches_the_adapters():
    model, _ = load_policy(dataclasses.replace(LORA, gradient_checkpointing=True))
    mask = torch.ones_like(IDS)
    lp, _ = sequence_logprobs(model, IDS[:, :3], mask[:, :3], IDS[:, 3:], mask[:, 3:])
    lp.sum().backward()
    lora_b = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert lora_b and all(g is not None and g.abs().sum() > 0 for g in lora_b)  # frozen embeddings, grads still flow


# ---------------------------------------------------------------------------------------------- offload
def test_reference_offload_keeps_the_reference_on_cpu_and_the_same_kl():
    plain = fit(grpo(seeded=True))
    off = fit(grpo(dataclasses.replace(TINY, offload_reference=True), seeded=True))
    assert isinstance(off.ref_model, Offloaded)
    assert next(off.ref_model.parameters()).device.type == "cpu"
    assert not any(p is q for p in off.parameters() for q in off.ref_model.parameters())  # not in the optimizer
    a, b = plain.policy.state_dict(), off.policy.state_dict()
    for k in a:
        torch.testing.assert_close(b[k], a[k], atol=1e-6, rtol=1e-5)  # same KL gradient


class RecordingReward(FunctionReward):
    """length_reward that records where it is moved (a learned RM would move its weights)."""

    def __init__(self) -> None:
        super().__init__(REWARD)
        self.moves: list[str] = []

    def to(self, device):
        self.moves.append(str(torch.device(device)))
        return self


def test_reward_offload_visits_the_device_only_to_score():
    module = grpo(kl_coef=0.0)
    module.reward = RecordingReward()
    module.rollout_cfg.offload_reward = True
    fit(module)
    assert module.reward.moves[0] == "cpu"  # parked at fit start
    assert module.reward.moves[1:] == ["cpu", "cpu"] * (len(module.reward.moves[1:]) // 2)  # device then back
    assert len(module.reward.moves) >= 3


# ---------------------------------------------------------------------------------------------- FSDP2 blocks
@pytest.mark.parametrize("arch", ["gpt2", "qwen2", "llama"])
def test_transformer_blocks_are_found_for_common_architectures(arch):
    import transformers

    small = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                 num_key_value_heads=2)
    model = {
        "gpt2": lambda: load_policy(TINY)[0],
        "qwen2": lambda: transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**small)),
        "llama": lambda: transformers.LlamaForCausalLM(transformers.LlamaConfig(**small)),
    }[arch]()
    blocks = transformer_blocks(model)
    assert len(blocks) == model.config.num_hidden_layers
    assert len({type(b) for b in blocks}) == 1 and type(blocks[0]).__name__.endswith(("Block", "DecoderLayer"))


def test_transformer_blocks_see_through_lora():
    model, _ = load_policy(LORA)
    assert [type(b).__name__ for b in transformer_blocks(model)] == ["GPT2Block"] * TINY.tiny.n_layer
