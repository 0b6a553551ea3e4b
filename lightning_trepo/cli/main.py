"""The ``lightning-trepo`` console script: LightningCLI for fit/validate, plus tool subcommands.

    lightning-trepo fit --config configs/grpo.yaml [--config recipes/ddp.yaml] [--trainer.max_steps 2]
    lightning-trepo export runs/lightning_trepo/version_0 out/policy [--adapter-only]   # Hugging Face directory
    lightning-trepo verify-estimators        # exact bias/variance of the advantage estimators
    lightning-trepo measure-variance --config configs/grpo.yaml   # gradient variance per token, real rollouts
    lightning-trepo score --rollouts r.jsonl --reward configs/rewards/math_format_gate.yaml
    lightning-trepo serve-reward --config configs/rewards/math_format_gate.yaml --port 8000
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable

from lightning_trepo.cli.error_report import debug_requested, reporting_errors
from lightning_trepo.cli.fit import TrepoCLI, build_cli, run_callbacks

__all__ = ["TrepoCLI", "build_cli", "main", "run_callbacks"]  # TrepoCLI, build_cli, run_callbacks: cli/fit.py


def _tool_commands() -> dict[str, Callable[[list[str]], int | None]]:
    def verify(argv: list[str]) -> int | None:
        from lightning_trepo.theory.verify import main as run
        return run(argv)

    def score(argv: list[str]) -> int | None:
        from reward_models.cli import score_main
        return score_main(argv)

    def serve(argv: list[str]) -> int | None:
        from reward_models.cli import serve_main
        return serve_main(argv)

    def export(argv: list[str]) -> int | None:
        from lightning_trepo.tools.export import export_main
        return export_main(argv)

    def measure_variance(argv: list[str]) -> int | None:
        from lightning_trepo.diagnostics.command import main as run
        return run(argv)

    return {"export": export, "verify-estimators": verify, "score": score, "serve-reward": serve,
            "measure-variance": measure_variance}


def quiet_known_warnings() -> None:
    """Silence warnings that are expected by design (prompt batches come from a sized IterableDataset)."""
    for pattern in (r".*IterableDataset.*has `__len__` defined.*", r".*Total length of .* across ranks is zero.*",
                    r".*isinstance\(treespec, LeafSpec\).*", r".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=pattern)


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``lightning-trepo`` and ``python -m lightning_trepo``."""
    debug, argv = debug_requested(argv)
    args = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # RL steps allocate many differently shaped tensors (rollouts, continuations, KV caches): expandable segments
    # let the CUDA allocator grow and reuse segments instead of fragmenting (read at the first CUDA allocation)
    os.environ.setdefault("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    quiet_known_warnings()
    tools = _tool_commands()
    if args and args[0] in tools:
        sys.exit(tools[args[0]](args[1:]) or 0)
    with reporting_errors(debug):  # bad settings or inputs: one short block naming the key (--debug: traceback)
        build_cli(argv)


if __name__ == "__main__":
    main()
