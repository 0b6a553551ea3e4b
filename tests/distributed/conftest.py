"""Fixtures of the multi-process tests: each scenario is launched once per session on 2 gloo ranks."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.distributed.launch import check, launch

TIMEOUT = 240  # hard limit per 2-rank launch (a hang is killed and fails the test); normal runs take ~20 s


def _run(scenario: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp(scenario)
    check(launch(["-m", "tests.distributed.workers", scenario, str(out)], nprocs=2, timeout=TIMEOUT,
                 logdir=out / "logs"))
    return out


def load(out: Path, name: str) -> list[dict[str, Any]]:
    return [json.loads((out / f"{name}_rank{r}.json").read_text()) for r in range(2)]


@pytest.fixture(scope="session")
def ddp_run(tmp_path_factory) -> Path:
    return _run("ddp", tmp_path_factory)


@pytest.fixture(scope="session")
def fsdp2_run(tmp_path_factory) -> Path:
    return _run("fsdp2", tmp_path_factory)


@pytest.fixture(scope="session")
def deepspeed_run(tmp_path_factory) -> Path:
    return _run("deepspeed", tmp_path_factory)
