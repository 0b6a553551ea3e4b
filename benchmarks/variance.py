"""Gradient variance per token of every estimator on SmolLM2-135M-Instruct, at the starting weights and at a
trained checkpoint (``lightning-trepo measure-variance`` twice, same prompts, same seed).

    nice -n 19 python benchmarks/variance.py                                   # starting weights only
    nice -n 19 python benchmarks/variance.py --ckpt_path runs/.../checkpoints/last.ckpt
    python benchmarks/variance.py --repeats 2 --prompts 1 --group-size 2 --max-new-tokens 8 \\
        --estimators reinforce rloo trepo:1x1 --out /tmp/variance                 # smoke run

Writes ``<out>/variance_start.{md,json,png}`` and, with ``--ckpt_path``, ``<out>/variance_trained.{md,json,png}``.
Cost per repeat ≈ generating B·G responses + the TRePO continuations (≈ K·M·T/2 tokens per response for each
trepo:MxK) + one forward and one backward per estimator over B·G responses. The knobs that trade time for interval
width: ``--repeats`` (interval width ∝ 1/√R), ``--prompts`` and ``--group-size`` (bigger estimates, fewer repeats
per minute), ``--estimators`` (each costs a backward; trepo also its continuations), ``--max-new-tokens``, and
``--params REGEX`` (measure a subset, e.g. the top layers: the backward stops below them).
Estimated on 2 free CPU cores with the defaults (R=16, B=2, G=4, T=32, six estimators): ~100 s per repeat
(generation ~15 s, continuations ~25 s, one backward ~8 s per estimator) + ~60 s loading, ~28 min per checkpoint.
Note: GRPO's std division rescales its gradient, so compare its variance with its |E g|^2 (or add grpo:none).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lightning_trepo.diagnostics.command import main as measure_variance  # noqa: E402

ESTIMATORS = ["reinforce", "rloo", "grpo", "remax", "trepo:1x2", "trepo:2x2"]


def parse_args(argv: list[str] | None) -> tuple[argparse.Namespace, list[str]]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default=str(ROOT / "configs" / "smollm2_grpo.yaml"))
    p.add_argument("--ckpt_path", default=None, help="also measure at this trained checkpoint")
    p.add_argument("--repeats", type=int, default=16)
    p.add_argument("--prompts", type=int, default=2)
    p.add_argument("--group-size", type=int, default=4)
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--estimators", nargs="+", default=ESTIMATORS)
    p.add_argument("--projection-dim", type=int, default=8192)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    return p.parse_known_args(argv)


def main(argv: list[str] | None = None) -> int:
    args, rest = parse_args(argv)
    common = ["--config", args.config, "--repeats", str(args.repeats), "--prompts", str(args.prompts),
              "--group-size", str(args.group_size), "--projection-dim", str(args.projection_dim),
              "--seed", str(args.seed), "--out", str(args.out), "--estimators", *args.estimators,
              "--model.init_args.rollout.sampling.max_new_tokens", str(args.max_new_tokens), *rest]
    runs = [("variance_start", [])]
    if args.ckpt_path:
        runs.append(("variance_trained", ["--ckpt_path", args.ckpt_path]))
    for name, extra in runs:
        rc = measure_variance([*common, "--name", name, *extra])
        if rc:
            return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
