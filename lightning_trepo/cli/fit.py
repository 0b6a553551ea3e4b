"""The ``fit`` / ``validate`` command line: :class:`TrepoCLI` (LightningCLI with the RL module and the prompt data
module, ``configs/base.yaml`` first) and :func:`build_cli`. The console entry point and the tool subcommands are in
:mod:`lightning_trepo.cli.main`; tools that build the fit CLI (``measure-variance``, the demo) import it from here.
"""
from __future__ import annotations

import importlib
import sys
from argparse import RawDescriptionHelpFormatter
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lightning_trepo.data import PromptDataModule
from lightning_trepo.modules.base import RLModule
from lightning_trepo.tools.export import ExportConfig, export_trained
from lightning_trepo.training.callbacks import CrashSafety, SaveOnTrainEnd, StepPrinter, use_step_progress_bar
from lightning_trepo.training.run_state import refuse_foreign_checkpoint
from lightning_trepo.training.schedule import LRScheduleConfig, attach_lr_schedule

TOOLS_HELP = """tool commands (each has its own --help):
  export              write a checkpoint's policy as a Hugging Face directory (LoRA merged, or --adapter-only)
  score               re-score a rollout log (model.init_args.rollout.log_path) under a reward tree
  serve-reward        serve a reward tree over HTTP
  verify-estimators   exact bias/variance of the advantage estimators on a toy token MDP
  measure-variance    gradient variance per token of every estimator on a config's model and reward"""


BASE_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "base.yaml"


class TrepoCLI(LightningCLI):
    """LightningCLI with the RL module as a subclass-mode model and the prompt data module. ``configs/base.yaml``
    comes before any ``--config`` on the command line, so an algorithm config states only what differs from it."""

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        """Parse ``args`` (the command line when None) with ``--config configs/base.yaml`` first (right after the
        subcommand), so every later ``--config`` and flag overrides the base."""
        if args is not None and not isinstance(args, list):  # a dict or Namespace: taken as it is
            return super().parse_arguments(parser, args)
        argv = list(sys.argv[1:] if args is None else args)
        base = ["--config", str(BASE_CONFIG)]
        if getattr(parser, "_subcommands_action", None) is None:
            argv = base + argv
        elif argv and argv[0] in self.subcommands():
            argv = [argv[0], *base, *argv[1:]]
        self.config = parser.parse_args(argv)

    @staticmethod
    def subcommands() -> dict[str, set[str]]:
        """``fit`` and ``validate`` only: the RL modules have no test or predict step."""
        return {name: skip for name, skip in LightningCLI.subcommands().items() if name in ("fit", "validate")}

    def before_instantiate_classes(self) -> None:
        """``--trainer.enable_checkpointing false`` also drops the configs' checkpoint callbacks (PeriodicCheckpoint,
        ModelCheckpoint): Lightning refuses a checkpoint callback once checkpointing is off."""
        cfg = self.config[self.subcommand] if self.subcommand else self.config
        trainer = cfg.get("trainer")
        if trainer is not None and trainer.get("enable_checkpointing") is False and trainer.get("callbacks"):
            trainer.callbacks = [c for c in trainer.callbacks if not _is_checkpoint_callback(c)]

    def instantiate_classes(self) -> None:
        """Build model, data and trainer, then apply ``lr_scheduler`` and the step-counting progress bar (here, not
        in ``before_fit``, so ``run=False`` users such as the demo get them too)."""
        super().instantiate_classes()
        init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        if init.get("lr_scheduler") is not None:
            attach_lr_schedule(self.model, init.lr_scheduler)
        use_step_progress_bar(self.trainer)

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        """The trainer, with :func:`run_callbacks` as its callbacks."""
        init = self.config_init[self.subcommand] if self.subcommand else self.config_init
        trainer = init.get("trainer") or {}
        callbacks = run_callbacks(trainer.get("callbacks"), init.crash_safety, trainer.get("enable_checkpointing"))
        return super().instantiate_trainer(**{"callbacks": callbacks, **kwargs})

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.set_defaults({
            "trainer.logger": {"class_path": "lightning.pytorch.loggers.CSVLogger",
                               "init_args": {"save_dir": "runs", "name": "lightning_trepo"}},
            "trainer.log_every_n_steps": 1,
            "trainer.devices": 1,
            "trainer.num_sanity_val_steps": 0,
        })
        parser.add_class_arguments(CrashSafety, "crash_safety", sub_configs=True)
        parser.add_class_arguments(ExportConfig, "export", sub_configs=True)
        parser.add_argument("--lr_scheduler", type=LRScheduleConfig | None, default=None,
                            help="warmup + constant/linear/cosine decay of the optimizer's lr per step "
                                 "(lightning_trepo.training.schedule.LRScheduleConfig)")
        parser.add_lightning_class_args(StepPrinter, "step_printer")

    def after_fit(self) -> None:
        """``export.dir`` set: write the trained policy as a Hugging Face directory (rank 0)."""
        export = self.config[self.subcommand].export
        out = export_trained(self.trainer, self.model, export.dir, export.adapter_only) if export.dir else None
        if out is not None:
            print(f"exported the trained policy to {out}")

    def _parse_ckpt_path(self) -> None:
        refuse_foreign_checkpoint(
            self.config
        )  # a broken or foreign --ckpt_path, before its hyper-parameters are adopted
        super()._parse_ckpt_path()


def run_callbacks(listed: Any, crash_safety: CrashSafety, enable_checkpointing: bool | None = True) -> list[Callback]:
    """``crash_safety``'s callbacks ahead of the config's ``trainer.callbacks`` (instantiated; None, one or a list):
    an overlay's list replaces the list before it, but cannot drop these, and the periodic checkpoint comes first,
    so it is ``trainer.checkpoint_callback``, the one ``--ckpt_path last`` and :class:`SaveOnTrainEnd` consult."""
    listed = [] if listed is None else list(listed) if isinstance(listed, list) else [listed]
    return [*crash_safety.callbacks(listed, checkpointing=enable_checkpointing is not False), *listed]


def _is_checkpoint_callback(entry: Any) -> bool:
    """Whether a not yet instantiated ``trainer.callbacks`` entry (``class_path`` + ``init_args``) saves checkpoints."""
    from lightning.pytorch.callbacks import ModelCheckpoint

    path = entry.get("class_path") if hasattr(entry, "get") else None
    if not isinstance(path, str):
        return isinstance(entry, ModelCheckpoint)
    module, _, name = path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False  # jsonargparse reports an unknown class itself
    return isinstance(cls, type) and issubclass(cls, ModelCheckpoint)


def build_cli(args: list[str] | None = None, run: bool = True) -> TrepoCLI:
    """The ``fit``/``validate`` CLI; ``run=False`` only builds model, data and trainer (used by the demo)."""
    return TrepoCLI(
        RLModule, PromptDataModule, subclass_mode_model=True, subclass_mode_data=False,
        trainer_defaults={"callbacks": [SaveOnTrainEnd()]}, args=args, save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False, run=run,
        parser_kwargs={"description": "lightning-trepo: online RL of LLMs from response-level rewards",
                       "epilog": TOOLS_HELP, "formatter_class": RawDescriptionHelpFormatter},
    )
