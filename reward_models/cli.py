"""``lightning-trepo serve-reward`` and ``lightning-trepo score`` (wired by lightning_trepo.cli.main).

Both take a reward YAML: a ``class_path``/``init_args`` tree (or a training config holding one under
``model.init_args.reward``), built with jsonargparse as LightningCLI would.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import torch

from reward_models.base import Reward
from reward_models.combinators import nan_mean_std
from reward_models.config import build_reward
from reward_models.remote import group_chunks
from reward_models.rollouts import read_rollouts
from reward_models.server import MAX_BODY, MAX_CONNECTIONS, TOKEN_ENV, serve
from reward_models.types import RewardOutput


def serve_main(argv: list[str] | None = None) -> int:
    """``serve-reward --config <reward yaml> [--host 127.0.0.1] [--port 8000] [--device cpu]
    [--token-env TREPO_REWARD_TOKEN] [--max-body-mb 16] [--read-timeout 30] [--max-connections 64]``."""
    parser = argparse.ArgumentParser(prog="lightning-trepo serve-reward", description="Serve a reward tree over HTTP.")
    parser.add_argument("--config", required=True, help="reward YAML (class_path/init_args tree)")
    parser.add_argument("--host", default="127.0.0.1", help="interface to bind (0.0.0.0 = all: set a token)")
    parser.add_argument("--port", type=int, default=8000, help="port (0 = any free port)")
    parser.add_argument("--device", default=None, help="device for model-backed rewards, e.g. cuda:0")
    parser.add_argument("--token-env", default=TOKEN_ENV,
                        help="environment variable with the bearer token /score requires (unset = no authentication)")
    parser.add_argument("--max-body-mb", type=float, default=MAX_BODY / 2**20, help="request body limit in MiB")
    parser.add_argument("--read-timeout", type=float, default=30.0,
                        help="seconds a client has for its request line and headers, again for its body, "
                             "again to read the answer")
    parser.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                        help="connections held at once (lowered to what ulimit -n leaves); when full, the oldest "
                             "one still sending its request gets 503")
    args = parser.parse_args(argv)
    if args.max_body_mb <= 0 or args.read_timeout <= 0 or args.max_connections < 1:
        parser.error("--max-body-mb and --read-timeout must be > 0, --max-connections >= 1")
    token = os.environ.get(args.token_env) or None
    reward = _build_or_exit(parser, args.config)
    if args.device:
        reward.to(args.device)
    serve(reward, args.host, args.port, token, int(args.max_body_mb * 2**20), args.read_timeout, args.max_connections)
    return 0


def node_paths(reward: Reward, prefix: str = "") -> dict[str, Reward]:
    """Every node of the tree by its metric key (the root is ``"total"``)."""
    nodes = {prefix or "total": reward}
    for name, child in reward.children().items():
        nodes.update(node_paths(child, f"{prefix}/{name}" if prefix else name))
    return nodes


def summarize(out: RewardOutput, latency: dict[str, float]) -> list[dict[str, Any]]:
    """Per key: mean and population std over non-NaN values (:func:`nan_mean_std`; NaN when all are NaN), NaN rate,
    summed latency (nodes only)."""
    rows = []
    for key, values in {"total": out.rewards, **out.metrics}.items():
        values = values.double()
        mean, std = nan_mean_std(values, empty=math.nan)
        nan_rate = float(torch.isnan(values).double().mean()) if values.numel() else 0.0
        rows.append({"component": key, "mean": mean.item(), "std": std.item(), "nan_rate": nan_rate,
                     "latency_s": latency.get(key)})
    return rows


def score_main(argv: list[str] | None = None) -> int:
    """``score --rollouts <jsonl> --reward <yaml> [--batch-size 512] [--json] [--strict]``: re-score
    stored completions and print per-component mean, std, NaN rate and latency. Bad lines are
    reported on stderr (file:line: reason) and skipped (``--strict``: exit 2 at the first)."""
    parser = argparse.ArgumentParser(prog="lightning-trepo score", description="Re-score rollouts under a reward tree.")
    parser.add_argument("--rollouts", required=True, help="JSONL of {prompt, completion, metadata} rows")
    parser.add_argument("--reward", required=True, help="reward YAML (class_path/init_args tree)")
    parser.add_argument("--batch-size", type=int, default=512, help="rows per reward call (groups kept whole)")
    parser.add_argument("--device", default=None, help="device for model-backed rewards")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--strict", action="store_true", help="stop at the first bad line instead of skipping it")
    args = parser.parse_args(argv)
    bad: list[str] | None = None if args.strict else []
    try:
        samples = read_rollouts(args.rollouts, bad)
    except (OSError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    for message in bad or []:
        print(f"skipped {message}", file=sys.stderr)
    if not len(samples):
        parser.exit(2, f"error: no valid rollouts in {args.rollouts}\n")
    reward = _build_or_exit(parser, args.reward)
    if args.device:
        reward.to(args.device)
    nodes, latency, parts = node_paths(reward), {}, []
    groups = samples.group_index.tolist() if samples.group_index is not None else list(range(len(samples)))
    for rows in group_chunks(groups, max(1, args.batch_size)):
        parts.append((torch.tensor(rows, dtype=torch.long), reward(samples.select(rows))))
        for key, node in nodes.items():
            latency[key] = latency.get(key, 0.0) + node.last_latency_s
    table = summarize(RewardOutput.scatter(len(samples), parts), latency)
    source = f"{args.rollouts} ({len(bad)} bad lines skipped)" if bad else args.rollouts
    print(json.dumps(table, indent=1) if args.json else format_table(table, len(samples), source))
    return 0


def format_table(table: list[dict[str, Any]], n: int, source: str) -> str:
    width = max([len("component")] + [len(r["component"]) for r in table])
    lines = [
        f"{n} rollouts from {source}",
        f"{'component':<{width}}  {'mean':>10} {'std':>10} {'nan%':>7} {'latency_s':>10}",
    ]
    for r in table:
        lat = "" if r["latency_s"] is None else f"{r['latency_s']:.4f}"
        lines.append(
            f"{r['component']:<{width}}  {r['mean']:>10.4f} {r['std']:>10.4f} {100 * r['nan_rate']:>6.1f}% {lat:>10}"
        )
    return "\n".join(lines)


def _build_or_exit(parser: argparse.ArgumentParser, path: str) -> Reward:
    try:
        return build_reward(path)
    except (OSError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
        raise  # unreachable; parser.exit raises SystemExit


if __name__ == "__main__":  # python -m reward_models.cli {serve-reward,score} ...
    commands = {"serve-reward": serve_main, "score": score_main}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        sys.exit(f"usage: python -m reward_models.cli {{{','.join(commands)}}} ...")
    sys.exit(commands[sys.argv[1]](sys.argv[2:]))
