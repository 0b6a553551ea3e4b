"""Learning benchmark: REINFORCE, RLOO, ReMax, GRPO, PPO and TRePO from the same start, same budget.

Every algorithm starts from the same config (``configs/trepo.yaml`` by default: the shipped
``builtin:tiny-arith`` weights, the built-in addition task, the same reward, prompts in the same
seeded order, the same sampling, optimizer and learning rate); only ``model.class_path`` and the
algorithm's own keys change (``ALGORITHMS`` below). Each run stops at the same budget: generated
tokens (everything the rollout engine sampled for training: responses, ReMax's greedy baselines,
TRePO's continuations) or training wall-clock seconds. Held-out greedy accuracy is measured every
``--eval-every`` steps on a fixed held-out set (evaluation time is excluded from the clock and its
tokens from the budget).

    python benchmarks/learning.py                                # token budget, all six algorithms
    python benchmarks/learning.py --budget seconds --limit 120 --algorithms GRPO TRePO
    python benchmarks/learning.py -- --model.init_args.optimizer.init_args.lr 0.001   # CLI overrides
    python benchmarks/learning.py --config configs/smollm2_grpo.yaml --algorithms GRPO RLOO TRePO \
        --limit 60000 --eval-every 10 --dense 0 --eval-batch 200 --targets 0.5 0.7 --save-checkpoint GRPO \
        --out benchmarks/results/smollm2                           # a real model (smollm2 extra)

Writes ``<out>/learning.md`` (table), ``<out>/learning.png`` (held-out accuracy vs generated tokens
and vs wall time) and ``<out>/learning.json`` (every evaluation point). Accuracies carry a 95% Wilson
interval over the held-out prompts. ``--save-checkpoint NAME`` keeps that run's final weights as
``<out>/NAME.ckpt`` (e.g. for ``lightning-trepo measure-variance`` at a trained policy).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_trepo.cli.demo import eval_rows, quiet_build  # noqa: E402
from lightning_trepo.cli.main import build_cli  # noqa: E402
from lightning_trepo.rollout.plan import RolloutPlan  # noqa: E402
from lightning_trepo.tools.evaluation import evaluate_policy  # noqa: E402

ALGORITHMS: dict[str, list[str]] = {
    "REINFORCE": ["--model.class_path", "lightning_trepo.REINFORCE"],
    "RLOO": ["--model.class_path", "lightning_trepo.RLOO"],
    "ReMax": ["--model.class_path", "lightning_trepo.ReMax"],
    "GRPO": ["--model.class_path", "lightning_trepo.GRPO"],
    "PPO": ["--model.class_path", "lightning_trepo.PPO", "--model.init_args.value_model", "head"],
    "TRePO": ["--model.class_path", "lightning_trepo.TRePO"],
}
"""Algorithm -> the CLI arguments that differ from the base config (everything else is shared)."""


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval of a binomial proportion: (p + z²/2n ± z·sqrt(p(1−p)/n + z²/4n²)) / (1 + z²/n)."""
    if n == 0:
        return float("nan"), float("nan")
    p = successes / n
    centre, half = p + z * z / (2 * n), z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (centre - half) / (1 + z * z / n), (centre + half) / (1 + z * z / n)


def first_reaching(points: list[dict[str, Any]], target: float) -> dict[str, Any] | None:
    """The first evaluation point whose held-out accuracy is at least ``target``, or None.

    Compared in counts where the point has them (``solved >= target * prompts``, with a 1e-9 slack for the
    product), so 140 of 200 reaches 0.7 although 140/200 stored as a float32 is 0.69999999; a point with only an
    ``accuracy`` (results written before the counts were kept) is compared with the same slack."""
    for p in points:
        if "solved" in p and "prompts" in p:
            if p["solved"] >= target * p["prompts"] - 1e-9:
                return p
        elif p["accuracy"] >= target - 1e-6:
            return p
    return None


def to_targets(points: list[dict[str, Any]], targets: list[float]) -> dict[str, tuple[int, float] | None]:
    """Target -> (generated tokens, training seconds) at the first point that reaches it, or None."""
    reach = {t: first_reaching(points, t) for t in targets}
    return {str(t): (p["tokens"], p["seconds"]) if p else None for t, p in reach.items()}


def episode_accuracy(module: Any, datamodule: Any) -> tuple[int, int]:
    """(solved, prompts) of greedy episodes on the datamodule's held-out prompts (``data.val_source``, with the
    config's system prompt and chat template), played with the module's own environment by ``validation_step``'s
    ``held_out_rollouts``; their tokens stay out of the budget (the engine's counter is restored)."""
    plan = RolloutPlan(group_size=1, sampling=module.rollout_cfg.sampling, greedy=True)
    threshold = module.rollout_cfg.val_success_threshold
    counted = module.engine.generated_tokens
    solved = prompts = 0
    for batch in datamodule.val_dataloader():
        _, (rewards,) = module.held_out_rollouts([plan], batch)
        solved += int((torch.nan_to_num(rewards, nan=-math.inf) >= threshold).sum())
        prompts += len(rewards)
    module.engine.generated_tokens = counted
    return solved, prompts


class BudgetTracker(Callback):
    """Counts training-generated tokens and training wall time, evaluates held-out accuracy, stops at the budget."""

    def __init__(self, rows: list[dict], budget: str, limit: float, eval_every: int, dense: int = 20,
                 eval_batch: int = 64, points_file: Path | None = None) -> None:
        """Evaluates after each of the first ``dense`` steps (where most learning happens), then every
        ``eval_every``; ``eval_batch`` prompts per generate call; each point is also appended to ``points_file``
        as it is measured, so an interrupted run keeps what it measured."""
        self.rows, self.budget, self.limit, self.eval_every, self.dense = rows, budget, limit, eval_every, dense
        self.eval_batch, self.points_file = eval_batch, points_file
        self.points: list[dict[str, float]] = []
        self.train_seconds, self._t = 0.0, 0.0

    def tokens(self, module: Any) -> int:
        return module.engine.generated_tokens if module._engine is not None else 0

    def evaluate(self, trainer: Any, module: Any) -> None:
        if module.environment is not None:
            solved, prompts = episode_accuracy(module, trainer.datamodule)
        else:
            res = evaluate_policy(module.policy, module.tokenizer, self.rows, module.reward, num_samples=0,
                                  sampling=module.rollout_cfg.sampling,
                                  threshold=module.rollout_cfg.val_success_threshold, batch_size=self.eval_batch,
                                  use_chat_template=module.policy_cfg.use_chat_template)
            solved, prompts = round(res.greedy_accuracy * res.num_prompts), res.num_prompts
        self.points.append({"step": trainer.global_step, "tokens": self.tokens(module),
                            "seconds": round(self.train_seconds, 2), "accuracy": solved / prompts,
                            "solved": solved, "prompts": prompts, "ci95": wilson_interval(solved, prompts)})
        print(f"[bench] step {trainer.global_step}: {self.tokens(module):,} tokens, {self.train_seconds:.0f} s, "
              f"held-out greedy accuracy {solved / prompts:.1%}", flush=True)
        if self.points_file is not None:
            with open(self.points_file, "a") as handle:
                handle.write(json.dumps(self.points[-1]) + "\n")

    def on_train_start(self, trainer: Any, module: Any) -> None:
        self.evaluate(trainer, module)
        self._t = time.perf_counter()

    def on_train_batch_end(self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.train_seconds += time.perf_counter() - self._t
        used = self.tokens(module) if self.budget == "tokens" else self.train_seconds
        done = used >= self.limit
        step = trainer.global_step
        if done or step % self.eval_every == 0 or step <= self.dense:
            self.evaluate(trainer, module)
        if done:
            trainer.should_stop = True
        self._t = time.perf_counter()


def run_one(name: str, base: list[str], rows: list[dict], args: argparse.Namespace) -> dict[str, Any]:
    torch.manual_seed(0)
    cli = quiet_build(build_cli, base + ALGORITHMS[name] + [
        "--trainer.max_steps", "100000", "--trainer.limit_val_batches", "0", "--trainer.callbacks", "[]",
        "--trainer.enable_checkpointing", "false",
        "--trainer.enable_progress_bar", "false", "--trainer.logger.init_args.save_dir", str(args.out / "runs"),
        "--trainer.logger.init_args.name", name])
    tracker = BudgetTracker(rows, args.budget, args.limit, args.eval_every, args.dense, args.eval_batch,
                            points_file=args.out / f"{name}.points.jsonl")
    cli.trainer.callbacks.append(tracker)
    cli.model.configure_model()
    print(f"[bench] {name}: start", flush=True)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if name in args.save_checkpoint:
        cli.trainer.save_checkpoint(args.out / f"{name}.ckpt")
    pts = tracker.points
    steps = max(cli.trainer.global_step, 1)
    return {"algorithm": name, "points": pts, "steps": cli.trainer.global_step, "tokens": pts[-1]["tokens"],
            "seconds": pts[-1]["seconds"], "start": pts[0]["accuracy"],
            "final": sum(p["accuracy"] for p in pts[-3:]) / len(pts[-3:]), "last": pts[-1]["accuracy"],
            "last_ci95": pts[-1]["ci95"],
            "best": max(p["accuracy"] for p in pts), "s_per_step": pts[-1]["seconds"] / steps,
            "to_target": to_targets(pts, args.targets)}


def table(results: list[dict[str, Any]], args: argparse.Namespace) -> str:
    unit = "generated tokens" if args.budget == "tokens" else "training seconds"
    intro = (f"Budget: {args.limit:g} {unit} per algorithm; held-out greedy accuracy on {args.eval_size} prompts "
             f"of {args.config.name} (final = mean of the last 3 evaluations). Machine: {machine()}.")
    lines = [intro, "",
             "| algorithm | start | last (95% CI) | final | best | steps | gen. tokens | train s | s/step | "
             + " | ".join(f"tokens (s) to {100 * t:.0f}%" for t in args.targets) + " |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|" + "---:|" * len(args.targets)]
    for r in results:
        reach = [r["to_target"][str(t)] for t in args.targets]
        cells = " | ".join("—" if x is None else f"{x[0]:,} ({x[1]:.1f})" for x in reach)
        low, high = r["last_ci95"]
        lines.append(f"| {r['algorithm']} | {r['start']:.1%} | {r['last']:.1%} ({low:.1%}–{high:.1%}) | "
                     f"{r['final']:.1%} | {r['best']:.1%} | {r['steps']} | "
                     f"{r['tokens']:,} | {r['seconds']:.0f} | {r['s_per_step']:.2f} | {cells} |")
    return "\n".join(lines)


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            cpu = next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        cpu = platform.processor() or "unknown CPU"
    cores = os.cpu_count()
    threads = torch.get_num_threads()
    return f"{cpu} ({cores} cores), {threads} torch threads, torch {torch.__version__}, {platform.system()}"


def plot(results: list[dict[str, Any]], path: Path, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    for r in results:
        pts = r["points"]
        for ax, key in zip(axes, ("tokens", "seconds"), strict=False):
            ax.plot([p[key] for p in pts], [p["accuracy"] for p in pts], marker=".", label=r["algorithm"])
    for ax, label in zip(axes, ("generated tokens (training)", "training wall time (s)"), strict=False):
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set(xlabel=label, ylim=(0, 1.02))
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("held-out greedy accuracy")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle("Same start, same prompts, same reward, same budget")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=ROOT / "configs" / "trepo.yaml")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS), choices=list(ALGORITHMS))
    p.add_argument("--budget", choices=("tokens", "seconds"), default="tokens")
    p.add_argument("--limit", type=float, default=24_000, help="generated tokens or seconds per algorithm")
    p.add_argument("--eval-every", type=int, default=5, help="evaluate every N optimizer steps (after the first 20)")
    p.add_argument("--eval-size", type=int, default=200)
    p.add_argument("--dense", type=int, default=20, help="also evaluate after each of the first N steps")
    p.add_argument("--eval-batch", type=int, default=64, help="held-out prompts per generate call")
    p.add_argument("--save-checkpoint", nargs="*", default=[], help="algorithms whose final weights to keep")
    p.add_argument("--from-json", nargs="*", default=[],
                   help="no training: tabulate and plot the learning.json files of earlier runs (one per algorithm); "
                        "PATH=LABEL renames that file's runs to LABEL (e.g. two seeds of one algorithm)")
    p.add_argument("--targets", type=float, nargs="+", default=[0.9, 0.95])
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args, rest = p.parse_known_args(argv)
    return args, [a for a in rest if a != "--"]


def labelled_results(spec: str) -> list[dict[str, Any]]:
    """The runs of one ``learning.json``; ``PATH=LABEL`` names them LABEL (numbered when the file holds several)."""
    path, _, label = spec.partition("=")
    results = json.loads(Path(path).read_text())
    for i, r in enumerate(results):
        if label:
            r["algorithm"] = label if len(results) == 1 else f"{label} {i + 1}"
    return results


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    args, overrides = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.from_json:
        results = [r for spec in args.from_json for r in labelled_results(spec)]
        for r in results:  # recomputed, so a fix to how a target is reached reaches stored results too
            r["to_target"] = to_targets(r["points"], args.targets)
    else:
        base = ["--config", str(args.config), *overrides]
        probe = quiet_build(build_cli, base)
        rows = eval_rows(probe.datamodule, args.eval_size)
        results = [run_one(name, base, rows, args) for name in args.algorithms]
    text = table(results, args)
    (args.out / "learning.md").write_text(text + "\n")
    (args.out / "learning.json").write_text(json.dumps(results, indent=1) + "\n")
    plot(results, args.out / "learning.png", args.targets[0])
    print("\n" + text + f"\n\nplot: {args.out / 'learning.png'}")
    return results


if __name__ == "__main__":
    main()
