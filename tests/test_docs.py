"""Docs that run: every fenced block of README.md and docs/*.md is discovered and exercised.

- ``python`` blocks run; those whose first line is ``# <path>.py`` are user modules: written to a temporary
  directory on ``sys.path``, and each Reward class they define is used by a YAML block of the docs.
- ``yaml`` blocks: a reward tree (``class_path`` at the root, or ``reward:``) is built with the
  project's own builder and scored on two samples (a correct and a wrong answer: their rewards differ); a
  training config (``model:``/``trainer:``/``data:``) is parsed by the
  project's CLI, on top of ``configs/grpo.yaml`` when it is an overlay.
- ``bash`` lines running ``lightning-trepo``: ``fit`` examples are parsed by the CLI (training is
  not fast); ``verify-estimators``, ``measure-variance`` (smoke-sized), ``score`` and ``serve-reward``
  really run (``score`` on a small generated rollouts file when the example's file does not exist;
  ``serve-reward`` on a free port until ``/health`` answers). Any other subcommand fails the test: add it here.
"""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
import yaml

from reward_models import Reward
from reward_models.config import build_reward

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)^```", re.DOTALL | re.MULTILINE)
MODULE_HEADER = re.compile(r"#\s*([\w/]+\.py)\b")
CONFIG_KEYS = {"model", "trainer", "data", "seed_everything", "ckpt_path", "optimizer", "lr_scheduler", "step_printer",
               "export", "crash_safety"}


def blocks(lang: str) -> list[tuple[str, str]]:
    """(``file:line``, body) of every ``lang`` block in the docs."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for m in FENCE.finditer(text):
            if m.group(1) == lang:
                found.append((f"{doc.relative_to(ROOT)}:{text[:m.start()].count(chr(10)) + 1}", m.group(2)))
    return found


def commands() -> list[tuple[str, list[str]]]:
    """Every ``lightning-trepo`` command line of the bash blocks (continuations joined, comments dropped)."""
    found = []
    for where, body in blocks("bash"):
        for line in body.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words and words[0].endswith("lightning-trepo"):
                found.append((f"{where} {words[1]}", words[1:]))
    return found


@pytest.fixture(scope="module")
def user_modules(tmp_path_factory):
    """The docs' user modules (``# my_pkg/rewards.py`` blocks) written out and put on sys.path."""
    root = tmp_path_factory.mktemp("doc_modules")
    for _, body in blocks("python"):
        header = MODULE_HEADER.match(body.lstrip())
        if header:
            path = root / header.group(1)
            path.parent.mkdir(parents=True, exist_ok=True)
            for parent in path.relative_to(root).parents:
                if parent != Path("."):
                    (root / parent / "__init__.py").touch()
            path.write_text(body)
    sys.path.insert(0, str(root))
    yield root
    sys.path.remove(str(root))


def test_docs_have_blocks_of_each_kind():
    assert len(blocks("yaml")) >= 3 and blocks("python") and len(commands()) >= 4


@pytest.mark.parametrize("where, body", blocks("python"), ids=[w for w, _ in blocks("python")])
def test_python_block_runs(where, body, user_modules):
    namespace: dict = {"__name__": "doc_block"}
    exec(compile(body, where, "exec"), namespace)  # noqa: S102 - the docs' own code, as a reader would run it
    header = MODULE_HEADER.match(body.lstrip())
    if header is None:
        return
    # a user module's Reward classes: some YAML block of the docs plugs each in, and that tree scores (the YAML test)
    module = header.group(1)[:-3].replace("/", ".")
    defined = [n for n, v in namespace.items() if isinstance(v, type) and issubclass(v, Reward) and v is not Reward]
    for name in defined:
        assert any(f"{module}.{name}" in b for _, b in blocks("yaml")), f"{where}: no docs YAML block uses {name}"


def _two_samples():
    """What a reward tree of the docs is scored on: a polite, tagged, correct answer and a bare wrong one."""
    import torch

    from reward_models import Samples

    ids = torch.tensor([[5, 6, 7, 8], [5, 0, 0, 0]])
    return Samples(prompts=["What is 2+2?"] * 2, completions=["<think>please</think><answer>4</answer>", "5"],
                   completion_ids=ids, completion_mask=(ids > 0).long(), group_index=torch.tensor([0, 0]),
                   metadata=[{"answer": "4", "solution": "4"}, {"answer": "4", "solution": "4"}])


@pytest.mark.parametrize("where, body", blocks("yaml"), ids=[w for w, _ in blocks("yaml")])
def test_yaml_block_builds(where, body, user_modules, tmp_path):
    data = yaml.safe_load(body)
    assert isinstance(data, dict), f"{where}: a YAML block must be a mapping"
    if "class_path" in data or "reward" in data:
        reward = build_reward(data)
        assert isinstance(reward, Reward), where
        if not _needs_a_service(body):
            out = reward(_two_samples())  # it runs: the docs' own reward classes included
            assert out.rewards.shape == (2,) and not out.rewards.isnan().any(), (where, out.rewards)
            if "NumericAnswer" in body or "accuracy" in body:  # it checks the answer: correct and wrong differ
                assert float(out.rewards[0]) != float(out.rewards[1]), (where, out.rewards)
    elif CONFIG_KEYS & set(data):
        from tests.cli.test_main import cli_parse_only

        path = tmp_path / "block.yaml"
        path.write_text(body)
        base = [] if {"model", "data"} <= set(data) else ["--config", str(ROOT / "configs" / "grpo.yaml")]
        assert cli_parse_only([*base, "--config", str(path)]).model.class_path, where
    else:
        pytest.fail(f"{where}: YAML block is neither a reward tree nor a training config; teach tests/test_docs.py")


def _needs_a_service(body: str) -> bool:
    """A tree that calls a model, a server or a sandbox, or TRL's functions (conversational completions; they run in
    tests/reward_models/test_rm_trl.py), is built but not scored here."""
    return any(name in body for name in ("RemoteReward", "LearnedReward", "HFReward", "Judge", "CodeExecution",
                                         "model_path", "url:", "trl."))


def _rollouts(tmp_path: Path) -> str:
    rows = [{"prompt": "2+2?", "completion": c, "metadata": {"answer": 4}, "group_index": 0}
            for c in ["<think>x</think><answer>4</answer>", "<think>x</think><answer>5</answer>", "4"]]
    path = tmp_path / "rollouts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _serve(args: list[str]) -> None:
    args = [a if i == 0 or args[i - 1] != "--port" else "0" for i, a in enumerate(args)]
    proc = subprocess.Popen([sys.executable, "-m", "reward_models.cli", *args], cwd=ROOT, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        line = proc.stdout.readline()
        url = re.search(r"on (http://\S+)", line)
        assert url, f"serve-reward did not start: {line}{proc.stdout.read() if proc.poll() is not None else ''}"
        with urllib.request.urlopen(f"{url.group(1)}/health", timeout=10) as r:
            assert json.loads(r.read())["status"] == "ok"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.parametrize("where, args", commands(), ids=[w for w, _ in commands()])
def test_command_line_example_runs(where, args, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    command, rest = args[0], args[1:]
    if command == "fit":
        from tests.cli.test_main import cli_parse_only

        # parse only (training is not fast); --ckpt_path belongs to the fit subcommand, which parsing leaves out
        keep = [a for i, a in enumerate(rest) if a != "--print_config" and "--ckpt_path" not in (a, rest[i - 1])]
        assert cli_parse_only(keep).model.class_path
    elif command == "export":
        from lightning_trepo.tools.export import export_main
        from tests.tools.test_export import fit, saved_base

        # the example's run directory does not exist here: export a two-step fit's checkpoint (LoRA for --adapter-only)
        _, ckpt = fit(tmp_path, saved_base(tmp_path)) if "--adapter-only" in rest else fit(tmp_path)
        assert export_main([str(ckpt), str(tmp_path / "out"), *rest[2:]]) == 0
        assert (tmp_path / "out" / ("adapter_config.json" if "--adapter-only" in rest else "config.json")).exists()
    elif command == "verify-estimators":
        from lightning_trepo.theory.verify import main as verify

        assert not verify(rest)
        assert "TRePO" in capsys.readouterr().out
    elif command == "measure-variance":
        from lightning_trepo.diagnostics.command import main as measure_variance

        # the example's flags, then a smoke-sized override (later flags win)
        small = ["--repeats", "2", "--prompts", "1", "--bootstrap", "20", "--out", str(tmp_path)]
        assert measure_variance([*rest, *small]) == 0 and "variance x tokens" in capsys.readouterr().out
    elif command == "score":
        from reward_models.cli import score_main

        i = rest.index("--rollouts") + 1
        if not Path(rest[i]).exists():
            rest[i] = _rollouts(tmp_path)
        assert score_main(rest) == 0 and "total" in capsys.readouterr().out
    elif command == "serve-reward":
        _serve(args)
    else:
        pytest.fail(f"{where}: no runner for `lightning-trepo {command}`; teach tests/test_docs.py")
