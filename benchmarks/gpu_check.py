"""GPU check: a few GRPO and TRePO steps under DeepSpeed ZeRO-2 and FSDP2 on a random ~0.5B model.

    python benchmarks/gpu_check.py              # one GPU, a few minutes: tokens/s and peak GPU memory
    python benchmarks/gpu_check.py --devices 8  # every GPU of the node (Lightning launches the ranks)
    python benchmarks/gpu_check.py --dry-run    # CPU, tiny model, ~1 minute: checks this script itself

The model is a Qwen2 architecture built in code with random weights (hidden 1024, 30 layers, ~0.5B
parameters) and the project's character tokenizer, saved once to a temporary directory and loaded by
every run through the normal ``policy.model_path`` path (``from_pretrained``). Each (strategy,
algorithm) pair runs in its own subprocess (clean GPU memory, one failure does not hide the others);
the table at the end reports, per pair: seconds per step, generated tokens per second (all rollout
tokens, TRePO continuations included, over the whole step time after the first step, and the logged
generate-only rate), and peak allocated / reserved GPU memory.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import Callback

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = ("zero2", "fsdp2")
ALGORITHMS = ("grpo", "trepo")
GPU_MODEL = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=30, num_attention_heads=16,
                 num_key_value_heads=16)
TINY_MODEL = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="CPU, tiny model, 2 steps: checks the script")
    p.add_argument("--devices", type=int, default=1, help="GPUs (ranks) per run")
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 4; dry run 2)")
    p.add_argument("--batch-size", type=int, default=None, help="prompts per rank (default 16; dry run 2)")
    p.add_argument("--group-size", type=int, default=None, help="samples per prompt (default 8; dry run 2)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="completion length (default 128; dry run 8)")
    p.add_argument("--only", nargs="*", default=None, help="subset of strategy:algorithm, e.g. fsdp2:grpo")
    p.add_argument("--timeout", type=float, default=None, help="seconds per run (default 300; dry run 180)")
    p.add_argument("--json", type=Path, default=None, help="also write the results to this JSON file")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # strategy:algorithm of one run
    p.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--result", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    dry = args.dry_run
    for key, gpu, cpu in (("steps", 4, 2), ("batch_size", 16, 2), ("group_size", 8, 2), ("max_new_tokens", 128, 8),
                          ("timeout", 300.0, 180.0)):
        if getattr(args, key) is None:
            setattr(args, key, cpu if dry else gpu)
    return args


# ---------------------------------------------------------------------------------------------- the model
def build_random_model(path: Path, dry_run: bool) -> int:
    """Save a random Qwen2 causal LM + the character tokenizer to ``path``; return its parameter count."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.random_models import save_random_qwen2
    from lightning_trepo.policy import build_char_tokenizer

    return save_random_qwen2(path, build_char_tokenizer(), TINY_MODEL if dry_run else GPU_MODEL, max_positions=1024)


def digit_fraction(completions: list[str], **_: Any) -> list[float]:
    """Dense toy reward: the fraction of digits in the completion (random models vary, so advantages are non-zero)."""
    return [sum(c.isdigit() for c in text) / max(len(text), 1) for text in completions]


# ---------------------------------------------------------------------------------------------- one run
def make_strategy(name: str, dry_run: bool):
    if name == "fsdp2":
        from lightning.pytorch.strategies import ModelParallelStrategy

        return ModelParallelStrategy()
    if dry_run:  # Lightning's DeepSpeedStrategy refuses the CPU; this CPU-only subclass lifts that check
        sys.path.insert(0, str(ROOT))
        from benchmarks.cpu_deepspeed import CPUDeepSpeedStrategy

        return CPUDeepSpeedStrategy(stage=2, logging_batch_size_per_gpu=1)
    from lightning.pytorch.strategies import DeepSpeedStrategy

    return DeepSpeedStrategy(stage=2, logging_batch_size_per_gpu=1)


def make_module(algo: str, args: argparse.Namespace):
    import torch

    import lightning_trepo
    from lightning_trepo import PolicyConfig, RolloutConfig, SamplingConfig, UpdateConfig
    from reward_models import FunctionReward

    sys.path.insert(0, str(ROOT))  # FunctionReward imports digit_fraction by path
    common = dict(
        reward=FunctionReward("benchmarks.gpu_check.digit_fraction"),
        policy=PolicyConfig(model_path=str(args.model_dir), torch_dtype="float32"),
        rollout=RolloutConfig(group_size=args.group_size, max_generate_batch=512,
                              sampling=SamplingConfig(max_new_tokens=args.max_new_tokens)),
        update=UpdateConfig(kl_coef=0.01, aggregation="seq_mean_token_mean"),  # a KL reference: realistic memory
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6),
    )
    if algo == "grpo":
        return lightning_trepo.GRPO(**common)
    return lightning_trepo.TRePO(**common, num_anchors=2, num_continuations=2)


class StepMeter(Callback):
    """Wall time and generated tokens (rollouts + continuations) of every training step."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.tokens: list[int] = []
        self._t0, self._n0 = 0.0, 0

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        self._t0, self._n0 = time.perf_counter(), module.engine.generated_tokens

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
        self.times.append(time.perf_counter() - self._t0)
        self.tokens.append(module.engine.generated_tokens - self._n0)


def run_child(args: argparse.Namespace) -> None:
    import lightning.pytorch as pl
    import torch

    from lightning_trepo import PromptDataModule
    from lightning_trepo.data import BuiltinTaskSource

    strategy_name, algo = args.child.split(":")
    cuda = torch.cuda.is_available() and not args.dry_run
    pl.seed_everything(0)
    module, meter = make_module(algo, args), StepMeter()
    data = PromptDataModule(source=BuiltinTaskSource(task="addition", size=4096, seed=0), batch_size=args.batch_size,
                            max_prompt_length=64)
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=args.devices,
                         strategy=make_strategy(strategy_name, args.dry_run),
                         precision="bf16-mixed" if cuda else "32-true", max_steps=args.steps, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[meter])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=data)
    if trainer.global_rank != 0:
        return
    timed = slice(1, None) if len(meter.times) > 1 else slice(None)  # the first step pays warm-up
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if v.numel() == 1}
    result = {
        "run": args.child, "steps": trainer.global_step, "world_size": trainer.world_size,
        "s_per_step": sum(meter.times[timed]) / len(meter.times[timed]),
        "tokens_per_s": sum(meter.tokens[timed]) / sum(meter.times[timed]) * trainer.world_size,
        "generate_tokens_per_s": metrics.get("perf/tokens_per_s", math.nan) * trainer.world_size,
        "peak_alloc_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else math.nan,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30 if cuda else math.nan,
        "loss": metrics.get("loss/policy", math.nan), "reward": metrics.get("reward/total", math.nan),
        "params_sharded": module._params_sharded(),
    }
    args.result.write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------- driver
def runs_to_do(args: argparse.Namespace) -> list[str]:
    return args.only or [f"{s}:{a}" for s in STRATEGIES for a in ALGORITHMS]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.child:
        run_child(args)
        return 0
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU visible: use --dry-run to check the script on the CPU")
        return 2
    results, failures = [], []
    with tempfile.TemporaryDirectory(prefix="trepo-gpu-check-") as tmp:
        model_dir = Path(tmp) / "model"
        n_params = build_random_model(model_dir, args.dry_run)
        where = "CPU (dry run)" if args.dry_run else torch.cuda.get_device_name(0)
        print(f"random Qwen2, {n_params / 1e6:.1f}M parameters, on {where} x {args.devices}; "
              f"{args.steps} steps of B={args.batch_size} prompts x G={args.group_size}, "
              f"{args.max_new_tokens} new tokens")
        for run in runs_to_do(args):
            out = Path(tmp) / f"{run.replace(':', '_')}.json"
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", run, "--model-dir", str(model_dir),
                   "--result", str(out), "--devices", str(args.devices), "--steps", str(args.steps),
                   "--batch-size", str(args.batch_size), "--group-size", str(args.group_size),
                   "--max-new-tokens", str(args.max_new_tokens)] + (["--dry-run"] if args.dry_run else [])
            t0 = time.perf_counter()
            ok, log = run_with_timeout(cmd, args.timeout)
            ok = ok and out.exists()
            if ok:
                results.append({**json.loads(out.read_text()), "wall_s": time.perf_counter() - t0})
            else:
                failures.append(run)
                print(f"--- {run} FAILED ---\n{log[-3000:]}")
    print_table(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if failures:
        print(f"failed: {', '.join(failures)}")
    return 1 if failures else 0


def run_with_timeout(cmd: list[str], timeout: float) -> tuple[bool, str]:
    """Run one child run; on timeout kill its whole process group (every rank it launched)."""
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        log, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate()
        return False, f"timed out after {timeout:.0f} s\n{log}"
    return proc.returncode == 0, log


def print_table(results: list[dict[str, Any]]) -> None:
    head = (f"{'run':14} {'steps':>5} {'s/step':>7} {'tok/s':>9} {'gen tok/s':>10} {'peak GiB':>9} {'reserved':>9} "
            f"{'wall s':>7}")
    print(head)
    print("-" * len(head))
    for r in results:
        print(f"{r['run']:14} {r['steps']:5d} {r['s_per_step']:7.2f} {r['tokens_per_s']:9.0f} "
              f"{r['generate_tokens_per_s']:10.0f} {r['peak_alloc_gib']:9.2f} {r['peak_reserved_gib']:9.2f} "
              f"{r['wall_s']:7.0f}")


if __name__ == "__main__":
    sys.exit(main())
