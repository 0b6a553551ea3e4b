"""Export from sharded checkpoint directories (FSDP2 via ModelParallelStrategy, DeepSpeed ZeRO-3) written on
2 gloo ranks: the exported Hugging Face weights equal the full policy gathered in memory at the end of training."""
from __future__ import annotations

import pytest
import torch

from lightning_trepo.tools.export import export_checkpoint, find_checkpoint
from tests.distributed.launch import check, launch

pytestmark = pytest.mark.distributed


@pytest.mark.parametrize("scenario", ["fsdp2", "zero3"])
def test_export_of_a_sharded_checkpoint_equals_the_gathered_policy(scenario, tmp_path):
    from transformers import AutoModelForCausalLM

    check(launch(["-m", "tests.distributed.export_worker", scenario, str(tmp_path)], nprocs=2, timeout=240,
                 logdir=tmp_path / "logs"))
    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    assert ckpt.is_dir() and find_checkpoint(ckpt) == ckpt  # a directory checkpoint, taken as is
    assert find_checkpoint(tmp_path) == ckpt  # and found from the run directory
    full = torch.load(tmp_path / "full_policy.pt")
    assert full
    for out in (export_checkpoint(tmp_path, tmp_path / "hf"), tmp_path / "hf_after_fit"):
        exported = AutoModelForCausalLM.from_pretrained(out).state_dict()
        for key, value in full.items():
            torch.testing.assert_close(exported[key], value, rtol=0, atol=0, msg=key)
