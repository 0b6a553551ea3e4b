"""``lightning-trepo measure-variance``: gradient variance per token of every estimator on your model and reward.

    lightning-trepo measure-variance --config configs/grpo.yaml --repeats 16 --prompts 4
    lightning-trepo measure-variance --config configs/smollm2_grpo.yaml --ckpt_path runs/.../last.ckpt \\
        --estimators reinforce rloo grpo remax trepo:2x2 --out benchmarks/results --name variance_trained
    # anything the fit CLI takes goes after the flags, e.g. --model.init_args.rollout.sampling.max_new_tokens 16

The config's model, reward, data, sampling and update settings are used as they are; the first batch of
``--prompts`` prompts of its training stream is the fixed prompt set. See
:mod:`lightning_trepo.diagnostics.variance` for what is measured and how samples are shared.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch

from lightning_trepo.diagnostics.report import format_table, space_label, write_report
from lightning_trepo.diagnostics.stats import summarize
from lightning_trepo.diagnostics.variance import DEFAULT_ESTIMATORS, build_estimators, measure, parse_estimator


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(prog="lightning-trepo measure-variance", description=__doc__.splitlines()[0],
                                epilog="Other arguments are passed to the fit CLI (e.g. --model.init_args...).")
    p.add_argument("--config", action="append", required=True, help="a fit config (repeatable, as for fit)")
    p.add_argument("--ckpt_path", default=None, help="measure at this checkpoint's weights (default: the start)")
    p.add_argument("--repeats", type=int, default=16, help="R independent rollouts per estimator (>= 2)")
    p.add_argument("--prompts", type=int, default=4, help="B prompts of the fixed prompt set (data.batch_size)")
    p.add_argument("--group-size", type=int, default=None, help="G samples per prompt (default: the config's)")
    p.add_argument("--estimators", nargs="+", default=list(DEFAULT_ESTIMATORS),
                   help="reinforce rloo remax ppo trepo grpo[:group|batch|none] trepo:MxK[:loo|fresh] "
                        f"(default: {' '.join(DEFAULT_ESTIMATORS)}; ppo needs a PPO config)")
    p.add_argument("--projection-dim", type=int, default=8192,
                   help="d of the count-sketch projection of the gradient; 0 = every trainable parameter")
    p.add_argument("--params", default=None,
                   help="regex on parameter names: measure only those (e.g. 'layers\\.2[0-9]\\.'; default: all)")
    p.add_argument("--seed", type=int, default=0, help="seed of the rollouts, the projection and the bootstrap")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples of the repeats")
    p.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    p.add_argument("--out", type=Path, default=Path("runs/variance"), help="output directory")
    p.add_argument("--name", default="variance", help="file stem of the .md / .json / .png written")
    return p.parse_known_args(argv)


def fit_arguments(args: argparse.Namespace, rest: list[str]) -> list[str]:
    """The fit-CLI arguments (``run=False``: no subcommand) that build the config's module and data, without a
    logger or checkpoints."""
    out: list[str] = []
    for config in args.config:
        out += ["--config", config]
    out += ["--data.batch_size", str(args.prompts), "--trainer.logger", "false",
            "--trainer.enable_checkpointing", "false"]
    if args.group_size is not None:
        out += ["--model.init_args.rollout.group_size", str(args.group_size)]
    return out + [a for a in rest if a != "--"]


def load_weights(module: Any, path: str) -> str:
    """The checkpoint's weights into ``module`` (policy, and a PPO critic); returns the checkpoint file used."""
    from lightning_trepo.tools.export import find_checkpoint, load_checkpoint

    ckpt = find_checkpoint(path)
    state = load_checkpoint(ckpt)["state_dict"]
    if not any(k.startswith("policy.") for k in state):
        raise ValueError(f"--ckpt_path {ckpt}: its state_dict holds no policy.* weights")
    missing, unexpected = module.load_state_dict(state, strict=False)
    trainable = {n for n, p in module.named_parameters() if p.requires_grad}
    bad = [k for k in missing if k in trainable]
    if bad or unexpected:
        raise ValueError(f"--ckpt_path {ckpt}: weights do not match this config's {type(module).__name__} "
                         f"(missing trainable {bad[:5]}, unexpected {list(unexpected)[:5]})")
    return str(ckpt)


def main(argv: list[str] | None = None) -> int:
    from lightning_trepo.cli.fit import build_cli

    args, rest = parse_args(argv)
    specs = [parse_estimator(e) for e in args.estimators]  # bad estimator names fail before anything loads
    t0 = time.perf_counter()
    cli = build_cli(fit_arguments(args, rest), run=False)
    base, data = cli.model, cli.datamodule
    base.configure_model()
    base.to(cli.trainer.strategy.root_device)  # the config's trainer.accelerator
    ckpt = load_weights(base, args.ckpt_path) if args.ckpt_path else None
    data.connect(base.tokenizer, use_chat_template=base.policy_cfg.use_chat_template)
    batch = next(iter(data.train_dataloader()))
    modules = build_estimators(base, specs)
    load_s = time.perf_counter() - t0
    print(f"loaded in {load_s:.0f} s; {args.repeats} repeats x {len(modules)} estimators on {args.prompts} prompts",
          flush=True)
    m = measure(base, modules, batch, args.repeats, args.projection_dim, args.seed,
                progress=lambda s: print(s, flush=True), params=args.params)
    summary = summarize(m.grads, m.tokens, args.bootstrap, args.level, args.seed)
    cfg = base.rollout_cfg
    header = (f"Gradient variance per estimate, {type(base).__name__} config {' + '.join(args.config)}, "
              f"{'checkpoint ' + ckpt if ckpt else 'starting weights'}\n"
              f"{args.repeats} repeats, {args.prompts} prompts x G={cfg.group_size} shared samples, "
              f"max_new_tokens {cfg.sampling.max_new_tokens}, temperature {cfg.sampling.temperature}, "
              f"aggregation {base.update_cfg.aggregation}; over the {space_label(m.num_params, m.projection_dim)}"
              f"{' matching ' + repr(args.params) if args.params else ''}; "
              f"{int(100 * args.level)}% paired-bootstrap intervals ({args.bootstrap} resamples); "
              f"{m.seconds['total']:.0f} s measuring + {load_s:.0f} s loading")
    print(format_table(m.labels, summary, header), flush=True)
    meta = {"configs": args.config, "ckpt_path": ckpt, "repeats": args.repeats, "prompts": args.prompts,
            "group_size": cfg.group_size, "max_new_tokens": cfg.sampling.max_new_tokens,
            "temperature": cfg.sampling.temperature, "aggregation": base.update_cfg.aggregation,
            "num_params": m.num_params, "projection_dim": m.projection_dim,
            "space": space_label(m.num_params, m.projection_dim), "params": args.params, "seed": args.seed,
            "level": args.level, "bootstrap": args.bootstrap, "seconds": {**m.seconds, "load": load_s},
            "torch_threads": torch.get_num_threads(), "estimator_specs": args.estimators}
    for path in write_report(args.out, args.name, m.labels, summary, header, meta):
        print(f"wrote {path}")
    return 0
