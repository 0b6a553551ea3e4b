"""Every reward YAML block in the README builds (with the README's own Python block as the user's module)."""
from __future__ import annotations

import re
import sys
from pathlib import Path

import yaml

from reward_models import OverlongPenalty, Reward
from reward_models.config import build_reward

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_every_readme_reward_yaml_builds(tmp_path, monkeypatch):
    user_module = next(b for b in blocks("python") if b.startswith("# my_rewards.py"))
    (tmp_path / "my_rewards.py").write_text(user_module)
    monkeypatch.syspath_prepend(str(tmp_path))
    trees = [yaml.safe_load(b) for b in blocks("yaml")]
    trees = [t for t in trees if isinstance(t, dict) and "class_path" in t]
    assert len(trees) >= 2  # the math/format gate and the user-module example
    for tree in trees:
        assert isinstance(build_reward(tree), Reward)
    sys.modules.pop("my_rewards", None)


def test_readme_gate_example_matches_the_shipped_file():
    # the README shows configs/rewards/math_format_gate.yaml in short form: the overlong penalty must be the same
    readme = build_reward(yaml.safe_load(next(b for b in blocks("yaml") if "math_format_gate" in b)))
    shipped = build_reward(Path(__file__).resolve().parents[1] / "configs" / "rewards" / "math_format_gate.yaml")
    a, b = readme.children()["overlong"], shipped.children()["overlong"]
    assert isinstance(a, OverlongPenalty) and (a.max_length, a.buffer_length) == (b.max_length, b.buffer_length)
