"""Per-rank entry points of the distributed tests: ``python -m tests.distributed.workers <scenario> <outdir>``.

Launched by :func:`tests.distributed.launch.launch` (torchrun-style environment). Each scenario writes
``<outdir>/<scenario>_rank<r>.json`` (and tensors as ``.pt``) for the tests to assert on.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback

from lightning_trepo import GRPO, SamplingConfig, UpdateConfig
from lightning_trepo.policy import LoraConfig, PolicyConfig, load_policy
from lightning_trepo.rollout.engine import Generated, RolloutEngine, completion_mask_from_eos, left_pad, right_pad
from reward_models import FunctionReward
from tests.helpers import TINY, datamodule, rollout_cfg

STEPS = 2
PER_RANK_BATCH = 2  # prompts per rank; the 1-process baseline uses 2x this
REWARD = "tests.modules.rewards.length_reward"  # non-zero variance in (almost) every group


def rank() -> int:
    return int(os.environ.get("RANK", 0))


def write(out: Path, name: str, payload: dict[str, Any]) -> None:
    (out / f"{name}_rank{rank()}.json").write_text(json.dumps(payload, indent=1, default=float))


# ---------------------------------------------------------------------------------------------- DDP
class SeededEngine(RolloutEngine):
    """Samples every completion alone, from a generator seeded by (prompt tokens, sample index).

    A rollout then depends only on the policy and the prompt, not on the rank, the batch or the other
    prompts beside it, so a 2-rank run and a 1-rank run over the same prompts draw the same samples.
    """

    def generate(self, model, prompt_ids, prompt_mask, sampling, num_return=1, greedy=False,
                 share_prefix=False) -> Generated:
        rows = []
        for i in range(prompt_ids.shape[0]):
            real = prompt_ids[i][prompt_mask[i].bool()]
            seed = zlib.crc32(str(real.tolist()).encode())
            for j in range(num_return):
                torch.manual_seed(seed + 7919 * j)
                one = super().generate(model, real[None], torch.ones_like(real)[None], sampling, 1, greedy=greedy)
                rows.append(one.completion_ids[0])
        ids = right_pad(rows, self.pad_id)
        mask, truncated = completion_mask_from_eos(ids, self.eos_ids)
        ids = torch.where(mask.bool(), ids, torch.full_like(ids, self.pad_id))
        return Generated(ids, mask, truncated, len(rows))


class SeededGRPO(GRPO):
    """GRPO with :class:`SeededEngine` rollouts that also remembers its rank-local (pre-reduction) metrics."""

    local_metrics: dict[str, float]

    @property
    def engine(self) -> RolloutEngine:
        if self._engine is None:
            self._engine = SeededEngine(self.tokenizer, self.rollout_cfg.max_generate_batch)
        return self._engine

    def log_metrics(self, metrics, prog_bar_keys=()):
        if not hasattr(self, "local_metrics"):
            self.local_metrics = {}
        self.local_metrics.update({k: float(v) for k, v in metrics.items() if torch.as_tensor(v).numel() == 1})
        super().log_metrics(metrics, prog_bar_keys)


def seeded_grpo() -> SeededGRPO:
    return SeededGRPO(reward=FunctionReward(REWARD), policy=TINY, rollout=rollout_cfg(group_size=4, max_new_tokens=5),
                      update=UpdateConfig(aggregation="seq_mean_token_mean"),
                      optimizer=lambda p: torch.optim.SGD(p, lr=1.0))


def quiet_trainer(**kw: Any) -> pl.Trainer:
    args: dict[str, Any] = dict(accelerator="cpu", max_steps=STEPS, logger=False, enable_checkpointing=False,
                                enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0)
    return pl.Trainer(**{**args, **kw})


def train_ddp(world: int, batch_size: int) -> tuple[dict[str, torch.Tensor], SeededGRPO, pl.Trainer]:
    """STEPS GRPO steps of SGD on the seeded rollouts with ``world`` DDP ranks of ``batch_size`` prompts each."""
    pl.seed_everything(0)
    module = seeded_grpo()
    trainer = quiet_trainer(devices=world, strategy="ddp" if world > 1 else "auto", gradient_clip_val=1.0)
    trainer.fit(module, datamodule=datamodule(batch_size=batch_size))
    return {k: v.detach().clone() for k, v in module.policy.state_dict().items()}, module, trainer


def scenario_ddp(out: Path) -> None:
    params, module, trainer = train_ddp(world=2, batch_size=PER_RANK_BATCH)
    torch.save(params, out / f"ddp_rank{rank()}.pt")
    synced = {k: float(v) for k, v in trainer.callback_metrics.items() if k in module.local_metrics}
    write(out, "ddp", {"local": module.local_metrics, "synced": synced, "world_size": trainer.world_size,
                       "synced_gpus": module.engine.synced_gpus, "params_sharded": module._params_sharded()})


# ---------------------------------------------------------------------------------------------- sharded
@contextmanager
def counting_all_gathers() -> Iterator[list[int]]:
    """Count all-gather collectives: torch.distributed's (FSDP2) and DeepSpeed's comm backend's (ZeRO-3)."""
    targets = [torch.distributed]
    if "deepspeed" in sys.modules:
        from deepspeed.comm import comm as ds_comm

        if ds_comm.cdb is not None:
            targets.append(ds_comm.cdb)
    names = ("all_gather_into_tensor", "_all_gather_base", "all_gather", "all_gather_single", "all_gather_base",
             "all_gather_coalesced")
    saved = [(t, n, getattr(t, n)) for t in targets for n in names if hasattr(t, n)]
    count = [0]

    def wrap(fn):
        def counted(*args, **kwargs):
            count[0] += 1
            return fn(*args, **kwargs)
        return counted

    for target, name, fn in saved:
        setattr(target, name, wrap(fn))
    try:
        yield count
    finally:
        for target, name, fn in saved:
            if target is torch.distributed:
                setattr(target, name, fn)
            else:
                delattr(target, name)  # back to the class's method


def uneven_generation(module: GRPO, gather: bool) -> dict[str, Any]:
    """Rank 0 generates 3 tokens, rank 1 generates 12 (EOS ignored): ranks stop at different steps."""
    module.rollout_cfg.gather_params = gather
    ids, mask = left_pad([module.tokenizer.encode("12+30=")], module.engine.pad_id, module.device)
    sampling = SamplingConfig(max_new_tokens=3 if rank() == 0 else 12, stop_at_eos=False)
    with counting_all_gathers() as gathers, module.generation_context() as gathered:
        synced = module.engine.synced_gpus
        gen = module.engine.generate(module.policy, ids, mask, sampling, num_return=2)
    return {"length": gen.completion_ids.shape[1], "all_gathers": gathers[0], "synced_gpus": synced,
            "gathered": gathered}


def uneven_calls(module: GRPO) -> dict[str, Any]:
    """Per-layer gathering, one row per generate call: rank 0 needs 1 call, rank 1 needs 3. The engine must have
    rank 0 join rank 1's extra calls (a rank with fewer TRePO continuations is the same situation)."""
    module.rollout_cfg.gather_params = False
    rows = 1 if rank() == 0 else 3
    ids, mask = left_pad([module.tokenizer.encode("7+8=")] * rows, module.engine.pad_id, module.device)
    saved, module.engine.max_batch_size = module.engine.max_batch_size, 1
    try:
        with module.generation_context():
            gen = module.engine.generate(module.policy, ids, mask, SamplingConfig(max_new_tokens=4), 1)
    finally:
        module.engine.max_batch_size = saved
    return {"rows": gen.completion_ids.shape[0], "synced_gpus": module.engine.synced_gpus}


class ShardedChecks(Callback):
    """After training, still inside the strategy: what is sharded, and generation with uneven lengths."""

    def __init__(self) -> None:
        self.result: dict[str, Any] = {}

    def on_train_end(self, trainer: pl.Trainer, module: GRPO) -> None:
        from torch.distributed.tensor import DTensor

        sharded = lambda m: [hasattr(p, "ds_id") or isinstance(p, DTensor) for p in m.parameters()]  # noqa: E731
        ref = module.ref_model
        self.result.update(
            policy_sharded=all(sharded(module.policy)), params_sharded=module._params_sharded(),
            ref_type=type(ref).__name__, ref_sharded=ref is not None and all(sharded(ref)),
            ref_in_optimizer=any(p is q for group in trainer.optimizers[0].param_groups for p in group["params"]
                                 for q in (ref.parameters() if ref is not None else [])),
            per_layer=uneven_generation(module, gather=False), gathered=uneven_generation(module, gather=True),
            uneven_calls=uneven_calls(module),
            sharded_after_gather=all(sharded(module.policy)),
        )
        self.result["full_params"] = full_params(trainer, module)


WATCHED = ("transformer.h.0.mlp.c_fc.weight", "transformer.wte.weight")  # compared with the initial weights
LORA_WATCHED = "lora_B.default.weight"  # first adapter matrix (zero at init)


def full_params(trainer: pl.Trainer, module: GRPO) -> dict[str, list[float]]:
    """A few full (gathered) policy tensors: the WATCHED weights (peft-prefixed names too) and a LoRA B."""
    from torch.distributed.tensor import DTensor

    named = dict(module.policy.named_parameters())
    out = {}
    for name in (*WATCHED, LORA_WATCHED):
        key = next((k for k in named if k.endswith(name)), None)
        if key is None:
            continue
        p = named[key]
        if isinstance(p, DTensor):
            full = p.full_tensor()
        elif hasattr(p, "ds_id"):
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                full = p.detach().clone()
        else:
            full = p.detach().clone()
        out[name] = full.flatten()[:64].tolist()
    return out


def initial_params() -> dict[str, list[float]]:
    model, _ = load_policy(TINY)
    named = dict(model.named_parameters())
    return {n: named[n].detach().flatten()[:64].tolist() for n in WATCHED}


def sharded_grpo(policy: PolicyConfig = TINY) -> GRPO:
    return GRPO(reward=FunctionReward(REWARD), policy=policy, rollout=rollout_cfg(group_size=2, max_new_tokens=6),
                update=UpdateConfig(kl_coef=0.05), optimizer=lambda p: torch.optim.SGD(p, lr=0.5))


def fit_sharded(strategy: Any, name: str, out: Path, policy: PolicyConfig = TINY) -> None:
    pl.seed_everything(0)
    module, checks = sharded_grpo(policy), ShardedChecks()
    trainer = quiet_trainer(devices=2, strategy=strategy, callbacks=[checks], gradient_clip_val=1.0)
    trainer.fit(module, datamodule=datamodule(batch_size=PER_RANK_BATCH))
    losses = {k: float(v) for k, v in trainer.callback_metrics.items() if k in ("loss/policy", "kl", "reward/total")}
    write(out, name, {**checks.result, "initial": initial_params(), "metrics": losses,
                      "generate_calls": module.engine.generate_calls})


def fit_trepo(strategy: Any, name: str, out: Path, gather: bool) -> None:
    """2 TRePO steps (continuations from anchors: more generate calls, per-rank prefix counts differ)."""
    from lightning_trepo import TRePO

    pl.seed_everything(0)
    rollout = rollout_cfg(group_size=2, max_new_tokens=6, gather_params=gather)
    module = TRePO(reward=FunctionReward(REWARD), policy=TINY, rollout=rollout, update=UpdateConfig(kl_coef=0.05),
                   optimizer=lambda p: torch.optim.SGD(p, lr=0.5), num_anchors=2, num_continuations=2)
    trainer = quiet_trainer(devices=2, strategy=strategy, gradient_clip_val=1.0)
    trainer.fit(module, datamodule=datamodule(batch_size=PER_RANK_BATCH))
    keys = ("loss/policy", "kl", "reward/total", "trepo/continuation_calls", "trepo/continuation_tokens")
    write(out, name, {"metrics": {k: float(v) for k, v in trainer.callback_metrics.items() if k in keys},
                      "global_step": trainer.global_step})


def scenario_fsdp2(out: Path) -> None:
    from lightning.pytorch.strategies import ModelParallelStrategy

    fit_sharded(ModelParallelStrategy(), "fsdp2", out)  # default sizes: data_parallel=1 x tensor_parallel=2 -> FSDP
    fit_trepo(ModelParallelStrategy(), "fsdp2_trepo", out, gather=True)


def scenario_deepspeed(out: Path) -> None:
    from benchmarks.cpu_deepspeed import CPUDeepSpeedStrategy

    fit_sharded(CPUDeepSpeedStrategy(stage=2, logging_batch_size_per_gpu=1), "zero2", out)
    fit_sharded(CPUDeepSpeedStrategy(stage=3, logging_batch_size_per_gpu=1), "zero3", out)
    fit_trepo(CPUDeepSpeedStrategy(stage=3, logging_batch_size_per_gpu=1), "zero3_trepo", out, gather=False)
    # a Hugging Face model directory: from_pretrained must load into ZeRO-3 partitions (rank 0 reads)
    hf_dir = out / "hf"
    if rank() == 0:  # (transformers saves from the main process only)
        model, tokenizer = load_policy(TINY)
        model.save_pretrained(hf_dir)
        tokenizer.save_pretrained(hf_dir)
    torch.distributed.barrier()
    hf = PolicyConfig(model_path=str(hf_dir))
    fit_sharded(CPUDeepSpeedStrategy(stage=3, logging_batch_size_per_gpu=1), "zero3_hf", out, hf)
    lora = dataclasses.replace(hf, lora=LoraConfig(r=4, alpha=8.0, target_modules=["c_attn"]))
    fit_sharded(CPUDeepSpeedStrategy(stage=3, logging_batch_size_per_gpu=1), "zero3_hf_lora", out, lora)


if __name__ == "__main__":
    scenario, outdir = sys.argv[1], Path(sys.argv[2])
    outdir.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    {"ddp": scenario_ddp, "fsdp2": scenario_fsdp2, "deepspeed": scenario_deepspeed}[scenario](outdir)
