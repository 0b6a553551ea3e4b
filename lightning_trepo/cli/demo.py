"""``make demo``: TRePO teaches the shipped tiny model addition, with before/after numbers and a plot.

    python -m lightning_trepo.cli.demo                       # configs/trepo.yaml, a few minutes on 2 CPU cores
    python -m lightning_trepo.cli.demo --max-steps 2 --eval-size 16 --num-samples 2     # smoke run
    python -m lightning_trepo.cli.demo --config configs/grpo.yaml -- --model.init_args.update.kl_coef 0.01

The fit goes through the same ``TrepoCLI`` as ``lightning-trepo fit`` (arguments after ``--`` are
passed to it). Before and after the fit the policy is scored on held-out prompts of the config's
``data.val_source`` (greedy accuracy, pass@k); the table, a PNG of reward and validation accuracy
per step, a few sample completions and a JSON of the numbers are written next to the run's
``metrics.csv``. The last line printed is the plot's path.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from lightning_trepo.data.sources import BuiltinTaskSource
from lightning_trepo.tools.evaluation import EvalResult, evaluate_policy

DEFAULT_CONFIG = (
    Path(__file__).resolve().parents[1] / "configs" / "trepo.yaml"
)  # shipped in the package (configs/ links here)


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="python -m lightning_trepo.cli.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="algorithm config (default: configs/trepo.yaml)")
    p.add_argument("--max-steps", type=int, default=None, help="override trainer.max_steps (e.g. 2 for a smoke run)")
    p.add_argument("--eval-size", type=int, default=500, help="held-out prompts scored before and after")
    p.add_argument("--num-samples", type=int, default=8, help="sampled responses per prompt for pass@k")
    p.add_argument("--show", type=int, default=8, help="sample completions written to samples.md")
    p.add_argument("--save-dir", type=str, default=None, help="override the CSV logger's save_dir")
    args, rest = p.parse_known_args(argv)
    return args, [a for a in rest if a != "--"]


def eval_rows(datamodule: Any, size: int) -> list[dict[str, Any]]:
    """``size`` held-out rows: the built-in ``val_source`` regenerated at that size, else its first rows."""
    source = datamodule.val_source
    if source is None:
        train = datamodule.source
        if not isinstance(train, BuiltinTaskSource):
            raise ValueError("the demo needs data.init_args.val_source (held-out prompts) in the config")
        source = BuiltinTaskSource(task=train.task, split="test", seed=train.seed, digits=train.digits, size=size)
    if isinstance(source, BuiltinTaskSource):
        return BuiltinTaskSource(task=source.task, split=source.split, size=size, seed=source.seed,
                                 digits=source.digits, unique=source.unique).load()
    return source.load()[:size]


def evaluate(module: Any, rows: list[dict[str, Any]], num_samples: int) -> EvalResult:
    """Score the module's policy like its validation loop does (its reward, sampling and threshold)."""
    cfg = module.rollout_cfg
    ks = sorted({1, num_samples} | ({4} if num_samples >= 4 else set()))
    return evaluate_policy(module.policy, module.tokenizer, rows, module.reward, num_samples=num_samples, ks=ks,
                           sampling=cfg.sampling, threshold=cfg.val_success_threshold,
                           use_chat_template=module.policy_cfg.use_chat_template)


def table(before: EvalResult, after: EvalResult, label: str) -> str:
    ks = sorted(after.pass_at_k)
    head = f"| {'held-out ' + str(after.num_prompts) + ' prompts':<36} | greedy acc | " + \
        " | ".join(f"pass@{k:<2}" for k in ks) + " |"
    rule = "|" + "-" * 38 + "|-----------:|" + "|".join("--------:" for _ in ks) + "|"
    lines = [head, rule]
    for name, res in (("before (shipped weights)", before), (label, after)):
        cells = " | ".join(f"{100 * res.pass_at_k[k]:6.1f}%" for k in ks)
        lines.append(f"| {name:<36} | {100 * res.greedy_accuracy:9.1f}% | {cells} |")
    return "\n".join(lines)


def write_samples(path: Path, before: EvalResult, after: EvalResult, show: int) -> None:
    lines = ["# Held-out sample completions (greedy before -> greedy after; then sampled after)", ""]
    for b, a in list(zip(before.records, after.records, strict=False))[:show]:
        mark = lambda r: "ok" if r >= 1 else "wrong"  # noqa: E731
        lines.append(f"- prompt `{b['prompt']!r}` answer `{b['answer']}`: before `{b['greedy']!r}` "
                     f"({mark(b['greedy_reward'])}) -> after `{a['greedy']!r}` ({mark(a['greedy_reward'])}); "
                     f"samples after: {', '.join(repr(s) for s in a['samples'][:4])}")
    path.write_text("\n".join(lines) + "\n")


def quiet_build(build: Any, cli_args: list[str]) -> Any:
    """``build(cli_args, run=False)`` with ``sys.argv`` hidden (LightningCLI warns when both are given)."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        return build(cli_args, run=False)
    finally:
        sys.argv = saved


def run(argv: list[str] | None = None) -> dict[str, Any]:
    """Fit from the config and write the report; returns the numbers (also in ``demo_results.json``)."""
    from lightning_trepo.cli.fit import build_cli

    args, overrides = parse_args(argv)
    cli_args = ["--config", str(args.config), *overrides]
    if args.max_steps is not None:
        cli_args += ["--trainer.max_steps", str(args.max_steps)]
    if args.save_dir is not None:
        cli_args += ["--trainer.logger.init_args.save_dir", args.save_dir]
    t_start = time.perf_counter()
    cli = quiet_build(build_cli, cli_args)
    module, datamodule, trainer = cli.model, cli.datamodule, cli.trainer
    module.configure_model()
    rows = eval_rows(datamodule, args.eval_size)
    print(f"[demo] scoring the starting policy on {len(rows)} held-out prompts ...", flush=True)
    before = evaluate(module, rows, args.num_samples)
    print(f"[demo] before: greedy accuracy {before.greedy_accuracy:.1%}; training {type(module).__name__} "
          f"for {trainer.max_steps} steps", flush=True)
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=datamodule)
    fit_s = time.perf_counter() - t_fit
    after = evaluate(module, rows, args.num_samples)
    results = {"config": str(args.config), "algorithm": type(module).__name__, "steps": trainer.global_step,
               "fit_seconds": round(fit_s, 1), "total_seconds": round(time.perf_counter() - t_start, 1),
               "before": before.as_dict(), "after": after.as_dict(), "log_dir": str(trainer.logger.log_dir)}
    return report(results, before, after, module.rollout_cfg.val_num_samples, args.show)


def report(results: dict[str, Any], before: EvalResult, after: EvalResult, val_n: int, show: int) -> dict[str, Any]:
    """Write table, samples, JSON and plot next to the run's metrics.csv; print them; the plot path last."""
    from lightning_trepo.tools.plots import plot_training_curves

    log_dir, algo, steps = Path(results["log_dir"]), results["algorithm"], results["steps"]
    text = table(before, after, f"after {algo}, {steps} steps")
    log_dir.mkdir(parents=True, exist_ok=True)
    (log_dir / "demo_table.md").write_text(text + "\n")
    write_samples(log_dir / "samples.md", before, after, show)
    title = (
        f"{algo}: held-out greedy accuracy {before.greedy_accuracy:.0%} -> {after.greedy_accuracy:.0%} in {steps} steps"
    )
    results["plot"] = str(plot_training_curves(
        log_dir / "metrics.csv", log_dir / "demo.png", title=title, val_keys=("val/accuracy", f"val/pass@{val_n}"),
        extra_points={"before (demo eval)": (0, before.greedy_accuracy),
                      "after (demo eval)": (steps, after.greedy_accuracy)}))
    (log_dir / "demo_results.json").write_text(json.dumps(results, indent=2) + "\n")
    print("\n" + text)
    print(f"\nfit: {results['fit_seconds']:.0f} s for {steps} steps; whole demo {results['total_seconds']:.0f} s")
    print(f"samples: {log_dir / 'samples.md'}\nmetrics: {log_dir / 'metrics.csv'}")
    print(f"plot: {results['plot']}")
    return results


def main(argv: list[str] | None = None) -> None:
    run(argv)


if __name__ == "__main__":
    main()
