"""Test and dry-run only: Lightning's DeepSpeedStrategy without its CUDA-only checks.

Lightning refuses DeepSpeed on anything but a ``CUDAAccelerator`` (and validates CUDA device
indices); DeepSpeed itself runs ZeRO-2/3 on the CPU with gloo (its CPU accelerator; the first run
JIT-compiles a small shared-memory comm op). This subclass exists only so the CPU test machine can
exercise the package's DeepSpeed code paths (the distributed tests and ``gpu_check.py --dry-run``); it is NOT
part of the package.
"""
from __future__ import annotations

from lightning.fabric.utilities.seed import reset_seed
from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy


class CPUDeepSpeedStrategy(DeepSpeedStrategy):
    def setup_environment(self) -> None:
        DDPStrategy.setup_environment(self)  # skips DeepSpeedStrategy's CUDAAccelerator check

    def setup_distributed(self) -> None:
        # DeepSpeedStrategy.setup_distributed minus _validate_device_index_selection (CPU devices have no index)
        reset_seed()
        self.set_world_ranks()
        self._init_deepspeed_distributed()

    def _setup_model_and_optimizer(self, model, optimizer, lr_scheduler=None):
        # as DeepSpeedStrategy's, with the local rank as DeepSpeed's device rank (a CPU device has no index)
        import argparse

        import deepspeed

        engine, ds_optimizer, _, _ = deepspeed.initialize(
            args=argparse.Namespace(device_rank=self.local_rank), config=self.config, model=model,
            model_parameters=filter(lambda p: p.requires_grad, model.parameters()), optimizer=optimizer,
            lr_scheduler=lr_scheduler, dist_init_required=False,
        )
        return engine, ds_optimizer
